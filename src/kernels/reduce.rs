//! Column reductions over row-major activations (bias and LayerNorm
//! parameter gradients), split across threads by blocks of rows.

use rayon::prelude::*;

/// Adds `Σ_rows f(row_index, column)` for each column to `acc` (`cols`
/// long). Each thread sums a block of rows; the blocks are then added.
pub fn add_column_reduction<F>(rows: usize, acc: &mut [f32], f: F)
where
    F: Fn(usize, &mut [f32]) + Sync,
{
    let cols = acc.len();
    let threads = rayon::current_num_threads().max(1);
    let block = rows.div_ceil(threads).max(1);
    let partial: Vec<Vec<f32>> = (0..rows.div_ceil(block))
        .into_par_iter()
        .map(|bi| {
            let mut p = vec![0f32; cols];
            for r in bi * block..rows.min((bi + 1) * block) {
                f(r, &mut p);
            }
            p
        })
        .collect();
    for p in partial {
        acc.iter_mut().zip(p).for_each(|(a, v)| *a += v);
    }
}

/// `acc[j] += Σ_i m[i][j]` for a row-major matrix with `cols` columns.
pub fn add_column_sums(m: &[f32], cols: usize, acc: &mut [f32]) {
    add_column_reduction(m.len() / cols, acc, |r, p| {
        p.iter_mut()
            .zip(&m[r * cols..(r + 1) * cols])
            .for_each(|(a, v)| *a += v);
    });
}
