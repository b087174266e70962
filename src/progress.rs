//! Progress of one operation: counters that the daemon reads for task records, and a
//! progress bar on stderr when (and only when) stderr is a terminal.
//!
//! It never writes to stdout (which may be carrying the archive) and never slows the data
//! path: updates are relaxed atomic adds.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

#[derive(Debug, Default)]
pub struct Counters {
    pub entries: AtomicU64,
    /// Source bytes processed (file content read on backup, written on restore).
    pub bytes: AtomicU64,
    /// Expected total of `bytes`, when known (0 when not).
    pub total: AtomicU64,
    /// Bytes sent to or read from the store.
    pub transferred: Arc<AtomicU64>,
    /// Set by whoever wants the operation stopped (the daemon's cancel); checked between
    /// entries, so a cancelled export aborts its upload and a cancelled import its staging.
    pub cancel: std::sync::atomic::AtomicBool,
}

#[derive(Clone)]
pub struct Progress {
    pub counters: Arc<Counters>,
    bar: Option<indicatif::ProgressBar>,
}

impl Progress {
    /// A progress display: a bar when stderr is a terminal and `show` is set, counters always.
    pub fn new(show: bool) -> Progress {
        let bar = (show && std::io::stderr().is_terminal()).then(|| {
            let b = indicatif::ProgressBar::new(0);
            b.set_style(
                indicatif::ProgressStyle::with_template(
                    "{spinner} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} {bytes_per_sec} {msg}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            b
        });
        Progress { counters: Arc::new(Counters::default()), bar }
    }

    pub fn hidden() -> Progress {
        Progress::new(false)
    }

    pub fn set_total(&self, total: u64) {
        self.counters.total.store(total, Ordering::Relaxed);
        if let Some(b) = &self.bar {
            b.set_length(total);
        }
    }

    pub fn entry(&self, bytes: u64) {
        self.counters.entries.fetch_add(1, Ordering::Relaxed);
        let done = self.counters.bytes.fetch_add(bytes, Ordering::Relaxed) + bytes;
        if let Some(b) = &self.bar {
            b.set_position(done);
        }
    }

    /// `Err(Cancelled)` once a cancel was asked for.
    pub fn check_cancel(&self) -> crate::error::Result<()> {
        if self.counters.cancel.load(Ordering::Relaxed) {
            return Err(crate::error::Error::Cancelled);
        }
        Ok(())
    }

    pub fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}
