//! How an archive's bytes go out: the settings every archive body shares (unsigned payload for
//! OBS) and, under `--limit-rate`, the pace. A paced request is signed over its body in memory
//! as usual; only then (`modify_before_transmit`, in an interceptor of the client, which runs
//! before the SDK's stalled-stream protection wraps the body) is the body swapped for a stream
//! of the same bytes that hands hyper one chunk at a time as the transfer's token bucket allows.
//! Its attempt gets the time the pace needs on top of the usual timeouts.
//!
//! It must never change a body's bytes (the signature covers them) nor its length.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use aws_sdk_s3::client::customize::CustomizableOperation;
use aws_sdk_s3::operation::put_object::PutObjectOutput;
use aws_sdk_s3::operation::upload_part::UploadPartOutput;
use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::context::BeforeTransmitInterceptorContextMut;
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::body::SdkBody;
use aws_smithy_types::config_bag::ConfigBag;
use bytes::Bytes;

use super::client;
use super::Shared;
use crate::store::rate::Limiter;

/// The pace of one request's body: the transfer's bucket and the bytes (the same buffer as
/// the body the request was signed with), carried from the operation to `Pacer` as a
/// request extension.
#[derive(Clone)]
struct Pace {
    limiter: Arc<Limiter>,
    body: Bytes,
}

/// The client's interceptor: a request that carries a `Pace` gets its body paced.
#[derive(Debug)]
pub(super) struct Pacer;

impl Intercept for Pacer {
    fn name(&self) -> &'static str {
        "cpbackup-pacer"
    }

    fn modify_before_transmit(
        &self,
        ctx: &mut BeforeTransmitInterceptorContextMut<'_>,
        _: &RuntimeComponents,
        _: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        if let Some(pace) = ctx.request().extension::<Pace>().cloned() {
            let paced = PacedBody { rest: pace.body, limiter: pace.limiter, waiting: None };
            *ctx.request_mut().body_mut() = SdkBody::from_body_1_x(paced);
        }
        Ok(())
    }
}

/// A body in memory, handed on a chunk at a time as the bucket allows.
struct PacedBody {
    rest: Bytes,
    limiter: Arc<Limiter>,
    /// A chunk whose time has not come yet, and the sleep until it does.
    waiting: Option<(Bytes, Pin<Box<tokio::time::Sleep>>)>,
}

impl http_body::Body for PacedBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        if let Some((_, sleep)) = &mut this.waiting {
            if sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            let chunk = this.waiting.take().map(|(c, _)| c).unwrap_or_default();
            return Poll::Ready(Some(Ok(http_body::Frame::data(chunk))));
        }
        if this.rest.is_empty() {
            return Poll::Ready(None);
        }
        let chunk = this.rest.split_to(this.limiter.chunk().min(this.rest.len()));
        let wait = this.limiter.reserve(chunk.len(), std::time::Instant::now());
        if wait.is_zero() {
            return Poll::Ready(Some(Ok(http_body::Frame::data(chunk))));
        }
        let mut sleep = Box::pin(tokio::time::sleep(wait));
        if sleep.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Some(Ok(http_body::Frame::data(chunk))));
        }
        this.waiting = Some((chunk, sleep));
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.rest.is_empty() && self.waiting.is_none()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        let waiting = self.waiting.as_ref().map_or(0, |(c, _)| c.len());
        http_body::SizeHint::with_exact((self.rest.len() + waiting) as u64)
    }
}

/// An operation that sends an archive's bytes as its body (PutObject, UploadPart).
pub(super) trait ArchiveBody: Sized {
    /// Send `body` as the store wants it, paced by `limiter` when there is one;
    /// `sharing` requests share the bucket at once (the parts in flight).
    fn archive_body(self, sh: &Shared, body: &Bytes, limiter: Option<&Arc<Limiter>>, sharing: usize) -> Self;
}

macro_rules! archive_body {
    ($($output:ty),+) => {$(
        impl<E, B> ArchiveBody for CustomizableOperation<$output, E, B> {
            fn archive_body(
                self,
                sh: &Shared,
                body: &Bytes,
                limiter: Option<&Arc<Limiter>>,
                sharing: usize,
            ) -> Self {
                let mut op = if sh.addr.unsigned_payload { self.disable_payload_signing() } else { self };
                if let Some(limiter) = limiter {
                    let pace = Pace { limiter: limiter.clone(), body: body.clone() };
                    // While others share the bucket this body goes at its share of the rate;
                    // twice that time on top of the usual timeouts.
                    let paced = limiter.time_for(body.len() as u64 * sharing.max(1) as u64) * 2;
                    op = op
                        .mutate_request(move |req| req.add_extension(pace.clone()))
                        .config_override(aws_sdk_s3::Config::builder().timeout_config(client::timeouts(&sh.policy, paced)));
                }
                op
            }
        }
    )+};
}

archive_body!(PutObjectOutput, UploadPartOutput);

/// How long the pace makes `bytes` take at most, for logs.
pub(super) fn describe(limiter: Option<&Arc<Limiter>>) -> String {
    match limiter {
        Some(l) => format!(", at most {} bytes/s", l.rate()),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::time::{Duration, Instant};

    use super::super::fake;
    use crate::spec::StoreOptions;
    use crate::store::Store;

    /// Through the fake server (which reads each body as it comes): a transfer under a cap
    /// takes the time the cap says, and every body arrives whole. The cap measured on the wire,
    /// through Garage, is tests/it/transfer.rs's.
    #[test]
    fn paced_transfers_take_the_time_the_cap_says() {
        let state = tempfile::tempdir().unwrap();
        let rate = 4u64 << 20;
        let opts = StoreOptions {
            endpoint: Some("http://127.0.0.1:9".into()),
            region: Some("r".into()),
            state_dir: Some(state.path().to_path_buf()),
            limit_rate: Some(rate),
            ..Default::default()
        };
        let (store, fake) = fake::store(&opts, 6 << 20);
        let t = Instant::now();
        let mut up = store.upload("a.tar", 0).unwrap();
        up.write_all(&vec![3u8; 6 << 20]).unwrap();
        up.finish().unwrap();
        let took = t.elapsed();
        // 6 MiB at 4 MiB/s, two parts sharing the cap: 1.5 s, less one chunk of credit.
        assert!(took >= Duration::from_millis(1450), "{took:?}");
        assert!(took < Duration::from_secs(4), "{took:?}");
        let mut parts: Vec<usize> = fake.seen().iter().filter(|s| s.op == "UploadPart").map(|s| s.body_len).collect();
        parts.sort();
        assert_eq!(parts, [1 << 20, 5 << 20], "both parts arrived whole");

        let t = Instant::now();
        let mut got = Vec::new();
        store.download("a.tar").unwrap().read_to_end(&mut got).unwrap();
        let took = t.elapsed();
        assert_eq!(got.len(), 6 << 20);
        assert!(took >= Duration::from_millis(1450) && took < Duration::from_secs(4), "{took:?}");

        // Manifests are not held back.
        let t = Instant::now();
        store.put("a.tar.manifest.json", &vec![b' '; 64 << 10]).unwrap();
        assert!(t.elapsed() < Duration::from_millis(500));
    }
}
