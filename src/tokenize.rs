//! Text → token ids → padded batches.
//!
//! Sentences are tokenized in parallel, truncated to `max_len`, sorted by
//! length and cut into batches padded only to their own longest sequence;
//! every batch remembers which input rows it holds so results go back in
//! input order.

use std::path::Path;

use candle_core::{Device, Tensor};
use rayon::prelude::*;
use serde::Deserialize;
use tokenizers::models::wordpiece::WordPiece;
use tokenizers::normalizers::BertNormalizer;
use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
use tokenizers::processors::bert::BertProcessing;
use tokenizers::{Tokenizer, TruncationParams, TruncationStrategy};

use crate::error::{Error, Result};
use crate::models::files::TokenizerFiles;

/// A padded batch on a device.
#[derive(Debug, Clone)]
pub struct Batch {
    /// `(batch, seq)` u32 token ids, right-padded.
    pub input_ids: Tensor,
    /// `(batch, seq)` u32 segment ids.
    pub token_type_ids: Tensor,
    /// `(batch, seq)` u32: 1 for tokens, 0 for padding.
    pub attention_mask: Tensor,
    /// Row `i` of this batch is input number `indices[i]`.
    pub indices: Vec<usize>,
}

impl Batch {
    /// Rows `start .. start + len` as a batch of their own.
    pub fn rows(&self, start: usize, len: usize) -> Result<Batch> {
        Ok(Batch {
            input_ids: self.input_ids.narrow(0, start, len)?,
            token_type_ids: self.token_type_ids.narrow(0, start, len)?,
            attention_mask: self.attention_mask.narrow(0, start, len)?,
            indices: self
                .indices
                .get(start..start + len)
                .map(<[_]>::to_vec)
                .unwrap_or_default(),
        })
    }
}

/// One tokenized text, before padding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded {
    pub ids: Vec<u32>,
    pub type_ids: Vec<u32>,
}

/// A tokenizer with truncation fixed to `max_len` and no padding of its own.
pub struct TextTokenizer {
    inner: Tokenizer,
    pad_id: u32,
    max_len: usize,
}

#[derive(Deserialize, Default)]
struct TokenizerConfig {
    do_lower_case: Option<bool>,
    strip_accents: Option<bool>,
    tokenize_chinese_chars: Option<bool>,
    unk_token: Option<String>,
    cls_token: Option<String>,
    sep_token: Option<String>,
}

impl TextTokenizer {
    pub fn load(files: &TokenizerFiles, max_len: usize, pad_id: u32) -> Result<Self> {
        let inner = match files {
            TokenizerFiles::Json(path) => crate::source::read_to_string(path)?
                .parse::<Tokenizer>()
                .map_err(|e| Error::Tokenizer(format!("{}: {e}", path.display())))?,
            TokenizerFiles::Vocab { vocab, config } => wordpiece(vocab, config.as_deref())?,
        };
        Self::from_tokenizer(inner, max_len, pad_id)
    }

    pub fn from_tokenizer(mut inner: Tokenizer, max_len: usize, pad_id: u32) -> Result<Self> {
        if max_len < 2 {
            return Err(Error::setting(
                "--max-len",
                max_len,
                "leaves no room for the special tokens ([CLS] and [SEP]); give at least 2",
            ));
        }
        inner.with_padding(None);
        inner
            .with_truncation(Some(TruncationParams {
                max_length: max_len,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
                ..Default::default()
            }))
            .map_err(|e| Error::Tokenizer(e.to_string()))?;
        Ok(TextTokenizer {
            inner,
            pad_id,
            max_len,
        })
    }

    pub fn max_len(&self) -> usize {
        self.max_len
    }

    pub fn inner(&self) -> &Tokenizer {
        &self.inner
    }

    /// Tokenizes every text, in parallel, with special tokens.
    pub fn encode_all<S: AsRef<str> + Sync>(&self, texts: &[S]) -> Result<Vec<Encoded>> {
        texts
            .par_iter()
            .map(|t| {
                let enc = self
                    .inner
                    .encode(t.as_ref(), true)
                    .map_err(|e| Error::Tokenizer(e.to_string()))?;
                Ok(Encoded {
                    ids: enc.get_ids().to_vec(),
                    type_ids: enc.get_type_ids().to_vec(),
                })
            })
            .collect()
    }

