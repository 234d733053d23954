//! `ignoreDifferences:` of an environment: fields of some objects that another controller owns
//! (a HorizontalPodAutoscaler's `spec.replicas`, a webhook's `caBundle`), which Stagehand neither
//! heals nor reports as drift once the object exists.
//!
//! ```yaml
//! ignoreDifferences:
//!   - group: apps
//!     kind: Deployment
//!     name: web                        # optional, as is namespace
//!     jsonPointers: [/spec/replicas]   # RFC 6901
//!     fieldPaths: ['spec.template.metadata.annotations["example.com/restartedAt"]']
//!     managedFieldsManagers: [rollout-controller]   # whatever that field manager owns
//! ```
//!
//! Both spellings of a field end up as the same JSON Pointer tokens ([`FieldPath`]); what the
//! cluster module does with them is described in `crate::cluster::ignore`.

use crate::cluster::{FIELD_MANAGER, HASH_ANNOTATION, INVENTORY_LABEL};

/// One rule: which objects, and which of their fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IgnoreRule {
    /// The API group (`apps`; empty for the core group); any group when `None`.
    pub group: Option<String>,
    /// The object kind (`Deployment`).
    pub kind: String,
    /// Only the object of this name; every object of the kind when `None`.
    pub name: Option<String>,
    /// Only objects in this namespace; any namespace when `None`.
    pub namespace: Option<String>,
    /// The fields, from `jsonPointers` then `fieldPaths`.
    pub fields: Vec<FieldPath>,
    /// Field managers whose fields are ignored, whatever they are (`managedFieldsManagers`).
    pub managers: Vec<String>,
}

impl IgnoreRule {
    /// Whether the rule selects the object of this group, kind, namespace and name.
    pub fn selects(&self, group: &str, kind: &str, namespace: Option<&str>, name: &str) -> bool {
        self.kind == kind
            && self.group.as_deref().is_none_or(|g| g == group)
            && self.name.as_deref().is_none_or(|n| n == name)
            && self
                .namespace
                .as_deref()
                .is_none_or(|ns| Some(ns) == namespace)
    }
}

/// A field inside an object as JSON Pointer tokens: a token is a mapping key, or on a list an
/// index (`["spec", "template", "spec", "containers", "0", "image"]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldPath {
    /// The tokens, unescaped; never empty.
    pub tokens: Vec<String>,
}

impl FieldPath {
    /// Reads an RFC 6901 JSON Pointer such as `/spec/replicas` or
    /// `/metadata/annotations/example.com~1owner`.
    pub fn from_pointer(text: &str) -> Result<Self, String> {
        let Some(rest) = text.strip_prefix('/') else {
            return Err(format!(
                "{text:?} is not a JSON Pointer: it must start with '/', as in /spec/replicas"
            ));
        };
        let mut tokens = Vec::new();
        for raw in rest.split('/') {
            if raw.is_empty() {
                return Err(format!(
                    "{text:?} has an empty segment; a JSON Pointer names keys between single \
                     slashes, as in /spec/replicas"
                ));
            }
            let mut token = String::with_capacity(raw.len());
            let mut chars = raw.chars();
            while let Some(c) = chars.next() {
                match (c, c == '~') {
                    (_, false) => token.push(c),
                    (_, true) => match chars.next() {
                        Some('0') => token.push('~'),
                        Some('1') => token.push('/'),
                        _ => {
                            return Err(format!(
                                "{text:?}: '~' must be followed by 0 (for '~') or 1 (for '/')"
                            ));
                        }
                    },
                }
            }
            tokens.push(token);
        }
        Self::checked(text, tokens)
    }

