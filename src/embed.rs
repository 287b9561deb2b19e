//! Embedding a file of any size in bounded memory: the rows are read in
//! chunks, each chunk is embedded (length-sorted batches within it) and
//! saved as it completes, and the output is written from the saved chunks
//! in input order. A stopped run continues from its last finished chunk
//! (`resume`), and `--shard I/N` embeds one of N disjoint row ranges.
//!
//! ```text
//! source rows ─ skip to shard ─ chunk ─ Embedder ─ .NAME.partial/chunk-k.f32
//!                                              └─ EmbeddingWriter ─ NAME
//! ```

use std::ops::Range;
use std::path::PathBuf;
use std::str::FromStr;

use crate::error::{Error, Result};
use crate::inference::Embedder;
use crate::output::partial::PartialRun;
use crate::output::resume::Settings;
use crate::output::{self, EmbeddingWriter};
use crate::source::{self, RowCount};

/// Rows per chunk unless told otherwise: ~25 MB of 384-dim vectors.
pub const DEFAULT_CHUNK_ROWS: usize = 16_384;

/// The `index`-th (from 0) of `count` disjoint, contiguous row ranges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: u64,
    pub count: u64,
}

impl Shard {
    /// All the rows.
    pub const WHOLE: Shard = Shard { index: 0, count: 1 };

    /// The rows of this shard among `total` rows cut into chunks of
    /// `chunk_rows`: shard `i` of `n` is chunks `[i·k/n, (i+1)·k/n)` of the
    /// `k` chunks. Shards 0..n in order are the input in order, cut where
    /// the whole run cuts its chunks, so they hold the very same bytes.
    pub fn rows(&self, total: u64, chunk_rows: usize) -> Range<u64> {
        let chunks = total.div_ceil(chunk_rows as u64);
        let at = |i: u64| {
            let chunk = (i as u128 * chunks as u128 / self.count as u128) as u64;
            (chunk * chunk_rows as u64).min(total)
        };
        at(self.index)..at(self.index + 1)
    }
}

impl FromStr for Shard {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let bad = |why: &str| Error::setting("--shard", s, why);
        let (i, n) = s
            .split_once('/')
            .ok_or_else(|| bad("expected I/N, e.g. 0/4"))?;
        let (index, count) = match (i.trim().parse::<u64>(), n.trim().parse::<u64>()) {
            (Ok(i), Ok(n)) => (i, n),
            _ => return Err(bad("expected I/N with whole numbers, e.g. 0/4")),
        };
        if count == 0 || index >= count {
            return Err(bad("I counts from 0 and must be below N, N at least 1"));
        }
        Ok(Shard { index, count })
    }
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

/// What to embed and where.
#[derive(Debug, Clone)]
pub struct EmbedJob {
    pub data: PathBuf,
    /// Text column of tabular inputs.
    pub column: String,
    pub out: PathBuf,
    pub chunk_rows: usize,
    pub shard: Shard,
    /// Continue the stopped run of `out`, if there is one.
    pub resume: bool,
}

/// Progress of a job, in rows.
pub trait Progress {
    /// `total` rows to embed, of which `done` were finished by a stopped run.
    fn start(&mut self, _total: u64, _done: u64) {}
    fn advance(&mut self, _rows: usize) {}
}

/// What a finished job did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmbedSummary {
    /// The shard's rows, in the input's numbering.
    pub rows: Range<u64>,
    /// Rows a stopped run had already embedded.
    pub resumed_rows: u64,
}

impl EmbedJob {
    /// Checks the job before any work: the chunk size, the output's format
    /// and folder, and that it is not the input.
    pub fn check(&self) -> Result<()> {
        if self.chunk_rows == 0 {
            return Err(Error::setting("--chunk-size", 0, "must be at least 1"));
        }
        output::check_destination(&self.out)?;
        if self.data.is_file() {
            output::check_not_input(&self.out, "--data", &self.data)?;
        }
        Ok(())
    }

