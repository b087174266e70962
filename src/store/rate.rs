//! Bandwidth caps (`--limit-rate`): the rate's syntax, and the token bucket a transfer shares
//! across every part or range it has in flight, so that the cap is the transfer's, not each
//! connection's. The bucket is a virtual clock (GCRA): each reservation of n bytes moves the
//! time the bucket is next empty by n / rate, and says how long to wait before sending them;
//! it never holds more than one chunk of credit, so an idle moment is not followed by a burst.
//!
//! It must never sleep while holding its lock, and never let the average exceed the rate:
//! every byte sent has been reserved.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

/// The smallest cap: below it a single part would take hours.
pub const MIN_RATE: u64 = 1024;

/// Bytes per second from `20M`, `500k`, `1.5M`, `1048576` (k, M, G: 1024, 1024², 1024³, as
/// curl and wget read them).
pub fn parse(s: &str) -> Result<u64> {
    let bad = |why: &str| {
        Error::usage(format!(
            "--limit-rate {s:?}: {why}; give bytes per second as a number with an optional k, M or G \
             (times 1024, 1024², 1024³), e.g. 20M, 500k, 1.5M"
        ))
    };
    let t = s.trim();
    let (number, unit) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => (&t[..i], c),
        _ => (t, ' '),
    };
    let factor: f64 = match unit.to_ascii_lowercase() {
        ' ' => 1.0,
        'k' => 1024.0,
        'm' => 1024.0 * 1024.0,
        'g' => 1024.0 * 1024.0 * 1024.0,
        _ => return Err(bad("unknown unit")),
    };
    if number.is_empty() || !number.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return Err(bad("not a number"));
    }
    let value: f64 = number.parse().map_err(|_| bad("not a number"))?;
    let rate = (value * factor).round();
    if !rate.is_finite() || rate > u64::MAX as f64 {
        return Err(bad("too large"));
    }
    let rate = rate as u64;
    if rate < MIN_RATE {
        return Err(bad(&format!("{rate} bytes per second is below the smallest cap, 1k")));
    }
    Ok(rate)
}

/// One transfer's token bucket.
#[derive(Debug)]
pub struct Limiter {
    rate: u64,
    /// When the bucket is next empty: every byte reserved so far has its slot before it.
    empty_at: Mutex<Option<Instant>>,
}

impl Limiter {
    pub fn new(rate: u64) -> Limiter {
        Limiter { rate: rate.max(1), empty_at: Mutex::new(None) }
    }

    pub fn rate(&self) -> u64 {
        self.rate
    }

    /// How many bytes to send at a time: about 1/16 s worth, from 1 KiB to 64 KiB. Small
    /// enough that the pace is smooth, and that no chunk waits longer than the stall timeout.
    pub fn chunk(&self) -> usize {
        (self.rate / 16).clamp(1024, 64 * 1024) as usize
    }

    /// Reserve `n` bytes at `now`: how long to wait before sending them.
    pub fn reserve(&self, n: usize, now: Instant) -> Duration {
        let cost = Duration::from_secs_f64(n as f64 / self.rate as f64);
        // One chunk may go at once: the bucket's depth.
        let depth = Duration::from_secs_f64(self.chunk() as f64 / self.rate as f64);
        let mut empty_at = self.empty_at.lock().unwrap_or_else(|p| p.into_inner());
        let start = empty_at.map_or(now, |t| t.max(now));
        let end = start + cost;
        *empty_at = Some(end);
        end.saturating_duration_since(now + depth)
    }

    /// Wait until `n` more bytes may go.
    pub async fn take(&self, n: usize) {
        let wait = self.reserve(n, Instant::now());
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }

    /// How long `bytes` take at this rate.
    pub fn time_for(&self, bytes: u64) -> Duration {
        Duration::from_secs_f64(bytes as f64 / self.rate as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse_as_curl_reads_them() {
        assert_eq!(parse("20M").unwrap(), 20 << 20);
        assert_eq!(parse("500k").unwrap(), 500 << 10);
        assert_eq!(parse("500K").unwrap(), 500 << 10);
        assert_eq!(parse("1.5M").unwrap(), 3 << 19);
        assert_eq!(parse("2g").unwrap(), 2 << 30);
        assert_eq!(parse(" 4096 ").unwrap(), 4096);
        for (bad, why) in [
            ("", "not a number"),
            ("fast", "unknown unit"),
            ("20Mb", "unknown unit"),
            ("-5M", "not a number"),
            ("1..5M", "not a number"),
            ("M", "not a number"),
            ("0", "below the smallest cap"),
            ("100", "below the smallest cap"),
            ("99999999999G", "too large"),
        ] {
            let e = parse(bad).unwrap_err();
            let text = e.to_string();
            assert!(e.is_input(), "{text}");
            assert!(text.contains(why) && text.contains(&format!("{bad:?}")) && text.contains("20M, 500k"), "{text}");
        }
    }

    #[test]
    fn the_bucket_keeps_the_average_and_allows_one_chunk_of_credit() {
        let l = Limiter::new(64 * 1024 * 16); // 1 MiB/s, chunks of 64 KiB
        assert_eq!(l.chunk(), 64 * 1024);
        let t0 = Instant::now();
        // The first chunk goes at once; then one every 1/16 s, however many ask at once.
        assert_eq!(l.reserve(l.chunk(), t0), Duration::ZERO);
        let waits: Vec<Duration> = (0..16).map(|_| l.reserve(l.chunk(), t0)).collect();
        for (i, w) in waits.iter().enumerate() {
            let want = Duration::from_secs_f64((i + 1) as f64 / 16.0);
            assert!(w.abs_diff(want) < Duration::from_micros(10), "chunk {i}: {w:?}, want {want:?}");
        }
        // 17 chunks reserved at t0: the bucket is busy until 17/16 s.
        let later = t0 + Duration::from_secs(5);
        // After an idle spell, one chunk of credit, not five seconds' worth.
        assert_eq!(l.reserve(l.chunk(), later), Duration::ZERO);
        let w = l.reserve(l.chunk(), later);
        assert!(w.abs_diff(Duration::from_secs_f64(1.0 / 16.0)) < Duration::from_micros(10), "{w:?}");
        // Chunks scale with the rate, within bounds.
        assert_eq!(Limiter::new(2048).chunk(), 1024);
        assert_eq!(Limiter::new(100 << 20).chunk(), 64 * 1024);
        assert_eq!(Limiter::new(1 << 20).time_for(3 << 20), Duration::from_secs(3));
    }
}
