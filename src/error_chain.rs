//! Printing an error with its causes. Every error type of the crate keeps one convention: its
//! message says what failed at its own level and `source()` returns the cause, never both, so
//! the whole story is the chain, joined here.

use std::fmt;

/// Displays an error and each of its sources, outermost first, joined by `": "`.
///
/// ```
/// use stagehand::error_chain::ErrorChain;
/// let io = std::io::Error::new(std::io::ErrorKind::NotFound, "gone");
/// assert_eq!(ErrorChain(&io).to_string(), "gone");
/// ```
#[derive(Clone, Copy)]
pub struct ErrorChain<'a>(pub &'a (dyn std::error::Error + 'static));

impl<'a> ErrorChain<'a> {
    /// The error and its sources, outermost first.
    pub fn causes(self) -> impl Iterator<Item = &'a (dyn std::error::Error + 'static)> {
        std::iter::successors(Some(self.0), |e| e.source())
    }
}

impl fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, cause) in self.causes().enumerate() {
            if i > 0 {
                f.write_str(": ")?;
            }
            write!(f, "{cause}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for ErrorChain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("reading settings.yaml")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn the_chain_prints_each_cause_once_outermost_first() {
        let e = Outer(std::io::Error::other("permission denied"));
        assert_eq!(
            ErrorChain(&e).to_string(),
            "reading settings.yaml: permission denied"
        );
        assert_eq!(ErrorChain(&e).causes().count(), 2);
    }

    /// The `#[error(...)]` attributes of the crate's sources, each with the item text that
    /// follows it up to the next attribute or the end of the enum.
    fn error_attributes() -> Vec<(String, String, String)> {
        let mut out = Vec::new();
        let mut dirs = vec![std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src")];
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(&dir).expect("the source tree is readable") {
                let path = entry.expect("a directory entry").path();
                if path.is_dir() {
                    dirs.push(path);
                } else if path.extension().is_some_and(|e| e == "rs") {
                    let text = std::fs::read_to_string(&path).expect("a source file");
                    for part in text.split("#[error(").skip(1) {
                        let end = part.find(")]").expect("an error attribute ends");
                        let (message, rest) = part.split_at(end);
                        let item = rest.split("\n}").next().unwrap_or(rest);
                        out.push((path.display().to_string(), message.into(), item.into()));
                    }
                }
            }
        }
        out
    }

    #[test]
    fn no_error_message_of_the_crate_repeats_its_own_source() {
        let attributes = error_attributes();
        assert!(attributes.len() > 50, "the scan finds the crate's errors");
        for (file, message, item) in attributes {
            if message.trim() == "transparent" {
                continue;
            }
            let named_source = item.contains("source:") || item.contains("#[source]");
            let tuple_source = item.contains("(#[source]") || item.contains("(#[from]");
            assert!(
                !(named_source && message.contains("{source")),
                "{file}: {message} repeats its source"
            );
            assert!(
                !(tuple_source && message.contains("{0")),
                "{file}: {message} repeats its source"
            );
        }
    }
}
