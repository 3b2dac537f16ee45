//! NetworkPolicy (`networking.k8s.io/v1`) as weft enforces it, reduced to
//! pure decisions over plain data:
//!
//! - [`model`]: policies read from the API objects (with `policyTypes`
//!   defaulted as the API server does), and the pods, namespaces and
//!   addresses they are evaluated against;
//! - [`verdict`]: whether one connection is allowed, per direction, and
//!   which policy and rule decided — the answer `weft lab explain` prints,
//!   and what the rule generator must agree with.
//!
//! - [`rules`]: the nftables table that enforces them on one node.
//!
//! It must not touch the kernel, the store or the clock: the agent applies
//! the rules.

pub mod api;
pub mod model;
pub mod rules;
pub mod validate;
pub mod verdict;
