//! Building blocks of transformer encoders, each with a backward pass on the
//! path that training uses.

mod activation;
pub mod dropout;
pub mod fused;
mod layer_norm;
mod linear;
pub mod relative_position;
pub mod rotary;
mod weights;

pub use activation::Activation;
pub use dropout::{Dropout, DropoutCtx, DropoutSeed};
pub use layer_norm::LayerNorm;
pub use linear::Linear;
pub use relative_position::RelativeBuckets;
pub use weights::{Weights, WeightsView};
