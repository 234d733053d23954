//! What go-yaml makes of a plain (unquoted, untagged) scalar. go-yaml v3 reads resources the way
//! kustomize's kyaml does and is what sops uses; go-yaml v2 (YAML 1.1: `yes`, `on` and `n` are
//! booleans) reads files kustomize converts to JSON and decides which strings its printer quotes.

use super::number::{self, GoInt};
use super::time;

/// Which go-yaml resolves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Schema {
    /// go-yaml v2, with YAML 1.1's booleans.
    V2,
    /// go-yaml v3.
    V3,
}

/// What a plain scalar stands for.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Plain {
    /// `null`, `~` or nothing.
    Null,
    /// A boolean of the schema's spelling (v2 knows `yes`, `on`...).
    Bool(bool),
    /// A signed integer in any base the schema reads.
    Int(i64),
    /// Fits only an unsigned 64-bit integer.
    Uint(u64),
    /// A float, `.inf` and `.nan` included.
    Float(f64),
    /// A timestamp; [`time::from_yaml`] gives the text Go writes for it.
    Time,
    /// `<<`, the merge key.
    Merge,
    /// Anything else: text.
    Str,
}

/// The words go-yaml v2 reads as booleans beyond `true` and `false` (YAML 1.1), which go-yaml v3
/// still quotes when it writes them as strings.
const YAML11_BOOLS: &[(&str, bool)] = &[
    ("y", true),
    ("Y", true),
    ("yes", true),
    ("Yes", true),
    ("YES", true),
    ("on", true),
    ("On", true),
    ("ON", true),
    ("n", false),
    ("N", false),
    ("no", false),
    ("No", false),
    ("NO", false),
    ("off", false),
    ("Off", false),
    ("OFF", false),
];

/// The YAML 1.1 boolean `s` spells, if it is one of the words only YAML 1.1 knows.
pub fn yaml11_bool(s: &str) -> Option<bool> {
    if s.len() > 3 {
        return None;
    }
    YAML11_BOOLS.iter().find(|(w, _)| *w == s).map(|(_, b)| *b)
}

/// go-yaml's resolution of the plain scalar `s`.
pub fn resolve(s: &str, schema: Schema) -> Plain {
    match s {
        "" | "~" | "null" | "Null" | "NULL" => return Plain::Null,
        "true" | "True" | "TRUE" => return Plain::Bool(true),
        "false" | "False" | "FALSE" => return Plain::Bool(false),
        ".nan" | ".NaN" | ".NAN" => return Plain::Float(f64::NAN),
        ".inf" | ".Inf" | ".INF" | "+.inf" | "+.Inf" | "+.INF" => {
            return Plain::Float(f64::INFINITY);
        }
        "-.inf" | "-.Inf" | "-.INF" => return Plain::Float(f64::NEG_INFINITY),
        "<<" => return Plain::Merge,
        _ => {}
    }
    if schema == Schema::V2
        && let Some(b) = yaml11_bool(s)
    {
        return Plain::Bool(b);
    }
    let first = s.as_bytes()[0];
    if first == b'.' {
        // Go's ParseFloat on the whole text; it refuses what overflows, Rust gives infinity.
        return s
            .parse::<f64>()
            .ok()
            .filter(|f| f.is_finite())
            .map_or(Plain::Str, Plain::Float);
    }
    if !(first.is_ascii_digit() || first == b'+' || first == b'-') {
        return Plain::Str;
    }
    if time::is_timestamp(s) {
        return Plain::Time;
    }
    let plain = s.replace('_', "");
    match number::parse_int(&plain) {
        Some(GoInt::Int(i)) => Plain::Int(i),
        Some(GoInt::Uint(u)) => Plain::Uint(u),
        None => number::parse_float(&plain).map_or(Plain::Str, Plain::Float),
    }
}

/// Whether the string `s` may be written plain: it reads back as the same string, and is no
/// YAML 1.1 boolean or sexagesimal number, which go-yaml's encoders quote for older readers.
/// kustomize's printer (`V2`) writes `<<` plain, as `kubectl kustomize` shows; sops's (`V3`)
/// quotes it.
pub fn plain_reads_back(s: &str, schema: Schema) -> bool {
    let string = match resolve(s, schema) {
        Plain::Str => true,
        Plain::Merge => schema == Schema::V2,
        _ => false,
    };
    string && yaml11_bool(s).is_none() && !number::is_base60(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_scalars_resolve_as_go_yaml_resolves_them() {
        use Schema::{V2, V3};
        assert_eq!(resolve("42", V3), Plain::Int(42));
        assert_eq!(resolve("0x1F", V3), Plain::Int(31));
        assert_eq!(resolve("1_000", V3), Plain::Int(1000));
        assert_eq!(resolve("010", V3), Plain::Int(8));
        assert_eq!(resolve("1.10", V3), Plain::Float(1.1));
        assert_eq!(resolve("1e3", V3), Plain::Float(1000.0));
        assert_eq!(resolve("yes", V3), Plain::Str);
        assert_eq!(resolve("yes", V2), Plain::Bool(true));
        assert_eq!(resolve("True", V3), Plain::Bool(true));
        assert_eq!(resolve("~", V3), Plain::Null);
        assert_eq!(resolve("<<", V2), Plain::Merge);
        assert_eq!(resolve("18446744073709551615", V3), Plain::Uint(u64::MAX));
        assert_eq!(
            resolve("123456789012345678901234567890", V3),
            Plain::Float(1.2345678901234568e29)
        );
        assert_eq!(resolve("2024-01-02", V2), Plain::Time);
        // Go's time.Parse wants an upper-case Z; its ParseFloat refuses an overflow.
        assert_eq!(resolve("2024-01-01t10:00:00z", V3), Plain::Str);
        assert_eq!(resolve("1e400", V3), Plain::Str);
        assert_eq!(resolve(".5e400", V3), Plain::Str);
        assert_eq!(resolve("1.2.3", V3), Plain::Str);
        assert!(plain_reads_back("1.2.3", V3));
        assert!(!plain_reads_back("on", V3));
        assert!(!plain_reads_back("1:20", V2));
        assert!(plain_reads_back("<<", V2));
        assert!(!plain_reads_back("<<", V3));
    }
}
