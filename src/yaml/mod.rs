//! One YAML core for every module: the reader on saphyr-parser events with go-yaml's limits
//! ([`events`]), go-yaml v2's and v3's resolution of plain scalars ([`resolve`]), Go's number and
//! timestamp rules ([`number`], [`time`]), and on top of them three views of a file:
//!
//! - [`documents`]: JSON-shaped values, read as kustomize reads each kind of file ([`Reading`]);
//! - [`to_yaml`] and friends: values printed as kustomize prints them;
//! - [`written`]: the document as written, each scalar with its source text, for edits that must
//!   keep that text (promotions).
//!
//! sops's own tree (comments kept, 4-space output) is built in `secrets` from the same events and
//! rules.

pub mod events;
pub mod number;
mod print;
mod read;
pub mod resolve;
pub mod time;
pub mod written;

pub use print::{to_yaml, unprintable, write_document, write_object};
pub use read::{ParseError, Reading, ValueError, documents, plain};

/// Every non-empty document of a file kustomize reads through a JSON conversion.
pub fn parse_documents(text: &str) -> Result<Vec<serde_json::Value>, ParseError> {
    documents(text, Reading::JsonConverted)
}
