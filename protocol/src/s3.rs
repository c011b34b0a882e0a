//! The bucket settings of the processes that hold bucket credentials (the
//! dispatcher, the tests, the benchmarks; feature `s3`), resolved the AWS
//! way ([`S3Args::resolve`]): credentials from the settings or the AWS
//! default chain, the region from the settings or the AWS region chain, an
//! optional endpoint for S3-compatible servers; and the [`Presigner`] that
//! signs the URLs a job message carries.

use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};
use aws_credential_types::Credentials;

mod keys;
pub use keys::{Keys, S3Error};

/// Where results and uploads live: a bucket on AWS S3 or on an
/// S3-compatible server. Nothing here has a secret default: credentials
/// come from these settings or from the AWS default chain.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct S3Args {
    /// The endpoint of an S3-compatible server (Garage, MinIO, ...); unset:
    /// AWS S3 in the bucket's region.
    #[arg(long = "s3-endpoint", env = "KILN_S3_ENDPOINT")]
    pub endpoint: Option<String>,
    #[arg(long = "s3-bucket", env = "KILN_S3_BUCKET", default_value = "kiln")]
    pub bucket: String,
    /// The bucket's region; unset: AWS_REGION, AWS_DEFAULT_REGION, the
    /// profile's region, or instance metadata.
    #[arg(long = "s3-region", env = "KILN_S3_REGION")]
    pub region: Option<String>,
    /// Path-style addressing (`endpoint/bucket/key`), which most
    /// S3-compatible servers need; unset: on when an endpoint is set,
    /// virtual-hosted (`bucket.endpoint/key`) on AWS. A bucket whose name
    /// cannot be a host name (dots, capitals) is always path-style.
    #[arg(long = "s3-path-style", env = "KILN_S3_PATH_STYLE", value_parser = clap::builder::BoolishValueParser::new())]
    pub path_style: Option<bool>,
    /// Static credentials (with AWS_SECRET_ACCESS_KEY, and AWS_SESSION_TOKEN
    /// for temporary ones); unset: the AWS default chain (a profile from
    /// AWS_PROFILE and the shared files, web identity as with IRSA on EKS,
    /// SSO, container or instance metadata).
    #[arg(
        long = "s3-access-key",
        env = "AWS_ACCESS_KEY_ID",
        hide_env_values = true
    )]
    pub access_key: Option<String>,
    #[arg(
        long = "s3-secret-key",
        env = "AWS_SECRET_ACCESS_KEY",
        hide_env_values = true
    )]
    pub secret_key: Option<String>,
    #[arg(
        long = "s3-session-token",
        env = "AWS_SESSION_TOKEN",
        hide_env_values = true
    )]
    pub session_token: Option<String>,
}

/// The bucket, resolved: where it is, how it is addressed, and where its
/// credentials come from (with the first ones, fetched at start).
#[derive(Debug, Clone)]
pub struct Bucket {
    /// The endpoint requests go to: the settings', or AWS S3's regional one.
    pub endpoint: String,
    /// Whether the endpoint is the settings' (an S3-compatible server).
    pub custom_endpoint: bool,
    pub bucket: String,
    pub region: String,
    pub path_style: bool,
    /// Its credentials, shared by every signer and client made from it.
    pub credentials: std::sync::Arc<Keys>,
}

impl S3Args {
    /// Resolves the settings: static credentials when given, else the AWS
    /// default credentials chain, which must find some; the region, else
    /// the AWS region chain.
    pub async fn resolve(&self) -> Result<Bucket, S3Error> {
        match tokio::time::timeout(RESOLVE_TIMEOUT, self.resolve_unbounded()).await {
            Ok(resolved) => resolved,
            Err(_) => Err(S3Error::NoCredentials(format!(
                "the AWS credential and region chains did not answer within {RESOLVE_TIMEOUT:?}"
            ))),
        }
    }

