//! weft-cni: the CNI 1.1 plugin that wires each pod — a veth pair from the
//! pod's namespace to the node bridge, addresses from built-in host-local
//! IPAM, routes, hairpin, masquerade, hostPorts and anti-spoofing.
//!
//! - [`spec`]: the CNI specification as types (pure).
//! - [`plan`]: configuration → the network to wire (pure).
//! - [`firewall`]: the nftables rule sets (pure generation).
//! - [`antispoof`]: a pod sends only as itself (rules, per-pod set elements).
//! - [`policy_gate`]: ADD waits for the agent to protect the new pod.
//! - [`conflist`]: conflist files as a runtime reads them.
//! - [`invoke`]: the runtime side — running a CNI plugin as a runtime does.
//! - [`commands`]: ADD, DEL, CHECK, STATUS, GC, VERSION — where the plan
//!   meets the kernel through `weft-datapath`.

pub mod antispoof;
pub mod commands;
pub mod conflist;
pub mod firewall;
pub mod invoke;
pub mod plan;
pub mod policy_gate;
pub mod spec;
