//! A lab node's standing with a kube-apiserver, as a kubelet keeps it (for
//! labs whose control plane is Kubernetes): the node registers its own
//! Node with its own certificate (so the Node authorizer and
//! NodeRestriction apply) and reports its addresses, capacity and the
//! Ready condition through `nodes/status`; then it renews its Lease in
//! `kube-node-lease`, which is how the node lifecycle controller knows it
//! is alive (a kubelet renews every 10 s a Lease of 40 s; the Lease has
//! the shape of weft's agents' heartbeats, `weft_cluster::liveness`).
//!
//! The shapes are decided here (pure); [`register`] and [`renew`] only
//! write them. It must not run pods: that is the kubelet's other half.

use std::net::Ipv4Addr;

use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, NodeAddress, NodeCondition, NodeStatus};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::json;
use weft_cluster::liveness::{self, HEARTBEAT_NAMESPACE};

/// How long a node's Lease lasts unrenewed (the kubelet's default).
pub const LEASE_DURATION: Duration = Duration::from_secs(40);
/// The field manager of the node's writes.
const MANAGER: &str = "weft-lab-kubelet";

/// What a lab node offers the scheduler: the lab runs processes, not
/// cgroups, so these are nominal, as large as a small machine's.
const CAPACITY: [(&str, &str); 3] = [("cpu", "4"), ("memory", "8Gi"), ("pods", "110")];

/// The node's status as its kubelet reports it at `at`: its underlay
/// address, its name, its capacity, Ready.
pub fn status(name: &str, ip: Ipv4Addr, at: Time) -> NodeStatus {
    let capacity: std::collections::BTreeMap<String, Quantity> = CAPACITY
        .iter()
        .map(|(k, v)| (k.to_string(), Quantity(v.to_string())))
        .collect();
    NodeStatus {
        addresses: Some(vec![
            NodeAddress {
                type_: "InternalIP".into(),
                address: ip.to_string(),
            },
            NodeAddress {
                type_: "Hostname".into(),
                address: name.into(),
            },
        ]),
        allocatable: Some(capacity.clone()),
        capacity: Some(capacity),
        conditions: Some(vec![NodeCondition {
            type_: "Ready".into(),
            status: "True".into(),
            reason: Some("KubeletReady".into()),
            message: Some("weft lab kubelet is posting ready status".into()),
            last_heartbeat_time: Some(at.clone()),
            last_transition_time: Some(at),
        }]),
        ..NodeStatus::default()
    }
}

/// Creates the node's Node (if it is not there) and writes its status.
pub async fn register(client: &Client, name: &str, ip: Ipv4Addr) -> Result<(), kube::Error> {
    let nodes: Api<Node> = Api::all(client.clone());
    // Created with its status, as a kubelet does: a Node without the
    // Ready condition would be tainted not-ready (and skipped by the
    // scheduler) until the node lifecycle controller looks again.
    let node = Node {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: Some([("kubernetes.io/hostname".to_string(), name.to_string())].into()),
            // One a kubelet sets; flanneld (`--kube-subnet-mgr`) fails on
            // a Node without any annotation.
            annotations: Some(
                [(
                    "volumes.kubernetes.io/controller-managed-attach-detach".to_string(),
                    "true".to_string(),
                )]
                .into(),
            ),
            ..ObjectMeta::default()
        },
        status: Some(status(name, ip, crate::objects::now())),
        ..Node::default()
    };
    match nodes.create(&PostParams::default(), &node).await {
        Ok(_) => {}
        Err(kube::Error::Api(status)) if status.is_already_exists() => {}
        Err(e) => return Err(e),
    }
    let patch = json!({"status": status(name, ip, crate::objects::now())});
    nodes
        .patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    Ok(())
}

/// Renews the node's Lease (creating it the first time).
pub async fn renew(client: &Client, name: &str) -> Result<(), kube::Error> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), HEARTBEAT_NAMESPACE);
    // The same shape as weft's agents' heartbeats: named after the node,
    // held by it.
    let lease = liveness::heartbeat(name, LEASE_DURATION, liveness::now());
    leases
        .patch(
            name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&lease),
        )
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_reports_its_address_capacity_and_readiness() {
        let at = crate::objects::now();
        let status = status("node-1", Ipv4Addr::new(198, 18, 0, 11), at.clone());
        let addresses = status.addresses.unwrap();
        assert_eq!(
            (addresses[0].type_.as_str(), addresses[0].address.as_str()),
            ("InternalIP", "198.18.0.11")
        );
        assert_eq!(status.allocatable.unwrap()["pods"], Quantity("110".into()));
        let ready = &status.conditions.unwrap()[0];
        assert_eq!(
            (ready.type_.as_str(), ready.status.as_str()),
            ("Ready", "True")
        );
        assert_eq!(ready.last_heartbeat_time, Some(at));
    }
}
