//! What every request handler and background loop shares.

use crate::broker::Control;
use crate::config::Settings;
use crate::metrics::Metrics;
use crate::retry::RetryPolicy;
use kiln_protocol::Limits;
use sqlx::PgPool;
use std::sync::Arc;
use tokio::sync::Notify;

#[derive(Clone)]
pub struct AppState {
    pub db: PgPool,
    pub settings: Arc<Settings>,
    pub limits: Limits,
    pub s3: aws_sdk_s3::Client,
    pub control: Arc<Control>,
    pub metrics: Arc<Metrics>,
    /// Wakes the relay when new outbox rows were committed.
    pub relay_wake: Arc<Notify>,
}

impl AppState {
    pub fn retry_policy(&self, max_attempts: u32) -> RetryPolicy {
        RetryPolicy {
            max_attempts,
            base: self.settings.retry_base,
            max: self.settings.retry_max,
        }
    }
}

pub fn s3_client(s: &crate::config::S3Settings) -> aws_sdk_s3::Client {
    aws_sdk_s3::Client::from_conf(s.config("kiln-dispatcher").build())
}