    /// Pads the given rows into one batch on `device`.
    pub fn pad(&self, encoded: &[Encoded], indices: Vec<usize>, device: &Device) -> Result<Batch> {
        let t = indices
            .iter()
            .map(|&i| encoded[i].ids.len())
            .max()
            .unwrap_or(0)
            .max(1);
        let b = indices.len();
        let mut ids = vec![self.pad_id; b * t];
        let mut types = vec![0u32; b * t];
        let mut mask = vec![0u32; b * t];
        for (row, &i) in indices.iter().enumerate() {
            let e = &encoded[i];
            let off = row * t;
            ids[off..off + e.ids.len()].copy_from_slice(&e.ids);
            types[off..off + e.type_ids.len()].copy_from_slice(&e.type_ids);
            mask[off..off + e.ids.len()].fill(1);
        }
        Ok(Batch {
            input_ids: Tensor::from_vec(ids, (b, t), device)?,
            token_type_ids: Tensor::from_vec(types, (b, t), device)?,
            attention_mask: Tensor::from_vec(mask, (b, t), device)?,
            indices,
        })
    }
}

/// Groups rows into batches of at most `batch_size`, sorted by length so each
/// batch pads little. Returns indices into `encoded`.
pub fn length_sorted_batches(encoded: &[Encoded], batch_size: usize) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..encoded.len()).collect();
    // Longest first: the biggest batch runs first, so an out-of-memory error
    // comes at once rather than at the end.
    order.sort_by_key(|&i| std::cmp::Reverse(encoded[i].ids.len()));
    order
        .chunks(batch_size.max(1))
        .map(|c| c.to_vec())
        .collect()
}

/// Splits rows `indices` of `encoded` into at most `max_groups` groups of
/// similar length, each to be padded to its own longest, so that the
/// padded tokens plus `pass_cost` per group (a pass's fixed cost, in
/// tokens) are fewest. Groups come longest first, each sorted longest
/// first. Exact: dynamic programming over the rows sorted by length (a
/// group of an optimal split is always a run of that order).
pub fn length_groups(
    encoded: &[Encoded],
    indices: &[usize],
    max_groups: usize,
    pass_cost: usize,
) -> Vec<Vec<usize>> {
    let mut order = indices.to_vec();
    order.sort_by_key(|&i| std::cmp::Reverse(encoded[i].ids.len()));
    let len: Vec<usize> = order.iter().map(|&i| encoded[i].ids.len().max(1)).collect();
    let n = order.len();
    // best[g][j]: least cost of the first j rows in at most g + 1 groups;
    // cut[g][j]: where that split's last group starts.
    let groups = max_groups.clamp(1, n.max(1));
    let mut best = vec![vec![0usize; n + 1]; groups];
    let mut cut = vec![vec![0usize; n + 1]; groups];
    best[0] = (0..=n)
        .map(|j| if j == 0 { 0 } else { j * len[0] + pass_cost })
        .collect();
    for g in 1..groups {
        best[g][0] = 0;
        for j in 1..=n {
            best[g][j] = best[g - 1][j];
            cut[g][j] = cut[g - 1][j];
            for i in 1..j {
                let c = best[g - 1][i] + (j - i) * len[i] + pass_cost;
                if c < best[g][j] {
                    (best[g][j], cut[g][j]) = (c, i);
                }
            }
        }
    }
    let mut out = Vec::new();
    let (mut g, mut j) = (groups - 1, n);
    while j > 0 {
        let i = cut[g][j];
        out.push(order[i..j].to_vec());
        j = i;
        g = g.saturating_sub(1);
    }
    out.reverse();
    out
}

