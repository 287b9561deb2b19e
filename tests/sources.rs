//! Text sources as users have them: compressed Arrow IPC files, Arrow IPC
//! streams (Hugging Face `datasets` cache files), Parquet with every common
//! codec, byte-order marks, and row alignment with nulls and empty rows.

mod common;

use std::path::Path;
use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::ipc::CompressionType;
use arrow::ipc::writer::{FileWriter, IpcWriteOptions, StreamWriter};
use embedtune::source::{read_rows, read_texts};
use parquet::basic::{BrotliLevel, Compression, GzipLevel};

fn batch(rows: &[Option<&str>]) -> RecordBatch {
    let schema = Schema::new(vec![Field::new("text", DataType::Utf8, true)]);
    let col: ArrayRef = Arc::new(StringArray::from(rows.to_vec()));
    RecordBatch::try_new(Arc::new(schema), vec![col]).unwrap()
}

const ROWS: [Option<&str>; 3] = [Some("a cat sleeps"), Some("a dog runs"), Some("the sun")];

fn texts(path: &Path) -> Vec<String> {
    read_texts(path, "text").unwrap().texts
}

#[test]
fn compressed_arrow_files_and_streams_are_read() {
    let dir = tempfile::tempdir().unwrap();
    let b = batch(&ROWS);
    let expected: Vec<String> = ROWS.iter().map(|r| r.unwrap().to_string()).collect();
    for (name, codec) in [
        ("lz4.arrow", CompressionType::LZ4_FRAME),
        ("zstd.feather", CompressionType::ZSTD),
    ] {
        let opts = IpcWriteOptions::default()
            .try_with_compression(Some(codec))
            .unwrap();
        let path = dir.path().join(name);
        let mut w = FileWriter::try_new_with_options(
            std::fs::File::create(&path).unwrap(),
            &b.schema(),
            opts,
        )
        .unwrap();
        w.write(&b).unwrap();
        w.finish().unwrap();
        assert_eq!(texts(&path), expected, "{name}");
    }
    // The stream format, as `datasets` writes its cache (data-00000-of-00001.arrow).
    let path = dir.path().join("data-00000-of-00001.arrow");
    let mut w = StreamWriter::try_new(std::fs::File::create(&path).unwrap(), &b.schema()).unwrap();
    w.write(&b).unwrap();
    w.write(&b).unwrap();
    w.finish().unwrap();
    assert_eq!(texts(&path).len(), 6);
}

#[test]
fn parquet_with_every_common_codec_is_read() {
    let dir = tempfile::tempdir().unwrap();
    for (name, codec) in [
        ("gzip", Compression::GZIP(GzipLevel::default())),
        ("brotli", Compression::BROTLI(BrotliLevel::default())),
        ("lz4", Compression::LZ4),
        ("lz4raw", Compression::LZ4_RAW),
        ("zstd", Compression::ZSTD(Default::default())),
        ("snappy", Compression::SNAPPY),
    ] {
        let path = dir.path().join(format!("{name}.parquet"));
        common::write_parquet_texts(&path, &ROWS, Some(codec));
        assert_eq!(texts(&path).len(), 3, "{name}");
    }
}

#[test]
fn a_byte_order_mark_is_dropped_everywhere() {
    let dir = tempfile::tempdir().unwrap();
    let files = [
        ("a.txt", "\u{feff}first line\nsecond\n"),
        (
            "a.jsonl",
            "\u{feff}{\"text\": \"first line\"}\n{\"text\": \"second\"}\n",
        ),
        ("a.csv", "\u{feff}text\nfirst line\nsecond\n"),
        ("a.tsv", "\u{feff}text\tid\nfirst line\t1\nsecond\t2\n"),
    ];
    for (name, content) in files {
        let path = dir.path().join(name);
        std::fs::write(&path, content).unwrap();
        assert_eq!(texts(&path), ["first line", "second"], "{name}");
    }
    let sts = dir.path().join("sts.csv");
    std::fs::write(
        &sts,
        "\u{feff}g\tf\t2020\t0\t1.5\ta\tb\ng\tf\t2020\t1\t4\tc\td\n",
    )
    .unwrap();
    let pairs = embedtune::sts::read_pairs(&sts).unwrap();
    assert_eq!(pairs[0].score, 1.5);
}

#[test]
fn rows_stay_aligned_with_nulls_and_blank_lines() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nulls.parquet");
    common::write_parquet_texts(&path, &[Some("a cat"), None, Some(""), Some("a dog")], None);
    let rows = read_rows(&path, "text").unwrap();
    assert_eq!(rows.texts, ["a cat", "", "", "a dog"]);
    assert_eq!(rows.empty, 2);
    // Probes skip what is empty.
    assert_eq!(texts(&path), ["a cat", "a dog"]);

    let txt = dir.path().join("lines.txt");
    std::fs::write(&txt, b"one\n\nthree \xff\nfour\n").unwrap();
    let rows = read_rows(&txt, "text").unwrap();
    assert_eq!(rows.texts, ["one", "", "three \u{fffd}", "four"]);
    assert_eq!((rows.empty, rows.invalid_utf8), (1, 1));
}
