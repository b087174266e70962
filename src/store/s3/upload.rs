//! The multipart upload: an archive streamed in equal parts (the last one shorter) through a
//! bounded channel to tasks on the store's runtime, `parts_in_flight` at once; one PUT when
//! the archive ends before its first part fills. Owns the part size, the record of the upload
//! in the state directory while it runs, and the finish order: last part, every part
//! uploaded, CompleteMultipartUpload, then the record goes.
//!
//! It must never make an object visible under its key before every part is uploaded, and never
//! leave an upload open that it knows of: a failure or a drop aborts it, and an upload it could
//! not abort stays recorded for the next start.

use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::Arc;

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use bytes::{Bytes, BytesMut};
use tokio::runtime::Runtime;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::task::{JoinHandle, JoinSet};

use super::address::scheme_kind;
use super::bucket::{abort_upload, head, put_object, Content};
use super::client::{error_code, sdk_error};
use super::pace::{self, ArchiveBody};
use super::sse::{AtRest, CustomerKeyed};
use super::{block_on, Shared};
use crate::error::{Error, Result};
use crate::spec::StoreOptions;
use crate::store::pending::{self, Record, StateDir};
use crate::store::rate::Limiter;
use crate::store::Upload;

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
    record: Option<PathBuf>,
}

pub(super) struct S3Upload {
    rt: Arc<Runtime>,
    shared: Arc<Shared>,
    key: String,
    part_size: usize,
    /// The part being filled.
    buf: BytesMut,
    in_flight: usize,
    /// `--limit-rate`: the bucket every part of this upload shares.
    limiter: Option<Arc<Limiter>>,
    mp: Option<Multipart>,
    next_part: i32,
    state: StateDir,
    /// Finished or aborted: nothing more may happen.
    over: bool,
}

