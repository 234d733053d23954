//! Which SSH keys may sign commits, in OpenSSH's `allowed_signers` format (ssh-keygen(1),
//! "ALLOWED SIGNERS"), and the check of one commit's signature against them, as
//! `git verify-commit` does with `gpg.format = ssh` and `gpg.ssh.allowedSignersFile`.
//!
//! A line is `principals [options] keytype base64-key [comment]`:
//!
//! ```text
//! alice@example.com ssh-ed25519 AAAAC3Nza... alice's laptop
//! bob@example.com,robert@example.com namespaces="git",valid-after="20260101" ssh-ed25519 AAAA...
//! ```
//!
//! Principals and `namespaces` are comma-separated pattern lists (`*`, `?`, a leading `!`
//! excludes), `valid-after`/`valid-before` are `YYYYMMDD[HHMM[SS]]` in the system's time zone or
//! UTC with a trailing `Z`, compared with the commit's committer time as git asks ssh-keygen
//! to. Certificate authorities (`cert-authority`) are not supported and are an error naming the
//! line. Blank lines and `#` comments are skipped.

use std::path::Path;
use std::str::FromStr as _;

use ssh_key::{Algorithm, HashAlg, PublicKey, SshSig};

use super::sign::NAMESPACE;

/// The largest allowed-signers file read: far above any real list of people's keys.
const MAX_BYTES: u64 = 1 << 20;

/// The keys of an allowed-signers file, parsed.
#[derive(Debug, Clone)]
pub struct AllowedSigners {
    origin: String,
    entries: Vec<Entry>,
}

#[derive(Debug, Clone)]
struct Entry {
    principals: Vec<String>,
    namespaces: Option<Vec<String>>,
    valid_after: Option<i64>,
    valid_before: Option<i64>,
    key: PublicKey,
}

/// Why an allowed-signers file cannot be used; names the file (or Secret entry) and the line.
#[derive(Debug, thiserror::Error)]
#[allow(missing_docs)]
pub enum Error {
    #[error("allowed signers file {origin}: cannot read it")]
    Read {
        origin: String,
        #[source]
        source: std::io::Error,
    },
    #[error("allowed signers file {origin}: larger than {MAX_BYTES} bytes")]
    TooLarge { origin: String },
    #[error("allowed signers file {origin}: not UTF-8 text")]
    NotText { origin: String },
    #[error("allowed signers {origin}: {problem}")]
    Unavailable { origin: String, problem: String },
    #[error("allowed signers file {origin}, line {line}: {problem}")]
    Line {
        origin: String,
        line: usize,
        problem: String,
    },
}

/// How a commit's signature checked out against an allowed-signers file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// A valid signature, in namespace `git`, by a key the file allows at the commit's time.
    Good {
        /// The literal principals (no patterns) of the lines that allow the key, lowercased:
        /// who signed, typically e-mails. Empty when those lines only hold patterns.
        principals: Vec<String>,
        /// The key's SHA-256 fingerprint.
        fingerprint: String,
    },
    /// No `gpgsig` header.
    Unsigned,
    /// A signature in another format (OpenPGP, X.509), which is not checked.
    OtherFormat {
        /// `OpenPGP`, `X.509`, or `unknown`.
        format: &'static str,
    },
    /// Signed by a key the file does not allow (not listed, or not for `git` or that time).
    UnknownKey {
        /// The key's SHA-256 fingerprint.
        fingerprint: String,
    },
    /// The signature cannot be read, is for another namespace, or does not match the commit.
    Bad {
        /// What is wrong with it.
        reason: String,
    },
}

impl Verdict {
    /// Whether the commit is signed by an allowed key.
    pub fn is_good(&self) -> bool {
        matches!(self, Verdict::Good { .. })
    }
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Verdict::Good {
                principals,
                fingerprint,
            } => write!(
                f,
                "good signature by {fingerprint} ({})",
                principals.join(", ")
            ),
            Verdict::Unsigned => f.write_str("unsigned"),
            Verdict::OtherFormat { format } => {
                write!(
                    f,
                    "signed with {format}, not SSH; only SSH signatures are checked"
                )
            }
            Verdict::UnknownKey { fingerprint } => write!(
                f,
                "signed by an unknown key {fingerprint} (not in the allowed signers file for \
                 namespace \"git\" at the commit's time)"
            ),
            Verdict::Bad { reason } => write!(f, "bad signature: {reason}"),
        }
    }
}