    async fn resolve_unbounded(&self) -> Result<Bucket, S3Error> {
        use aws_config::default_provider::{credentials, region};
        let region = match self.given_region() {
            Some(r) => Some(r),
            None => region::DefaultRegionChain::builder()
                .build()
                .region()
                .await
                .map(|r| r.to_string()),
        };
        let source = match self.static_credentials()? {
            Some(c) => SharedCredentialsProvider::new(c),
            None => {
                let mut chain = credentials::DefaultCredentialsChain::builder();
                if let Some(r) = &region {
                    chain = chain.region(aws_sdk_s3::config::Region::new(r.clone()));
                }
                SharedCredentialsProvider::new(chain.build().await)
            }
        };
        // Credentials first: without them nothing works, whatever the region.
        let credentials = source
            .provide_credentials()
            .await
            .map_err(|e| S3Error::NoCredentials(crate::error_chain(&e)))?;
        let region = region.ok_or(S3Error::NoRegion)?;
        Ok(self.bucket_with(region, source, credentials))
    }

    fn given_region(&self) -> Option<String> {
        self.region.clone().filter(|r| !r.trim().is_empty())
    }

    /// [`S3Args::resolve`] for settings with static credentials and a
    /// region (no lookups, so no `await`).
    pub fn resolve_static(&self) -> Result<Bucket, S3Error> {
        let credentials = self
            .static_credentials()?
            .ok_or_else(|| S3Error::NoCredentials("no static credentials set".into()))?;
        let region = self.given_region().ok_or(S3Error::NoRegion)?;
        let source = SharedCredentialsProvider::new(credentials.clone());
        Ok(self.bucket_with(region, source, credentials))
    }

    fn static_credentials(&self) -> Result<Option<Credentials>, S3Error> {
        let given = |v: &Option<String>| v.clone().filter(|v| !v.trim().is_empty());
        match (given(&self.access_key), given(&self.secret_key)) {
            (Some(key), Some(secret)) => Ok(Some(Credentials::new(
                key,
                secret,
                given(&self.session_token),
                None,
                "Kiln settings",
            ))),
            (None, None) => Ok(None),
            _ => Err(S3Error::HalfCredentials),
        }
    }

    fn bucket_with(
        &self,
        region: String,
        source: SharedCredentialsProvider,
        credentials: Credentials,
    ) -> Bucket {
        let custom = self.endpoint.clone().filter(|e| !e.trim().is_empty());
        let endpoint = custom
            .clone()
            .unwrap_or_else(|| format!("https://s3.{region}.amazonaws.com"));
        let hostable = virtual_hostable(&self.bucket, &endpoint);
        Bucket {
            endpoint,
            custom_endpoint: custom.is_some(),
            bucket: self.bucket.clone(),
            path_style: self.path_style.unwrap_or(custom.is_some()) || !hostable,
            region,
            credentials: std::sync::Arc::new(Keys::new(source, credentials)),
        }
    }
}

/// How long [`S3Args::resolve`] may look for credentials and a region.
const RESOLVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Whether `bucket` on `endpoint` can be addressed virtual-hosted
/// (`bucket.host`): a DNS label (3-63 of `a-z0-9-`, no dots, which would
/// break TLS wildcards) on an endpoint named by a host name, not an IP.
fn virtual_hostable(bucket: &str, endpoint: &str) -> bool {
    let label = (3..=63).contains(&bucket.len())
        && bucket
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !bucket.starts_with('-')
        && !bucket.ends_with('-');
    let host = endpoint
        .parse::<http::Uri>()
        .ok()
        .and_then(|u| u.host().map(str::to_string));
    let named = host.is_some_and(|h| {
        h.trim_matches(['[', ']'])
            .parse::<std::net::IpAddr>()
            .is_err()
    });
    label && named
}

