//! Keeping decrypted Secret data out of everything but the request to the apiserver.
//!
//! Two tools: [`object`] copies a manifest with each Secret value replaced (key names kept, so
//! a diff still says which keys changed), and [`Redactor`] scrubs free text, such as an
//! apiserver message, of every Secret value of a sync and every value that came out of SOPS
//! decryption (wherever the render put it: [`Redactor::add_tainted`]), raw and base64-encoded.

use base64::Engine as _;
use serde_json::Value;

use crate::secrets::Tainted;

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

    /// Adds the values that came out of decryption, raw and base64-encoded (as a generator
    /// writes them into a Secret's `data` or a ConfigMap's `binaryData`).
    pub fn add_tainted(&mut self, tainted: &Tainted) {
        let b64 = base64::engine::general_purpose::STANDARD;
        for value in tainted.values() {
            self.push(value.to_owned());
            self.push(b64.encode(value));
        }
        self.needles.sort_by_key(|n| std::cmp::Reverse(n.len()));
    }

    /// Whether any string of `manifest` holds a value this redactor hides: then the object is
    /// handled like a Secret (an apiserver message about it may quote it).
    pub fn touches(&self, manifest: &Value) -> bool {
        !self.needles.is_empty() && self.holds_hidden(manifest)
    }

    /// [`object`], and any string of any kind that holds a hidden value becomes [`REDACTED`]
    /// (its field stays, so a comparison still names it).
    pub fn object(&self, manifest: &Value) -> Value {
        let mut copy = object(manifest);
        if !self.needles.is_empty() {
            self.mask(&mut copy);
        }
        copy
    }

    fn mask(&self, value: &mut Value) {
        match value {
            Value::String(s) if self.hides(s) => *s = REDACTED.to_owned(),
            Value::Array(items) => items.iter_mut().for_each(|v| self.mask(v)),
            Value::Object(map) => map.values_mut().for_each(|v| self.mask(v)),
            _ => {}
        }
    }

    /// Whether `text` holds a value this redactor hides.
    pub fn hides(&self, text: &str) -> bool {
        self.needles.iter().any(|n| text.contains(n.as_str()))
    }

    fn holds_hidden(&self, value: &Value) -> bool {
        match value {
            Value::String(s) => self.hides(s),
            Value::Array(items) => items.iter().any(|v| self.holds_hidden(v)),
            Value::Object(map) => map.values().any(|v| self.holds_hidden(v)),
            _ => false,
        }
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

    #[test]
    fn decrypted_values_are_hidden_in_any_kind_and_in_text() {
        let tainted = crate::secrets::taint::of_dotenv("PASSWORD=hunter two!\n");
        let mut redactor = Redactor::default();
        let config = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "app",
                            "labels": {"pw": "hunter two!"}}, "data": {"PASSWORD": "hunter two!", "LEVEL": "info"}});
        assert!(!redactor.touches(&config), "nothing hidden yet");
        redactor.add_tainted(&tainted);
        assert!(redactor.touches(&config));
        assert!(!redactor.touches(&json!({"kind": "ConfigMap", "data": {"LEVEL": "info"}})));
        let masked = redactor.object(&config);
        assert_eq!(masked["data"]["PASSWORD"], REDACTED);
        assert_eq!(masked["metadata"]["labels"]["pw"], REDACTED);
        assert_eq!(masked["data"]["LEVEL"], "info");
        let b64 = base64::engine::general_purpose::STANDARD.encode("hunter two!");
        let scrubbed = redactor.scrub(&format!("Invalid value: \"hunter two!\" and {b64}"));
        assert_eq!(scrubbed, "Invalid value: \"<redacted>\" and <redacted>");
    }
}
