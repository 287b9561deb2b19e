//! Files from the Hugging Face Hub, through `hf-hub` and its standard cache.
//!
//! The cache is the one Python's `huggingface_hub` uses (`HF_HUB_CACHE`, else
//! `HF_HOME/hub`, else `~/.cache/huggingface/hub`), so a model downloaded by
//! either is found by both. With `HF_HUB_OFFLINE=1`, or once the Hub turns
//! out to be unreachable, only the cache is read.

use std::path::PathBuf;

use hf_hub::api::sync::{Api, ApiBuilder, ApiError};
use hf_hub::{Cache, Repo, RepoType};

use crate::error::{Error, Result};
use crate::models::files::{self, FileStore};

/// The cache folder, following `huggingface_hub`'s environment variables.
pub fn cache_dir() -> PathBuf {
    cache_dir_and_source().0
}

/// The cache folder and the variable that chose it.
fn cache_dir_and_source() -> (PathBuf, &'static str) {
    if let Some(dir) = env_path("HF_HUB_CACHE") {
        return (dir, "HF_HUB_CACHE");
    }
    if let Some(home) = env_path("HF_HOME") {
        return (home.join("hub"), "HF_HOME");
    }
    let home = env_path("HOME").unwrap_or_else(|| PathBuf::from("."));
    (home.join(".cache").join("huggingface").join("hub"), "HOME")
}

/// The cache, which must be a folder if it exists.
fn cache() -> Result<Cache> {
    let (dir, var) = cache_dir_and_source();
    if dir.exists() && !dir.is_dir() {
        return Err(Error::Hub(format!(
            "the Hugging Face cache {} (from {var}) is not a folder (point {var} at a folder)",
            dir.display()
        )));
    }
    Ok(Cache::new(dir))
}

