//! Human- and machine-readable renderings of results, and SVG figures.

pub mod card;
pub mod plots;

use std::fmt::Write;
use std::str::FromStr;

pub use plots::write_plots;

use crate::diagnose::Diagnosis;
use crate::diagnose::stats::VectorDiagnosis;
use crate::error::{Error, Result};
use crate::sts::StsResult;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    #[default]
    Table,
    Json,
    Markdown,
}

impl FromStr for Format {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "table" => Ok(Format::Table),
            "json" => Ok(Format::Json),
            "markdown" | "md" => Ok(Format::Markdown),
            _ => Err(Error::Invalid(format!(
                "unknown format `{s}` (expected table, json or markdown)"
            ))),
        }
    }
}

/// The scalar figures in display order: JSON key, and the value.
fn scalars(d: &Diagnosis) -> [(&'static str, f64); 9] {
    [
        ("avg_cosine", d.avg_cosine),
        ("uniformity", d.uniformity),
        ("alignment", d.alignment),
        ("top1_variance_ratio", d.top1_variance_ratio),
        ("effective_rank", d.effective_rank),
        ("mean_vector_norm", d.mean_vector_norm),
        ("isoscore", d.isoscore),
        ("token_avg_cosine", d.token_avg_cosine),
        ("n", d.n as f64),
    ]
}

fn pairs_note(d: &Diagnosis) -> String {
    if d.pairs_exact {
        format!("{} pairs (all)", d.pairs)
    } else {
        format!("{} sampled pairs", d.pairs)
    }
}

fn layers_line(d: &Diagnosis) -> String {
    d.per_layer_avg_cosine
        .iter()
        .enumerate()
        .map(|(l, c)| format!("{l}:{c:.3}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// One model's diagnosis.
pub fn diagnosis(d: &Diagnosis, format: Format) -> Result<String> {
    let mut s = String::new();
    match format {
        Format::Json => {
            s = serde_json::to_string_pretty(d).map_err(|e| Error::Invalid(e.to_string()))?;
        }
        Format::Table => {
            let _ = writeln!(s, "model    {}", d.model);
            let _ = writeln!(
                s,
                "probe    {} sentences, {} pooling, max length {}, {}",
                d.n,
                d.pooling,
                d.max_len,
                pairs_note(d)
            );
            let _ = writeln!(s);
            for (key, value) in &scalars(d)[..8] {
                let _ = writeln!(s, "{key:<22}{value:>10.4}");
            }
            let _ = writeln!(s, "{:<22}{}", "per_layer_avg_cosine", layers_line(d));
            let _ = writeln!(s);
            let _ = writeln!(s, "verdict: {}", d.verdict());
        }
        Format::Markdown => {
            let _ = writeln!(
                s,
                "**{}** — {} pooling, max length {}, {} sentences, {}\n",
                d.model,
                d.pooling,
                d.max_len,
                d.n,
                pairs_note(d)
            );
            let _ = writeln!(s, "| metric | value |\n|---|---:|");
            for (key, value) in &scalars(d)[..8] {
                let _ = writeln!(s, "| {key} | {value:.4} |");
            }
            let _ = writeln!(s, "| per_layer_avg_cosine | {} |", layers_line(d));
            let _ = writeln!(s, "\n{}", d.verdict());
        }
    }
    Ok(s)
}

/// The figures of saved vectors (`diagnose --embeddings`), each marked
/// exact or sampled; those that need the model are listed as absent.
pub fn vectors(source: &str, v: &VectorDiagnosis, format: Format) -> Result<String> {
    let mut s = String::new();
    let scalars = [
        ("avg_cosine", v.avg_cosine),
        ("uniformity", v.uniformity),
        ("top1_variance_ratio", v.top1_variance_ratio),
        ("effective_rank", v.effective_rank),
        ("mean_vector_norm", v.mean_vector_norm),
        ("isoscore", v.isoscore),
    ];
    let kind = |key: &str| {
        if v.sampled.iter().any(|k| k == key) && !(v.pairs_exact) {
            "sampled"
        } else {
            "exact"
        }
    };
    let sample_note = if v.pairs_exact {
        format!("every vector and pair ({} pairs)", v.pairs)
    } else {
        format!(
            "a seeded sample of {} vectors (seed {}), {} pairs",
            v.sample, v.seed, v.pairs
        )
    };
    let absent = v.needs_model.join(", ");
    let verdict = crate::diagnose::verdict(v.avg_cosine);
    match format {
        Format::Json => {
            let mut value = serde_json::to_value(v).map_err(|e| Error::Invalid(e.to_string()))?;
            value["source"] = source.into();
            s = serde_json::to_string_pretty(&value).map_err(|e| Error::Invalid(e.to_string()))?;
        }
        Format::Table => {
            let _ = writeln!(s, "vectors  {source}");
            let _ = writeln!(
                s,
                "         {} vectors of {} dimensions; sampled figures from {sample_note}\n",
                v.n, v.dim
            );
            for (key, value) in scalars {
                let _ = writeln!(s, "{key:<22}{value:>10.4}  {}", kind(key));
            }
            let _ = writeln!(s, "\nneed the model (absent): {absent}");
            let _ = writeln!(s, "verdict: {verdict}");
        }
        Format::Markdown => {
            let _ = writeln!(
                s,
                "**{source}** — {} vectors of {} dimensions; sampled figures from {sample_note}\n",
                v.n, v.dim
            );
            let _ = writeln!(s, "| metric | value | |\n|---|---:|---|");
            for (key, value) in scalars {
                let _ = writeln!(s, "| {key} | {value:.4} | {} |", kind(key));
            }
            let _ = writeln!(s, "\nNeed the model (absent): {absent}.\n\n{verdict}");
        }
    }
    Ok(s)
}

/// Two models on the same probe, side by side with the change.
pub fn comparison(a: &Diagnosis, b: &Diagnosis, format: Format) -> Result<String> {
    let mut s = String::new();
    match format {
        Format::Json => {
            let value = serde_json::json!({ "a": a, "b": b });
            s = serde_json::to_string_pretty(&value).map_err(|e| Error::Invalid(e.to_string()))?;
        }
        Format::Table | Format::Markdown => {
            let md = format == Format::Markdown;
            let row = |s: &mut String, cells: [&str; 4]| {
                if md {
                    let _ = writeln!(
                        s,
                        "| {} | {} | {} | {} |",
                        cells[0], cells[1], cells[2], cells[3]
                    );
                } else {
                    let _ = writeln!(
                        s,
                        "{:<22}{:>12}{:>12}{:>12}",
                        cells[0], cells[1], cells[2], cells[3]
                    );
                }
            };
            let _ = writeln!(s, "A: {}\nB: {}", a.model, b.model);
            let _ = writeln!(
                s,
                "probe: {} sentences, {} pooling, max length {}\n",
                a.n, a.pooling, a.max_len
            );
            row(&mut s, ["metric", "A", "B", "change"]);
            if md {
                let _ = writeln!(s, "|---|---:|---:|---:|");
            }
            for ((key, va), (_, vb)) in scalars(a)[..8].iter().zip(&scalars(b)[..8]) {
                row(
                    &mut s,
                    [
                        key,
                        &format!("{va:.4}"),
                        &format!("{vb:.4}"),
                        &format!("{:+.4}", vb - va),
                    ],
                );
            }
            let _ = writeln!(
                s,
                "\nA per layer: {}\nB per layer: {}",
                layers_line(a),
                layers_line(b)
            );
            let _ = writeln!(s, "\nA: {}\nB: {}", a.verdict(), b.verdict());
        }
    }
    Ok(s)
}

/// STS correlations.
pub fn sts(model: &str, pooling: &str, r: &StsResult, format: Format) -> Result<String> {
    Ok(match format {
        Format::Json => {
            serde_json::to_string_pretty(r).map_err(|e| Error::Invalid(e.to_string()))?
        }
        Format::Table => format!(
            "model    {model}\npooling  {pooling}\npairs    {}\nspearman {:.2}\npearson  {:.2}\n",
            r.n, r.spearman, r.pearson
        ),
        Format::Markdown => format!(
            "| model | pooling | pairs | Spearman ×100 | Pearson ×100 |\n|---|---|---:|---:|---:|\n| {model} | {pooling} | {} | {:.2} | {:.2} |\n",
            r.n, r.spearman, r.pearson
        ),
    })
}
