use std::io::Write;

use crate::inference::Embeddings;

/// NumPy `.npy` version 1.0: a little-endian float32 `(rows, dim)` array.
pub(super) fn write(out: &mut impl Write, embeddings: &Embeddings) -> std::io::Result<()> {
    let mut header = format!(
        "{{'descr': '<f4', 'fortran_order': False, 'shape': ({}, {}), }}",
        embeddings.len(),
        embeddings.dim
    );
    // Magic (6) + version (2) + header length (2) + header + '\n' must be a
    // multiple of 64.
    let unpadded = 10 + header.len() + 1;
    header.push_str(&" ".repeat((64 - unpadded % 64) % 64));
    header.push('\n');
    out.write_all(b"\x93NUMPY\x01\x00")?;
    out.write_all(&(header.len() as u16).to_le_bytes())?;
    out.write_all(header.as_bytes())?;
    for v in &embeddings.data {
        out.write_all(&v.to_le_bytes())?;
    }
    Ok(())
}
