//! Shared test support: real tools, real git repositories, a real kube-apiserver, a real browser.
#![allow(dead_code)] // each test module uses a different part of the support

pub mod browser;
pub mod cluster;
pub mod git;
pub mod git_http;
pub mod postgres;
pub mod reconcile;
pub mod registry;
pub mod sshd;
pub mod tools;

pub use tools::{Tool, kubectl_kustomize, tool, yaml_documents};
