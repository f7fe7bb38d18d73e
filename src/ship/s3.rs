//! `kind = "s3"`: AWS S3 and S3-compatible stores (R2, B2, MinIO, Wasabi,
//! Filebase), through the `object_store` crate — its SigV4 signing, its HTTP
//! client with timeouts, and its retries with backoff on 5xx, 429 and
//! timeouts (not on 403/404).
//!
//! Objects are immutable: `put_if_absent` is a conditional create
//! (`If-None-Match: *`, which S3 has honoured since 2024 and R2, MinIO and
//! others too). Objects above [`MULTIPART_THRESHOLD`] go up in parts; S3 has
//! no conditional multipart create in `object_store`, so a `HEAD` comes first
//! — a race there can only write the same bytes, as every object name is
//! derived from its content or is written by one writer only.

use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::TryStreamExt;
use object_store::aws::{AmazonS3Builder, S3ConditionalPut};
use object_store::path::Path as StorePath;
use object_store::{
    BackoffConfig, ClientOptions, ObjectStore, PutMode, PutOptions, PutPayload, RetryConfig,
    WriteMultipart,
};

use super::{Destination, ObjectMeta, PutOutcome, ShipError, validate_key};

/// How to reach an S3 bucket: what [`S3Destination`] needs.
#[derive(Clone, PartialEq, Eq)]
pub struct S3Options {
    /// The bucket.
    pub bucket: String,
    /// Prepended to every object name (`pitr/`); empty for none.
    pub prefix: String,
    /// The region (`us-east-1` when the store does not care).
    pub region: String,
    /// A custom endpoint (`http://127.0.0.1:9000`); `None` for AWS. Plain
    /// http only when given here explicitly.
    pub endpoint: Option<String>,
    /// The access key id; `None` takes `AWS_ACCESS_KEY_ID`.
    pub access_key_id: Option<String>,
    /// The secret key; `None` takes `AWS_SECRET_ACCESS_KEY`. `Debug`
    /// redacts it.
    pub secret_access_key: Option<String>,
    /// How long one request may take before it is retried.
    pub request_timeout: Duration,
}

impl std::fmt::Debug for S3Options {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Options")
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .field("region", &self.region)
            .field("endpoint", &self.endpoint)
            .field("access_key_id", &self.access_key_id)
            .field(
                "secret_access_key",
                &self.secret_access_key.as_ref().map(|_| "(redacted)"),
            )
            .field("request_timeout", &self.request_timeout)
            .finish()
    }
}

/// Objects larger than this are uploaded in parts.
pub const MULTIPART_THRESHOLD: usize = 64 << 20;
/// The size of each part.
const PART_SIZE: usize = 16 << 20;

/// An S3 bucket (under a prefix) as a destination.
#[derive(Debug)]
pub struct S3Destination {
    name: String,
    prefix: String,
    /// The client, or why the settings were refused (reported by every
    /// operation, so that building the destination list cannot fail).
    store: Result<Arc<dyn ObjectStore>, S3SettingsRefused>,
}

