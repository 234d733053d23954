//! What came out of decryption, remembered so that it can be kept out of everything Stagehand
//! prints, wherever a render moved it (a ConfigMap generated from an encrypted env file, a field
//! a `replacements` entry copied a Secret value into, an encrypted custom resource).

use std::fmt;

use zeroize::Zeroizing;

use super::Plaintext;

/// Values shorter than this are not remembered: searching text for them would mask every
/// `true` or `80` that happens to match, and so short a value is no secret to begin with.
pub const MIN_TAINTED_LEN: usize = 4;

/// The decrypted values of a render. It prints only how many it holds; the values are zeroized
/// on drop.
#[derive(Default, Clone)]
pub struct Tainted {
    values: Vec<Zeroizing<String>>,
}

impl Tainted {
    /// Remembers every value that was encrypted in `plain` (as text; a value that is not UTF-8
    /// is remembered with its invalid bytes replaced, as it would print).
    pub fn add(&mut self, plain: &Plaintext) {
        for value in plain.values() {
            if value.len() < MIN_TAINTED_LEN {
                continue;
            }
            let text = Zeroizing::new(String::from_utf8_lossy(value).into_owned());
            if !self.values.contains(&text) {
                self.values.push(text);
            }
        }
    }

    /// Adds everything `other` holds.
    pub fn extend(&mut self, other: &Tainted) {
        for value in &other.values {
            if !self.values.contains(value) {
                self.values.push(value.clone());
            }
        }
    }

    /// The values, for code that must keep them out of its output. Never print them.
    pub fn values(&self) -> impl Iterator<Item = &str> {
        self.values.iter().map(|v| v.as_str())
    }

    /// Whether nothing was decrypted (or only values too short to remember).
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }
}

impl fmt::Debug for Tainted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Tainted({} values)", self.values.len())
    }
}

/// The values of a dotenv text, encrypted with a new key and decrypted again, for tests.
#[cfg(test)]
pub(crate) fn of_dotenv(text: &str) -> Tainted {
    let mut tainted = Tainted::default();
    tainted.add(&tests::decrypted(
        text,
        super::Format::Dotenv,
        super::RuleText::default(),
    ));
    tainted
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secrets::{
        EncryptOptions, Format, Identities, KeyType, RuleText, decrypt, encrypt, keygen,
    };

    pub(super) fn decrypted(plain: &str, format: Format, rules: RuleText) -> Plaintext {
        let key = keygen(KeyType::X25519);
        let options = EncryptOptions {
            recipients: vec![key.recipient.clone()],
            rules,
            ..EncryptOptions::default()
        };
        let sealed = encrypt(plain.as_bytes(), format, &options, "f").expect("encrypts");
        let mut ids = Identities::new();
        ids.add_text("test", key.file_text(), false)
            .expect("key reads");
        decrypt(&sealed, format, &ids, "f").expect("decrypts")
    }

    #[test]
    fn only_values_that_were_encrypted_and_long_enough_are_tainted() {
        let plain = decrypted(
            "kind: Secret\nname_unencrypted: public-name\npassword: hunter two!\nport: 5432\nshort: abc\n",
            Format::Yaml,
            RuleText::default(),
        );
        let mut tainted = Tainted::default();
        tainted.add(&plain);
        let values: Vec<&str> = tainted.values().collect();
        // sops's default rule encrypts every value, the kind too (so messages naming it get
        // scrubbed: `encrypted_regex: ^(data|stringData)$` avoids that); `short` is too short to
        // search for; the suffixed key stayed in clear.
        assert_eq!(values, ["Secret", "hunter two!", "5432"]);
        assert_eq!(format!("{tainted:?}"), "Tainted(3 values)");
    }

    #[test]
    fn dotenv_values_are_tainted_one_by_one() {
        let plain = decrypted(
            "USER=app-user\nPASSWORD=s3cr3t-value\n",
            Format::Dotenv,
            RuleText::default(),
        );
        let mut tainted = Tainted::default();
        tainted.add(&plain);
        let mut again = Tainted::default();
        again.extend(&tainted);
        again.extend(&tainted);
        assert_eq!(
            again.values().collect::<Vec<_>>(),
            ["app-user", "s3cr3t-value"]
        );
    }
}
