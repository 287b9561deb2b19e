//! Gradient caching equals full-batch training: the same weight gradients
//! and the same weights after an AdamW step, on a tiny random BERT with
//! dropout, sentences of different lengths and chunks that do not divide
//! the batch. So does the candle graph route split into passes by length.

mod common;

use std::collections::HashMap;

use candle_core::Tensor;
use candle_core::backprop::GradStore;
use common::{WORDS, max_abs_diff, tiny_model};
use embedtune::layers::DropoutSeed;
use embedtune::losses::{self, LossConfig};
use embedtune::tokenize::length_groups;
use embedtune::training::forward::{GraphSplit, graph_forward, train_forward};
use embedtune::training::gradcache::cached_gradients;
use embedtune::training::optim::{AdamW, AdamWParams};
use embedtune::training::trainer::{
    Objective, StepGradients, apply_gradients, gradients, guide_vectors,
};
use embedtune::{DeviceSpec, Embedder, EmbedderOptions, Pooling};

fn embedder(model: &std::path::Path) -> Embedder {
    load(model, Pooling::Mean, true)
}

fn load(model: &std::path::Path, pooling: Pooling, trainable: bool) -> Embedder {
    Embedder::from_pretrained(
        model.to_str().unwrap(),
        EmbedderOptions {
            pooling: Some(pooling),
            max_len: Some(16),
            device: DeviceSpec::Cpu,
            trainable,
            ..EmbedderOptions::default()
        },
    )
    .unwrap()
}

/// The frozen guide's vectors of `texts` (CLS pooling of the same model,
/// eval mode).
fn guide(model: &std::path::Path, texts: &[String]) -> Tensor {
    let g = load(model, Pooling::Cls, false);
    guide_vectors(Some(&g), texts, &candle_core::Device::Cpu)
        .unwrap()
        .unwrap()
}

/// Twelve sentences of 2 to 13 words.
fn texts() -> Vec<String> {
    (0..12)
        .map(|i| {
            (0..2 + i)
                .map(|j| WORDS[(i * 7 + j * 3) % WORDS.len()])
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect()
}

// Every term, so each one's gradient goes through the cache.
const LOSS: LossConfig = LossConfig {
    w_align: 1.0,
    w_uniform: 1.0,
    w_info_nce: 0.5,
    alpha: 2.0,
    t: 2.0,
    tau: 0.05,
    w_guide: 0.3,
    // The batch mean spans every chunk: caching must still be exact.
    center: true,
};

fn loss(guide: &Tensor) -> Objective<'_> {
    Objective {
        cfg: &LOSS,
        guide: Some(guide),
    }
}

fn grads_by_name(e: &Embedder, g: &StepGradients) -> HashMap<String, Vec<f32>> {
    weight_grads(e, &g.grads)
}

fn weight_grads(e: &Embedder, grads: &GradStore) -> HashMap<String, Vec<f32>> {
    e.model()
        .weights
        .vars()
        .into_iter()
        .map(|(name, var)| {
            let t = grads
                .get(var.as_tensor())
                .expect("every weight has a gradient");
            (name, t.flatten_all().unwrap().to_vec1().unwrap())
        })
        .collect()
}

fn rel_diff(a: &[f32], b: &[f32]) -> f64 {
    let diff: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| (*x as f64 - *y as f64).powi(2))
        .sum();
    let norm: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum();
    (diff / norm.max(1e-30)).sqrt()
}

/// Attention key biases shift every logit of a query by the same amount,
/// which softmax ignores; the last layer's LayerNorm bias shifts every
/// pooled vector by the same amount, which the batch-centred loss ignores.
/// Their gradient is zero in exact arithmetic, so only rounding noise is
/// left to compare (and AdamW turns that noise into full-size updates).
fn exactly_zero_gradient(name: &str) -> bool {
    name.ends_with("attention.self.key.bias") || name == "encoder.layer.1.output.LayerNorm.bias"
}

fn id(t: Tensor) -> embedtune::Result<Tensor> {
    Ok(t)
}

#[test]
fn cached_gradients_equal_the_full_batch() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let e = embedder(&model);
    let (texts, seed) = (texts(), DropoutSeed(17));
    let g = guide(&model, &texts);
    let full = gradients(&e, seed, &texts, &loss(&g), &mut id).unwrap();
    let want = grads_by_name(&e, &full);
    for m in [5, 24, 100] {
        let cached = cached_gradients(&e, seed, &texts, &loss(&g), m, &mut id).unwrap();
        assert!((cached.loss - full.loss).abs() <= 1e-6 * full.loss.abs().max(1.0));
        let got = grads_by_name(&e, &cached);
        let mut worst = (0f64, "");
        for (name, g) in want.iter().filter(|(n, _)| !exactly_zero_gradient(n)) {
            let r = rel_diff(g, &got[name]);
            assert!(r <= 1e-5, "m = {m}: `{name}` differs by {r:e} (relative)");
            if r > worst.0 {
                worst = (r, name);
            }
        }
        eprintln!(
            "m = {m}: largest relative difference {:e} (`{}`)",
            worst.0, worst.1
        );
    }
    // A different seed gives different gradients: the comparison can fail.
    let other = cached_gradients(&e, DropoutSeed(18), &texts, &loss(&g), 5, &mut id).unwrap();
    let other = grads_by_name(&e, &other);
    let worst = want
        .iter()
        .map(|(n, g)| rel_diff(g, &other[n]))
        .fold(0f64, f64::max);
    assert!(worst > 1e-3, "{worst}");
}