/// Settings the S3 client refuses (a malformed endpoint, a region it does
/// not know, ...), with the client's own error as the cause.
#[derive(Debug, Clone, thiserror::Error)]
#[error("the s3 settings are refused: {0}")]
pub struct S3SettingsRefused(#[source] Arc<object_store::Error>);

impl S3Destination {
    /// A destination for `settings`. Settings the client refuses (e.g. a
    /// malformed endpoint) make every operation fail, saying why.
    pub fn new(name: &str, settings: &S3Options) -> S3Destination {
        let mut b = AmazonS3Builder::from_env()
            .with_bucket_name(&settings.bucket)
            .with_region(&settings.region)
            .with_conditional_put(S3ConditionalPut::ETagMatch)
            .with_client_options(
                ClientOptions::new()
                    .with_timeout(settings.request_timeout)
                    .with_connect_timeout(Duration::from_secs(10)),
            )
            .with_retry(RetryConfig {
                backoff: BackoffConfig::default(),
                max_retries: 5,
                retry_timeout: Duration::from_secs(120),
            });
        if let Some(endpoint) = &settings.endpoint {
            // An explicit endpoint may be plain http (a store on loopback or
            // a private network); AWS itself is always https.
            b = b
                .with_endpoint(endpoint)
                .with_allow_http(endpoint.starts_with("http://"))
                .with_virtual_hosted_style_request(false);
        }
        if let Some(id) = &settings.access_key_id {
            b = b.with_access_key_id(id);
        }
        if let Some(secret) = &settings.secret_access_key {
            b = b.with_secret_access_key(secret);
        }
        let store = b
            .build()
            .map(|s| Arc::new(s) as Arc<dyn ObjectStore>)
            .map_err(|e| S3SettingsRefused(Arc::new(e)));
        let prefix = settings.prefix.trim_matches('/').to_owned();
        S3Destination {
            name: name.to_owned(),
            prefix: if prefix.is_empty() {
                prefix
            } else {
                format!("{prefix}/")
            },
            store,
        }
    }

    /// Whether the client accepts `settings`, without contacting the
    /// store (`pitr check --offline`).
    pub fn validate(settings: &S3Options) -> Result<(), S3SettingsRefused> {
        S3Destination::new("check", settings).store.map(|_| ())
    }

    fn store(&self, op: &'static str, key: &str) -> Result<&Arc<dyn ObjectStore>, ShipError> {
        self.store.as_ref().map_err(|why| ShipError::Io {
            dest: self.name.clone(),
            op,
            key: key.to_owned(),
            source: std::io::Error::other(why.clone()),
            transient: false,
        })
    }

    fn path(&self, key: &str) -> StorePath {
        StorePath::from(format!("{}{key}", self.prefix))
    }

    fn err(&self, op: &'static str, key: &str, e: object_store::Error) -> ShipError {
        use object_store::Error as E;
        match e {
            E::NotFound { .. } => ShipError::NotFound {
                dest: self.name.clone(),
                key: key.to_owned(),
            },
            e => {
                // What object_store gives up on after its own retries
                // (server errors, timeouts, connection failures) may pass;
                // refused credentials, permissions or requests will not.
                let transient = matches!(e, E::Generic { .. } | E::JoinError { .. });
                ShipError::Io {
                    dest: self.name.clone(),
                    op,
                    key: key.to_owned(),
                    source: std::io::Error::other(e.to_string()),
                    transient,
                }
            }
        }
    }
}

#[async_trait]
impl Destination for S3Destination {
    fn name(&self) -> &str {
        &self.name
    }

    async fn prepare(&self) -> Result<(), ShipError> {
        // The bucket must exist and be reachable with these credentials:
        // listing one page proves both without writing.
        let probe = self.path("config");
        let mut listing = self.store("list", "(bucket)")?.list(Some(&probe));
        listing
            .try_next()
            .await
            .map(|_| ())
            .map_err(|e| self.err("list", "(bucket)", e))
    }

    async fn put_if_absent(&self, key: &str, data: Bytes) -> Result<PutOutcome, ShipError> {
        validate_key(&self.name, key)?;
        let path = self.path(key);
        if data.len() > MULTIPART_THRESHOLD {
            if self.head(key).await?.is_some() {
                return Ok(PutOutcome::AlreadyExists);
            }
            let upload = self
                .store("put", key)?
                .put_multipart(&path)
                .await
                .map_err(|e| self.err("put", key, e))?;
            let mut w = WriteMultipart::new_with_chunk_size(upload, PART_SIZE);
            w.put(data);
            w.finish().await.map_err(|e| self.err("put", key, e))?;
            return Ok(PutOutcome::Created);
        }
        let opts = PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        };
        match self
            .store("put", key)?
            .put_opts(&path, PutPayload::from_bytes(data), opts)
            .await
        {
            Ok(_) => Ok(PutOutcome::Created),
            Err(object_store::Error::AlreadyExists { .. }) => Ok(PutOutcome::AlreadyExists),
            Err(e) => Err(self.err("put", key, e)),
        }
    }

    async fn get(&self, key: &str) -> Result<Bytes, ShipError> {
        validate_key(&self.name, key)?;
        let got = self
            .store("get", key)?
            .get(&self.path(key))
            .await
            .map_err(|e| self.err("get", key, e))?;
        got.bytes().await.map_err(|e| self.err("get", key, e))
    }

    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes, ShipError> {
        validate_key(&self.name, key)?;
        if range.start >= range.end {
            return Ok(Bytes::new());
        }
        match self
            .store("get", key)?
            .get_range(&self.path(key), range.clone())
            .await
        {
            Ok(b) => Ok(b),
            Err(e) => {
                // A range starting at or past the end is "416" to S3; the
                // contract here is a short (empty) read, which callers see
                // as truncation.
                match self.head(key).await? {
                    Some(meta) if meta.size <= range.start => Ok(Bytes::new()),
                    _ => Err(self.err("get", key, e)),
                }
            }
        }
    }

    async fn head(&self, key: &str) -> Result<Option<ObjectMeta>, ShipError> {
        validate_key(&self.name, key)?;
        match self.store("head", key)?.head(&self.path(key)).await {
            Ok(m) => Ok(Some(ObjectMeta {
                key: key.to_owned(),
                size: m.size,
            })),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.err("head", key, e)),
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, ShipError> {
        // object_store lists by whole path segments: list the directory the
        // prefix is in, keep what starts with the prefix.
        let full = format!("{}{prefix}", self.prefix);
        let dir = match full.rfind('/') {
            Some(i) => &full[..i],
            None => "",
        };
        let dir_path = (!dir.is_empty()).then(|| StorePath::from(dir));
        let mut out: Vec<ObjectMeta> = self
            .store("list", prefix)?
            .list(dir_path.as_ref())
            .map_err(|e| self.err("list", prefix, e))
            .try_filter_map(|m| {
                let key = m.location.to_string();
                let found = key.strip_prefix(&self.prefix).and_then(|k| {
                    k.starts_with(prefix).then(|| ObjectMeta {
                        key: k.to_owned(),
                        size: m.size,
                    })
                });
                async move { Ok(found) }
            })
            .try_collect()
            .await?;
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    async fn delete(&self, key: &str) -> Result<(), ShipError> {
        validate_key(&self.name, key)?;
        match self.store("delete", key)?.delete(&self.path(key)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.err("delete", key, e)),
        }
    }
}