impl S3Upload {
    pub(super) fn new(
        rt: Arc<Runtime>,
        shared: Arc<Shared>,
        key: &str,
        size_hint: u64,
        opts: &StoreOptions,
        state: &StateDir,
    ) -> S3Upload {
        let part_size = part_size(size_hint);
        let in_flight = opts.parts_in_flight.max(1);
        let limiter = opts.limit_rate.map(|r| Arc::new(Limiter::new(r)));
        tracing::debug!(
            "uploading {} in parts of {} MiB, {in_flight} in flight{}",
            shared.url(key),
            part_size >> 20,
            pace::describe(limiter.as_ref())
        );
        S3Upload {
            rt,
            shared,
            key: key.to_string(),
            part_size: part_size as usize,
            buf: BytesMut::new(),
            in_flight,
            limiter,
            mp: None,
            next_part: 1,
            state: state.clone(),
            over: false,
        }
    }

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
        let sh = &self.shared;
        let key = &self.key;
        let upload_id = block_on(&self.rt, async {
            sh.request(&sh.policy, "CreateMultipartUpload", key, |what, _| async move {
                let r = sh
                    .client
                    .create_multipart_upload()
                    .bucket(&sh.bucket)
                    .key(key)
                    .at_rest(&sh.sse)
                    .customer_key(sh.sse.customer_key.as_ref())
                    .send()
                    .await
                    .map_err(|e| sdk_error(&what, e))?;
                r.upload_id().map(str::to_string).ok_or_else(|| Error::Store {
                    what: what.to_string(),
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
        let to = Parts {
            sh: self.shared.clone(),
            key: self.key.clone(),
            upload_id: upload_id.clone(),
            in_flight: self.in_flight,
            limiter: self.limiter.clone(),
        };
        let dispatcher = self.rt.spawn(dispatch(Arc::new(to), rx));
        self.mp = Some(Multipart { upload_id, tx: Some(tx), slots, dispatcher: Some(dispatcher), record });
        Ok(())
    }

    /// Record an upload in the state directory (held locked while this process lives).
    /// Without a record a killed agent could not abort the upload later: it still runs, but
    /// say so.
    fn record(&self, rec: &Record) -> Option<PathBuf> {
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
            let content = Content::Archive { limiter: self.limiter.as_ref() };
            block_on(&self.rt, async move { put_object(&sh, &key, body, content).await })?;
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
async fn dispatch(to: Arc<Parts>, mut rx: mpsc::Receiver<Part>) -> Result<Vec<CompletedPart>> {
    let mut set: JoinSet<Result<CompletedPart>> = JoinSet::new();
    let mut done = Vec::new();
    let joined = |r: std::result::Result<Result<CompletedPart>, tokio::task::JoinError>| match r {
        Ok(r) => r,
        Err(e) => {
            Err(Error::Store { what: "UploadPart".into(), reason: format!("the task failed: {e}"), retryable: false })
        }
    };
    loop {
        if set.len() >= to.in_flight {
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
                    set.spawn(upload_part(to.clone(), p));
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

/// Where the parts of one upload go, and how.
struct Parts {
    sh: Arc<Shared>,
    key: String,
    upload_id: String,
    /// Parts uploaded at once.
    in_flight: usize,
    /// The transfer's bandwidth cap, shared by its parts.
    limiter: Option<Arc<Limiter>>,
}

async fn upload_part(to: Arc<Parts>, part: Part) -> Result<CompletedPart> {
    let len = part.body.len() as i64;
    let op = format!("UploadPart part {} of", part.number);
    let (sh, key, upload_id, limiter, in_flight) =
        (&*to.sh, to.key.as_str(), to.upload_id.as_str(), to.limiter.as_ref(), to.in_flight);
    let etag = sh
        .request(&sh.policy, &op, key, |what, _| {
            let body = part.body.clone();
            async move {
                let r = sh
                    .client
                    .upload_part()
                    .bucket(&sh.bucket)
                    .key(key)
                    .upload_id(upload_id)
                    .part_number(part.number)
                    .customer_key(sh.sse.customer_key.as_ref())
                    .content_length(len)
                    .body(ByteStream::from(body.clone()))
                    .customize()
                    .archive_body(sh, &body, limiter, in_flight)
                    .send()
                    .await;
                match r {
                    Ok(r) => Ok(r.e_tag().map(str::to_string)),
                    Err(e) => {
                        let e = sdk_error(&what, e);
                        // A store that refuses a part before reading its body (the upload is
                        // gone) may close the connection under it: the agent sees a broken
                        // pipe, not the answer, and would retry in vain.
                        match e.is_retryable() && upload_gone(sh, key, upload_id).await {
                            true => Err(Error::Store {
                                what,
                                reason: format!("NoSuchUpload: the multipart upload is gone (aborted by someone else, or expired by a lifecycle rule); the part failed with: {e}"),
                                retryable: false,
                            }),
                            false => Err(e),
                        }
                    }
                }
            }
        })
        .await?;
    tracing::debug!("UploadPart {} part {}: {len} bytes", sh.url(key), part.number);
    Ok(CompletedPart::builder().part_number(part.number).set_e_tag(etag).build())
}

/// Whether the store says the multipart upload no longer exists (ListParts: NoSuchUpload).
async fn upload_gone(sh: &Shared, key: &str, upload_id: &str) -> bool {
    let r = sh.client.list_parts().bucket(&sh.bucket).key(key).upload_id(upload_id).max_parts(1).send().await;
    matches!(r, Err(e) if error_code(&e).as_deref() == Some("NoSuchUpload"))
}

async fn complete(sh: &Shared, key: &str, upload_id: &str, parts: Vec<CompletedPart>) -> Result<()> {
    let n = parts.len();
    let body = CompletedMultipartUpload::builder().set_parts(Some(parts)).build();
    sh.request(&sh.policy, "CompleteMultipartUpload", key, |what, attempt| {
        let body = body.clone();
        async move {
            let req = sh.client.complete_multipart_upload().bucket(&sh.bucket).key(key).upload_id(upload_id);
            match req.multipart_upload(body).send().await {
                Ok(_) => Ok(()),
                // A retry after an answer that got lost: the upload is gone because it completed.
                Err(e) if attempt > 1 && error_code(&e).as_deref() == Some("NoSuchUpload") => {
                    match head(sh, key).await? {
                        Some((_, etag)) if etag.trim_matches('"').ends_with(&format!("-{n}")) => Ok(()),
                        _ => Err(sdk_error(&what, e)),
                    }
                }
                Err(e) => Err(sdk_error(&what, e)),
            }
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn part_sizes_fit_ten_thousand_parts() {
        assert_eq!(part_size(0), DEFAULT_PART_SIZE);
        assert_eq!(part_size(2 << 30), DEFAULT_PART_SIZE);
        for hint in [60u64 << 30, 100 << 30, 1 << 40, 30 << 40] {
            let p = part_size(hint);
            assert!(p.is_multiple_of(1 << 20) && p >= DEFAULT_PART_SIZE);
            assert!((hint + hint / 4) / p < MAX_PARTS, "{hint} in parts of {p}");
        }
        assert_eq!(part_size(u64::MAX), MAX_PART_SIZE);
    }
}
