//! Tag policies: which of a repository's tags an image source follows.
//!
//! A policy is one of three, written as a map with one key (camelCase, unknown fields refused):
//!
//! ```yaml
//! semver: { range: ">=1.2.0, <2" }                       # the highest version in the range
//! semver: ">=1.2.0, <2"                                   # the same
//! regex: { pattern: '^main-(?P<ts>\d+)$', extract: ts,   # the highest (order: asc) or lowest
//!          sort: numerical, order: asc }                  # (desc) sort key the pattern extracts
//! newest: { pattern: '^main-' }                           # the latest build time (image config `created`)
//! ```
//!
//! Choosing is pure: [`TagPolicy::choose`] takes the tag names (and, for `newest`,
//! [`TagPolicy::choose_by_build_time`] takes each tag's creation time) and returns a [`Choice`]:
//! the chosen tag, if any, and every other tag with the reason it was skipped, so a status can
//! say why a pushed tag was not taken.

use std::cmp::Ordering;
use std::fmt;

use jiff::Timestamp;
use serde::Deserialize;

/// A validated tag policy. Deserialized from the pipeline file (see the module documentation);
/// an invalid range, pattern or capture is an error naming its field.
#[derive(Debug, Clone, Deserialize)]
#[serde(try_from = "RawPolicy")]
pub enum TagPolicy {
    /// The highest semantic version inside a range.
    Semver(Semver),
    /// The tag whose extracted sort key orders first.
    Regex(RegexPolicy),
    /// The tag built last (its image config's `created`).
    Newest(Newest),
}

/// `semver:`: the highest semantic version (a leading `v` allowed) inside `range`.
#[derive(Debug, Clone)]
pub struct Semver {
    range: String,
    alternatives: Vec<semver::VersionReq>,
}

/// `regex:`: tags matching `pattern`, ordered by the capture `extract`.
#[derive(Debug, Clone)]
pub struct RegexPolicy {
    pattern: regex::Regex,
    extract: Capture,
    sort: Sort,
    order: Order,
}

/// `newest:`: the tag whose image was created last, among those matching `pattern`.
#[derive(Debug, Clone)]
pub struct Newest {
    pattern: Option<regex::Regex>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Capture {
    Index(usize),
    Name(String),
}

/// How the sort keys of a `regex` policy compare.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Sort {
    /// As non-negative decimal numbers (`9` before `10`); any other key skips its tag.
    Numerical,
    /// As strings, byte by byte.
    Alphabetical,
}

/// Which end of the order a `regex` policy takes, as Flux's `order`: `asc` sorts ascending and
/// takes the last (the highest key), `desc` sorts descending and takes the last (the lowest).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Order {
    /// The highest key wins.
    #[default]
    Asc,
    /// The lowest key wins.
    Desc,
}

/// What a policy chose from a list of tags.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Choice {
    /// The tag to follow; `None` when no tag qualifies.
    pub chosen: Option<String>,
    /// Every other tag, in the order given, with why it was not chosen.
    pub skipped: Vec<Skipped>,
}

/// A tag the policy did not choose.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    /// The tag.
    pub tag: String,
    /// Why it was not chosen.
    pub reason: SkipReason,
}

/// Why a tag was not chosen. `Display` gives the sentence a status shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SkipReason {
    /// `semver`: the tag is not a semantic version (`MAJOR.MINOR.PATCH`, optional `v`).
    NotAVersion,
    /// `semver`: a prerelease, which the range does not ask for (no comparator of the range
    /// names a prerelease of the same `MAJOR.MINOR.PATCH`).
    Prerelease,
    /// `semver`: a version outside the range.
    OutsideRange,
    /// `regex`, `newest`: the tag does not match the pattern.
    NoMatch,
    /// `regex` with `sort: numerical`: the extracted key is not a number.
    NotANumber {
        /// The extracted key.
        key: String,
    },
    /// `newest`: the registry gave no creation time for the tag's image.
    CreationTimeUnknown,
    /// The tag qualifies, but the chosen one orders before it.
    Superseded {
        /// The chosen tag.
        by: String,
    },
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SkipReason::NotAVersion => f.write_str("not a semantic version"),
            SkipReason::Prerelease => f.write_str("a prerelease, which the range does not ask for"),
            SkipReason::OutsideRange => f.write_str("outside the range"),
            SkipReason::NoMatch => f.write_str("does not match the pattern"),
            SkipReason::NotANumber { key } => write!(f, "its sort key {key:?} is not a number"),
            SkipReason::CreationTimeUnknown => f.write_str("its image has no creation time"),
            SkipReason::Superseded { by } => write!(f, "{by} is chosen over it"),
        }
    }
}

