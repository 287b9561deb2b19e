//! `fit` on a tiny random BERT: the loss falls, resume equals an
//! uninterrupted run, a NaN stops the run and keeps the checkpoint, the
//! saved folder reloads; bad inputs fail before training.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use common::{WORDS, assert_clean_error, corpus, embedtune, tiny_model};
use embedtune::diagnose::{self, DiagnoseOptions};
use embedtune::losses::LossConfig;
use embedtune::rng::Rng;
use embedtune::training::{
    self, CorpusOptions, FitJob, FitOutcome, Observer, Quiet, StepRecord, TrainConfig,
};
use embedtune::{DeviceSpec, Embedder, EmbedderOptions, Pooling};

fn job(model: &Path, data: &Path, out: &Path, steps: usize) -> FitJob {
    FitJob {
        model: model.to_str().unwrap().to_string(),
        data: data.to_path_buf(),
        out: out.to_path_buf(),
        corpus: CorpusOptions {
            holdout: 40,
            seed: 3,
            ..Default::default()
        },
        train: TrainConfig {
            lr: 5e-4,
            batch_size: 16,
            steps: Some(steps),
            seed: 3,
            eval_every: 4,
            save_every: 4,
            eval_holdout: 40,
            ..TrainConfig::default()
        },
        pooling: Some(Pooling::Mean),
        max_len: 16,
        device: DeviceSpec::Cpu,
        dtype: DType::F32,
        eval_sts: None,
        resume: false,
        overwrite: false,
        post: None,
    }
}

fn log(out: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(out.join("train_log.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn weights(path: &Path) -> HashMap<String, Vec<f32>> {
    candle_core::safetensors::load(path, &Device::Cpu)
        .unwrap()
        .into_iter()
        .map(|(k, v)| (k, v.flatten_all().unwrap().to_vec1().unwrap()))
        .collect()
}

/// bf16 and f16 compute keep f32 master weights: the loss falls as at f32,
/// the saved weights are f32 and are not bf16/f16-rounded values (updates
/// smaller than a half-precision step are kept), and a stopped run resumes.
#[test]
fn mixed_precision_trains_f32_master_weights() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let data = corpus(dir.path(), 400);
    for dtype in [DType::BF16, DType::F16] {
        let out = dir.path().join(dtype.as_str());
        let j = FitJob {
            dtype,
            ..job(&model, &data, &out, 16)
        };
        assert!(matches!(
            training::fit(&j, &mut StopAt(8, 0)).unwrap(),
            FitOutcome::Interrupted { step: 8, .. }
        ));
        let FitOutcome::Done(_) = training::fit(&FitJob { resume: true, ..j }, &mut Quiet).unwrap()
        else {
            panic!("interrupted")
        };
        let records = log(&out);
        assert_eq!(records.len(), 16);
        let losses: Vec<f64> = records
            .iter()
            .map(|r| r["loss"].as_f64().unwrap())
            .collect();
        assert!(
            losses.iter().all(|l| l.is_finite()),
            "{dtype:?}: {losses:?}"
        );
        let mean = |r: &[f64]| r.iter().sum::<f64>() / r.len() as f64;
        let (first, last) = (mean(&losses[..4]), mean(&losses[12..]));
        assert!(last < first - 0.05, "{dtype:?}: loss {first} → {last}");

        let report: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap())
                .unwrap();
        assert_eq!(report["dtype"], dtype.as_str());
        let card = std::fs::read_to_string(out.join("README.md")).unwrap();
        let line = format!(
            "| precision | {} compute, f32 master weights",
            dtype.as_str()
        );
        assert!(card.contains(&line), "{card}");

        // `weights` reads f32 tensors only: the saved model is f32.
        let saved = weights(&out.join("model.safetensors"));
        let base = weights(&model.join("model.safetensors"));
        let name = "bert.encoder.layer.0.attention.self.query.weight";
        let (w, w0) = (&saved[name], &base[name]);
        assert_ne!(w, w0, "{dtype:?}: trained");
        let half = Tensor::new(w.as_slice(), &Device::Cpu)
            .unwrap()
            .to_dtype(dtype)
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let off_grid = w.iter().zip(&half).filter(|(a, b)| a != b).count();
        assert!(
            off_grid > w.len() / 2,
            "{dtype:?}: only {off_grid} of {} weights are not {dtype:?} values",
            w.len()
        );
    }
}