impl AllowedSigners {
    /// Reads and parses the file at `path`.
    pub fn load(path: &Path) -> Result<Self, Error> {
        use std::io::Read as _;
        let origin = path.display().to_string();
        let read = |source| Error::Read {
            origin: origin.clone(),
            source,
        };
        let mut bytes = Vec::new();
        std::fs::File::open(path)
            .map_err(read)?
            .take(MAX_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(read)?;
        Self::parse(origin, &bytes)
    }

    /// Parses the content of an allowed-signers file; `origin` names it in errors.
    pub fn parse(origin: impl Into<String>, bytes: &[u8]) -> Result<Self, Error> {
        let origin = origin.into();
        if bytes.len() as u64 > MAX_BYTES {
            return Err(Error::TooLarge { origin });
        }
        let text = std::str::from_utf8(bytes).map_err(|_| Error::NotText {
            origin: origin.clone(),
        })?;
        let mut entries = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            entries.push(parse_line(line).map_err(|problem| Error::Line {
                origin: origin.clone(),
                line: i + 1,
                problem,
            })?);
        }
        Ok(Self { origin, entries })
    }

    /// Where the file came from.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// Checks a commit's signature: `signature` is the value of its `gpgsig` header (`None`
    /// when it has none), `payload` the commit object without that header, `time` its committer
    /// time in seconds since the Unix epoch.
    pub fn check(&self, signature: Option<&[u8]>, payload: &[u8], time: i64) -> Verdict {
        let Some(armored) = signature else {
            return Verdict::Unsigned;
        };
        let armored = trim_start(armored);
        if !armored.starts_with(b"-----BEGIN SSH SIGNATURE-----") {
            let format = if armored.starts_with(b"-----BEGIN PGP SIGNATURE-----") {
                "OpenPGP"
            } else if armored.starts_with(b"-----BEGIN SIGNED MESSAGE-----") {
                "X.509"
            } else {
                "unknown"
            };
            return Verdict::OtherFormat { format };
        }
        let sig = match SshSig::from_pem(armored) {
            Ok(sig) => sig,
            Err(e) => {
                return Verdict::Bad {
                    reason: format!("cannot read it: {e}"),
                };
            }
        };
        if sig.namespace() != NAMESPACE {
            return Verdict::Bad {
                reason: format!(
                    "made for namespace {:?}, not {NAMESPACE:?}",
                    sig.namespace()
                ),
            };
        }
        let key = PublicKey::new(sig.public_key().clone(), "");
        let fingerprint = key.fingerprint(HashAlg::Sha256).to_string();
        let allowing: Vec<&Entry> = self
            .entries
            .iter()
            .filter(|e| e.key.key_data() == key.key_data() && e.allows(time))
            .collect();
        if allowing.is_empty() {
            return Verdict::UnknownKey { fingerprint };
        }
        if let Err(e) = key.verify(NAMESPACE, payload, &sig) {
            return Verdict::Bad {
                reason: format!("it does not match the commit ({e})"),
            };
        }
        let mut principals: Vec<String> = Vec::new();
        for principal in allowing.iter().flat_map(|e| &e.principals) {
            if principal.contains(['*', '?', '!']) {
                continue;
            }
            let principal = principal.to_lowercase();
            if !principals.contains(&principal) {
                principals.push(principal);
            }
        }
        Verdict::Good {
            principals,
            fingerprint,
        }
    }
}

impl Entry {
    /// Whether this line allows its key to sign commits at `time`.
    fn allows(&self, time: i64) -> bool {
        self.namespaces
            .as_ref()
            .is_none_or(|patterns| matches_list(NAMESPACE, patterns))
            && self.valid_after.is_none_or(|after| time >= after)
            && self.valid_before.is_none_or(|before| time <= before)
    }
}

