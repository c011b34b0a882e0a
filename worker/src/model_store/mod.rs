//! Model directories under a root (`KILN_MODELS`): `clip/`, `vqgan/`, `dalle/`.
//!
//! `init-tiny` writes small random-weight models in the upstream layouts
//! (for tests), `init-toy` the models Kiln trained on its generated world
//! of shapes (for the demo and the tests that prompts steer images);
//! `fetch` downloads published checkpoints (with
//! progress, resume and SHA-256 verification) and `verify` checks what a
//! root holds.
//!
//! - [`command`]: `kiln-worker models ...` and `kiln-worker clip score`.
//! - [`checkpoint`]: what a published checkpoint is ([`Checkpoint`], [`Download`]).
//! - [`catalogue`]: every checkpoint `fetch` knows ([`catalog`]).
//! - [`fetch`](mod@fetch): downloads with progress, resume and retries.
//! - [`verify`](mod@verify): SHA-256 sums and the check of a model root.
//! - [`tiny`]: tiny random-weight models for every engine.
//! - [`toy`](mod@toy): the toy-world models kept in the repository
//!   (`init-toy`); `train-toy` and `eval-toy` run [`crate::toy`].
//! - [`clip`], [`vqgan`], [`dalle`]: each engine's directory layout, tiny
//!   model, catalog entries and conversion from the published format;
//!   [`torch_pickle`] reads PyTorch's pickled state dicts for them.
//!
//! The submodules import each other directly, never through this map.

pub mod catalogue;
pub mod checkpoint;
pub mod clip;
pub mod command;
pub mod dalle;
pub mod fetch;
pub mod tiny;
pub mod torch_pickle;
pub mod toy;
pub mod verify;
pub mod vqgan;

pub use catalogue::catalog;
pub use checkpoint::{Checkpoint, Download};
pub use command::{clip_score, run_clip, run_models, ClipCommand, ModelsCommand};
pub use fetch::{fetch, FetchOptions, Progress};
pub use verify::{sha256_file, verify};
