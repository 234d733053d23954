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
}
