//! embedtune: sentence embeddings with BERT-style encoders.
//!
//! The data flow, one module per stage:
//! text [`source`] → [`tokenize`] (batches) → encoder ([`models`], built from
//! [`layers`]) → [`pooling`] (→ a [`dense`] map, such as the one [`whiten`]
//! computes) → either [`losses`] and [`training`] (`fit`), or [`metrics`],
//! [`diagnose`], [`sts`] and [`report`] → [`output`] (embedding files, model
//! folders). [`inference`]'s [`Embedder`] ties the inference
//! path together; [`embed`] runs it over a file of any size, chunk by chunk.

#[cfg(feature = "cuda")]
pub(crate) mod cuda;
pub mod dense;
pub mod device;
pub mod diagnose;
pub mod embed;
pub mod error;
pub mod inference;
pub mod kernels;
pub mod layers;
pub mod losses;
pub mod metrics;
pub mod models;
pub mod output;
pub mod pooling;
pub mod report;
pub mod rng;
pub mod source;
pub mod sts;
pub mod tokenize;
pub mod training;
pub mod whiten;

pub use device::DeviceSpec;
pub use error::{Error, Result};
pub use inference::{Embedder, EmbedderOptions, Embeddings};
pub use pooling::Pooling;
