//! Softmax over the last dimension of row-major data.

/// In place over one row.
pub fn softmax_row(row: &mut [f32]) {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0f32;
    for v in row.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    let inv = 1.0 / sum;
    row.iter_mut().for_each(|v| *v *= inv);
}

/// Gradient of softmax for one row: `dx = y ⊙ (g − Σ_j g_j y_j)`.
pub fn softmax_row_backward(y: &[f32], g: &[f32], dx: &mut [f32]) {
    let dot: f32 = y.iter().zip(g).map(|(a, b)| a * b).sum();
    for i in 0..y.len() {
        dx[i] = y[i] * (g[i] - dot);
    }
}
