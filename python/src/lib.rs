//! `embedtune._native`: the Rust side of the Python package. A thin layer
//! over the library: every computation runs with the GIL released, and an
//! `embedtune::Error` becomes an `EmbedtuneError` with the same one-line
//! message. `embedtune/__init__.py` turns the bytes into numpy arrays and
//! the JSON into dicts.

use std::sync::Arc;

use embedtune::diagnose::stats::{self, StatsOptions};
use embedtune::diagnose::{DiagnoseOptions, default_probe, diagnose as run_diagnose};
use embedtune::training::args::FitArgs;
use embedtune::training::{self, FitOutcome, Observer, StepRecord};
use embedtune::{DeviceSpec, EmbedderOptions, Error, Pooling};
use pyo3::create_exception;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyBytes};

create_exception!(
    embedtune,
    EmbedtuneError,
    PyValueError,
    "An embedtune error: bad input, a model or file that cannot be used, a failed computation."
);

fn to_py(e: Error) -> PyErr {
    EmbedtuneError::new_err(e.to_string())
}

/// Runs `f` with the GIL released; `f` gets a check to call between units
/// of work, which fails (and keeps Python's exception, KeyboardInterrupt
/// after Ctrl-C) when a signal handler raised.
fn detached<T: Send>(
    py: Python<'_>,
    f: impl Send + FnOnce(&mut dyn FnMut() -> embedtune::Result<()>) -> embedtune::Result<T>,
) -> PyResult<T> {
    let mut raised: Option<PyErr> = None;
    let result = py.detach(|| {
        f(&mut || {
            Python::attach(|py| py.check_signals()).map_err(|e| {
                raised = Some(e);
                Error::Invalid("interrupted".into())
            })
        })
    });
    match raised {
        Some(e) => Err(e),
        None => result.map_err(to_py),
    }
}

/// A loaded model (`embedtune::Embedder`), shared by every thread that uses
/// it; `encode` releases the GIL while it runs.
#[pyclass(frozen, module = "embedtune._native")]
struct Embedder {
    inner: Arc<embedtune::Embedder>,
    model: String,
}

#[pymethods]
impl Embedder {
    #[new]
    #[allow(
        clippy::too_many_arguments,
        reason = "Python's keyword arguments, one per EmbedderOptions field"
    )]
    #[pyo3(signature = (model, pooling=None, normalize=None, max_len=None, batch_size=None, device="auto", dtype="f32"))]
    fn new(
        py: Python<'_>,
        model: String,
        pooling: Option<&str>,
        normalize: Option<bool>,
        max_len: Option<usize>,
        batch_size: Option<usize>,
        device: &str,
        dtype: &str,
    ) -> PyResult<Self> {
        let defaults = EmbedderOptions::default();
        let options = EmbedderOptions {
            pooling: pooling
                .map(str::parse::<Pooling>)
                .transpose()
                .map_err(to_py)?,
            normalize,
            max_len,
            batch_size: batch_size.unwrap_or(defaults.batch_size),
            device: device.parse::<DeviceSpec>().map_err(to_py)?,
            dtype: embedtune::device::parse_dtype(dtype).map_err(to_py)?,
            ..defaults
        };
        let inner = py
            .detach(|| embedtune::Embedder::from_pretrained(&model, options))
            .map_err(to_py)?;
        Ok(Embedder {
            inner: Arc::new(inner),
            model,
        })
    }

    /// The embeddings of `texts` as little-endian float32 bytes, row-major
    /// `(len(texts), dim)`, rows in input order. Signals are checked between
    /// batches.
    fn encode<'py>(
        &self,
        py: Python<'py>,
        texts: Vec<String>,
    ) -> PyResult<Bound<'py, PyByteArray>> {
        let e = self.inner.clone();
        let emb = detached(py, move |check| {
            e.embed_batches(&texts, None, e.normalize(), &mut |_, _| check())
        })?;
        let bytes: Vec<u8> = emb.data.iter().flat_map(|x| x.to_le_bytes()).collect();
        Ok(PyByteArray::new(py, &bytes))
    }

    /// Dimensions of the embeddings.
    #[getter]
    fn dim(&self) -> usize {
        self.inner.dim()
    }
    #[getter]
    fn pooling(&self) -> String {
        self.inner.pooling().to_string()
    }
    #[getter]
    fn normalize(&self) -> bool {
        self.inner.normalize()
    }
    #[getter]
    fn max_len(&self) -> usize {
        self.inner.max_len()
    }
    #[getter]
    fn model(&self) -> &str {
        &self.model
    }
}

/// `embedtune diagnose` of `embedder` on `texts` (the built-in probe when
/// None): the JSON report as a string. Unset options take the library's
/// defaults.
#[pyfunction]
#[pyo3(signature = (embedder, texts=None, max_samples=None, seed=None, alignment_samples=None, token_samples=None))]
fn diagnose(
    py: Python<'_>,
    embedder: &Embedder,
    texts: Option<Vec<String>>,
    max_samples: Option<usize>,
    seed: Option<u64>,
    alignment_samples: Option<usize>,
    token_samples: Option<usize>,
) -> PyResult<String> {
    let defaults = DiagnoseOptions::default();
    let opts = DiagnoseOptions {
        max_samples,
        seed: seed.unwrap_or(defaults.seed),
        alignment_samples: alignment_samples.unwrap_or(defaults.alignment_samples),
        token_samples: token_samples.unwrap_or(defaults.token_samples),
        ..defaults
    };
    let e = embedder.inner.clone();
    detached(py, move |_| {
        let texts = texts.unwrap_or_else(default_probe);
        json(&run_diagnose(&e, &texts, &opts)?)
    })
}