/// A BERT WordPiece tokenizer built from `vocab.txt` and the optional
/// `tokenizer_config.json`, for models that ship no `tokenizer.json`.
fn wordpiece(vocab: &Path, config: Option<&Path>) -> Result<Tokenizer> {
    let cfg: TokenizerConfig = match config {
        Some(path) => {
            let text = crate::source::read_to_string(path)?;
            serde_json::from_str(&text).map_err(|e| Error::Config {
                path: path.to_path_buf(),
                message: e.to_string(),
            })?
        }
        None => TokenizerConfig::default(),
    };
    let unk = cfg.unk_token.unwrap_or_else(|| "[UNK]".into());
    let cls = cfg.cls_token.unwrap_or_else(|| "[CLS]".into());
    let sep = cfg.sep_token.unwrap_or_else(|| "[SEP]".into());
    let vocab_str = vocab
        .to_str()
        .ok_or_else(|| Error::Tokenizer(format!("{}: path is not UTF-8", vocab.display())))?;
    let model = WordPiece::from_file(vocab_str)
        .unk_token(unk.clone())
        .build()
        .map_err(|e| Error::Tokenizer(format!("{}: {e}", vocab.display())))?;
    let token_id = |tok: &str| -> Result<u32> {
        model_token_id(&model, tok)
            .ok_or_else(|| Error::Tokenizer(format!("{} has no `{tok}` token", vocab.display())))
    };
    // Without the unknown token, the first word outside the vocabulary
    // would fail; say so at load.
    token_id(&unk)?;
    let (cls_id, sep_id) = (token_id(&cls)?, token_id(&sep)?);
    let lowercase = cfg.do_lower_case.unwrap_or(true);
    let mut tokenizer = Tokenizer::new(model);
    tokenizer
        .with_normalizer(Some(BertNormalizer::new(
            true,
            cfg.tokenize_chinese_chars.unwrap_or(true),
            cfg.strip_accents,
            lowercase,
        )))
        .map_err(|e| Error::Tokenizer(e.to_string()))?
        .with_pre_tokenizer(Some(BertPreTokenizer))
        .with_post_processor(Some(BertProcessing::new((sep, sep_id), (cls, cls_id))));
    Ok(tokenizer)
}

fn model_token_id(model: &WordPiece, token: &str) -> Option<u32> {
    use tokenizers::Model;
    model.token_to_id(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_sorted_by_length_cover_every_row_once() {
        let enc: Vec<Encoded> = [3usize, 9, 1, 5, 7]
            .iter()
            .map(|&n| Encoded {
                ids: vec![1; n],
                type_ids: vec![0; n],
            })
            .collect();
        let batches = length_sorted_batches(&enc, 2);
        assert_eq!(batches, vec![vec![1, 4], vec![3, 0], vec![2]]);
    }

    fn rows(lens: &[usize]) -> Vec<Encoded> {
        lens.iter()
            .map(|&n| Encoded {
                ids: vec![1; n],
                type_ids: vec![0; n],
            })
            .collect()
    }

    /// Padded tokens plus `pass_cost` per group.
    fn cost(enc: &[Encoded], groups: &[Vec<usize>], pass_cost: usize) -> usize {
        groups
            .iter()
            .map(|g| g.len() * g.iter().map(|&i| enc[i].ids.len()).max().unwrap() + pass_cost)
            .sum()
    }

    #[test]
    fn length_groups_pad_least_and_cover_every_row_once() {
        let enc = rows(&[3, 30, 4, 31, 5, 29, 3, 12, 11, 4]);
        let all: Vec<usize> = (0..enc.len()).collect();
        assert_eq!(
            length_groups(&enc, &all, 1, 0),
            vec![vec![3, 1, 5, 7, 8, 4, 2, 9, 0, 6]]
        );
        let groups = length_groups(&enc, &all, 3, 0);
        assert_eq!(groups, vec![vec![3, 1, 5], vec![7, 8], vec![4, 2, 9, 0, 6]]);
        // Every split into at most three runs of the sorted order costs as
        // much or more.
        let order = &length_groups(&enc, &all, 1, 0)[0];
        let n = order.len();
        for a in 1..n {
            for b in a..=n {
                let split: Vec<Vec<usize>> = [&order[..a], &order[a..b], &order[b..]]
                    .into_iter()
                    .filter(|g| !g.is_empty())
                    .map(<[_]>::to_vec)
                    .collect();
                assert!(cost(&enc, &groups, 0) <= cost(&enc, &split, 0), "{split:?}");
            }
        }
    }

    #[test]
    fn length_groups_split_only_where_it_pays_for_the_pass() {
        let enc = rows(&[10, 10, 9, 9, 2, 2]);
        let all: Vec<usize> = (0..enc.len()).collect();
        // Splitting off the two short rows saves 16 padded tokens.
        assert_eq!(length_groups(&enc, &all, 4, 15).len(), 2);
        assert_eq!(length_groups(&enc, &all, 4, 17).len(), 1);
        // A subset of the rows, and no rows at all.
        assert_eq!(length_groups(&enc, &[5, 0], 4, 0), vec![vec![0], vec![5]]);
        assert!(length_groups(&enc, &[], 4, 0).is_empty());
    }
}
