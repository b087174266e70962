//! Retrying object-store requests: exponential backoff with full jitter, up to a budget of
//! attempts. Owns the policy (how many attempts, how long to wait) and the loop; the caller
//! owns the decision of what is worth retrying (`Error::is_retryable`).
//!
//! It must never retry an error the caller marked permanent (a 4xx answer, a missing bucket):
//! retrying those only delays the failure the user has to see.

use std::future::Future;
use std::time::Duration;

use rand::Rng;

use crate::error::Error;

/// How often and how patiently to retry one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Attempts in all, the first one included.
    pub max_attempts: u32,
    /// The backoff ceiling for the first retry; it doubles with every attempt.
    pub base: Duration,
    /// No single wait is longer than this.
    pub max_delay: Duration,
    /// A request that moves no bytes for this long has failed (and is retried): a stalled
    /// connection must cost one attempt, not the whole operation.
    pub stall: Duration,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            max_attempts: 10,
            base: Duration::from_millis(200),
            max_delay: Duration::from_secs(20),
            stall: Duration::from_secs(20),
        }
    }
}

impl Policy {
    /// The default policy, with internal overrides from the environment
    /// (`CPBACKUP_RETRY_ATTEMPTS`, `CPBACKUP_RETRY_BASE_MS`, `CPBACKUP_STALL_SECS`). They exist so tests that break
    /// the network on purpose do not wait minutes for the budget to run out; they are not a
    /// user-facing setting.
    pub fn from_env() -> Policy {
        let mut p = Policy::default();
        if let Some(n) = env_u64("CPBACKUP_RETRY_ATTEMPTS") {
            p.max_attempts = n.clamp(1, 100) as u32;
        }
        if let Some(ms) = env_u64("CPBACKUP_RETRY_BASE_MS") {
            p.base = Duration::from_millis(ms.min(60_000));
        }
        if let Some(secs) = env_u64("CPBACKUP_STALL_SECS") {
            p.stall = Duration::from_secs(secs.clamp(1, 3600));
        }
        p
    }

    /// The ceiling of the wait before attempt `attempt + 1` (attempt counts from 1):
    /// `min(max_delay, base × 2^(attempt-1))`. The actual wait is uniform in `[0, ceiling]`
    /// ("full jitter"), so many agents retrying against one struggling endpoint spread out
    /// instead of arriving in waves.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt.saturating_sub(1)).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.max_delay)
    }

    pub fn delay(&self, attempt: u32) -> Duration {
        let ceiling = self.ceiling(attempt);
        let ms = ceiling.as_millis() as u64;
        if ms == 0 {
            return Duration::ZERO;
        }
        Duration::from_millis(rand::thread_rng().gen_range(0..=ms))
    }
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok()?.trim().parse().ok()
}

/// Requests retried since the process started (the daemon's `cpbackup_part_retries_total`).
pub static RETRIES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Run `op` until it succeeds, fails permanently, or the budget is spent. `what` names the
/// request in logs. The last error is returned, its message saying how many attempts it took.
pub async fn run<T, F, Fut>(policy: &Policy, what: &str, mut op: F) -> Result<T, Error>
where
    F: FnMut(u32) -> Fut,
    Fut: Future<Output = Result<T, Error>>,
{
    let mut attempt = 1;
    loop {
        match op(attempt).await {
            Ok(v) => return Ok(v),
            Err(e) if e.is_retryable() && attempt < policy.max_attempts => {
                let wait = policy.delay(attempt);
                RETRIES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::warn!(
                    "{what}: attempt {attempt} of {} failed ({e}); retrying in {wait:?}",
                    policy.max_attempts
                );
                tokio::time::sleep(wait).await;
                attempt += 1;
            }
            Err(e) if e.is_retryable() && attempt > 1 => return Err(after_attempts(e, attempt)),
            Err(e) => return Err(e),
        }
    }
}

/// Say in the error that the budget was spent, so a reader of the manifest knows the agent
/// did not give up at the first hiccup.
fn after_attempts(e: Error, attempts: u32) -> Error {
    match e {
        Error::Store { what, reason, retryable } => {
            Error::Store { what, reason: format!("{reason} (gave up after {attempts} attempts)"), retryable }
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn transient() -> Error {
        Error::Store { what: "PUT x".into(), reason: "HTTP 503".into(), retryable: true }
    }

    #[test]
    fn ceilings_double_and_cap() {
        let p = Policy {
            max_attempts: 10,
            base: Duration::from_millis(100),
            max_delay: Duration::from_secs(1),
            ..Policy::default()
        };
        assert_eq!(p.ceiling(1), Duration::from_millis(100));
        assert_eq!(p.ceiling(2), Duration::from_millis(200));
        assert_eq!(p.ceiling(4), Duration::from_millis(800));
        assert_eq!(p.ceiling(5), Duration::from_secs(1));
        assert_eq!(p.ceiling(40), Duration::from_secs(1));
        for a in 1..20 {
            assert!(p.delay(a) <= p.ceiling(a));
        }
    }

    #[test]
    fn retries_transient_until_budget_then_reports_attempts() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
        let p = Policy {
            max_attempts: 3,
            base: Duration::from_millis(1),
            max_delay: Duration::from_millis(2),
            ..Policy::default()
        };
        let calls = AtomicU32::new(0);
        let r: Result<(), Error> = rt.block_on(run(&p, "t", |_| {
            calls.fetch_add(1, Ordering::SeqCst);
            async { Err(transient()) }
        }));
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        assert!(r.unwrap_err().to_string().contains("gave up after 3 attempts"));

        // Succeeds on the second attempt.
        let calls = AtomicU32::new(0);
        let r = rt.block_on(run(&p, "t", |n| {
            calls.fetch_add(1, Ordering::SeqCst);
            async move {
                if n < 2 {
                    Err(transient())
                } else {
                    Ok(n)
                }
            }
        }));
        assert_eq!(r.unwrap(), 2);

        // A permanent error is not retried.
        let calls = AtomicU32::new(0);
        let r: Result<(), Error> = rt.block_on(run(&p, "t", |_| {
            calls.fetch_add(1, Ordering::SeqCst);
            async { Err(Error::Store { what: "x".into(), reason: "NoSuchBucket".into(), retryable: false }) }
        }));
        assert!(r.is_err());
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }
}
