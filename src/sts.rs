//! Semantic textual similarity: Spearman (and Pearson) between gold scores
//! and the cosine of the two sentences' embeddings.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::Path;

use serde::Serialize;

use crate::error::{Error, Result};
use crate::inference::Embedder;
use crate::metrics;

/// One scored sentence pair.
#[derive(Debug, Clone, PartialEq)]
pub struct StsPair {
    pub sentence1: String,
    pub sentence2: String,
    pub score: f64,
}

/// STS correlations ×100.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, serde::Deserialize)]
pub struct StsResult {
    pub spearman: f64,
    pub pearson: f64,
    pub n: usize,
}

/// Reads STS pairs: the STS-benchmark layout (tab-separated genre, file,
/// year, id, score, sentence1, sentence2; no header; quoting off), or a
/// `.jsonl` / headed `.csv` / `.tsv` with `sentence1`, `sentence2`, `score`.
pub fn read_pairs(path: &Path) -> Result<Vec<StsPair>> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut lines = Vec::new();
    for (n, line) in BufReader::new(file).split(b'\n').enumerate() {
        let line = line.map_err(|e| Error::io(path, e))?;
        let line = String::from_utf8(line)
            .map_err(|_| Error::data(path, format!("line {}: not valid UTF-8", n + 1)))?;
        lines.push(line.trim_end_matches('\r').to_string());
    }
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    let pairs = if ext.eq_ignore_ascii_case("jsonl") {
        read_jsonl(path, &lines)?
    } else {
        let first = lines.iter().find(|l| !l.trim().is_empty());
        let headed = first.is_some_and(|l| l.contains("sentence1"));
        if headed {
            read_headed(
                path,
                &lines,
                if ext == "csv" && !first.unwrap().contains('\t') {
                    b','
                } else {
                    b'\t'
                },
            )?
        } else {
            read_stsb(path, &lines)?
        }
    };
    if pairs.len() < 2 {
        return Err(Error::data(
            path,
            format!("needs at least 2 scored pairs, found {}", pairs.len()),
        ));
    }
    Ok(pairs)
}

fn parse_score(path: &Path, line: usize, text: &str) -> Result<f64> {
    text.trim()
        .parse::<f64>()
        .ok()
        .filter(|s| s.is_finite())
        .ok_or_else(|| Error::data(path, format!("line {line}: score `{text}` is not a number")))
}

fn read_stsb(path: &Path, lines: &[String]) -> Result<Vec<StsPair>> {
    let mut pairs = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.split('\t').collect();
        if fields.len() < 7 {
            return Err(Error::data(
                path,
                format!(
                    "line {}: expected 7 tab-separated fields (genre, file, year, id, score, sentence1, sentence2), found {}",
                    i + 1,
                    fields.len()
                ),
            ));
        }
        pairs.push(StsPair {
            score: parse_score(path, i + 1, fields[4])?,
            sentence1: fields[5].to_string(),
            sentence2: fields[6].to_string(),
        });
    }
    Ok(pairs)
}

fn read_headed(path: &Path, lines: &[String], delimiter: u8) -> Result<Vec<StsPair>> {
    let text = lines.join("\n");
    let mut reader = csv::ReaderBuilder::new()
        .delimiter(delimiter)
        .from_reader(text.as_bytes());
    let headers = reader
        .headers()
        .map_err(|e| Error::data(path, e.to_string()))?
        .clone();
    let col = |name: &str| {
        headers.iter().position(|h| h == name).ok_or_else(|| {
            Error::data(
                path,
                format!("no column `{name}` (needs sentence1, sentence2, score)"),
            )
        })
    };
    let (c1, c2, cs) = (col("sentence1")?, col("sentence2")?, col("score")?);
    let mut pairs = Vec::new();
    for record in reader.records() {
        let record = record.map_err(|e| Error::data(path, e.to_string()))?;
        let line = record.position().map_or(0, |p| p.line() as usize);
        let get = |c: usize| {
            record
                .get(c)
                .ok_or_else(|| Error::data(path, format!("line {line}: missing field")))
        };
        pairs.push(StsPair {
            sentence1: get(c1)?.to_string(),
            sentence2: get(c2)?.to_string(),
            score: parse_score(path, line, get(cs)?)?,
        });
    }
    Ok(pairs)
}

fn read_jsonl(path: &Path, lines: &[String]) -> Result<Vec<StsPair>> {
    let mut pairs = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let bad = |m: &str| Error::data(path, format!("line {}: {m}", i + 1));
        let v: serde_json::Value =
            serde_json::from_str(line).map_err(|e| bad(&format!("invalid JSON: {e}")))?;
        let text = |k: &str| {
            v.get(k)
                .and_then(|x| x.as_str())
                .map(String::from)
                .ok_or_else(|| bad(&format!("no string field `{k}`")))
        };
        let score = match v.get("score") {
            Some(serde_json::Value::Number(n)) => n.as_f64().unwrap_or(f64::NAN),
            Some(serde_json::Value::String(s)) => parse_score(path, i + 1, s)?,
            _ => return Err(bad("no numeric field `score`")),
        };
        pairs.push(StsPair {
            sentence1: text("sentence1")?,
            sentence2: text("sentence2")?,
            score,
        });
    }
    Ok(pairs)
}

/// Cosines closer than this are the same as far as float32 embeddings can
/// tell: their order is rounding noise.
const COSINE_RESOLUTION: f64 = 1e-6;

/// Refuses a series with no spread: constant values have no ranks, so a
/// correlation with them is undefined (not ±100 from rounding noise).
fn check_spread(values: &[f64], what: &str) -> Result<()> {
    let (lo, hi) = values
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &v| {
            (lo.min(v), hi.max(v))
        });
    if hi - lo <= COSINE_RESOLUTION {
        return Err(Error::Undefined(format!(
            "every one of the {} pairs has the same {what} ({lo:.6}): constant values have no rank correlation, so Spearman and Pearson are undefined (use pairs that differ)",
            values.len()
        )));
    }
    Ok(())
}

/// Embeds every distinct sentence once and correlates cosines with scores.
pub fn evaluate(embedder: &Embedder, pairs: &[StsPair]) -> Result<StsResult> {
    let mut index: HashMap<&str, usize> = HashMap::new();
    let mut unique: Vec<&str> = Vec::new();
    for p in pairs {
        for s in [p.sentence1.as_str(), p.sentence2.as_str()] {
            index.entry(s).or_insert_with(|| {
                unique.push(s);
                unique.len() - 1
            });
        }
    }
    let emb = embedder.embed_batches(&unique, None, true, &mut |_, _| Ok(()))?;
    let cosines: Vec<f64> = pairs
        .iter()
        .map(|p| {
            let (a, b) = (
                emb.row(index[p.sentence1.as_str()]),
                emb.row(index[p.sentence2.as_str()]),
            );
            a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum()
        })
        .collect();
    check_spread(&cosines, "cosine similarity of the two sentences")?;
    let gold: Vec<f64> = pairs.iter().map(|p| p.score).collect();
    check_spread(&gold, "gold score")?;
    Ok(StsResult {
        spearman: 100.0 * metrics::spearman(&gold, &cosines)?,
        pearson: 100.0 * metrics::pearson(&gold, &cosines)?,
        n: pairs.len(),
    })
}
