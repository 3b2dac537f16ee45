//! weft lab: a whole cluster network on one machine, built from the real
//! agent and the real CNI plugin — an underlay namespace with a bridge,
//! one namespace per node running `weft agent`, one per pod wired by
//! `weft-cni` — with the real kernel datapath in between.
//!
//! - [`layout`]: names, paths and the lab's state file.
//! - [`underlay`]: the lab's L2 network, and the guard against overlaps with the host.
//! - [`procs`]: detached processes, signalled only after checking they are ours.
//! - [`agents`]: one `weft agent` per node.
//! - [`manifest`]: Kubernetes manifests → Kubernetes types.
//! - [`kubelet`]: runs pods (CNI + containers) and writes their status.
//! - [`netexec`], [`probe`]: the built-in test server and client.
//! - [`ops`]: the `weft lab` operations.

pub mod agents;
pub mod kubelet;
pub mod layout;
pub mod manifest;
pub mod netexec;
pub mod ops;
pub mod probe;
pub mod procs;
pub mod underlay;
