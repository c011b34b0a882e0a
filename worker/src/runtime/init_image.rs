//! A job's `init_image`: an upload fetched from the bucket (through the
//! GET URL its job message carries) and decoded.

use crate::runtime::storage::{Storage, StorageError};
use image::RgbImage;
use kiln_protocol::keys;

/// Why the init image cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum InitImageError {
    #[error("init image {id} is not a readable image: {error}")]
    Unreadable { id: String, error: String },
    #[error("init image {id} was not uploaded (no object {key})")]
    Missing { id: String, key: String },
    #[error("fetching init image {id}: {error}")]
    Unavailable { id: String, error: StorageError },
}

impl InitImageError {
    /// Whether another attempt would fail the same way.
    pub fn is_permanent(&self) -> bool {
        !matches!(self, InitImageError::Unavailable { .. })
    }

    /// Whether fresh URLs would let the fetch through.
    pub fn needs_new_urls(&self) -> bool {
        matches!(self, InitImageError::Unavailable { error, .. } if error.needs_new_urls())
    }
}

/// Fetches the upload `id` of `tenant` through `url` (the job's presigned
/// GET) and decodes it.
pub async fn fetch(
    storage: &Storage,
    url: Option<&str>,
    tenant: &str,
    id: &str,
) -> Result<RgbImage, InitImageError> {
    let key = keys::upload_key(tenant, id);
    let id = id.to_string();
    let Some(url) = url else {
        let error = StorageError::no_url(&key);
        return Err(InitImageError::Unavailable { id, error });
    };
    match storage.get(url, &key).await {
        Ok(bytes) => match image::load_from_memory(&bytes) {
            Ok(img) => Ok(img.to_rgb8()),
            Err(e) => Err(InitImageError::Unreadable {
                id,
                error: e.to_string(),
            }),
        },
        Err(StorageError::NotFound(_)) => Err(InitImageError::Missing { id, key }),
        Err(error) => Err(InitImageError::Unavailable { id, error }),
    }
}
