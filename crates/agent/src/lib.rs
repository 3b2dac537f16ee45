//! The weft node agent (flanneld's role): it leases this node a subnet of
//! the cluster network, publishes its address and VTEP, and connects the
//! node to every other node through a backend, converging the kernel to
//! the desired state and repairing drift.
//!
//! - [`config`]: flannel's `net-conf.json`, validated (pure).
//! - [`subnets`]: which subnet a node gets, `subnet.env` text (pure).
//! - [`backend`]: VXLAN and host-gw: peers → routes, neighbours, FDB (pure).
//! - [`reconcile`]: desired vs actual → minimal changes, applied.
//! - [`masq`]: masquerade for traffic leaving the cluster network.
//! - [`files`]: subnet.env and the CNI conflist for weft-cni.
//! - [`health`]: `/healthz` and `/readyz`.
//! - [`services`]: the Service/EndpointSlice cache the proxy plans from.
//! - [`proxy`]: the Service proxy's loop (nftables, conntrack, health ports).
//! - [`speaker`]: node heartbeats and LoadBalancer address announcement.
//! - [`lb_allocator`]: LoadBalancer addresses from the operator's pools,
//!   by one elected agent (where no cloud provider hands them out).
//! - [`run`]: the agent's start-up and loop.
//! - [`cleanup`]: `--cleanup`, removing what the agent put on the node.
//! - [`takeover`]: what flanneld left on a node weft replaces.

pub mod backend;
pub mod cleanup;
pub mod config;
pub mod files;
pub mod health;
pub mod lb_allocator;
pub mod masq;
pub mod metrics;
pub mod policy;
pub mod proxy;
pub mod reconcile;
pub mod run;
pub mod services;
pub mod speaker;
pub mod subnets;
pub mod takeover;
