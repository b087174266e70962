//! The SDK client: its configuration for the vendors' quirks (checksums only when required,
//! in-memory bodies, no SDK retries, stall and answer timeouts), where credentials come from,
//! and how the SDK's failures become the crate's errors (`sdk_error`, `is_not_found`).
//!
//! It must never let a credential reach an error message: errors carry the service's code and
//! message, the HTTP status and the cause chain of network faults, none of which holds one.

use std::time::Duration;

use aws_sdk_s3::config::{
    BehaviorVersion, Region, RequestChecksumCalculation, ResponseChecksumValidation, SharedCredentialsProvider,
    SharedHttpClient, StalledStreamProtectionConfig,
};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::Client;
use aws_smithy_types::retry::RetryConfig;
use aws_smithy_types::timeout::TimeoutConfig;

use super::address::Addressing;
use crate::error::Error;
use crate::store::retry::Policy;

/// What every failed request of the SDK comes as.
pub(super) type Failure<E> = SdkError<E, aws_smithy_runtime_api::http::Response>;

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

/// What connects a client to the world: its HTTP client and its credentials.
pub(super) struct Wiring {
    pub http: SharedHttpClient,
    pub credentials: SharedCredentialsProvider,
}

impl Wiring {
    /// The agent's own: `http_client` and `credentials`.
    pub fn standard(region: &str) -> Wiring {
        Wiring { http: http_client(), credentials: credentials(region) }
    }
}

pub(super) fn client(addr: &Addressing, policy: &Policy, wiring: Wiring) -> Client {
    let mut b = aws_sdk_s3::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(addr.region.clone()))
        .credentials_provider(wiring.credentials)
        .http_client(wiring.http)
        // OSS, OBS and many others reject the SDK's default checksums and the aws-chunked
        // bodies they bring; parts go as plain in-memory bodies of known length instead.
        .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
        .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
        // A body that moves no bytes for `stall` fails the attempt, in both directions: parts
        // are in memory, so a stalled upload is the network's, never the compressor's.
        .stalled_stream_protection(StalledStreamProtectionConfig::enabled().grace_period(policy.stall).build())
        // Retries are ours (retry.rs): one budget per part, with jitter, and resumable downloads.
        .retry_config(RetryConfig::disabled())
        .timeout_config(timeouts(policy, Duration::ZERO))
        // Bodies under --limit-rate go at its pace (pace.rs).
        .interceptor(super::pace::Pacer)
        .force_path_style(addr.path_style);
    if let Some(url) = &addr.url {
        b = b.endpoint_url(url);
    }
    Client::from_conf(b.build())
}

/// The timeouts of a request, with `extra` time for a body that is paced.
pub(super) fn timeouts(policy: &Policy, extra: Duration) -> TimeoutConfig {
    TimeoutConfig::builder()
        .connect_timeout(Duration::from_secs(10))
        // The first byte of an answer, counted from the start of the request (its body
        // included): a server that takes a part and never answers costs one attempt.
        .read_timeout(policy.stall * 6 + extra)
        // Per attempt, generous enough for one part over a slow link.
        .operation_attempt_timeout(Duration::from_secs(600) + extra)
        .build()
}

/// An error and its causes, one after another ("dispatch failure: io error: … : Connection
/// reset by peer (os error 104)"), each said once: what a user can read, without the SDK's
/// debug dumps.
pub(super) fn causes(e: &(dyn std::error::Error + 'static)) -> String {
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

const NO_CREDENTIALS: &str = "no usable credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY \
    (and AWS_SESSION_TOKEN for STS) or a profile in ~/.aws/credentials";

/// An SDK failure as the crate's error: the service's code and message and the HTTP status
/// for answers, the cause chain for network faults. Secrets are not part of either.
pub(super) fn sdk_error<E>(what: &str, e: Failure<E>) -> Error
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
        SdkError::ResponseError(_) => (causes(&e), true),
        other => {
            let text = causes(&e);
            if text.contains("credentials") {
                (format!("{NO_CREDENTIALS} ({text})"), false)
            } else if let SdkError::DispatchFailure(d) = other {
                (text, d.is_io() || d.is_timeout() || d.is_other())
            } else {
                (text, false)
            }
        }
    };
    Error::Store { what: what.to_string(), reason, retryable }
}

fn status_name(status: u16) -> &'static str {
    match status {
        400 => "BadRequest",
        403 => "AccessDenied",
        404 => "NotFound",
        412 => "PreconditionFailed",
        _ => "HTTP error",
    }
}

pub(super) fn http_status<E>(e: &Failure<E>) -> Option<u16> {
    e.raw_response().map(|r| r.status().as_u16())
}

pub(super) fn error_code<E: ProvideErrorMetadata>(e: &Failure<E>) -> Option<String> {
    e.as_service_error().and_then(|s| s.code()).map(str::to_string)
}

/// Whether a failure says the object (or upload) asked for does not exist: a 404, unless the
/// missing thing is the bucket itself.
///
/// Decided once for every request: a missing bucket is never "not found". It means the address
/// is wrong (a typo, another region or endpoint than the bucket's), and reading it as "no such
/// object" would turn that mistake into a quiet success: `delete` reporting a deletion that
/// never happened, `get` telling `list` there is no manifest, `cleanup` forgetting an upload
/// that may still be open at the address its record meant. HEAD answers carry no body, so
/// their 404 names nothing and counts as not found; the next request on the bucket says
/// NoSuchBucket.
pub(super) fn is_not_found<E: ProvideErrorMetadata>(e: &Failure<E>) -> bool {
    http_status(e) == Some(404) && error_code(e).as_deref() != Some("NoSuchBucket")
}
