//! Streaming `embed`: chunked output equals the one-pass output, a killed
//! run resumes to the same bytes, shards concatenate to the whole.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{assert_clean_error, corpus, embed, tiny_model};

/// Asserts two files are byte-identical, without printing their bytes.
fn assert_same_bytes(a: &[u8], b: &[u8], what: &str) {
    let first = a.iter().zip(b).position(|(x, y)| x != y);
    assert!(
        a.len() == b.len() && first.is_none(),
        "{what}: {} vs {} bytes, first difference at {first:?}",
        a.len(),
        b.len()
    );
}

fn ok(out: std::process::Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "{stderr}");
    stderr
}

/// The vectors of an `.npy` written by embed (a 128-byte header here).
fn npy_rows(path: &Path, dim: usize) -> Vec<Vec<f32>> {
    let bytes = std::fs::read(path).unwrap();
    let floats: Vec<f32> = bytes[128..]
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    floats.chunks(dim).map(<[f32]>::to_vec).collect()
}

/// Texts and vectors of a `.parquet` or `.arrow` written by embed.
fn columnar_rows(path: &Path) -> (Vec<String>, Vec<Vec<f32>>) {
    use arrow::array::{Array, AsArray, RecordBatch};
    use arrow::datatypes::Float32Type;
    let file = std::fs::File::open(path).unwrap();
    let batches: Vec<RecordBatch> = if path.extension().unwrap() == "parquet" {
        parquet::arrow::arrow_reader::ParquetRecordBatchReader::try_new(file, 1024)
            .unwrap()
            .map(Result::unwrap)
            .collect()
    } else {
        arrow::ipc::reader::FileReader::try_new(file, None)
            .unwrap()
            .map(Result::unwrap)
            .collect()
    };
    let (mut texts, mut rows) = (Vec::new(), Vec::new());
    for b in &batches {
        texts.extend(
            b.column(0)
                .as_string::<i32>()
                .iter()
                .map(|t| t.unwrap().to_string()),
        );
        let list = b.column(1).as_fixed_size_list();
        for i in 0..list.len() {
            rows.push(
                list.value(i)
                    .as_primitive::<Float32Type>()
                    .values()
                    .to_vec(),
            );
        }
    }
    (texts, rows)
}

fn jsonl_rows(path: &Path) -> (Vec<String>, Vec<Vec<f32>>) {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            let e = v["embedding"].as_array().unwrap();
            let e = e.iter().map(|x| x.as_f64().unwrap() as f32).collect();
            (v["text"].as_str().unwrap().to_string(), e)
        })
        .unzip()
}

fn max_diff(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .flat_map(|(x, y)| x.iter().zip(y).map(|(p, q)| (p - q).abs()))
        .fold(0.0, f32::max)
}

#[test]
fn chunked_output_is_the_one_pass_output_in_every_format() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let data = corpus(dir.path(), 500);
    let lines: Vec<String> = std::fs::read_to_string(&data)
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    let one = dir.path().join("one.npy");
    ok(embed(&model, &data, &one, &[]));
    let reference = npy_rows(&one, 32);
    assert_eq!(reference.len(), 500);
    for ext in ["npy", "jsonl", "parquet", "arrow"] {
        let chunked = dir.path().join(format!("chunked.{ext}"));
        ok(embed(&model, &data, &chunked, &["--chunk-size", "64"]));
        let (texts, rows) = match ext {
            "npy" => (lines.clone(), npy_rows(&chunked, 32)),
            "jsonl" => jsonl_rows(&chunked),
            _ => columnar_rows(&chunked),
        };
        assert_eq!(texts, lines, "{ext}: rows in input order");
        // Chunks batch the texts differently: equal up to f32 rounding.
        let d = max_diff(&rows, &reference);
        assert!(d <= 1e-5, "{ext}: max |diff| {d}");
    }
    assert!(!dir.path().join(".chunked.npy.partial").exists());
}

#[test]
fn a_killed_run_resumes_to_the_same_bytes_without_redoing_finished_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let data = corpus(dir.path(), 20_000);
    let full = dir.path().join("full.parquet");
    ok(embed(&model, &data, &full, &["--chunk-size", "500"]));

    let out = dir.path().join("r.parquet");
    let partial = dir.path().join(".r.parquet.partial");
    let mut child = Command::new(env!("CARGO_BIN_EXE_embedtune"))
        .args(["embed", "--model", model.to_str().unwrap(), "--data"])
        .args([data.to_str().unwrap(), "--out", out.to_str().unwrap()])
        .args(["--chunk-size", "500"])
        .spawn()
        .unwrap();
    let start = Instant::now();
    while !partial.join("chunk-00000002.f32").exists() {
        assert!(start.elapsed() < Duration::from_secs(120), "no chunk saved");
        assert!(
            child.try_wait().unwrap().is_none(),
            "finished before the kill"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap(); // SIGKILL: no chance to clean up
    child.wait().unwrap();
    assert!(!out.exists(), "a killed run leaves no output");
    let saved = std::fs::read_dir(&partial)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("chunk-"))
        .count();
    assert!((3..40).contains(&saved), "{saved} chunks saved");

    // Without --resume the finished chunks are not thrown away.
    assert_clean_error(
        &embed(&model, &data, &out, &["--chunk-size", "500"]),
        "pass --resume",
    );
    // With other settings they are not mixed in.
    assert_clean_error(
        &embed(&model, &data, &out, &["--chunk-size", "400", "--resume"]),
        "--chunk-size was 500 in the stopped run, now 400",
    );
    let stderr = ok(embed(
        &model,
        &data,
        &out,
        &["--chunk-size", "500", "--resume"],
    ));
    let resumed = format!("resumed: {} of 20000 rows", saved * 500);
    assert!(stderr.contains(&resumed), "`{resumed}` not in {stderr}");
    let (a, b) = (std::fs::read(&full).unwrap(), std::fs::read(&out).unwrap());
    assert_same_bytes(&a, &b, "resumed");
    assert!(
        !partial.exists(),
        "the work folder goes once the output is complete"
    );
}

#[test]
fn shards_concatenate_to_the_whole_input_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let data = corpus(dir.path(), 1001);
    let whole = dir.path().join("whole.jsonl");
    ok(embed(&model, &data, &whole, &["--chunk-size", "100"]));
    let mut joined = Vec::new();
    for i in 0..3 {
        let part = dir.path().join(format!("part{i}.jsonl"));
        let shard = format!("{i}/3");
        let stderr = ok(embed(
            &model,
            &data,
            &part,
            &["--shard", &shard, "--chunk-size", "100"],
        ));
        assert!(stderr.contains(&format!("shard {i}/3")), "{stderr}");
        joined.extend(std::fs::read(&part).unwrap());
    }
    let whole = std::fs::read(&whole).unwrap();
    assert_same_bytes(&joined, &whole, "shards");
}

#[test]
fn bad_shards_and_chunk_sizes_are_refused_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let data = corpus(dir.path(), 10);
    let out = dir.path().join("o.npy");
    for (flags, needle) in [
        (["--shard", "3/3"], "--shard 3/3"),
        (["--shard", "1"], "expected I/N"),
        (["--shard", "a/b"], "whole numbers"),
        (["--chunk-size", "0"], "--chunk-size 0"),
    ] {
        let out = embed(&model, &data, &out, &flags);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && stderr.contains(needle), "{stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(names.len(), 2, "nothing written: {names:?}");
}