#[test]
fn training_lowers_the_loss_and_saves_a_loadable_model() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let data = corpus(dir.path(), 400);
    let out = dir.path().join("out");
    let j = job(&model, &data, &out, 24);
    let FitOutcome::Done(report) = training::fit(&j, &mut Quiet).unwrap() else {
        panic!("interrupted")
    };
    let records = log(&out);
    assert_eq!(records.len(), 24);
    let mean = |r: &[serde_json::Value]| {
        r.iter().map(|v| v["loss"].as_f64().unwrap()).sum::<f64>() / r.len() as f64
    };
    let (first, last) = (mean(&records[..4]), mean(&records[20..]));
    assert!(last < first - 0.1, "loss {first} → {last}");
    assert!(records[3]["eval"]["heldout_uniformity"].is_number());
    assert!(report.after.uniformity < report.before.uniformity);

    // The folder has the sentence-transformers layout, original names…
    for f in [
        "config.json",
        "model.safetensors",
        "vocab.txt",
        "modules.json",
        "1_Pooling/config.json",
        "sentence_bert_config.json",
        "config_sentence_transformers.json",
        "report.json",
        "README.md",
    ] {
        assert!(out.join(f).is_file(), "missing {f}");
    }
    let saved = weights(&out.join("model.safetensors"));
    assert!(
        saved.keys().all(|k| k.starts_with("bert.")),
        "original names kept"
    );
    assert_eq!(
        saved.len(),
        5 + 16 * 2 + 1,
        "every tensor of the base checkpoint, the unused one too"
    );
    let pooling: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("1_Pooling/config.json")).unwrap())
            .unwrap();
    assert_eq!(pooling["pooling_mode_mean_tokens"], true);

    // …and reloads: the same figures on the same held-back sentences.
    let reloaded = Embedder::from_pretrained(
        out.to_str().unwrap(),
        EmbedderOptions {
            max_len: Some(16),
            device: DeviceSpec::Cpu,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(reloaded.pooling(), Pooling::Mean);
    let held = training::Corpus::open(&data, j.corpus.clone())
        .unwrap()
        .held_out;
    let again = diagnose::diagnose(
        &reloaded,
        &held,
        &DiagnoseOptions {
            seed: 3,
            ..Default::default()
        },
    )
    .unwrap();
    assert!((again.avg_cosine - report.after.avg_cosine).abs() < 1e-5);
    assert!((again.uniformity - report.after.uniformity).abs() < 1e-5);
}

/// Asks to stop after `at` steps, as Ctrl-C does.
struct StopAt(usize, usize);
impl Observer for StopAt {
    fn on_step(&mut self, r: &StepRecord) {
        self.1 = r.step;
    }
    fn should_stop(&self) -> bool {
        self.1 >= self.0
    }
}

#[test]
fn resume_equals_an_uninterrupted_run() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let data = corpus(dir.path(), 300);
    // 300 − 40 held back = 260 sentences: 17 steps an epoch, so 22 steps
    // cross an epoch boundary.
    let straight = dir.path().join("straight");
    training::fit(&job(&model, &data, &straight, 22), &mut Quiet).unwrap();

    let resumed = dir.path().join("resumed");
    let j = job(&model, &data, &resumed, 22);
    match training::fit(&j, &mut StopAt(10, 0)).unwrap() {
        FitOutcome::Interrupted { step, .. } => assert_eq!(step, 10),
        FitOutcome::Done(_) => panic!("should have stopped"),
    }
    assert!(
        resumed
            .join("checkpoints/step-00000010/state.json")
            .is_file()
    );
    assert!(!resumed.join("model.safetensors").exists());
    training::fit(&FitJob { resume: true, ..j }, &mut Quiet).unwrap();

    let (a, b) = (
        weights(&straight.join("model.safetensors")),
        weights(&resumed.join("model.safetensors")),
    );
    for (name, va) in &a {
        let worst = va
            .iter()
            .zip(&b[name])
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        assert!(worst <= 1e-6, "{name} differs by {worst}");
    }
    let (la, lb) = (log(&straight), log(&resumed));
    assert_eq!(la.len(), lb.len());
    for (x, y) in la.iter().zip(&lb) {
        assert_eq!(x["step"], y["step"]);
        assert!((x["loss"].as_f64().unwrap() - y["loss"].as_f64().unwrap()).abs() < 1e-6);
    }
}

