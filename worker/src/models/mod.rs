//! Neural networks on tch, one module per model.
pub mod clip;
pub mod dalle;
pub mod vqgan;