fn env_path(name: &str) -> Option<PathBuf> {
    std::env::var_os(name)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

/// `HF_HUB_OFFLINE` set to a true value.
pub fn offline_requested() -> bool {
    matches!(
        std::env::var("HF_HUB_OFFLINE")
            .as_deref()
            .map(str::to_ascii_lowercase)
            .as_deref(),
        Ok("1" | "true" | "yes" | "on")
    )
}

pub(crate) struct HubStore {
    repo_id: String,
    repo: Repo,
    cache: Cache,
    /// `None` once we know the network must not, or cannot, be used.
    api: Option<Api>,
    offline_reason: Option<String>,
}

impl HubStore {
    pub(crate) fn open(repo_id: &str, revision: Option<&str>) -> Result<Self> {
        let revision = revision.unwrap_or("main").to_string();
        let repo = Repo::with_revision(repo_id.to_string(), RepoType::Model, revision);
        let cache = cache()?;
        let (api, offline_reason) = if offline_requested() {
            (None, Some("HF_HUB_OFFLINE is set".to_string()))
        } else {
            let mut builder = ApiBuilder::from_cache(cache.clone())
                .with_progress(std::io::IsTerminal::is_terminal(&std::io::stderr()));
            if let Ok(endpoint) = std::env::var("HF_ENDPOINT") {
                builder = builder.with_endpoint(endpoint);
            }
            if let Ok(token) = std::env::var("HF_TOKEN") {
                builder = builder.with_token(Some(token));
            }
            let api = builder
                .build()
                .map_err(|e| Error::Hub(format!("cannot set up the Hub client: {e}")))?;
            (Some(api), None)
        };
        let mut store = HubStore {
            repo_id: repo_id.to_string(),
            repo,
            cache,
            api,
            offline_reason,
        };
        // A snapshot with a config and weights is complete: use it without
        // asking the Hub about every optional file.
        let weights = [
            files::SAFETENSORS,
            files::SAFETENSORS_INDEX,
            files::PYTORCH_BIN,
        ];
        if store.api.is_some()
            && store.cached(files::CONFIG).is_some()
            && weights.iter().any(|w| store.cached(w).is_some())
        {
            store.api = None;
            store.offline_reason = Some("the model is already cached".into());
        }
        Ok(store)
    }
}

impl HubStore {
    /// `name` in the cache's snapshot for this revision. A revision is a
    /// branch or tag (resolved through `refs/`) or a commit hash (a snapshot
    /// folder of that name), as `huggingface_hub` lays the cache out.
    fn cached(&self, name: &str) -> Option<PathBuf> {
        if let Some(path) = self.cache.repo(self.repo.clone()).get(name) {
            return Some(path);
        }
        let snapshot = self
            .cache
            .path()
            .join(self.repo.folder_name())
            .join("snapshots")
            .join(self.repo.revision())
            .join(name);
        snapshot.is_file().then_some(snapshot)
    }
}

impl FileStore for HubStore {
    fn file(&mut self, name: &str) -> Result<Option<PathBuf>> {
        if let Some(path) = self.cached(name) {
            return Ok(Some(path));
        }
        let Some(api) = &self.api else {
            return Ok(None);
        };
        match api.repo(self.repo.clone()).download(name) {
            Ok(path) => Ok(Some(path)),
            Err(ApiError::RequestError(err)) => match *err {
                // The repository has no such file: an optional file is absent.
                ureq::Error::Status(404, _) => Ok(None),
                ureq::Error::Status(code @ (401 | 403), _) => Err(Error::Hub(format!(
                    "{}: access denied ({code}); a gated or private model needs HF_TOKEN",
                    self.repo_id
                ))),
                ureq::Error::Status(code, _) => Err(Error::Hub(format!(
                    "{}: downloading {name} failed with HTTP {code}",
                    self.repo_id
                ))),
                // No connection: fall back to whatever the cache holds.
                ureq::Error::Transport(t) => {
                    eprintln!(
                        "warning: the Hugging Face Hub is unreachable ({t}); using the local cache only"
                    );
                    self.api = None;
                    self.offline_reason = Some("the Hub is unreachable".into());
                    Ok(None)
                }
            },
            Err(e) => Err(Error::Hub(format!(
                "{}: downloading {name} failed: {e}",
                self.repo_id
            ))),
        }
    }

    fn describe(&self) -> String {
        let mut s = format!(
            "Hub repository {} (revision {}, cache {})",
            self.repo_id,
            self.repo.revision(),
            self.cache.path().display()
        );
        if let Some(reason) = &self.offline_reason {
            s.push_str(&format!("; offline because {reason}"));
        }
        s
    }
}

/// The Parquet files of a Hub dataset (`hf://OWNER/NAME[@rev]`), downloaded
/// into the cache, or taken from it when offline.
pub fn dataset_parquet_files(spec: &str) -> Result<Vec<PathBuf>> {
    let id = spec.strip_prefix("hf://").unwrap_or(spec);
    let (repo_id, revision) = match id.split_once('@') {
        Some((r, rev)) => (r, rev.to_string()),
        None => (id, "main".to_string()),
    };
    if repo_id.is_empty() || repo_id.matches('/').count() > 1 {
        return Err(Error::Hub(format!(
            "`{spec}` is not a dataset id (hf://OWNER/NAME[@revision])"
        )));
    }
    let repo = Repo::with_revision(repo_id.to_string(), RepoType::Dataset, revision.clone());
    let cache = cache()?;
    let cached = || -> Vec<PathBuf> {
        let snapshots = cache.path().join(repo.folder_name()).join("snapshots");
        let commit = std::fs::read_to_string(
            cache
                .path()
                .join(repo.folder_name())
                .join("refs")
                .join(&revision),
        )
        .unwrap_or_else(|_| revision.clone());
        let mut files = Vec::new();
        let mut stack = vec![snapshots.join(commit.trim())];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                let p = entry.path();
                if p.is_dir() {
                    stack.push(p);
                } else if p.extension().is_some_and(|e| e == "parquet") {
                    files.push(p);
                }
            }
        }
        files.sort();
        files
    };
    if offline_requested() {
        let files = cached();
        if files.is_empty() {
            return Err(Error::Hub(format!(
                "dataset {repo_id} has no Parquet files in the cache {} and HF_HUB_OFFLINE is set",
                cache.path().display()
            )));
        }
        return Ok(files);
    }
    let api = ApiBuilder::from_cache(cache.clone())
        .with_progress(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_token(std::env::var("HF_TOKEN").ok())
        .build()
        .map_err(|e| Error::Hub(format!("cannot set up the Hub client: {e}")))?;
    let api_repo = api.repo(repo.clone());
    let info = match api_repo.info() {
        Ok(info) => info,
        Err(e) => {
            let files = cached();
            if files.is_empty() {
                return Err(Error::Hub(format!("cannot list dataset {repo_id}: {e}")));
            }
            eprintln!("warning: the Hub is unreachable ({e}); using the cached files of {repo_id}");
            return Ok(files);
        }
    };
    let mut names: Vec<String> = info
        .siblings
        .into_iter()
        .map(|s| s.rfilename)
        .filter(|n| n.ends_with(".parquet"))
        .collect();
    names.sort();
    if names.is_empty() {
        return Err(Error::Hub(format!(
            "dataset {repo_id} has no Parquet files"
        )));
    }
    names
        .iter()
        .map(|n| {
            api_repo
                .get(n)
                .map_err(|e| Error::Hub(format!("{repo_id}: downloading {n} failed: {e}")))
        })
        .collect()
}