/// An invalid policy: the field (`semver.range`, `regex.pattern`, `regex.extract`,
/// `newest.pattern`) and what is wrong with it.
#[derive(Debug, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct PolicyError {
    /// The field, from the policy's key down.
    pub field: &'static str,
    /// What is wrong with it.
    pub reason: String,
}

impl fmt::Display for TagPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TagPolicy::Semver(p) => write!(f, "semver {}", p.range),
            TagPolicy::Regex(p) => write!(
                f,
                "regex {} by {} ({}, {})",
                p.pattern.as_str(),
                p.extract,
                match p.sort {
                    Sort::Numerical => "numerical",
                    Sort::Alphabetical => "alphabetical",
                },
                match p.order {
                    Order::Asc => "asc",
                    Order::Desc => "desc",
                }
            ),
            TagPolicy::Newest(p) => match &p.pattern {
                Some(pattern) => write!(f, "newest build matching {}", pattern.as_str()),
                None => f.write_str("newest build"),
            },
        }
    }
}

impl fmt::Display for Capture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Capture::Index(i) => write!(f, "capture {i}"),
            Capture::Name(n) => write!(f, "capture {n}"),
        }
    }
}

impl TagPolicy {
    /// A `semver` policy for `range`.
    pub fn semver(range: &str) -> Result<Self, PolicyError> {
        Ok(TagPolicy::Semver(Semver::parse(range)?))
    }

    /// Whether choosing needs each tag's build time: then call
    /// [`TagPolicy::choose_by_build_time`] with the times of [`TagPolicy::candidates`].
    pub fn by_build_time(&self) -> bool {
        matches!(self, TagPolicy::Newest(_))
    }

    /// The tags worth asking the registry a creation time for: those matching a `newest`
    /// policy's pattern (all of `tags` for the other policies).
    pub fn candidates<'t>(&self, tags: &'t [String]) -> Vec<&'t String> {
        match self {
            TagPolicy::Newest(Newest {
                pattern: Some(pattern),
            }) => tags.iter().filter(|t| pattern.is_match(t)).collect(),
            _ => tags.iter().collect(),
        }
    }

    /// Chooses among `tags` by name. A `newest` policy cannot choose by name: every tag it
    /// would consider is skipped as [`SkipReason::CreationTimeUnknown`].
    pub fn choose(&self, tags: &[String]) -> Choice {
        match self {
            TagPolicy::Semver(policy) => policy.choose(tags),
            TagPolicy::Regex(policy) => policy.choose(tags),
            TagPolicy::Newest(policy) => {
                let timed: Vec<(String, Option<Timestamp>)> =
                    tags.iter().map(|t| (t.clone(), None)).collect();
                policy.choose(&timed)
            }
        }
    }

    /// Chooses among `tags`, each with its image's creation time when the registry gave one.
    /// Only `newest` reads the times; the other policies choose by name as [`TagPolicy::choose`].
    pub fn choose_by_build_time(&self, tags: &[(String, Option<Timestamp>)]) -> Choice {
        match self {
            TagPolicy::Newest(policy) => policy.choose(tags),
            _ => {
                let names: Vec<String> = tags.iter().map(|(t, _)| t.clone()).collect();
                self.choose(&names)
            }
        }
    }
}

