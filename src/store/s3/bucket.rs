//! `S3Store`: the `Store` over one bucket. Owns the store's runtime and shared client, the
//! small requests (HeadObject, PutObject of manifests, GetObject of manifests, listing,
//! deleting, ListMultipartUploads, AbortMultipartUpload), and starting uploads and downloads,
//! whose work lives in `upload` and `download`.
//!
//! It must never start an upload before aborting what a killed agent left open (`upload`
//! calls `abort_stale` first), and never report a missing object for a missing bucket
//! (`client::is_not_found`).

use std::future::Future;
use std::io::Read;
use std::sync::Arc;

use aws_sdk_s3::primitives::ByteStream;
use bytes::Bytes;
use tokio::runtime::Runtime;

use super::address::{self, address, check_bucket, Addressing};
use super::client::{self, causes, http_status, is_not_found, sdk_error};
use super::pace::ArchiveBody;
use super::sse::{self, AtRest, CustomerKeyed};
use super::{block_on, cleanup, download, upload, Shared};
use crate::error::{Error, Result};
use crate::spec::StoreOptions;
use crate::store::pending::{Record, StateDir};
use crate::store::rate::Limiter;
use crate::store::retry::Policy;
use crate::store::sse::ServerSideEncryption;
use crate::store::{ObjectInfo, Scheme, Store, Upload};

pub struct S3Store {
    rt: Arc<Runtime>,
    shared: Arc<Shared>,
    opts: StoreOptions,
    state: StateDir,
}

impl S3Store {
    pub fn new(scheme: Scheme, bucket: &str, opts: &StoreOptions) -> Result<S3Store> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("cpbackup-store")
            .enable_all()
            .build()
            .map_err(|e| Error::Io { context: "starting the object-store runtime".into(), source: e })?;
        S3Store::with_runtime(Arc::new(rt), scheme, bucket, opts)
    }

    pub(super) fn with_runtime(rt: Arc<Runtime>, scheme: Scheme, bucket: &str, opts: &StoreOptions) -> Result<S3Store> {
        S3Store::wired(rt, scheme, bucket, opts, None)
    }

    /// A store whose client goes through `wiring` (the standard one when `None`).
    pub(super) fn wired(
        rt: Arc<Runtime>,
        scheme: Scheme,
        bucket: &str,
        opts: &StoreOptions,
        wiring: Option<client::Wiring>,
    ) -> Result<S3Store> {
        check_bucket(bucket)?;
        let env_region = std::env::var("AWS_REGION").ok();
        let addr = address(
            scheme,
            bucket,
            opts.endpoint.as_deref(),
            opts.region.as_deref(),
            env_region.as_deref(),
            opts.path_style,
        )?;
        tracing::debug!(
            "object store {}://{bucket}: endpoint {}, region {}, {} addressing{}",
            address::scheme_prefix(scheme),
            addr.shown,
            addr.region,
            if addr.path_style { "path-style" } else { "virtual-hosted" },
            if addr.unsigned_payload { ", unsigned payload" } else { "" }
        );
        // The client's background work (connection pools, identity cache) needs the runtime's context.
        let policy = Policy::from_env();
        let client = {
            let _guard = rt.enter();
            let wiring = wiring.unwrap_or_else(|| client::Wiring::standard(&addr.region));
            client::client(&addr, &policy, wiring)
        };
        let sse = opts.sse.clone();
        let shared = Arc::new(Shared { client, scheme, bucket: bucket.to_string(), addr, policy, sse });
        Ok(S3Store { rt, shared, opts: opts.clone(), state: StateDir::resolve(opts.state_dir.as_deref()) })
    }

    pub fn addressing(&self) -> &Addressing {
        &self.shared.addr
    }

    pub(super) fn shared(&self) -> Arc<Shared> {
        self.shared.clone()
    }

    /// Run a request of this store's from synchronous code.
    fn run<T: Send, Fut>(&self, f: impl FnOnce(Arc<Shared>) -> Fut) -> Result<T>
    where
        Fut: Future<Output = Result<T>> + Send,
    {
        block_on(&self.rt, f(self.shared.clone()))
    }

    /// Size and ETag of an object (`None` when it does not exist). A multipart object's ETag
    /// ends in `-N`, N the number of parts.
    pub fn head(&self, key: &str) -> Result<Option<(u64, String)>> {
        self.run(|sh| async move { head(&sh, key).await })
    }

    /// Multipart uploads open under `prefix` (key, upload id), by ListMultipartUploads. Not
    /// every vendor has it (OSS does not): the agent itself relies on its state directory.
    pub fn open_uploads(&self, prefix: &str) -> Result<Vec<(String, String)>> {
        self.run(|sh| async move {
            let what = format!("ListMultipartUploads {}", sh.url(prefix));
            let mut out = Vec::new();
            let mut key_marker: Option<String> = None;
            let mut id_marker: Option<String> = None;
            loop {
                let r = sh
                    .client
                    .list_multipart_uploads()
                    .bucket(&sh.bucket)
                    .prefix(prefix)
                    .set_key_marker(key_marker.clone())
                    .set_upload_id_marker(id_marker.clone())
                    .send()
                    .await
                    .map_err(|e| sdk_error(&what, e))?;
                for u in r.uploads() {
                    out.push((u.key().unwrap_or("").to_string(), u.upload_id().unwrap_or("").to_string()));
                }
                if r.is_truncated() != Some(true) {
                    break;
                }
                key_marker = r.next_key_marker().map(str::to_string);
                id_marker = r.next_upload_id_marker().map(str::to_string);
                if key_marker.is_none() {
                    break;
                }
            }
            Ok(out)
        })
    }

    /// AbortMultipartUpload of one upload (a missing one counts as aborted).
    pub fn abort_upload(&self, key: &str, upload_id: &str) -> Result<()> {
        self.run(|sh| async move { abort_upload(&sh, key, upload_id).await })
    }

    /// Abort the uploads recorded in the state directory whose agent is no longer running,
    /// and forget them. Failures are logged and the records kept for the next try.
    pub fn abort_stale(&self) -> Vec<Record> {
        cleanup::abort_records(&self.rt, self.state.stale(), &self.opts).0
    }
}

