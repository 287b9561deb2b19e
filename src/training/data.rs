//! The training corpus: one or more text files streamed in epochs, filtered,
//! de-duplicated and shuffled through a bounded buffer, with a held-back
//! slice for evaluation. Memory is the shuffle buffer, the held-back slice
//! and 8 bytes per distinct sentence for de-duplication — never the corpus.

use std::collections::{BTreeMap, HashSet};
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
    /// What the corpus was opened from (a path or `hf://…`).
    source: PathBuf,
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

/// A hash of `text` under `seed` that never changes between builds or Rust
/// releases (unlike `DefaultHasher`), so a seed holds back the same
/// sentences forever: FNV-1a over the seed's and the text's bytes, then
/// MurmurHash3's 64-bit finaliser to spread every input bit over the output.
pub fn stable_hash(text: &str, seed: u64) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut h = OFFSET;
    for &b in seed.to_le_bytes().iter().chain(text.as_bytes()) {
        h = (h ^ b as u64).wrapping_mul(PRIME);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
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
    if !path.is_dir() {
        return Err(Error::data(
            path,
            "is neither a regular file nor a folder (give a text file or a folder of them)",
        ));
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
            source: path.to_path_buf(),
            files,
            opts,
            train_len: 0,
            held_out: Vec::new(),
            holdout_threshold: None,
            skipped_invalid_utf8: 0,
        };
        // One pass: count kept sentences and keep the `holdout` distinct
        // sentences of smallest seeded hash (a uniform sample, fixed by the
        // seed) with how often each occurs: every copy of a held-back
        // sentence is held back.
        let mut seen = HashSet::new();
        let mut held: BTreeMap<(u64, String), usize> = BTreeMap::new();
        let mut total = 0usize;
        for file in &corpus.files {
            for item in source::open(file, &corpus.opts.column)? {
                let text = match item? {
                    Item::Text(t) => t,
                    Item::Empty => continue,
                    Item::InvalidUtf8(_) => {
                        corpus.skipped_invalid_utf8 += 1;
                        continue;
                    }
                };
                if !corpus.keep(&text) || (corpus.opts.dedup && !seen.insert(stable_hash(&text, 0)))
                {
                    continue;
                }
                total += 1;
                if corpus.opts.holdout > 0 {
                    hold_candidate(&mut held, corpus.opts.holdout, &text, corpus.opts.seed);
                }
            }
        }
        // Hold back at most a fifth of a small corpus.
        let mut held_count: usize = held.values().sum();
        while held_count > total / 5 {
            let (_, n) = held.pop_last().expect("non-empty");
            held_count -= n;
        }
        corpus.holdout_threshold = held.last_key_value().map(|((h, _), _)| *h);
        corpus.held_out = held.into_keys().map(|(_, t)| t).collect();
        corpus.train_len = total - held_count;
        if let Some(max) = corpus.opts.max_samples {
            corpus.train_len = corpus.train_len.min(max);
        }
        if corpus.train_len < 2 {
            return Err(Error::data(
                path,
                format!(
                    "only {} training sentence(s) left after filtering, de-duplication, hold-back and --max-samples; training needs at least 2",
                    corpus.train_len
                ),
            ));
        }
        Ok(corpus)
    }

    /// What the corpus was opened from.
    pub fn source(&self) -> &Path {
        &self.source
    }

    pub fn options(&self) -> &CorpusOptions {
        &self.opts
    }

    fn keep(&self, text: &str) -> bool {
        let words = text.split_whitespace().count();
        self.opts.min_words.is_none_or(|m| words >= m)
            && self.opts.max_words.is_none_or(|m| words <= m)
    }

    fn held_back(&self, text: &str) -> bool {
        self.holdout_threshold
            .is_some_and(|t| stable_hash(text, self.opts.seed) <= t)
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

/// Offers `text` to the `cap` held-back candidates of smallest hash; a
/// sentence already held counts one more occurrence.
fn hold_candidate(held: &mut BTreeMap<(u64, String), usize>, cap: usize, text: &str, seed: u64) {
    let key = (stable_hash(text, seed), text.to_string());
    if let Some(n) = held.get_mut(&key) {
        *n += 1;
    } else if held.len() < cap {
        held.insert(key, 1);
    } else if held.last_key_value().is_some_and(|((h, _), _)| key.0 < *h) {
        held.pop_last();
        held.insert(key, 1);
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
                        || (self.corpus.opts.dedup && !self.seen.insert(stable_hash(&text, 0)))
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

    #[test]
    fn the_hash_and_so_the_split_never_change() {
        // Golden values (also computed by an independent implementation):
        // a seed must hold back the same sentences in every build.
        assert_eq!(
            stable_hash("A man is playing a guitar.", 42),
            0x2662_b65c_3628_409b
        );
        assert_eq!(stable_hash("", 0), 0x7bd3_144f_29c0_cc9e);
        let lines: Vec<String> = (0..50)
            .map(|i| format!("sentence number {i} here"))
            .collect();
        let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
        let opts = CorpusOptions {
            holdout: 5,
            seed: 7,
            ..Default::default()
        };
        let (_d, c) = corpus(&refs, opts);
        let numbers: Vec<&str> = c
            .held_out
            .iter()
            .map(|t| t.split(' ').nth(2).unwrap())
            .collect();
        assert_eq!(numbers, ["45", "3", "32", "35", "27"]);
    }

    #[test]
    fn every_copy_of_a_held_back_sentence_is_held_back() {
        let mut lines = vec!["the one repeated line"; 30];
        let others: Vec<String> = (0..70).map(|i| format!("other line {i}")).collect();
        lines.extend(others.iter().map(String::as_str));
        let opts = CorpusOptions {
            dedup: false,
            holdout: 1000,
            seed: 1,
            ..Default::default()
        };
        let (_d, c) = corpus(&lines, opts);
        let epoch: Vec<String> = c.epoch(0).map(|r| r.unwrap()).collect();
        assert_eq!(
            epoch.len(),
            c.train_len,
            "the count is what an epoch yields"
        );
        assert!(epoch.iter().all(|t| !c.held_out.contains(t)));
        let held = |t: &str| c.held_out.iter().any(|h| h == t);
        let copies = if held("the one repeated line") { 30 } else { 1 };
        assert_eq!(c.train_len + c.held_out.len() - 1 + copies, 100);
    }

    #[test]
    fn too_few_training_sentences_is_an_error_not_a_spin() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.txt");
        std::fs::write(&path, "the same line\n".repeat(400)).unwrap();
        let opts = CorpusOptions {
            max_samples: Some(1),
            ..Default::default()
        };
        let err = Corpus::open(&path, opts).err().expect("an error");
        assert!(
            err.to_string().contains("only 1 training sentence"),
            "{err}"
        );
    }
}
