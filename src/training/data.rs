//! The training corpus: one or more text files streamed in epochs, filtered,
//! de-duplicated and shuffled through a bounded buffer, with a held-back
//! slice for evaluation. Memory is the shuffle buffer, the held-back slice
//! and 8 bytes per distinct sentence for de-duplication — never the corpus.

use std::collections::{BinaryHeap, HashSet};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::rng::Rng;
use crate::source::{self, Item, TextFormat, TextStream};

#[derive(Debug, Clone)]
pub struct CorpusOptions {
    /// Text column of tabular files.
    pub column: String,
    pub min_words: Option<usize>,
    pub max_words: Option<usize>,
    pub dedup: bool,
    /// Train on at most this many sentences.
    pub max_samples: Option<usize>,
    /// Sentences held in the shuffle buffer.
    pub shuffle_buffer: usize,
    /// Sentences held back from training for evaluation.
    pub holdout: usize,
    pub seed: u64,
}

impl Default for CorpusOptions {
    fn default() -> Self {
        CorpusOptions {
            column: "text".into(),
            min_words: None,
            max_words: None,
            dedup: true,
            max_samples: None,
            shuffle_buffer: 100_000,
            holdout: 1000,
            seed: 0,
        }
    }
}

/// A corpus after one counting pass.
pub struct Corpus {
    files: Vec<PathBuf>,
    opts: CorpusOptions,
    /// Sentences an epoch yields.
    pub train_len: usize,
    /// The held-back sentences (not trained on).
    pub held_out: Vec<String>,
    /// Sentences whose seeded hash is at most this are held back.
    holdout_threshold: Option<u64>,
    pub skipped_invalid_utf8: usize,
}

fn text_hash(text: &str, seed: u64) -> u64 {
    let mut h = DefaultHasher::new();
    seed.hash(&mut h);
    text.hash(&mut h);
    h.finish()
}

/// Files of `path`: itself, or every readable file in the folder (sorted),
/// recursively.
fn list_files(path: &Path) -> Result<Vec<PathBuf>> {
    if !path.exists() {
        return Err(Error::data(path, "no such file or folder"));
    }
    if path.is_file() {
        TextFormat::from_path(path)?;
        return Ok(vec![path.to_path_buf()]);
    }
    let mut out = Vec::new();
    let mut stack = vec![path.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).map_err(|e| Error::io(&dir, e))? {
            let p = entry.map_err(|e| Error::io(&dir, e))?.path();
            if p.is_dir() {
                stack.push(p);
            } else if TextFormat::from_path(&p).is_ok() {
                out.push(p);
            }
        }
    }
    out.sort();
    if out.is_empty() {
        return Err(Error::data(
            path,
            "folder has no .txt, .jsonl, .csv, .tsv, .parquet or .arrow files",
        ));
    }
    Ok(out)
}

impl Corpus {
    /// Opens the files at `path` (a file, a folder, or a Hub dataset
    /// `hf://OWNER/NAME[@rev]`) and counts what an epoch will yield.
    pub fn open(path: &Path, opts: CorpusOptions) -> Result<Self> {
        let files = match path.to_str().filter(|s| s.starts_with("hf://")) {
            Some(spec) => crate::models::hub::dataset_parquet_files(spec)?,
            None => list_files(path)?,
        };
        let mut corpus = Corpus {
            files,
            opts,
            train_len: 0,
            held_out: Vec::new(),
            holdout_threshold: None,
            skipped_invalid_utf8: 0,
        };
        // One pass: count distinct kept sentences and keep the `holdout`
        // smallest seeded hashes — a uniform sample, fixed by the seed.
        let mut seen = HashSet::new();
        let mut smallest: BinaryHeap<(u64, String)> = BinaryHeap::new();
        let mut total = 0usize;
        for file in &corpus.files {
            for item in source::open(file, &corpus.opts.column)? {
                let text = match item? {
                    Item::Text(t) => t,
                    Item::Empty => continue,
                    Item::InvalidUtf8 => {
                        corpus.skipped_invalid_utf8 += 1;
                        continue;
                    }
                };
                if !corpus.keep(&text) || (corpus.opts.dedup && !seen.insert(text_hash(&text, 0))) {
                    continue;
                }
                total += 1;
                if corpus.opts.holdout > 0 {
                    let h = text_hash(&text, corpus.opts.seed);
                    if smallest.len() < corpus.opts.holdout {
                        smallest.push((h, text));
                    } else if h < smallest.peek().expect("non-empty").0 {
                        smallest.pop();
                        smallest.push((h, text));
                    }
                }
            }
        }
        // Hold back at most a fifth of a small corpus.
        while smallest.len() > total / 5 {
            smallest.pop();
        }
        corpus.holdout_threshold = smallest.peek().map(|(h, _)| *h);
        let mut held: Vec<(u64, String)> = smallest.into_vec();
        held.sort();
        corpus.held_out = held.into_iter().map(|(_, t)| t).collect();
        corpus.train_len = total - corpus.held_out.len();
        if let Some(max) = corpus.opts.max_samples {
            corpus.train_len = corpus.train_len.min(max);
        }
        if corpus.train_len == 0 {
            return Err(Error::data(
                path,
                "no training sentences left after filtering",
            ));
        }
        Ok(corpus)
    }

