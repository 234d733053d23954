//! Keeping decrypted Secret data out of everything but the request to the apiserver.
//!
//! Two tools: [`object`] copies a manifest with each Secret value replaced (key names kept, so
//! a diff still says which keys changed), and [`Redactor`] scrubs free text, such as an
//! apiserver message, of every Secret value of a sync, raw and base64-encoded.

use base64::Engine as _;
use serde_json::Value;

/// What a Secret value is replaced with.
pub const REDACTED: &str = "<redacted>";

fn is_secret(manifest: &Value) -> bool {
    manifest.get("kind").and_then(Value::as_str) == Some("Secret")
        && manifest.get("apiVersion").and_then(Value::as_str) == Some("v1")
}

/// A copy of `manifest` fit for logs, status and diffs: for a Secret, each value of `data` and
/// `stringData` becomes [`REDACTED`], and `last-applied-configuration` (which would repeat them)
/// is dropped. Other kinds are returned unchanged.
pub fn object(manifest: &Value) -> Value {
    let mut copy = manifest.clone();
    if !is_secret(manifest) {
        return copy;
    }
    for field in ["data", "stringData"] {
        if let Some(map) = copy.get_mut(field).and_then(Value::as_object_mut) {
            for value in map.values_mut() {
                *value = Value::String(REDACTED.into());
            }
        }
    }
    if let Some(annotations) = copy
        .pointer_mut("/metadata/annotations")
        .and_then(Value::as_object_mut)
    {
        annotations.remove("kubectl.kubernetes.io/last-applied-configuration");
    }
    copy
}

/// Scrubs text of the Secret values it was given. It has no `Debug`: it holds the values.
#[derive(Default, Clone)]
pub struct Redactor {
    /// Longest first, so that a value containing another is replaced whole.
    needles: Vec<String>,
}

impl Redactor {
    /// Collects the values of every Secret among `manifests`.
    pub fn from_manifests<'a>(manifests: impl IntoIterator<Item = &'a Value>) -> Self {
        let mut redactor = Self::default();
        for manifest in manifests {
            redactor.add(manifest);
        }
        redactor
    }

    /// Adds the values of `manifest` if it is a Secret: `stringData` as written, `data` both
    /// as base64 and decoded.
    pub fn add(&mut self, manifest: &Value) {
        if !is_secret(manifest) {
            return;
        }
        let b64 = base64::engine::general_purpose::STANDARD;
        if let Some(map) = manifest.get("stringData").and_then(Value::as_object) {
            for value in map.values().filter_map(Value::as_str) {
                self.push(value.to_owned());
                self.push(b64.encode(value));
            }
        }
        if let Some(map) = manifest.get("data").and_then(Value::as_object) {
            for value in map.values().filter_map(Value::as_str) {
                self.push(value.to_owned());
                if let Ok(decoded) = b64.decode(value) {
                    self.push(String::from_utf8_lossy(&decoded).into_owned());
                }
            }
        }
        self.needles.sort_by_key(|n| std::cmp::Reverse(n.len()));
    }

    fn push(&mut self, needle: String) {
        if !needle.is_empty() && !self.needles.contains(&needle) {
            self.needles.push(needle);
        }
    }

    /// `text` with every known Secret value replaced by [`REDACTED`].
    pub fn scrub(&self, text: &str) -> String {
        let mut out = text.to_owned();
        for needle in &self.needles {
            if out.contains(needle.as_str()) {
                out = out.replace(needle.as_str(), REDACTED);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn secret() -> Value {
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "db",
               "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{\"data\":{\"token\":\"c2VjcmV0LXRva2Vu\"}}"}},
               "data": {"token": "c2VjcmV0LXRva2Vu"}, "stringData": {"password": "hunter2"}})
    }

    #[test]
    fn a_redacted_secret_keeps_its_key_names_and_loses_its_values() {
        let text = object(&secret()).to_string();
        assert!(
            !text.contains("hunter2") && !text.contains("c2VjcmV0LXRva2Vu"),
            "{text}"
        );
        assert!(
            text.contains("password") && text.contains("token"),
            "{text}"
        );
    }

    #[test]
    fn other_kinds_are_not_redacted() {
        let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "data": {"a": "b"}});
        assert_eq!(object(&cm), cm);
    }

    #[test]
    fn the_redactor_scrubs_raw_encoded_and_decoded_values() {
        let redactor = Redactor::from_manifests([&secret()]);
        let message = "bad value hunter2 and aHVudGVyMg== and c2VjcmV0LXRva2Vu and secret-token";
        let scrubbed = redactor.scrub(message);
        for leaked in [
            "hunter2",
            "aHVudGVyMg==",
            "c2VjcmV0LXRva2Vu",
            "secret-token",
        ] {
            assert!(!scrubbed.contains(leaked), "{leaked} in {scrubbed}");
        }
        assert!(scrubbed.starts_with("bad value <redacted>"), "{scrubbed}");
    }
}
