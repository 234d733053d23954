//! Go's number rules as go-yaml and sops apply them: which text `strconv.ParseInt(s, 0, 64)` and
//! go-yaml's float pattern accept, and how `strconv.FormatFloat` and `encoding/json` write a
//! float.

/// An integer as Go's `ParseInt(s, 0, 64)` reads it, or `ParseUint(s, 0, 64)` when it only fits
/// unsigned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GoInt {
    /// Fits a signed 64-bit integer.
    Int(i64),
    /// Fits only an unsigned 64-bit integer.
    Uint(u64),
}

/// `strconv.ParseInt(s, 0, 64)`, falling back to `ParseUint(s, 0, 64)`: an optional sign, then
/// `0b`, `0o`, `0x` or a leading `0` (octal) pick the base. go-yaml removes underscores before it
/// asks, so `s` has none.
pub fn parse_int(s: &str) -> Option<GoInt> {
    let (negative, body) = match s.as_bytes().first()? {
        b'-' => (true, &s[1..]),
        b'+' => (false, &s[1..]),
        _ => (false, s),
    };
    let prefixed = |p: &str| {
        body.get(..2)
            .filter(|head| head.eq_ignore_ascii_case(p))
            .map(|_| &body[2..])
    };
    let (radix, digits) = if let Some(d) = prefixed("0x") {
        (16, d)
    } else if let Some(d) = prefixed("0o") {
        (8, d)
    } else if let Some(d) = prefixed("0b") {
        (2, d)
    } else if body.len() > 1 && body.starts_with('0') {
        (8, &body[1..])
    } else {
        (10, body)
    };
    if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
        return None;
    }
    // Leading zeros cannot overflow; anything past u128 is out of every range below.
    let magnitude = u128::from_str_radix(digits, radix).ok()?;
    if negative {
        return (magnitude <= 1u128 << 63)
            .then(|| GoInt::Int((magnitude as i128).wrapping_neg() as i64));
    }
    if let Ok(i) = i64::try_from(magnitude) {
        Some(GoInt::Int(i))
    } else {
        u64::try_from(magnitude).ok().map(GoInt::Uint)
    }
}

