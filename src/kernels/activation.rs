//! Element-wise activations and their derivatives.

use rayon::prelude::*;

/// eˣ without branches or library calls, so loops over it vectorise
/// (Cephes' expf polynomial after reduction by ln 2; relative error about
/// 2e-7, well under what GELU's output can show in f32). Inputs are clamped
/// to the range where the result is a normal float.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Adding and subtracting 1.5·2²³ rounds to the nearest integer.
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.0, 88.0);
    let shifted = x * LOG2E + ROUND;
    let n = shifted - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = ((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r
        + 1.666_666_5e-1)
        * r
        + 0.5;
    let e = p * r * r + r + 1.0;
    // 2ⁿ from n's bits in the low mantissa of `shifted` (integer lanes, so
    // this vectorises where an f32 → i32 cast would not).
    let n_bits = shifted.to_bits().wrapping_sub(ROUND.to_bits());
    e * f32::from_bits(n_bits.wrapping_add(127) << 23)
}

/// erf by Abramowitz & Stegun 7.1.26 (absolute error < 1.5e-7, below f32's
/// resolution of GELU's output).
#[inline(always)]
pub fn erf(x: f32) -> f32 {
    let (p, a1, a2, a3, a4, a5) = (
        0.327_591_1,
        0.254_829_6,
        -0.284_496_74,
        1.421_413_7,
        -1.453_152,
        1.061_405_4,
    );
    let a = x.abs();
    let t = 1.0 / (1.0 + p * a);
    let poly = ((((a5 * t + a4) * t + a3) * t + a2) * t + a1) * t;
    (1.0 - poly * exp(-a * a)).copysign(x)
}

/// `out[i] = f(x[i])`, vectorised by [`super::simd`].
fn map(x: &[f32], out: &mut [f32], f: impl Fn(f32) -> f32 + Copy + Sync) {
    out.par_chunks_mut(4096)
        .zip(x.par_chunks(4096))
        .for_each(|(o, xs)| super::simd(|| o.iter_mut().zip(xs).for_each(|(o, &v)| *o = f(v))));
}

/// `g[i] = f(x[i], g[i])`, vectorised by [`super::simd`].
fn map_in_place(x: &[f32], g: &mut [f32], f: impl Fn(f32, f32) -> f32 + Copy + Sync) {
    g.par_chunks_mut(4096)
        .zip(x.par_chunks(4096))
        .for_each(|(gs, xs)| {
            super::simd(|| gs.iter_mut().zip(xs).for_each(|(g, &v)| *g = f(v, *g)))
        });
}

const FRAC_1_SQRT_2: f32 = std::f32::consts::FRAC_1_SQRT_2;
/// 1/√(2π)
const INV_SQRT_2PI: f32 = 0.398_942_3;
/// √(2/π)
const SQRT_2_OVER_PI: f32 = 0.797_884_6;

/// The activations BERT-style configs name, with their derivatives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// Exact GELU, `x · Φ(x)`.
    Gelu,
    /// Tanh approximation of GELU.
    GeluTanh,
    Relu,
}

impl Activation {
    pub fn apply(self, x: f32) -> f32 {
        match self {
            Activation::Gelu => gelu(x),
            Activation::GeluTanh => {
                0.5 * x * (1.0 + (SQRT_2_OVER_PI * (x + 0.044_715 * x * x * x)).tanh())
            }
            Activation::Relu => x.max(0.0),
        }
    }

    pub fn derivative(self, x: f32) -> f32 {
        match self {
            Activation::Gelu => gelu_derivative(x),
            Activation::GeluTanh => {
                let inner = SQRT_2_OVER_PI * (x + 0.044_715 * x * x * x);
                let t = inner.tanh();
                0.5 * (1.0 + t)
                    + 0.5 * x * (1.0 - t * t) * SQRT_2_OVER_PI * (1.0 + 3.0 * 0.044_715 * x * x)
            }
            Activation::Relu => {
                if x > 0.0 {
                    1.0
                } else {
                    0.0
                }
            }
        }
    }

    /// `out[i] = act(x[i])`.
    pub fn forward(self, x: &[f32], out: &mut [f32]) {
        match self {
            Activation::Gelu => map(x, out, gelu),
            Activation::GeluTanh => map(x, out, |v| Activation::GeluTanh.apply(v)),
            Activation::Relu => map(x, out, |v| v.max(0.0)),
        }
    }

    /// `g[i] *= act'(x[i])`, in place on the upstream gradient.
    pub fn backward_inplace(self, x: &[f32], g: &mut [f32]) {
        match self {
            Activation::Gelu => map_in_place(x, g, |v, g| g * gelu_derivative(v)),
            other => map_in_place(x, g, move |v, g| g * other.derivative(v)),
        }
    }
}

#[inline(always)]
fn gelu(x: f32) -> f32 {
    0.5 * x * (1.0 + erf(x * FRAC_1_SQRT_2))
}

/// Φ(x) + x·φ(x)
#[inline(always)]
fn gelu_derivative(x: f32) -> f32 {
    0.5 * (1.0 + erf(x * FRAC_1_SQRT_2)) + x * INV_SQRT_2PI * exp(-0.5 * x * x)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_and_erf_are_accurate() {
        for i in -2000..=2000 {
            let x = i as f32 * 0.04;
            let want = (x as f64).exp();
            let rel = ((exp(x) as f64 - want) / want).abs();
            assert!(rel < 1e-6, "exp({x}): {} vs {want}", exp(x));
        }
        // erf(0.5), erf(1), erf(2) to 7 digits; odd; saturates.
        for (x, want) in [
            (0.5f32, 0.520_499_9),
            (1.0, 0.842_700_8),
            (2.0, 0.995_322_3),
        ] {
            assert!((erf(x) - want).abs() < 3e-7 && (erf(-x) + want).abs() < 3e-7);
        }
        assert_eq!(erf(12.0), 1.0);
        assert!(exp(-200.0) < 1e-37);
    }

    #[test]
    fn dispatched_maps_match_the_scalar_functions() {
        let x: Vec<f32> = (0..10_001).map(|i| (i as f32 - 5000.0) * 0.002).collect();
        for act in [Activation::Gelu, Activation::GeluTanh, Activation::Relu] {
            let mut out = vec![0f32; x.len()];
            act.forward(&x, &mut out);
            let mut g = vec![1f32; x.len()];
            act.backward_inplace(&x, &mut g);
            for i in 0..x.len() {
                assert!((out[i] - act.apply(x[i])).abs() < 1e-6, "{act:?}({})", x[i]);
                assert!(
                    (g[i] - act.derivative(x[i])).abs() < 1e-5,
                    "{act:?}'({})",
                    x[i]
                );
            }
        }
    }
}
