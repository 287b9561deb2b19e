//! One writer per embedding file format, fed a chunk of rows at a time, so
//! a file of any size is written in memory bounded by one chunk.

use std::io::Write;
use std::path::Path;

use crate::error::{Error, Result};
use crate::inference::Embeddings;

use super::atomic::{AtomicFile, Finished};
use super::{OutputFormat, columnar, npy};

/// Writes `texts` and their embeddings, chunk by chunk, in row order, to a
/// temporary file that [`EmbeddingWriter::finish`] completes.
pub struct EmbeddingWriter {
    path: std::path::PathBuf,
    sink: Sink,
}

enum Sink {
    Jsonl(AtomicFile),
    Npy(AtomicFile),
    Parquet(Box<parquet::arrow::ArrowWriter<AtomicFile>>),
    Arrow(Box<arrow::ipc::writer::FileWriter<AtomicFile>>),
}

impl EmbeddingWriter {
    /// Opens a writer of `rows` embeddings of `dim` values for `path` (the
    /// format from its extension; `.npy` needs the row count up front).
    pub fn create(path: &Path, rows: u64, dim: usize) -> Result<Self> {
        let format = OutputFormat::from_path(path)?;
        let mut file = AtomicFile::create(path)?;
        let bad = |e: String| Error::data(path, e);
        let sink = match format {
            OutputFormat::Jsonl => Sink::Jsonl(file),
            OutputFormat::Npy => {
                npy::write_header(&mut file, rows, dim).map_err(|e| Error::io(path, e))?;
                Sink::Npy(file)
            }
            OutputFormat::Parquet => Sink::Parquet(Box::new(
                parquet::arrow::ArrowWriter::try_new(file, columnar::schema(dim), None)
                    .map_err(|e| bad(e.to_string()))?,
            )),
            OutputFormat::Arrow => Sink::Arrow(Box::new(
                arrow::ipc::writer::FileWriter::try_new(file, &columnar::schema(dim))
                    .map_err(|e| bad(e.to_string()))?,
            )),
        };
        Ok(EmbeddingWriter {
            path: path.to_path_buf(),
            sink,
        })
    }

    /// Appends one chunk: `texts[i]` and row `i` of `embeddings`. Parquet
    /// gets a row group per chunk, Arrow a record batch.
    pub fn write(&mut self, texts: &[String], embeddings: &Embeddings) -> Result<()> {
        if texts.len() != embeddings.len() {
            return Err(Error::Invalid(format!(
                "{} texts but {} embeddings",
                texts.len(),
                embeddings.len()
            )));
        }
        let path = &self.path;
        match &mut self.sink {
            Sink::Jsonl(f) => write_jsonl(f, texts, embeddings).map_err(|e| Error::io(path, e)),
            Sink::Npy(f) => npy::write_rows(f, embeddings).map_err(|e| Error::io(path, e)),
            Sink::Parquet(w) => {
                let batch = columnar::record_batch(texts, embeddings)?;
                w.write(&batch).and_then(|()| w.flush())
            }
            .map_err(|e| Error::data(path, e.to_string())),
            Sink::Arrow(w) => w
                .write(&columnar::record_batch(texts, embeddings)?)
                .map_err(|e| Error::data(path, e.to_string())),
        }
    }

    /// Completes the file (footers, flush, sync), ready to be renamed into
    /// place with [`Finished::commit`].
    pub fn finish(self) -> Result<Finished> {
        let path = &self.path;
        let file = match self.sink {
            Sink::Jsonl(f) | Sink::Npy(f) => f,
            Sink::Parquet(w) => w
                .into_inner()
                .map_err(|e| Error::data(path, e.to_string()))?,
            Sink::Arrow(mut w) => {
                w.finish().map_err(|e| Error::data(path, e.to_string()))?;
                w.into_inner()
                    .map_err(|e| Error::data(path, e.to_string()))?
            }
        };
        file.finish()
    }
}

fn write_jsonl(
    out: &mut impl Write,
    texts: &[String],
    embeddings: &Embeddings,
) -> std::io::Result<()> {
    #[derive(serde::Serialize)]
    struct Row<'a> {
        text: &'a str,
        embedding: &'a [f32],
    }
    for (text, embedding) in texts.iter().zip(embeddings.rows()) {
        serde_json::to_writer(&mut *out, &Row { text, embedding })?;
        out.write_all(b"\n")?;
    }
    Ok(())
}