#[test]
fn a_cached_step_leaves_the_same_weights() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let texts = texts();
    let step = |mini: Option<usize>| -> HashMap<String, Vec<f32>> {
        let e = embedder(&model);
        let vars = e.model().weights.vars();
        let mut optim = AdamW::new(&vars, AdamWParams::default()).unwrap();
        for (k, seed) in [3u64, 4].into_iter().enumerate() {
            let seed = DropoutSeed(seed);
            let guide = guide(&model, &texts[k..]);
            let g = match mini {
                Some(m) => cached_gradients(&e, seed, &texts[k..], &loss(&guide), m, &mut id),
                None => gradients(&e, seed, &texts[k..], &loss(&guide), &mut id),
            }
            .unwrap();
            apply_gradients(&mut optim, g, 1e-3, Some(1.0)).unwrap();
        }
        vars.into_iter()
            .map(|(n, v)| (n, v.as_tensor().flatten_all().unwrap().to_vec1().unwrap()))
            .collect()
    };
    let (full, cached) = (step(None), step(Some(7)));
    for (name, w) in full.iter().filter(|(n, _)| !exactly_zero_gradient(n)) {
        let d = w
            .iter()
            .zip(&cached[name])
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        // Each AdamW step (lr = 1e-3) moves a weight by up to ~1e-3, by
        // about lr·sign(g) at first: a gradient element near zero turns its
        // rounding (1e-7 relative, see above) into ~1% of a step. Allow 3%.
        assert!(d <= 3e-5, "`{name}` differs by {d} after two steps");
    }
}

/// The candle graph route (CUDA, Metal, half precision), its rows split
/// into passes of similar length, gives the loss and gradients of the
/// CPU's packed pass: the same masks (they follow the row ids), the pooled
/// rows back in the order asked for.
#[test]
fn the_graph_route_split_by_length_equals_the_packed_pass() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let e = embedder(&model);
    let (texts, seed) = (texts(), DropoutSeed(17));
    let g = guide(&model, &texts);
    let once = e.tokenizer().encode_all(&texts).unwrap();
    let rows: Vec<_> = once.iter().chain(&once).cloned().collect();
    let all: Vec<usize> = (0..rows.len()).collect();
    let loss_of = |pooled: &Tensor| {
        let b = texts.len();
        let (x, y) = (
            pooled.narrow(0, 0, b).unwrap(),
            pooled.narrow(0, b, b).unwrap(),
        );
        losses::combined(&x, &y, Some(&g), &LOSS).unwrap().total
    };
    let packed = train_forward(&e, &rows, &all, seed, GraphSplit::for_device(e.device())).unwrap();
    let packed_pooled = packed.pooled.clone();
    let loss = loss_of(&packed_pooled);
    let want_loss = loss.to_scalar::<f32>().unwrap();
    let want = weight_grads(&e, &packed.backward(&loss).unwrap());
    let three = GraphSplit {
        max_groups: 3,
        pass_cost: 0,
    };
    assert_eq!(length_groups(&rows, &all, 3, 0).len(), 3);
    for split in [GraphSplit::ONE_PASS, three] {
        let graph = graph_forward(&e, &rows, &all, seed, split).unwrap();
        let loss = loss_of(&graph.pooled);
        let l = loss.to_scalar::<f32>().unwrap();
        assert!(
            (l - want_loss).abs() <= 1e-5 * want_loss.abs().max(1.0),
            "{split:?}: {l} vs {want_loss}"
        );
        let got = weight_grads(&e, &graph.backward(&loss).unwrap());
        for (name, g) in want.iter().filter(|(n, _)| !exactly_zero_gradient(n)) {
            let r = rel_diff(g, &got[name]);
            assert!(r <= 1e-5, "{split:?}: `{name}` differs by {r:e} (relative)");
        }
    }
    // Rows asked for in another order come back in that order.
    let shuffled: Vec<usize> = (0..rows.len()).map(|k| (k * 7) % rows.len()).collect();
    let want = packed_pooled
        .index_select(
            &Tensor::new(
                shuffled.iter().map(|&r| r as u32).collect::<Vec<_>>(),
                &candle_core::Device::Cpu,
            )
            .unwrap(),
            0,
        )
        .unwrap();
    let got = graph_forward(&e, &rows, &shuffled, seed, three)
        .unwrap()
        .pooled;
    let d = max_abs_diff(&got, &want);
    assert!(d <= 1e-5, "{d}");
}
