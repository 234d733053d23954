//! Integration tests against real parts: git, sops, age, kubectl, a kube-apiserver, Chromium.
//! One binary, one module per feature, so the heavy dependencies are linked once.

mod support;

mod auth;
mod bounds;
mod child_env;
mod cli_api;
mod cli_escape;
mod cli_promote;
mod cli_sync;
mod cluster;
mod delivery;
mod deploy;
mod foundation;
mod git;
mod harness;
mod ignore_differences;
mod image;
mod images;
mod in_repository;
mod keys;
mod lease;
mod node;
mod promotions;
mod reconcile;
mod registry;
mod render;
mod replicas;
mod secrets;
mod serve;
mod service;
mod signing;
mod store;
mod transport;
mod verification;
mod visibility;
mod web;
mod web_http;
