//! Kustomize rendering, in-process: a kustomization directory becomes a list of objects.

pub mod fs;
