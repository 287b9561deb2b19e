//! Bad inputs, table-driven, against the binary: every case must exit
//! non-zero with exactly one line on stderr that starts with `error: ` and
//! names the offending value or path, without a panic or a backtrace (even
//! with `RUST_BACKTRACE=1`), an OS error said twice, an output or temporary
//! file left behind, or an input changed. Cases run on a random 1-layer
//! BERT of hidden size 8 and small files written here.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::tiny_model_sized;

/// A case: the arguments (`{M}` model, `{D}` the case's folder), the files
/// it writes into its folder first, extra environment, and the text the
/// error line must contain.
struct Case {
    args: &'static str,
    files: Vec<(&'static str, Vec<u8>)>,
    env: Vec<(&'static str, &'static str)>,
    needle: &'static str,
}

fn case(args: &'static str, needle: &'static str) -> Case {
    Case {
        args,
        files: Vec::new(),
        env: Vec::new(),
        needle,
    }
}

impl Case {
    fn file(mut self, name: &'static str, bytes: impl Into<Vec<u8>>) -> Self {
        self.files.push((name, bytes.into()));
        self
    }
    fn env(mut self, key: &'static str, value: &'static str) -> Self {
        self.env.push((key, value));
        self
    }
}

const TEXTS: &str = "the cat sleeps .\nthe dog runs .\na bird sings .\n";

fn sentences(n: usize) -> String {
    let words = [
        "the", "a", "cat", "dog", "runs", "sleeps", "red", "tree", "sun", "moon",
    ];
    (0..n)
        .map(|i| {
            format!(
                "{} {} {} {} .\n",
                words[i % 10],
                words[(i / 10) % 10],
                words[(i / 100 + 3) % 10],
                words[(i * 7) % 10]
            )
        })
        .collect()
}

fn parquet_with_int_column() -> Vec<u8> {
    use std::sync::Arc;
    let schema = arrow::datatypes::Schema::new(vec![arrow::datatypes::Field::new(
        "text",
        arrow::datatypes::DataType::Int32,
        false,
    )]);
    let batch = arrow::array::RecordBatch::try_new(
        Arc::new(schema),
        vec![Arc::new(arrow::array::Int32Array::from(vec![1, 2, 3]))],
    )
    .unwrap();
    let mut buf = Vec::new();
    let mut w = parquet::arrow::ArrowWriter::try_new(&mut buf, batch.schema(), None).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
    buf
}

fn sts_rows(rows: &[(&str, &str, f64)]) -> String {
    rows.iter()
        .enumerate()
        .map(|(i, (a, b, s))| format!("g\tf\t2020\t{i:04}\t{s}\t{a}\t{b}\n"))
        .collect()
}

fn cases() -> Vec<Case> {
    let same_pairs = sts_rows(&[
        ("the cat sleeps", "the cat sleeps", 5.0),
        ("the dog runs", "the dog runs", 1.0),
        ("a bird sings", "a bird sings", 3.0),
    ]);
    let good_sts = sts_rows(&[
        ("the cat sleeps", "a dog runs", 1.0),
        ("the dog runs", "the dog runs", 5.0),
        ("a bird sings", "the sun", 2.0),
    ]);
    vec![
        // embed
        case("embed --model {M} --data {D}/none.txt --out {D}/o.npy", "none.txt"),
        case("embed --model {M} --data {D}/in.xyz --out {D}/o.npy", "unknown input format").file("in.xyz", TEXTS),
        case("embed --model {M} --data {D} --out {D}/o.npy", "is a folder"),
        case("embed --model {M} --data {D}/in.txt --out {D}/o.bin", "unknown output format").file("in.txt", TEXTS),
        case("embed --model {M} --data {D}/in.txt --out {D}/no/o.npy", "does not exist").file("in.txt", TEXTS),
        case("embed --model {M} --data {D}/in.txt --out {D}/dir.npy", "is a folder").file("in.txt", TEXTS).file("dir.npy/keep", ""),
        case("embed --model {M} --data {D}/in.jsonl --out {D}/in.jsonl", "--data input").file("in.jsonl", "{\"text\": \"a cat\"}\n"),
        case("embed --model {M} --data {D}/in.csv --out {D}/o.npy --column body", "no column `body`").file("in.csv", "text\na cat\n"),
        case("embed --model {M} --data {D}/in.jsonl --out {D}/o.npy --column body", "no column `body`").file("in.jsonl", "{\"text\": \"a cat\"}\n"),
        case("embed --model {M} --data {D}/in.jsonl --out {D}/o.npy", "line 2").file("in.jsonl", "{\"text\": \"a cat\"}\n{oops\n"),
        case("embed --model {M} --data {D}/in.jsonl --out {D}/o.npy", "`text` is not a string").file("in.jsonl", "{\"text\": \"a\"}\n{\"text\": 3}\n"),
        case("embed --model {M} --data {D}/in.csv --out {D}/o.npy", "never closed").file("in.csv", "id,text\n1,a cat\n2,\"a dog\n3,a bird\n4,the sun\n"),
        case("embed --model {M} --data {D}/in.txt --out {D}/o.npy", "contains no text").file("in.txt", "\n\n"),
        case("embed --model {M} --data {D}/in.parquet --out {D}/o.npy", "expected a string column").file("in.parquet", parquet_with_int_column()),
        case("embed --model {M} --data {D}/in.parquet --out {D}/o.npy", "not a readable parquet").file("in.parquet", "not parquet at all"),
        case("embed --model {M} --data {D}/in.arrow --out {D}/o.npy", "not a readable arrow").file("in.arrow", "ARROW1 but broken"),
        case("embed --model ./no/such/model --data {D}/in.txt --out {D}/o.npy", "./no/such/model").file("in.txt", TEXTS),
        case("embed --model loop/a --data {D}/in.txt --out {D}/o.npy", "loop/a does not exist) and not on the hub").file("in.txt", TEXTS),
        case("embed --model {D}/m --data {D}/in.txt --out {D}/o.npy", "no config.json").file("in.txt", TEXTS).file("m/vocab.txt", "[UNK]"),
        case("embed --model {D}/bad --data {D}/in.txt --out {D}/o.npy", "num_hidden_layers is 0").file("in.txt", TEXTS),
        case("embed --model {D}/bad --data {D}/in.txt --out {D}/o.npy", "weights for 2 layers").file("in.txt", TEXTS),
        case("embed --model {D}/bad --data {D}/in.txt --out {D}/o.npy", "several pooling modes (cls, mean)").file("in.txt", TEXTS),
        case("embed --model {D}/bad --data {D}/in.txt --out {D}/o.npy", "unknown pooling mode `pooling_mode_median_tokens`").file("in.txt", TEXTS),
        case("embed --model {D}/bad --data {D}/in.txt --out {D}/o.npy", "has no `[UNK]` token").file("in.txt", TEXTS),
        case("embed --model {D}/bad --data {D}/in.txt --out {D}/o.npy", "dtype I64").file("in.txt", TEXTS),
        case("embed --model {D}/bad --data {D}/in.txt --out {D}/o.npy", "config.json").file("in.txt", TEXTS),
        case("embed --model {D}/bad --data {D}/in.txt --out {D}/o.npy", "model.safetensors").file("in.txt", TEXTS),
        case("embed --model {M} --data {D}/in.txt --out {D}/o.npy --batch-size 0", "--batch-size 0").file("in.txt", TEXTS),
        case("embed --model {M} --data {D}/in.txt --out {D}/o.npy --max-len 1", "--max-len 1").file("in.txt", TEXTS),
        case("embed --model {M} --data {D}/in.txt --out {D}/o.npy --pooling median", "median").file("in.txt", TEXTS),
        case("embed --model {M} --data {D}/in.txt --out {D}/o.npy --device tpu", "tpu").file("in.txt", TEXTS),
        case("embed --model acme/model --data {D}/in.txt --out {D}/o.npy", "hf_hub_cache").file("in.txt", TEXTS).file("cache", "a file").env("HF_HUB_CACHE", "{D}/cache"),
        case("embed --model {M} --out {D}/o.npy", "--data"),
        // diagnose
        case("diagnose --model {M} --data {D}/none.txt", "none.txt"),
        case("diagnose --model {M} --data {D}/in.txt --max-samples 1", "--max-samples 1").file("in.txt", TEXTS),
        case("diagnose --model {M} --data {D}/in.txt", "in.txt: has 1 sentence").file("in.txt", "one sentence only\n"),
        case("diagnose --model {M} --data {D}/in.txt --plot {D}/blocker/figs", "blocker").file("in.txt", TEXTS).file("blocker", "x"),
        case("diagnose --model {M} --data {D}/in.txt --compare {D}/broken", "broken").file("in.txt", TEXTS).file("broken/config.json", "{}"),
        case("diagnose --model {M} --format yaml", "yaml"),
        case("diagnose --model {D}/missing/", "missing"),
        case("diagnose --model {M} --seed minus-one", "minus-one"),
        case("diagnose --model {M} --data {D}/in.tsv --column body", "no column `body`").file("in.tsv", "text\tid\na cat\t1\n"),
        case("diagnose --model {M} --data {D}/in.jsonl", "not a json object").file("in.jsonl", "[1, 2]\n"),
        // eval
        case("eval --model {M} --sts {D}/none.csv", "none.csv"),
        case("eval --model {M} --sts {D}/sts.csv", "at least 2 scored pairs").file("sts.csv", sts_rows(&[("a", "b", 1.0)])),
        case("eval --model {M} --sts {D}/sts.csv", "score `high`").file("sts.csv", "g\tf\t2020\t0\thigh\ta\tb\ng\tf\t2020\t1\t2\tc\td\n"),
        case("eval --model {M} --sts {D}/sts.csv", "expected 7 tab-separated fields").file("sts.csv", "a\tb\tc\n"),
        case("eval --model {M} --sts {D}/sts.jsonl", "sentence2").file("sts.jsonl", "{\"sentence1\": \"a\", \"score\": 1}\n{\"sentence1\": \"b\", \"sentence2\": \"c\", \"score\": 2}\n"),
        case("eval --model {M} --sts {D}/sts.csv", "sts.csv: every one of the 3 pairs has the same cosine").file("sts.csv", same_pairs),
        case("eval --model {M} --sts {D}/sts.csv", "no column `score`").file("sts.csv", "sentence1,sentence2,gold\na,b,1\nc,d,2\n"),
        case("eval --model {M} --sts {D}/sts.csv", "not valid utf-8").file("sts.csv", b"g\tf\t2020\t0\t1\ta\xff\tb\n".to_vec()),
        case("eval --model {D}/nope/ --sts {D}/sts.csv", "nope").file("sts.csv", good_sts.clone()),
        case("eval --model {M} --sts {D}/sts.csv --max-len 0", "--max-len 0").file("sts.csv", good_sts),
        // fit: settings
        case("fit --model {M} --data {D}/c.txt --out {D}/o --tau 0", "--tau 0").file("c.txt", sentences(60)),
        case("fit --model {M} --data {D}/c.txt --out {D}/o --t nan", "--t NaN").file("c.txt", sentences(60)),
        case("fit --model {M} --data {D}/c.txt --out {D}/o --weight-decay nan", "--weight-decay NaN").file("c.txt", sentences(60)),
        case("fit --model {M} --data {D}/c.txt --out {D}/o --tau=-0.05", "--tau -0.05").file("c.txt", sentences(60)),
        case("fit --model {M} --data {D}/c.txt --out {D}/o --t 0", "--t 0").file("c.txt", sentences(60)),
        case("fit --model {M} --data {D}/c.txt --out {D}/o --alpha 0", "--alpha 0").file("c.txt", sentences(60)),
        case("fit --model {M} --data {D}/c.txt --out {D}/o --max-grad-norm=-1", "--max-grad-norm -1").file("c.txt", sentences(60)),
        case("fit --model {M} --data {D}/c.txt --out {D}/o --loss combined --w-align 0 --w-uniform 0 --w-infonce 0", "every loss weight is 0").file("c.txt", sentences(60)),
        case("fit --model {M} --data {D}/c.txt --out {D}/o --w-align=-1", "--w-align -1").file("c.txt", sentences(60)),
        case("fit --model {M} --data {D}/c.txt --out {D}/o --batch-size 8 --epochs 9223372036854775808", "--epochs 9223372036854775808").file("c.txt", sentences(60)),
        case("fit --model {M} --data {D}/c.txt --out {D}/o --lr 0", "--lr 0").file("c.txt", sentences(60)),
        case("fit --model {M} --data {D}/c.txt --out {D}/o --warmup-ratio 1", "--warmup-ratio 1").file("c.txt", sentences(60)),
        case("fit --model {M} --data {D}/c.txt --out {D}/o --batch-size 1", "--batch-size 1").file("c.txt", sentences(60)),
        case("fit --model {M} --data {D}/c.txt --out {D}/o --steps 0", "--steps 0: nothing to train").file("c.txt", sentences(60)),
        case("fit --model {M} --data {D}/c.txt --out {D}/o --holdout 0", "--holdout 0").file("c.txt", sentences(60)),
        case("fit --model {M} --data {D}/c.txt --out {D}/o --pooling first-last-avg", "first-last-avg").file("c.txt", sentences(60)),
        case("fit --model {M} --data {D}/c.txt --out {D}/o --loss triplet", "triplet").file("c.txt", sentences(60)),
        // fit: data
        case("fit --model {M} --data {D}/c.txt --out {D}/o --steps 3 --batch-size 8 --max-len 16 --max-samples 1", "only 1 training sentence").file("c.txt", sentences(400)),
        case("fit --model {M} --data {D}/c.txt --out {D}/o --steps 3 --no-dedup", "only 0 distinct sentence").file("c.txt", "the same line .\n".repeat(400)),
        case("fit --model {M} --data {D}/c.txt --out {D}/o --min-words 1000", "only 0 training sentence").file("c.txt", sentences(60)),
        case("fit --model {M} --data /dev/null --out {D}/o", "/dev/null: is neither a regular file nor a folder"),
        case("fit --model {M} --data {D}/none --out {D}/o", "no such file or folder"),
        case("fit --model {M} --data {D}/c.txt --out {D}/o --eval-sts {D}/none.csv", "none.csv").file("c.txt", sentences(60)),
        case("fit --model {M} --data {D}/empty --out {D}/o", "folder has no").file("empty/notes.md", "x"),
        // fit: the output folder
        case("fit --model {M} --data {D}/corpus --out {D}/corpus --overwrite --steps 2", "is the --data input").file("corpus/c.txt", sentences(60)),
        case("fit --model {M} --data {D}/corpus --out {D}/corpus/model --steps 2", "lies inside the --data input").file("corpus/c.txt", sentences(60)),
        case("fit --model {D}/base --data {D}/c.txt --out {D}/base --overwrite --steps 2", "is the --model input").file("c.txt", sentences(60)),
        case("fit --model {M} --data {D}/c.txt --out {D}/o --steps 2", "exists and is not a folder").file("c.txt", sentences(60)).file("o", "a file"),
        case("fit --model {M} --data {D}/c.txt --out {D}/o --steps 2", "not empty").file("c.txt", sentences(60)).file("o/mine.txt", "keep"),
        case("fit --model {M} --data {D}/c.txt --out {D}/o --steps 2 --resume", "no checkpoints").file("c.txt", sentences(60)).file("o/mine.txt", "keep"),
        case("fit --model {D}/nope/ --data {D}/c.txt --out {D}/o --steps 2", "nope").file("c.txt", sentences(60)),
    ]
}

/// The broken model variants, by the needle of the case that uses them:
/// `{D}/bad` is the tiny model with one thing changed.
fn break_model(tiny: &Path, bad: &Path, needle: &str) {
    common::model_variant(tiny, bad, &[], &[]);
    let config = || -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(tiny.join("config.json")).unwrap()).unwrap()
    };
    let write_config = |c: serde_json::Value| {
        std::fs::remove_file(bad.join("config.json")).unwrap();
        std::fs::write(bad.join("config.json"), c.to_string()).unwrap();
    };
    let pooling = |json: &str| {
        std::fs::create_dir_all(bad.join("1_Pooling")).unwrap();
        std::fs::write(bad.join("1_Pooling/config.json"), json).unwrap();
    };
    match needle {
        "num_hidden_layers is 0" => {
            let mut c = config();
            c["num_hidden_layers"] = 0.into();
            write_config(c);
        }
        "weights for 2 layers" => {
            // Weights of a second layer under a config of one.
            let mut tensors = candle_core::safetensors::load(
                tiny.join("model.safetensors"),
                &candle_core::Device::Cpu,
            )
            .unwrap();
            let extra: Vec<_> = tensors
                .iter()
                .filter(|(k, _)| k.contains("encoder.layer.0."))
                .map(|(k, v)| (k.replace("layer.0.", "layer.1."), v.clone()))
                .collect();
            tensors.extend(extra);
            std::fs::remove_file(bad.join("model.safetensors")).unwrap();
            candle_core::safetensors::save(&tensors, bad.join("model.safetensors")).unwrap();
        }
        "several pooling modes (cls, mean)" => pooling(
            r#"{"word_embedding_dimension": 8, "pooling_mode_cls_token": true, "pooling_mode_mean_tokens": true}"#,
        ),
        "unknown pooling mode `pooling_mode_median_tokens`" => {
            pooling(r#"{"word_embedding_dimension": 8, "pooling_mode_median_tokens": true}"#)
        }
        "has no `[UNK]` token" => {
            let vocab = std::fs::read_to_string(tiny.join("vocab.txt")).unwrap();
            std::fs::remove_file(bad.join("vocab.txt")).unwrap();
            std::fs::write(bad.join("vocab.txt"), vocab.replace("[UNK]\n", "")).unwrap();
        }
        "dtype I64" => {
            let mut tensors = candle_core::safetensors::load(
                tiny.join("model.safetensors"),
                &candle_core::Device::Cpu,
            )
            .unwrap();
            let t = tensors.get_mut("bert.embeddings.LayerNorm.weight").unwrap();
            *t = t.to_dtype(candle_core::DType::I64).unwrap();
            std::fs::remove_file(bad.join("model.safetensors")).unwrap();
            candle_core::safetensors::save(&tensors, bad.join("model.safetensors")).unwrap();
        }
        "config.json" => write_config(serde_json::json!({"model_type": "bert"})),
        "model.safetensors" => {
            std::fs::remove_file(bad.join("model.safetensors")).unwrap();
            std::fs::write(
                bad.join("model.safetensors"),
                b"\x10\x00\x00\x00\x00\x00\x00\x00{broken",
            )
            .unwrap();
        }
        other => panic!("no variant for {other}"),
    }
}

