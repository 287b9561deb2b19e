//! Element-wise activations and their derivatives.

use rayon::prelude::*;

/// erf by Abramowitz & Stegun 7.1.26 (absolute error < 1.5e-7, below f32's
/// resolution of GELU's output); libm's erff dominated GELU's cost.
pub fn erf(x: f32) -> f32 {
    let (p, a1, a2, a3, a4, a5) = (
        0.327_591_1,
        0.254_829_6,
        -0.284_496_74,
        1.421_413_7,
        -1.453_152,
        1.061_405_4,
    );
    let s = x.signum();
    let x = x.abs();
    let t = 1.0 / (1.0 + p * x);
    let poly = ((((a5 * t + a4) * t + a3) * t + a2) * t + a1) * t;
    s * (1.0 - poly * (-x * x).exp())
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
            Activation::Gelu => 0.5 * x * (1.0 + erf(x * FRAC_1_SQRT_2)),
            Activation::GeluTanh => {
                0.5 * x * (1.0 + (SQRT_2_OVER_PI * (x + 0.044_715 * x * x * x)).tanh())
            }
            Activation::Relu => x.max(0.0),
        }
    }

    pub fn derivative(self, x: f32) -> f32 {
        match self {
            // Φ(x) + x·φ(x)
            Activation::Gelu => {
                0.5 * (1.0 + erf(x * FRAC_1_SQRT_2)) + x * INV_SQRT_2PI * (-0.5 * x * x).exp()
            }
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
        out.par_chunks_mut(4096)
            .zip(x.par_chunks(4096))
            .for_each(|(o, xs)| o.iter_mut().zip(xs).for_each(|(o, &v)| *o = self.apply(v)));
    }

    /// `g[i] *= act'(x[i])`, in place on the upstream gradient.
    pub fn backward_inplace(self, x: &[f32], g: &mut [f32]) {
        g.par_chunks_mut(4096)
            .zip(x.par_chunks(4096))
            .for_each(|(gs, xs)| {
                gs.iter_mut()
                    .zip(xs)
                    .for_each(|(g, &v)| *g *= self.derivative(v))
            });
    }
}