impl Bucket {
    /// A client configuration for this bucket: its credentials' source
    /// (behind the SDK's identity cache), region, endpoint and addressing.
    pub fn config(&self) -> aws_sdk_s3::config::Builder {
        let mut b = aws_sdk_s3::Config::builder()
            .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
            .region(aws_sdk_s3::config::Region::new(self.region.clone()))
            .credentials_provider(self.credentials.source.clone())
            .force_path_style(self.path_style);
        if self.custom_endpoint {
            b = b.endpoint_url(&self.endpoint);
        }
        b
    }
}

/// The longest lifetime SigV4 allows a presigned URL.
pub const MAX_URL_TTL: std::time::Duration = std::time::Duration::from_secs(7 * 24 * 3600);

/// Why URLs cannot be signed.
#[derive(Debug, thiserror::Error)]
pub enum PresignError {
    #[error("the URL lifetime {0:?} is outside 1s..=7d (SigV4's limits)")]
    Ttl(std::time::Duration),
    #[error("{endpoint:?} is not an http(s) endpoint: {error}")]
    Endpoint { endpoint: String, error: String },
}

/// Signs URLs that let a holder without credentials do one thing to one
/// object until they expire (SigV4 query signing, as `aws s3 presign`
/// does, path-style): the dispatcher hands each job's attempt a PUT URL
/// per object it may write and a GET URL for its init image. A content
/// type is signed into each PUT, so the object gets the type the
/// dispatcher chose. No request is made: signing is local.
///
/// The relay signs a URL or more per job it publishes, so the signing is
/// lean: the canonical request of these few shapes is written directly,
/// and the day's signing key (four HMACs) is derived once a day with
/// aws-sigv4's own function; the tests hold every URL to what aws-sigv4's
/// full signer makes of the same request.
///
/// Temporary credentials (web identity, metadata, SSO) are fetched again
/// from the bucket's source shortly before they expire, once for every
/// signer of the bucket ([`Keys::refresh`]); a URL dies with the credentials it was signed
/// with, and the attempt is then published again with fresh URLs.
#[derive(Clone)]
pub struct Presigner {
    /// Scheme and authority (the bucket's subdomain first when
    /// virtual-hosted), with no trailing slash.
    origin: String,
    /// The `host` header a request to `origin` carries.
    host: String,
    /// The encoded path before a key: `/{bucket}/` path-style, `/`
    /// virtual-hosted.
    prefix: String,
    region: String,
    credentials: std::sync::Arc<Keys>,
    ttl: std::time::Duration,
    /// The signing key of one UTC day and access key.
    day_key: std::sync::Arc<std::sync::Mutex<Option<DayKey>>>,
}

/// A SigV4 signing key, its UTC day (`YYYYMMDD`) and its access key id.
type DayKey = (String, String, Vec<u8>);

