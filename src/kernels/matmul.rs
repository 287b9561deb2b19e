//! Matrix products on slices, through the `gemm` crate.

use gemm::Parallelism;

/// A read-only matrix view: `rows × cols` elements of `data`, element
/// `(i, j)` at `i·rs + j·cs`. A transpose only swaps the strides.
#[derive(Clone, Copy)]
pub struct Mat<'a> {
    data: &'a [f32],
    rows: usize,
    cols: usize,
    rs: usize,
    cs: usize,
}

impl<'a> Mat<'a> {
    /// A row-major `rows × cols` matrix at the start of `data`.
    pub fn new(data: &'a [f32], rows: usize, cols: usize) -> Self {
        Self::strided(data, rows, cols, cols)
    }

    /// Rows `row_stride` apart, as a head's slice of a `(tokens, hidden)`
    /// activation.
    pub fn strided(data: &'a [f32], rows: usize, cols: usize, row_stride: usize) -> Self {
        let m = Mat {
            data,
            rows,
            cols,
            rs: row_stride,
            cs: 1,
        };
        assert!(m.fits(data.len()), "matrix view out of bounds");
        m
    }

    pub fn t(self) -> Self {
        Mat {
            rows: self.cols,
            cols: self.rows,
            rs: self.cs,
            cs: self.rs,
            ..self
        }
    }

    fn fits(&self, len: usize) -> bool {
        self.rows == 0
            || self.cols == 0
            || (self.rows - 1) * self.rs + (self.cols - 1) * self.cs < len
    }
}

/// How a product runs: across the rayon pool (large products) or on the
/// calling thread (small per-head products inside a parallel loop).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Threads {
    Pool,
    Single,
}

/// `out = a · b`, or `out += a · b` when `accumulate`, with `out` row-major
/// with rows `out_rs` apart.
pub fn matmul(out: &mut [f32], out_rs: usize, a: Mat, b: Mat, accumulate: bool, threads: Threads) {
    assert_eq!(a.cols, b.rows, "matmul: inner dimensions differ");
    let (m, n, k) = (a.rows, b.cols, a.cols);
    if m == 0 || n == 0 {
        return;
    }
    assert!(
        out_rs >= n && (m - 1) * out_rs + n <= out.len(),
        "matmul: output out of bounds"
    );
    if k == 0 {
        if !accumulate {
            out.chunks_mut(out_rs)
                .take(m)
                .for_each(|r| r[..n].fill(0.0));
        }
        return;
    }
    let parallelism = match threads {
        Threads::Pool if rayon::current_num_threads() > 1 => {
            Parallelism::Rayon(rayon::current_num_threads())
        }
        _ => Parallelism::None,
    };
    // SAFETY: the views were bounds-checked against their slices and the
    // output above; `out` is borrowed mutably, so it aliases neither input.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            out.as_mut_ptr(),
            1,
            out_rs as isize,
            accumulate,
            a.data.as_ptr(),
            a.cs as isize,
            a.rs as isize,
            b.data.as_ptr(),
            b.cs as isize,
            b.rs as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
}

/// `out = x · wᵀ + bias` for a PyTorch-layout weight `(out_dim, in_dim)`:
/// the bias is written first and the product accumulated onto it, which
/// saves a separate pass over the output.
pub fn linear(out: &mut [f32], x: &[f32], w: &[f32], bias: &[f32], rows: usize, threads: Threads) {
    let (o, i) = (bias.len(), w.len() / bias.len());
    out.chunks_mut(o)
        .take(rows)
        .for_each(|r| r.copy_from_slice(bias));
    matmul(
        out,
        o,
        Mat::new(x, rows, i),
        Mat::new(w, o, i).t(),
        true,
        threads,
    );
}

/// Gradients of [`linear`] for upstream `dy` `(rows, out_dim)`: adds
/// `dyᵀ·x` and the column sums of `dy` to the weight and bias gradients
/// `dwb`, and writes (or adds, when `accumulate`) `dy·w` into `dx`.
pub fn linear_backward(
    dy: &[f32],
    x: &[f32],
    w: &[f32],
    dwb: (&mut [f32], &mut [f32]),
    dx: &mut [f32],
    rows: usize,
    accumulate: bool,
) {
    let (dw, db) = dwb;
    let (o, i) = (db.len(), w.len() / db.len());
    let dy_m = Mat::new(dy, rows, o);
    matmul(dw, i, dy_m.t(), Mat::new(x, rows, i), true, Threads::Pool);
    super::reduce::add_column_sums(dy, o, db);
    matmul(dx, i, dy_m, Mat::new(w, o, i), accumulate, Threads::Pool);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn products_with_transposes_and_accumulation() {
        // a = [[1,2,3],[4,5,6]], b = aᵀ
        let a = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        let mut out = [0.0; 4];
        matmul(
            &mut out,
            2,
            Mat::new(&a, 2, 3),
            Mat::new(&a, 2, 3).t(),
            false,
            Threads::Single,
        );
        assert_eq!(out, [14.0, 32.0, 32.0, 77.0]);
        matmul(
            &mut out,
            2,
            Mat::new(&a, 2, 3),
            Mat::new(&a, 2, 3).t(),
            true,
            Threads::Pool,
        );
        assert_eq!(out, [28.0, 64.0, 64.0, 154.0]);
        // Strided view: column block 1..3 of a as a 2×2 matrix.
        let mut o2 = [0.0; 4];
        let view = Mat::strided(&a[1..], 2, 2, 3);
        matmul(
            &mut o2,
            2,
            view,
            Mat::new(&[1.0, 0.0, 0.0, 1.0], 2, 2),
            false,
            Threads::Single,
        );
        assert_eq!(o2, [2.0, 3.0, 5.0, 6.0]);
    }

    #[test]
    #[should_panic(expected = "out of bounds")]
    fn views_are_bounds_checked() {
        let a = [0.0f32; 5];
        let _ = Mat::strided(&a, 2, 3, 3);
    }
}
