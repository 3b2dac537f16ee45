//! IP address management with host-local semantics.
//!
//! - [`range`]: pure address math — ranges, range sets, validation.
//! - [`allocator`]: pure decisions — which address to hand out next.
//! - [`store`]: the on-disk state and the lock that makes allocation safe
//!   across concurrent plugin processes and across crashes.
//! - [`host_local`]: the reference host-local plugin's reservations, which
//!   pods wired before a node moved to weft still hold.
//! - [`subnet_env`]: flannel's `subnet.env`, how the node agent hands a node
//!   its pod subnet to the plugin.

pub mod allocator;
pub mod host_local;
pub mod range;
pub mod store;
pub mod subnet_env;

pub use allocator::{allocate, Allocation};
pub use host_local::HostLocal;
pub use range::{reserved_use, Range, RangeError, RangeSet};
pub use store::{ContainerLock, Owner, Store, StoreError};
pub use subnet_env::{SubnetEnv, SubnetEnvError};

/// Why an allocation could not be made.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AllocError {
    #[error("no free address left in {0}: the pool is exhausted; delete unused pods, run GC, or enlarge the range")]
    Exhausted(String),
    #[error("requested address {ip} is already in use by another pod")]
    RequestedTaken { ip: std::net::IpAddr },
    #[error("requested address {ip} is not inside any configured range ({ranges})")]
    RequestedOutOfRange {
        ip: std::net::IpAddr,
        ranges: String,
    },
    #[error("requested address {ip} is the gateway of its range")]
    RequestedGateway { ip: std::net::IpAddr },
    #[error("{count} addresses of the same family were requested ({ips}) but only one range set of that family is configured")]
    TooManyRequested { count: usize, ips: String },
}