/// Replaces the loss with NaN at one step.
struct NanAt(usize);
impl Observer for NanAt {
    fn adjust_loss(&mut self, step: usize, loss: Tensor) -> embedtune::Result<Tensor> {
        if step == self.0 {
            Ok((loss * f64::NAN)?)
        } else {
            Ok(loss)
        }
    }
}

#[test]
fn a_nan_loss_stops_the_run_and_keeps_the_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let data = corpus(dir.path(), 300);
    let out = dir.path().join("out");
    let err = match training::fit(&job(&model, &data, &out, 12), &mut NanAt(6)) {
        Err(e) => e.to_string(),
        Ok(_) => panic!("a NaN loss must stop training"),
    };
    assert!(err.contains("NaN at step 6"), "{err}");
    assert!(err.contains("step 4"), "{err}");
    let ckpt = out.join("checkpoints/step-00000004");
    assert!(ckpt.join("state.json").is_file());
    let w = weights(&ckpt.join("model.safetensors"));
    assert!(w.values().flatten().all(|v| v.is_finite()));
    assert!(
        !out.join("model.safetensors").exists(),
        "no model saved from a failed run"
    );
}

#[test]
fn bad_inputs_fail_before_training() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let data = corpus(dir.path(), 100);
    let (m, d) = (model.to_str().unwrap(), data.to_str().unwrap());
    let out = dir.path().join("out");
    let o = out.to_str().unwrap();
    let fit = |extra: &[&str], needle: &str| {
        let mut args = vec!["fit", "--model", m, "--data", d, "--out", o, "--steps", "2"];
        args.extend_from_slice(extra);
        let res = embedtune(&args);
        assert_clean_error(&res, needle);
        assert!(
            !out.join("train_log.jsonl").exists(),
            "training started for {extra:?}"
        );
    };
    fit(&["--min-words", "1000"], "only 0 training sentence");
    fit(&["--batch-size", "1"], "--batch-size 1");
    fit(&["--loss", "triplet"], "invalid value 'triplet'");
    fit(&["--pooling", "first-last-avg"], "first-last-avg");
    let res = embedtune(&["fit", "--model", m, "--data", "/no/such/corpus", "--out", o]);
    assert_clean_error(&res, "no such file or folder");
    // An --out that cannot be created (below a file).
    let blocker = dir.path().join("blocker");
    std::fs::write(&blocker, "x").unwrap();
    let bad_out = blocker.join("out");
    let res = embedtune(&[
        "fit",
        "--model",
        m,
        "--data",
        d,
        "--out",
        bad_out.to_str().unwrap(),
    ]);
    assert_clean_error(&res, "blocker");
    // A non-empty --out is refused without --resume or --overwrite.
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("keep.txt"), "mine").unwrap();
    let res = embedtune(&["fit", "--model", m, "--data", d, "--out", o, "--steps", "2"]);
    assert_clean_error(&res, "not empty");
    assert_eq!(
        std::fs::read_to_string(out.join("keep.txt")).unwrap(),
        "mine"
    );
}

