//! Uploads: images a job may name as `init_image`.

use serde::{Deserialize, Serialize};

/// A stored upload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
pub struct Upload {
    /// The id jobs name in `params.init_image`.
    pub id: String,
    pub key: String,
    pub width: u32,
    pub height: u32,
}
