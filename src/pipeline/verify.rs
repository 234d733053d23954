//! `verify:` of an environment: what must hold after a promotion before it is Succeeded, and
//! what happens when it does not.
//!
//! ```yaml
//! verify:
//!   job: smoke                 # a Job of the environment's manifests must succeed
//!   onFailure: rollback        # back to the last verified revision, automatic promotion held
//!   every: 10m                 # the checks run again while the environment stays on a revision
//!   checks:
//!     - name: error-rate
//!       prometheus:
//!         url: http://prometheus.monitoring:9090
//!         query: sum(rate(http_errors_total[2m])) / sum(rate(http_requests_total[2m]))
//!         below: 0.05
//!       interval: 30s          # between two runs of the check
//!       timeout: 5m            # the check fails if it has not passed by then
//!       successes: 3           # consecutive passes that make it pass
//!       failures: 2            # consecutive failures that make it fail
//!     - name: ready
//!       http:
//!         url: https://shop.example.com/healthz
//!         status: 200
//!         condition: $.status == "ok"
//! ```

use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;
use serde_json_path::JsonPath;

/// What must hold after a promotion into the environment.
#[derive(Debug, Clone, PartialEq)]
pub struct Verify {
    /// A Job of the environment's rendered manifests (`metadata.name`) that must succeed at the
    /// promoted revision.
    pub job: Option<String>,
    /// Checks run once the environment is Healthy (and the Job succeeded).
    pub checks: Vec<Check>,
    /// What a failed verification leads to.
    pub on_failure: OnFailure,
    /// How often the checks run again while the environment stays on a verified revision.
    pub every: Option<Duration>,
}

/// What a failed verification leads to, besides the promotion being Failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnFailure {
    /// Nothing more: the environment stays on the revision, which blocks promotions out of it.
    #[default]
    Nothing,
    /// A rollback to the last verified revision, requested by Stagehand through the normal road
    /// (approvals unless `approval.exemptRollbacks`), with automatic promotion held.
    Rollback,
}

/// One check, run every `interval` until `successes` passes in a row (it passed), `failures`
/// failures in a row (it failed) or `timeout` (it failed).
#[derive(Debug, Clone, PartialEq)]
pub struct Check {
    /// Unique within the environment; names the check in results and messages.
    pub name: String,
    /// Between the starts of two runs.
    pub interval: Duration,
    /// From the first run: not passed by then is failed.
    pub timeout: Duration,
    /// Passes in a row that make it pass.
    pub successes: u32,
    /// Failures in a row that make it fail.
    pub failures: u32,
    /// What one run asks.
    pub probe: Probe,
}

/// What one run of a check asks.
#[derive(Debug, Clone, PartialEq)]
pub enum Probe {
    /// `prometheus:`
    Prometheus(PrometheusProbe),
    /// `http:`
    Http(HttpProbe),
}

impl Probe {
    /// The kind's name, as results show it.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Prometheus(_) => "prometheus",
            Self::Http(_) => "http",
        }
    }
}

/// A PromQL instant query over Prometheus' HTTP API. With `below` and/or `above`, every sample
/// must lie within; without, every sample must be non-zero (a boolean result). No sample at all
/// is a failure: a query that finds nothing proves nothing.
#[derive(Debug, Clone, PartialEq)]
pub struct PrometheusProbe {
    /// The server's base URL; the query goes to `<url>/api/v1/query`.
    pub url: String,
    /// PromQL, evaluated as an instant query now.
    pub query: String,
    /// Every sample must be below this.
    pub below: Option<f64>,
    /// Every sample must be above this.
    pub above: Option<f64>,
    /// A file holding the bearer token, read on every run so a rotated token is picked up.
    pub bearer_token_file: Option<PathBuf>,
}

/// A GET whose status must be `status`, and whose body (JSON) must meet `condition`.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpProbe {
    /// Where the GET goes; redirects are not followed.
    pub url: String,
    /// The status it must answer with (default 200).
    pub status: u16,
    /// What the JSON body must meet.
    pub condition: Option<Condition>,
    /// A file holding the bearer token, read on every run.
    pub bearer_token_file: Option<PathBuf>,
}

/// `<JSONPath> <operator> <JSON value>`, such as `$.status == "ok"` or `$.queue.depth < 100`:
/// every node the path selects must compare true, and it must select at least one.
#[derive(Debug, Clone)]
pub struct Condition {
    text: String,
    path: JsonPath,
    operator: Operator,
    value: Value,
}

impl PartialEq for Condition {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Operator {
    Equal,
    NotEqual,
    Less,
    LessOrEqual,
    Greater,
    GreaterOrEqual,
}

impl Operator {
    /// Longest first, so `<=` is not read as `<`.
    const ALL: [(&'static str, Operator); 6] = [
        ("==", Self::Equal),
        ("!=", Self::NotEqual),
        ("<=", Self::LessOrEqual),
        (">=", Self::GreaterOrEqual),
        ("<", Self::Less),
        (">", Self::Greater),
    ];
}

impl Condition {
    /// Reads `text`; the error says what is wrong with it.
    pub fn parse(text: &str) -> Result<Self, String> {
        let (at, symbol, operator) = Operator::ALL
            .iter()
            .filter_map(|(symbol, operator)| {
                outside_quotes(text, symbol).map(|at| (at, *symbol, *operator))
            })
            .min_by_key(|(at, symbol, _)| (*at, std::cmp::Reverse(symbol.len())))
            .ok_or_else(|| {
                "expected `<JSONPath> <operator> <JSON value>` with one of ==, !=, <, <=, >, >="
                    .to_owned()
            })?;
        let path_text = text[..at].trim();
        let value_text = text[at + symbol.len()..].trim();
        let path = JsonPath::parse(path_text)
            .map_err(|e| format!("{path_text:?} is not a JSONPath: {e}"))?;
        let value: Value = serde_json::from_str(value_text).map_err(|e| {
            format!("{value_text:?} is not a JSON value (strings need double quotes): {e}")
        })?;
        if matches!(
            operator,
            Operator::Less | Operator::LessOrEqual | Operator::Greater | Operator::GreaterOrEqual
        ) && !value.is_number()
        {
            return Err(format!(
                "{symbol} compares numbers, but {value_text} is not one"
            ));
        }
        Ok(Self {
            text: text.trim().to_owned(),
            path,
            operator,
            value,
        })
    }

