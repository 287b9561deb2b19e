//! `embedtune embed` end to end: formats, order, and every bad input giving a
//! one-line error with no partial output.

mod common;

use std::path::{Path, PathBuf};

use common::{assert_clean_error, embed, embedtune, model_variant};

fn write(dir: &Path, name: &str, content: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, content).unwrap();
    p
}

// Blank and null rows: rows_stay_aligned_with_null_and_empty_rows.
const TEXTS: &str = "A man is playing a guitar.\nA woman slices an onion.\nThe sky is blue.\n";

#[test]
fn every_output_format_round_trips_in_input_order() {
    let Some(model) = common::test_model() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let data = write(dir.path(), "in.txt", TEXTS.as_bytes());
    let m = model.to_str().unwrap();
    let d = data.to_str().unwrap();
    let jsonl = dir.path().join("out.jsonl");
    let out = embedtune(&[
        "embed",
        "--model",
        m,
        "--data",
        d,
        "--out",
        jsonl.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: Vec<serde_json::Value> = std::fs::read_to_string(&jsonl)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let texts: Vec<&str> = rows.iter().map(|r| r["text"].as_str().unwrap()).collect();
    assert_eq!(
        texts,
        [
            "A man is playing a guitar.",
            "A woman slices an onion.",
            "The sky is blue."
        ]
    );
    let first: Vec<f32> = rows[0]["embedding"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap() as f32)
        .collect();
    assert_eq!(first.len(), 384);
    // The model lists a Normalize module: unit vectors by default.
    let norm: f32 = first.iter().map(|v| v * v).sum::<f32>().sqrt();
    assert!((norm - 1.0).abs() < 1e-4);

    // .npy: header plus 3 × 384 little-endian f32, same numbers.
    let npy = dir.path().join("out.npy");
    assert!(
        embedtune(&[
            "embed",
            "--model",
            m,
            "--data",
            d,
            "--out",
            npy.to_str().unwrap()
        ])
        .status
        .success()
    );
    let bytes = std::fs::read(&npy).unwrap();
    assert_eq!(&bytes[..6], b"\x93NUMPY");
    let header_len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    assert_eq!((10 + header_len) % 64, 0);
    assert!(String::from_utf8_lossy(&bytes[10..10 + header_len]).contains("'shape': (3, 384)"));
    let body = &bytes[10 + header_len..];
    assert_eq!(body.len(), 3 * 384 * 4);
    let v0 = f32::from_le_bytes(body[..4].try_into().unwrap());
    assert!((v0 - first[0]).abs() < 1e-6);

    // .parquet and .arrow come back as inputs (text column) in order.
    for ext in ["parquet", "arrow"] {
        let p = dir.path().join(format!("out.{ext}"));
        let o = embedtune(&[
            "embed",
            "--model",
            m,
            "--data",
            d,
            "--out",
            p.to_str().unwrap(),
        ]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let back = embedtune::source::read_texts(&p, "text").unwrap();
        assert_eq!(back.texts, texts);
        // …and embed again from that file with --column.
        let again = dir.path().join(format!("again-{ext}.jsonl"));
        let o = embedtune(&[
            "embed",
            "--model",
            m,
            "--data",
            p.to_str().unwrap(),
            "--column",
            "text",
            "--out",
            again.to_str().unwrap(),
        ]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert_eq!(
            std::fs::read(&again).unwrap(),
            std::fs::read(&jsonl).unwrap()
        );
    }
}

#[test]
fn csv_and_jsonl_inputs_use_the_named_column() {
    let Some(model) = common::test_model() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let m = model.to_str().unwrap();
    let csv = write(
        dir.path(),
        "in.csv",
        b"id,sentence\n1,\"Hello, world.\"\n2,Good night.\n",
    );
    let jsonl = write(
        dir.path(),
        "in.jsonl",
        b"{\"sentence\": \"Hello, world.\"}\n{\"sentence\": \"Good night.\"}\n",
    );
    let mut outputs = Vec::new();
    for input in [&csv, &jsonl] {
        let out = dir.path().join(format!(
            "{}.jsonl",
            input.file_name().unwrap().to_string_lossy()
        ));
        let o = embedtune(&[
            "embed",
            "--model",
            m,
            "--data",
            input.to_str().unwrap(),
            "--column",
            "sentence",
            "--out",
            out.to_str().unwrap(),
        ]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        outputs.push(std::fs::read_to_string(out).unwrap());
    }
    assert_eq!(outputs[0], outputs[1]);
    assert!(outputs[0].starts_with("{\"text\":\"Hello, world.\""));
}

#[test]
fn non_utf8_lines_keep_their_row_and_are_reported() {
    let Some(model) = common::test_model() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let data = write(
        dir.path(),
        "in.txt",
        b"Fine line.\n\xff\xfe broken\nAnother fine line.\n",
    );
    let out = dir.path().join("out.jsonl");
    let o = embed(&model, &data, &out, &[]);
    assert!(o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("1 line(s)"));
    let rows: Vec<String> = std::fs::read_to_string(out)
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    assert_eq!(rows.len(), 3, "one row per input line");
    assert!(rows[1].contains('\u{fffd}'), "{}", rows[1]);
}

#[test]
fn rows_stay_aligned_with_null_and_empty_rows() {
    let dir = tempfile::tempdir().unwrap();
    let model = common::tiny_model(dir.path());
    // A Parquet file whose second row is null.
    let data = dir.path().join("in.parquet");
    common::write_parquet_texts(&data, &[Some("a cat runs"), None, Some("the dog")], None);
    let out = dir.path().join("out.jsonl");
    let o = embed(&model, &data, &out, &[]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    assert!(
        stderr.contains("1 row(s)") && stderr.contains("empty or null"),
        "{stderr}"
    );
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let got: Vec<&str> = lines.iter().map(|l| l["text"].as_str().unwrap()).collect();
    assert_eq!(
        got,
        ["a cat runs", "", "the dog"],
        "row i of OUT is row i of the input"
    );
}

#[test]
fn bad_inputs_fail_cleanly_without_output() {
    let Some(model) = common::test_model() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let data = write(dir.path(), "in.txt", TEXTS.as_bytes());
    let d = data.to_str().unwrap();
    let out = dir.path().join("out.jsonl");
    let o = out.to_str().unwrap();
    let m = model.to_str().unwrap();

    let run = |args: &[&str], needle: &str| {
        let res = embedtune(args);
        assert_clean_error(&res, needle);
        assert!(!out.exists(), "partial output left for {args:?}");
        let leftovers: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().contains(".tmp-"))
            .collect();
        assert!(leftovers.is_empty(), "temporary file left for {args:?}");
    };

    // Missing model folder.
    run(
        &[
            "embed",
            "--model",
            "./no/such/model",
            "--data",
            d,
            "--out",
            o,
        ],
        "no such folder",
    );
    // A folder without weights.
    let no_weights = model_variant(&model, &dir.path().join("a"), &["model.safetensors"], &[]);
    run(
        &[
            "embed",
            "--model",
            no_weights.to_str().unwrap(),
            "--data",
            d,
            "--out",
            o,
        ],
        "no weights",
    );
    // Truncated safetensors.
    let full = std::fs::read(model.join("model.safetensors")).unwrap();
    let truncated = model_variant(
        &model,
        &dir.path().join("b"),
        &[],
        &[("model.safetensors", full[..full.len() / 3].to_vec())],
    );
    run(
        &[
            "embed",
            "--model",
            truncated.to_str().unwrap(),
            "--data",
            d,
            "--out",
            o,
        ],
        "cannot read",
    );
    // Garbage safetensors.
    let garbage = model_variant(
        &model,
        &dir.path().join("c"),
        &[],
        &[("model.safetensors", b"not a tensor file".to_vec())],
    );
    run(
        &[
            "embed",
            "--model",
            garbage.to_str().unwrap(),
            "--data",
            d,
            "--out",
            o,
        ],
        "cannot read",
    );
    // Unknown model_type.
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(model.join("config.json")).unwrap()).unwrap();
    cfg["model_type"] = "gpt2".into();
    let gpt = model_variant(
        &model,
        &dir.path().join("d"),
        &[],
        &[("config.json", cfg.to_string().into_bytes())],
    );
    run(
        &[
            "embed",
            "--model",
            gpt.to_str().unwrap(),
            "--data",
            d,
            "--out",
            o,
        ],
        "unsupported model_type `gpt2`",
    );
    // A weight with the wrong shape is named.
    let mut cfg2: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(model.join("config.json")).unwrap()).unwrap();
    cfg2["intermediate_size"] = 1000.into();
    let shape = model_variant(
        &model,
        &dir.path().join("e"),
        &[],
        &[("config.json", cfg2.to_string().into_bytes())],
    );
    run(
        &[
            "embed",
            "--model",
            shape.to_str().unwrap(),
            "--data",
            d,
            "--out",
            o,
        ],
        "intermediate.dense.weight",
    );
    // Empty data file (blank lines only).
    let empty = write(dir.path(), "empty.txt", b"\n  \n");
    run(
        &[
            "embed",
            "--model",
            m,
            "--data",
            empty.to_str().unwrap(),
            "--out",
            o,
        ],
        "contains no text",
    );
    // Missing data file.
    run(
        &[
            "embed",
            "--model",
            m,
            "--data",
            "/no/such/file.txt",
            "--out",
            o,
        ],
        "no such file",
    );
    // A column that does not exist.
    let csv = write(dir.path(), "in.csv", b"sentence\nhello\n");
    run(
        &[
            "embed",
            "--model",
            m,
            "--data",
            csv.to_str().unwrap(),
            "--out",
            o,
        ],
        "no column `text`",
    );
    // Output in a missing directory.
    let nested = dir.path().join("missing/dir/out.jsonl");
    run(
        &[
            "embed",
            "--model",
            m,
            "--data",
            d,
            "--out",
            nested.to_str().unwrap(),
        ],
        "does not exist",
    );
    assert!(!nested.exists());
    // Unknown output extension.
    let bad_ext = dir.path().join("out.xlsx");
    run(
        &[
            "embed",
            "--model",
            m,
            "--data",
            d,
            "--out",
            bad_ext.to_str().unwrap(),
        ],
        "unknown output format",
    );
}

#[test]
fn existing_output_is_untouched_when_a_run_fails() {
    let Some(model) = common::test_model() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let out = write(dir.path(), "out.jsonl", b"previous result\n");
    let empty = write(dir.path(), "empty.txt", b"\n");
    let res = embed(&model, &empty, &out, &[]);
    assert!(!res.status.success());
    assert_eq!(std::fs::read(&out).unwrap(), b"previous result\n");
}
