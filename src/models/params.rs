//! One parameter table per architecture: every weight an encoder takes, by
//! the name real checkpoints store it under (family prefix stripped), its
//! shape and its role. The candle graph, the CPU pass, fresh initialisation
//! and the loaders all read the table, so no list of parameters is written
//! twice.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};

use crate::error::Result;
use crate::layers::WeightsView;
use crate::rng::Rng;

/// Weight or bias of a linear layer or a norm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Part {
    Weight,
    Bias,
}

/// What a parameter does; per-layer roles come with the layer number in
/// [`ParamSpec::layer`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    WordEmbeddings,
    PositionEmbeddings,
    TokenTypeEmbeddings,
    EmbeddingNorm(Part),
    /// MPNet's bucketed relative position bias, `(buckets, heads)`, shared
    /// by every layer.
    RelativeAttentionBias,
    Query(Part),
    Key(Part),
    Value(Part),
    /// Query, key and value in one `(3·hidden, hidden)` projection.
    Qkv(Part),
    AttentionOutput(Part),
    AttentionNorm(Part),
    /// The feed-forward block's first projection (for GeGLU, input and gate
    /// stacked).
    FfnIn(Part),
    FfnOut(Part),
    FfnNorm(Part),
    FinalNorm(Part),
}

impl Role {
    /// Fresh value: unit norm scales, zero biases, normal(0, 0.02) for
    /// everything else (BERT's initialisation).
    fn init(self) -> Init {
        use Role::*;
        match self {
            EmbeddingNorm(Part::Weight)
            | AttentionNorm(Part::Weight)
            | FfnNorm(Part::Weight)
            | FinalNorm(Part::Weight) => Init::Ones,
            EmbeddingNorm(Part::Bias)
            | Query(Part::Bias)
            | Key(Part::Bias)
            | Value(Part::Bias)
            | Qkv(Part::Bias)
            | AttentionOutput(Part::Bias)
            | AttentionNorm(Part::Bias)
            | FfnIn(Part::Bias)
            | FfnOut(Part::Bias)
            | FfnNorm(Part::Bias)
            | FinalNorm(Part::Bias) => Init::Zeros,
            _ => Init::Normal,
        }
    }
}

enum Init {
    Normal,
    Zeros,
    Ones,
}

/// One parameter: its canonical name (as stored without the family's
/// prefix), its shape and its role.
#[derive(Debug, Clone, PartialEq)]
pub struct ParamSpec {
    pub name: String,
    pub shape: Vec<usize>,
    pub role: Role,
    pub layer: Option<usize>,
    /// The encoder works without it when a checkpoint lacks it.
    pub optional: bool,
}

/// Builds a table: the entries of a family's encoder in checkpoint order.
#[derive(Default)]
pub struct TableBuilder {
    specs: Vec<ParamSpec>,
    layer: Option<usize>,
}

impl TableBuilder {
    /// Entries added from now on belong to `layer` (`None`: not per layer).
    pub fn layer(&mut self, layer: Option<usize>) -> &mut Self {
        self.layer = layer;
        self
    }

    pub fn tensor(&mut self, name: impl Into<String>, shape: &[usize], role: Role) -> &mut Self {
        self.specs.push(ParamSpec {
            name: name.into(),
            shape: shape.to_vec(),
            role,
            layer: self.layer,
            optional: false,
        });
        self
    }

    /// Marks the entry added last as one a checkpoint may lack.
    pub fn optional(&mut self) -> &mut Self {
        if let Some(last) = self.specs.last_mut() {
            last.optional = true;
        }
        self
    }

    /// `name.weight` `(out, in)` and, with `bias`, `name.bias` `(out)`.
    pub fn linear(
        &mut self,
        name: &str,
        (in_dim, out_dim): (usize, usize),
        role: fn(Part) -> Role,
        bias: bool,
    ) -> &mut Self {
        self.tensor(
            format!("{name}.weight"),
            &[out_dim, in_dim],
            role(Part::Weight),
        );
        if bias {
            self.tensor(format!("{name}.bias"), &[out_dim], role(Part::Bias));
        }
        self
    }

    /// A norm's `name.weight` and, with `bias`, `name.bias`, both `(dim)`.
    pub fn norm(
        &mut self,
        name: &str,
        dim: usize,
        role: fn(Part) -> Role,
        bias: bool,
    ) -> &mut Self {
        self.tensor(format!("{name}.weight"), &[dim], role(Part::Weight));
        if bias {
            self.tensor(format!("{name}.bias"), &[dim], role(Part::Bias));
        }
        self
    }

