//! Which backups a retention policy keeps, with restic's `forget` semantics: the newest `last`
//! backups, and for each of hourly, daily, weekly (ISO weeks), monthly and yearly the newest
//! backup of each of the newest N periods that hold one; a backup is kept when any rule keeps
//! it. An empty policy keeps everything. Times are UTC.
//!
//! Pure: it decides, it never deletes.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Policy {
    pub last: u32,
    pub hourly: u32,
    pub daily: u32,
    pub weekly: u32,
    pub monthly: u32,
    pub yearly: u32,
}

impl Policy {
    pub fn is_empty(&self) -> bool {
        *self == Policy::default()
    }

    /// For each of `times` (any order), whether the policy keeps that backup.
    pub fn keeps(&self, times: &[OffsetDateTime]) -> Vec<bool> {
        if self.is_empty() {
            return vec![true; times.len()];
        }
        let mut order: Vec<usize> = (0..times.len()).collect();
        order.sort_by(|a, b| times[*b].cmp(&times[*a]));
        let mut keep = vec![false; times.len()];
        type Key = fn(OffsetDateTime) -> i64;
        let rules: [(u32, Key); 6] = [
            (self.last, |_| -1),
            (self.hourly, |t| (t.unix_timestamp()).div_euclid(3600)),
            (self.daily, |t| t.date().to_julian_day() as i64),
            (self.weekly, |t| {
                let (y, w, _) = t.date().to_iso_week_date();
                y as i64 * 100 + w as i64
            }),
            (self.monthly, |t| t.year() as i64 * 100 + u8::from(t.month()) as i64),
            (self.yearly, |t| t.year() as i64),
        ];
        for (i, (count, key)) in rules.into_iter().enumerate() {
            let mut left = count;
            let mut previous: Option<i64> = None;
            for &n in &order {
                if left == 0 {
                    break;
                }
                // `last` keeps every backup: each is its own period.
                let k = if i == 0 { n as i64 } else { key(times[n]) };
                if previous != Some(k) {
                    keep[n] = true;
                    previous = Some(k);
                    left -= 1;
                }
            }
        }
        keep
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    fn kept(p: Policy, times: &[OffsetDateTime]) -> Vec<OffsetDateTime> {
        let k = p.keeps(times);
        let mut v: Vec<OffsetDateTime> = times.iter().zip(k).filter(|(_, k)| *k).map(|(t, _)| *t).collect();
        v.sort();
        v
    }

    #[test]
    fn restic_forget_semantics() {
        // Two backups a day for ten days, newest last.
        let times: Vec<OffsetDateTime> =
            (0..20).map(|i| datetime!(2026-03-01 03:00 UTC) + time::Duration::hours(12 * i)).collect();
        assert_eq!(kept(Policy::default(), &times).len(), 20, "an empty policy keeps everything");
        assert_eq!(kept(Policy { last: 3, ..Default::default() }, &times), times[17..].to_vec());
        // daily = 3: the newest of each of the newest three days.
        assert_eq!(kept(Policy { daily: 3, ..Default::default() }, &times), vec![times[15], times[17], times[19]]);
        // Rules add up: last 2 (18, 19) and daily 3 (15, 17, 19).
        assert_eq!(
            kept(Policy { last: 2, daily: 3, ..Default::default() }, &times),
            vec![times[15], times[17], times[18], times[19]]
        );
        // 2026-03-01 is a Sunday: ISO weeks 9 (1 March), 10 (2–8), 11 (9–10).
        assert_eq!(kept(Policy { weekly: 2, ..Default::default() }, &times), vec![times[15], times[19]]);
        assert_eq!(kept(Policy { monthly: 6, ..Default::default() }, &times), vec![times[19]]);
        // Fewer periods than asked: one per period that exists.
        assert_eq!(kept(Policy { weekly: 10, ..Default::default() }, &times), vec![times[1], times[15], times[19]]);
        // Order of the input does not matter.
        let mut rev = times.clone();
        rev.reverse();
        assert_eq!(kept(Policy { daily: 3, ..Default::default() }, &rev), vec![times[15], times[17], times[19]]);
    }
}
