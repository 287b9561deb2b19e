//! Model cards (`README.md`) and reports of the folders `fit` and `whiten`
//! write: the before/after table with the figures beside it.

use std::io::Write;
use std::path::Path;

use serde::Serialize;

use crate::diagnose::Diagnosis;
use crate::error::{Error, Result};
use crate::output::AtomicFile;
use crate::report::plots;
use crate::sts::StsResult;

/// Where the figures go, relative to the model folder.
pub const FIGURES: &str = "figures";

/// Before/after figures of one model folder.
pub struct BeforeAfter<'a> {
    pub before: &'a Diagnosis,
    pub after: &'a Diagnosis,
    pub sts_before: Option<&'a StsResult>,
    pub sts_after: Option<&'a StsResult>,
}

/// The card's front matter and title.
pub fn header(title: &str, intro: &str) -> String {
    format!(
        "---\nlibrary_name: sentence-transformers\ntags:\n- sentence-transformers\n- embedtune\n- alignment-uniformity\n---\n\n# {title}\n\n{intro}\n\n"
    )
}

/// The before/after table on the held-back sentences, with the figures
/// (relative links into `figures/`).
pub fn before_after(b: &BeforeAfter) -> String {
    let (before, after) = (b.before, b.after);
    let mut s = format!(
        "## Before and after ({} held-back sentences)\n\n| metric | before | after |\n|---|---:|---:|\n",
        after.n
    );
    let rows = [
        ("avg_cosine", before.avg_cosine, after.avg_cosine),
        ("uniformity", before.uniformity, after.uniformity),
        ("alignment", before.alignment, after.alignment),
        (
            "effective_rank",
            before.effective_rank,
            after.effective_rank,
        ),
        ("isoscore", before.isoscore, after.isoscore),
    ];
    for (k, x, y) in rows {
        s += &format!("| {k} | {x:.4} | {y:.4} |\n");
    }
    if let (Some(x), Some(y)) = (b.sts_before, b.sts_after) {
        s += &format!(
            "| STS Spearman ×100 | {:.2} | {:.2} |\n",
            x.spearman, y.spearman
        );
    }
    s += "\n";
    for (file, alt) in [
        ("circle.svg", "before: the embeddings on S¹"),
        ("circle_2.svg", "after: the embeddings on S¹"),
        ("cosine_histogram.svg", "pairwise cosines, before and after"),
        (
            "alignment_histogram.svg",
            "positive-pair distances, before and after",
        ),
    ] {
        s += &format!("![{alt}]({FIGURES}/{file})\n");
    }
    s += "\nBlue: before, red: after. S¹: the normalised embeddings projected on their top two principal directions, with a von Mises–Fisher density of the angles (Wang & Isola, 2020). Alignment: distances ‖f(x) − f(y)‖ between two dropout encodings of the same sentence, mean marked.\n\n";
    s
}

/// How to load the folder.
pub const USAGE: &str = "## Use\n\n```python\nfrom sentence_transformers import SentenceTransformer\nmodel = SentenceTransformer(\"path/to/this/folder\")\n```\n\n```sh\nembedtune embed --model path/to/this/folder --data texts.txt --out vectors.npy\n```\n";

/// Writes `report.json`, the figures and `README.md` into `dir`.
pub fn write(
    dir: &Path,
    report: &impl Serialize,
    card: &str,
    before: &Diagnosis,
    after: &Diagnosis,
) -> Result<()> {
    plots::write_plots(&dir.join(FIGURES), &[before, after])?;
    let json = serde_json::to_string_pretty(report).map_err(|e| Error::Invalid(e.to_string()))?;
    write_text(&dir.join("report.json"), &json)?;
    write_text(&dir.join("README.md"), card)
}

/// Writes `contents` to `path` atomically: the whole file or none.
pub fn write_text(path: &Path, contents: impl AsRef<[u8]>) -> Result<()> {
    let mut f = AtomicFile::create(path)?;
    f.write_all(contents.as_ref())
        .map_err(|e| Error::io(path, e))?;
    f.commit()
}
