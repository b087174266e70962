//! The object store: OSS, OBS and any S3-compatible service through aws-sdk-s3. Owns the
//! addressing (bucket and key rules, the endpoint the control plane sends, path or virtual-host
//! style), the SDK's configuration for the vendors' quirks, the multipart upload that streams
//! an archive in equal parts, and the ranged, resumable download.
//!
//! The synchronous data path meets tokio here: the store owns a small runtime, uploads hand
//! full parts to it through a bounded channel, downloads hand chunks back through another.
//! Memory stays at about `part_size × (parts_in_flight + 1)` on the way up and a few MiB on the
//! way down, however large the archive.
//!
//! It must never let a credential reach a log line, an error, a record or a manifest (they come
//! from the environment or the SDK's files and go only to the signer), and never leave a
//! multipart upload it knows about open: a failed upload is aborted, and one it could not
//! abort stays recorded in the state directory until a later start aborts it.

use std::future::Future;
use std::io::{self, Read, Write};
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_s3::config::{
    BehaviorVersion, Region, RequestChecksumCalculation, ResponseChecksumValidation, SharedCredentialsProvider,
    SharedHttpClient, StalledStreamProtectionConfig,
};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use aws_sdk_s3::Client;
use aws_smithy_types::retry::RetryConfig;
use aws_smithy_types::timeout::TimeoutConfig;
use bytes::{Bytes, BytesMut};
use tokio::runtime::Runtime;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::task::{JoinHandle, JoinSet};

use super::pending::{self, Record, StateDir};
use super::retry::{self, Policy};
use super::{ObjectInfo, Scheme, Store, Upload};
use crate::error::{Error, Result};
use crate::spec::StoreOptions;

/// The smallest part: AWS's minimum (OSS and OBS accept 100 KB, Garage anything).
pub const MIN_PART_SIZE: u64 = 5 << 20;
/// The default part: the smallest AWS takes. 4 in flight + 1 filling = 25 MiB, which leaves room
/// for the compressor's ~30 MiB under the 64 MiB budget (measured in BENCHMARKS.md); larger
/// archives get larger parts from `part_size`.
pub const DEFAULT_PART_SIZE: u64 = MIN_PART_SIZE;
/// The largest part S3, OSS and OBS accept.
pub const MAX_PART_SIZE: u64 = 5 << 30;
/// Part numbers run from 1 to 10,000 on every vendor.
pub const MAX_PARTS: u64 = 10_000;
/// Downloads fetch ranges of this size, `RANGES_IN_FLIGHT` at once. Memory is
/// `RANGE × (RANGES_IN_FLIGHT + 2)` at most: those in flight, one handed over and one read.
const RANGE: u64 = 2 << 20;
const RANGES_IN_FLIGHT: usize = 2;
/// Manifests fetched at once by `list`.
pub const LIST_CONCURRENCY: usize = 16;

// ---------------------------------------------------------------------------------------------
// Addressing: pure functions, unit-tested.

/// Bucket names by the CPH rule: 3–63 characters of `a-z 0-9 - .`.
pub fn check_bucket(bucket: &str) -> Result<()> {
    let ok_len = (3..=63).contains(&bucket.len());
    let ok_chars = bucket.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
    if ok_len && ok_chars {
        Ok(())
    } else {
        Err(Error::path_rule(
            bucket,
            "is not a valid bucket name: use 3 to 63 characters, each a lowercase letter, a digit, '-' or '.'",
        ))
    }
}

/// Object paths by the CPH rule: at most 1,024 characters of `A-Z a-z 0-9 . / - _ + # =`.
pub fn check_key(key: &str) -> Result<()> {
    let ok_chars = key.bytes().all(|b| b.is_ascii_alphanumeric() || b"./-_+#=".contains(&b));
    if key.len() > 1024 {
        return Err(Error::path_rule(
            key,
            format!("is not a valid object path: {} characters, at most 1024 are allowed", key.len()),
        ));
    }
    if !ok_chars {
        return Err(Error::path_rule(
            key,
            "is not a valid object path: use only letters A-Z a-z, digits and . / - _ + # =",
        ));
    }
    Ok(())
}

/// Where and how to reach a bucket, worked out from the scheme and the options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Addressing {
    /// The endpoint URL handed to the SDK; `None` lets the SDK pick AWS's own.
    pub url: Option<String>,
    pub region: String,
    pub path_style: bool,
    /// Send `UNSIGNED-PAYLOAD` (OBS accepts no other payload mode an in-memory body can use).
    pub unsigned_payload: bool,
    /// The endpoint as recorded in manifests (UploadEndpoint): a host, without credentials.
    pub shown: String,
}

/// Work out the endpoint, region and addressing style.
///
/// `endpoint` is the control plane's UploadEndpoint: a full URL (`http://127.0.0.1:3900`,
/// used as given), or a bare host. A bare OSS host (`oss-cn-shanghai-internal.aliyuncs.com`)
/// becomes OSS's S3-compatible host (`https://s3.oss-cn-shanghai-internal.aliyuncs.com`), a
/// bare OBS host stays itself over https; for both the region comes from the host unless
/// given. IP literals and `localhost` are addressed path-style (they have no DNS for
/// `bucket.host`), everything else virtual-hosted (OSS and OBS refuse path-style).
pub fn address(
    scheme: Scheme,
    bucket: &str,
    endpoint: Option<&str>,
    region: Option<&str>,
    env_region: Option<&str>,
    force_path_style: bool,
) -> Result<Addressing> {
    let region = region.or(env_region).map(str::trim).filter(|r| !r.is_empty()).map(str::to_string);
    let endpoint = endpoint.map(str::trim).filter(|e| !e.is_empty());
    let (url, host) = match endpoint {
        Some(e) if e.contains("://") => {
            let (proto, rest) = e.split_once("://").unwrap_or(("https", e));
            if proto != "http" && proto != "https" {
                return Err(Error::usage(format!("endpoint {e:?}: only http:// and https:// URLs are supported")));
            }
            // Credentials in the URL (user:pass@) are dropped: they are never used and must never be shown.
            let rest = rest.rsplit_once('@').map(|(_, h)| h).unwrap_or(rest);
            let rest = rest.trim_end_matches('/');
            if rest.is_empty() {
                return Err(Error::usage(format!("endpoint {e:?} names no host")));
            }
            (Some(format!("{proto}://{rest}")), rest.to_string())
        }
        Some(e) => {
            let mut host = e.trim_end_matches('/').to_string();
            if host.contains('/') || host.contains('@') {
                return Err(Error::usage(format!("endpoint {e:?} is neither a host name nor an http(s):// URL")));
            }
            // A bucket domain (`BUCKET.oss-….aliyuncs.com`) as the endpoint fails signing on
            // OBS (SignatureDoesNotMatch): the SDK adds the bucket itself.
            if let Some(rest) = host.strip_prefix(&format!("{bucket}.")) {
                if is_oss_host(rest) || is_obs_host(rest) {
                    host = rest.to_string();
                }
            }
            if is_oss_host(&host) && !host.starts_with("s3.") {
                host = format!("s3.{host}");
            }
            (Some(format!("https://{host}")), host)
        }
        None => match scheme {
            Scheme::Oss => {
                let r = region.as_deref().ok_or_else(|| {
                    Error::usage("oss:// needs --endpoint (e.g. oss-cn-hangzhou.aliyuncs.com) or --region")
                })?;
                let host = format!("s3.oss-{r}.aliyuncs.com");
                (Some(format!("https://{host}")), host)
            }
            Scheme::Obs => {
                let r = region.as_deref().ok_or_else(|| {
                    Error::usage("obs:// needs --endpoint (e.g. obs.cn-north-4.myhuaweicloud.com) or --region")
                })?;
                let host = format!("obs.{r}.myhuaweicloud.com");
                (Some(format!("https://{host}")), host)
            }
            Scheme::S3 => (None, String::new()),
        },
    };
    let bare = host_of(&host);
    let region = match region {
        Some(r) => r,
        None => region_from_host(bare).unwrap_or_else(|| "us-east-1".to_string()),
    };
    let path_style = force_path_style || is_ip_or_localhost(bare);
    let unsigned_payload = scheme == Scheme::Obs || is_obs_host(bare);
    let shown = if host.is_empty() { format!("s3.{region}.amazonaws.com") } else { host };
    Ok(Addressing { url, region, path_style, unsigned_payload, shown })
}

