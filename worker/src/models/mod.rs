//! Neural networks on tch, one module per model, and the image ↔ tensor
//! conversions they share.
//!
//! - [`clip`]: CLIP (tokenizer, preprocessing, both towers, scoring).
//! - [`vqgan`]: taming's VQGAN.
//! - [`dalle`]: DALL·E mini and mega (min-dalle), with the VQGAN detokenizer.
//! - [`image`]: RGB images ↔ `[B, 3, H, W]` tensors.
//!
//! Models are pure networks: they import nothing from the engines, the
//! reranking or the runtime.
pub mod clip;
pub mod dalle;
pub mod image;
pub mod vqgan;
