//! Durations and sizes as people write them: `"5s"`, `"1m 30s"`, `"250ms"`, `"100MiB"`,
//! `"1.5GB"`, and plain numbers (seconds for durations, bytes for sizes); and numbers written
//! back for people (`1.5 KiB`, `12.3 ms`, `1,234,567`).
//!
//! A leaf: it imports nothing of the crate, so that every module can format a number without
//! depending on the report.

use std::{fmt, time::Duration};

use serde::{Deserialize, Deserializer, de};

/// Parses a duration: humantime syntax, or a plain number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if let Ok(secs) = text.parse::<f64>() {
        return Duration::try_from_secs_f64(secs)
            .map_err(|e| format!("{}: {e}", truncate_quote(text, 60)));
    }
    let parsed = if humantime_would_overflow(text) {
        Err(humantime::DurationError::NumberOverflow)
    } else {
        humantime::parse_duration(text)
    };
    parsed.map_err(|e| {
        let why = truncate_quote(&e.to_string(), 80);
        format!(
            "{} is not a duration like \"5s\" or \"250ms\" ({})",
            truncate_quote(text, 60),
            why.trim_matches('"')
        )
    })
}

/// Whether the terms of `text` (`1h`, `2.5 ms`, ...) add up past the largest `Duration`.
/// humantime 2.4 panics ("overflow in Duration::new") instead of failing when they do so by a
/// carried second, as in `18446744073709551615s 500ms 500ms`; one term alone never does.
fn humantime_would_overflow(text: &str) -> bool {
    let unit = |c: char| c.is_ascii_alphabetic() || c == 'µ';
    let mut total = Duration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        // A term ends after its unit, at the first character that is not a letter.
        let end = rest
            .char_indices()
            .skip_while(|&(_, c)| !unit(c))
            .find(|&(_, c)| !unit(c))
            .map_or(rest.len(), |(i, _)| i);
        // A term humantime refuses: its error on the whole text says more.
        let Ok(term) = humantime::parse_duration(&rest[..end]) else {
            return false;
        };
        let Some(sum) = total.checked_add(term) else {
            return true;
        };
        total = sum;
        rest = &rest[end..];
    }
    false
}

/// Parses a size: `100MiB` (binary), `100MB` (decimal), `4096`; case and spaces are free. A
/// size beyond 2^64 - 1 bytes (16 EiB) is an error, never saturated.
pub fn parse_bytes(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let bad = || {
        format!(
            "{} is not a size like \"100MiB\", \"1.5GB\" or 4096",
            truncate_quote(text, 60)
        )
    };
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let unit = unit.trim();
    let value: f64 = number.parse().map_err(|_| bad())?;
    let multiplier = if unit.is_empty() {
        1
    } else {
        format!("1 {unit}")
            .parse::<bytesize::ByteSize>()
            .map_err(|_| bad())?
            .as_u64()
    };
    let bytes = value * multiplier as f64;
    if !bytes.is_finite() || bytes >= TWO_POW_64 {
        return Err(format!(
            "{} is too large: sizes go up to 16 EiB",
            truncate_quote(text, 60)
        ));
    }
    Ok(bytes as u64)
}

/// 2^64 as a float: the first size that does not fit in a u64.
const TWO_POW_64: f64 = 18_446_744_073_709_551_616.0;

/// Quotes user input for an error message, cut to `max` characters so that a megabyte of
/// input is not echoed back.
pub fn truncate_quote(text: &str, max: usize) -> String {
    let count = text.chars().count();
    if count <= max {
        return format!("{text:?}");
    }
    let head: String = text.chars().take(max).collect();
    format!("{head:?}… ({} more characters)", count - max)
}

/// Bytes as `512 B`, `1.5 KiB`, `16.0 MiB`, `2.00 GiB`.
pub fn human_bytes(b: u64) -> String {
    match b {
        0..1024 => format!("{b} B"),
        1024..1_048_576 => format!("{:.1} KiB", b as f64 / 1024.0),
        1_048_576..1_073_741_824 => format!("{:.1} MiB", b as f64 / 1_048_576.0),
        _ => format!("{:.2} GiB", b as f64 / 1_073_741_824.0),
    }
}

/// `1234567` → `1,234,567`.
pub fn group_thousands(value: u64) -> String {
    let digits = value.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Nanoseconds as `1.234 s`, `12.3 ms`, `45.6 µs` or `789 ns`.
pub fn human_duration_ns(ns: u64) -> String {
    match ns {
        0..1_000 => format!("{ns} ns"),
        1_000..1_000_000 => format!("{:.1} µs", ns as f64 / 1e3),
        1_000_000..1_000_000_000 => format!("{:.1} ms", ns as f64 / 1e6),
        _ => format!("{:.3} s", ns as f64 / 1e9),
    }
}

struct DurationVisitor;

impl de::Visitor<'_> for DurationVisitor {
    type Value = Duration;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a duration such as \"5s\", \"250ms\", \"2m\", or a number of seconds")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Duration, E> {
        parse_duration(v).map_err(E::custom)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Duration, E> {
        Ok(Duration::from_secs(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Duration, E> {
        u64::try_from(v)
            .map(Duration::from_secs)
            .map_err(|_| E::custom("a duration cannot be negative"))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Duration, E> {
        Duration::try_from_secs_f64(v).map_err(E::custom)
    }
}

struct BytesVisitor;

impl de::Visitor<'_> for BytesVisitor {
    type Value = u64;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a size such as \"100MiB\", \"1GB\", or a number of bytes")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<u64, E> {
        parse_bytes(v).map_err(E::custom)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<u64, E> {
        Ok(v)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<u64, E> {
        u64::try_from(v).map_err(|_| E::custom("a size cannot be negative"))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<u64, E> {
        if v.is_nan() || v < 0.0 {
            Err(E::custom("a size cannot be negative"))
        } else if v >= TWO_POW_64 {
            Err(E::custom("too large: sizes go up to 16 EiB"))
        } else {
            Ok(v as u64)
        }
    }
}

/// serde: a [`Duration`] written as people write it.
pub fn de_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    d.deserialize_any(DurationVisitor)
}

/// serde: a [`Duration`] written as [`de_duration`] reads it back exactly (`"1s 500ms"`).
pub fn ser_duration<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&humantime::format_duration(*d).to_string())
}

/// serde: an optional [`Duration`], as [`ser_duration`] (skip it when `None`).
pub fn ser_opt_duration<S: serde::Serializer>(
    d: &Option<Duration>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => ser_duration(d, s),
        None => s.serialize_none(),
    }
}

/// serde: an optional [`Duration`].
pub fn de_opt_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    d.deserialize_any(DurationVisitor).map(Some)
}

