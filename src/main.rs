//! The `stagehand` command: the service and a CLI built on its library and gRPC API.

mod cli;

use clap::Parser as _;

fn main() -> std::process::ExitCode {
    // kube's and reqwest's (gix's HTTP transport) rustls share one process-wide crypto
    // provider; without one installed the first TLS connection panics.
    let _ = rustls::crypto::ring::default_provider().install_default();
    cli::Cli::parse().run()
}