/// The host without a port (and without brackets for IPv6).
fn host_of(host_port: &str) -> &str {
    if let Some(rest) = host_port.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match host_port.rsplit_once(':') {
        Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host_port,
    }
}

fn is_oss_host(h: &str) -> bool {
    let h = host_of(h);
    (h.starts_with("oss-") || h.starts_with("s3.oss-")) && h.ends_with(".aliyuncs.com")
}

fn is_obs_host(h: &str) -> bool {
    let h = host_of(h);
    h.starts_with("obs.") && h.ends_with(".myhuaweicloud.com")
}

fn is_ip_or_localhost(h: &str) -> bool {
    h == "localhost" || h.ends_with(".localhost") || h.parse::<std::net::IpAddr>().is_ok()
}

/// `s3.oss-cn-shanghai-internal.aliyuncs.com` → `cn-shanghai`; `obs.cn-north-4.myhuaweicloud.com` → `cn-north-4`.
fn region_from_host(h: &str) -> Option<String> {
    if is_oss_host(h) {
        let first = h.trim_start_matches("s3.").split('.').next()?;
        let r = first.strip_prefix("oss-")?;
        let r = r.strip_suffix("-internal").unwrap_or(r);
        return Some(r.to_string());
    }
    if is_obs_host(h) {
        return h.split('.').nth(1).map(str::to_string);
    }
    None
}

/// The part size for an archive expected to be about `size_hint` bytes: the default, or
/// larger when the default would not fit the archive in 10,000 parts. The hint is the size of
/// the selection before compression, and tar adds headers and padding, so a quarter is added
/// on top; parts are whole MiB.
pub fn part_size(size_hint: u64) -> u64 {
    let want = size_hint.saturating_add(size_hint / 4) / (MAX_PARTS - 500) + 1;
    let mib = 1 << 20;
    let rounded = want.div_ceil(mib).saturating_mul(mib);
    rounded.clamp(DEFAULT_PART_SIZE, MAX_PART_SIZE).max(MIN_PART_SIZE)
}

// ---------------------------------------------------------------------------------------------
// The SDK client.

/// The HTTP client every request goes through: hyper with rustls on ring (aws-lc does not
/// build for Android arm64 everywhere). The one place it is built: DNS for a static binary on
/// Android (`build_with_resolver`) and Android's CA roots plug in here.
pub fn http_client() -> SharedHttpClient {
    // Name servers (--dns, resolv.conf, public) and CA roots (the phone's cacerts, else bundled):
    // see net.rs.
    crate::net::Network::current().http_client()
}

/// Credentials: the standard environment variables (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
/// AWS_SESSION_TOKEN for STS), then the shared config and credentials files. No instance
/// metadata or SSO probing: a phone has neither, and probing costs seconds per start.
fn credentials(region: &str) -> SharedCredentialsProvider {
    use aws_config::environment::EnvironmentVariableCredentialsProvider;
    use aws_config::meta::credentials::CredentialsProviderChain;
    use aws_config::profile::ProfileFileCredentialsProvider;
    use aws_config::provider_config::ProviderConfig;
    // A profile may assume a role through STS: it gets the same HTTP client as everything else.
    let conf = ProviderConfig::empty()
        .with_http_client(http_client())
        .with_region(Some(Region::new(region.to_string())))
        .with_behavior_version(Some(BehaviorVersion::latest()));
    let profile = ProfileFileCredentialsProvider::builder().configure(&conf).build();
    let chain = CredentialsProviderChain::first_try("Environment", EnvironmentVariableCredentialsProvider::new())
        .or_else("Profile", profile);
    SharedCredentialsProvider::new(chain)
}

fn client(addr: &Addressing, policy: &Policy) -> Client {
    let mut b = aws_sdk_s3::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(addr.region.clone()))
        .credentials_provider(credentials(&addr.region))
        .http_client(http_client())
        // OSS, OBS and many others reject the SDK's default checksums and the aws-chunked
        // bodies they bring; parts go as plain in-memory bodies of known length instead.
        .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
        .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
        // A body that moves no bytes for `stall` fails the attempt, in both directions: parts
        // are in memory, so a stalled upload is the network's, never the compressor's.
        .stalled_stream_protection(StalledStreamProtectionConfig::enabled().grace_period(policy.stall).build())
        // Retries are ours (retry.rs): one budget per part, with jitter, and resumable downloads.
        .retry_config(RetryConfig::disabled())
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(10))
                // The first byte of an answer, counted from the start of the request (its body
                // included): a server that takes a part and never answers costs one attempt.
                .read_timeout(policy.stall * 6)
                // Per attempt, generous enough for one part over a slow link.
                .operation_attempt_timeout(Duration::from_secs(600))
                .build(),
        )
        .force_path_style(addr.path_style);
    if let Some(url) = &addr.url {
        b = b.endpoint_url(url);
    }
    Client::from_conf(b.build())
}

/// An error and its causes, one after another ("dispatch failure: io error: … : Connection
/// reset by peer (os error 104)"), each said once: what a user can read, without the SDK's
/// debug dumps.
fn causes(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut cur = Some(e);
    while let Some(err) = cur {
        let text = err.to_string();
        if !text.is_empty() && !out.last().is_some_and(|last| last.contains(&text)) {
            out.push(text);
        }
        cur = err.source();
    }
    out.join(": ")
}

