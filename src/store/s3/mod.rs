//! The object store: OSS, OBS and any S3-compatible service through aws-sdk-s3. One file per
//! idea: `address` (bucket and key rules, endpoint, region, style), `client` (the SDK's
//! configuration and its errors), `bucket` (the `Store` over one bucket), `upload` (the
//! multipart upload that streams an archive in equal parts), `download` (the ranged,
//! resumable download) and `cleanup` (aborting the uploads a killed agent left open). This
//! file holds what they share: the client and its bucket, and the one way to run a request.
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

mod address;
mod bucket;
mod cleanup;
mod client;
mod download;
#[cfg(test)]
mod fake;
mod pace;
mod sse;
mod upload;

use std::future::Future;

use aws_sdk_s3::Client;
use tokio::runtime::Runtime;

pub use address::{address, check_bucket, check_key, Addressing};
pub use bucket::S3Store;
pub use cleanup::{cleanup, Cleanup};
pub use client::http_client;
pub use upload::{part_size, DEFAULT_PART_SIZE, MAX_PARTS, MAX_PART_SIZE, MIN_PART_SIZE};

use super::retry::{self, Policy};
use super::Scheme;
use crate::error::Result;

/// Manifests fetched at once by `list`.
pub const LIST_CONCURRENCY: usize = 16;

/// What the store, its uploads and its downloads share: the client and where the bucket is.
struct Shared {
    client: Client,
    scheme: Scheme,
    bucket: String,
    addr: Addressing,
    policy: Policy,
    /// Server-side encryption of archives: `sse` says which request carries what.
    sse: crate::store::sse::Sse,
}

impl Shared {
    fn url(&self, key: &str) -> String {
        format!("{}://{}/{key}", address::scheme_prefix(self.scheme), self.bucket)
    }

    /// Run one request on `key` with the retry policy: the key is checked first (a bad one is
    /// the user's to fix, exit 2, and never reaches the store), then `attempt` runs until it
    /// succeeds, fails for good or spends the budget. `op` names the request in logs and
    /// errors; `attempt` gets that name (`GetObject s3://b/k`) and the attempt's number.
    async fn request<T, F, Fut>(&self, policy: &Policy, op: &str, key: &str, mut attempt: F) -> Result<T>
    where
        F: FnMut(String, u32) -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        check_key(key)?;
        let what = format!("{op} {}", self.url(key));
        retry::run(policy, &what, |n| attempt(what.clone(), n)).await
    }
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
