//! The results bucket (aws-sdk-s3, path-style, any S3-compatible server).
//!
//! Every request is retried with exponential backoff and jitter while the
//! error is transient (connection refused, timeouts, 5xx, throttling); the
//! SDK's own retries are off so that one policy decides. When storage stays
//! down the caller fails the job as retryable: the job is attempted again
//! later and, since keys are deterministic, overwrites whatever a partial
//! run left.

use crate::runtime::config::S3Args;
use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::error::{DisplayErrorContext, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::Client;
use rand::Rng;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("object {0} does not exist")]
    NotFound(String),
    #[error("storage unavailable after {attempts} attempts: {last}")]
    Unavailable { attempts: u32, last: String },
    #[error("storage refused the request: {0}")]
    Refused(String),
}

#[derive(Clone)]
pub struct Storage {
    client: Client,
    bucket: String,
    attempts: u32,
    first_backoff: Duration,
    max_backoff: Duration,
}

impl Storage {
    pub fn new(s3: &S3Args, attempts: u32) -> Storage {
        let conf = s3
            .config("kiln-worker")
            .retry_config(RetryConfig::disabled())
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(5))
                    .operation_attempt_timeout(Duration::from_secs(60))
                    .build(),
            )
            .build();
        Storage {
            client: Client::from_conf(conf),
            bucket: s3.bucket.clone(),
            attempts: attempts.max(1),
            first_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(8),
        }
    }

    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    fn backoff(&self, attempt: u32) -> Duration {
        let exp = self
            .first_backoff
            .saturating_mul(1u32 << attempt.min(16))
            .min(self.max_backoff);
        // Full jitter over the upper half keeps workers from retrying in step.
        let ms = exp.as_millis() as u64;
        Duration::from_millis(rand::thread_rng().gen_range(ms / 2..=ms.max(1)))
    }

    pub async fn put(
        &self,
        key: &str,
        body: Vec<u8>,
        content_type: &str,
    ) -> Result<(), StorageError> {
        let mut last = String::new();
        for attempt in 0..self.attempts {
            if attempt > 0 {
                tokio::time::sleep(self.backoff(attempt - 1)).await;
            }
            let r = self
                .client
                .put_object()
                .bucket(&self.bucket)
                .key(key)
                .content_type(content_type)
                .body(ByteStream::from(body.clone()))
                .send()
                .await;
            match r {
                Ok(_) => return Ok(()),
                Err(e) if transient(&e) => {
                    last = DisplayErrorContext(&e).to_string();
                    tracing::warn!(key, attempt = attempt + 1, error = %last, "upload failed; retrying");
                }
                Err(e) => {
                    return Err(StorageError::Refused(format!(
                        "PUT {key}: {}",
                        DisplayErrorContext(&e)
                    )))
                }
            }
        }
        Err(StorageError::Unavailable {
            attempts: self.attempts,
            last,
        })
    }

    pub async fn get(&self, key: &str) -> Result<Vec<u8>, StorageError> {
        let mut last = String::new();
        for attempt in 0..self.attempts {
            if attempt > 0 {
                tokio::time::sleep(self.backoff(attempt - 1)).await;
            }
            match self
                .client
                .get_object()
                .bucket(&self.bucket)
                .key(key)
                .send()
                .await
            {
                Ok(out) => match out.body.collect().await {
                    Ok(b) => return Ok(b.into_bytes().to_vec()),
                    Err(e) => last = format!("reading {key}: {e}"),
                },
                Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_key()) => {
                    return Err(StorageError::NotFound(key.to_string()))
                }
                Err(e) if transient(&e) => last = DisplayErrorContext(&e).to_string(),
                Err(e) => {
                    return Err(StorageError::Refused(format!(
                        "GET {key}: {}",
                        DisplayErrorContext(&e)
                    )))
                }
            }
            tracing::warn!(key, attempt = attempt + 1, error = %last, "download failed; retrying");
        }
        Err(StorageError::Unavailable {
            attempts: self.attempts,
            last,
        })
    }
}

/// Worth retrying: no answer, or an answer that says "later".
fn transient<E, R>(e: &SdkError<E, R>) -> bool
where
    R: HasStatus,
{
    match e {
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            true
        }
        SdkError::ServiceError(s) => {
            let status = s.raw().status_code();
            status >= 500 || status == 429 || status == 408
        }
        _ => false,
    }
}

trait HasStatus {
    fn status_code(&self) -> u16;
}

impl HasStatus for aws_sdk_s3::config::http::HttpResponse {
    fn status_code(&self) -> u16 {
        self.status().as_u16()
    }
}
