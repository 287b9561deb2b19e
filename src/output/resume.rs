//! Resuming a stopped run: the settings a run began with are saved beside
//! its partial output, and a resumed run must match them.

use std::collections::BTreeMap;

use crate::error::{Error, Result};

/// The settings that decide a run's output, by flag name.
pub type Settings = Vec<(&'static str, String)>;

/// The first setting of `now` that differs from the `saved` ones is an
/// [`Error::ResumeMismatch`]; `restart` says how to start again instead.
pub(crate) fn check_settings(
    saved: &BTreeMap<String, String>,
    now: &[(&'static str, String)],
    restart: &str,
) -> Result<()> {
    if saved.is_empty() {
        return Err(Error::Invalid(format!(
            "--resume: the stopped run records no settings (made by an older embedtune); {restart}"
        )));
    }
    let mismatch = |setting: &str, was: &str, now: &str| Error::ResumeMismatch {
        setting: setting.to_string(),
        was: was.to_string(),
        now: now.to_string(),
        restart: restart.to_string(),
    };
    for (name, value) in now {
        let was = saved.get(*name).map_or("unset", String::as_str);
        if was != value {
            return Err(mismatch(name, was, value));
        }
    }
    // A setting the stopped run had and this one lacks (an optional one,
    // such as `fit --guide`, left out) differs too.
    if let Some((name, was)) = saved.iter().find(|(k, _)| !now.iter().any(|(n, _)| n == k)) {
        return Err(mismatch(name, was, "unset"));
    }
    Ok(())
}
