//! A bucket's credentials, shared by the signers and the client made from
//! it, fetched again before they expire; and why settings cannot be used.

use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};
use aws_credential_types::Credentials;

/// Credentials that expire sooner than this are fetched again.
const REFRESH_BEFORE: std::time::Duration = std::time::Duration::from_secs(300);

/// A bucket's credentials: the ones held now and where fresh ones come
/// from. Every signer of a process shares one, so temporary credentials
/// are fetched once for all of them.
#[derive(Debug)]
pub struct Keys {
    pub(super) source: SharedCredentialsProvider,
    held: std::sync::RwLock<Credentials>,
    /// When a fetch was last tried; one fetch at a time.
    fetched: tokio::sync::Mutex<Option<std::time::Instant>>,
}

/// A failed or early fetch is not tried again sooner than this.
const REFETCH_AFTER: std::time::Duration = std::time::Duration::from_secs(10);

impl Keys {
    /// `first`, fetched from `source`.
    pub fn new(source: SharedCredentialsProvider, first: Credentials) -> Keys {
        Keys {
            source,
            held: std::sync::RwLock::new(first),
            fetched: tokio::sync::Mutex::new(None),
        }
    }

    /// The credentials to sign with now.
    pub fn current(&self) -> Credentials {
        self.held.read().expect("credentials lock").clone()
    }

    /// Fetches credentials again from the source when the ones held expire
    /// within 5 minutes (static credentials never do): one fetch at a time,
    /// at most one every 10 s.
    pub async fn refresh(&self) -> Result<(), S3Error> {
        let due = || {
            let soon = std::time::SystemTime::now() + REFRESH_BEFORE;
            self.current().expiry().is_some_and(|at| at <= soon)
        };
        if !due() {
            return Ok(());
        }
        let mut fetched = self.fetched.lock().await;
        if !due() || fetched.is_some_and(|at| at.elapsed() < REFETCH_AFTER) {
            return Ok(());
        }
        *fetched = Some(std::time::Instant::now());
        let fresh = self
            .source
            .provide_credentials()
            .await
            .map_err(|e| S3Error::NoCredentials(crate::error_chain(&e)))?;
        *self.held.write().expect("credentials lock") = fresh;
        Ok(())
    }
}

/// Why the bucket settings cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum S3Error {
    #[error("S3 credentials: AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY go together; set both (static credentials) or neither (the AWS default chain)")]
    HalfCredentials,
    #[error("no S3 credentials found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN for temporary ones), name a profile (AWS_PROFILE, in ~/.aws/credentials or ~/.aws/config, or AWS_SHARED_CREDENTIALS_FILE), use web identity (AWS_WEB_IDENTITY_TOKEN_FILE and AWS_ROLE_ARN, as IRSA sets them on EKS), or run where container or instance metadata provides them ({0})")]
    NoCredentials(String),
    #[error("no S3 region: set KILN_S3_REGION (or AWS_REGION, or a profile's region)")]
    NoRegion,
}
