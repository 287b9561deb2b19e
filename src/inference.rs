//! Sentences in, sentence vectors out: tokenizer + encoder + pooling (+ the
//! model's Dense module, + normalising).
//!
//! ```no_run
//! use embedtune::{Embedder, EmbedderOptions};
//! let embedder = Embedder::from_pretrained(
//!     "sentence-transformers/all-MiniLM-L6-v2",
//!     EmbedderOptions::default(),
//! )?;
//! let vectors = embedder.embed(&["A cat sleeps.", "A kitten naps."])?;
//! assert_eq!(vectors.len(), 2);
//! # Ok::<(), embedtune::Error>(())
//! ```

use candle_core::{DType, Device, Tensor};

use crate::dense::Dense;
use crate::device::DeviceSpec;
use crate::error::{Error, Result};
use crate::layers::DropoutSeed;
use crate::models::sbert::SbertSettings;
use crate::models::{EncoderOutput, LoadedEncoder, ModelFiles, load_encoder};
use crate::pooling::{Pooling, l2_normalize};
use crate::tokenize::{Batch, TextTokenizer, length_sorted_batches};

/// Options of an [`Embedder`]; `None` means "what the model folder says".
#[derive(Debug, Clone)]
pub struct EmbedderOptions {
    /// Default: the model's `1_Pooling/config.json`, else `cls`.
    pub pooling: Option<Pooling>,
    /// Default: true when the model's `modules.json` lists `Normalize`.
    pub normalize: Option<bool>,
    /// Default: `max_seq_length` of `sentence_bert_config.json`, else 512;
    /// never above what the position table allows.
    pub max_len: Option<usize>,
    pub batch_size: usize,
    pub device: DeviceSpec,
    pub dtype: DType,
    /// Load the weights as variables, for training.
    pub trainable: bool,
}

impl Default for EmbedderOptions {
    fn default() -> Self {
        EmbedderOptions {
            pooling: None,
            normalize: None,
            max_len: None,
            batch_size: 32,
            device: DeviceSpec::Auto,
            dtype: DType::F32,
            trainable: false,
        }
    }
}

/// A dense `rows × dim` matrix of embeddings, rows in input order.
#[derive(Debug, Clone, PartialEq)]
pub struct Embeddings {
    pub dim: usize,
    pub data: Vec<f32>,
}

impl Embeddings {
    pub fn len(&self) -> usize {
        self.data.len().checked_div(self.dim).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    pub fn row(&self, i: usize) -> &[f32] {
        &self.data[i * self.dim..(i + 1) * self.dim]
    }

    pub fn rows(&self) -> impl Iterator<Item = &[f32]> {
        self.data.chunks_exact(self.dim.max(1))
    }

    pub fn to_vecs(&self) -> Vec<Vec<f32>> {
        self.rows().map(<[f32]>::to_vec).collect()
    }
}

/// A model ready to embed text.
///
/// An `Embedder` is `Send + Sync` and holds no lock while it embeds: share
/// one (`&Embedder` or `Arc<Embedder>`) across threads and their calls run
/// side by side.
pub struct Embedder {
    files: ModelFiles,
    model: LoadedEncoder,
    tokenizer: TextTokenizer,
    pooling: Pooling,
    /// The model's Dense module (frozen), applied after pooling.
    dense: Option<Dense>,
    normalize: bool,
    batch_size: usize,
    dtype: DType,
    device: Device,
}

impl Embedder {
    /// Loads a model from a local folder or a Hub id (`org/name[@rev]`).
    pub fn from_pretrained(model: &str, options: EmbedderOptions) -> Result<Self> {
        Self::from_files(ModelFiles::resolve(model)?, options)
    }

    pub fn from_files(files: ModelFiles, options: EmbedderOptions) -> Result<Self> {
        if options.batch_size == 0 {
            return Err(Error::setting("--batch-size", 0, "must be at least 1"));
        }
        let device = options.device.open()?;
        let settings = SbertSettings::read(&files)?;
        let pooling = settings.pooling(options.pooling)?;
        let model = load_encoder(&files, options.dtype, &device, options.trainable)?;
        let limit = model.encoder.max_input_len();
        let max_len = options
            .max_len
            .or(settings.max_seq_length)
            .unwrap_or(512)
            .min(limit);
        let tokenizer =
            TextTokenizer::load(&files.tokenizer, max_len, model.encoder.pad_token_id())?;
        let dense = settings
            .dense
            .as_ref()
            .map(|f| Dense::load(f, options.dtype, &device))
            .transpose()?;
        if let Some(d) = &dense
            && d.in_features() != model.encoder.hidden_size()
        {
            return Err(Error::Model {
                model: files.name.clone(),
                message: format!(
                    "its Dense module takes {} features but the encoder gives {}",
                    d.in_features(),
                    model.encoder.hidden_size()
                ),
            });
        }
        Ok(Embedder {
            dense,
            pooling,
            normalize: options.normalize.unwrap_or(settings.normalize),
            batch_size: options.batch_size,
            dtype: options.dtype,
            files,
            model,
            tokenizer,
            device,
        })
    }

