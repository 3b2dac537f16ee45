//! flannel's Kubernetes subnet manager (`--kube-subnet-mgr`), the part that
//! is pure: what a node publishes on its Node object — flannel's
//! annotations, exactly, so flanneld nodes and weft nodes can share a
//! cluster — and how a Node reads back as a peer's lease. The subnet is
//! the Node's `spec.podCIDR(s)`, allocated by kube-controller-manager's
//! node IPAM, not chosen by the agent.
//!
//! The Kubernetes source of the seam uses these; it must not decide
//! anything itself.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::{IpNet, Ipv4Net};
use k8s_openapi::api::core::v1::Node;
use serde_json::{json, Value};

use crate::leases::SubnetLease;

pub const KUBE_SUBNET_MANAGER: &str = "flannel.alpha.coreos.com/kube-subnet-manager";
pub const BACKEND_TYPE: &str = "flannel.alpha.coreos.com/backend-type";
pub const BACKEND_DATA: &str = "flannel.alpha.coreos.com/backend-data";
pub const PUBLIC_IP: &str = "flannel.alpha.coreos.com/public-ip";
/// Set by the operator to announce another address than the detected one.
pub const PUBLIC_IP_OVERWRITE: &str = "flannel.alpha.coreos.com/public-ip-overwrite";

/// What a node's backend tells the others, as flannel encodes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendData {
    Vxlan { vni: u32, vtep_mac: String },
    HostGw,
}

impl BackendData {
    /// The backend's name (`vxlan`, `host-gw`).
    pub fn type_name(&self) -> &'static str {
        match self {
            BackendData::Vxlan { .. } => "vxlan",
            BackendData::HostGw => "host-gw",
        }
    }

    /// flannel's JSON: vxlan `{"VNI":1,"VtepMAC":"…"}`, host-gw `null`.
    pub fn json(&self) -> Value {
        match self {
            BackendData::Vxlan { vni, vtep_mac } => json!({"VNI": vni, "VtepMAC": vtep_mac}),
            BackendData::HostGw => Value::Null,
        }
    }
}

/// The annotations a node publishes, as flanneld writes them.
pub fn annotations(backend: &BackendData, public_ip: IpAddr) -> BTreeMap<String, String> {
    BTreeMap::from([
        (KUBE_SUBNET_MANAGER.to_owned(), "true".to_owned()),
        (BACKEND_TYPE.to_owned(), backend.type_name().to_owned()),
        (BACKEND_DATA.to_owned(), backend.json().to_string()),
        (PUBLIC_IP.to_owned(), public_ip.to_string()),
    ])
}

/// Whether `node` already carries exactly `wanted` (so nothing needs to be
/// written).
pub fn annotated(node: &Node, wanted: &BTreeMap<String, String>) -> bool {
    let held = node.metadata.annotations.as_ref();
    wanted
        .iter()
        .all(|(k, v)| held.and_then(|h| h.get(k)) == Some(v))
}

/// The address a node announces: the operator's `public-ip-overwrite` when
/// it is set, else the one detected on its interface. An unreadable
/// overwrite is an error naming the annotation, never silently ignored.
pub fn public_ip(node: &Node, detected: IpAddr) -> Result<IpAddr, String> {
    let overwrite = node
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(PUBLIC_IP_OVERWRITE));
    match overwrite {
        None => Ok(detected),
        Some(text) => text.trim().parse().map_err(|_| {
            format!(
                "annotation {PUBLIC_IP_OVERWRITE} of node {} is {text:?}, not an IP address; fix or remove it",
                node.metadata.name.as_deref().unwrap_or_default()
            )
        }),
    }
}

/// The node's IPv4 pod subnet: the first IPv4 entry of `spec.podCIDRs`,
/// else `spec.podCIDR`; `None` until node IPAM has set one.
pub fn pod_cidr(node: &Node) -> Option<Ipv4Net> {
    let spec = node.spec.as_ref()?;
    spec.pod_cidrs
        .iter()
        .flatten()
        .chain(spec.pod_cidr.iter())
        .filter_map(|c| c.parse::<IpNet>().ok())
        .find_map(|net| match net {
            IpNet::V4(v4) => Some(v4.trunc()),
            IpNet::V6(_) => None,
        })
}

/// What is wrong with a podCIDR for a network of `subnet_len`-bit
/// subnets: node IPAM's `--node-cidr-mask-size` must match net-conf's
/// `SubnetLen`.
pub fn check_subnet_len(subnet: Ipv4Net, subnet_len: u8) -> Result<(), String> {
    if subnet.prefix_len() == subnet_len {
        return Ok(());
    }
    Err(format!(
        "the node's podCIDR {subnet} is a /{}, but net-conf.json's SubnetLen is {subnet_len}: \
         set kube-controller-manager's --node-cidr-mask-size={subnet_len} or SubnetLen to {}",
        subnet.prefix_len(),
        subnet.prefix_len()
    ))
}