/// Takes the best of `ranked` (tags that qualify, each with its key) by `better`, and reports
/// the others as superseded after the ones `rejected` already holds, in the order of `tags`.
fn finish<K>(
    tags: &[String],
    mut rejected: Vec<Option<SkipReason>>,
    ranked: Vec<(usize, K)>,
    better: impl Fn(&K, &K) -> Ordering,
) -> Choice {
    // Ties go to the tag whose name sorts last, so the choice does not depend on list order.
    let best = ranked
        .iter()
        .max_by(|(a, ka), (b, kb)| better(ka, kb).then_with(|| tags[*a].cmp(&tags[*b])))
        .map(|(i, _)| *i);
    let Some(best) = best else {
        return Choice {
            chosen: None,
            skipped: tags
                .iter()
                .zip(rejected)
                .map(|(tag, reason)| Skipped {
                    tag: tag.clone(),
                    reason: reason.expect("a tag that did not qualify has a reason"),
                })
                .collect(),
        };
    };
    let chosen = tags[best].clone();
    for (i, _) in &ranked {
        if *i != best {
            rejected[*i] = Some(SkipReason::Superseded { by: chosen.clone() });
        }
    }
    let skipped = tags
        .iter()
        .zip(rejected)
        .enumerate()
        .filter(|(i, _)| *i != best)
        .map(|(_, (tag, reason))| Skipped {
            tag: tag.clone(),
            reason: reason.expect("every tag but the chosen one has a reason"),
        })
        .collect();
    Choice {
        chosen: Some(chosen),
        skipped,
    }
}

impl Semver {
    /// Parses a range: comparators separated by commas or spaces (all must hold), alternatives
    /// separated by `||`. Comparators follow Cargo's syntax: `>=1.2.0`, `<2`, `~1.2`, `^1.2`,
    /// `1.*`, and a bare `1.2.3` means `^1.2.3`.
    fn parse(range: &str) -> Result<Self, PolicyError> {
        let invalid = |reason: String| PolicyError {
            field: "semver.range",
            reason,
        };
        if range.trim().is_empty() {
            return Err(invalid("the range is empty".to_owned()));
        }
        let alternatives = range
            .split("||")
            .map(|alternative| {
                let comparators = join_comparators(alternative);
                if comparators.is_empty() {
                    return Err(invalid(format!("{range:?} has an empty alternative")));
                }
                semver::VersionReq::parse(&comparators)
                    .map_err(|e| invalid(format!("{range:?} is not a version range: {e}")))
            })
            .collect::<Result<_, _>>()?;
        Ok(Semver {
            range: range.to_owned(),
            alternatives,
        })
    }

    fn matches(&self, version: &semver::Version) -> bool {
        self.alternatives.iter().any(|req| req.matches(version))
    }

    fn choose(&self, tags: &[String]) -> Choice {
        let mut rejected = Vec::with_capacity(tags.len());
        let mut ranked = Vec::new();
        for (i, tag) in tags.iter().enumerate() {
            let reason = match parse_version(tag) {
                None => Some(SkipReason::NotAVersion),
                Some(version) if self.matches(&version) => {
                    ranked.push((i, version));
                    None
                }
                Some(version) if !version.pre.is_empty() => {
                    let released =
                        semver::Version::new(version.major, version.minor, version.patch);
                    Some(if self.matches(&released) {
                        SkipReason::Prerelease
                    } else {
                        SkipReason::OutsideRange
                    })
                }
                Some(_) => Some(SkipReason::OutsideRange),
            };
            rejected.push(reason);
        }
        finish(tags, rejected, ranked, |a, b| a.cmp_precedence(b))
    }
}

/// Turns `>= 1.2.0 <2` or `>=1.2.0, <2` into Cargo's `>=1.2.0, <2`: an operator standing alone
/// joins the version after it.
fn join_comparators(alternative: &str) -> String {
    let mut comparators: Vec<String> = Vec::new();
    let mut pending_operator = String::new();
    for word in alternative
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|w| !w.is_empty())
    {
        if word.chars().all(|c| "<>=~^".contains(c)) {
            pending_operator.push_str(word);
        } else {
            comparators.push(format!("{}{word}", std::mem::take(&mut pending_operator)));
        }
    }
    if !pending_operator.is_empty() {
        comparators.push(pending_operator);
    }
    comparators.join(", ")
}