/// HeadObject of an archive (with the customer key, if any): size and ETag, `None` when there
/// is no such object.
pub(super) async fn head(sh: &Shared, key: &str) -> Result<Option<(u64, String)>> {
    let customer_key = sh.sse.customer_key.as_ref();
    sh.request(&sh.policy, "HeadObject", key, |what, _| async move {
        let req = sh.client.head_object().bucket(&sh.bucket).key(key).customer_key(customer_key);
        match req.send().await {
            Ok(h) => Ok(Some((h.content_length().unwrap_or(0).max(0) as u64, h.e_tag().unwrap_or("").to_string()))),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => {
                let status = http_status(&e);
                Err(sse::explain_refusal(sdk_error(&what, e), status, customer_key.is_some()))
            }
        }
    })
    .await
}

/// AbortMultipartUpload; an upload that no longer exists counts as aborted. A few attempts
/// only: it runs on the way out of a failure, and a record keeps what it could not abort.
pub(super) async fn abort_upload(sh: &Shared, key: &str, upload_id: &str) -> Result<()> {
    let policy = Policy { max_attempts: sh.policy.max_attempts.min(4), ..sh.policy };
    sh.request(&policy, "AbortMultipartUpload", key, |what, _| async move {
        match sh.client.abort_multipart_upload().bucket(&sh.bucket).key(key).upload_id(upload_id).send().await {
            Ok(_) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(sdk_error(&what, e)),
        }
    })
    .await
}

/// What a PutObject holds: an archive (encrypted as the options say, at the transfer's pace)
/// or a manifest (never with the customer key: `list` must read it without one).
#[derive(Clone, Copy)]
pub(super) enum Content<'a> {
    Archive { limiter: Option<&'a Arc<Limiter>> },
    Manifest,
}

/// One PUT of a whole (small) object, in memory.
pub(super) async fn put_object(sh: &Shared, key: &str, body: Bytes, content: Content<'_>) -> Result<()> {
    let (customer_key, limiter) = match content {
        Content::Archive { limiter } => (sh.sse.customer_key.as_ref(), limiter),
        Content::Manifest => (None, None),
    };
    sh.request(&sh.policy, "PutObject", key, |what, _| {
        let body = body.clone();
        async move {
            sh.client
                .put_object()
                .bucket(&sh.bucket)
                .key(key)
                .at_rest(&sh.sse)
                .customer_key(customer_key)
                .content_length(body.len() as i64)
                .body(ByteStream::from(body.clone()))
                .customize()
                .archive_body(sh, &body, limiter, 1)
                .send()
                .await
                .map(|_| ())
                .map_err(|e| sdk_error(&what, e))
        }
    })
    .await
}

impl Store for S3Store {
    fn url(&self, key: &str) -> String {
        self.shared.url(key)
    }