    fn keep(&self, text: &str) -> bool {
        let words = text.split_whitespace().count();
        self.opts.min_words.is_none_or(|m| words >= m)
            && self.opts.max_words.is_none_or(|m| words <= m)
    }

    fn held_back(&self, text: &str) -> bool {
        self.holdout_threshold
            .is_some_and(|t| text_hash(text, self.opts.seed) <= t)
    }

    /// The sentences of epoch `epoch`, shuffled with a seed derived from the
    /// corpus seed and the epoch, so any epoch can be replayed exactly.
    pub fn epoch(&self, epoch: u64) -> EpochStream<'_> {
        let mut rng = Rng::new(self.opts.seed ^ epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let mut files = self.files.clone();
        rng.shuffle(&mut files);
        EpochStream {
            corpus: self,
            files,
            current: None,
            seen: HashSet::new(),
            buffer: Vec::new(),
            rng,
            taken: 0,
            finished_input: false,
        }
    }
}

/// One epoch's sentences in shuffled order.
pub struct EpochStream<'a> {
    corpus: &'a Corpus,
    files: Vec<PathBuf>,
    current: Option<TextStream>,
    seen: HashSet<u64>,
    buffer: Vec<String>,
    rng: Rng,
    /// Sentences taken from the input so far (for `max_samples`).
    taken: usize,
    finished_input: bool,
}

impl EpochStream<'_> {
    /// The next kept sentence in file order, before shuffling.
    fn next_input(&mut self) -> Result<Option<String>> {
        loop {
            if self.finished_input || self.taken >= self.corpus.train_len {
                self.finished_input = true;
                return Ok(None);
            }
            if self.current.is_none() {
                if self.files.is_empty() {
                    self.finished_input = true;
                    return Ok(None);
                }
                let file = self.files.remove(0);
                self.current = Some(source::open(&file, &self.corpus.opts.column)?);
            }
            match self.current.as_mut().expect("open").next() {
                None => self.current = None,
                Some(item) => {
                    let Item::Text(text) = item? else { continue };
                    if !self.corpus.keep(&text)
                        || (self.corpus.opts.dedup && !self.seen.insert(text_hash(&text, 0)))
                        || self.corpus.held_back(&text)
                    {
                        continue;
                    }
                    self.taken += 1;
                    return Ok(Some(text));
                }
            }
        }
    }
}

impl Iterator for EpochStream<'_> {
    type Item = Result<String>;

    fn next(&mut self) -> Option<Self::Item> {
        let cap = self.corpus.opts.shuffle_buffer.max(1);
        while !self.finished_input && self.buffer.len() < cap {
            match self.next_input() {
                Ok(Some(t)) => self.buffer.push(t),
                Ok(None) => break,
                Err(e) => return Some(Err(e)),
            }
        }
        if self.buffer.is_empty() {
            return None;
        }
        let j = self.rng.below(self.buffer.len() as u64) as usize;
        Some(Ok(self.buffer.swap_remove(j)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn corpus(lines: &[&str], opts: CorpusOptions) -> (tempfile::TempDir, Corpus) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.txt"), lines.join("\n")).unwrap();
        let c = Corpus::open(dir.path(), opts).unwrap();
        (dir, c)
    }

    #[test]
    fn filters_dedups_holds_back_and_replays() {
        let lines: Vec<String> = (0..200)
            .map(|i| format!("sentence number {i} here"))
            .collect();
        let mut refs: Vec<&str> = lines.iter().map(String::as_str).collect();
        refs.push("sentence number 3 here"); // duplicate
        refs.push("short");
        let opts = CorpusOptions {
            min_words: Some(2),
            holdout: 20,
            shuffle_buffer: 50,
            seed: 9,
            ..Default::default()
        };
        let (_d, c) = corpus(&refs, opts);
        assert_eq!(c.held_out.len(), 20);
        assert_eq!(c.train_len, 180);
        let a: Vec<String> = c.epoch(0).map(|r| r.unwrap()).collect();
        let b: Vec<String> = c.epoch(0).map(|r| r.unwrap()).collect();
        let e1: Vec<String> = c.epoch(1).map(|r| r.unwrap()).collect();
        assert_eq!(a, b, "an epoch replays exactly");
        assert_ne!(a, e1, "epochs are shuffled differently");
        assert_eq!(a.len(), 180);
        let set: HashSet<&String> = a.iter().collect();
        assert_eq!(set.len(), 180, "no duplicates");
        assert!(
            a.iter().all(|t| !c.held_out.contains(t)),
            "held-out never trained on"
        );
        assert!(!a.contains(&"short".to_string()));
    }
}