    pub fn build(&mut self) -> Vec<ParamSpec> {
        std::mem::take(&mut self.specs)
    }
}

/// Fresh weights for every entry of `table` under its canonical name (for
/// training from scratch and for tests on tiny models).
pub fn init_table(
    table: &[ParamSpec],
    seed: u64,
    dtype: DType,
    device: &Device,
) -> Result<Vec<(String, Tensor)>> {
    let mut rng = Rng::new(seed);
    table
        .iter()
        .map(|spec| {
            let t = match spec.role.init() {
                Init::Ones => Tensor::ones(spec.shape.as_slice(), dtype, device)?,
                Init::Zeros => Tensor::zeros(spec.shape.as_slice(), dtype, device)?,
                Init::Normal => {
                    let n: usize = spec.shape.iter().product();
                    let values: Vec<f64> = (0..n).map(|_| rng.normal() * 0.02).collect();
                    Tensor::from_vec(values, spec.shape.as_slice(), device)?.to_dtype(dtype)?
                }
            };
            Ok((spec.name.clone(), t))
        })
        .collect()
}

/// The tensors of a table, taken from a checkpoint with checked shapes, in
/// table order and by role.
pub struct Params {
    specs: Vec<ParamSpec>,
    tensors: Vec<Tensor>,
    index: HashMap<(Role, Option<usize>), usize>,
}

impl Params {
    /// Takes every entry of `table` from `vb` (optional ones only where the
    /// checkpoint has them).
    pub fn load(table: Vec<ParamSpec>, vb: &WeightsView) -> Result<Self> {
        let table: Vec<ParamSpec> = table
            .into_iter()
            .filter(|s| !s.optional || vb.contains(&s.name))
            .collect();
        let tensors = table
            .iter()
            .map(|s| vb.get(&s.name, &s.shape))
            .collect::<Result<Vec<_>>>()?;
        let index = table
            .iter()
            .enumerate()
            .map(|(i, s)| ((s.role, s.layer), i))
            .collect();
        Ok(Params {
            specs: table,
            tensors,
            index,
        })
    }

    /// Every tensor, in table order.
    pub fn tensors(&self) -> &[Tensor] {
        &self.tensors
    }

    pub fn specs(&self) -> &[ParamSpec] {
        &self.specs
    }

    /// Position in table order of the parameter with `role` (in `layer`).
    pub fn index(&self, role: Role, layer: Option<usize>) -> Option<usize> {
        self.index.get(&(role, layer)).copied()
    }

    pub fn find(&self, role: Role, layer: Option<usize>) -> Option<&Tensor> {
        self.index(role, layer).map(|i| &self.tensors[i])
    }

    /// The parameter with `role`, which the architecture always has.
    pub fn get(&self, role: Role, layer: Option<usize>) -> &Tensor {
        self.find(role, layer)
            .unwrap_or_else(|| panic!("parameter table has no {role:?} (layer {layer:?})"))
    }

    /// Weight and optional bias of the linear layer with `role`.
    pub fn linear(&self, role: fn(Part) -> Role, layer: Option<usize>) -> crate::layers::Linear {
        crate::layers::Linear::new(
            self.get(role(Part::Weight), layer).clone(),
            self.find(role(Part::Bias), layer).cloned(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builder_names_shapes_and_init() {
        let table = TableBuilder::default()
            .tensor("emb.weight", &[5, 4], Role::WordEmbeddings)
            .layer(Some(0))
            .linear("l.0.q", (4, 4), Role::Query, true)
            .norm("l.0.ln", 4, Role::FfnNorm, false)
            .build();
        let names: Vec<_> = table.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            ["emb.weight", "l.0.q.weight", "l.0.q.bias", "l.0.ln.weight"]
        );
        assert_eq!(table[1].layer, Some(0));
        let init = init_table(&table, 1, DType::F32, &Device::Cpu).unwrap();
        let ln: Vec<f32> = init[3].1.to_vec1().unwrap();
        assert_eq!(ln, [1.0; 4]);
        let bias: Vec<f32> = init[2].1.to_vec1().unwrap();
        assert_eq!(bias, [0.0; 4]);
    }
}
