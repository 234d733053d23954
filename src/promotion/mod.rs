//! Promotions on approval: a revision of one environment moves into the next, gated by policy.
pub mod policy;