#[test]
fn hub_datasets_are_read_from_the_cache() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let text = std::fs::read_to_string(corpus(dir.path(), 120)).unwrap();
    let texts: Vec<String> = text.lines().map(String::from).collect();
    // huggingface_hub's layout for datasets: datasets--owner--name/…
    let cache = dir.path().join("hub");
    let snap = cache.join("datasets--acme--books/snapshots/abc123/data");
    std::fs::create_dir_all(&snap).unwrap();
    std::fs::create_dir_all(cache.join("datasets--acme--books/refs")).unwrap();
    std::fs::write(cache.join("datasets--acme--books/refs/main"), "abc123").unwrap();
    let rows = embedtune::Embeddings {
        dim: 1,
        data: vec![0.0; texts.len()],
    };
    embedtune::output::write_embeddings(&snap.join("train-00000.parquet"), &texts, &rows).unwrap();
    let out = dir.path().join("out");
    let res = std::process::Command::new(env!("CARGO_BIN_EXE_embedtune"))
        .args([
            "fit",
            "--model",
            model.to_str().unwrap(),
            "--data",
            "hf://acme/books",
            "--out",
            out.to_str().unwrap(),
            "--steps",
            "2",
            "--batch-size",
            "8",
            "--holdout",
            "20",
            "--max-len",
            "16",
        ])
        .env("HF_HUB_OFFLINE", "1")
        .env("HF_HUB_CACHE", &cache)
        .output()
        .unwrap();
    assert!(
        res.status.success(),
        "{}",
        String::from_utf8_lossy(&res.stderr)
    );
    assert!(String::from_utf8_lossy(&res.stderr).contains("training sentences, 20 held back"));
    assert_eq!(log(&out).len(), 2);
}

#[test]
fn eval_sts_keeps_the_best_weights() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let data = corpus(dir.path(), 300);
    // A small STS file in the STS-benchmark layout, scores from word overlap.
    let mut rng = Rng::new(11);
    let mut rows = String::new();
    for i in 0..40 {
        let a: Vec<&str> = (0..5)
            .map(|_| WORDS[rng.below(WORDS.len() as u64) as usize])
            .collect();
        let mut b = a.clone();
        let changed = i % 5;
        for w in b.iter_mut().take(changed) {
            *w = WORDS[rng.below(WORDS.len() as u64) as usize];
        }
        rows += &format!(
            "g\tf\t2020\t{i:04}\t{}\t{}\t{}\n",
            5 - changed,
            a.join(" "),
            b.join(" ")
        );
    }
    let sts = dir.path().join("sts.csv");
    std::fs::write(&sts, rows).unwrap();
    let out = dir.path().join("out");
    let j = FitJob {
        eval_sts: Some(sts),
        ..job(&model, &data, &out, 12)
    };
    let FitOutcome::Done(report) = training::fit(&j, &mut Quiet).unwrap() else {
        panic!()
    };
    let evals: Vec<(u64, f64)> = log(&out)
        .iter()
        .filter_map(|r| Some((r["step"].as_u64()?, r["eval"]["sts_spearman"].as_f64()?)))
        .collect();
    assert_eq!(evals.len(), 3, "steps 4, 8, 12");
    let best = evals
        .iter()
        .cloned()
        .fold((0, f64::MIN), |a, b| if b.1 > a.1 { b } else { a });
    assert_eq!(report.saved_step as u64, best.0);
    // The saved model scores what the best evaluation scored.
    let after = report.sts_after.unwrap().spearman;
    assert!(
        (after - best.1).abs() < 1e-3,
        "saved model {after} vs best {}",
        best.1
    );
    assert!(report.sts_before.is_some());
    assert!(
        std::fs::read_to_string(out.join("README.md"))
            .unwrap()
            .contains("STS Spearman")
    );
}