/// Every file under `dir` (relative path → bytes), symbolic links as their
/// target.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap().flatten() {
            let p = entry.path();
            let rel = p.strip_prefix(dir).unwrap().to_path_buf();
            if p.is_dir() {
                out.insert(rel.join(""), Vec::new());
                stack.push(p);
            } else {
                out.insert(rel, std::fs::read(&p).unwrap_or_default());
            }
        }
    }
    out
}

/// Runs the binary with a time limit (a hang is a failure, not a stuck
/// test); returns exit success and stderr.
fn run(args: &[String], env: &[(String, String)]) -> (Option<bool>, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_embedtune"));
    cmd.args(args)
        .env("HF_HUB_OFFLINE", "1")
        .env("RUST_BACKTRACE", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status.success());
        }
        if started.elapsed() > Duration::from_secs(60) {
            child.kill().unwrap();
            child.wait().unwrap();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    (status, stderr)
}

/// What is wrong with the outcome of one case, if anything.
fn judge(status: Option<bool>, stderr: &str, needle: &str) -> Option<String> {
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    let line = lines.first().copied().unwrap_or("");
    let twice = (1..200).any(|n| stderr.matches(&format!("(os error {n})")).count() > 1);
    let problem = match status {
        None => "hung (killed after 60 s)",
        Some(true) => "exited 0",
        _ if stderr.contains("panicked") => "panicked",
        _ if lines.len() != 1 => "not exactly one line on stderr",
        _ if !line.starts_with("error: ") => "the line does not start with `error: `",
        _ if stderr.contains("backtrace") || line.len() > 600 => "a backtrace or a runaway message",
        _ if twice => "an OS error said twice",
        _ if !line.to_lowercase().contains(&needle.to_lowercase()) => {
            "the message does not name it"
        }
        _ => return None,
    };
    Some(format!("{problem}; `{needle}` expected; stderr: {stderr}"))
}

