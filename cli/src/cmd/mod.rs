//! One module per command.

pub mod batches;
pub mod cancel;
pub mod jobs;
pub mod login;
pub mod results;
pub mod retry;
pub mod status;
pub mod submit;
pub mod workers;
