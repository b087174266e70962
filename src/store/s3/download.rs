//! The ranged download: a HEAD for size and ETag, then GETs of `RANGE` bytes, `RANGES_IN_FLIGHT`
//! at once, handed on in order through a bounded channel to a synchronous reader. Each range
//! resumes on its own from its last byte after a dropped connection or a stalled body. Under
//! `--limit-rate` the ranges are a quarter of a second's worth, each asked for only when the
//! transfer's token bucket lets its bytes come.
//!
//! It must never splice two versions of an object (every GET carries `If-Match` on the ETag),
//! never accept an answer for bytes other than those asked for, and never hold more than
//! `RANGE × (RANGES_IN_FLIGHT + 2)` bytes.
//!
//! `get_range` is the other read: one GET of a few bytes (a repository's blobs), whole in memory;
//! and `S3Reader::range` one GET streamed (a restore's range of a pack), its body handed on as
//! it comes, resumed as a download's ranges are.

use std::collections::VecDeque;
use std::io::{self, Read};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use tokio::runtime::Runtime;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::client::{causes, sdk_error};
use super::sse::CustomerKeyed;
use super::Shared;
use crate::error::{Error, Result};
use crate::store::rate::Limiter;

/// Downloads fetch ranges of this size, `RANGES_IN_FLIGHT` at once. Memory is
/// `RANGE × (RANGES_IN_FLIGHT + 2)` at most: those in flight, one handed over and one read.
const RANGE: u64 = 2 << 20;
const RANGES_IN_FLIGHT: usize = 2;
/// Pieces of a streamed range's body (as the connection hands them: up to a few hundred KiB)
/// that wait for its reader; past them the body waits in the connection. 16 held about 20 MiB
/// more at a restore's peak, through Garage, and were no faster.
const PIECES: usize = 2;

/// The synchronous end of a download: blocks handed on by the background `fetch`.
pub(super) struct S3Reader {
    rx: mpsc::Receiver<Result<Bytes>>,
    cur: Bytes,
    task: JoinHandle<()>,
    /// The runtime the fetch task runs on lives as long as the reader.
    _rt: Arc<Runtime>,
}

impl S3Reader {
    /// Start streaming `key` (of `size` bytes, ETag `etag`, as a HEAD found it), at the
    /// pace of `limiter` when there is one.
    pub(super) fn start(
        rt: Arc<Runtime>,
        sh: Arc<Shared>,
        key: &str,
        (size, etag): (u64, String),
        limiter: Option<Arc<Limiter>>,
    ) -> S3Reader {
        let (tx, rx) = mpsc::channel(1);
        let from = Arc::new(Object { sh, key: key.to_string(), etag, limiter, customer_keyed: true });
        let task = rt.spawn(fetch(from, size, tx));
        S3Reader { rx, cur: Bytes::new(), task, _rt: rt }
    }

