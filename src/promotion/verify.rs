//! The checks of `verify:`: one run of a Prometheus query or an HTTP request, and the count of
//! consecutive passes and failures that decides a check. The state is plain data, kept with the
//! promotion in the store, so a check goes on from its stored counts after a restart.

use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::pipeline::verify::{Check, HttpProbe, Probe, PrometheusProbe, shorten};

/// How long one run of a check may take at most, whatever its interval.
const RUN_TIMEOUT: Duration = Duration::from_secs(30);

/// Where a check stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum CheckStatus {
    /// Not decided yet.
    Running,
    /// Enough passes in a row.
    Passed,
    /// Enough failures in a row, the timeout, or its Job failed.
    Failed,
}

impl CheckStatus {
    /// The name the API uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Passed => "passed",
            Self::Failed => "failed",
        }
    }
}

/// One check of a verification, as results show it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CheckResult {
    /// The check's name in `verify.checks` (or the Job's).
    pub name: String,
    /// `prometheus`, `http` or `job`.
    pub kind: String,
    /// Where it stands.
    pub status: CheckStatus,
    /// Passes in a row now.
    #[serde(default)]
    pub successes: u32,
    /// Failures in a row now.
    #[serde(default)]
    pub failures: u32,
    /// Runs so far.
    #[serde(default)]
    pub runs: u32,
    /// What the last run saw: the query's value, the response's status.
    #[serde(default)]
    pub value: Option<String>,
    /// Why it stands where it does, for people.
    #[serde(default)]
    pub message: String,
    /// When it started: its timeout counts from here.
    pub started_at: SystemTime,
    /// When its last run ended.
    #[serde(default)]
    pub last_run_at: Option<SystemTime>,
}

impl CheckResult {
    /// A check that has not run yet.
    pub fn new(name: &str, kind: &str, now: SystemTime) -> Self {
        Self {
            name: name.to_owned(),
            kind: kind.to_owned(),
            status: CheckStatus::Running,
            successes: 0,
            failures: 0,
            runs: 0,
            value: None,
            message: "not run yet".to_owned(),
            started_at: now,
            last_run_at: None,
        }
    }

    /// When `check` runs next; `None` once it is decided.
    pub fn next_run(&self, check: &Check) -> Option<SystemTime> {
        if self.status != CheckStatus::Running {
            return None;
        }
        Some(
            self.last_run_at
                .map_or(self.started_at, |at| at + check.interval),
        )
    }

    /// Counts one run of `check` that ended at `now`.
    pub fn record(&mut self, check: &Check, run: Run, now: SystemTime) {
        self.runs += 1;
        self.last_run_at = Some(now);
        self.value = run.value;
        if run.passed {
            self.successes += 1;
            self.failures = 0;
        } else {
            self.failures += 1;
            self.successes = 0;
        }
        let (status, message) = if self.successes >= check.successes {
            (CheckStatus::Passed, format!("passed: {}", run.message))
        } else if self.failures >= check.failures {
            (CheckStatus::Failed, format!("failed: {}", run.message))
        } else if now.duration_since(self.started_at).unwrap_or_default() >= check.timeout {
            (
                CheckStatus::Failed,
                format!(
                    "did not pass within {}: {}",
                    humantime::format_duration(check.timeout),
                    run.message
                ),
            )
        } else if run.passed {
            (
                CheckStatus::Running,
                format!(
                    "{} of {} passes: {}",
                    self.successes, check.successes, run.message
                ),
            )
        } else {
            (
                CheckStatus::Running,
                format!(
                    "{} of {} failures: {}",
                    self.failures, check.failures, run.message
                ),
            )
        };
        self.status = status;
        self.message = message;
    }

    /// The check ended in another way (its Job failed, the verification was cut short).
    pub fn decide(&mut self, status: CheckStatus, message: String) {
        self.status = status;
        self.message = message;
    }

    /// `name (kind): message`, for a promotion's message.
    pub fn summary(&self) -> String {
        format!("check {} ({}) {}", self.name, self.kind, self.message)
    }
}

/// What one run of a check saw.
#[derive(Debug, Clone, PartialEq)]
pub struct Run {
    /// Whether the run met the check's condition.
    pub passed: bool,
    /// What it saw, if it saw a value.
    pub value: Option<String>,
    /// Why it passed or failed, for people.
    pub message: String,
}

impl Run {
    fn failed(message: String) -> Self {
        Self {
            passed: false,
            value: None,
            message,
        }
    }
}

