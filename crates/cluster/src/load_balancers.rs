//! What the LoadBalancer address allocator needs from the cluster where
//! nobody else fills `status.loadBalancer` (a cluster without a cloud
//! provider, as MetalLB's controller serves): one elected allocator, the
//! pools the operator configured, and the Services' status to write.

use std::future::Future;
use std::net::Ipv4Addr;
use std::time::Duration;

use k8s_openapi::api::core::v1::Service;

use crate::{Cluster, ClusterError};

/// The Lease the allocators of a cluster elect their leader with, in
/// weft's namespace.
pub const ALLOCATOR_LEASE: &str = "weft-lb-allocator";
/// The ConfigMap, in weft's namespace, whose key [`POOLS_KEY`] lists the
/// address pools (see the agent's `lb_allocator` for the format).
pub const POOLS_CONFIGMAP: &str = "weft-lb-pools";
pub const POOLS_KEY: &str = "pools";

/// What the allocator tells a Service's users (an Event on it, which
/// `kubectl describe service` shows).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AllocationEvent {
    /// These addresses were written to its status.
    Allocated(Vec<Ipv4Addr>),
    /// Why it has no address (what to do included).
    Failed(String),
}

/// The cluster side of LoadBalancer address allocation.
pub trait LoadBalancerAllocation: Cluster {
    /// Takes or renews the allocator's leadership for `term`; whether
    /// `candidate` leads now.
    fn lead(
        &self,
        candidate: &str,
        term: Duration,
    ) -> impl Future<Output = Result<bool, ClusterError>> + Send;

    /// The pools' text from the cluster (`None`: not configured there).
    fn load_balancer_pools(
        &self,
    ) -> impl Future<Output = Result<Option<String>, ClusterError>> + Send;

    /// Sets Service `namespace/name`'s `status.loadBalancer.ingress` to
    /// `ips` (empty: none).
    fn set_load_balancer_ingress(
        &self,
        namespace: &str,
        name: &str,
        ips: &[Ipv4Addr],
    ) -> impl Future<Output = Result<(), ClusterError>> + Send;

    /// Records `event` on `service`.
    fn record(
        &self,
        service: &Service,
        event: AllocationEvent,
    ) -> impl Future<Output = Result<(), ClusterError>> + Send;
}
