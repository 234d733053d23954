//! Kustomize rendering, in-process: a kustomization directory becomes a list of objects, the
//! same objects, names, hash suffixes and order as `kubectl kustomize` (kustomize v5.8).
//!
//! ```no_run
//! use stagehand::render::{self, fs::DiskFs, Options};
//! let fs = DiskFs::new(std::path::Path::new("/repo")).expect("repo exists");
//! let objects = render::render(&fs, "environments/dev", &Options::default()).expect("renders");
//! print!("{}", render::to_yaml(&objects));
//! ```
//!
//! - [`render`] reads through a [`fs::FileSystem`] (a directory on disk or a Git tree); every path
//!   is relative to that source's root, and nothing outside it can be named. Within it, kustomize's
//!   load restrictor applies: a kustomization reads files only in or below its own directory
//!   (other kustomization directories may be anywhere in the source).
//! - [`Options::order`] forces fifo or legacy order; a kustomization's own `sortOptions` wins,
//!   as with `kubectl kustomize --reorder`.
//! - [`Options::decrypt`] is the hook for SOPS: it sees every resource file and generator source
//!   as read, and may hand back its plaintext.
//! - Remote bases, Helm charts, plugins and KRM functions are refused with an error naming the
//!   kustomization file and field.
//! - [`to_yaml`] prints the objects as the multi-document stream `kubectl kustomize` prints.

mod build;
mod error;
pub mod fieldspec;
mod fold;
pub mod fs;
mod generate;
pub mod kustomization;
pub mod limits;
mod nameref;
mod openapi;
mod patch;
mod replace;
pub mod resource;
pub mod sops;
mod transform;

use serde_json::{Map, Value};

use crate::yaml;

pub use error::Error;

/// An object of the rendered output.
pub type Object = Map<String, Value>;

/// The output order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// Kustomize's default: by kind (Namespaces first, webhooks last), then by id.
    Legacy,
    /// As declared, resources before generated objects.
    Fifo,
}

/// Whether a kustomization may read files outside its own directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LoadRestrictor {
    /// kustomize's default: files in or below the kustomization's directory only.
    #[default]
    RootOnly,
    /// Any file inside the source root.
    None,
}

/// Turns SOPS-encrypted content into plaintext while it is read. Returns `Ok(None)` for content
/// it leaves as is (not encrypted). A failure is the secrets module's own error, so that the
/// render's [`Error::Decrypt`] keeps it whole as its source: callers tell a MAC mismatch from a
/// missing key by it (`stagehand render --decrypt` exits as `stagehand secrets decrypt` does).
pub trait Decrypt: Send + Sync {
    /// `path` is the source-relative path the bytes were read from.
    fn decrypt(&self, path: &str, content: &[u8])
    -> Result<Option<Vec<u8>>, crate::secrets::Error>;
}

/// How to render; the default renders as `kubectl kustomize` does.
#[derive(Clone, Copy, Default)]
pub struct Options<'a> {
    /// `None`: the kustomization's `sortOptions`, else legacy (what `kubectl kustomize` does).
    pub order: Option<Order>,
    /// Whether files must sit below the kustomization naming them (kustomize's default).
    pub load_restrictor: LoadRestrictor,
    /// Decrypts SOPS files as they are read; `None` renders them as they are.
    pub decrypt: Option<&'a dyn Decrypt>,
}

impl std::fmt::Debug for Options<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Options")
            .field("order", &self.order)
            .field("load_restrictor", &self.load_restrictor)
            .field("decrypt", &self.decrypt.is_some())
            .finish()
    }
}

/// Items a thread takes at least: below that, starting a thread costs more than it saves.
const ITEMS_PER_THREAD: usize = 64;
/// Threads one render uses at most; the service runs several renders at once.
const MAX_THREADS: usize = 4;

/// `f` over consecutive chunks of `items`, on several threads when there are many items; one
/// result per chunk, in order, so that the first failure in `items` is still the one reported.
fn in_chunks<'a, T: Sync, R: Send>(items: &'a [T], f: impl Fn(&'a [T]) -> R + Sync) -> Vec<R> {
    // The answer reads cgroup files: once per process, not once per call.
    static CORES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    let cores = *CORES.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let threads = cores
        .min(MAX_THREADS)
        .min(items.len() / ITEMS_PER_THREAD)
        .max(1);
    if threads == 1 {
        return vec![f(items)];
    }
    let chunk = items.len().div_ceil(threads);
    std::thread::scope(|scope| {
        let f = &f;
        let mut chunks = items.chunks(chunk);
        let first = chunks.next().unwrap_or_default();
        let others: Vec<_> = chunks.map(|c| scope.spawn(move || f(c))).collect();
        let mut out = vec![f(first)];
        for handle in others {
            out.push(
                handle
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic)),
            );
        }
        out
    })
}

/// Renders the kustomization in `dir` (relative to the root of `fs`; `""` is the root).
pub fn render(fs: &dyn fs::FileSystem, dir: &str, options: &Options) -> Result<Vec<Object>, Error> {
    let objects = build::run(fs, dir, options)?;
    let unprintable = in_chunks(&objects, |chunk| {
        chunk
            .iter()
            .find_map(|o| yaml::unprintable(o).map(|(path, c)| (o, path, c)))
    });
    if let Some((o, path, c)) = unprintable.into_iter().flatten().next() {
        let field = |f: &str| {
            o.get("metadata")
                .and_then(|m| m.get(f))
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned()
        };
        let kind = o.get("kind").and_then(Value::as_str).unwrap_or("");
        return Err(Error::Unprintable {
            object: match field("namespace").as_str() {
                "" => format!("{kind} {}", field("name")),
                ns => format!("{kind} {ns}/{}", field("name")),
            },
            path,
            character: c as u32,
        });
    }
    Ok(objects)
}

/// The objects as one multi-document YAML stream, as `kubectl kustomize` prints them.
pub fn to_yaml(objects: &[Object]) -> String {
    let parts = in_chunks(objects, |chunk| {
        let mut out = String::with_capacity(chunk.len() * 512);
        for (i, o) in chunk.iter().enumerate() {
            if i > 0 {
                out.push_str("---\n");
            }
            yaml::write_object(&mut out, o);
        }
        out
    });
    parts.join("---\n")
}
