//! The bucket settings every Kiln process reads (feature `s3`): the same
//! flags, environment variables and defaults (the local stack's Garage) in
//! the dispatcher and the worker, and one way to build a client from them.

/// Where results and uploads live: an S3-compatible bucket.
#[derive(Debug, Clone, clap::Args)]
pub struct S3Args {
    #[arg(
        long = "s3-endpoint",
        env = "KILN_S3_ENDPOINT",
        default_value = "http://127.0.0.1:3900"
    )]
    pub endpoint: String,
    #[arg(long = "s3-bucket", env = "KILN_S3_BUCKET", default_value = "kiln")]
    pub bucket: String,
    #[arg(long = "s3-region", env = "KILN_S3_REGION", default_value = "garage")]
    pub region: String,
    #[arg(
        long = "s3-access-key",
        env = "AWS_ACCESS_KEY_ID",
        default_value = "GK6b696c6e2d6465762d6b6579",
        hide_env_values = true
    )]
    pub access_key: String,
    #[arg(
        long = "s3-secret-key",
        env = "AWS_SECRET_ACCESS_KEY",
        default_value = "6b696c6e2d6465762d7365637265742d6b65792d303030303030303030303030",
        hide_default_value = true,
        hide_env_values = true
    )]
    pub secret_key: String,
}

impl S3Args {
    /// A client configuration for these settings: static credentials,
    /// the endpoint, the region and path-style addressing (which
    /// S3-compatible servers such as Garage and MinIO need). `provider`
    /// names the credentials' source in the SDK's logs.
    pub fn config(&self, provider: &'static str) -> aws_sdk_s3::config::Builder {
        let creds = aws_sdk_s3::config::Credentials::new(
            &self.access_key,
            &self.secret_key,
            None,
            None,
            provider,
        );
        aws_sdk_s3::Config::builder()
            .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
            .endpoint_url(&self.endpoint)
            .region(aws_sdk_s3::config::Region::new(self.region.clone()))
            .credentials_provider(creds)
            .force_path_style(true)
    }
}
