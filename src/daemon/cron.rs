//! Five-field cron expressions (`minute hour day-of-month month day-of-week`, in UTC) as
//! Vixie cron reads them: `*`, numbers, ranges `a-b`, steps `*/n` and `a-b/n`, lists `a,b`,
//! month and day names (`JAN`, `MON`), 0 or 7 for Sunday, and `@hourly`, `@daily`,
//! `@weekly`, `@monthly`, `@yearly`. When both day fields are restricted a day matches either.
//!
//! Our own parser rather than the `cron` or `croner` crates: both bring `chrono` (a second
//! date library beside `time`, which the binary already carries) for what is some 200 lines.
//! It never loops without bound: an expression that never fires is refused when parsed.

use time::{Date, Duration, Month, OffsetDateTime, Time};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cron {
    minutes: u64,
    hours: u32,
    /// Bit d for day of month d (1–31).
    days: u32,
    /// Bit m for month m (1–12).
    months: u16,
    /// Bit d for weekday d (0 = Sunday).
    weekdays: u8,
    days_star: bool,
    weekdays_star: bool,
}

const MONTHS: [&str; 12] = ["JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"];
const WEEKDAYS: [&str; 7] = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];

/// The furthest a search goes: a few leap-year cycles' worth of steps.
const MAX_STEPS: usize = 20_000;

impl Cron {
    pub fn parse(expr: &str) -> Result<Cron, String> {
        let expanded = match expr.trim() {
            "@yearly" | "@annually" => "0 0 1 1 *",
            "@monthly" => "0 0 1 * *",
            "@weekly" => "0 0 * * 0",
            "@daily" | "@midnight" => "0 0 * * *",
            "@hourly" => "0 * * * *",
            other => other,
        };
        let fields: Vec<&str> = expanded.split_whitespace().collect();
        if fields.len() != 5 {
            return Err(format!(
                "{expr:?} has {} fields; five are needed: minute hour day-of-month month day-of-week (UTC), e.g. \"0 3 * * *\"",
                fields.len()
            ));
        }
        let minutes = field(fields[0], "minute", 0, 59, &[])?;
        let hours = field(fields[1], "hour", 0, 23, &[])?;
        let days = field(fields[2], "day of month", 1, 31, &[])?;
        let months = field(fields[3], "month", 1, 12, &MONTHS)?;
        let mut weekdays = field(fields[4], "day of week", 0, 7, &WEEKDAYS)?;
        if weekdays & (1 << 7) != 0 {
            weekdays = (weekdays | 1) & 0x7f;
        }
        let cron = Cron {
            minutes,
            hours: hours as u32,
            days: days as u32,
            months: months as u16,
            weekdays: weekdays as u8,
            days_star: fields[2].starts_with('*'),
            weekdays_star: fields[4].starts_with('*'),
        };
        if cron.next_after(time::macros::datetime!(2000-01-01 0:00 UTC)).is_none() {
            return Err(format!("{expr:?} names no date that exists (e.g. 30 February): it would never run"));
        }
        Ok(cron)
    }

    fn day_matches(&self, d: Date) -> bool {
        let dom = self.days & (1 << d.day()) != 0;
        let dow = self.weekdays & (1 << d.weekday().number_days_from_sunday()) != 0;
        if self.days_star || self.weekdays_star {
            dom && dow
        } else {
            dom || dow
        }
    }

    /// The first time after `t` (to the minute) that the expression names.
    pub fn next_after(&self, t: OffsetDateTime) -> Option<OffsetDateTime> {
        let mut t = minute_of(t) + Duration::minutes(1);
        for _ in 0..MAX_STEPS {
            if self.months & (1 << u8::from(t.month())) == 0 {
                let (y, m) = if t.month() == Month::December {
                    (t.year() + 1, Month::January)
                } else {
                    (t.year(), t.month().next())
                };
                t = at(Date::from_calendar_date(y, m, 1).ok()?, 0, 0);
            } else if !self.day_matches(t.date()) {
                t = at(t.date().next_day()?, 0, 0);
            } else if self.hours & (1 << t.hour()) == 0 {
                t = minute_of(t).replace_minute(0).ok()? + Duration::hours(1);
            } else if self.minutes & (1 << t.minute()) == 0 {
                t += Duration::minutes(1);
            } else {
                return Some(t);
            }
        }
        None
    }

    /// The last time at or before `t` (to the minute) that the expression names.
    pub fn latest_at_or_before(&self, t: OffsetDateTime) -> Option<OffsetDateTime> {
        let mut t = minute_of(t);
        for _ in 0..MAX_STEPS {
            if self.months & (1 << u8::from(t.month())) == 0 {
                t = at(Date::from_calendar_date(t.year(), t.month(), 1).ok()?, 0, 0) - Duration::minutes(1);
            } else if !self.day_matches(t.date()) {
                t = at(t.date(), 0, 0) - Duration::minutes(1);
            } else if self.hours & (1 << t.hour()) == 0 {
                t = t.replace_minute(0).ok()? - Duration::minutes(1);
            } else if self.minutes & (1 << t.minute()) == 0 {
                t -= Duration::minutes(1);
            } else {
                return Some(t);
            }
        }
        None
    }
}

fn minute_of(t: OffsetDateTime) -> OffsetDateTime {
    let t = t.to_offset(time::UtcOffset::UTC);
    t.replace_time(Time::from_hms(t.hour(), t.minute(), 0).unwrap_or(Time::MIDNIGHT))
}