    /// Embeds the shard's rows of `data` (`counts` from
    /// [`source::count_rows`]) and writes them to `out`.
    pub fn run(
        &self,
        embedder: &Embedder,
        counts: &RowCount,
        progress: &mut dyn Progress,
    ) -> Result<EmbedSummary> {
        let rows = self.shard.rows(counts.rows, self.chunk_rows);
        let chunks = self.chunks(&rows);
        let mut partial =
            PartialRun::open(&self.out, &self.settings(embedder, counts)?, self.resume)?;
        let dim = embedder.dim();
        let resumed_rows: u64 = chunks
            .iter()
            .enumerate()
            .filter(|(k, r)| partial.has_chunk(*k, r.len(), dim))
            .map(|(_, r)| r.len() as u64)
            .sum();
        progress.start(rows.end - rows.start, resumed_rows);
        self.for_each_chunk(&rows, |k, texts| {
            if !partial.has_chunk(k, texts.len(), dim) {
                let embeddings = embedder.embed_all(&texts, &mut |n| progress.advance(n))?;
                partial.save_chunk(k, &embeddings)?;
            }
            Ok(())
        })?;
        let mut writer = EmbeddingWriter::create(&self.out, rows.end - rows.start, dim)?;
        self.for_each_chunk(&rows, |k, texts| {
            writer.write(&texts, &partial.load_chunk(k, texts.len(), dim)?)
        })?;
        writer.finish()?.commit()?;
        partial.remove()?;
        Ok(EmbedSummary { rows, resumed_rows })
    }

    /// The row ranges of the shard's chunks, relative to its first row.
    fn chunks(&self, rows: &Range<u64>) -> Vec<Range<usize>> {
        let n = (rows.end - rows.start) as usize;
        (0..n)
            .step_by(self.chunk_rows)
            .map(|s| s..(s + self.chunk_rows).min(n))
            .collect()
    }

    /// Reads the shard's rows and calls `f` with each chunk's index and
    /// texts, in order.
    fn for_each_chunk(
        &self,
        rows: &Range<u64>,
        mut f: impl FnMut(usize, Vec<String>) -> Result<()>,
    ) -> Result<()> {
        let mut texts = source::rows(&self.data, &self.column)?
            .skip(rows.start as usize)
            .take((rows.end - rows.start) as usize);
        for k in 0.. {
            let chunk = texts
                .by_ref()
                .take(self.chunk_rows)
                .collect::<Result<Vec<String>>>()?;
            if chunk.is_empty() {
                return Ok(());
            }
            f(k, chunk)?;
        }
        Ok(())
    }

    /// Everything that decides the output's bytes: a resumed run must
    /// match them.
    fn settings(&self, embedder: &Embedder, counts: &RowCount) -> Result<Settings> {
        let meta = std::fs::metadata(&self.data).map_err(|e| Error::io(&self.data, e))?;
        let modified = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos());
        Ok(vec![
            ("--data", output::resolved(&self.data).display().to_string()),
            ("--data size", meta.len().to_string()),
            ("--data modified", modified.to_string()),
            ("--data rows", counts.rows.to_string()),
            ("--column", self.column.clone()),
            ("--shard", self.shard.to_string()),
            ("--chunk-size", self.chunk_rows.to_string()),
            ("--model", embedder.files().name.clone()),
            ("--pooling", embedder.pooling().to_string()),
            ("--normalize", embedder.normalize().to_string()),
            ("--max-len", embedder.max_len().to_string()),
            ("--batch-size", embedder.batch_size().to_string()),
            ("--dtype", format!("{:?}", embedder.dtype())),
            ("--device", format!("{:?}", embedder.device().location())),
            ("dimension", embedder.dim().to_string()),
        ])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_cover_the_rows_once_in_order_cut_at_chunks() {
        for (total, chunk, count) in [(1001, 100, 3), (10, 4, 5), (0, 8, 2), (65, 64, 1)] {
            let mut next = 0;
            for index in 0..count {
                let r = Shard { index, count }.rows(total, chunk);
                assert_eq!(r.start, next, "{total} {chunk} {count}");
                assert!(r.start == total || r.start.is_multiple_of(chunk as u64));
                next = r.end;
            }
            assert_eq!(next, total);
        }
        assert_eq!(Shard { index: 1, count: 3 }.rows(1001, 100), 300..700);
    }

    #[test]
    fn shards_parse_as_i_of_n() {
        assert_eq!(
            "2/4".parse::<Shard>().unwrap(),
            Shard { index: 2, count: 4 }
        );
        for bad in ["4/4", "0/0", "1", "a/2", "-1/2"] {
            assert!(bad.parse::<Shard>().is_err(), "{bad}");
        }
    }
}
