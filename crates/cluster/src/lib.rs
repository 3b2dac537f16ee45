//! The seam through which weft's agent and Service proxy (and next the
//! policy engine and DNS) read and write cluster state, whatever holds it:
//! the embedded store today, a kube-apiserver or etcd next.
//!
//! It owns the shapes of that conversation and their first implementation:
//! - typed watch streams in kube-rs's event model ([`Event`]): a source that
//!   has to list again (its log was compacted, or 410 Gone) says so with a
//!   new `Init` … `InitDone` run inside the stream, never with an error;
//!   errors in a stream are transient (the source retries after a pause) and
//!   never end it;
//! - [`SubnetManager`]: subnet leases shaped like flannel's subnet manager
//!   (acquire, renew, watch all leases, publish the node's own data as a
//!   patch that cannot lose a concurrent update);
//! - [`Liveness`]: node heartbeats, for LoadBalancer announcement;
//! - [`LoadBalancerAllocation`]: an elected allocator's pools and the
//!   Services' `status.loadBalancer` (leadership decided in [`election`]);
//! - [`Warnings`]: Events on Services the proxy cannot program;
//! - [`cache`]: what consumers keep from a stream (buffered from `Init` to
//!   `InitDone`, then swapped in);
//! - [`embedded`]: all of it on weft's SQLite store.
//! - [`kubernetes`]: the watches on a kube-apiserver (kube-rs).
//! - [`etcd`]: subnet leases in flannel's etcd layout.
//! - [`flannel`]: flannel's kube subnet manager annotations and how a Node
//!   reads as a peer (pure; for the Kubernetes source to come).
//!
//! It must not know about kernels, agents or labs.

use std::fmt::Debug;
use std::time::Duration;

use futures::stream::BoxStream;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::{Metadata, Resource};
use serde::de::DeserializeOwned;

pub mod cache;
pub mod election;
pub mod embedded;
mod error;
pub mod etcd;
pub mod flannel;
pub mod kubernetes;
pub mod leases;
pub mod liveness;
pub mod load_balancers;
pub mod warnings;

pub use error::ClusterError;
pub use kube::runtime::watcher::Event;
pub use leases::{NodePublication, SubnetLease, SubnetManager};
pub use liveness::Liveness;
pub use load_balancers::LoadBalancerAllocation;
pub use warnings::{Warning, Warnings};

/// A watch: every object on `Init`…`InitDone`, then each change.
pub type EventStream<K> = BoxStream<'static, Result<Event<K>, ClusterError>>;

/// A Kubernetes resource a [`Cluster`] can watch.
pub trait Watched:
    Resource + Metadata<Ty = ObjectMeta> + DeserializeOwned + Clone + Debug + Send + 'static
{
}

impl<K> Watched for K where
    K: Resource + Metadata<Ty = ObjectMeta> + DeserializeOwned + Clone + Debug + Send + 'static
{
}

/// Where the cluster's resources are read from.
pub trait Cluster: Clone + Send + Sync + 'static {
    /// Follows every object of kind `K` in all namespaces.
    fn watch<K: Watched>(&self) -> EventStream<K> {
        self.watch_without::<K>(&[])
    }

    /// Follows the objects of kind `K` that carry none of the labels
    /// `absent` (a selector `!a,!b`, as kube-proxy scopes its watches); an
    /// object that gains one of them is deleted from the watcher's view.
    fn watch_without<K: Watched>(&self, absent: &'static [&'static str]) -> EventStream<K>;

    /// What is wrong with the source right now, in words for `/readyz`.
    fn problem(&self) -> Option<String>;
}

/// A source's last failure, shared by its watches, for
/// [`Cluster::problem`]: set by a failing item, cleared by a good one.
#[derive(Debug, Clone, Default)]
pub(crate) struct Problem(std::sync::Arc<std::sync::Mutex<Option<String>>>);

impl Problem {
    pub(crate) fn set(&self, problem: Option<String>) {
        *self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = problem;
    }

    pub(crate) fn get(&self) -> Option<String> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

/// How long a source waits before trying again after an error.
pub const RETRY_PAUSE: Duration = Duration::from_secs(1);

/// Everything an agent needs from the cluster, in one bound.
pub trait ClusterState: Cluster + SubnetManager + Liveness + Warnings {}

impl<C: Cluster + SubnetManager + Liveness + Warnings> ClusterState for C {}