/// Training progress on stderr (one line every `log_every` steps when
/// `verbose`), and Ctrl-C: a signal stops the run at the next step with a
/// checkpoint, as the binary does.
struct PyObserver<'a> {
    check: &'a mut dyn FnMut() -> embedtune::Result<()>,
    stopped: bool,
    verbose: bool,
    total: usize,
}

impl Observer for PyObserver<'_> {
    fn on_start(&mut self, _start: usize, total: usize) {
        self.total = total;
    }
    fn on_step(&mut self, r: &StepRecord) {
        self.stopped = self.stopped || (self.check)().is_err();
        if self.verbose {
            eprintln!(
                "step {}/{}: loss {:.4} align {:.4} uniform {:.4} lr {:.2e} {:.1} sent/s",
                r.step, self.total, r.loss, r.align, r.uniform, r.lr, r.sentences_per_s
            );
        }
    }
    fn on_message(&mut self, message: &str) {
        if self.verbose {
            eprintln!("{message}");
        }
    }
    fn should_stop(&self) -> bool {
        self.stopped
    }
}

/// `embedtune fit` with these flags (`["--model", M, "--data", D, "--out",
/// O, "--lr", "1e-4", ...]`): the report (`report.json`) as a string.
#[pyfunction]
#[pyo3(signature = (flags, verbose=true))]
fn fit(py: Python<'_>, flags: Vec<String>, verbose: bool) -> PyResult<String> {
    detached(py, move |check| {
        let (job, recipe) = FitArgs::parse_flags(&flags)?.job()?;
        let mut obs = PyObserver {
            check,
            stopped: false,
            verbose,
            total: 0,
        };
        if let Some(line) = recipe {
            obs.on_message(&line);
        }
        match training::fit(&job, &mut obs)? {
            FitOutcome::Done(r) => json(&r),
            // Python raises the signal's exception (KeyboardInterrupt).
            FitOutcome::Interrupted { step, out } => {
                let note = format!(
                    "interrupted: checkpoint at step {step} saved in {}; continue with resume=True",
                    out.display()
                );
                obs.on_message(&note);
                Err(Error::Invalid(note))
            }
        }
    })
}

/// Mergeable statistics of a set of vectors
/// (`embedtune::diagnose::stats::VectorStats`).
#[pyclass(module = "embedtune._native")]
struct VectorStats {
    inner: stats::VectorStats,
}

fn json<T: serde::Serialize>(value: &T) -> embedtune::Result<String> {
    serde_json::to_string(value).map_err(|e| Error::Invalid(e.to_string()))
}

#[pymethods]
impl VectorStats {
    /// Unset options take the library's defaults.
    #[new]
    #[pyo3(signature = (dim, seed=None, reservoir=None, histogram_bins=None, t=None))]
    fn new(
        dim: usize,
        seed: Option<u64>,
        reservoir: Option<usize>,
        histogram_bins: Option<usize>,
        t: Option<f64>,
    ) -> PyResult<Self> {
        let d = StatsOptions::default();
        let opts = StatsOptions {
            seed: seed.unwrap_or(d.seed),
            reservoir: reservoir.unwrap_or(d.reservoir),
            histogram_bins: histogram_bins.unwrap_or(d.histogram_bins),
            t: t.unwrap_or(d.t),
        };
        opts.check().map_err(to_py)?;
        Ok(VectorStats {
            inner: stats::VectorStats::new(dim, opts),
        })
    }

    /// Adds rows given as little-endian float32 bytes, row-major.
    fn add(&mut self, py: Python<'_>, rows: &[u8]) -> PyResult<()> {
        if !rows.len().is_multiple_of(4) {
            return Err(EmbedtuneError::new_err(format!(
                "{} bytes are not a whole number of float32 values",
                rows.len()
            )));
        }
        let inner = &mut self.inner;
        detached(py, move |_| {
            let values: Vec<f32> = rows
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            inner.add(&values)
        })
    }

    fn merge(&mut self, other: PyRef<'_, VectorStats>) -> PyResult<()> {
        self.inner.merge(&other.inner).map_err(to_py)
    }

    fn to_bytes<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.inner.to_bytes())
    }

    #[staticmethod]
    fn from_bytes(data: &[u8]) -> PyResult<Self> {
        let inner = stats::VectorStats::from_bytes(data).map_err(to_py)?;
        Ok(VectorStats { inner })
    }

    fn __len__(&self) -> usize {
        self.inner.len() as usize
    }

    #[getter]
    fn dim(&self) -> usize {
        self.inner.dim()
    }

    /// The figures as JSON.
    fn finish(&self, py: Python<'_>) -> PyResult<String> {
        let inner = &self.inner;
        detached(py, move |_| json(&inner.finish()?))
    }
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("EmbedtuneError", m.py().get_type::<EmbedtuneError>())?;
    m.add_class::<Embedder>()?;
    m.add_class::<VectorStats>()?;
    m.add_function(wrap_pyfunction!(diagnose, m)?)?;
    m.add_function(wrap_pyfunction!(fit, m)?)?;
    Ok(())
}