/// serde: an optional size in bytes.
pub fn de_opt_bytes<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    d.deserialize_any(BytesVisitor).map(Some)
}

/// A size: bytes as a number, or a string such as `"64KiB"`.
pub fn de_bytes<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    d.deserialize_any(BytesVisitor)
}

/// A number that is a percentage: `80`, `80.5` or `"80%"`.
pub fn de_opt_percent<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum P {
        N(f64),
        S(String),
    }
    let v = match P::deserialize(d)? {
        P::N(n) => n,
        P::S(s) => parse_percent(&s).map_err(de::Error::custom)?,
    };
    if v.is_finite() && v >= 0.0 {
        Ok(Some(v))
    } else {
        Err(de::Error::custom("a percentage must be a number ≥ 0"))
    }
}

/// Parses `80`, `80.5` or `80%` (finite, at least 0).
pub fn parse_percent(text: &str) -> Result<f64, String> {
    text.trim()
        .trim_end_matches('%')
        .trim()
        .parse::<f64>()
        .ok()
        .filter(|v| v.is_finite() && *v >= 0.0)
        .ok_or_else(|| {
            format!(
                "{} is not a percentage like 80 or \"80%\"",
                truncate_quote(text, 60)
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_as_people_write_them() {
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1m 30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("2"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("0.5"), Ok(Duration::from_millis(500)));
        assert!(parse_duration("five seconds").is_err());
        assert!(parse_duration("-1").is_err());
    }

    #[test]
    fn durations_past_the_largest_are_refused_not_a_panic() {
        // Found by the `units` fuzz target: humantime alone panics on these.
        for text in [
            "18446744073709551615s 500ms 500ms",
            "18446744073709551615.5s 0.5s",
            "18446744073709551615s1000000000ns",
        ] {
            let e = parse_duration(text).unwrap_err();
            assert!(e.contains("too large"), "{e}");
        }
        assert_eq!(
            parse_duration("18446744073709551615s 999ms"),
            Ok(Duration::new(u64::MAX, 999_000_000))
        );
        assert_eq!(
            parse_duration("1h2m 3.5s"),
            Ok(Duration::from_millis(3_723_500))
        );
        assert_eq!(parse_duration("1 0µs"), Ok(Duration::from_micros(10)));
    }

    #[test]
    fn sizes_as_people_write_them() {
        assert_eq!(parse_bytes("100MiB"), Ok(100 << 20));
        assert_eq!(parse_bytes("100MB"), Ok(100_000_000));
        assert_eq!(parse_bytes("1 GiB"), Ok(1 << 30));
        assert_eq!(parse_bytes("4096"), Ok(4096));
        assert_eq!(parse_bytes("1.5KiB"), Ok(1536));
        assert!(parse_bytes("lots").is_err());
    }

    #[test]
    fn sizes_beyond_u64_are_refused_not_saturated() {
        let e = parse_bytes("99999999999999999999GiB").unwrap_err();
        assert!(e.contains("too large"), "{e}");
        assert!(parse_bytes("16EiB").is_err());
        assert!(parse_bytes("18446744073709551616").is_err());
        assert_eq!(parse_bytes("15EiB"), Ok(15 << 60));
        assert!(parse_bytes("1e400").is_err());
    }

    #[test]
    fn long_input_is_not_echoed_whole() {
        let long = "x".repeat(1 << 20);
        let e = parse_bytes(&long).unwrap_err();
        assert!(e.len() < 200, "{} bytes of error", e.len());
        assert!(truncate_quote(&long, 10).ends_with("(1048566 more characters)"));
        assert_eq!(truncate_quote("ab", 10), "\"ab\"");
    }

    #[test]
    fn percentages() {
        assert_eq!(parse_percent("80%"), Ok(80.0));
        assert_eq!(parse_percent(" 12.5 "), Ok(12.5));
        assert!(parse_percent("most").is_err());
        assert!(parse_percent("inf").is_err());
        assert!(parse_percent("-5").is_err());
    }

    #[test]
    fn numbers_read_like_people_write_them() {
        assert_eq!(group_thousands(0), "0");
        assert_eq!(group_thousands(999), "999");
        assert_eq!(group_thousands(1_000), "1,000");
        assert_eq!(group_thousands(1_234_567), "1,234,567");
        assert_eq!(human_duration_ns(999), "999 ns");
        assert_eq!(human_duration_ns(1_500), "1.5 µs");
        assert_eq!(human_duration_ns(2_500_000), "2.5 ms");
        assert_eq!(human_duration_ns(3_000_000_000), "3.000 s");
    }
}