    /// Unit-norm (when normalising) embeddings, one `Vec` per text.
    pub fn embed<S: AsRef<str> + Sync>(&self, texts: &[S]) -> Result<Vec<Vec<f32>>> {
        Ok(self.embed_all(texts, &mut |_| {})?.to_vecs())
    }

    /// Embeds every text; `progress` is called with the number of texts done
    /// after each batch.
    pub fn embed_all<S: AsRef<str> + Sync>(
        &self,
        texts: &[S],
        progress: &mut dyn FnMut(usize),
    ) -> Result<Embeddings> {
        self.embed_batches(texts, None, self.normalize, &mut |batch, _| {
            progress(batch.indices.len());
            Ok(())
        })
    }

    /// Pooled embeddings in input order, in eval mode or, with `dropout`,
    /// train mode; unit-norm when `normalize`; `also` sees every batch and
    /// its encoder output too (for figures beyond the pooled vectors).
    pub fn embed_batches<S: AsRef<str> + Sync>(
        &self,
        texts: &[S],
        dropout: Option<DropoutSeed>,
        normalize: bool,
        also: &mut dyn FnMut(&Batch, &EncoderOutput) -> Result<()>,
    ) -> Result<Embeddings> {
        let dim = self.dim();
        let mut data = vec![0f32; texts.len() * dim];
        self.for_each_batch(texts, dropout, &mut |batch, output| {
            let pooled = self.sentence_embeddings(output, &batch.attention_mask)?;
            let pooled = if normalize {
                l2_normalize(&pooled)?
            } else {
                pooled
            };
            let rows = pooled.to_dtype(DType::F32)?.to_vec2::<f32>()?;
            for (row, &i) in rows.iter().zip(&batch.indices) {
                data[i * dim..(i + 1) * dim].copy_from_slice(row);
            }
            also(batch, output)
        })?;
        Ok(Embeddings { dim, data })
    }

    /// Tokenizes `texts` into length-sorted batches and runs the encoder on
    /// each (train mode with `dropout`); `f` sees every batch with its
    /// output.
    pub fn for_each_batch<S: AsRef<str> + Sync>(
        &self,
        texts: &[S],
        dropout: Option<DropoutSeed>,
        f: &mut dyn FnMut(&Batch, &EncoderOutput) -> Result<()>,
    ) -> Result<()> {
        let encoded = self.tokenizer.encode_all(texts)?;
        for indices in length_sorted_batches(&encoded, self.batch_size) {
            let batch = self.tokenizer.pad(&encoded, indices, &self.device)?;
            let output = self.model.encoder.forward(&batch, dropout)?;
            f(&batch, &output)?;
        }
        Ok(())
    }

    /// The sentence embeddings of one batch's encoder output, before any
    /// normalising: pooled, then through the Dense module when the model has
    /// one. Differentiable (training goes through here too).
    pub fn sentence_embeddings(
        &self,
        output: &EncoderOutput,
        attention_mask: &Tensor,
    ) -> Result<Tensor> {
        let pooled = self.pooling.pool(output, attention_mask)?;
        match &self.dense {
            Some(d) => d.forward(&pooled),
            None => Ok(pooled),
        }
    }

    /// The embeddings of one batch, normalised when set.
    pub fn pool(&self, output: &EncoderOutput, batch: &Batch) -> Result<Tensor> {
        let pooled = self.sentence_embeddings(output, &batch.attention_mask)?;
        if self.normalize {
            l2_normalize(&pooled)
        } else {
            Ok(pooled)
        }
    }

    pub fn files(&self) -> &ModelFiles {
        &self.files
    }
    pub fn model(&self) -> &LoadedEncoder {
        &self.model
    }
    pub fn tokenizer(&self) -> &TextTokenizer {
        &self.tokenizer
    }
    pub fn pooling(&self) -> Pooling {
        self.pooling
    }
    pub fn normalize(&self) -> bool {
        self.normalize
    }
    pub fn max_len(&self) -> usize {
        self.tokenizer.max_len()
    }
    /// Dimensions of the embeddings (the Dense module's output, if any).
    pub fn dim(&self) -> usize {
        self.dense
            .as_ref()
            .map_or_else(|| self.hidden_size(), Dense::out_features)
    }
    /// Dimensions of the encoder's hidden states.
    pub fn hidden_size(&self) -> usize {
        self.model.encoder.hidden_size()
    }
    pub fn dense(&self) -> Option<&Dense> {
        self.dense.as_ref()
    }
    /// Makes `dense` the model's Dense module (applied after pooling).
    pub fn set_dense(&mut self, dense: Dense) -> Result<()> {
        if dense.in_features() != self.hidden_size() {
            return Err(Error::Invalid(format!(
                "a Dense module of {} input features on an encoder of {}",
                dense.in_features(),
                self.hidden_size()
            )));
        }
        self.dense = Some(dense);
        Ok(())
    }
    pub fn batch_size(&self) -> usize {
        self.batch_size
    }

    /// The compute precision (vectors come out as f32 whatever it is).
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn device(&self) -> &Device {
        &self.device
    }
}