/// An SDK failure as the crate's error: the service's code and message and the HTTP status
/// for answers, the cause chain for network faults. Secrets are not part of either.
fn sdk_error<E>(what: &str, e: SdkError<E, aws_smithy_runtime_api::http::Response>) -> Error
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let (reason, retryable) = match &e {
        SdkError::ServiceError(s) => {
            let status = s.raw().status().as_u16();
            let code = s.err().code().unwrap_or("");
            let msg = s.err().message().unwrap_or("");
            let retryable = status >= 500
                || status == 429
                || status == 408
                || matches!(
                    code,
                    "SlowDown" | "RequestTimeout" | "InternalError" | "ServiceUnavailable" | "Throttling"
                );
            let code = if code.is_empty() { status_name(status) } else { code };
            let reason = if msg.is_empty() {
                format!("{code} (HTTP {status})")
            } else {
                format!("{code}: {msg} (HTTP {status})")
            };
            (reason, retryable)
        }
        SdkError::TimeoutError(_) => ("timed out".to_string(), true),
        SdkError::DispatchFailure(d) => {
            let text = causes(&e);
            if text.contains("credentials") {
                (format!(
                    "no usable credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN for STS) or a profile in ~/.aws/credentials ({text})"
                ), false)
            } else {
                (text, d.is_io() || d.is_timeout() || d.is_other())
            }
        }
        SdkError::ResponseError(_) => (causes(&e), true),
        _ => {
            let text = causes(&e);
            let creds = text.contains("credentials");
            if creds {
                (format!("no usable credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN for STS) or a profile in ~/.aws/credentials ({text})"), false)
            } else {
                (text, false)
            }
        }
    };
    Error::Store { what: what.to_string(), reason, retryable }
}

fn status_name(status: u16) -> &'static str {
    match status {
        403 => "AccessDenied",
        404 => "NotFound",
        412 => "PreconditionFailed",
        _ => "HTTP error",
    }
}

fn http_status<E>(e: &SdkError<E, aws_smithy_runtime_api::http::Response>) -> Option<u16> {
    e.raw_response().map(|r| r.status().as_u16())
}

fn error_code<E: ProvideErrorMetadata>(e: &SdkError<E, aws_smithy_runtime_api::http::Response>) -> Option<String> {
    e.as_service_error().and_then(|s| s.code()).map(str::to_string)
}

/// Run a future to completion from synchronous code. The data path runs on plain threads; if
/// a caller is itself inside a runtime (a daemon handler), the wait moves to a scoped thread
/// rather than panicking.
fn block_on<F>(rt: &Runtime, f: F) -> F::Output
where
    F: Future + Send,
    F::Output: Send,
{
    if tokio::runtime::Handle::try_current().is_ok() {
        std::thread::scope(|s| match s.spawn(|| rt.block_on(f)).join() {
            Ok(v) => v,
            Err(p) => std::panic::resume_unwind(p),
        })
    } else {
        rt.block_on(f)
    }
}

// ---------------------------------------------------------------------------------------------
// The store.

/// What upload and download tasks share.
struct Shared {
    client: Client,
    scheme: Scheme,
    bucket: String,
    addr: Addressing,
    policy: Policy,
}

impl Shared {
    fn url(&self, key: &str) -> String {
        format!("{}://{}/{key}", scheme_prefix(self.scheme), self.bucket)
    }
}

fn scheme_prefix(s: Scheme) -> &'static str {
    match s {
        Scheme::Oss => "oss",
        Scheme::Obs => "obs",
        Scheme::S3 => "s3",
    }
}

fn scheme_kind(s: Scheme) -> &'static str {
    match s {
        Scheme::Oss => "OSS",
        Scheme::Obs => "OBS",
        Scheme::S3 => "S3",
    }
}

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

    fn with_runtime(rt: Arc<Runtime>, scheme: Scheme, bucket: &str, opts: &StoreOptions) -> Result<S3Store> {
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
            scheme_prefix(scheme),
            addr.shown,
            addr.region,
            if addr.path_style { "path-style" } else { "virtual-hosted" },
            if addr.unsigned_payload { ", unsigned payload" } else { "" }
        );
        // The client's background work (connection pools, identity cache) needs the runtime's context.
        let policy = Policy::from_env();
        let client = {
            let _guard = rt.enter();
            client(&addr, &policy)
        };
        let shared = Arc::new(Shared { client, scheme, bucket: bucket.to_string(), addr, policy });
        Ok(S3Store { rt, shared, opts: opts.clone(), state: StateDir::resolve(opts.state_dir.as_deref()) })
    }

    pub fn addressing(&self) -> &Addressing {
        &self.shared.addr
    }

    /// Size and ETag of an object (`None` when it does not exist). A multipart object's ETag
    /// ends in `-N`, N the number of parts.
    pub fn head(&self, key: &str) -> Result<Option<(u64, String)>> {
        check_key(key)?;
        let sh = self.shared.clone();
        let key = key.to_string();
        block_on(&self.rt, async move { head(&sh, &key).await })
    }

    /// Multipart uploads open under `prefix` (key, upload id), by ListMultipartUploads. Not
    /// every vendor has it (OSS does not): the agent itself relies on its state directory.
    pub fn open_uploads(&self, prefix: &str) -> Result<Vec<(String, String)>> {
        let sh = self.shared.clone();
        let prefix = prefix.to_string();
        block_on(&self.rt, async move {
            let what = format!("ListMultipartUploads {}", sh.url(&prefix));
            let mut out = Vec::new();
            let mut key_marker: Option<String> = None;
            let mut id_marker: Option<String> = None;
            loop {
                let r = sh
                    .client
                    .list_multipart_uploads()
                    .bucket(&sh.bucket)
                    .prefix(&prefix)
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
        let sh = self.shared.clone();
        let (key, id) = (key.to_string(), upload_id.to_string());
        block_on(&self.rt, async move { abort_upload(&sh, &key, &id).await })
    }

    /// Abort the uploads recorded in the state directory whose agent is no longer running,
    /// and forget them. Failures are logged and the records kept for the next try.
    pub fn abort_stale(&self) -> Vec<Record> {
        abort_stale(&self.rt, &self.state, &self.opts)
    }
}

/// What `cleanup` did.
#[derive(Debug, Clone, Default, serde::Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Cleanup {
    pub state_dir: String,
    pub aborted: Vec<String>,
    pub failed: Vec<String>,
}

/// `cpbackup cleanup`: abort every recorded upload whose agent is gone.
pub fn cleanup(opts: &StoreOptions) -> Result<Cleanup> {
    let state = StateDir::resolve(opts.state_dir.as_deref());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(|e| Error::Io { context: "starting the object-store runtime".into(), source: e })?;
    let rt = Arc::new(rt);
    let (aborted, failed) = abort_records(&rt, state.stale(), opts);
    let show = |r: &Record| format!("{}://{}/{} (upload {})", r.scheme.to_lowercase(), r.bucket, r.key, r.upload_id);
    Ok(Cleanup {
        state_dir: state.path().display().to_string(),
        aborted: aborted.iter().map(show).collect(),
        failed: failed.iter().map(show).collect(),
    })
}

fn abort_stale(rt: &Arc<Runtime>, state: &StateDir, opts: &StoreOptions) -> Vec<Record> {
    abort_records(rt, state.stale(), opts).0
}

/// Abort the uploads of stale records (their locks held by this process meanwhile): what was
/// aborted, and what could not be (its record kept for the next try).
fn abort_records(
    rt: &Arc<Runtime>,
    stale: Vec<(std::path::PathBuf, Record)>,
    opts: &StoreOptions,
) -> (Vec<Record>, Vec<Record>) {
    let (mut done, mut failed) = (Vec::new(), Vec::new());
    for (path, rec) in stale {
        let scheme = match rec.scheme.as_str() {
            "OSS" => Scheme::Oss,
            "OBS" => Scheme::Obs,
            _ => Scheme::S3,
        };
        let o = StoreOptions {
            endpoint: rec.endpoint.clone(),
            region: Some(rec.region.clone()),
            path_style: rec.path_style,
            ..opts.clone()
        };
        let store = match S3Store::with_runtime(rt.clone(), scheme, &rec.bucket, &o) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("cannot reach the store of a left-over upload ({}): {e}", path.display());
                continue;
            }
        };
        let sh = store.shared.clone();
        let (key, id) = (rec.key.clone(), rec.upload_id.clone());
        // Killed while asking for an upload id: whatever the store opened under this key
        // (unique to that backup) is that run's. A store that cannot list uploads leaves it to
        // the bucket's lifecycle rule.
        let ids = if id.is_empty() {
            match store.open_uploads(&rec.key) {
                Ok(open) => open.into_iter().filter(|(k, _)| *k == rec.key).map(|(_, id)| id).collect(),
                Err(e) => {
                    tracing::warn!("could not list the uploads of {} to abort: {e}", store.shared.url(&rec.key));
                    Vec::new()
                }
            }
        } else {
            vec![id]
        };
        let mut all_done = true;
        for id in ids {
            let (sh, key, upload) = (sh.clone(), key.clone(), id.clone());
            match block_on(rt, async move { abort_upload(&sh, &key, &upload).await }) {
                Ok(()) => {
                    tracing::info!(
                        "aborted the upload {} left by an earlier run (pid {})",
                        store.shared.url(&rec.key),
                        rec.pid
                    );
                    done.push(Record { upload_id: id, ..rec.clone() });
                }
                Err(e) => {
                    all_done = false;
                    tracing::warn!(
                        "could not abort the upload {} left by an earlier run: {e}",
                        store.shared.url(&rec.key)
                    );
                    failed.push(Record { upload_id: id, ..rec.clone() });
                }
            }
        }
        if all_done {
            pending::remove(&path);
        }
    }
    (done, failed)
}

