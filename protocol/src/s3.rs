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
#[derive(Clone)]
pub struct Presigner {
    /// Scheme and authority, with no trailing slash.
    endpoint: String,
    /// The `host` header a request to the endpoint carries.
    host: String,
    bucket: String,
    region: String,
    credentials: aws_credential_types::Credentials,
    ttl: std::time::Duration,
    /// The signing key of one UTC day.
    day_key: std::sync::Arc<std::sync::Mutex<Option<DayKey>>>,
}

/// A SigV4 signing key and its UTC day (`YYYYMMDD`).
type DayKey = (String, Vec<u8>);

impl std::fmt::Debug for Presigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Presigner")
            .field("endpoint", &self.endpoint)
            .field("bucket", &self.bucket)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl Presigner {
    /// Signs with `s3`'s credentials, for URLs on `endpoint` (where the
    /// holders reach the bucket; `s3.endpoint` when `None`) that live `ttl`.
    pub fn new(
        s3: &S3Args,
        endpoint: Option<&str>,
        ttl: std::time::Duration,
    ) -> Result<Presigner, PresignError> {
        if ttl < std::time::Duration::from_secs(1) || ttl > MAX_URL_TTL {
            return Err(PresignError::Ttl(ttl));
        }
        let endpoint = endpoint.unwrap_or(&s3.endpoint).trim_end_matches('/');
        let bad = |error: &str| PresignError::Endpoint {
            endpoint: endpoint.to_string(),
            error: error.to_string(),
        };
        let uri: http::Uri = endpoint
            .parse()
            .map_err(|e: http::uri::InvalidUri| bad(&e.to_string()))?;
        if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
            return Err(bad("it needs a scheme (http or https) and a host"));
        }
        if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
            return Err(bad("path-style URLs need an endpoint without a path"));
        }
        let host = match (uri.scheme_str(), uri.port_u16()) {
            (Some("http"), Some(80)) | (Some("https"), Some(443)) | (_, None) => {
                uri.host().unwrap_or_default().to_string()
            }
            _ => uri
                .authority()
                .map(|a| a.as_str())
                .unwrap_or_default()
                .to_string(),
        };
        let p = Presigner {
            endpoint: endpoint.to_string(),
            host,
            bucket: s3.bucket.clone(),
            region: s3.region.clone(),
            credentials: aws_credential_types::Credentials::new(
                &s3.access_key,
                &s3.secret_key,
                None,
                None,
                "kiln-presigner",
            ),
            ttl,
            day_key: Default::default(),
        };
        Ok(p)
    }

    /// How long the URLs live.
    pub fn ttl(&self) -> std::time::Duration {
        self.ttl
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
        let scope = format!("{day}/{}/s3/aws4_request", self.region);
        let credential = format!("{}/{scope}", self.credentials.access_key_id());
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
            self.ttl.as_secs()
        );
        let tail = format!("X-Amz-SignedHeaders={}", encode(&names, false));
        let token = self
            .credentials
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
            self.signing_key(&day, now),
            string_to_sign.as_bytes(),
        );
        let mut url = format!(
            "{}{path}?{head}&{tail}&X-Amz-Signature={signature}",
            self.endpoint
        );
        if let Some(token) = token {
            url.push('&');
            url.push_str(&token);
        }
        url
    }

    /// The encoded path of `key` (path-style: the bucket first).
    fn path(&self, key: &str) -> String {
        format!("/{}/{}", encode(&self.bucket, false), encode(key, true))
    }

    /// The signing key of `day` (the UTC day of `now`), derived once.
    fn signing_key(&self, day: &str, now: std::time::SystemTime) -> Vec<u8> {
        let mut cached = self.day_key.lock().expect("signing key lock");
        match cached.as_ref() {
            Some((d, key)) if d == day => key.clone(),
            _ => {
                let key = aws_sigv4::sign::v4::generate_signing_key(
                    self.credentials.secret_access_key(),
                    now,
                    &self.region,
                    "s3",
                )
                .as_ref()
                .to_vec();
                *cached = Some((day.to_string(), key.clone()));
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
        let mut url = format!("{}{}", self.endpoint, self.path(key));
        let mut settings = SigningSettings::default();
        settings.signature_location = SignatureLocation::QueryParams;
        settings.expires_in = Some(self.ttl);
        settings.percent_encoding_mode = PercentEncodingMode::Single;
        settings.uri_path_normalization_mode = UriPathNormalizationMode::Disabled;
        let identity = self.credentials.clone().into();
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

    fn args() -> S3Args {
        S3Args {
            endpoint: "http://127.0.0.1:3900/".into(),
            bucket: "kiln".into(),
            region: "garage".into(),
            access_key: "GKtest".into(),
            secret_key: "secret".into(),
        }
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
        let mut with_token = args();
        with_token.endpoint = "https://s3.example.com:443".into();
        let session = Presigner {
            credentials: aws_credential_types::Credentials::new(
                "AK",
                "SK",
                Some("tok/en+=".into()),
                None,
                "t",
            ),
            ..Presigner::new(&with_token, None, Duration::from_secs(60)).unwrap()
        };
        let presigners = [
            Presigner::new(&args(), None, Duration::from_secs(3600)).unwrap(),
            Presigner::new(&args(), Some("https://s3.example.com"), MAX_URL_TTL).unwrap(),
            Presigner::new(&args(), Some("http://minio:80/"), Duration::from_secs(1)).unwrap(),
            session,
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