/// The HTTP client of the checks: bounded waits, no redirects followed to another host's
/// credentials (tokens go only where the pipeline says).
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .timeout(RUN_TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("a client with timeouts only builds")
}

/// Runs `check` once.
pub async fn run(client: &reqwest::Client, check: &Check) -> Run {
    let timeout = check.interval.clamp(Duration::from_secs(1), RUN_TIMEOUT);
    let attempt = async {
        match &check.probe {
            Probe::Prometheus(probe) => prometheus(client, probe).await,
            Probe::Http(probe) => http(client, probe).await,
        }
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(run) => run,
        Err(_) => Run::failed(format!(
            "no answer within {}",
            humantime::format_duration(timeout)
        )),
    }
}

async fn bearer(
    request: reqwest::RequestBuilder,
    file: Option<&std::path::Path>,
) -> Result<reqwest::RequestBuilder, String> {
    let Some(file) = file else {
        return Ok(request);
    };
    let token = tokio::fs::read_to_string(file)
        .await
        .map_err(|e| format!("cannot read the bearer token file {}: {e}", file.display()))?;
    Ok(request.bearer_auth(token.trim()))
}

async fn prometheus(client: &reqwest::Client, probe: &PrometheusProbe) -> Run {
    let endpoint = format!("{}/api/v1/query", probe.url.trim_end_matches('/'));
    let url = match reqwest::Url::parse_with_params(&endpoint, [("query", &probe.query)]) {
        Ok(url) => url,
        Err(e) => return Run::failed(format!("{endpoint}: not a URL: {e}")),
    };
    let request = match bearer(client.get(url), probe.bearer_token_file.as_deref()).await {
        Ok(request) => request,
        Err(why) => return Run::failed(why),
    };
    let body = match answer(request, &endpoint).await {
        Ok((status, body)) if status.is_success() => body,
        Ok((status, body)) => {
            return Run::failed(format!(
                "Prometheus answered {status}: {}",
                prometheus_error(&body).unwrap_or_else(|| "no error message".to_owned())
            ));
        }
        Err(why) => return Run::failed(why),
    };
    let samples = match samples(&body) {
        Ok(samples) => samples,
        Err(why) => return Run::failed(why),
    };
    judge(probe, &samples)
}

/// The values of an instant query's answer: one per series of a vector, or the scalar.
fn samples(body: &[u8]) -> Result<Vec<(String, f64)>, String> {
    let document: Value =
        serde_json::from_slice(body).map_err(|e| format!("Prometheus' answer is not JSON: {e}"))?;
    if document["status"] != "success" {
        return Err(format!(
            "Prometheus says {}",
            prometheus_error(body).unwrap_or_else(|| "the query did not succeed".to_owned())
        ));
    }
    let data = &document["data"];
    let value = |pair: &Value| -> Result<f64, String> {
        let text = pair[1]
            .as_str()
            .ok_or_else(|| format!("a sample is not [time, \"value\"]: {}", shorten(pair)))?;
        // Prometheus writes NaN and ±Inf as NaN, +Inf and -Inf, which Rust reads as well.
        text.parse::<f64>()
            .map_err(|_| format!("sample value {text:?} is not a number"))
    };
    match data["resultType"].as_str() {
        Some("vector") => data["result"]
            .as_array()
            .ok_or("the vector has no result list")?
            .iter()
            .map(|series| Ok((series_name(&series["metric"]), value(&series["value"])?)))
            .collect(),
        Some("scalar") => Ok(vec![(String::new(), value(&data["result"])?)]),
        other => Err(format!(
            "the query gives a {} result; it must give an instant vector or a scalar",
            other.unwrap_or("missing")
        )),
    }
}

/// `{job="web",code="500"}` for a series with labels, empty for one without.
fn series_name(labels: &Value) -> String {
    let Some(labels) = labels.as_object().filter(|l| !l.is_empty()) else {
        return String::new();
    };
    let pairs: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={}", v)).collect();
    format!("{{{}}}", pairs.join(","))
}

fn prometheus_error(body: &[u8]) -> Option<String> {
    let document: Value = serde_json::from_slice(body).ok()?;
    document["error"].as_str().map(str::to_owned)
}

