//! `diagnose` and `eval` on the real model, and their bad inputs.

mod common;

use common::{assert_clean_error, embedtune};

fn json(out: &std::process::Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn sts_dev_spearman_matches_the_published_figure() {
    let Some(model) = common::test_model() else {
        return;
    };
    let Some(dev) = common::shared_data("stsb/sts-dev.csv") else {
        return;
    };
    let (m, d) = (model.to_str().unwrap(), dev.to_str().unwrap());
    let mean = json(&embedtune(&[
        "eval",
        "--model",
        m,
        "--sts",
        d,
        "--max-len",
        "128",
        "--format",
        "json",
    ]));
    assert_eq!(mean["n"], 1500);
    let s = mean["spearman"].as_f64().unwrap();
    // all-MiniLM-L6-v2 on STS-B dev: 86.7 with PyTorch.
    assert!((s - 86.7).abs() < 0.3, "mean-pooled spearman {s}");
    let cls = json(&embedtune(&[
        "eval",
        "--model",
        m,
        "--sts",
        d,
        "--max-len",
        "128",
        "--pooling",
        "cls",
        "--format",
        "json",
    ]));
    let c = cls["spearman"].as_f64().unwrap();
    assert!(c < s - 3.0, "cls {c} should be clearly below mean {s}");
}

#[test]
fn diagnose_shows_the_cls_cone_and_writes_figures() {
    let Some(model) = common::test_model() else {
        return;
    };
    let m = model.to_str().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let plots = dir.path().join("figs");
    let run = |pooling: &str| {
        json(&embedtune(&[
            "diagnose",
            "--model",
            m,
            "--pooling",
            pooling,
            "--max-samples",
            "200",
            "--format",
            "json",
            "--plot",
            plots.to_str().unwrap(),
            "--max-len",
            "64",
        ]))
    };
    let cls = run("cls");
    let mean = run("mean");
    for key in [
        "model",
        "pooling",
        "max_len",
        "n",
        "pairs",
        "avg_cosine",
        "uniformity",
        "alignment",
        "top1_variance_ratio",
        "effective_rank",
        "mean_vector_norm",
        "isoscore",
        "per_layer_avg_cosine",
        "token_avg_cosine",
    ] {
        assert!(cls.get(key).is_some(), "missing key {key}");
    }
    assert_eq!(cls["n"], 200);
    assert_eq!(cls["pairs"], 200 * 199 / 2);
    let (c, mn) = (
        cls["avg_cosine"].as_f64().unwrap(),
        mean["avg_cosine"].as_f64().unwrap(),
    );
    assert!(c > 0.45 && mn < 0.2 && c > mn + 0.3, "cls {c} vs mean {mn}");
    assert!(cls["uniformity"].as_f64().unwrap() > mean["uniformity"].as_f64().unwrap() + 1.0);
    assert_eq!(cls["per_layer_avg_cosine"].as_array().unwrap().len(), 7);
    for f in [
        "cosine_histogram.svg",
        "per_layer_avg_cosine.svg",
        "circle.svg",
    ] {
        let svg = std::fs::read_to_string(plots.join(f)).unwrap();
        assert!(
            svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"),
            "{f}"
        );
    }
    // Same seed, same figures.
    let again = run("cls");
    assert_eq!(again["alignment"], cls["alignment"]);
    assert_eq!(again["token_avg_cosine"], cls["token_avg_cosine"]);
}

#[test]
fn diagnose_compare_and_table_output() {
    let Some(model) = common::test_model() else {
        return;
    };
    let m = model.to_str().unwrap();
    let out = embedtune(&[
        "diagnose",
        "--model",
        m,
        "--max-samples",
        "50",
        "--max-len",
        "32",
        "--compare",
        m,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("change"), "{text}");
    assert!(text.contains("+0.0000"), "{text}");
    let table = embedtune(&[
        "diagnose",
        "--model",
        m,
        "--max-samples",
        "50",
        "--max-len",
        "32",
        "--pooling",
        "cls",
    ]);
    assert!(String::from_utf8_lossy(&table.stdout).contains("verdict: narrow cone"));
}

#[test]
fn bad_inputs_give_clear_errors() {
    let Some(model) = common::test_model() else {
        return;
    };
    let m = model.to_str().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, body: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, body).unwrap();
        p
    };
    let good = "g\tf\t2012\t0001\t5.0\tA cat.\tA cat sits.\n";
    let short = write(
        "short.csv",
        &format!("{good}{good}g\tf\t2012\t0002\t3.0\tonly one sentence\n"),
    );
    assert_clean_error(
        &embedtune(&["eval", "--model", m, "--sts", short.to_str().unwrap()]),
        "line 3",
    );
    let nan = write("nan.csv", &format!("{good}g\tf\t2012\t0002\tabc\tA.\tB.\n"));
    assert_clean_error(
        &embedtune(&["eval", "--model", m, "--sts", nan.to_str().unwrap()]),
        "line 2: score `abc` is not a number",
    );
    let jsonl = write(
        "pairs.jsonl",
        "{\"sentence1\": \"a\", \"sentence2\": \"b\", \"score\": 1}\n{\"sentence1\": \"a\"}\n",
    );
    assert_clean_error(
        &embedtune(&["eval", "--model", m, "--sts", jsonl.to_str().unwrap()]),
        "line 2",
    );
    assert_clean_error(
        &embedtune(&["eval", "--model", m, "--sts", "/no/such.csv"]),
        "no such file",
    );

    let one = write("one.txt", "Only one sentence.\n");
    assert_clean_error(
        &embedtune(&["diagnose", "--model", m, "--data", one.to_str().unwrap()]),
        "at least 2 sentences",
    );
    let blocker = write("blocker", "a file, not a folder");
    let plot = blocker.join("figs");
    assert_clean_error(
        &embedtune(&["diagnose", "--model", m, "--plot", plot.to_str().unwrap()]),
        "blocker",
    );
    assert_clean_error(
        &embedtune(&["diagnose", "--model", m, "--format", "yaml"]),
        "unknown format",
    );
}

