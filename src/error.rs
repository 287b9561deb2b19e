//! Typed errors for the library. The binary wraps them in `anyhow` and prints
//! them on one line; everything below the CLI returns [`Error`].

use std::path::PathBuf;

/// Every way an embedtune library call can fail.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A local path could not be read or written. (The OS error is part
    /// of the message, not a separate `source`, so chains print it once.)
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
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

    /// A setting is out of range: `name` is the option (`--tau`), `value`
    /// what was given.
    #[error("{name} {value}: {message}")]
    Setting {
        name: String,
        value: String,
        message: String,
    },

    /// Another process holds the lock on an output folder.
    #[error(
        "{path}: another embedtune run is using this folder (wait for it to finish, or choose another --out)"
    )]
    Busy { path: PathBuf },

    /// `--resume` with a setting that differs from the checkpoint's.
    #[error(
        "--resume: {setting} was {was} in the stopped run, now {now} (resume with the same settings, or {restart})"
    )]
    ResumeMismatch {
        setting: String,
        was: String,
        now: String,
        /// How to start again instead.
        restart: String,
    },

    /// A statistic that is undefined on this input (e.g. the correlation
    /// of a constant series).
    #[error("{0}")]
    Undefined(String),

    /// Vectors that cannot be used: ragged rows, a non-finite value, too few.
    #[error("vectors: {0}")]
    Vectors(String),

    /// Partial statistics that cannot be merged (other dimension or options).
    #[error("cannot merge statistics: {0}")]
    StatsMismatch(String),

    /// Bytes that are not statistics saved by embedtune.
    #[error("not embedtune statistics: {0}")]
    StatsFormat(String),

    /// Training produced a NaN or infinite loss.
    #[error("the loss became {0}")]
    NonFiniteLoss(f64),

    /// A tensor operation failed (shape mismatch, device error, …).
    #[error("tensor: {0}")]
    Tensor(candle_core::Error),
}

impl From<candle_core::Error> for Error {
    /// Keeps candle's message and drops the backtrace candle attaches when
    /// `RUST_BACKTRACE` is set: errors stay one line.
    fn from(e: candle_core::Error) -> Self {
        Error::Tensor(without_backtrace(e))
    }
}

/// `e` without the backtraces candle captures under `RUST_BACKTRACE`.
pub(crate) fn without_backtrace(e: candle_core::Error) -> candle_core::Error {
    use candle_core::Error as E;
    match e {
        E::WithBacktrace { inner, .. } => without_backtrace(*inner),
        E::WithPath { inner, path } => E::WithPath {
            inner: Box::new(without_backtrace(*inner)),
            path,
        },
        E::Context { inner, context } => E::Context {
            inner: Box::new(without_backtrace(*inner)),
            context,
        },
        e => e,
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn setting(
        name: &str,
        value: impl std::fmt::Display,
        message: impl Into<String>,
    ) -> Self {
        Error::Setting {
            name: name.to_string(),
            value: value.to_string(),
            message: message.into(),
        }
    }

    pub(crate) fn data(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Error::Data {
            path: path.into(),
            message: message.into(),
        }
    }
}