#[test]
fn every_bad_input_fails_cleanly() {
    let root = tempfile::tempdir().unwrap();
    let tiny = tiny_model_sized(root.path(), "tiny", 8, 1);
    let model_before = snapshot(&tiny);
    let cases = cases();
    assert!(cases.len() >= 60, "{} cases", cases.len());
    let mut failures = Vec::new();
    for (i, c) in cases.iter().enumerate() {
        let dir = root.path().join(format!("case{i:02}"));
        std::fs::create_dir_all(&dir).unwrap();
        for (name, bytes) in &c.files {
            let path = dir.join(name);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, bytes).unwrap();
        }
        if c.args.contains("{D}/bad") {
            break_model(&tiny, &dir.join("bad"), c.needle);
        }
        if c.args.contains("{D}/base") {
            common::model_variant(&tiny, &dir.join("base"), &[], &[]);
        }
        let fill = |s: &str| {
            s.replace("{M}", tiny.to_str().unwrap())
                .replace("{D}", dir.to_str().unwrap())
        };
        let args: Vec<String> = c.args.split(' ').map(fill).collect();
        let env: Vec<(String, String)> = c
            .env
            .iter()
            .map(|(k, v)| (k.to_string(), fill(v)))
            .collect();
        let before = snapshot(&dir);
        let (status, stderr) = run(&args, &env);
        if std::env::var_os("EMBEDTUNE_SHOW_ERRORS").is_some() {
            eprint!("case {i}: {stderr}");
        }
        let mut problem = judge(status, &stderr, c.needle);
        if problem.is_none() && snapshot(&dir) != before {
            let after = snapshot(&dir);
            let changed: Vec<_> = after
                .keys()
                .chain(before.keys())
                .filter(|k| after.get(*k) != before.get(*k))
                .collect();
            problem = Some(format!("files created or changed: {changed:?}"));
        }
        if let Some(p) = problem {
            failures.push(format!("case {i} `{}`: {p}", c.args));
        }
    }
    assert_eq!(snapshot(&tiny), model_before, "the model was changed");
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}
