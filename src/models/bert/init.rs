use candle_core::{DType, Device, Tensor};

use crate::error::Result;
use crate::models::bert::BertConfig;
use crate::rng::Rng;

/// Freshly initialised weights for `config`, as BERT initialises them
/// (normal(0, 0.02) matrices, zero biases, unit LayerNorm scales), under
/// canonical names. For training from scratch and for tests on tiny models.
pub fn init_weights(
    config: &BertConfig,
    seed: u64,
    dtype: DType,
    device: &Device,
) -> Result<Vec<(String, Tensor)>> {
    let mut rng = Rng::new(seed);
    let h = config.hidden_size;
    let i = config.intermediate_size;
    let mut out = Vec::new();
    let normal = |out: &mut Vec<(String, Tensor)>,
                  name: String,
                  shape: &[usize],
                  rng: &mut Rng|
     -> Result<()> {
        let n: usize = shape.iter().product();
        let values: Vec<f64> = (0..n).map(|_| rng.normal() * 0.02).collect();
        let t = Tensor::from_vec(values, shape, device)?.to_dtype(dtype)?;
        out.push((name, t));
        Ok(())
    };
    normal(
        &mut out,
        "embeddings.word_embeddings.weight".into(),
        &[config.vocab_size, h],
        &mut rng,
    )?;
    normal(
        &mut out,
        "embeddings.position_embeddings.weight".into(),
        &[config.max_position_embeddings, h],
        &mut rng,
    )?;
    normal(
        &mut out,
        "embeddings.token_type_embeddings.weight".into(),
        &[config.type_vocab_size, h],
        &mut rng,
    )?;
    let mut linears = Vec::new();
    let mut norms = vec!["embeddings.LayerNorm".to_string()];
    for l in 0..config.num_hidden_layers {
        let p = format!("encoder.layer.{l}");
        for name in ["query", "key", "value"] {
            linears.push((format!("{p}.attention.self.{name}"), h, h));
        }
        linears.push((format!("{p}.attention.output.dense"), h, h));
        linears.push((format!("{p}.intermediate.dense"), h, i));
        linears.push((format!("{p}.output.dense"), i, h));
        norms.push(format!("{p}.attention.output.LayerNorm"));
        norms.push(format!("{p}.output.LayerNorm"));
    }
    for (name, fan_in, fan_out) in linears {
        normal(
            &mut out,
            format!("{name}.weight"),
            &[fan_out, fan_in],
            &mut rng,
        )?;
        out.push((
            format!("{name}.bias"),
            Tensor::zeros(fan_out, dtype, device)?,
        ));
    }
    for name in norms {
        out.push((format!("{name}.weight"), Tensor::ones(h, dtype, device)?));
        out.push((format!("{name}.bias"), Tensor::zeros(h, dtype, device)?));
    }
    Ok(out)
}
