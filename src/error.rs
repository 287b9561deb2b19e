//! Typed errors for the library. The binary wraps them in `anyhow` and prints
//! them on one line; everything below the CLI returns [`Error`].

use std::path::PathBuf;

/// Every way an embedtune library call can fail.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A local path could not be read or written.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The model could not be found (no such folder, not in the cache, …).
    #[error("model `{model}`: {message}")]
    Model { model: String, message: String },

    /// A model's `config.json` (or a sentence-transformers config) is unusable.
    #[error("config {path}: {message}")]
    Config { path: PathBuf, message: String },

    /// A weight the encoder needs is absent or has the wrong shape.
    #[error("weights: {0}")]
    Weight(String),

    /// The Hugging Face Hub could not be used.
    #[error("hub: {0}")]
    Hub(String),

    /// The tokenizer could not be loaded or failed on an input.
    #[error("tokenizer: {0}")]
    Tokenizer(String),

    /// Input data is missing, empty or malformed.
    #[error("{path}: {message}")]
    Data { path: PathBuf, message: String },

    /// An option has a value the library cannot use.
    #[error("{0}")]
    Invalid(String),

    /// Training produced a NaN or infinite loss.
    #[error("the loss became {0}")]
    NonFiniteLoss(f64),

    /// A tensor operation failed (shape mismatch, device error, …).
    #[error("tensor: {0}")]
    Tensor(#[from] candle_core::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn data(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Error::Data {
            path: path.into(),
            message: message.into(),
        }
    }
}
