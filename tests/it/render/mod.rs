//! Rendering against `kubectl kustomize` as the oracle: kustomize's own test cases, differential
//! cases, errors both refuse, random trees, and SOPS decryption while rendering.

mod conformance;
mod differential;
mod errors;
mod limits;
mod random;
mod sops;
