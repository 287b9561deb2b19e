use std::io::Write;

use crate::inference::Embeddings;

/// The header of a NumPy `.npy` version 1.0 file of a little-endian float32
/// `(rows, dim)` array; the rows follow with [`write_rows`].
pub(super) fn write_header(out: &mut impl Write, rows: u64, dim: usize) -> std::io::Result<()> {
    let mut header =
        format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({rows}, {dim}), }}");
    // Magic (6) + version (2) + header length (2) + header + '\n' must be a
    // multiple of 64.
    let unpadded = 10 + header.len() + 1;
    header.push_str(&" ".repeat((64 - unpadded % 64) % 64));
    header.push('\n');
    out.write_all(b"\x93NUMPY\x01\x00")?;
    out.write_all(&(header.len() as u16).to_le_bytes())?;
    out.write_all(header.as_bytes())
}

/// Rows of a `.npy` body, little-endian float32.
pub(super) fn write_rows(out: &mut impl Write, embeddings: &Embeddings) -> std::io::Result<()> {
    for v in &embeddings.data {
        out.write_all(&v.to_le_bytes())?;
    }
    Ok(())
}