    /// Reads a dotted path as `stagehand diff` prints them: keys separated by dots, a list
    /// index or a key holding other characters in brackets (`spec.containers[0].image`,
    /// `metadata.annotations["example.com/owner"]`); a leading dot is allowed.
    pub fn from_dotted(text: &str) -> Result<Self, String> {
        let bad = |at: usize, what: &str| {
            format!(
                "{text:?} is not a field path such as spec.replicas, \
                 spec.template.spec.containers[0].image or metadata.annotations[\"example.com/x\"]: \
                 {what} at character {}",
                at + 1
            )
        };
        let bytes = text.as_bytes();
        let mut tokens = Vec::new();
        let mut i = usize::from(text.starts_with('.'));
        if i >= bytes.len() {
            return Err(bad(i.min(text.len()), "nothing"));
        }
        loop {
            match bytes[i] {
                b'[' => {
                    let close = text[i..]
                        .find(']')
                        .map(|j| i + j)
                        .ok_or_else(|| bad(i, "'[' without ']'"))?;
                    let inner = &text[i + 1..close];
                    let token = if inner.starts_with('"') {
                        // A quoted key may hold ']' itself: read the JSON string to its end.
                        let mut stream = serde_json::Deserializer::from_str(&text[i + 1..])
                            .into_iter::<String>();
                        let key = match stream.next() {
                            Some(Ok(key)) => key,
                            _ => return Err(bad(i + 1, "a quoted key that is not a JSON string")),
                        };
                        let end = i + 1 + stream.byte_offset();
                        if bytes.get(end) != Some(&b']') {
                            return Err(bad(end, "no ']' after the quoted key"));
                        }
                        i = end + 1;
                        key
                    } else if !inner.is_empty() && inner.bytes().all(|b| b.is_ascii_digit()) {
                        i = close + 1;
                        inner.to_owned()
                    } else {
                        return Err(bad(i + 1, "brackets hold a list index or a quoted key"));
                    };
                    if token.is_empty() {
                        return Err(bad(i - 1, "an empty key"));
                    }
                    tokens.push(token);
                }
                _ => {
                    let end = text[i..].find(['.', '[']).map_or(text.len(), |j| i + j);
                    let key = &text[i..end];
                    if key.is_empty() {
                        return Err(bad(i, "an empty key"));
                    }
                    if let Some(c) = key
                        .chars()
                        .find(|c| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '-'))
                    {
                        return Err(bad(
                            i + key.find(c).unwrap_or(0),
                            &format!("{c:?} (quote such a key: [\"{key}\"])"),
                        ));
                    }
                    tokens.push(key.to_owned());
                    i = end;
                }
            }
            match bytes.get(i) {
                None => break,
                Some(b'.') if i + 1 < bytes.len() => i += 1,
                Some(b'.') => return Err(bad(i, "a trailing '.'")),
                Some(b'[') => {}
                Some(_) => return Err(bad(i, "no '.' or '[' after ']'")),
            }
        }
        Self::checked(text, tokens)
    }

    /// Refuses fields Stagehand needs to tell the object and its owner: ignoring them would
    /// apply an object it could no longer find or claim.
    fn checked(text: &str, tokens: Vec<String>) -> Result<Self, String> {
        if Self::is_identity(&tokens) {
            return Err(format!(
                "{text:?} names a field Stagehand needs to identify the object and its owner \
                 (apiVersion, kind, metadata, its name, namespace, labels and annotations as a \
                 whole, and the {INVENTORY_LABEL} label and {HASH_ANNOTATION} annotation); \
                 single labels and annotations may be ignored"
            ));
        }
        Ok(Self { tokens })
    }

    /// Whether `tokens` is one of the fields that identify an object and its owner, or holds
    /// one of them.
    pub fn is_identity<S: AsRef<str>>(tokens: &[S]) -> bool {
        const IDENTITY: [&[&str]; 8] = [
            &["apiVersion"],
            &["kind"],
            &["metadata", "name"],
            &["metadata", "namespace"],
            &["metadata", "labels", INVENTORY_LABEL],
            &["metadata", "annotations", HASH_ANNOTATION],
            &["metadata", "generateName"],
            &["metadata", "uid"],
        ];
        IDENTITY.iter().any(|identity| {
            tokens.len() <= identity.len()
                && tokens
                    .iter()
                    .zip(identity.iter())
                    .all(|(t, i)| t.as_ref() == *i)
        })
    }
}