async fn head(sh: &Shared, key: &str) -> Result<Option<(u64, String)>> {
    let what = format!("HeadObject {}", sh.url(key));
    retry::run(&sh.policy, &what, |_| async {
        match sh.client.head_object().bucket(&sh.bucket).key(key).send().await {
            Ok(h) => Ok(Some((h.content_length().unwrap_or(0).max(0) as u64, h.e_tag().unwrap_or("").to_string()))),
            Err(e) if http_status(&e) == Some(404) => Ok(None),
            Err(e) => Err(sdk_error(&what, e)),
        }
    })
    .await
}

/// AbortMultipartUpload; an upload that no longer exists counts as aborted.
async fn abort_upload(sh: &Shared, key: &str, upload_id: &str) -> Result<()> {
    let what = format!("AbortMultipartUpload {}", sh.url(key));
    let policy = Policy { max_attempts: sh.policy.max_attempts.min(4), ..sh.policy };
    retry::run(&policy, &what, |_| async {
        match sh.client.abort_multipart_upload().bucket(&sh.bucket).key(key).upload_id(upload_id).send().await {
            Ok(_) => Ok(()),
            Err(e) if http_status(&e) == Some(404) => Ok(()),
            Err(e) => Err(sdk_error(&what, e)),
        }
    })
    .await
}

impl Store for S3Store {
    fn url(&self, key: &str) -> String {
        self.shared.url(key)
    }