    fn kind(&self) -> &'static str {
        address::scheme_kind(self.shared.scheme)
    }

    fn endpoint(&self) -> String {
        self.shared.addr.shown.clone()
    }

    fn server_side_encryption(&self) -> Option<ServerSideEncryption> {
        self.shared.sse.record()
    }

    fn upload(&self, key: &str, size_hint: u64) -> Result<Box<dyn Upload>> {
        super::check_key(key)?;
        // An agent killed mid-upload left its uploads open: abort them before starting anew.
        self.abort_stale();
        let up = upload::S3Upload::new(self.rt.clone(), self.shared.clone(), key, size_hint, &self.opts, &self.state);
        Ok(Box::new(up))
    }

    fn download(&self, key: &str) -> Result<Box<dyn Read + Send>> {
        let Some((size, etag)) = self.head(key)? else {
            return Err(Error::usage(format!("{} does not exist", self.url(key))));
        };
        let limiter = self.opts.limit_rate.map(|r| Arc::new(Limiter::new(r)));
        Ok(Box::new(download::S3Reader::start(self.rt.clone(), self.shared.clone(), key, (size, etag), limiter)))
    }

    fn put(&self, key: &str, body: &[u8]) -> Result<()> {
        let body = Bytes::copy_from_slice(body);
        self.run(|sh| async move { put_object(&sh, key, body, Content::Manifest).await })
    }

    /// The body goes to the SDK as it is (no copy), and comes back once every clone the
    /// request and its retries took is dropped.
    fn put_owned(&self, key: &str, body: Vec<u8>) -> Result<Vec<u8>> {
        let body = Bytes::from(body);
        let sent = body.clone();
        self.run(|sh| async move { put_object(&sh, key, sent, Content::Manifest).await })?;
        Ok(body.try_into_mut().map(Vec::from).unwrap_or_else(|shared| shared.to_vec()))
    }

    fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        self.run(|sh| async move { get_object(&sh, key).await })
    }

    fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        self.run(|sh| async move { list_objects(&sh, prefix, None).await })
    }

    fn delete(&self, key: &str) -> Result<()> {
        self.run(|sh| async move { delete_object(&sh, key).await })
    }

    /// ListObjectsV2 with the delimiter `/`: what lies below is not listed.
    fn list_top(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        self.run(|sh| async move { list_objects(&sh, prefix, Some("/")).await })
    }

    /// One ranged GET (`download::get_range`).
    fn get_range_into(&self, key: &str, offset: u64, len: u64, buf: Vec<u8>) -> Result<Vec<u8>> {
        self.run(|sh| async move { download::get_range(&sh, key, offset, len, buf).await })
    }

    /// One ranged GET, streamed (`download::S3Reader::range`).
    fn read_range(&self, key: &str, offset: u64, len: u64) -> Result<Box<dyn Read + Send + '_>> {
        Ok(Box::new(download::S3Reader::range(self.rt.clone(), self.shared.clone(), key, offset, len)))
    }

    fn size(&self, key: &str) -> Result<Option<u64>> {
        Ok(self.head(key)?.map(|(size, _)| size))
    }
}

/// GetObject of a small object (a manifest), whole; `None` when there is no such object.
async fn get_object(sh: &Shared, key: &str) -> Result<Option<Vec<u8>>> {
    sh.request(&sh.policy, "GetObject", key, |what, _| async move {
        match sh.client.get_object().bucket(&sh.bucket).key(key).send().await {
            Ok(o) => {
                let body = o.body.collect().await.map_err(|e| Error::Store {
                    what: what.clone(),
                    reason: format!("reading the body: {}", causes(&e)),
                    retryable: true,
                })?;
                Ok(Some(body.into_bytes().to_vec()))
            }
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(sdk_error(&what, e)),
        }
    })
    .await
}

/// Every object under `prefix`, by ListObjectsV2 pages, sorted by key (with a `delimiter`, only
/// those with no delimiter after the prefix).
async fn list_objects(sh: &Shared, prefix: &str, delimiter: Option<&str>) -> Result<Vec<ObjectInfo>> {
    let mut out = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let page = sh
            .request(&sh.policy, "ListObjectsV2", prefix, |what, _| {
                let token = token.clone();
                async move {
                    let req = sh
                        .client
                        .list_objects_v2()
                        .bucket(&sh.bucket)
                        .prefix(prefix)
                        .set_delimiter(delimiter.map(str::to_string));
                    req.set_continuation_token(token).send().await.map_err(|e| sdk_error(&what, e))
                }
            })
            .await?;
        for o in page.contents() {
            if let Some(k) = o.key() {
                out.push(ObjectInfo { key: k.to_string(), size: o.size().unwrap_or(0).max(0) as u64 });
            }
        }
        token = page.next_continuation_token().map(str::to_string);
        if page.is_truncated() != Some(true) || token.is_none() {
            break;
        }
    }
    out.sort_by(|a, b| a.key.cmp(&b.key));
    Ok(out)
}

/// DeleteObject; a missing object counts as deleted.
async fn delete_object(sh: &Shared, key: &str) -> Result<()> {
    sh.request(&sh.policy, "DeleteObject", key, |what, _| async move {
        match sh.client.delete_object().bucket(&sh.bucket).key(key).send().await {
            Ok(_) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(sdk_error(&what, e)),
        }
    })
    .await
}