#[test]
fn resume_refuses_changed_settings_naming_the_setting() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let data = corpus(dir.path(), 200);
    let out = dir.path().join("out");
    let j = job(&model, &data, &out, 8);
    assert!(matches!(
        training::fit(&j, &mut StopAt(4, 0)).unwrap(),
        FitOutcome::Interrupted { step: 4, .. }
    ));
    let changed = [
        (
            FitJob {
                max_len: 32,
                resume: true,
                ..j.clone()
            },
            "--max-len was 16",
        ),
        (
            FitJob {
                pooling: Some(Pooling::Cls),
                resume: true,
                ..j.clone()
            },
            "--pooling was mean",
        ),
        (
            FitJob {
                corpus: CorpusOptions {
                    holdout: 30,
                    ..j.corpus.clone()
                },
                resume: true,
                ..j.clone()
            },
            "--holdout was 40",
        ),
        (
            FitJob {
                dtype: DType::BF16,
                resume: true,
                ..j.clone()
            },
            "--dtype was f32",
        ),
    ];
    for (job, needle) in changed {
        let err = match training::fit(&job, &mut Quiet) {
            Err(e) => e.to_string(),
            Ok(_) => panic!("resumed with changed settings ({needle})"),
        };
        assert!(err.contains(needle), "{err}");
        assert!(!err.contains('\n') && err.len() < 300, "{err}");
    }
    assert!(!out.join("model.safetensors").exists());
    // The same settings still resume.
    let resumed = FitJob { resume: true, ..j };
    assert!(matches!(
        training::fit(&resumed, &mut Quiet).unwrap(),
        FitOutcome::Done(_)
    ));
}

#[test]
fn a_guided_fit_distils_its_guide_and_resumes_only_with_it() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let data = corpus(dir.path(), 200);
    let out = dir.path().join("out");
    let mut j = job(&model, &data, &out, 8);
    j.train.loss = LossConfig {
        w_guide: 2.0,
        ..LossConfig::info_nce()
    };
    j.train.guide = Some(Pooling::Cls);
    assert!(matches!(
        training::fit(&j, &mut StopAt(4, 0)).unwrap(),
        FitOutcome::Interrupted { step: 4, .. }
    ));
    let records = log(&out);
    for r in &records {
        let (nce, guide) = (
            r["info_nce"].as_f64().unwrap(),
            r["guide"].as_f64().unwrap(),
        );
        assert!(guide > 0.0 && guide.is_finite(), "{r}");
        let total = r["loss"].as_f64().unwrap();
        assert!(
            (total - (nce + 2.0 * guide)).abs() < 1e-4 * total.abs().max(1.0),
            "{r}"
        );
    }
    // Leaving the guide out (or changing it) is a changed setting.
    let unguided = FitJob {
        train: TrainConfig {
            loss: LossConfig::info_nce(),
            guide: None,
            ..j.train.clone()
        },
        resume: true,
        ..j.clone()
    };
    let err = training::fit(&unguided, &mut Quiet)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("--guide was cls"), "{err}");
    let other = FitJob {
        train: TrainConfig {
            guide: Some(Pooling::Max),
            ..j.train.clone()
        },
        resume: true,
        ..j.clone()
    };
    let err = training::fit(&other, &mut Quiet).err().unwrap().to_string();
    assert!(
        err.contains("--guide was cls") && err.contains("now max"),
        "{err}"
    );
    let FitOutcome::Done(report) =
        training::fit(&FitJob { resume: true, ..j }, &mut Quiet).unwrap()
    else {
        panic!("the guided run did not finish")
    };
    assert_eq!(report.config.guide, Some(Pooling::Cls));
    let card = std::fs::read_to_string(out.join("README.md")).unwrap();
    assert!(
        card.contains("distillation of the frozen base model's cls-pooling similarities"),
        "{card}"
    );
}