    fn kind(&self) -> &'static str {
        scheme_kind(self.shared.scheme)
    }

    fn endpoint(&self) -> String {
        self.shared.addr.shown.clone()
    }

    fn upload(&self, key: &str, size_hint: u64) -> Result<Box<dyn Upload>> {
        check_key(key)?;
        // An agent killed mid-upload left its uploads open: abort them before starting anew.
        self.abort_stale();
        let part_size = part_size(size_hint);
        tracing::debug!(
            "uploading {} in parts of {} MiB, {} in flight",
            self.url(key),
            part_size >> 20,
            self.opts.parts_in_flight.max(1)
        );
        Ok(Box::new(S3Upload {
            rt: self.rt.clone(),
            shared: self.shared.clone(),
            key: key.to_string(),
            part_size: part_size as usize,
            buf: BytesMut::new(),
            in_flight: self.opts.parts_in_flight.max(1),
            mp: None,
            next_part: 1,
            state: self.state.clone(),
            over: false,
        }))
    }

    fn download(&self, key: &str) -> Result<Box<dyn Read + Send>> {
        check_key(key)?;
        let sh = self.shared.clone();
        let (size, etag) = match block_on(&self.rt, {
            let sh = sh.clone();
            let key = key.to_string();
            async move { head(&sh, &key).await }
        })? {
            Some(h) => h,
            None => return Err(Error::usage(format!("{} does not exist", self.url(key)))),
        };
        let (tx, rx) = mpsc::channel(1);
        let task = self.rt.spawn(fetch(sh, key.to_string(), size, etag, tx));
        Ok(Box::new(S3Reader { rx, cur: Bytes::new(), task, _rt: self.rt.clone() }))
    }

    fn put(&self, key: &str, body: &[u8]) -> Result<()> {
        check_key(key)?;
        let sh = self.shared.clone();
        let key = key.to_string();
        let body = Bytes::copy_from_slice(body);
        block_on(&self.rt, async move { put_object(&sh, &key, body).await })
    }

    fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        check_key(key)?;
        let sh = self.shared.clone();
        let key = key.to_string();
        block_on(&self.rt, async move {
            let what = format!("GetObject {}", sh.url(&key));
            retry::run(&sh.policy, &what, |_| async {
                match sh.client.get_object().bucket(&sh.bucket).key(&key).send().await {
                    Ok(o) => {
                        let body = o.body.collect().await.map_err(|e| Error::Store {
                            what: what.clone(),
                            reason: format!("reading the body: {}", causes(&e)),
                            retryable: true,
                        })?;
                        Ok(Some(body.into_bytes().to_vec()))
                    }
                    Err(e) if http_status(&e) == Some(404) && error_code(&e).as_deref() != Some("NoSuchBucket") => {
                        Ok(None)
                    }
                    Err(e) => Err(sdk_error(&what, e)),
                }
            })
            .await
        })
    }

    /// One ranged GET (a repository's blobs): fewer bytes only where the object ends.
    fn get_range(&self, key: &str, offset: u64, len: u64) -> Result<Vec<u8>> {
        check_key(key)?;
        if len == 0 {
            return Ok(Vec::new());
        }
        let sh = self.shared.clone();
        let key = key.to_string();
        block_on(&self.rt, async move {
            let last = offset + len - 1;
            let what = format!("GetObject {} bytes {offset}-{last}", sh.url(&key));
            retry::run(&sh.policy, &what, |_| async {
                let o = sh
                    .client
                    .get_object()
                    .bucket(&sh.bucket)
                    .key(&key)
                    .range(format!("bytes={offset}-{last}"))
                    .send()
                    .await
                    .map_err(|e| sdk_error(&what, e))?;
                if !o.content_range().is_some_and(|r| r.starts_with(&format!("bytes {offset}-"))) {
                    return Err(Error::Store {
                        what: what.clone(),
                        reason: format!(
                            "got {:?}: the store does not honour Range requests",
                            o.content_range().unwrap_or("the whole object")
                        ),
                        retryable: false,
                    });
                }
                let body = o.body.collect().await.map_err(|e| Error::Store {
                    what: what.clone(),
                    reason: format!("reading the body: {}", causes(&e)),
                    retryable: true,
                })?;
                let mut b = body.into_bytes().to_vec();
                b.truncate(len as usize);
                Ok(b)
            })
            .await
        })
    }

    fn size(&self, key: &str) -> Result<Option<u64>> {
        check_key(key)?;
        let sh = self.shared.clone();
        let key = key.to_string();
        Ok(block_on(&self.rt, async move { head(&sh, &key).await })?.map(|(size, _)| size))
    }

    fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        check_key(prefix)?;
        let sh = self.shared.clone();
        let prefix = prefix.to_string();
        block_on(&self.rt, async move {
            let what = format!("ListObjectsV2 {}", sh.url(&prefix));
            let mut out = Vec::new();
            let mut token: Option<String> = None;
            loop {
                let page = retry::run(&sh.policy, &what, |_| {
                    let token = token.clone();
                    let sh = &sh;
                    let prefix = &prefix;
                    let what = &what;
                    async move {
                        sh.client
                            .list_objects_v2()
                            .bucket(&sh.bucket)
                            .prefix(prefix.as_str())
                            .set_continuation_token(token)
                            .send()
                            .await
                            .map_err(|e| sdk_error(what, e))
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
        })
    }

    fn delete(&self, key: &str) -> Result<()> {
        check_key(key)?;
        let sh = self.shared.clone();
        let key = key.to_string();
        block_on(&self.rt, async move {
            let what = format!("DeleteObject {}", sh.url(&key));
            retry::run(&sh.policy, &what, |_| async {
                match sh.client.delete_object().bucket(&sh.bucket).key(&key).send().await {
                    Ok(_) => Ok(()),
                    Err(e) if http_status(&e) == Some(404) && error_code(&e).as_deref() != Some("NoSuchBucket") => {
                        Ok(())
                    }
                    Err(e) => Err(sdk_error(&what, e)),
                }
            })
            .await
        })
    }
}

/// One PUT of a whole (small) object, in memory.
async fn put_object(sh: &Shared, key: &str, body: Bytes) -> Result<()> {
    let what = format!("PutObject {}", sh.url(key));
    retry::run(&sh.policy, &what, |_| {
        let body = body.clone();
        let what = &what;
        async move {
            let len = body.len() as i64;
            let mut op = sh
                .client
                .put_object()
                .bucket(&sh.bucket)
                .key(key)
                .content_length(len)
                .body(ByteStream::from(body))
                .customize();
            if sh.addr.unsigned_payload {
                op = op.disable_payload_signing();
            }
            op.send().await.map(|_| ()).map_err(|e| sdk_error(&what, e))
        }
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// Upload: equal parts through a bounded channel to tasks on the store's runtime.

struct Part {
    number: i32,
    body: Bytes,
    /// An upload slot, held from the hand-off until the part is uploaded.
    _slot: OwnedSemaphorePermit,
}

struct Multipart {
    upload_id: String,
    /// Full parts go here; `None` once the last part was sent.
    tx: Option<mpsc::Sender<Part>>,
    /// `parts_in_flight` slots: a part is handed off only with one.
    slots: Arc<Semaphore>,
    dispatcher: Option<JoinHandle<Result<Vec<CompletedPart>>>>,
    record: Option<std::path::PathBuf>,
}

struct S3Upload {
    rt: Arc<Runtime>,
    shared: Arc<Shared>,
    key: String,
    part_size: usize,
    /// The part being filled.
    buf: BytesMut,
    in_flight: usize,
    mp: Option<Multipart>,
    next_part: i32,
    state: StateDir,
    /// Finished or aborted: nothing more may happen.
    over: bool,
}

impl S3Upload {
    fn start_multipart(&mut self) -> Result<()> {
        // The intent first, the upload id once known: an agent killed between the store's
        // answer and its record would otherwise leave an upload nobody aborts.
        let (pid, pid_start) = pending::me();
        let mut rec = Record {
            scheme: scheme_kind(self.shared.scheme).to_string(),
            bucket: self.shared.bucket.clone(),
            key: self.key.clone(),
            upload_id: String::new(),
            endpoint: self.shared.addr.url.clone(),
            region: self.shared.addr.region.clone(),
            path_style: self.shared.addr.path_style,
            pid,
            pid_start,
            started: crate::manifest::format_time(time::OffsetDateTime::now_utc()),
        };
        let intent = self.record(&rec);
        let sh = self.shared.clone();
        let key = self.key.clone();
        let upload_id = block_on(&self.rt, async move {
            let what = format!("CreateMultipartUpload {}", sh.url(&key));
            retry::run(&sh.policy, &what, |_| async {
                let r = sh
                    .client
                    .create_multipart_upload()
                    .bucket(&sh.bucket)
                    .key(&key)
                    .send()
                    .await
                    .map_err(|e| sdk_error(&what, e))?;
                r.upload_id().map(str::to_string).ok_or_else(|| Error::Store {
                    what: what.clone(),
                    reason: "the answer carries no upload id".into(),
                    retryable: false,
                })
            })
            .await
        });
        let upload_id = match upload_id {
            Ok(id) => id,
            Err(e) => {
                // A refusal opened nothing. After a network failure an upload may have been
                // opened with its answer lost: the record stays, and the next start finds it by key.
                if !e.is_retryable() {
                    if let Some(p) = intent {
                        pending::remove(&p);
                    }
                }
                return Err(e);
            }
        };
        tracing::debug!("multipart upload {} started: {upload_id}", self.shared.url(&self.key));
        rec.upload_id = upload_id.clone();
        let record = self.record(&rec);
        if let Some(p) = intent {
            pending::remove(&p);
        }
        // A part is handed off only with an upload slot, so parts in the channel and parts
        // uploading are `in_flight` at most, plus the one filling: memory is
        // part_size × (in_flight + 1), and `write` blocks while every slot is taken.
        let (tx, rx) = mpsc::channel(self.in_flight);
        let slots = Arc::new(Semaphore::new(self.in_flight));
        let dispatcher =
            self.rt.spawn(dispatch(self.shared.clone(), self.key.clone(), upload_id.clone(), rx, self.in_flight));
        self.mp = Some(Multipart { upload_id, tx: Some(tx), slots, dispatcher: Some(dispatcher), record });
        Ok(())
    }

    /// Record an upload in the state directory (held locked while this process lives).
    /// Without a record a killed agent could not abort the upload later: it still runs, but
    /// say so.
    fn record(&self, rec: &Record) -> Option<std::path::PathBuf> {
        match self.state.save(rec) {
            Ok(p) => Some(p),
            Err(e) => {
                tracing::warn!("could not record the upload in the state directory: {e}");
                None
            }
        }
    }

    /// Hand the filled part to the uploaders; blocks while the channel is full.
    fn send_part(&mut self) -> Result<()> {
        if self.mp.is_none() {
            self.start_multipart()?;
        }
        if self.next_part as u64 > MAX_PARTS {
            return Err(Error::Store {
                what: format!("upload {}", self.shared.url(&self.key)),
                reason: format!(
                    "the archive outgrew {MAX_PARTS} parts of {} MiB: the selection grew far beyond its pre-scan",
                    self.part_size >> 20
                ),
                retryable: false,
            });
        }
        let sent = match self.mp.as_ref().and_then(|m| m.tx.as_ref().map(|tx| (tx.clone(), m.slots.clone()))) {
            Some((tx, slots)) => {
                // Wait for a slot, or for the dispatcher to stop (then the send fails below).
                let slot = block_on(&self.rt, async {
                    tokio::select! {
                        s = slots.acquire_owned() => s.ok(),
                        _ = tx.closed() => None,
                    }
                });
                match slot {
                    Some(slot) => {
                        let body = std::mem::replace(&mut self.buf, BytesMut::new()).freeze();
                        let part = Part { number: self.next_part, body, _slot: slot };
                        self.next_part += 1;
                        tx.blocking_send(part).is_ok()
                    }
                    None => false,
                }
            }
            None => false,
        };
        if sent {
            Ok(())
        } else {
            // The dispatcher stopped: a part failed for good. Its error is the one to report.
            Err(self.dispatcher_error())
        }
    }

    fn dispatcher_error(&mut self) -> Error {
        let handle = self.mp.as_mut().and_then(|m| m.dispatcher.take());
        let what = format!("upload {}", self.shared.url(&self.key));
        match handle {
            Some(h) => match block_on(&self.rt, h) {
                Ok(Err(e)) => e,
                Ok(Ok(_)) => Error::Store { what, reason: "the part uploader stopped early".into(), retryable: false },
                Err(e) => Error::Store { what, reason: format!("the part uploader failed: {e}"), retryable: false },
            },
            None => Error::Store { what, reason: "the upload already failed".into(), retryable: false },
        }
    }

    fn finish_inner(&mut self) -> Result<()> {
        if self.over {
            return Err(Error::Store {
                what: format!("upload {}", self.shared.url(&self.key)),
                reason: "already finished or aborted".into(),
                retryable: false,
            });
        }
        if self.mp.is_none() {
            // Finished before the first part filled: one PUT.
            let body = std::mem::take(&mut self.buf).freeze();
            let sh = self.shared.clone();
            let key = self.key.clone();
            block_on(&self.rt, async move { put_object(&sh, &key, body).await })?;
            self.over = true;
            return Ok(());
        }
        if !self.buf.is_empty() {
            self.send_part()?;
        }
        let parts_sent = self.next_part - 1;
        let Some(mp) = self.mp.as_mut() else { return Err(self.dispatcher_error()) };
        mp.tx = None;
        let Some(h) = mp.dispatcher.take() else { return Err(self.dispatcher_error()) };
        let upload_id = mp.upload_id.clone();
        let parts = match block_on(&self.rt, h) {
            Ok(r) => r?,
            Err(e) => {
                return Err(Error::Store {
                    what: format!("upload {}", self.shared.url(&self.key)),
                    reason: format!("the part uploader failed: {e}"),
                    retryable: false,
                })
            }
        };
        if parts.len() != parts_sent as usize {
            return Err(Error::Store {
                what: format!("upload {}", self.shared.url(&self.key)),
                reason: format!("{} of {parts_sent} parts were uploaded", parts.len()),
                retryable: false,
            });
        }
        let sh = self.shared.clone();
        let key = self.key.clone();
        block_on(&self.rt, async move { complete(&sh, &key, &upload_id, parts).await })?;
        self.over = true;
        if let Some(p) = self.mp.as_mut().and_then(|m| m.record.take()) {
            pending::remove(&p);
        }
        tracing::debug!("upload {} complete: {parts_sent} parts", self.shared.url(&self.key));
        Ok(())
    }

    fn abort_inner(&mut self) {
        if self.over {
            return;
        }
        self.over = true;
        let Some(mut mp) = self.mp.take() else { return };
        mp.tx = None;
        if let Some(h) = mp.dispatcher.take() {
            // Cancel the part uploads first, so none lands after the abort.
            h.abort();
            let _ = block_on(&self.rt, h);
        }
        let sh = self.shared.clone();
        let key = self.key.clone();
        let id = mp.upload_id.clone();
        match block_on(&self.rt, async move { abort_upload(&sh, &key, &id).await }) {
            Ok(()) => {
                tracing::info!("aborted the multipart upload of {}", self.shared.url(&self.key));
                if let Some(p) = mp.record.take() {
                    pending::remove(&p);
                }
            }
            Err(e) => tracing::warn!(
                "could not abort the multipart upload of {} ({e}); it stays recorded and the next start aborts it",
                self.shared.url(&self.key)
            ),
        }
    }
}

impl Write for S3Upload {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.over {
            return Err(io::Error::other("the upload is already finished or aborted"));
        }
        let mut rest = data;
        while !rest.is_empty() {
            // A full part is sent only when more bytes come, so an archive of exactly one
            // part still goes as a single PUT.
            if self.buf.len() >= self.part_size {
                self.send_part().map_err(io::Error::other)?;
            }
            if self.buf.capacity() == 0 {
                self.buf.reserve(self.part_size);
            }
            let n = (self.part_size - self.buf.len()).min(rest.len());
            self.buf.extend_from_slice(&rest[..n]);
            rest = &rest[n..];
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        // Parts have a fixed size: nothing is sent before a part is full.
        Ok(())
    }
}

impl Upload for S3Upload {
    fn finish(mut self: Box<Self>) -> Result<()> {
        // On error, `self` drops here and the multipart upload is aborted.
        self.finish_inner()
    }

    fn abort(mut self: Box<Self>) {
        self.abort_inner();
    }
}

impl Drop for S3Upload {
    fn drop(&mut self) {
        self.abort_inner();
    }
}

/// Take parts from the channel and upload up to `in_flight` at once; stop at the first part
/// that fails for good (dropping the receiver, so the writer sees it, and the `JoinSet`,
/// which cancels the other uploads).
async fn dispatch(
    sh: Arc<Shared>,
    key: String,
    upload_id: String,
    mut rx: mpsc::Receiver<Part>,
    in_flight: usize,
) -> Result<Vec<CompletedPart>> {
    let mut set: JoinSet<Result<CompletedPart>> = JoinSet::new();
    let mut done = Vec::new();
    let joined = |r: std::result::Result<Result<CompletedPart>, tokio::task::JoinError>| match r {
        Ok(r) => r,
        Err(e) => {
            Err(Error::Store { what: "UploadPart".into(), reason: format!("the task failed: {e}"), retryable: false })
        }
    };
    loop {
        if set.len() >= in_flight {
            if let Some(r) = set.join_next().await {
                done.push(joined(r)?);
            }
            continue;
        }
        tokio::select! {
            biased;
            Some(r) = set.join_next(), if !set.is_empty() => done.push(joined(r)?),
            p = rx.recv() => match p {
                Some(p) => {
                    set.spawn(upload_part(sh.clone(), key.clone(), upload_id.clone(), p));
                }
                None => break,
            },
        }
    }
    while let Some(r) = set.join_next().await {
        done.push(joined(r)?);
    }
    done.sort_by_key(|p| p.part_number());
    Ok(done)
}

async fn upload_part(sh: Arc<Shared>, key: String, upload_id: String, part: Part) -> Result<CompletedPart> {
    let what = format!("UploadPart {} part {}", sh.url(&key), part.number);
    let len = part.body.len() as i64;
    let etag = retry::run(&sh.policy, &what, |_| {
        let body = part.body.clone();
        let (sh, key, upload_id, what) = (&sh, &key, &upload_id, &what);
        async move {
            let mut op = sh
                .client
                .upload_part()
                .bucket(&sh.bucket)
                .key(key)
                .upload_id(upload_id)
                .part_number(part.number)
                .content_length(len)
                .body(ByteStream::from(body))
                .customize();
            if sh.addr.unsigned_payload {
                op = op.disable_payload_signing();
            }
            let r = op.send().await.map_err(|e| sdk_error(what, e))?;
            Ok(r.e_tag().map(str::to_string))
        }
    })
    .await?;
    tracing::debug!("{what}: {len} bytes");
    Ok(CompletedPart::builder().part_number(part.number).set_e_tag(etag).build())
}

async fn complete(sh: &Shared, key: &str, upload_id: &str, parts: Vec<CompletedPart>) -> Result<()> {
    let what = format!("CompleteMultipartUpload {}", sh.url(key));
    let n = parts.len();
    let body = CompletedMultipartUpload::builder().set_parts(Some(parts)).build();
    retry::run(&sh.policy, &what, |attempt| {
        let body = body.clone();
        let what = &what;
        async move {
            match sh
                .client
                .complete_multipart_upload()
                .bucket(&sh.bucket)
                .key(key)
                .upload_id(upload_id)
                .multipart_upload(body)
                .send()
                .await
            {
                Ok(_) => Ok(()),
                // A retry after an answer that got lost: the upload is gone because it completed.
                Err(e) if attempt > 1 && error_code(&e).as_deref() == Some("NoSuchUpload") => {
                    match head(sh, key).await? {
                        Some((_, etag)) if etag.trim_matches('"').ends_with(&format!("-{n}")) => Ok(()),
                        _ => Err(sdk_error(what, e)),
                    }
                }
                Err(e) => Err(sdk_error(what, e)),
            }
        }
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// Download: a background task streams the object into a bounded channel of blocks.

struct S3Reader {
    rx: mpsc::Receiver<Result<Bytes>>,
    cur: Bytes,
    task: JoinHandle<()>,
    /// The runtime the fetch task runs on lives as long as the reader.
    _rt: Arc<Runtime>,
}

impl Read for S3Reader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.cur.is_empty() {
            match self.rx.blocking_recv() {
                Some(Ok(b)) => self.cur = b,
                Some(Err(e)) => return Err(io::Error::other(e)),
                None => return Ok(0),
            }
        }
        let n = out.len().min(self.cur.len());
        out[..n].copy_from_slice(&self.cur[..n]);
        let _ = self.cur.split_to(n);
        Ok(n)
    }
}

impl Drop for S3Reader {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Stream `key` into `tx`: ranges of `RANGE` bytes, `RANGES_IN_FLIGHT` of them fetched at
/// once (one stream leaves the store's side idle between its blocks), handed on in order.
async fn fetch(sh: Arc<Shared>, key: String, size: u64, etag: String, tx: mpsc::Sender<Result<Bytes>>) {
    let key = Arc::new(key);
    let mut starts = (0..size).step_by(RANGE as usize);
    let mut pending = std::collections::VecDeque::new();
    loop {
        while pending.len() < RANGES_IN_FLIGHT {
            let Some(start) = starts.next() else { break };
            let end = (start + RANGE).min(size);
            pending.push_back(tokio::spawn(fetch_range(sh.clone(), key.clone(), start, end, etag.clone())));
        }
        let Some(next) = pending.pop_front() else { return };
        let got = match next.await {
            Ok(got) => got,
            Err(e) => Err(Error::Store {
                what: format!("GetObject {}", sh.url(&key)),
                reason: e.to_string(),
                retryable: false,
            }),
        };
        let failed = got.is_err();
        if tx.send(got).await.is_err() || failed {
            for p in pending {
                p.abort();
            }
            return; // the reader is gone, or told why the download stopped
        }
    }
}

/// Bytes `start..end` of `key`. A dropped connection or a stalled body resumes from the last
/// byte received (`If-Match` on the ETag, so a replaced object is noticed rather than
/// spliced); the retry budget counts failures in a row, so a long download on a flaky link is
/// not cut short by faults spread over hours.
async fn fetch_range(sh: Arc<Shared>, key: Arc<String>, start: u64, end: u64, etag: String) -> Result<Bytes> {
    let what = format!("GetObject {}", sh.url(&key));
    let mut block = BytesMut::with_capacity((end - start) as usize);
    let mut failures = 0u32;
    loop {
        let offset = start + block.len() as u64;
        let mut req =
            sh.client.get_object().bucket(&sh.bucket).key(key.as_str()).range(format!("bytes={offset}-{}", end - 1));
        if !etag.is_empty() {
            req = req.if_match(&etag);
        }
        let err = match req.send().await {
            Err(e) => {
                let mut err = sdk_error(&what, e);
                if let Error::Store { reason, retryable, .. } = &mut err {
                    if reason.starts_with("PreconditionFailed") {
                        *reason = format!("{reason}: the object was replaced while it was being read");
                        *retryable = false;
                    }
                }
                err
            }
            Ok(o) if !o.content_range().is_some_and(|r| r.starts_with(&format!("bytes {offset}-"))) => Error::Store {
                what: what.clone(),
                reason: format!(
                    "asked for bytes {offset}-{} and got {:?}: the store does not honour Range requests",
                    end - 1,
                    o.content_range().unwrap_or("the whole object")
                ),
                retryable: false,
            },
            Ok(o) => {
                let mut body = o.body;
                loop {
                    match body.try_next().await {
                        Ok(Some(chunk)) => {
                            let room = (end - start) as usize - block.len();
                            block.extend_from_slice(&chunk[..chunk.len().min(room)]);
                            failures = 0;
                        }
                        Ok(None) => break,
                        Err(e) => {
                            tracing::debug!(
                                "{what}: the body broke at byte {}: {}",
                                start + block.len() as u64,
                                causes(&e)
                            );
                            break;
                        }
                    }
                }
                let offset = start + block.len() as u64;
                if offset >= end {
                    return Ok(block.freeze());
                }
                Error::Store {
                    what: what.clone(),
                    reason: format!("the connection ended at byte {offset} of {end}"),
                    retryable: true,
                }
            }
        };
        failures += 1;
        if !err.is_retryable() || failures >= sh.policy.max_attempts {
            return Err(err);
        }
        let wait = sh.policy.delay(failures);
        tracing::warn!("{what}: {err}; resuming at byte {} in {wait:?}", start + block.len() as u64);
        tokio::time::sleep(wait).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_and_key_rules() {
        for ok in ["abc", "my-bucket.1", &"a".repeat(63)] {
            check_bucket(ok).unwrap();
        }
        for bad in ["ab", "My-Bucket", "b_b", &"a".repeat(64), ""] {
            let e = check_bucket(bad).unwrap_err();
            assert!(e.is_input(), "{e}");
            assert!(e.to_string().contains("3 to 63"), "{e}");
        }
        check_key("backups/acp-1_20240520.tar.zst").unwrap();
        check_key("a+b#c=d_e-f.g/").unwrap();
        check_key("").unwrap();
        let e = check_key("bad key").unwrap_err();
        assert!(e.to_string().contains("\"bad key\"") && e.to_string().contains(". / - _ + # ="), "{e}");
        assert!(check_key("ü").is_err());
        check_key(&"k".repeat(1024)).unwrap();
        let e = check_key(&"k".repeat(1025)).unwrap_err();
        assert!(e.to_string().contains("1025 characters"), "{e}");
    }

    #[test]
    fn endpoints_and_regions() {
        let a = address(Scheme::Oss, "b", Some("oss-cn-shanghai-internal.aliyuncs.com"), None, None, false).unwrap();
        assert_eq!(a.url.as_deref(), Some("https://s3.oss-cn-shanghai-internal.aliyuncs.com"));
        assert_eq!(a.region, "cn-shanghai");
        assert!(!a.path_style && !a.unsigned_payload);
        assert_eq!(a.shown, "s3.oss-cn-shanghai-internal.aliyuncs.com");

        let a =
            address(Scheme::Oss, "b", Some("oss-cn-hangzhou.aliyuncs.com"), Some("cn-x"), Some("env"), false).unwrap();
        assert_eq!(a.region, "cn-x", "--region wins");
        let a = address(Scheme::Oss, "b", None, None, Some("cn-beijing"), false).unwrap();
        assert_eq!(a.url.as_deref(), Some("https://s3.oss-cn-beijing.aliyuncs.com"));
        assert!(address(Scheme::Oss, "b", None, None, None, false).unwrap_err().is_input());

        let a = address(Scheme::Obs, "b", Some("obs.cn-north-4.myhuaweicloud.com"), None, None, false).unwrap();
        assert_eq!(a.url.as_deref(), Some("https://obs.cn-north-4.myhuaweicloud.com"));
        assert_eq!(a.region, "cn-north-4");
        assert!(a.unsigned_payload && !a.path_style);
        // The bucket domain given as the endpoint is reduced to the service endpoint.
        let a = address(Scheme::Obs, "bk", Some("bk.obs.cn-north-4.myhuaweicloud.com"), None, None, false).unwrap();
        assert_eq!(a.url.as_deref(), Some("https://obs.cn-north-4.myhuaweicloud.com"));

        let a = address(Scheme::S3, "b", Some("http://127.0.0.1:3900"), None, Some("garage"), false).unwrap();
        assert_eq!(a.url.as_deref(), Some("http://127.0.0.1:3900"));
        assert_eq!(a.region, "garage");
        assert!(a.path_style);
        assert_eq!(a.shown, "127.0.0.1:3900");
        let a = address(Scheme::S3, "b", Some("http://key:secret@localhost:3900/"), None, None, false).unwrap();
        assert_eq!(a.url.as_deref(), Some("http://localhost:3900"));
        assert!(a.path_style && !a.shown.contains("secret"));
        assert!(address(Scheme::S3, "b", Some("http://[::1]:3900"), None, None, false).unwrap().path_style);
        assert!(!address(Scheme::S3, "b", Some("https://s3.example.com"), None, None, false).unwrap().path_style);
        assert!(address(Scheme::S3, "b", Some("https://s3.example.com"), None, None, true).unwrap().path_style);
        assert!(address(Scheme::S3, "b", Some("ftp://x"), None, None, false).is_err());

        let a = address(Scheme::S3, "b", None, None, None, false).unwrap();
        assert_eq!((a.url, a.region.as_str()), (None, "us-east-1"));
    }

    #[test]
    fn part_sizes_fit_ten_thousand_parts() {
        assert_eq!(part_size(0), DEFAULT_PART_SIZE);
        assert_eq!(part_size(2 << 30), DEFAULT_PART_SIZE);
        for hint in [60u64 << 30, 100 << 30, 1 << 40, 30 << 40] {
            let p = part_size(hint);
            assert!(p % (1 << 20) == 0 && p >= DEFAULT_PART_SIZE);
            assert!((hint + hint / 4) / p < MAX_PARTS, "{hint} in parts of {p}");
        }
        assert_eq!(part_size(u64::MAX), MAX_PART_SIZE);
    }
}