/// `diagnose --plot` when the disk fills up (simulated by a file-size
/// limit, its signal ignored so writes fail with EFBIG as on a full disk):
/// no figure appears rather than some, and no temporary file stays.
#[test]
fn plots_on_a_full_disk_leave_no_figure() {
    let dir = tempfile::tempdir().unwrap();
    let model = common::tiny_model(dir.path());
    let data = common::corpus(dir.path(), 40);
    let run = |plot: &std::path::Path, limit_kb: Option<u64>| {
        let limit = limit_kb.map_or(String::new(), |kb| format!("ulimit -f {kb}; "));
        std::process::Command::new("bash")
            .arg("-c")
            .arg(format!(
                "trap '' XFSZ; {limit}exec \"$0\" diagnose --model \"$1\" --data \"$2\" --plot \"$3\" --max-len 16"
            ))
            .arg(env!("CARGO_BIN_EXE_embedtune"))
            .args([&model, &data, &plot.to_path_buf()])
            .env("HF_HUB_OFFLINE", "1")
            .output()
            .unwrap()
    };
    let sizes = |plot: &std::path::Path| -> Vec<(String, u64)> {
        let mut v: Vec<(String, u64)> = std::fs::read_dir(plot)
            .unwrap()
            .flatten()
            .map(|e| {
                let name = e.file_name().to_string_lossy().to_string();
                (name, e.metadata().unwrap().len())
            })
            .collect();
        v.sort();
        v
    };
    let full = dir.path().join("full");
    assert!(run(&full, None).status.success());
    let written = sizes(&full);
    // Cosine histogram, layers, circle, alignment histogram.
    assert_eq!(written.len(), 4, "{written:?}");
    // A limit under the largest figure but above the others.
    let mut by_size: Vec<u64> = written.iter().map(|(_, s)| *s).collect();
    by_size.sort();
    let n = by_size.len();
    let limit_kb = (by_size[n - 1] - 1) / 1024;
    assert!(
        limit_kb * 1024 > by_size[n - 2],
        "figures too close in size: {written:?}"
    );
    let plot = dir.path().join("plot");
    let res = run(&plot, Some(limit_kb));
    let stderr = String::from_utf8_lossy(&res.stderr);
    assert!(
        !res.status.success() && !stderr.contains("panicked"),
        "{stderr}"
    );
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("error: ") && last.contains("plot"),
        "{stderr}"
    );
    assert_eq!(sizes(&plot), Vec::new(), "figures or temporaries left");
}
