//! weft's Service proxy, a kube-proxy replacement on nftables.
//!
//! - [`model`]: Services and EndpointSlices → ports and usable endpoints (pure).
//! - [`external`]: which externalIPs a Service may use (pure).
//! - [`plan`]: one Service → its chains, sets and map elements (pure).
//! - [`table`]: the fixed hooks, maps and chains of `ip weft-proxy` (pure).
//! - [`transaction`]: applied vs planned → the minimal nft commands (pure).
//! - [`flows`]: which UDP conntrack flows a change leaves stale (pure).
//! - [`proxier`]: runs the transactions and the conntrack cleanup.
//! - [`kernel`]: those effects behind a trait: `nft -f` and conntrack on
//!   the host, or an in-memory ruleset for tests.
//! - [`health`]: the `healthCheckNodePort` servers of
//!   `externalTrafficPolicy: Local` Services.
//!
//! It reads Services and EndpointSlices only — never Pods — so the same code
//! serves the lab, an etcd-backed cluster and a real Kubernetes cluster.

pub mod external;
pub mod flows;
pub mod health;
pub mod kernel;
pub mod model;
pub mod plan;
pub mod proxier;
pub mod table;
pub mod transaction;

pub use model::{ServiceInfo, ServiceKey};
pub use plan::{NodeContext, ServiceRules};
pub use proxier::{Proxier, ProxyError, SyncReport};
