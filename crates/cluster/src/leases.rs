//! Subnet leases, shaped like flannel's subnet manager: a node acquires a
//! subnet of the cluster network for a while, renews it, follows everyone's
//! leases, and publishes its own data on its Node object.
//!
//! What a publication changes on the Node is decided here ([`apply`],
//! pure); each source applies it as a patch that cannot lose a concurrent
//! update to the Node's other fields.

use std::future::Future;
use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use ipnet::IpNet;
use k8s_openapi::api::core::v1::{Node, NodeAddress, NodeSpec, NodeStatus};
use serde_json::Value;

pub use crate::flannel::BackendData;
use crate::{ClusterError, EventStream};

/// One node's subnet.
#[derive(Debug, Clone, PartialEq)]
pub struct SubnetLease {
    pub node: String,
    pub subnet: IpNet,
    /// Where the node is reached on the underlay.
    pub public_ip: IpAddr,
    /// What other nodes need to reach this one, e.g. `{"vtepMAC": …}`.
    pub backend: Value,
    /// `None`: it lasts as long as its node (Kubernetes).
    pub expires_at: Option<SystemTime>,
}

impl SubnetLease {
    pub fn is_live(&self, now: SystemTime) -> bool {
        self.expires_at.is_none_or(|at| at > now)
    }
}

/// What a node asks for when it acquires a lease.
#[derive(Debug, Clone)]
pub struct LeaseRequest {
    pub node: String,
    pub public_ip: IpAddr,
    pub backend: Value,
    /// The same as flannel encodes it (etcd leases carry it).
    pub backend_data: BackendData,
    pub ttl: Duration,
    /// The subnets the network config allows (where the source keeps
    /// leases of its own, one it finds that does not fit is replaced).
    pub allowed: SubnetRange,
}

/// Node subnets from `min` to `max`, both included (net-conf.json's
/// SubnetMin and SubnetMax, of SubnetLen).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubnetRange {
    pub min: IpNet,
    pub max: IpNet,
}

impl SubnetRange {
    /// Whether `subnet` is one of the range's subnets.
    pub fn fits(&self, subnet: IpNet) -> bool {
        let same_kind = |a: IpNet| {
            a.prefix_len() == self.min.prefix_len()
                && a.addr().is_ipv4() == self.min.addr().is_ipv4()
        };
        same_kind(subnet)
            && subnet.network() == subnet.addr()
            && (self.min.network()..=self.max.network()).contains(&subnet.network())
    }
}

/// The node's own data, as Kubernetes shows it on the Node.
#[derive(Debug, Clone, PartialEq)]
pub struct NodePublication {
    pub node: String,
    pub subnet: IpNet,
    pub public_ip: IpAddr,
    /// What the backend tells other nodes.
    pub backend: BackendData,
}

/// Annotations weft puts on its Nodes.
pub const BACKEND_ANNOTATION: &str = "weft.dev/backend";
pub const PUBLIC_IP_ANNOTATION: &str = "weft.dev/public-ip";

/// The Node `node` (or a new one) with `publication` applied: podCIDR(s),
/// the InternalIP and Hostname addresses and weft's annotations; every
/// other field is kept.
pub fn apply(publication: &NodePublication, node: Option<Node>) -> Node {
    let mut node = node.unwrap_or_default();
    node.metadata.name = Some(publication.node.clone());
    let spec = node.spec.get_or_insert_with(NodeSpec::default);
    spec.pod_cidr = Some(publication.subnet.to_string());
    spec.pod_cidrs = Some(vec![publication.subnet.to_string()]);
    let status = node.status.get_or_insert_with(NodeStatus::default);
    status.addresses = Some(vec![
        NodeAddress {
            type_: "InternalIP".into(),
            address: publication.public_ip.to_string(),
        },
        NodeAddress {
            type_: "Hostname".into(),
            address: publication.node.clone(),
        },
    ]);
    let annotations = node
        .metadata
        .annotations
        .get_or_insert_with(Default::default);
    annotations.insert(
        BACKEND_ANNOTATION.into(),
        publication.backend.type_name().into(),
    );
    annotations.insert(
        PUBLIC_IP_ANNOTATION.into(),
        publication.public_ip.to_string(),
    );
    node
}

/// flannel's subnet manager.
pub trait SubnetManager {
    /// Gives `request.node` a subnet for `request.ttl`: the one it holds if
    /// it still has one, else one `choose` picks from outside the subnets
    /// other nodes hold (`None`: the network is full).
    fn acquire(
        &self,
        request: &LeaseRequest,
        choose: impl Fn(&[IpNet]) -> Option<IpNet> + Send,
    ) -> impl Future<Output = Result<SubnetLease, ClusterError>> + Send;

    /// Extends `node`'s lease by `ttl` from now (and clears away leases
    /// that expired, where the source needs that done by someone).
    fn renew(
        &self,
        node: &str,
        ttl: Duration,
    ) -> impl Future<Output = Result<SubnetLease, ClusterError>> + Send;

    /// Every node's lease, live or expired (consumers check
    /// [`SubnetLease::is_live`]); a lease removed is a `Delete`.
    fn watch_leases(&self) -> EventStream<SubnetLease>;

    /// Puts the node's own data on its Node object.
    fn publish_node(
        &self,
        publication: &NodePublication,
    ) -> impl Future<Output = Result<(), ClusterError>> + Send;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_subnet_fits_when_it_is_one_of_the_range() {
        let range = SubnetRange {
            min: "10.244.1.0/24".parse().unwrap(),
            max: "10.244.255.0/24".parse().unwrap(),
        };
        for (subnet, fits) in [
            ("10.244.1.0/24", true),
            ("10.244.255.0/24", true),
            ("10.244.0.0/24", false),
            ("10.245.0.0/24", false),
            ("10.244.2.0/25", false),
            ("10.244.2.0/23", false),
            ("fd00::/64", false),
        ] {
            assert_eq!(range.fits(subnet.parse().unwrap()), fits, "{subnet}");
        }
    }

    fn publication() -> NodePublication {
        NodePublication {
            node: "node-1".into(),
            subnet: "10.244.3.0/24".parse().unwrap(),
            public_ip: "198.18.0.11".parse().unwrap(),
            backend: BackendData::HostGw,
        }
    }

    #[test]
    fn a_publication_sets_its_fields_and_keeps_the_others() {
        let mut before = Node::default();
        before.metadata.labels = Some([("team".to_string(), "a".to_string())].into());
        before
            .metadata
            .annotations
            .get_or_insert_with(Default::default)
            .insert("other".into(), "kept".into());
        let node = apply(&publication(), Some(before));
        let annotations = node.metadata.annotations.as_ref().unwrap();
        assert_eq!(annotations["other"], "kept");
        assert_eq!(annotations[BACKEND_ANNOTATION], "host-gw");
        assert_eq!(annotations[PUBLIC_IP_ANNOTATION], "198.18.0.11");
        assert_eq!(node.metadata.labels.as_ref().unwrap()["team"], "a");
        let spec = node.spec.as_ref().unwrap();
        assert_eq!(spec.pod_cidr.as_deref(), Some("10.244.3.0/24"));
        let addresses = node.status.unwrap().addresses.unwrap();
        assert_eq!(addresses[0].type_, "InternalIP");
        assert_eq!(addresses[0].address, "198.18.0.11");
        assert_eq!(addresses[1].address, "node-1");
    }

    #[test]
    fn publishing_twice_changes_nothing_the_second_time() {
        let once = apply(&publication(), None);
        assert_eq!(apply(&publication(), Some(once.clone())), once);
    }
}
