//! Stagehand: GitOps environment promotion.
//!
//! Data flows one way: `pipeline` says what exists, `git` supplies revisions, `render` and
//! `secrets` turn a revision into objects, `cluster` and `reconcile` apply them, `promotion`
//! moves revisions between environments, `store` remembers, and `api` only translates. `yaml` is
//! the one YAML core (reading, go-yaml's rules, printing) that `render`, `secrets` and `git` share;
//! it depends on none of them.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod api;
pub mod cluster;
pub mod error_chain;
pub mod git;
pub mod image;
pub mod metrics;
pub mod pipeline;
mod process;
pub mod promotion;
pub mod reconcile;
pub mod remark;
pub mod render;
pub mod secrets;
pub mod service;
pub mod shard;
pub mod state_dir;
pub mod store;
pub mod telemetry;
pub mod yaml;

/// Code generated from `proto/stagehand/v1/*.proto`.
pub mod proto {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("stagehand.v1");

    /// The encoded descriptors of every Stagehand service, for gRPC server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("stagehand_descriptor");
}