/// A tag as a semantic version: `1.2.3`, `v1.2.3`, `1.2.3-rc.1+build.5`.
fn parse_version(tag: &str) -> Option<semver::Version> {
    let text = tag
        .strip_prefix('v')
        .or_else(|| tag.strip_prefix('V'))
        .unwrap_or(tag);
    semver::Version::parse(text).ok()
}

impl RegexPolicy {
    fn choose(&self, tags: &[String]) -> Choice {
        let mut rejected = Vec::with_capacity(tags.len());
        let mut ranked = Vec::new();
        for (i, tag) in tags.iter().enumerate() {
            let key = self.pattern.captures(tag).map(|captures| {
                let group = match &self.extract {
                    Capture::Index(n) => captures.get(*n),
                    Capture::Name(name) => captures.name(name),
                };
                group.map_or("", |m| m.as_str()).to_owned()
            });
            let reason = match key {
                None => Some(SkipReason::NoMatch),
                Some(key) => match self.sort {
                    Sort::Alphabetical => {
                        ranked.push((i, Key::Text(key)));
                        None
                    }
                    Sort::Numerical => match Decimal::parse(&key) {
                        Some(number) => {
                            ranked.push((i, Key::Number(number)));
                            None
                        }
                        None => Some(SkipReason::NotANumber { key }),
                    },
                },
            };
            rejected.push(reason);
        }
        let order = self.order;
        finish(tags, rejected, ranked, move |a, b| {
            let ascending = a.cmp(b);
            match order {
                Order::Asc => ascending,
                Order::Desc => ascending.reverse(),
            }
        })
    }
}

#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Key {
    Text(String),
    Number(Decimal),
}

/// A non-negative decimal compared exactly, whatever its length (build numbers and timestamps
/// can exceed what a float holds exactly).
#[derive(Debug, PartialEq, Eq)]
struct Decimal {
    /// The integer part without leading zeros.
    integer: String,
    /// The fraction part without trailing zeros.
    fraction: String,
}

impl Decimal {
    fn parse(text: &str) -> Option<Self> {
        let (integer, fraction) = text.split_once('.').unwrap_or((text, ""));
        let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
        if integer.is_empty() || !digits(integer) || !digits(fraction) || text.ends_with('.') {
            return None;
        }
        Some(Decimal {
            integer: integer.trim_start_matches('0').to_owned(),
            fraction: fraction.trim_end_matches('0').to_owned(),
        })
    }
}

impl Ord for Decimal {
    fn cmp(&self, other: &Self) -> Ordering {
        self.integer
            .len()
            .cmp(&other.integer.len())
            .then_with(|| self.integer.cmp(&other.integer))
            .then_with(|| self.fraction.cmp(&other.fraction))
    }
}

impl PartialOrd for Decimal {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Newest {
    fn choose(&self, tags: &[(String, Option<Timestamp>)]) -> Choice {
        let names: Vec<String> = tags.iter().map(|(t, _)| t.clone()).collect();
        let mut rejected = Vec::with_capacity(tags.len());
        let mut ranked = Vec::new();
        for (i, (tag, created)) in tags.iter().enumerate() {
            let reason = match (&self.pattern, created) {
                (Some(pattern), _) if !pattern.is_match(tag) => Some(SkipReason::NoMatch),
                (_, None) => Some(SkipReason::CreationTimeUnknown),
                (_, Some(created)) => {
                    ranked.push((i, *created));
                    None
                }
            };
            rejected.push(reason);
        }
        finish(&names, rejected, ranked, |a, b| a.cmp(b))
    }
}

/// The policy as written, before its range and patterns are checked: a map with exactly one
/// of the keys. A struct rather than an enum, as serde_yaml_ng reads enums from YAML tags.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawPolicy {
    #[serde(default)]
    semver: Option<RawSemver>,
    #[serde(default)]
    regex: Option<RawRegex>,
    #[serde(default)]
    newest: Option<RawNewest>,
}

