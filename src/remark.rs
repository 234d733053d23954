//! The free text people attach to what they do (a promotion's reason, an approval's comment, a
//! suspension's reason). It is stored, written into the audit log and commit trailers, sent in
//! notifications and printed in tables, so it is bounded in size and holds no control
//! characters: a newline could forge a trailer or a log line, an escape sequence could rewrite
//! a terminal, a bidirectional override could make it read as something else.

/// The longest reason or comment accepted, in bytes of UTF-8.
pub const MAX_LEN: usize = 1024;

/// Why a reason or comment is refused; names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Invalid {
    /// Longer than [`MAX_LEN`].
    #[error("{field}: {len} bytes is longer than the {MAX_LEN} allowed")]
    TooLong {
        /// `reason` or `comment`.
        field: &'static str,
        /// Its length in bytes.
        len: usize,
    },
    /// Holds a control character (or a bidirectional formatting one).
    #[error("{field}: holds the control character U+{code:04X} at byte {at}")]
    Control {
        /// `reason` or `comment`.
        field: &'static str,
        /// The character's code point.
        code: u32,
        /// Its byte offset.
        at: usize,
    },
}

/// Ok when `text`, the value of `field`, may be recorded.
pub fn check(field: &'static str, text: &str) -> Result<(), Invalid> {
    if text.len() > MAX_LEN {
        return Err(Invalid::TooLong {
            field,
            len: text.len(),
        });
    }
    match text.char_indices().find(|(_, c)| forbidden(*c)) {
        Some((at, c)) => Err(Invalid::Control {
            field,
            code: u32::from(c),
            at,
        }),
        None => Ok(()),
    }
}

/// C0 and C1 controls (newline and tab included: a remark is one line), and the Unicode
/// bidirectional embeddings, overrides and isolates.
fn forbidden(c: char) -> bool {
    c.is_control() || matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinary_text_in_any_script_passes() {
        for text in ["", "hotfix for INC-42", "Freigabe nach Prüfung ✓", "修正"] {
            assert_eq!(check("reason", text), Ok(()), "{text:?}");
        }
        assert_eq!(check("reason", &"x".repeat(MAX_LEN)), Ok(()));
    }

    #[test]
    fn long_text_and_control_characters_are_refused_naming_the_field() {
        assert_eq!(
            check("comment", &"x".repeat(MAX_LEN + 1)).map_err(|e| e.to_string()),
            Err("comment: 1025 bytes is longer than the 1024 allowed".to_owned())
        );
        for (text, code, at) in [
            ("ok\nApproved-By: mallory", 0x0A, 2),
            ("\u{1b}[2Jclean", 0x1B, 0),
            ("tab\there", 0x09, 3),
            ("c1 \u{85}", 0x85, 3),
            ("abc\u{202E}fed", 0x202E, 3),
            ("\u{2066}x", 0x2066, 0),
        ] {
            assert_eq!(
                check("reason", text),
                Err(Invalid::Control {
                    field: "reason",
                    code,
                    at
                }),
                "{text:?}"
            );
        }
    }
}