impl std::fmt::Display for FieldPath {
    /// As a JSON Pointer.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for token in &self.tokens {
            write!(f, "/{}", token.replace('~', "~0").replace('/', "~1"))?;
        }
        Ok(())
    }
}

/// Why a field manager cannot be named in `managedFieldsManagers`, if it cannot.
pub(super) fn check_manager(name: &str) -> Result<(), String> {
    if name.trim().is_empty() {
        return Err("must not be empty".into());
    }
    if name == FIELD_MANAGER {
        return Err(format!(
            "{name:?} is Stagehand's own field manager: ignoring its fields would ignore \
             everything Stagehand applies"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens(path: Result<FieldPath, String>) -> Vec<String> {
        path.expect("valid").tokens
    }

    #[test]
    fn a_json_pointer_unescapes_its_tokens() {
        assert_eq!(
            tokens(FieldPath::from_pointer("/spec/replicas")),
            ["spec", "replicas"]
        );
        assert_eq!(
            tokens(FieldPath::from_pointer(
                "/metadata/annotations/example.com~1owner~0x"
            )),
            ["metadata", "annotations", "example.com/owner~x"]
        );
        let path = FieldPath::from_pointer("/metadata/annotations/a~1b").expect("valid");
        assert_eq!(path.to_string(), "/metadata/annotations/a~1b");
    }

    #[test]
    fn a_dotted_path_reads_as_stagehand_prints_paths() {
        assert_eq!(
            tokens(FieldPath::from_dotted("spec.replicas")),
            ["spec", "replicas"]
        );
        assert_eq!(
            tokens(FieldPath::from_dotted(
                ".spec.template.spec.containers[0].image"
            )),
            ["spec", "template", "spec", "containers", "0", "image"]
        );
        assert_eq!(
            tokens(FieldPath::from_dotted(
                r#"metadata.annotations["example.com/a]b"].x"#
            )),
            ["metadata", "annotations", "example.com/a]b", "x"]
        );
        assert_eq!(
            tokens(FieldPath::from_dotted("data[\"a.b\"]")),
            ["data", "a.b"]
        );
    }

    #[test]
    fn malformed_paths_are_refused_saying_where() {
        for (text, expected) in [
            ("spec..replicas", "an empty key at character 6"),
            ("spec.replicas.", "a trailing '.' at character 14"),
            (
                "spec[x]",
                "brackets hold a list index or a quoted key at character 6",
            ),
            ("spec[0", "'[' without ']' at character 5"),
            (
                "metadata.annotations.a/b",
                "'/' (quote such a key: [\"a/b\"]) at character 23",
            ),
            ("spec[0]x", "no '.' or '[' after ']' at character 8"),
            ("", "nothing at character 1"),
            (".", "nothing at character 2"),
            ("a[\"x\"y]", "no ']' after the quoted key at character 6"),
        ] {
            let error = FieldPath::from_dotted(text).expect_err(text);
            assert!(error.ends_with(expected), "{text}: {error}");
        }
        for (text, expected) in [
            ("spec/replicas", "must start with '/'"),
            ("/spec//replicas", "has an empty segment"),
            ("/", "has an empty segment"),
            ("/metadata/annotations/a~2", "'~' must be followed by 0"),
        ] {
            let error = FieldPath::from_pointer(text).expect_err(text);
            assert!(error.contains(expected), "{text}: {error}");
        }
    }

    #[test]
    fn fields_that_identify_the_object_cannot_be_ignored_but_single_labels_can() {
        for text in [
            "/metadata",
            "/metadata/labels",
            "/metadata/annotations",
            "/metadata/name",
            "/kind",
            "/metadata/labels/stagehand.dev~1inventory",
        ] {
            let error = FieldPath::from_pointer(text).expect_err(text);
            assert!(error.contains("needs to identify the object"), "{error}");
        }
        assert!(FieldPath::from_pointer("/metadata/labels/app").is_ok());
        assert!(FieldPath::from_dotted("status").is_ok());
    }
}