impl std::fmt::Debug for Presigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Presigner")
            .field("origin", &self.origin)
            .field("prefix", &self.prefix)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl Presigner {
    /// Signs with the bucket's credentials, for URLs on `endpoint` (where
    /// the holders reach the bucket; the bucket's endpoint when `None`)
    /// that live `ttl`.
    pub fn new(
        bucket: &Bucket,
        endpoint: Option<&str>,
        ttl: std::time::Duration,
    ) -> Result<Presigner, PresignError> {
        if ttl < std::time::Duration::from_secs(1) || ttl > MAX_URL_TTL {
            return Err(PresignError::Ttl(ttl));
        }
        let endpoint = endpoint.unwrap_or(&bucket.endpoint).trim_end_matches('/');
        let bad = |error: &str| PresignError::Endpoint {
            endpoint: endpoint.to_string(),
            error: error.to_string(),
        };
        let uri: http::Uri = endpoint
            .parse()
            .map_err(|e: http::uri::InvalidUri| bad(&e.to_string()))?;
        let (Some(scheme @ ("http" | "https")), Some(authority)) =
            (uri.scheme_str(), uri.authority())
        else {
            return Err(bad("it needs a scheme (http or https) and a host"));
        };
        if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
            return Err(bad("an S3 endpoint has no path"));
        }
        let host = match (scheme, uri.port_u16()) {
            ("http", Some(80)) | ("https", Some(443)) | (_, None) => {
                uri.host().unwrap_or_default().to_string()
            }
            _ => authority.as_str().to_string(),
        };
        let (origin, host, prefix) = if bucket.path_style {
            let prefix = format!("/{}/", encode(&bucket.bucket, false));
            (endpoint.to_string(), host, prefix)
        } else {
            let origin = format!("{scheme}://{}.{}", bucket.bucket, authority.as_str());
            (origin, format!("{}.{host}", bucket.bucket), "/".to_string())
        };
        Ok(Presigner {
            origin,
            host,
            prefix,
            region: bucket.region.clone(),
            credentials: bucket.credentials.clone(),
            ttl,
            day_key: Default::default(),
        })
    }

    /// Fetches the bucket's credentials again when they are about to
    /// expire (see [`Keys::refresh`]).
    pub async fn refresh(&self) -> Result<(), S3Error> {
        self.credentials.refresh().await
    }

    /// The credentials URLs are signed with now.
    fn current(&self) -> Credentials {
        self.credentials.current()
    }

    /// A URL that uploads `key` with `content_type` (which the upload must
    /// send), signed at `now`.
    pub fn put(&self, key: &str, content_type: &str, now: std::time::SystemTime) -> String {
        self.sign("PUT", key, &[("content-type", content_type)], now)
    }

    /// A URL that downloads `key`, signed at `now`.
    pub fn get(&self, key: &str, now: std::time::SystemTime) -> String {
        self.sign("GET", key, &[], now)
    }

    /// The URLs of one attempt of job `job` (of `batch`, owned by `tenant`):
    /// a PUT for each of the `keep` images it may write, one for its
    /// metadata, and a GET for its init image (an upload id) if it has one.
    pub fn job_urls(
        &self,
        tenant: &str,
        batch: uuid::Uuid,
        job: uuid::Uuid,
        keep: u32,
        init_image: Option<&str>,
        now: std::time::SystemTime,
    ) -> crate::JobUrls {
        use crate::keys;
        let images = (0..keep)
            .map(|rank| {
                let key = keys::image_key(tenant, batch, job, rank);
                self.put(&key, keys::IMAGE_CONTENT_TYPE, now)
            })
            .collect();
        let metadata = self.put(
            &keys::metadata_key(tenant, batch, job),
            keys::METADATA_CONTENT_TYPE,
            now,
        );
        let init_image = init_image.map(|id| self.get(&keys::upload_key(tenant, id), now));
        crate::JobUrls {
            images,
            metadata,
            init_image,
        }
    }

    /// `method` on `key` with `headers` (lowercase names, sorted; `host`
    /// is added), signed at `now`: SigV4 with the signature in the query,
    /// the payload unsigned.
    fn sign(
        &self,
        method: &str,
        key: &str,
        headers: &[(&str, &str)],
        now: std::time::SystemTime,
    ) -> String {
        use sha2::Digest;
        let at = chrono::DateTime::<chrono::Utc>::from(now);
        let (day, stamp) = (
            at.format("%Y%m%d").to_string(),
            at.format("%Y%m%dT%H%M%SZ").to_string(),
        );
        let path = self.path(key);
        let credentials = self.current();
        let scope = format!("{day}/{}/s3/aws4_request", self.region);
        let credential = format!("{}/{scope}", credentials.access_key_id());
        let mut signed_headers: Vec<(&str, &str)> = headers.to_vec();
        signed_headers.push(("host", &self.host));
        signed_headers.sort_unstable();
        let names: Vec<&str> = signed_headers.iter().map(|(n, _)| *n).collect();
        let names = names.join(";");
        // The canonical query is sorted by name: a session token signs
        // between the expiry and the signed headers (and is sent last, as
        // the SDKs send it).
        let head = format!(
            "X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential={}&X-Amz-Date={stamp}&X-Amz-Expires={}",
            encode(&credential, false),
            self.lifetime(&credentials, now).as_secs()
        );
        let tail = format!("X-Amz-SignedHeaders={}", encode(&names, false));
        let token = credentials
            .session_token()
            .map(|t| format!("X-Amz-Security-Token={}", encode(t, false)));
        let query = match &token {
            Some(token) => format!("{head}&{token}&{tail}"),
            None => format!("{head}&{tail}"),
        };
        let mut canonical = format!("{method}\n{path}\n{query}\n");
        for (name, value) in &signed_headers {
            canonical.push_str(name);
            canonical.push(':');
            canonical.push_str(value.trim());
            canonical.push('\n');
        }
        canonical.push('\n');
        canonical.push_str(&names);
        canonical.push_str("\nUNSIGNED-PAYLOAD");
        let string_to_sign = format!(
            "AWS4-HMAC-SHA256\n{stamp}\n{scope}\n{}",
            hex::encode(sha2::Sha256::digest(canonical.as_bytes()))
        );
        let signature = aws_sigv4::sign::v4::calculate_signature(
            self.signing_key(&credentials, &day, now),
            string_to_sign.as_bytes(),
        );
        let mut url = format!(
            "{}{path}?{head}&{tail}&X-Amz-Signature={signature}",
            self.origin
        );
        if let Some(token) = token {
            url.push('&');
            url.push_str(&token);
        }
        url
    }

    /// How long a URL signed at `now` with `credentials` lives: the TTL, or
    /// less when the credentials expire sooner (the URL would die with
    /// them), at least a second.
    fn lifetime(
        &self,
        credentials: &Credentials,
        now: std::time::SystemTime,
    ) -> std::time::Duration {
        let left = credentials
            .expiry()
            .map(|at| at.duration_since(now).unwrap_or_default());
        let secs = left.map_or(self.ttl, |l| l.min(self.ttl)).as_secs().max(1);
        std::time::Duration::from_secs(secs)
    }

    /// The encoded path of `key` (path-style: the bucket first).
    fn path(&self, key: &str) -> String {
        format!("{}{}", self.prefix, encode(key, true))
    }

    /// The signing key of `day` (the UTC day of `now`) for `credentials`,
    /// derived once per day and access key.
    fn signing_key(
        &self,
        credentials: &Credentials,
        day: &str,
        now: std::time::SystemTime,
    ) -> Vec<u8> {
        let mut cached = self.day_key.lock().expect("signing key lock");
        let id = credentials.access_key_id();
        match cached.as_ref() {
            Some((d, k, key)) if d == day && k == id => key.clone(),
            _ => {
                let key = aws_sigv4::sign::v4::generate_signing_key(
                    credentials.secret_access_key(),
                    now,
                    &self.region,
                    "s3",
                )
                .as_ref()
                .to_vec();
                *cached = Some((day.to_string(), id.to_string(), key.clone()));
                key
            }
        }
    }

    /// What aws-sigv4's full signer makes of the same request: the
    /// reference [`Presigner::sign`] is held to.
    #[cfg(test)]
    fn sign_reference(
        &self,
        method: &str,
        key: &str,
        headers: &[(&str, &str)],
        now: std::time::SystemTime,
    ) -> String {
        use aws_sigv4::http_request::{
            sign, PercentEncodingMode, SignableBody, SignableRequest, SignatureLocation,
            SigningSettings, UriPathNormalizationMode,
        };
        let mut url = format!("{}{}", self.origin, self.path(key));
        let mut settings = SigningSettings::default();
        settings.signature_location = SignatureLocation::QueryParams;
        settings.expires_in = Some(self.lifetime(&self.current(), now));
        settings.percent_encoding_mode = PercentEncodingMode::Single;
        settings.uri_path_normalization_mode = UriPathNormalizationMode::Disabled;
        let identity = self.current().into();
        let params = aws_sigv4::sign::v4::SigningParams::builder()
            .identity(&identity)
            .region(&self.region)
            .name("s3")
            .time(now)
            .settings(settings)
            .build()
            .unwrap()
            .into();
        let request = SignableRequest::new(
            method,
            url.as_str(),
            headers.iter().copied(),
            SignableBody::UnsignedPayload,
        )
        .unwrap();
        let (instructions, _) = sign(request, &params).unwrap().into_parts();
        let (_, query) = instructions.into_parts();
        for (i, (name, value)) in query.iter().enumerate() {
            url.push(if i == 0 { '?' } else { '&' });
            url.push_str(name);
            url.push('=');
            url.push_str(&encode(value, false));
        }
        url
    }
}