#[test]
fn a_guide_needs_a_weight_and_a_weight_needs_a_guide() {
    let dir = tempfile::tempdir().unwrap();
    let (model, data) = (tiny_model(dir.path()), corpus(dir.path(), 100));
    let mut j = job(&model, &data, &dir.path().join("out"), 2);
    j.train.guide = Some(Pooling::Mean);
    let err = training::fit(&j, &mut Quiet).err().unwrap().to_string();
    assert!(
        err.contains("--guide") && err.contains("weight of 0"),
        "{err}"
    );
    j.train.guide = None;
    j.train.loss.w_guide = 1.0;
    let err = training::fit(&j, &mut Quiet).err().unwrap().to_string();
    assert!(
        err.contains("--w-guide") && err.contains("needs a guide"),
        "{err}"
    );
    assert!(!dir.path().join("out").exists());
}

#[test]
fn a_busy_output_folder_is_refused_and_a_dead_lock_is_not_stuck() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let data = corpus(dir.path(), 100);
    let out = dir.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    let args = |o: &Path| {
        vec![
            "fit".to_string(),
            "--model".into(),
            model.to_str().unwrap().into(),
            "--data".into(),
            data.to_str().unwrap().into(),
            "--out".into(),
            o.to_str().unwrap().into(),
            "--steps".into(),
            "2".into(),
            "--batch-size".into(),
            "8".into(),
            "--max-len".into(),
            "16".into(),
        ]
    };
    // Another run holds the folder (as a running fit does).
    let holder = std::fs::File::create(out.join(".embedtune.lock")).unwrap();
    holder.try_lock().unwrap();
    let argv = args(&out);
    let res = embedtune(&argv.iter().map(String::as_str).collect::<Vec<_>>());
    assert_clean_error(&res, "another embedtune run is using this folder");
    assert!(!out.join("train_log.jsonl").exists());
    // The holder goes away (a dead process releases its lock): no longer busy.
    drop(holder);
    let res = embedtune(&argv.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(
        res.status.success(),
        "{}",
        String::from_utf8_lossy(&res.stderr)
    );
}

#[test]
fn sigterm_checkpoints_like_ctrl_c() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let data = corpus(dir.path(), 300);
    let out = dir.path().join("out");
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_embedtune"))
        .args(["fit", "--model", model.to_str().unwrap(), "--data"])
        .arg(&data)
        .arg("--out")
        .arg(&out)
        .args(["--steps", "100000", "--batch-size", "8", "--max-len", "16"])
        .args(["--save-every", "0", "--eval-every", "0", "--holdout", "20"])
        .env("HF_HUB_OFFLINE", "1")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait for training to be under way.
    let started = std::time::Instant::now();
    while !std::fs::read_to_string(out.join("train_log.jsonl"))
        .is_ok_and(|l| l.lines().count() >= 2)
    {
        assert!(started.elapsed().as_secs() < 120, "training never started");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let kill = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let res = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&res.stderr);
    assert_eq!(res.status.code(), Some(130), "{stderr}");
    assert!(
        stderr.contains("interrupted: checkpoint at step"),
        "{stderr}"
    );
    let ckpt = std::fs::read_dir(out.join("checkpoints"))
        .unwrap()
        .flatten()
        .find(|e| e.file_name().to_string_lossy().starts_with("step-"))
        .expect("a checkpoint");
    assert!(ckpt.path().join("state.json").is_file());
}

#[test]
fn saved_weights_are_as_readable_as_the_other_files() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let data = corpus(dir.path(), 200);
    let out = dir.path().join("out");
    training::fit(&job(&model, &data, &out, 4), &mut Quiet).unwrap();
    let mode = |p: PathBuf| std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
    let config = mode(out.join("config.json"));
    assert_eq!(mode(out.join("model.safetensors")), config);
    let ckpt = out.join("checkpoints/step-00000004");
    assert_eq!(mode(ckpt.join("model.safetensors")), config);
    assert_eq!(mode(ckpt.join("optimizer.safetensors")), config);
}