    /// Stream up to `len` bytes of `key` from `offset` (fewer where it ends) in one ranged GET,
    /// resumed from its last byte as a download's ranges are: a repository's pack, immutable,
    /// so no `If-Match`. `PIECES` of the body wait for the reader at most.
    pub(super) fn range(rt: Arc<Runtime>, sh: Arc<Shared>, key: &str, offset: u64, len: u64) -> S3Reader {
        let (tx, rx) = mpsc::channel(PIECES);
        let from =
            Arc::new(Object { sh, key: key.to_string(), etag: String::new(), limiter: None, customer_keyed: false });
        let task = rt.spawn(stream_range(from, offset, offset + len, tx));
        S3Reader { rx, cur: Bytes::new(), task, _rt: rt }
    }
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

/// The size of the ranges: `RANGE`, or under a cap about a quarter of a second's worth
/// (64 KiB at least).
fn range_size(limiter: Option<&Limiter>) -> u64 {
    match limiter {
        None => RANGE,
        Some(l) => (l.rate() / 4).clamp(64 << 10, RANGE) >> 16 << 16,
    }
}

/// The object a download reads, and how.
struct Object {
    sh: Arc<Shared>,
    key: String,
    /// The ETag the HEAD found: every GET asks for this version (`If-Match`).
    etag: String,
    /// `--limit-rate`: the bucket every range of this download shares.
    limiter: Option<Arc<Limiter>>,
    /// Whether GETs carry the SSE-C key: archives' do; a repository's objects are stored as
    /// manifests are, without it.
    customer_keyed: bool,
}

/// Stream the object into `tx`: ranges of `RANGE` bytes, `RANGES_IN_FLIGHT` of them fetched at
/// once (one stream leaves the store's side idle between its blocks), handed on in order.
async fn fetch(from: Arc<Object>, size: u64, tx: mpsc::Sender<Result<Bytes>>) {
    let range = range_size(from.limiter.as_deref());
    let mut starts = (0..size).step_by(range as usize);
    let mut pending = VecDeque::new();
    loop {
        while pending.len() < RANGES_IN_FLIGHT {
            let Some(start) = starts.next() else { break };
            let end = (start + range).min(size);
            // Under a cap, a range is asked for only when the bucket lets its bytes come: the
            // server sends a range as fast as it can into buffers the agent does not control,
            // so the pace is set by when ranges are asked for, in ranges small enough to
            // keep it even.
            if let Some(limiter) = &from.limiter {
                limiter.take((end - start) as usize).await;
            }
            pending.push_back(tokio::spawn(fetch_range(from.clone(), start, end)));
        }
        let Some(next) = pending.pop_front() else { return };
        let got = match next.await {
            Ok(got) => got,
            Err(e) => Err(Error::Store {
                what: format!("GetObject {}", from.sh.url(&from.key)),
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

/// Bytes `start..end` of `key`, whole (a download's block: the HEAD said the object holds them,
/// so a shorter answer is an error, not the object's end).
async fn fetch_range(from: Arc<Object>, start: u64, end: u64) -> Result<Bytes> {
    let mut block = BytesMut::with_capacity((end - start) as usize);
    each_piece(&from, start, end, Sink::Block(&mut block)).await?;
    if (block.len() as u64) < end - start {
        return Err(Error::Store {
            what: format!("GetObject {}", from.sh.url(&from.key)),
            reason: format!("asked for bytes {start}-{} of an object that ends before them", end - 1),
            retryable: false,
        });
    }
    Ok(block.freeze())
}

/// Bytes `start..end` of `key`, handed to `tx` piece by piece as they come; an error ends
/// them. Stops when the reader is gone.
async fn stream_range(from: Arc<Object>, start: u64, end: u64, tx: mpsc::Sender<Result<Bytes>>) {
    if let Err(e) = each_piece(&from, start, end, Sink::Reader(&tx)).await {
        let _ = tx.send(Err(e)).await;
    }
}

/// Where `each_piece` puts what comes.
enum Sink<'a> {
    Block(&'a mut BytesMut),
    Reader(&'a mpsc::Sender<Result<Bytes>>),
}

impl Sink<'_> {
    /// A piece put; whether to go on (the reader may be gone).
    async fn take(&mut self, piece: Bytes) -> bool {
        match self {
            Sink::Block(b) => {
                b.extend_from_slice(&piece);
                true
            }
            Sink::Reader(tx) => tx.send(Ok(piece)).await.is_ok(),
        }
    }
}

/// Bytes `start..end` of `key` (up to where it ends), each piece of a body put in `sink` as
/// it comes. A dropped connection or a stalled body resumes from the last byte received
/// (`If-Match` on the ETag, when there is one, so a replaced object is noticed rather than
/// spliced); the retry budget counts failures in a row, so a long download on a flaky link is
/// not cut short by faults spread over hours.
async fn each_piece(from: &Object, start: u64, mut end: u64, mut sink: Sink<'_>) -> Result<()> {
    let (sh, key, etag) = (&from.sh, from.key.as_str(), from.etag.as_str());
    let what = format!("GetObject {}", sh.url(key));
    let mut got = 0u64;
    let mut failures = 0u32;
    while start + got < end {
        let offset = start + got;
        let range = format!("bytes={offset}-{}", end - 1);
        let mut req = sh.client.get_object().bucket(&sh.bucket).key(key).range(range);
        if from.customer_keyed {
            req = req.customer_key(sh.sse.customer_key.as_ref());
        }
        if !etag.is_empty() {
            req = req.if_match(etag);
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
                end = end.min(object_size(o.content_range()).unwrap_or(end));
                let mut body = o.body;
                loop {
                    match body.try_next().await {
                        Ok(Some(mut piece)) => {
                            piece.truncate((end - start - got) as usize);
                            got += piece.len() as u64;
                            failures = 0;
                            if !piece.is_empty() && !sink.take(piece).await {
                                return Ok(());
                            }
                        }
                        Ok(None) => break,
                        Err(e) => {
                            tracing::debug!("{what}: the body broke at byte {}: {}", start + got, causes(&e));
                            break;
                        }
                    }
                }
                let offset = start + got;
                if offset >= end {
                    return Ok(());
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
        tracing::warn!("{what}: {err}; resuming at byte {} in {wait:?}", start + got);
        tokio::time::sleep(wait).await;
    }
    Ok(())
}

/// The object's size in a `Content-Range` answer (`bytes 0-99/1234`).
fn object_size(content_range: Option<&str>) -> Option<u64> {
    content_range?.rsplit_once('/')?.1.parse().ok()
}

/// Up to `len` bytes of `key` from `offset` in one ranged GET (a repository's blobs and a
/// pack's trailer): fewer only where the object ends. Retried whole as any small request.
pub(super) async fn get_range(sh: &Shared, key: &str, offset: u64, len: u64, buf: Vec<u8>) -> Result<Vec<u8>> {
    if len == 0 {
        return Ok(Vec::new());
    }
    let last = offset + len - 1;
    // The caller's buffer serves the first attempt (a retry, which is rare, makes its own).
    let buf = std::sync::Mutex::new(Some(buf));
    let buf = &buf;
    // Without the customer key: a repository's objects are stored as manifests are (`put`).
    sh.request(&sh.policy, "GetObject", key, |what, _| async move {
        let what = format!("{what} bytes {offset}-{last}");
        let req = sh.client.get_object().bucket(&sh.bucket).key(key).range(format!("bytes={offset}-{last}"));
        let o = req.send().await.map_err(|e| sdk_error(&what, e))?;
        if !o.content_range().is_some_and(|r| r.starts_with(&format!("bytes {offset}-"))) {
            return Err(Error::Store {
                reason: format!(
                    "got {:?}: the store does not honour Range requests",
                    o.content_range().unwrap_or("the whole object")
                ),
                what,
                retryable: false,
            });
        }
        // Straight into one buffer of the asked size: a range is a pack's worth of blobs, and
        // collecting its pieces first copied it twice more.
        let mut b = buf.lock().unwrap_or_else(|p| p.into_inner()).take().unwrap_or_default();
        b.clear();
        b.reserve_exact(len as usize);
        let mut body = o.body;
        while let Some(piece) = body.try_next().await.map_err(|e| Error::Store {
            what: what.clone(),
            reason: format!("reading the body: {}", causes(&e)),
            retryable: true,
        })? {
            let room = (len as usize).saturating_sub(b.len());
            b.extend_from_slice(&piece[..piece.len().min(room)]);
        }
        Ok(b)
    })
    .await
}