/// go-yaml's float pattern, `^[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?$`, and Go's
/// `ParseFloat` succeeding on it (an overflow is an error there, where Rust gives infinity).
pub fn parse_float(s: &str) -> Option<f64> {
    let b = s.as_bytes();
    let mut i = 0;
    if matches!(b.first(), Some(b'+' | b'-')) {
        i += 1;
    }
    let digits = |i: &mut usize| {
        let start = *i;
        while b.get(*i).is_some_and(u8::is_ascii_digit) {
            *i += 1;
        }
        *i - start
    };
    if b.get(i) == Some(&b'.') {
        i += 1;
        if digits(&mut i) == 0 {
            return None;
        }
    } else {
        if digits(&mut i) == 0 {
            return None;
        }
        if b.get(i) == Some(&b'.') {
            i += 1;
            digits(&mut i);
        }
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(b.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        if digits(&mut i) == 0 {
            return None;
        }
    }
    if i != b.len() {
        return None;
    }
    s.parse::<f64>().ok().filter(|f| f.is_finite())
}

/// YAML 1.1 sexagesimal numbers such as `1:20` or `-1:20:30.5`, which go-yaml's encoders quote
/// for older readers: `^[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+(?:\.[0-9_]*)?$`.
pub fn is_base60(s: &str) -> bool {
    let s = s.strip_prefix(['+', '-']).unwrap_or(s);
    if !s.starts_with(|c: char| c.is_ascii_digit()) || !s.contains(':') {
        return false;
    }
    let head = match s.split_once('.') {
        Some((head, frac)) if frac.chars().all(|c| c.is_ascii_digit() || c == '_') => head,
        Some(_) => return false,
        None => s,
    };
    let mut parts = head.split(':');
    let first = parts.next().unwrap_or_default();
    if !first.starts_with(|c: char| c.is_ascii_digit())
        || !first.chars().all(|c| c.is_ascii_digit() || c == '_')
    {
        return false;
    }
    let mut rest = parts.peekable();
    rest.peek().is_some()
        && rest.all(|p| match p.as_bytes() {
            [d] => d.is_ascii_digit(),
            [tens, d] => (b'0'..=b'5').contains(tens) && d.is_ascii_digit(),
            _ => false,
        })
}

/// The shortest round-trip decimal digits of `f` (no sign, no point) and the decimal exponent of
/// the first digit, as Go's formatting works with them.
fn shortest_digits(f: f64) -> (String, i32) {
    let sci = format!("{:e}", f.abs());
    let (mantissa, exp) = sci
        .split_once('e')
        .expect("Rust's {:e} output always contains an exponent");
    let digits = mantissa.chars().filter(|c| *c != '.').collect();
    let exp = exp
        .parse()
        .expect("Rust's {:e} exponent is always an integer");
    (digits, exp)
}

/// `d.ddde±XX` with at least `min_exp_digits` exponent digits.
fn exponent_form(f: f64, min_exp_digits: usize) -> String {
    let (digits, exp) = shortest_digits(f);
    let mut out = String::new();
    if f.is_sign_negative() {
        out.push('-');
    }
    out.push_str(&digits[..1]);
    if digits.len() > 1 {
        out.push('.');
        out.push_str(&digits[1..]);
    }
    out.push('e');
    out.push(if exp < 0 { '-' } else { '+' });
    out.push_str(&format!("{:0min_exp_digits$}", exp.unsigned_abs()));
    out
}

/// `strconv.FormatFloat(f, 'g', -1, 64)` for a finite `f`: the shortest digits, in exponent form
/// (two digits at least) when the decimal exponent is below -4 or 6 and above, the limits Go
/// uses with the shortest precision.
fn format_g(f: f64) -> String {
    let (_, exp) = shortest_digits(f);
    if (-4..6).contains(&exp) {
        // Display prints the shortest round-trip digits without an exponent.
        format!("{f}")
    } else {
        exponent_form(f, 2)
    }
}

/// A float as go-yaml writes it: `FormatFloat(f, 'g', -1, 64)` with YAML's spellings of the
/// special values.
pub fn format_yaml(f: f64) -> String {
    if f.is_nan() {
        ".nan".into()
    } else if f.is_infinite() {
        if f > 0.0 { ".inf" } else { "-.inf" }.into()
    } else {
        format_g(f)
    }
}

/// `strconv.FormatFloat(f, 'f', -1, 64)`: the shortest digits that round-trip, never an
/// exponent. This is what sops hashes and encrypts for a float.
pub fn format_fixed(f: f64) -> String {
    if f.is_nan() {
        "NaN".into()
    } else if f.is_infinite() {
        if f > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else {
        format!("{f}")
    }
}

/// Go's `encoding/json` rendering of a float64: fixed notation between 1e-6 and 1e21, exponent
/// form outside, without a leading zero in a negative exponent.
pub fn format_json(f: f64) -> String {
    let abs = f.abs();
    if abs != 0.0 && !(1e-6..1e21).contains(&abs) {
        exponent_form(f, 1)
    } else {
        format!("{f}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_are_read_as_go_reads_them_with_base_zero() {
        assert_eq!(parse_int("42"), Some(GoInt::Int(42)));
        assert_eq!(parse_int("0x1F"), Some(GoInt::Int(31)));
        assert_eq!(parse_int("0O17"), Some(GoInt::Int(15)));
        assert_eq!(parse_int("0b101"), Some(GoInt::Int(5)));
        assert_eq!(parse_int("010"), Some(GoInt::Int(8)));
        assert_eq!(parse_int("0"), Some(GoInt::Int(0)));
        assert_eq!(
            parse_int("-9223372036854775808"),
            Some(GoInt::Int(i64::MIN))
        );
        assert_eq!(parse_int("-9223372036854775809"), None);
        assert_eq!(
            parse_int("18446744073709551615"),
            Some(GoInt::Uint(u64::MAX))
        );
        assert_eq!(parse_int("18446744073709551616"), None);
        assert_eq!(parse_int(&format!("0x{}", "f".repeat(40))), None);
        assert_eq!(parse_int("0x"), None);
        assert_eq!(parse_int("08"), None);
        assert_eq!(parse_int("1.0"), None);
    }

    #[test]
    fn floats_follow_the_yaml_pattern_and_refuse_overflow() {
        assert_eq!(parse_float("1.10"), Some(1.1));
        assert_eq!(parse_float(".5"), Some(0.5));
        assert_eq!(parse_float("1."), Some(1.0));
        assert_eq!(parse_float("-1e3"), Some(-1000.0));
        assert_eq!(parse_float("1e400"), None);
        assert_eq!(parse_float("1.2.3"), None);
        assert_eq!(parse_float("."), None);
        assert_eq!(parse_float("inf"), None);
        assert!(is_base60("12:30"));
        assert!(is_base60("-1:20:30.5"));
        assert!(!is_base60("12:60"));
        assert!(!is_base60("a:1"));
        assert!(!is_base60("12"));
    }

    #[test]
    fn floats_render_as_go_renders_them() {
        assert_eq!(
            format_fixed(1.2345678901234568e29),
            "123456789012345680000000000000"
        );
        assert_eq!(format_fixed(3.5), "3.5");
        assert_eq!(format_fixed(1.0), "1");
        assert_eq!(format_fixed(f64::INFINITY), "+Inf");
        assert_eq!(format_yaml(1.2345678901234568e29), "1.2345678901234568e+29");
        assert_eq!(format_yaml(0.5), "0.5");
        assert_eq!(format_yaml(-0.0), "-0");
        assert_eq!(format_yaml(1234567.0), "1.234567e+06");
        assert_eq!(format_yaml(123456.0), "123456");
        assert_eq!(format_yaml(1e-7), "1e-07");
        assert_eq!(format_yaml(f64::NEG_INFINITY), "-.inf");
        assert_eq!(format_json(1e21), "1e+21");
        assert_eq!(format_json(1e-7), "1e-7");
        assert_eq!(format_json(12345678901234567890.0), "12345678901234567000");
    }
}
