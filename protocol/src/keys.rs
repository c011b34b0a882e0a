//! Object keys in the bucket. Keys are deterministic so that a duplicate run
//! of a job overwrites its objects instead of adding new ones.

use uuid::Uuid;

/// The content type of a result image (signed into its PUT URL).
pub const IMAGE_CONTENT_TYPE: &str = "image/png";

/// The content type of a job's `metadata.json` (signed into its PUT URL).
pub const METADATA_CONTENT_TYPE: &str = "application/json";

/// `{tenant}/{batch}/{job}/`: every object of one job starts with it.
pub fn job_prefix(tenant: &str, batch: Uuid, job: Uuid) -> String {
    format!("{tenant}/{batch}/{job}/")
}

/// `{tenant}/{batch}/`: every object of one batch starts with it.
pub fn batch_prefix(tenant: &str, batch: Uuid) -> String {
    format!("{tenant}/{batch}/")
}

/// `{tenant}/{batch}/{job}/{rank}.png`
pub fn image_key(tenant: &str, batch: Uuid, job: Uuid, rank: u32) -> String {
    format!("{}{rank}.png", job_prefix(tenant, batch, job))
}

/// `{tenant}/{batch}/{job}/metadata.json`
pub fn metadata_key(tenant: &str, batch: Uuid, job: Uuid) -> String {
    format!("{}metadata.json", job_prefix(tenant, batch, job))
}

/// `{tenant}/uploads/{upload}`: images users upload (e.g. VQGAN init images).
pub fn upload_key(tenant: &str, upload: &str) -> String {
    format!("{tenant}/uploads/{upload}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_matches_the_design() {
        let b = Uuid::nil();
        let j = Uuid::from_u128(1);
        assert_eq!(image_key("acme", b, j, 2), format!("acme/{b}/{j}/2.png"));
        assert_eq!(
            metadata_key("acme", b, j),
            format!("acme/{b}/{j}/metadata.json")
        );
        assert_eq!(upload_key("acme", "u1"), "acme/uploads/u1");
        assert_eq!(job_prefix("acme", b, j), format!("acme/{b}/{j}/"));
        assert_eq!(batch_prefix("acme", b), format!("acme/{b}/"));
    }
}