fn trim_start(bytes: &[u8]) -> &[u8] {
    let start = bytes
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(bytes.len());
    &bytes[start..]
}

/// Splits off the first field of `line`: up to the first unquoted space or tab.
fn field(line: &str) -> (&str, &str) {
    let mut quoted = false;
    for (i, c) in line.char_indices() {
        match c {
            '"' => quoted = !quoted,
            ' ' | '\t' if !quoted => return (&line[..i], line[i..].trim_start()),
            _ => {}
        }
    }
    (line, "")
}

fn parse_line(line: &str) -> Result<Entry, String> {
    let (principals, rest) = field(line);
    let principals: Vec<String> = principals
        .trim_matches('"')
        .split(',')
        .map(str::to_owned)
        .collect();
    if principals.iter().any(String::is_empty) {
        return Err("an empty principal".into());
    }
    let (next, after) = field(rest);
    if next.is_empty() {
        return Err("no key after the principals".into());
    }
    let (options, key_text) = if Algorithm::from_str(next).is_ok() {
        ("", rest)
    } else {
        (next, after)
    };
    let mut entry = Entry {
        principals,
        namespaces: None,
        valid_after: None,
        valid_before: None,
        key: parse_key(key_text)?,
    };
    for option in split_options(options) {
        let (name, value) = match option.split_once('=') {
            Some((name, value)) => (name, Some(value.trim_matches('"'))),
            None => (option, None),
        };
        match (name.to_ascii_lowercase().as_str(), value) {
            ("namespaces", Some(list)) => {
                entry.namespaces = Some(list.split(',').map(str::to_owned).collect());
            }
            ("valid-after", Some(time)) => entry.valid_after = Some(timestamp(time)?),
            ("valid-before", Some(time)) => entry.valid_before = Some(timestamp(time)?),
            ("cert-authority", _) => {
                return Err("cert-authority is not supported; list each signer's own key".into());
            }
            (other, _) => return Err(format!("unknown or malformed option {other:?}")),
        }
    }
    Ok(entry)
}

/// The public key of `keytype base64 [comment]`.
fn parse_key(text: &str) -> Result<PublicKey, String> {
    let (algorithm, rest) = field(text);
    let (base64, _comment) = field(rest);
    if base64.is_empty() {
        return Err("no key after the options".into());
    }
    PublicKey::from_openssh(&format!("{algorithm} {base64}"))
        .map_err(|e| format!("not an SSH public key ({algorithm}): {e}"))
}

