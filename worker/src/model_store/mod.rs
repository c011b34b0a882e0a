//! Model directories: `init-tiny` writes small random-weight models in the
//! upstream layouts; `fetch`/`verify` handle published checkpoints.