/// Every sample within the bounds, or non-zero without bounds; at least one sample.
fn judge(probe: &PrometheusProbe, samples: &[(String, f64)]) -> Run {
    let Some((_, first)) = samples.first() else {
        return Run::failed("the query returned no samples".to_owned());
    };
    let value = if samples.len() == 1 {
        format_value(*first)
    } else {
        format!(
            "{} (and {} more series)",
            format_value(*first),
            samples.len() - 1
        )
    };
    let bounds = match (probe.below, probe.above) {
        (None, None) => None,
        (below, above) => Some((below, above)),
    };
    let wrong = samples.iter().find(|(_, v)| match bounds {
        None => *v == 0.0 || v.is_nan(),
        Some((below, above)) => {
            v.is_nan() || below.is_some_and(|b| *v >= b) || above.is_some_and(|a| *v <= a)
        }
    });
    let wanted = match bounds {
        None => "non-zero".to_owned(),
        Some((Some(b), Some(a))) => format!("above {a} and below {b}"),
        Some((Some(b), None)) => format!("below {b}"),
        Some((None, Some(a))) => format!("above {a}"),
        Some((None, None)) => unreachable!("matched as no bounds"),
    };
    match wrong {
        None => Run {
            passed: true,
            message: format!("value {value} is {wanted}"),
            value: Some(value),
        },
        Some((series, v)) => Run {
            passed: false,
            value: Some(format_value(*v)),
            message: format!(
                "value {}{} is not {wanted}",
                format_value(*v),
                if series.is_empty() {
                    String::new()
                } else {
                    format!(" of {series}")
                }
            ),
        },
    }
}

fn format_value(value: f64) -> String {
    format!("{value}")
}

async fn http(client: &reqwest::Client, probe: &HttpProbe) -> Run {
    let request = match bearer(client.get(&probe.url), probe.bearer_token_file.as_deref()).await {
        Ok(request) => request,
        Err(why) => return Run::failed(why),
    };
    let (status, body) = match answer(request, &probe.url).await {
        Ok(answer) => answer,
        Err(why) => return Run::failed(why),
    };
    let value = Some(format!("status {}", status.as_u16()));
    if status.as_u16() != probe.status {
        return Run {
            passed: false,
            value,
            message: format!(
                "status {} where {} is expected",
                status.as_u16(),
                probe.status
            ),
        };
    }
    let Some(condition) = &probe.condition else {
        return Run {
            passed: true,
            value,
            message: format!("status {}", status.as_u16()),
        };
    };
    let document: Value = match serde_json::from_slice(&body) {
        Ok(document) => document,
        Err(e) => {
            return Run {
                passed: false,
                value,
                message: format!("the body is not JSON, so {condition} cannot hold: {e}"),
            };
        }
    };
    match condition.holds(&document) {
        Ok(()) => Run {
            passed: true,
            value,
            message: format!("status {} and {condition}", status.as_u16()),
        },
        Err(why) => Run {
            passed: false,
            value,
            message: format!("{condition} does not hold: {why}"),
        },
    }
}

