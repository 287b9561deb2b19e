//! `diagnose --embeddings`: saved vectors streamed from .npy, .parquet,
//! .arrow and .jsonl; shards in any order, and saved partial statistics,
//! give the single-file result.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{ArrayRef, FixedSizeListArray, Float32Array, ListArray, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema};
use common::{assert_clean_error, embedtune};
use embedtune::inference::Embeddings;
use serde_json::Value;

const DIM: usize = 16;

/// `n` random vectors with a shared offset (a cone), from a small LCG.
fn vectors(n: usize) -> Vec<f32> {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    (0..n * DIM)
        .map(|i| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let u = (state >> 40) as f32 / (1u64 << 24) as f32;
            u - 0.5 + if i % DIM == 0 { 0.7 } else { 0.05 }
        })
        .collect()
}

fn write_npy(path: &Path, rows: &[f32], descr: &str) {
    let mut header = format!(
        "{{'descr': '{descr}', 'fortran_order': False, 'shape': ({}, {DIM}), }}",
        rows.len() / DIM
    );
    header.push_str(&" ".repeat((64 - (11 + header.len()) % 64) % 64));
    header.push('\n');
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend((header.len() as u16).to_le_bytes());
    bytes.extend(header.as_bytes());
    for v in rows {
        bytes.extend(v.to_le_bytes());
    }
    std::fs::write(path, bytes).unwrap();
}

/// One `column` of vectors: FixedSizeList<Float32> or List<Float32>.
fn batch(rows: &[f32], column: &str, fixed: bool) -> RecordBatch {
    let item = Arc::new(Field::new("item", DataType::Float32, false));
    let values = Arc::new(Float32Array::from(rows.to_vec()));
    let list: ArrayRef = if fixed {
        Arc::new(FixedSizeListArray::try_new(item, DIM as i32, values, None).unwrap())
    } else {
        let offsets = arrow::buffer::OffsetBuffer::from_lengths(vec![DIM; rows.len() / DIM]);
        Arc::new(ListArray::try_new(item, offsets, values, None).unwrap())
    };
    let schema = Schema::new(vec![Field::new(column, list.data_type().clone(), false)]);
    RecordBatch::try_new(Arc::new(schema), vec![list]).unwrap()
}

fn write_parquet(path: &Path, rows: &[f32], column: &str) {
    let b = batch(rows, column, true);
    let file = std::fs::File::create(path).unwrap();
    let mut w = parquet::arrow::ArrowWriter::try_new(file, b.schema(), None).unwrap();
    w.write(&b).unwrap();
    w.close().unwrap();
}

fn write_arrow(path: &Path, rows: &[f32]) {
    let b = batch(rows, "embedding", false);
    let file = std::fs::File::create(path).unwrap();
    let mut w = arrow::ipc::writer::FileWriter::try_new(file, &b.schema()).unwrap();
    w.write(&b).unwrap();
    w.finish().unwrap();
}

fn write_jsonl(path: &Path, rows: &[f32]) {
    let text: String = rows
        .chunks(DIM)
        .map(|r| serde_json::json!({ "text": "x", "embedding": r }).to_string() + "\n")
        .collect();
    std::fs::write(path, text).unwrap();
}