fn at(d: Date, hour: u8, minute: u8) -> OffsetDateTime {
    OffsetDateTime::new_utc(d, Time::from_hms(hour, minute, 0).unwrap_or(Time::MIDNIGHT))
}

/// One field as a bit set over `lo..=hi`; `names` are accepted for the values from `lo`.
fn field(text: &str, what: &str, lo: u32, hi: u32, names: &[&str]) -> Result<u64, String> {
    let value = |s: &str| -> Result<u32, String> {
        if let Some(i) = names.iter().position(|n| n.eq_ignore_ascii_case(s)) {
            return Ok(lo + i as u32);
        }
        match s.parse::<u32>() {
            Ok(v) if (lo..=hi).contains(&v) => Ok(v),
            _ => Err(format!(
                "{what} {s:?} is not a number from {lo} to {hi}{}",
                if names.is_empty() { "" } else { " or a name" }
            )),
        }
    };
    let mut bits = 0u64;
    for part in text.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, s)) => match s.parse::<u32>() {
                Ok(s) if s > 0 => (r, s),
                _ => return Err(format!("{what}: step {s:?} in {text:?} must be a whole number above 0")),
            },
            None => (part, 1),
        };
        let (from, to) = if range == "*" {
            (lo, hi)
        } else if let Some((a, b)) = range.split_once('-') {
            (value(a)?, value(b)?)
        } else {
            let v = value(range)?;
            (v, if part.contains('/') { hi } else { v })
        };
        if from > to {
            return Err(format!("{what}: range {range:?} runs backwards"));
        }
        let mut v = from;
        while v <= to {
            bits |= 1 << v;
            v += step;
        }
    }
    Ok(bits)
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    fn next(expr: &str, t: OffsetDateTime) -> OffsetDateTime {
        Cron::parse(expr).unwrap().next_after(t).unwrap()
    }

    fn latest(expr: &str, t: OffsetDateTime) -> OffsetDateTime {
        Cron::parse(expr).unwrap().latest_at_or_before(t).unwrap()
    }

    #[test]
    fn times_as_vixie_cron_reads_them() {
        let t = datetime!(2026-02-27 23:59:30 UTC); // a Friday
        assert_eq!(next("* * * * *", t), datetime!(2026-02-28 00:00 UTC));
        assert_eq!(next("0 3 * * *", t), datetime!(2026-02-28 03:00 UTC));
        assert_eq!(next("*/15 * * * *", datetime!(2026-01-01 10:14 UTC)), datetime!(2026-01-01 10:15 UTC));
        assert_eq!(next("30 2 1 * *", t), datetime!(2026-03-01 02:30 UTC));
        assert_eq!(next("0 0 * * MON", t), datetime!(2026-03-02 00:00 UTC));
        assert_eq!(next("0 0 * * 7", t), datetime!(2026-03-01 00:00 UTC));
        assert_eq!(next("0 12 29 2 *", t), datetime!(2028-02-29 12:00 UTC));
        assert_eq!(next("0 9-17/4 * * 1-5", datetime!(2026-03-02 10:00 UTC)), datetime!(2026-03-02 13:00 UTC));
        assert_eq!(next("0 0 1 JAN,jul *", t), datetime!(2026-07-01 00:00 UTC));
        assert_eq!(next("@weekly", t), datetime!(2026-03-01 00:00 UTC));
        // Both day fields restricted: either matches (the 13th, or any Friday).
        assert_eq!(next("0 0 13 * 5", datetime!(2026-03-01 00:00 UTC)), datetime!(2026-03-06 00:00 UTC));
        assert_eq!(next("0 0 13 * 5", datetime!(2026-03-12 00:00 UTC)), datetime!(2026-03-13 00:00 UTC));

        assert_eq!(latest("* * * * *", t), datetime!(2026-02-27 23:59 UTC));
        assert_eq!(latest("0 3 * * *", t), datetime!(2026-02-27 03:00 UTC));
        assert_eq!(latest("0 3 * * *", datetime!(2026-02-27 03:00 UTC)), datetime!(2026-02-27 03:00 UTC));
        assert_eq!(latest("30 2 1 * *", t), datetime!(2026-02-01 02:30 UTC));
        assert_eq!(latest("0 12 29 2 *", t), datetime!(2024-02-29 12:00 UTC));
        assert_eq!(latest("0 0 1 1 *", datetime!(2026-01-01 00:00 UTC)), datetime!(2026-01-01 00:00 UTC));
    }

    #[test]
    fn bad_expressions_name_the_field() {
        for (expr, says) in [
            ("* * * *", "five are needed"),
            ("60 * * * *", "minute \"60\""),
            ("* 24 * * *", "hour \"24\""),
            ("* * 0 * *", "day of month \"0\""),
            ("* * * 13 *", "month \"13\""),
            ("* * * FOO *", "month \"FOO\""),
            ("* * * * 8", "day of week \"8\""),
            ("*/0 * * * *", "step \"0\""),
            ("5-1 * * * *", "runs backwards"),
            ("0 0 30 2 *", "never run"),
            ("", "five are needed"),
        ] {
            let e = Cron::parse(expr).unwrap_err();
            assert!(e.contains(says), "{expr}: {e}");
        }
    }
}