/// `semver: ">=1.2 <2"` or `semver: {range: ">=1.2 <2"}`.
enum RawSemver {
    Range(String),
    Map(RawSemverMap),
}

impl<'de> Deserialize<'de> for RawSemver {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = RawSemver;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a version range, or a map with `range`")
            }
            fn visit_str<E: serde::de::Error>(self, range: &str) -> Result<RawSemver, E> {
                Ok(RawSemver::Range(range.to_owned()))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<RawSemver, A::Error> {
                RawSemverMap::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(RawSemver::Map)
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawSemverMap {
    range: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawRegex {
    pattern: String,
    /// A capture group's name or number; the whole match when absent.
    #[serde(default)]
    extract: Option<CaptureRef>,
    sort: Sort,
    #[serde(default)]
    order: Order,
}

/// `extract: ts`, `extract: 1` or `extract: '1'`.
#[derive(Deserialize)]
#[serde(untagged)]
enum CaptureRef {
    Number(usize),
    Text(String),
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawNewest {
    #[serde(default)]
    pattern: Option<String>,
}

/// The longest pattern accepted; tags are at most 128 characters, patterns need not be novels.
const MAX_PATTERN_LEN: usize = 1024;

fn compile(field: &'static str, pattern: &str) -> Result<regex::Regex, PolicyError> {
    if pattern.len() > MAX_PATTERN_LEN {
        return Err(PolicyError {
            field,
            reason: format!("longer than {MAX_PATTERN_LEN} characters"),
        });
    }
    regex::RegexBuilder::new(pattern)
        .size_limit(1 << 20)
        .build()
        .map_err(|e| PolicyError {
            field,
            reason: format!("not a regular expression: {e}"),
        })
}

impl TryFrom<RawPolicy> for TagPolicy {
    type Error = PolicyError;

    fn try_from(raw: RawPolicy) -> Result<Self, PolicyError> {
        match (raw.semver, raw.regex, raw.newest) {
            (Some(RawSemver::Range(range)), None, None) => TagPolicy::semver(&range),
            (Some(RawSemver::Map(raw)), None, None) => TagPolicy::semver(&raw.range),
            (None, Some(raw), None) => {
                let pattern = compile("regex.pattern", &raw.pattern)?;
                let extract = match raw.extract {
                    None => Capture::Index(0),
                    Some(reference) => {
                        let (capture, text) = match reference {
                            CaptureRef::Number(n) => (Capture::Index(n), n.to_string()),
                            CaptureRef::Text(text) => match text.parse::<usize>() {
                                Ok(n) => (Capture::Index(n), text),
                                Err(_) => (Capture::Name(text.clone()), text),
                            },
                        };
                        let exists = match &capture {
                            Capture::Index(n) => *n < pattern.captures_len(),
                            Capture::Name(name) => {
                                pattern.capture_names().flatten().any(|c| c == name)
                            }
                        };
                        if !exists {
                            return Err(PolicyError {
                                field: "regex.extract",
                                reason: format!(
                                    "{text:?} is not a capture group of the pattern (a name of \
                                     a (?P<name>...) group or a group's number)"
                                ),
                            });
                        }
                        capture
                    }
                };
                Ok(TagPolicy::Regex(RegexPolicy {
                    pattern,
                    extract,
                    sort: raw.sort,
                    order: raw.order,
                }))
            }
            (None, None, Some(raw)) => Ok(TagPolicy::Newest(Newest {
                pattern: raw
                    .pattern
                    .as_deref()
                    .map(|p| compile("newest.pattern", p))
                    .transpose()?,
            })),
            _ => Err(PolicyError {
                field: "semver, regex, newest",
                reason: "exactly one of them is needed".to_owned(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(yaml: &str) -> TagPolicy {
        serde_yaml_ng::from_str(yaml).expect("a valid policy")
    }

    fn refused(yaml: &str) -> String {
        serde_yaml_ng::from_str::<TagPolicy>(yaml)
            .expect_err("an invalid policy")
            .to_string()
    }

    fn tags(list: &[&str]) -> Vec<String> {
        list.iter().map(|t| (*t).to_owned()).collect()
    }

    fn reason(choice: &Choice, tag: &str) -> SkipReason {
        choice
            .skipped
            .iter()
            .find(|s| s.tag == tag)
            .unwrap_or_else(|| panic!("{tag} is among the skipped: {choice:?}"))
            .reason
            .clone()
    }

    #[test]
    fn semver_takes_the_highest_version_in_the_range_with_or_without_a_v() {
        let p = policy("semver: {range: '>=1.0.0, <2.0.0'}");
        let choice = p.choose(&tags(&[
            "1.0.0", "v1.10.0", "1.9.3", "2.0.0", "latest", "1.2",
        ]));
        assert_eq!(choice.chosen.as_deref(), Some("v1.10.0"));
        assert_eq!(reason(&choice, "2.0.0"), SkipReason::OutsideRange);
        assert_eq!(reason(&choice, "latest"), SkipReason::NotAVersion);
        assert_eq!(reason(&choice, "1.2"), SkipReason::NotAVersion);
        assert_eq!(
            reason(&choice, "1.9.3"),
            SkipReason::Superseded {
                by: "v1.10.0".into()
            }
        );
        assert_eq!(choice.skipped.len(), 5, "every other tag is reported");
        let order: Vec<&str> = choice.skipped.iter().map(|s| s.tag.as_str()).collect();
        assert_eq!(order, ["1.0.0", "1.9.3", "2.0.0", "latest", "1.2"]);
    }

    #[test]
    fn a_semver_range_may_be_written_alone() {
        let p = policy("semver: '>=1.2 <2'");
        let choice = p.choose(&tags(&["1.1.0", "1.9.0", "2.0.0"]));
        assert_eq!(choice.chosen.as_deref(), Some("1.9.0"));
        assert_eq!(p.to_string(), "semver >=1.2 <2");
    }

    #[test]
    fn semver_ranges_in_npm_spelling_and_alternatives_are_understood() {
        let p = policy("semver: {range: '>= 1.2.0 < 1.4.0 || ~3.1'}");
        let all = tags(&["1.1.9", "1.3.7", "1.4.0", "3.1.4", "3.2.0"]);
        assert_eq!(p.choose(&all).chosen.as_deref(), Some("3.1.4"));
        let p = policy("semver: {range: '>=1.2.0 <1.4.0'}");
        assert_eq!(p.choose(&all).chosen.as_deref(), Some("1.3.7"));
        let p = policy("semver: {range: '1.*'}");
        assert_eq!(p.choose(&all).chosen.as_deref(), Some("1.4.0"));
    }

    #[test]
    fn prereleases_are_skipped_unless_the_range_names_one() {
        let all = tags(&["1.2.0", "1.3.0-rc.1", "1.3.0-rc.2", "2.0.0-beta.1"]);
        let p = policy("semver: {range: '>=1.0.0'}");
        let choice = p.choose(&all);
        assert_eq!(choice.chosen.as_deref(), Some("1.2.0"));
        assert_eq!(reason(&choice, "1.3.0-rc.1"), SkipReason::Prerelease);
        assert_eq!(reason(&choice, "2.0.0-beta.1"), SkipReason::Prerelease);

        let p = policy("semver: {range: '>=1.3.0-rc.0'}");
        let choice = p.choose(&all);
        assert_eq!(choice.chosen.as_deref(), Some("1.3.0-rc.2"), "{choice:?}");
        // Only 1.3.0's prereleases are asked for, not 2.0.0's.
        assert_eq!(reason(&choice, "2.0.0-beta.1"), SkipReason::Prerelease);

        let p = policy("semver: {range: '<1.0.0'}");
        assert_eq!(
            reason(&p.choose(&all), "1.3.0-rc.1"),
            SkipReason::OutsideRange
        );
    }

    #[test]
    fn a_release_outranks_its_prereleases_and_build_metadata_does_not_count() {
        let p = policy("semver: {range: '>=1.0.0-0'}");
        let choice = p.choose(&tags(&["1.0.0-rc.1", "1.0.0", "1.0.0-rc.2"]));
        assert_eq!(choice.chosen.as_deref(), Some("1.0.0"));
        let p = policy("semver: {range: '>=1.0.0'}");
        let choice = p.choose(&tags(&["1.0.0+b", "1.0.0+a"]));
        assert_eq!(
            choice.chosen.as_deref(),
            Some("1.0.0+b"),
            "a tie goes to the last name"
        );
    }

    #[test]
    fn nothing_is_chosen_from_no_tags_or_none_in_range() {
        let p = policy("semver: {range: '>=5'}");
        assert_eq!(p.choose(&[]), Choice::default());
        let choice = p.choose(&tags(&["1.0.0", "main"]));
        assert_eq!(choice.chosen, None);
        assert_eq!(choice.skipped.len(), 2);
        let p = policy("regex: {pattern: '^build-(\\d+)$', extract: '1', sort: numerical}");
        assert_eq!(p.choose(&tags(&["main", "latest"])).chosen, None);
    }

    #[test]
    fn regex_orders_numerically_not_by_text() {
        let p = policy(
            "regex: {pattern: '^main-[0-9a-f]+-(?P<ts>\\d+)$', extract: ts, sort: numerical}",
        );
        let all = tags(&[
            "main-abc-9",
            "main-def-10",
            "main-0a1-100",
            "feature-x-1000",
            "main-fff-x",
        ]);
        let choice = p.choose(&all);
        assert_eq!(choice.chosen.as_deref(), Some("main-0a1-100"));
        assert_eq!(reason(&choice, "feature-x-1000"), SkipReason::NoMatch);
        assert_eq!(reason(&choice, "main-fff-x"), SkipReason::NoMatch);

        let p = policy(
            "regex: {pattern: '^main-[0-9a-f]+-(?P<ts>\\d+)$', extract: ts, sort: numerical, order: desc}",
        );
        assert_eq!(p.choose(&all).chosen.as_deref(), Some("main-abc-9"));
    }

    #[test]
    fn numerical_keys_compare_exactly_beyond_a_float_and_with_fractions() {
        let p = policy("regex: {pattern: '^b(.*)$', extract: '1', sort: numerical}");
        let all = tags(&[
            "b90071992547409930",
            "b90071992547409931",
            "b0099",
            "b1.5",
            "b1.25",
            "b1.x",
        ]);
        let choice = p.choose(&all);
        assert_eq!(choice.chosen.as_deref(), Some("b90071992547409931"));
        assert_eq!(
            reason(&choice, "b1.x"),
            SkipReason::NotANumber { key: "1.x".into() }
        );
        let p = policy("regex: {pattern: '^b(.*)$', extract: '1', sort: numerical, order: desc}");
        let choice = p.choose(&tags(&["b0099", "b1.5", "b1.25", "b2"]));
        assert_eq!(choice.chosen.as_deref(), Some("b1.25"));
        let choice = p.choose(&tags(&["b100", "b0099"]));
        assert_eq!(choice.chosen.as_deref(), Some("b0099"));
    }

    #[test]
    fn regex_alphabetical_and_the_whole_match_by_default() {
        let p = policy("regex: {pattern: '^release-.*', sort: alphabetical}");
        let choice = p.choose(&tags(&["release-a", "release-c", "release-b", "main"]));
        assert_eq!(choice.chosen.as_deref(), Some("release-c"));
        let p = policy(
            "regex: {pattern: '^(release)-(.*)', extract: 2, sort: alphabetical, order: desc}",
        );
        let choice = p.choose(&tags(&["release-b", "release-a"]));
        assert_eq!(choice.chosen.as_deref(), Some("release-a"));
    }

    #[test]
    fn newest_takes_the_latest_build_and_reports_unknown_times() {
        let p = policy("newest: {pattern: '^main-'}");
        assert!(p.by_build_time());
        let t = |s: &str| Some(s.parse::<Timestamp>().expect("a timestamp"));
        let timed = vec![
            ("main-a".to_owned(), t("2026-01-01T00:00:00Z")),
            ("main-b".to_owned(), t("2026-03-01T00:00:00Z")),
            ("main-c".to_owned(), None),
            ("pr-9".to_owned(), t("2026-06-01T00:00:00Z")),
        ];
        let all: Vec<String> = timed.iter().map(|(t, _)| t.clone()).collect();
        assert_eq!(p.candidates(&all), ["main-a", "main-b", "main-c"]);
        let choice = p.choose_by_build_time(&timed);
        assert_eq!(choice.chosen.as_deref(), Some("main-b"));
        assert_eq!(reason(&choice, "main-c"), SkipReason::CreationTimeUnknown);
        assert_eq!(reason(&choice, "pr-9"), SkipReason::NoMatch);
        assert_eq!(
            reason(&choice, "main-a"),
            SkipReason::Superseded {
                by: "main-b".into()
            }
        );
        let by_name = p.choose(&all);
        assert_eq!(by_name.chosen, None);
        assert_eq!(reason(&by_name, "main-a"), SkipReason::CreationTimeUnknown);
        let any = policy("newest: {}").choose_by_build_time(&timed);
        assert_eq!(any.chosen.as_deref(), Some("pr-9"));
    }

    #[test]
    fn the_other_policies_ignore_build_times() {
        let p = policy("semver: {range: '*'}");
        assert!(!p.by_build_time());
        let timed = vec![
            ("1.0.0".to_owned(), Some(Timestamp::UNIX_EPOCH)),
            ("0.9.0".to_owned(), None),
        ];
        assert_eq!(
            p.choose_by_build_time(&timed).chosen.as_deref(),
            Some("1.0.0")
        );
    }

    #[test]
    fn invalid_policies_are_refused_naming_the_field() {
        let e = refused("semver: {range: '>=banana'}");
        assert!(e.contains("semver.range") && e.contains(">=banana"), "{e}");
        let e = refused("semver: {range: ''}");
        assert!(e.contains("semver.range"), "{e}");
        let e = refused("semver: {range: '>=1 ||'}");
        assert!(
            e.contains("semver.range") && e.contains("empty alternative"),
            "{e}"
        );
        let e = refused("regex: {pattern: '(', sort: numerical}");
        assert!(e.contains("regex.pattern"), "{e}");
        let e = refused("regex: {pattern: '(?P<ts>\\d+)', extract: build, sort: numerical}");
        assert!(
            e.contains("regex.extract") && e.contains("\"build\""),
            "{e}"
        );
        let e = refused("regex: {pattern: '(\\d+)', extract: '2', sort: numerical}");
        assert!(e.contains("regex.extract"), "{e}");
        let e = refused("regex: {pattern: 'x', sort: sideways}");
        assert!(e.contains("sideways"), "{e}");
        let e = refused("semver: {range: '*', prereleases: true}");
        assert!(e.contains("prereleases"), "{e}");
        let e = refused("semver: [1]");
        assert!(e.contains("a version range, or a map with `range`"), "{e}");
        let e = refused("latest: {}");
        assert!(e.contains("latest"), "{e}");
        let e = refused("{}");
        assert!(e.contains("exactly one"), "{e}");
        let e = refused("{semver: {range: '*'}, newest: {}}");
        assert!(e.contains("exactly one"), "{e}");
        let e = refused("newest: {pattern: '['}");
        assert!(e.contains("newest.pattern"), "{e}");
    }

    #[test]
    fn a_policy_describes_itself() {
        assert_eq!(policy("semver: {range: '^1.2'}").to_string(), "semver ^1.2");
        assert_eq!(
            policy("regex: {pattern: '^b-(\\d+)$', extract: '1', sort: numerical}").to_string(),
            "regex ^b-(\\d+)$ by capture 1 (numerical, asc)"
        );
        assert_eq!(policy("newest: {}").to_string(), "newest build");
    }
}
