//! `stagehand render`: a kustomization built in-process, printed as `kubectl kustomize` does.

use std::io::Write as _;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::Args;
use stagehand::render::{self, LoadRestrictor, Options, Order, fs::DiskFs, sops::SopsDecrypt};
use stagehand::secrets;

#[derive(Debug, Args)]
pub struct RenderArgs {
    /// The kustomization directory.
    dir: PathBuf,
    /// Output order; a kustomization's own `sortOptions` wins. Default: legacy.
    #[arg(long, value_enum)]
    order: Option<RenderOrder>,
    /// Nothing outside this directory is read. Default: the Git work tree holding DIR, else no
    /// limit beyond kustomize's own (a kustomization reads files in or below its directory).
    #[arg(long)]
    root: Option<PathBuf>,
    /// Let kustomizations read files outside their own directory (still inside the root).
    #[arg(long)]
    no_load_restrictor: bool,
    /// Decrypt SOPS-encrypted resources and generator sources with the age identities sops would
    /// use (SOPS_AGE_KEY, SOPS_AGE_KEY_FILE, SOPS_AGE_KEY_CMD, the default keys.txt). Without it,
    /// encrypted content passes through unchanged.
    #[arg(long)]
    decrypt: bool,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum RenderOrder {
    Legacy,
    Fifo,
}

impl From<RenderOrder> for Order {
    fn from(order: RenderOrder) -> Self {
        match order {
            RenderOrder::Legacy => Order::Legacy,
            RenderOrder::Fifo => Order::Fifo,
        }
    }
}

pub fn run(args: RenderArgs) -> anyhow::Result<()> {
    let dir = args.dir.canonicalize().with_context(|| {
        format!(
            "{}: cannot open the kustomization directory",
            args.dir.display()
        )
    })?;
    let root = match args.root {
        Some(r) => r
            .canonicalize()
            .with_context(|| format!("--root {}: cannot open it", r.display()))?,
        None => match dir.ancestors().find(|a| a.join(".git").exists()) {
            Some(work_tree) => work_tree.to_path_buf(),
            // The file system's root: the canonical DIR is absolute.
            None => dir.ancestors().last().unwrap_or(&dir).to_path_buf(),
        },
    };
    let rel = dir.strip_prefix(&root).with_context(|| {
        format!(
            "{} is outside the root {} (see --root)",
            dir.display(),
            root.display()
        )
    })?;
    let fs = DiskFs::new(&root)?;
    let identities = if args.decrypt {
        Some(secrets::Identities::from_sops_environment()?)
    } else {
        None
    };
    let sops = identities.as_ref().map(SopsDecrypt::new);
    let options = Options {
        order: args.order.map(Order::from),
        load_restrictor: if args.no_load_restrictor {
            LoadRestrictor::None
        } else {
            LoadRestrictor::RootOnly
        },
        decrypt: sops.as_ref().map(|d| d as &dyn render::Decrypt),
    };
    let rel = rel.to_str().context("the directory path is not UTF-8")?;
    let objects = render::render(&fs, rel, &options)?;
    let mut out = std::io::stdout().lock();
    out.write_all(render::to_yaml(&objects).as_bytes())?;
    out.flush()?;
    // The process ends next, which frees everything at once; dropping thousands of objects one
    // allocation at a time would cost more than printing them did.
    std::mem::forget(objects);
    Ok(())
}
