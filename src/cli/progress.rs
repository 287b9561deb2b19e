use indicatif::{ProgressBar, ProgressStyle};

/// A progress bar on stderr; indicatif draws nothing when stderr is not a
/// terminal, so logs and pipes stay clean.
pub fn bar(total: u64, unit: &str) -> ProgressBar {
    let bar = ProgressBar::new(total);
    let template = format!(
        "{{spinner}} {{bar:40}} {{pos}}/{{len}} {unit} [{{elapsed_precise}} < {{eta_precise}}, {{per_sec}}]"
    );
    if let Ok(style) = ProgressStyle::with_template(&template) {
        bar.set_style(style);
    }
    bar
}

/// A running count on stderr, for work of unknown size.
pub fn counter(unit: &str) -> ProgressBar {
    let bar = ProgressBar::new_spinner();
    let template = format!("{{spinner}} {{pos}} {unit} [{{elapsed_precise}}, {{per_sec}}]");
    if let Ok(style) = ProgressStyle::with_template(&template) {
        bar.set_style(style);
    }
    bar
}