/// The options of a line, split at commas outside quotes.
fn split_options(options: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut start, mut quoted) = (0, false);
    for (i, c) in options.char_indices() {
        match c {
            '"' => quoted = !quoted,
            ',' if !quoted => {
                parts.push(&options[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if start < options.len() {
        parts.push(&options[start..]);
    }
    parts
}

/// `YYYYMMDD[HHMM[SS]][Z]` as seconds since the Unix epoch: UTC with `Z`, else the system's
/// time zone, as ssh-keygen reads it.
fn timestamp(text: &str) -> Result<i64, String> {
    let bad = || format!("timestamp {text:?}: expected YYYYMMDD[HHMM[SS]][Z]");
    let (digits, utc) = match text.strip_suffix(['Z', 'z']) {
        Some(digits) => (digits, true),
        None => (text, false),
    };
    if !digits.bytes().all(|b| b.is_ascii_digit()) || ![8, 12, 14].contains(&digits.len()) {
        return Err(bad());
    }
    let number = |range: std::ops::Range<usize>| -> Result<i16, String> {
        digits
            .get(range)
            .map_or(Ok(0), |d| d.parse::<i16>().map_err(|_| bad()))
    };
    let small = |n: i16| i8::try_from(n).map_err(|_| bad());
    let datetime = jiff::civil::DateTime::new(
        number(0..4)?,
        small(number(4..6)?)?,
        small(number(6..8)?)?,
        small(number(8..10)?)?,
        small(number(10..12)?)?,
        small(number(12..14)?)?,
        0,
    )
    .map_err(|_| bad())?;
    let zone = if utc {
        jiff::tz::TimeZone::UTC
    } else {
        jiff::tz::TimeZone::system()
    };
    Ok(datetime
        .to_zoned(zone)
        .map_err(|_| bad())?
        .timestamp()
        .as_second())
}

/// OpenSSH's pattern lists: a match of a negated pattern (`!p`) refuses, else any positive
/// match accepts.
fn matches_list(value: &str, patterns: &[String]) -> bool {
    let mut matched = false;
    for pattern in patterns {
        match pattern.strip_prefix('!') {
            Some(negated) if wildcard(value.as_bytes(), negated.as_bytes()) => return false,
            Some(_) => {}
            None => matched |= wildcard(value.as_bytes(), pattern.as_bytes()),
        }
    }
    matched
}

/// `*` matches any run of characters, `?` any one.
fn wildcard(value: &[u8], pattern: &[u8]) -> bool {
    match pattern.split_first() {
        None => value.is_empty(),
        Some((b'*', rest)) => (0..=value.len()).any(|skip| wildcard(&value[skip..], rest)),
        Some((b'?', rest)) => !value.is_empty() && wildcard(&value[1..], rest),
        Some((c, rest)) => value.first() == Some(c) && wildcard(&value[1..], rest),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A throwaway key made with `ssh-keygen -t ed25519 -N ''` for these tests only.
    const PRIVATE: &str = "-----BEGIN OPENSSH PRIVATE KEY-----
b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW
QyNTUxOQAAACC3Ma7vGP9W9itH5U6z/aABCEL7rXLtUVhzPmtPzRSNKQAAAIi153f9ted3
/QAAAAtzc2gtZWQyNTUxOQAAACC3Ma7vGP9W9itH5U6z/aABCEL7rXLtUVhzPmtPzRSNKQ
AAAEAuTemMnlzqxwuo/ZRaIGo+8Dcv4YKSIwigVv2QKeejG7cxru8Y/1b2K0flTrP9oAEI
Qvutcu1RWHM+a0/NFI0pAAAABHRlc3QB
-----END OPENSSH PRIVATE KEY-----
";
    const KEY: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAILcxru8Y/1b2K0flTrP9oAEIQvutcu1RWHM+a0/NFI0p";

    #[test]
    fn principals_options_and_comments_are_read() {
        let text = format!(
            "# people\n\nalice@example.com {KEY} alice's laptop\n\
             \"bob@example.com,robert@example.com\" namespaces=\"git,file\",valid-after=\"20260101Z\" {KEY}\n"
        );
        let signers = AllowedSigners::parse("signers", text.as_bytes()).expect("valid");
        assert_eq!(signers.entries.len(), 2);
        assert_eq!(signers.entries[0].principals, ["alice@example.com"]);
        assert_eq!(
            signers.entries[1].principals,
            ["bob@example.com", "robert@example.com"]
        );
        assert_eq!(
            signers.entries[1].namespaces.as_deref(),
            Some(&["git".to_owned(), "file".to_owned()][..])
        );
        assert_eq!(signers.entries[1].valid_after, Some(1_767_225_600));
    }

    #[test]
    fn a_bad_line_is_named_with_its_file_and_number() {
        let cases = [
            (
                format!("a@b cert-authority {KEY}"),
                "cert-authority is not supported",
            ),
            (
                "a@b ssh-ed25519 notbase64".to_owned(),
                "not an SSH public key",
            ),
            (
                format!("a@b valid-after=\"2026\" {KEY}"),
                "timestamp \"2026\"",
            ),
            ("a@b".to_owned(), "no key after the principals"),
            (
                format!("a@b frobnicate {KEY}"),
                "unknown or malformed option \"frobnicate\"",
            ),
        ];
        for (line, expected) in cases {
            let text = format!("# first\n{line}\n");
            let error = AllowedSigners::parse("/etc/signers", text.as_bytes())
                .expect_err("invalid")
                .to_string();
            assert!(
                error.starts_with("allowed signers file /etc/signers, line 2: ")
                    && error.contains(expected),
                "{error}"
            );
        }
    }

    #[test]
    fn pattern_lists_follow_openssh() {
        let list = |l: &str| l.split(',').map(str::to_owned).collect::<Vec<_>>();
        assert!(matches_list("git", &list("git")));
        assert!(matches_list("git", &list("file,g?t")));
        assert!(matches_list("git", &list("*")));
        assert!(!matches_list("git", &list("*,!git")));
        assert!(!matches_list("git", &list("file")));
    }

    /// A commit signed like Stagehand signs, as (signature, payload).
    fn signed_commit(message: &str) -> (Vec<u8>, Vec<u8>) {
        use gix::objs::WriteTo as _;
        let signer = crate::git::sign::Signer::from_bytes("test key", PRIVATE.as_bytes())
            .expect("a valid key");
        let who = gix::actor::Signature {
            name: "A".into(),
            email: "a@example.com".into(),
            time: gix::date::Time::new(1_780_000_000, 0),
        };
        let mut commit = gix::objs::Commit {
            message: message.into(),
            tree: gix::ObjectId::empty_tree(gix::hash::Kind::Sha1),
            author: who.clone(),
            committer: who,
            encoding: None,
            parents: Default::default(),
            extra_headers: Vec::new(),
        };
        signer.sign_commit(&mut commit).expect("signs");
        let (_, signature) = commit.extra_headers.pop().expect("a signature header");
        let mut payload = Vec::new();
        commit.write_to(&mut payload).expect("in memory");
        (signature.to_vec(), payload)
    }

    #[test]
    fn a_signature_by_a_listed_key_names_its_principals_and_a_tampered_commit_fails() {
        let (signature, payload) = signed_commit("release\n");
        let signers = AllowedSigners::parse(
            "s",
            format!("Alice@Example.com,*@example.com namespaces=\"git\" {KEY}").as_bytes(),
        )
        .expect("valid");
        match signers.check(Some(&signature), &payload, 1_780_000_000) {
            Verdict::Good {
                principals,
                fingerprint,
            } => {
                assert_eq!(principals, ["alice@example.com"]);
                assert!(fingerprint.starts_with("SHA256:"), "{fingerprint}");
            }
            other => panic!("{other}"),
        }
        let mut tampered = payload.clone();
        tampered.extend_from_slice(b"more");
        assert!(matches!(
            signers.check(Some(&signature), &tampered, 1_780_000_000),
            Verdict::Bad { .. }
        ));
        let expired = AllowedSigners::parse(
            "s",
            format!("a@b valid-before=\"20250101Z\" {KEY}").as_bytes(),
        )
        .expect("valid");
        assert!(matches!(
            expired.check(Some(&signature), &payload, 1_780_000_000),
            Verdict::UnknownKey { .. }
        ));
        let other_namespace =
            AllowedSigners::parse("s", format!("a@b namespaces=\"file\" {KEY}").as_bytes())
                .expect("valid");
        assert!(matches!(
            other_namespace.check(Some(&signature), &payload, 1_780_000_000),
            Verdict::UnknownKey { .. }
        ));
    }

    #[test]
    fn other_formats_and_missing_signatures_are_not_good() {
        let signers = AllowedSigners::parse("s", format!("a@b {KEY}").as_bytes()).expect("valid");
        assert_eq!(signers.check(None, b"x", 0), Verdict::Unsigned);
        assert_eq!(
            signers.check(Some(b"-----BEGIN PGP SIGNATURE-----\n"), b"x", 0),
            Verdict::OtherFormat { format: "OpenPGP" }
        );
        assert!(matches!(
            signers.check(
                Some(b"-----BEGIN SSH SIGNATURE-----\nAAAA\n-----END SSH SIGNATURE-----\n"),
                b"x",
                0
            ),
            Verdict::Bad { .. }
        ));
    }
}