    /// Whether `document` meets the condition; `Err` says why not, for people.
    pub fn holds(&self, document: &Value) -> Result<(), String> {
        let nodes = self.path.query(document).all();
        if nodes.is_empty() {
            return Err(format!("{} selects nothing in the response", self.path));
        }
        for node in nodes {
            if !self.compare(node) {
                return Err(format!("{} is {}", self.path, shorten(node)));
            }
        }
        Ok(())
    }

    fn compare(&self, node: &Value) -> bool {
        match self.operator {
            Operator::Equal => equal(node, &self.value),
            Operator::NotEqual => !equal(node, &self.value),
            ordered => {
                let (Some(left), Some(right)) = (node.as_f64(), self.value.as_f64()) else {
                    return false;
                };
                match ordered {
                    Operator::Less => left < right,
                    Operator::LessOrEqual => left <= right,
                    Operator::Greater => left > right,
                    _ => left >= right,
                }
            }
        }
    }
}

impl std::fmt::Display for Condition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

/// JSON equality where `1` and `1.0` are the same number, as they are to people.
fn equal(left: &Value, right: &Value) -> bool {
    match (left.as_f64(), right.as_f64()) {
        (Some(l), Some(r)) if left.is_number() && right.is_number() => l == r,
        _ => left == right,
    }
}

/// A value as a message shows it: at most 80 characters of its JSON.
pub fn shorten(value: &Value) -> String {
    let text = value.to_string();
    match text.char_indices().nth(80) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text,
    }
}

/// The first byte offset of `needle` in `text` outside double-quoted strings (with `\"`
/// escapes) and outside brackets, where a JSONPath filter may hold operators of its own.
fn outside_quotes(text: &str, needle: &str) -> Option<usize> {
    let bytes = text.as_bytes();
    let (mut quoted, mut depth, mut escaped) = (None::<u8>, 0usize, false);
    for (at, &byte) in bytes.iter().enumerate() {
        if let Some(quote) = quoted {
            if escaped {
                escaped = false;
            } else if byte == b'\\' {
                escaped = true;
            } else if byte == quote {
                quoted = None;
            }
            continue;
        }
        match byte {
            b'"' | b'\'' => quoted = Some(byte),
            b'[' | b'(' => depth += 1,
            b']' | b')' => depth = depth.saturating_sub(1),
            _ if depth == 0 && text[at..].starts_with(needle) => return Some(at),
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_condition_compares_every_selected_node() {
        let c = Condition::parse(r#"$.status == "ok""#).expect("valid");
        assert_eq!(c.holds(&json!({"status": "ok"})), Ok(()));
        assert_eq!(
            c.holds(&json!({"status": "degraded"})),
            Err(r#"$.status is "degraded""#.to_owned())
        );
        let all = Condition::parse("$.pods[*].ready == true").expect("valid");
        assert!(
            all.holds(&json!({"pods": [{"ready": true}, {"ready": true}]}))
                .is_ok()
        );
        assert!(
            all.holds(&json!({"pods": [{"ready": true}, {"ready": false}]}))
                .is_err()
        );
        let err = all
            .holds(&json!({"pods": []}))
            .expect_err("nothing selected");
        assert!(err.contains("selects nothing"), "{err}");
    }

    #[test]
    fn ordered_operators_compare_numbers_only() {
        let c = Condition::parse("$.queue.depth <= 100").expect("valid");
        assert!(c.holds(&json!({"queue": {"depth": 100}})).is_ok());
        assert!(c.holds(&json!({"queue": {"depth": 100.5}})).is_err());
        assert!(c.holds(&json!({"queue": {"depth": "5"}})).is_err());
        assert!(
            Condition::parse("$.ratio > 0.5")
                .expect("valid")
                .holds(&json!({"ratio": 0.75}))
                .is_ok()
        );
        assert!(
            Condition::parse("$.n == 1")
                .expect("valid")
                .holds(&json!({"n": 1.0}))
                .is_ok()
        );
        assert!(
            Condition::parse("$.n != 1")
                .expect("valid")
                .holds(&json!({"n": 2}))
                .is_ok()
        );
    }

    #[test]
    fn operators_inside_strings_and_filters_are_not_the_comparison() {
        let c = Condition::parse(r#"$.message == "a <= b""#).expect("valid");
        assert!(c.holds(&json!({"message": "a <= b"})).is_ok());
        let filtered = Condition::parse(r#"$.checks[?@.name == "db"].ok == true"#).expect("valid");
        assert!(
            filtered
                .holds(
                    &json!({"checks": [{"name": "db", "ok": true}, {"name": "cache", "ok": false}]})
                )
                .is_ok()
        );
    }

    #[test]
    fn a_bad_condition_says_what_is_wrong() {
        for (text, expected) in [
            ("$.status", "expected `<JSONPath> <operator> <JSON value>`"),
            ("status == \"ok\"", "is not a JSONPath"),
            ("$.status == ok", "strings need double quotes"),
            ("$.status < \"ok\"", "compares numbers"),
        ] {
            let err = Condition::parse(text).expect_err(text);
            assert!(err.contains(expected), "{text}: {err}");
        }
    }
}