/// `diagnose --embeddings FILES`, with a reservoir of 300 unless `extra` sets one.
fn diagnose(files: &[&Path], extra: &[&str]) -> Value {
    let mut args = vec!["diagnose", "--format", "json", "--seed", "5"];
    if !extra.contains(&"--reservoir") {
        args.extend(["--reservoir", "300"]);
    }
    args.push("--embeddings");
    args.extend(files.iter().map(|p| p.to_str().unwrap()));
    args.extend(extra);
    let out = embedtune(&args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Exact figures within `tol` relative, sampled ones identical.
fn assert_same(a: &Value, b: &Value, tol: f64) {
    let exact = a["exact"].as_array().unwrap();
    assert_eq!(exact.len(), 5);
    for key in exact.iter().map(|k| k.as_str().unwrap()) {
        let (x, y) = (a[key].as_f64().unwrap(), b[key].as_f64().unwrap());
        assert!(
            (x - y).abs() <= tol * x.abs().max(y.abs()),
            "{key}: {x} vs {y}"
        );
    }
    for key in [
        "n",
        "pairs",
        "pairs_exact",
        "sample",
        "uniformity",
        "cosine_histogram",
    ] {
        assert_eq!(a[key], b[key], "{key}");
    }
}

#[test]
fn shards_in_any_order_and_saved_stats_give_the_single_file_result() {
    let dir = tempfile::tempdir().unwrap();
    let p = |name: &str| -> PathBuf { dir.path().join(name) };
    let rows = vectors(2000);
    write_npy(&p("all.npy"), &rows, "<f4");
    let whole = diagnose(&[&p("all.npy")], &[]);

    // The exact figures are the in-memory ones.
    let e = Embeddings {
        dim: DIM,
        data: rows.clone(),
    };
    let in_memory = embedtune::metrics::avg_cosine(&e).unwrap();
    let streamed = whole["avg_cosine"].as_f64().unwrap();
    assert!(
        (streamed - in_memory).abs() <= 1e-9 * in_memory.abs(),
        "{streamed} vs {in_memory}"
    );
    assert_eq!(whole["n"], 2000);
    assert_eq!(whole["sample"], 300);
    assert_eq!(whole["pairs_exact"], false);
    assert_eq!(whole["needs_model"].as_array().unwrap().len(), 3);
    assert!(whole.get("alignment").is_none() && whole.get("token_avg_cosine").is_none());
    assert!(
        whole["exact"]
            .as_array()
            .unwrap()
            .contains(&"avg_cosine".into())
    );
    assert!(
        whole["sampled"]
            .as_array()
            .unwrap()
            .contains(&"uniformity".into())
    );

    // Four shards in four formats, given out of order.
    let d = DIM;
    write_npy(&p("a.npy"), &rows[..500 * d], "<f4");
    write_parquet(&p("b.parquet"), &rows[500 * d..1100 * d], "embedding");
    write_arrow(&p("c.arrow"), &rows[1100 * d..1900 * d]);
    write_jsonl(&p("d.jsonl"), &rows[1900 * d..]);
    let shards = [p("c.arrow"), p("a.npy"), p("d.jsonl"), p("b.parquet")];
    let refs: Vec<&Path> = shards.iter().map(PathBuf::as_path).collect();
    assert_same(&diagnose(&refs, &[]), &whole, 1e-12);

    // Partial statistics saved on two "machines" and merged on a third.
    let s1 = p("s1.stats");
    let s2 = p("s2.stats");
    diagnose(&refs[..2], &["--save-stats", s1.to_str().unwrap()]);
    diagnose(&refs[2..], &["--save-stats", s2.to_str().unwrap()]);
    let out = embedtune(&[
        "diagnose",
        "--format",
        "json",
        "--reservoir",
        "300",
        "--seed",
        "5",
        "--stats",
        s2.to_str().unwrap(),
        s1.to_str().unwrap(),
        "--json",
        p("report.json").to_str().unwrap(),
        "--plot",
        p("figs").to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let merged: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_same(&merged, &whole, 1e-12);
    let saved: Value = serde_json::from_slice(&std::fs::read(p("report.json")).unwrap()).unwrap();
    assert_eq!(saved, merged);
    for f in ["cosine_histogram.svg", "circle.svg"] {
        assert!(
            std::fs::read_to_string(p("figs").join(f))
                .unwrap()
                .starts_with("<svg")
        );
    }
    assert!(!p("figs").join("per_layer_avg_cosine.svg").exists());

    // A reservoir holding every vector makes the sampled figures exact.
    let all = diagnose(&[&p("all.npy")], &["--reservoir", "5000"]);
    assert_eq!(all["pairs_exact"], true);
    assert_eq!(all["pairs"], 2000 * 1999 / 2);
}

#[test]
fn bad_vector_inputs_give_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let p = |name: &str| -> PathBuf { dir.path().join(name) };
    let s = |path: &PathBuf| path.to_str().unwrap().to_string();
    let rows = vectors(10);
    write_npy(&p("ok.npy"), &rows, "<f4");
    write_npy(&p("f8.npy"), &rows, "<f8");
    write_parquet(&p("other.parquet"), &rows, "vector");
    std::fs::write(
        p("ragged.jsonl"),
        "{\"embedding\": [1, 2]}\n{\"embedding\": [1]}\n",
    )
    .unwrap();
    std::fs::write(
        p("narrow.jsonl"),
        "{\"embedding\": [1, 2]}\n{\"embedding\": [3, 1]}\n",
    )
    .unwrap();
    std::fs::write(p("junk.stats"), b"not statistics").unwrap();
    let run = |args: &[&str]| {
        let mut all = vec!["diagnose"];
        all.extend(args);
        embedtune(&all)
    };
    let e = |f: &str| vec!["--embeddings".to_string(), s(&p(f))];
    let check = |args: Vec<String>, needle: &str| {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        assert_clean_error(&run(&refs), needle);
    };
    check(e("f8.npy"), "<f8");
    check(e("other.parquet"), "no column `embedding`");
    check(e("ragged.jsonl"), "ragged");
    check(e("missing.npy"), "no such file");
    check(
        [e("ok.npy"), vec![s(&p("narrow.jsonl"))]].concat(),
        "dimensions",
    );
    check(
        [e("ok.npy"), vec!["--model".into(), "x".into()]].concat(),
        "--model is not used",
    );
    check(
        [e("ok.npy"), vec!["--reservoir".into(), "1".into()]].concat(),
        "--reservoir",
    );
    check(
        vec!["--stats".into(), s(&p("junk.stats"))],
        "not embedtune statistics",
    );
    check(vec!["--format".into(), "json".into()], "--model");
    // Saved with one seed, merged with vectors read under another.
    let saved = p("seed1.stats");
    let out = run(&[
        "--embeddings",
        &s(&p("ok.npy")),
        "--seed",
        "1",
        "--save-stats",
        &s(&saved),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    check(
        [e("ok.npy"), vec!["--stats".into(), s(&saved)]].concat(),
        "same options",
    );
}

/// What `embed` writes, in every format and in several chunks, reads back
/// as the same vectors: the same figures from each file, and the pooled
/// figures of `diagnose --model` on the same sentences.
#[test]
fn embed_outputs_read_back_as_the_model_diagnosis() {
    let dir = tempfile::tempdir().unwrap();
    let model = common::tiny_model(dir.path());
    let data = common::corpus(dir.path(), 120);
    let (m, d) = (model.to_str().unwrap(), data.to_str().unwrap());
    let mut figures = Vec::new();
    for ext in ["npy", "parquet", "arrow", "jsonl"] {
        let out = dir.path().join(format!("e.{ext}"));
        let o = common::embed(&model, &data, &out, &["--chunk-size", "50"]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        figures.push(diagnose(&[&out], &[]));
    }
    // Chunked differently per format: the same up to f64 rounding, which
    // the effective rank of this low-rank random model amplifies.
    for f in &figures[1..] {
        assert_same(f, &figures[0], 1e-9);
    }
    let o = embedtune(&["diagnose", "--model", m, "--data", d, "--format", "json"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let model_run: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(model_run["n"], figures[0]["n"]);
    for key in [
        "avg_cosine",
        "mean_vector_norm",
        "effective_rank",
        "isoscore",
        "uniformity",
    ] {
        let (x, y) = (
            model_run[key].as_f64().unwrap(),
            figures[0][key].as_f64().unwrap(),
        );
        assert!(
            (x - y).abs() <= 1e-9 * x.abs().max(y.abs()),
            "{key}: {x} vs {y}"
        );
    }
}
