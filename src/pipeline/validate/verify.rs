//! `verify:` of an environment, field by field.

use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

use super::{ErrorKind, check_object_name, field, file};
use crate::pipeline::verify::{
    Check, Condition, HttpProbe, OnFailure, Probe, PrometheusProbe, Verify,
};

/// A check runs every ten seconds unless it says otherwise.
const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);
/// And fails if it has not passed within five minutes, as health does.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);

pub(super) fn verify(at: &str, raw: file::Verify, base: &Path) -> Result<Verify, ErrorKind> {
    if let Some(job) = &raw.job {
        check_object_name(&format!("{at}.job"), job)?;
    }
    if raw.job.is_none() && raw.checks.is_empty() {
        return Err(field(
            at,
            "names neither a job nor checks: nothing would be verified",
        ));
    }
    let on_failure = match raw.on_failure.as_deref() {
        None | Some("none") => OnFailure::Nothing,
        Some("rollback") => OnFailure::Rollback,
        Some(other) => {
            return Err(field(
                format!("{at}.onFailure"),
                format!("is {other:?}; expected \"rollback\" or \"none\""),
            ));
        }
    };
    let every = raw
        .every
        .map(|text| positive(&format!("{at}.every"), &text))
        .transpose()?;
    if every.is_some() && raw.checks.is_empty() {
        return Err(field(
            format!("{at}.every"),
            "re-verification runs the checks again, but there are none (a Job runs once per revision)",
        ));
    }
    let mut names = HashSet::new();
    let mut checks = Vec::with_capacity(raw.checks.len());
    for (i, check) in raw.checks.into_iter().enumerate() {
        let at = format!("{at}.checks[{i}]");
        if !names.insert(check.name.clone()) {
            return Err(field(
                format!("{at}.name"),
                format!("{:?} is the name of an earlier check", check.name),
            ));
        }
        checks.push(self::check(&at, check, base)?);
    }
    Ok(Verify {
        job: raw.job,
        checks,
        on_failure,
        every,
    })
}

fn check(at: &str, raw: file::Check, base: &Path) -> Result<Check, ErrorKind> {
    if raw.name.is_empty()
        || !raw
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        return Err(field(
            format!("{at}.name"),
            format!(
                "{:?} must be letters, digits, '-', '_' or '.' (it names the check in results)",
                raw.name
            ),
        ));
    }
    let interval = match raw.interval {
        None => DEFAULT_INTERVAL,
        Some(text) => positive(&format!("{at}.interval"), &text)?,
    };
    let timeout = match raw.timeout {
        None => DEFAULT_TIMEOUT,
        Some(text) => positive(&format!("{at}.timeout"), &text)?,
    };
    let successes = at_least_one(&format!("{at}.successes"), raw.successes)?;
    let failures = at_least_one(&format!("{at}.failures"), raw.failures)?;
    let probe = match (raw.prometheus, raw.http) {
        (Some(p), None) => Probe::Prometheus(prometheus(&format!("{at}.prometheus"), p, base)?),
        (None, Some(h)) => Probe::Http(http(&format!("{at}.http"), h, base)?),
        _ => {
            return Err(field(at, "needs exactly one of prometheus or http"));
        }
    };
    Ok(Check {
        name: raw.name,
        interval,
        timeout,
        successes,
        failures,
        probe,
    })
}

fn prometheus(
    at: &str,
    raw: file::PrometheusCheck,
    base: &Path,
) -> Result<PrometheusProbe, ErrorKind> {
    let url = http_url(&format!("{at}.url"), raw.url)?;
    if raw.query.trim().is_empty() {
        return Err(field(format!("{at}.query"), "is empty"));
    }
    for (name, bound) in [("below", raw.below), ("above", raw.above)] {
        if bound.is_some_and(|b| !b.is_finite()) {
            return Err(field(format!("{at}.{name}"), "must be a finite number"));
        }
    }
    if let (Some(below), Some(above)) = (raw.below, raw.above)
        && below <= above
    {
        return Err(field(
            format!("{at}.below"),
            format!("{below} leaves no value that is also above {above}"),
        ));
    }
    Ok(PrometheusProbe {
        url,
        query: raw.query,
        below: raw.below,
        above: raw.above,
        bearer_token_file: raw.bearer_token_file.map(|f| base.join(f)),
    })
}

fn http(at: &str, raw: file::HttpCheck, base: &Path) -> Result<HttpProbe, ErrorKind> {
    let url = http_url(&format!("{at}.url"), raw.url)?;
    let status = raw.status.unwrap_or(200);
    if !(100..=599).contains(&status) {
        return Err(field(
            format!("{at}.status"),
            format!("{status} is not an HTTP status"),
        ));
    }
    let condition = raw
        .condition
        .map(|text| Condition::parse(&text).map_err(|e| field(format!("{at}.condition"), e)))
        .transpose()?;
    Ok(HttpProbe {
        url,
        status,
        condition,
        bearer_token_file: raw.bearer_token_file.map(|f| base.join(f)),
    })
}

fn http_url(at: &str, url: String) -> Result<String, ErrorKind> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"));
    match rest {
        Some(host) if !host.is_empty() && !host.starts_with('/') => Ok(url),
        _ => Err(field(
            at,
            format!("{url:?} is not an http:// or https:// URL with a host"),
        )),
    }
}

fn positive(at: &str, text: &str) -> Result<Duration, ErrorKind> {
    let duration = humantime::parse_duration(text).map_err(|e| {
        field(
            at,
            format!("{text:?} is not a duration such as 30s or 5m: {e}"),
        )
    })?;
    if duration.is_zero() {
        return Err(field(at, "must be above zero"));
    }
    Ok(duration)
}

fn at_least_one(at: &str, value: Option<u32>) -> Result<u32, ErrorKind> {
    match value {
        None => Ok(1),
        Some(0) => Err(field(at, "must be at least 1")),
        Some(n) => Ok(n),
    }
}
