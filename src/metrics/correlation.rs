use crate::error::{Error, Result};

/// Pearson correlation of two equal-length series.
pub fn pearson(x: &[f64], y: &[f64]) -> Result<f64> {
    if x.len() != y.len() || x.len() < 2 {
        return Err(Error::Invalid(format!(
            "correlation needs two series of the same length ≥ 2, got {} and {}",
            x.len(),
            y.len()
        )));
    }
    let n = x.len() as f64;
    let (mx, my) = (x.iter().sum::<f64>() / n, y.iter().sum::<f64>() / n);
    let mut sxy = 0.0;
    let mut sxx = 0.0;
    let mut syy = 0.0;
    for (a, b) in x.iter().zip(y) {
        sxy += (a - mx) * (b - my);
        sxx += (a - mx).powi(2);
        syy += (b - my).powi(2);
    }
    if sxx == 0.0 || syy == 0.0 {
        return Err(Error::Undefined(
            "correlation of a constant series is undefined".into(),
        ));
    }
    Ok(sxy / (sxx * syy).sqrt())
}

/// Spearman's rank correlation: Pearson on ranks, ties given their average
/// rank (as scipy.stats.spearmanr does).
pub fn spearman(x: &[f64], y: &[f64]) -> Result<f64> {
    pearson(&ranks(x), &ranks(y))
}

fn ranks(v: &[f64]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..v.len()).collect();
    order.sort_by(|&a, &b| v[a].total_cmp(&v[b]));
    let mut ranks = vec![0.0; v.len()];
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && v[order[j + 1]] == v[order[i]] {
            j += 1;
        }
        let avg = (i + j) as f64 / 2.0 + 1.0;
        for &k in &order[i..=j] {
            ranks[k] = avg;
        }
        i = j + 1;
    }
    ranks
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_values() {
        let x = [1.0, 2.0, 3.0, 4.0, 5.0];
        assert!((pearson(&x, &[2.0, 4.0, 6.0, 8.0, 10.0]).unwrap() - 1.0).abs() < 1e-12);
        assert!((spearman(&x, &[1.0, 4.0, 9.0, 16.0, 25.0]).unwrap() - 1.0).abs() < 1e-12);
        assert!((spearman(&x, &[5.0, 4.0, 3.0, 2.0, 1.0]).unwrap() + 1.0).abs() < 1e-12);
        // scipy.stats.spearmanr([1,2,3,4,5], [1,3,2,2,5]) = 0.6668859288553501
        let s = spearman(&x, &[1.0, 3.0, 2.0, 2.0, 5.0]).unwrap();
        assert!((s - 0.6668859288553501).abs() < 1e-12, "{s}");
        assert!(pearson(&x, &[1.0; 5]).is_err());
    }

    #[test]
    fn pearson_is_exact_and_scale_free() {
        // x = (1, 2, 3), y = (1, 2, 4): Sxy = 3, Sxx = 2, Syy = 14/3.
        let want = 3.0 / (2.0f64 * 14.0 / 3.0).sqrt();
        for scale in [1.0, 1e-3, 1e3] {
            let x = [1.0 * scale, 2.0 * scale, 3.0 * scale];
            let y = [1.0 * scale, 2.0 * scale, 4.0 * scale];
            let r = pearson(&x, &y).unwrap();
            assert!((r - want).abs() < 1e-12, "scale {scale}: {r} vs {want}");
        }
    }
}