/// A Node as a peer's lease, as flannel's kube subnet manager reads it:
/// it needs a podCIDR and flannel's backend and public-ip annotations.
/// Kubernetes leases do not expire; a deleted Node is a deleted lease.
pub fn lease_of(node: &Node) -> Option<SubnetLease> {
    let annotations = node.metadata.annotations.as_ref()?;
    let subnet = pod_cidr(node)?;
    let public_ip: IpAddr = annotations.get(PUBLIC_IP)?.parse().ok()?;
    annotations.get(BACKEND_TYPE)?;
    let data: Value = serde_json::from_str(annotations.get(BACKEND_DATA)?).ok()?;
    // The agent reads a peer's VTEP MAC as weft's own key.
    let backend = match data.get("VtepMAC") {
        Some(mac) => json!({"vtepMAC": mac}),
        None => json!({}),
    };
    Some(SubnetLease {
        node: node.metadata.name.clone()?,
        subnet: IpNet::V4(subnet),
        public_ip,
        backend,
        expires_at: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(annotations: &[(&str, &str)], pod_cidrs: &[&str]) -> Node {
        serde_json::from_value(json!({
            "metadata": {"name": "node-1", "annotations":
                annotations.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_, _>>()},
            "spec": {"podCIDR": pod_cidrs.first(), "podCIDRs": pod_cidrs},
        }))
        .unwrap()
    }

    #[test]
    fn annotations_are_flannels_exactly() {
        let vxlan = BackendData::Vxlan {
            vni: 1,
            vtep_mac: "0a:58:c6:12:00:0b".into(),
        };
        let a = annotations(&vxlan, "198.18.0.11".parse().unwrap());
        assert_eq!(a[KUBE_SUBNET_MANAGER], "true");
        assert_eq!(a[BACKEND_TYPE], "vxlan");
        assert_eq!(
            a[BACKEND_DATA],
            r#"{"VNI":1,"VtepMAC":"0a:58:c6:12:00:0b"}"#
        );
        assert_eq!(a[PUBLIC_IP], "198.18.0.11");
        let hostgw = annotations(&BackendData::HostGw, "198.18.0.12".parse().unwrap());
        assert_eq!(hostgw[BACKEND_TYPE], "host-gw");
        assert_eq!(hostgw[BACKEND_DATA], "null");
        assert!(a.keys().all(|k| k.starts_with("flannel.alpha.coreos.com/")));
    }

    #[test]
    fn a_node_is_a_peer_once_it_has_the_annotations_and_a_pod_cidr() {
        let a = annotations(
            &BackendData::Vxlan {
                vni: 1,
                vtep_mac: "0a:58:c6:12:00:0b".into(),
            },
            "198.18.0.11".parse().unwrap(),
        );
        let pairs: Vec<(&str, &str)> = a.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let lease = lease_of(&node(&pairs, &["10.244.3.0/24"])).unwrap();
        assert_eq!(lease.node, "node-1");
        assert_eq!(lease.subnet.to_string(), "10.244.3.0/24");
        assert_eq!(lease.public_ip.to_string(), "198.18.0.11");
        assert_eq!(lease.backend, json!({"vtepMAC": "0a:58:c6:12:00:0b"}));
        assert!(
            lease.is_live(std::time::SystemTime::now()),
            "node leases do not expire"
        );
        assert!(lease_of(&node(&pairs, &[])).is_none(), "no podCIDR yet");
        assert!(
            lease_of(&node(&pairs[..2], &["10.244.3.0/24"])).is_none(),
            "annotations missing"
        );
        assert!(annotated(&node(&pairs, &[]), &a));
        assert!(!annotated(&node(&pairs[1..], &[]), &a));
    }

    #[test]
    fn the_pod_cidr_is_the_first_ipv4_one() {
        assert_eq!(
            pod_cidr(&node(&[], &["fd00:10::/64", "10.244.7.0/24"])).map(|n| n.to_string()),
            Some("10.244.7.0/24".into())
        );
        assert_eq!(pod_cidr(&node(&[], &[])), None);
        assert_eq!(
            check_subnet_len("10.244.7.0/24".parse().unwrap(), 24),
            Ok(())
        );
        let err = check_subnet_len("10.244.7.0/25".parse().unwrap(), 24).unwrap_err();
        assert!(err.contains("--node-cidr-mask-size=24"), "{err}");
    }

    #[test]
    fn the_overwrite_wins_and_a_bad_one_says_so() {
        let detected: IpAddr = "198.18.0.11".parse().unwrap();
        assert_eq!(public_ip(&node(&[], &[]), detected), Ok(detected));
        let moved = node(&[(PUBLIC_IP_OVERWRITE, "198.19.0.5")], &[]);
        assert_eq!(
            public_ip(&moved, detected).unwrap().to_string(),
            "198.19.0.5"
        );
        let bad = node(&[(PUBLIC_IP_OVERWRITE, "nope")], &[]);
        assert!(public_ip(&bad, detected)
            .unwrap_err()
            .contains(PUBLIC_IP_OVERWRITE));
    }
}