/// The response's status and at most 1 MiB of its body.
async fn answer(
    request: reqwest::RequestBuilder,
    url: &str,
) -> Result<(reqwest::StatusCode, Vec<u8>), String> {
    const LIMIT: usize = 1 << 20;
    let mut response = request
        .send()
        .await
        .map_err(|e| format!("cannot reach {url}: {}", crate::error_chain::ErrorChain(&e)))?;
    let status = response.status();
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| format!("cannot read the answer of {url}: {e}"))?
    {
        if body.len() + chunk.len() > LIMIT {
            return Err(format!("the answer of {url} is larger than 1 MiB"));
        }
        body.extend_from_slice(&chunk);
    }
    Ok((status, body))
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn probe(below: Option<f64>, above: Option<f64>) -> PrometheusProbe {
        PrometheusProbe {
            url: "http://prometheus".into(),
            query: "q".into(),
            below,
            above,
            bearer_token_file: None::<PathBuf>,
        }
    }

    fn check(successes: u32, failures: u32) -> Check {
        Check {
            name: "c".into(),
            interval: Duration::from_secs(10),
            timeout: Duration::from_secs(60),
            successes,
            failures,
            probe: Probe::Prometheus(probe(None, None)),
        }
    }

    #[tokio::test]
    async fn an_unreachable_server_fails_the_run_naming_it() {
        // The binary installs the process's crypto provider; a test process has to itself.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a port");
        let mut c = check(1, 1);
        c.probe = Probe::Prometheus(PrometheusProbe {
            url: format!("http://{closed}"),
            ..probe(Some(1.0), None)
        });
        let run = run(&client(), &c).await;
        assert!(!run.passed);
        assert!(
            run.message
                .starts_with(&format!("cannot reach http://{closed}/api/v1/query")),
            "{}",
            run.message
        );
        c.probe = Probe::Http(HttpProbe {
            url: format!("http://{closed}/healthz"),
            status: 200,
            condition: None,
            bearer_token_file: Some(PathBuf::from("/nonexistent/token")),
        });
        let run = super::run(&client(), &c).await;
        assert!(
            run.message
                .starts_with("cannot read the bearer token file /nonexistent/token"),
            "{}",
            run.message
        );
    }

    #[test]
    fn a_vector_and_a_scalar_give_their_samples() {
        let vector = br#"{"status":"success","data":{"resultType":"vector","result":[
            {"metric":{"job":"web"},"value":[1700000000.1,"0.25"]},
            {"metric":{},"value":[1700000000.1,"NaN"]}]}}"#;
        let got = samples(vector).expect("a vector");
        assert_eq!(got[0], (r#"{job="web"}"#.to_owned(), 0.25));
        assert!(got[1].1.is_nan());
        let scalar = br#"{"status":"success","data":{"resultType":"scalar","result":[1,"3"]}}"#;
        assert_eq!(
            samples(scalar).expect("a scalar"),
            vec![(String::new(), 3.0)]
        );
        let matrix = br#"{"status":"success","data":{"resultType":"matrix","result":[]}}"#;
        assert!(samples(matrix).expect_err("a range").contains("matrix"));
        let error = br#"{"status":"error","errorType":"bad_data","error":"parse error at char 3"}"#;
        assert!(
            samples(error)
                .expect_err("an error")
                .contains("parse error at char 3")
        );
    }

    #[test]
    fn thresholds_hold_for_every_sample_and_no_sample_fails() {
        let within = judge(&probe(Some(0.05), None), &[(String::new(), 0.01)]);
        assert!(within.passed, "{within:?}");
        assert_eq!(within.value.as_deref(), Some("0.01"));
        let over = judge(
            &probe(Some(0.05), None),
            &[(String::new(), 0.01), ("{code=\"500\"}".into(), 0.12)],
        );
        assert!(!over.passed);
        assert_eq!(
            over.message,
            "value 0.12 of {code=\"500\"} is not below 0.05"
        );
        assert!(!judge(&probe(None, Some(1.0)), &[(String::new(), 1.0)]).passed);
        assert!(judge(&probe(Some(2.0), Some(1.0)), &[(String::new(), 1.5)]).passed);
        assert!(!judge(&probe(None, None), &[(String::new(), 0.0)]).passed);
        assert!(judge(&probe(None, None), &[(String::new(), 1.0)]).passed);
        assert!(!judge(&probe(Some(1.0), None), &[(String::new(), f64::NAN)]).passed);
        let empty = judge(&probe(Some(1.0), None), &[]);
        assert_eq!(empty.message, "the query returned no samples");
    }

    #[test]
    fn a_check_is_decided_by_runs_in_a_row_or_its_timeout() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let pass = |message: &str| Run {
            passed: true,
            value: Some("1".into()),
            message: message.into(),
        };
        let fail = |message: &str| Run::failed(message.into());
        let c = check(2, 2);
        let mut r = CheckResult::new("c", "prometheus", t0);
        assert_eq!(r.next_run(&c), Some(t0));
        r.record(&c, pass("ok"), t0);
        assert_eq!((r.status, r.successes), (CheckStatus::Running, 1));
        assert_eq!(r.next_run(&c), Some(t0 + Duration::from_secs(10)));
        r.record(&c, fail("bad"), t0 + Duration::from_secs(10));
        assert_eq!(
            (r.status, r.successes, r.failures),
            (CheckStatus::Running, 0, 1)
        );
        r.record(&c, pass("ok"), t0 + Duration::from_secs(20));
        r.record(&c, pass("ok"), t0 + Duration::from_secs(30));
        assert_eq!(r.status, CheckStatus::Passed);
        assert_eq!(r.next_run(&c), None);

        let mut r = CheckResult::new("c", "prometheus", t0);
        r.record(&c, fail("bad"), t0);
        r.record(&c, fail("worse"), t0 + Duration::from_secs(10));
        assert_eq!(r.status, CheckStatus::Failed);
        assert_eq!(r.message, "failed: worse");

        let patient = check(5, 5);
        let mut r = CheckResult::new("c", "prometheus", t0);
        r.record(&patient, pass("ok"), t0 + Duration::from_secs(59));
        assert_eq!(r.status, CheckStatus::Running);
        r.record(&patient, pass("ok"), t0 + Duration::from_secs(60));
        assert_eq!(r.status, CheckStatus::Failed);
        assert!(
            r.message.starts_with("did not pass within 1m"),
            "{}",
            r.message
        );
    }
}
