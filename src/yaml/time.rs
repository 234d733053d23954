//! Timestamps as go-yaml reads them (Go's `time.Parse` with go-yaml's layouts) and as Go's
//! `time.Time.MarshalText` writes them: render prints resources with that text, and sops hashes
//! and encrypts it.

struct Parts {
    year: u32,
    month: u32,
    day: u32,
    hour: u32,
    minute: u32,
    second: u32,
    /// Fraction digits as Go keeps them: the first nine written.
    fraction: String,
    /// Offset from UTC in minutes; `None` when the text had none (Go then means UTC).
    offset: Option<i32>,
}

fn number(s: &str, min: usize, max: usize) -> Option<(u32, &str)> {
    let len = s.bytes().take_while(u8::is_ascii_digit).count();
    if len < min || len > max {
        return None;
    }
    Some((s[..len].parse().ok()?, &s[len..]))
}

fn days_in_month(year: u32, month: u32) -> u32 {
    match month {
        4 | 6 | 9 | 11 => 30,
        2 if (year.is_multiple_of(4) && !year.is_multiple_of(100)) || year.is_multiple_of(400) => {
            29
        }
        2 => 28,
        _ => 31,
    }
}

/// Parses `YYYY-M-D`, optionally followed by `T`/`t`/space and `H:M:S[.frac]` and, except after
/// a space, `Z` or `±hh:mm`. `strict` requires RFC 3339's two-digit fields.
fn parse(s: &str, strict: bool) -> Option<Parts> {
    let (w1, w2) = if strict { (2, 2) } else { (1, 2) };
    let (year, rest) = number(s, 4, 4)?;
    let rest = rest.strip_prefix('-')?;
    let (month, rest) = number(rest, w1, w2)?;
    let rest = rest.strip_prefix('-')?;
    let (day, rest) = number(rest, w1, w2)?;
    if !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) {
        return None;
    }
    let mut parts = Parts {
        year,
        month,
        day,
        hour: 0,
        minute: 0,
        second: 0,
        fraction: String::new(),
        offset: None,
    };
    if rest.is_empty() && !strict {
        return Some(parts);
    }
    let (spaced, rest) = match rest.as_bytes().first()? {
        b'T' => (false, &rest[1..]),
        b't' if !strict => (false, &rest[1..]),
        b' ' if !strict => (true, &rest[1..]),
        _ => return None,
    };
    let (hour, rest) = number(rest, w1, 2)?;
    let (minute, rest) = number(rest.strip_prefix(':')?, w1, 2)?;
    let (second, mut rest) = number(rest.strip_prefix(':')?, w1, 2)?;
    if hour > 23 || minute > 59 || second > 59 {
        return None;
    }
    (parts.hour, parts.minute, parts.second) = (hour, minute, second);
    // Go reads a fraction after a comma too, and drops digits past nanoseconds.
    let fraction = rest
        .strip_prefix('.')
        .or_else(|| rest.strip_prefix(',').filter(|_| !strict));
    if let Some(frac) = fraction {
        let len = frac.bytes().take_while(u8::is_ascii_digit).count();
        if len == 0 || (strict && len > 9) {
            return None;
        }
        parts.fraction = frac[..len.min(9)].to_owned();
        rest = &frac[len..];
    }
    if spaced {
        return rest.is_empty().then_some(parts);
    }
    parts.offset = Some(match rest {
        // Go's time.Parse takes only an upper-case Z for UTC.
        "Z" => 0,
        _ => {
            let sign = match rest.as_bytes().first()? {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            let (h, r) = number(&rest[1..], 2, 2)?;
            let (m, r) = number(r.strip_prefix(':')?, 2, 2)?;
            // Go's time.Parse takes offsets up to 24:60 ("as some people do write them");
            // sops's metadata is written by MarshalText, which stays below 24:00.
            let (max_h, max_m) = if strict { (23, 59) } else { (24, 60) };
            if !r.is_empty() || h > max_h || m > max_m {
                return None;
            }
            sign * (h * 60 + m) as i32
        }
    });
    Some(parts)
}

fn render(p: &Parts) -> String {
    let mut out = format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
        p.year, p.month, p.day, p.hour, p.minute, p.second
    );
    let frac = p.fraction.trim_end_matches('0');
    if !frac.is_empty() {
        out.push('.');
        out.push_str(frac);
    }
    match p.offset.unwrap_or(0) {
        0 => out.push('Z'),
        m => out.push_str(&format!(
            "{}{:02}:{:02}",
            if m < 0 { '-' } else { '+' },
            m.abs() / 60,
            m.abs() % 60
        )),
    }
    out
}

/// Whether go-yaml resolves a plain scalar to a timestamp.
pub fn is_timestamp(s: &str) -> bool {
    parse(s, false).is_some()
}

/// A plain YAML scalar that go-yaml resolves to a timestamp, rendered as Go's `MarshalText`;
/// `None` also for an offset past 23:59, which `MarshalText` refuses to write.
pub fn from_yaml(s: &str) -> Option<String> {
    parse(s, false)
        .filter(|p| p.offset.is_none_or(|m| m.abs() < 24 * 60))
        .map(|p| render(&p))
}

/// RFC 3339 text (what sops encrypts for a `time` value), re-rendered as `MarshalText`.
pub fn normalize_rfc3339(s: &str) -> Option<String> {
    parse(s, true).map(|p| render(&p))
}

/// `lastmodified` as sops feeds it to the MAC's additional data: parsed as RFC 3339 and
/// formatted again with `time.RFC3339`, which has no fractional seconds.
pub fn rfc3339_seconds(s: &str) -> Option<String> {
    let mut p = parse(s, true)?;
    p.fraction.clear();
    Some(render(&p))
}

/// Now, as `time.Now().UTC().Format(time.RFC3339)`.
pub fn now_rfc3339() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil-from-days (Howard Hinnant's algorithm) for the proleptic Gregorian calendar.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_dates_become_go_timestamps() {
        assert_eq!(
            from_yaml("2024-01-02").as_deref(),
            Some("2024-01-02T00:00:00Z")
        );
        assert_eq!(
            from_yaml("2024-1-2 3:04:05.50").as_deref(),
            Some("2024-01-02T03:04:05.5Z")
        );
        assert_eq!(
            from_yaml("2024-01-02T03:04:05+01:30").as_deref(),
            Some("2024-01-02T03:04:05+01:30")
        );
        assert_eq!(from_yaml("2024-02-30"), None);
        assert!(is_timestamp("2024-01-02T03:04:05+24:00"));
        assert_eq!(from_yaml("2024-01-02T03:04:05+24:00"), None);
        assert_eq!(
            from_yaml("2024-01-02 03:04:05,1234567891").as_deref(),
            Some("2024-01-02T03:04:05.123456789Z")
        );
        assert_eq!(from_yaml("20240102"), None);
        assert_eq!(
            normalize_rfc3339("2024-01-02T03:04:05.100Z").as_deref(),
            Some("2024-01-02T03:04:05.1Z")
        );
        assert_eq!(normalize_rfc3339("2024-01-02"), None);
    }
}