/// Percent-encodes `s` as SigV4 does: everything but `A-Za-z0-9-_.~`
/// (and `/` when `keep_slash`).
fn encode(s: &str, keep_slash: bool) -> String {
    use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
    const UNRESERVED: &AsciiSet = &NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'_')
        .remove(b'.')
        .remove(b'~');
    const PATH: &AsciiSet = &UNRESERVED.remove(b'/');
    utf8_percent_encode(s, if keep_slash { PATH } else { UNRESERVED }).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, SystemTime};

    fn settings() -> S3Args {
        S3Args {
            endpoint: Some("http://127.0.0.1:3900/".into()),
            bucket: "kiln".into(),
            region: Some("garage".into()),
            access_key: Some("GKtest".into()),
            secret_key: Some("secret".into()),
            ..S3Args::default()
        }
    }

    fn args() -> Bucket {
        settings().resolve_static().unwrap()
    }

    #[test]
    fn urls_name_one_key_one_method_and_expire() {
        let p = Presigner::new(&args(), None, Duration::from_secs(3600)).unwrap();
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let put = p.put("acme/b 1/j/0.png", "image/png", at);
        assert!(
            put.starts_with("http://127.0.0.1:3900/kiln/acme/b%201/j/0.png?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=GKtest%2F20270115%2Fgarage%2Fs3%2Faws4_request&X-Amz-Date=20270115T080000Z&X-Amz-Expires=3600&X-Amz-SignedHeaders=content-type%3Bhost&X-Amz-Signature="),
            "{put}"
        );
        // Deterministic for the same inputs; another key, method, type or
        // time signs differently.
        assert_eq!(put, p.put("acme/b 1/j/0.png", "image/png", at));
        let sig = |u: &str| u.rsplit_once("X-Amz-Signature=").unwrap().1.to_string();
        let others = [
            p.put("acme/b 1/j/1.png", "image/png", at),
            p.put("acme/b 1/j/0.png", "text/html", at),
            p.get("acme/b 1/j/0.png", at),
            p.put("acme/b 1/j/0.png", "image/png", at + Duration::from_secs(1)),
        ];
        for o in &others {
            assert_ne!(sig(o), sig(&put), "{o}");
        }
        assert!(
            others[2].contains("X-Amz-SignedHeaders=host&"),
            "{}",
            others[2]
        );
        let expires = chrono::DateTime::<chrono::Utc>::from(at + Duration::from_secs(3600));
        assert_eq!(crate::message::url_expires_at(&put), Some(expires));
    }

    #[test]
    fn urls_are_what_aws_sigv4_signs() {
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let with_token = S3Args {
            endpoint: Some("https://s3.example.com:443".into()),
            access_key: Some("AK".into()),
            secret_key: Some("SK".into()),
            session_token: Some("tok/en+=".into()),
            ..settings()
        };
        let session = Presigner::new(
            &with_token.resolve_static().unwrap(),
            None,
            Duration::from_secs(60),
        )
        .unwrap();
        // AWS S3 itself: no endpoint, virtual-hosted addressing.
        let aws = S3Args {
            endpoint: None,
            region: Some("eu-west-1".into()),
            ..settings()
        };
        let aws = Presigner::new(
            &aws.resolve_static().unwrap(),
            None,
            Duration::from_secs(900),
        )
        .unwrap();
        let presigners = [
            Presigner::new(&args(), None, Duration::from_secs(3600)).unwrap(),
            Presigner::new(&args(), Some("https://s3.example.com"), MAX_URL_TTL).unwrap(),
            Presigner::new(&args(), Some("http://minio:80/"), Duration::from_secs(1)).unwrap(),
            session,
            aws,
        ];
        let keys = [
            "acme/b/j/0.png",
            "t_1/uploads/up-1",
            "odd key/ä+%?&=#/~x.json",
        ];
        for p in &presigners {
            for key in keys {
                for t in [
                    at,
                    at + Duration::from_secs(86_399),
                    at + Duration::from_secs(86_400),
                ] {
                    for (method, headers) in [
                        ("PUT", &[("content-type", "image/png")][..]),
                        ("PUT", &[("content-type", "application/json")][..]),
                        ("GET", &[][..]),
                    ] {
                        assert_eq!(
                            p.sign(method, key, headers, t),
                            p.sign_reference(method, key, headers, t),
                            "{p:?} {method} {key}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn a_job_gets_a_put_per_kept_image_its_metadata_and_its_init_image() {
        let p = Presigner::new(
            &args(),
            Some("https://s3.example.com"),
            Duration::from_secs(60),
        )
        .unwrap();
        let (b, j) = (uuid::Uuid::from_u128(1), uuid::Uuid::from_u128(2));
        let urls = p.job_urls("acme", b, j, 3, Some("up-1"), SystemTime::now());
        assert_eq!(urls.images.len(), 3);
        for (r, u) in urls.images.iter().enumerate() {
            assert!(
                u.starts_with(&format!(
                    "https://s3.example.com/kiln/acme/{b}/{j}/{r}.png?"
                )),
                "{u}"
            );
        }
        assert!(urls.metadata.starts_with(&format!(
            "https://s3.example.com/kiln/acme/{b}/{j}/metadata.json?"
        )));
        assert!(urls
            .init_image
            .unwrap()
            .starts_with("https://s3.example.com/kiln/acme/uploads/up-1?"));
        let none = p.job_urls("acme", b, j, 1, None, SystemTime::now());
        assert!(none.init_image.is_none());
    }

    #[test]
    fn addressing_follows_the_endpoint_unless_set() {
        let compatible = args();
        assert!(compatible.path_style && compatible.custom_endpoint);
        let aws = S3Args {
            endpoint: None,
            region: Some("eu-west-1".into()),
            ..settings()
        }
        .resolve_static()
        .unwrap();
        assert!(!aws.path_style && !aws.custom_endpoint);
        assert_eq!(aws.endpoint, "https://s3.eu-west-1.amazonaws.com");
        let p = Presigner::new(&aws, None, Duration::from_secs(60)).unwrap();
        let url = p.get("acme/uploads/up-1", SystemTime::now());
        assert!(
            url.starts_with("https://kiln.s3.eu-west-1.amazonaws.com/acme/uploads/up-1?"),
            "{url}"
        );
        // Virtual-hosted only where the bucket can be a host name.
        let named = |bucket: &str, endpoint: &str| {
            S3Args {
                bucket: bucket.into(),
                endpoint: Some(endpoint.into()),
                path_style: Some(false),
                ..settings()
            }
            .resolve_static()
            .unwrap()
            .path_style
        };
        assert!(!named("kiln", "https://s3.example.com"));
        assert!(named("my.bucket", "https://s3.example.com"), "dots");
        assert!(named("Kiln", "https://s3.example.com"), "capitals");
        assert!(named("kiln", "http://127.0.0.1:3900"), "an IP");
        let half = S3Args {
            secret_key: None,
            ..settings()
        };
        assert!(matches!(
            half.resolve_static(),
            Err(S3Error::HalfCredentials)
        ));
        let no_region = S3Args {
            region: None,
            ..settings()
        };
        assert!(matches!(no_region.resolve_static(), Err(S3Error::NoRegion)));
    }

    /// Temporary credentials that a source hands out anew on each call.
    #[derive(Debug, Default)]
    struct Rotating(std::sync::atomic::AtomicU32);

    impl ProvideCredentials for Rotating {
        fn provide_credentials<'a>(
            &'a self,
        ) -> aws_credential_types::provider::future::ProvideCredentials<'a>
        where
            Self: 'a,
        {
            let n = self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
            // Each set lives 4 minutes: inside the refresh margin.
            let expiry = SystemTime::now() + Duration::from_secs(240);
            aws_credential_types::provider::future::ProvideCredentials::ready(Ok(Credentials::new(
                format!("AK{n}"),
                format!("SK{n}"),
                Some(format!("T{n}")),
                Some(expiry),
                "test",
            )))
        }
    }

    #[tokio::test]
    async fn temporary_credentials_are_fetched_again_before_they_expire() {
        let source = SharedCredentialsProvider::new(Rotating::default());
        let first = source.provide_credentials().await.unwrap();
        let bucket = Bucket {
            credentials: std::sync::Arc::new(Keys::new(source, first)),
            ..args()
        };
        let p = Presigner::new(&bucket, None, Duration::from_secs(60)).unwrap();
        let at = SystemTime::now();
        let before = p.put("k", "image/png", at);
        assert!(
            before.contains("X-Amz-Credential=AK1%2F")
                && before.contains("X-Amz-Security-Token=T1"),
            "{before}"
        );
        p.refresh().await.unwrap();
        let after = p.put("k", "image/png", at);
        assert!(
            after.contains("X-Amz-Credential=AK2%2F") && after.contains("X-Amz-Security-Token=T2"),
            "{after}"
        );
        assert_eq!(
            after,
            p.sign_reference("PUT", "k", &[("content-type", "image/png")], at)
        );
        // No URL outlives the credentials it was signed with.
        let long = Presigner::new(&bucket, None, Duration::from_secs(3600)).unwrap();
        let expiry = long.current().expiry().unwrap();
        let at = expiry - Duration::from_secs(100);
        let url = long.get("k", at);
        assert!(url.contains("&X-Amz-Expires=100&"), "{url}");
        assert_eq!(url, long.sign_reference("GET", "k", &[], at));
        // To the second, as X-Amz-Date states the signing time.
        assert_eq!(
            crate::message::url_expires_at(&url).map(|t| t.timestamp()),
            Some(chrono::DateTime::<chrono::Utc>::from(expiry).timestamp())
        );
        // Static credentials never expire: nothing is fetched.
        let fixed = Presigner::new(&args(), None, Duration::from_secs(60)).unwrap();
        fixed.refresh().await.unwrap();
        assert!(fixed
            .put("k", "image/png", at)
            .contains("X-Amz-Credential=GKtest%2F"));
    }

    #[test]
    fn bad_lifetimes_and_endpoints_are_refused() {
        for ttl in [Duration::ZERO, MAX_URL_TTL + Duration::from_secs(1)] {
            assert!(matches!(
                Presigner::new(&args(), None, ttl),
                Err(PresignError::Ttl(_))
            ));
        }
        assert!(Presigner::new(&args(), None, MAX_URL_TTL).is_ok());
        for e in ["127.0.0.1:3900", "ftp://h", "http://h/prefix", "not a url"] {
            let r = Presigner::new(&args(), Some(e), Duration::from_secs(60));
            assert!(
                matches!(r, Err(PresignError::Endpoint { .. })),
                "{e}: {r:?}"
            );
        }
    }
}
