//! weft-cluster's Kubernetes source against a real kube-apiserver (the
//! peers' build, in a namespace of the test's own): a watch lists what
//! exists, then follows what is created and deleted through the API; the
//! subnet is the Node's podCIDR and the node is published with flannel's
//! annotations exactly; Nodes carrying them are peers; heartbeats are
//! Leases; one candidate at a time leads the LoadBalancer allocator (a
//! Lease written with optimistic concurrency) and its pools are a
//! ConfigMap.

mod common;

use std::time::Duration;

use common::control_plane::ControlPlane;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::events::v1::Event as KubeEvent;
use kube::api::{DeleteParams, PostParams};
use kube::Api;
use serde_json::json;
use weft_cluster::leases::{BackendData, LeaseRequest, NodePublication, SubnetRange};
use weft_cluster::{
    Cluster, Event, EventStream, Liveness, LoadBalancerAllocation, SubnetManager, Warning, Warnings,
};
use weft_proxy::model::{SERVICE_PROXY_NAME_LABEL, UNWATCHED_LABELS};

fn service(name: &str) -> Service {
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"ports": [{"port": 80}]}
    }))
    .unwrap()
}

/// The next event of `stream`, failing the test after 20 s.
async fn next<K>(stream: &mut EventStream<K>) -> Event<K> {
    tokio::time::timeout(Duration::from_secs(20), stream.next())
        .await
        .expect("an event within 20 s")
        .expect("the watch goes on")
        .expect("no watch error")
}

fn name(event: &Event<Service>) -> String {
    match event {
        Event::Apply(s) | Event::Delete(s) | Event::InitApply(s) => {
            s.metadata.name.clone().unwrap_or_default()
        }
        Event::Init => "<init>".into(),
        Event::InitDone => "<done>".into(),
    }
}

#[test]
fn a_kubernetes_watch_lists_then_follows_the_api_server() {
    let control_plane = ControlPlane::start();
    control_plane.with_cluster(|cluster| async move {
        {
            let api: Api<Service> = Api::namespaced(cluster.client().clone(), "default");
            api.create(&PostParams::default(), &service("before"))
                .await
                .unwrap();
            let mut watch = cluster.watch::<Service>();
            let mut listed = Vec::new();
            loop {
                let event = next(&mut watch).await;
                let done = matches!(event, Event::InitDone);
                listed.push(name(&event));
                if done {
                    break;
                }
            }
            assert_eq!(listed.first().map(String::as_str), Some("<init>"));
            assert!(listed.contains(&"before".to_string()), "{listed:?}");
            api.create(&PostParams::default(), &service("after"))
                .await
                .unwrap();
            let event = next(&mut watch).await;
            assert!(
                matches!(&event, Event::Apply(s) if s.metadata.name.as_deref() == Some("after")),
                "{}",
                name(&event)
            );
            api.delete("before", &DeleteParams::default())
                .await
                .unwrap();
            let event = next(&mut watch).await;
            assert!(
                matches!(&event, Event::Delete(s) if s.metadata.name.as_deref() == Some("before")),
                "{}",
                name(&event)
            );
            assert_eq!(cluster.problem(), None);

            // Scoped as kube-proxy: another proxy's Service is not seen.
            let mut theirs = service("theirs");
            theirs.metadata.labels =
                Some([(SERVICE_PROXY_NAME_LABEL.to_string(), "other".to_string())].into());
            api.create(&PostParams::default(), &theirs).await.unwrap();
            let mut scoped = cluster.watch_without::<Service>(UNWATCHED_LABELS);
            let mut listed = Vec::new();
            loop {
                let event = next(&mut scoped).await;
                if matches!(event, Event::InitDone) {
                    break;
                }
                listed.push(name(&event));
            }
            assert!(listed.contains(&"after".to_string()), "{listed:?}");
            assert!(!listed.contains(&"theirs".to_string()), "{listed:?}");
        }
    });
}

/// The proxy's warning about a Service is an Event regarding it (its UID
/// included, so `kubectl describe` shows it), reported by the node; none
/// for a Service that is gone.
#[test]
fn a_warning_is_an_event_regarding_the_service() {
    let cp = ControlPlane::start();
    cp.with_cluster(|cluster| async move {
        let api: Api<Service> = Api::namespaced(cluster.client().clone(), "default");
        let created = api
            .create(&PostParams::default(), &service("broken"))
            .await
            .unwrap();
        let warning = Warning {
            reason: "FailedToProgram",
            note: "not programmed on node node-1: nft said no".into(),
            node: "node-1".into(),
        };
        cluster
            .warn_service("default", "broken", &warning)
            .await
            .unwrap();
        cluster
            .warn_service("default", "gone", &warning)
            .await
            .unwrap();
        let events: Api<KubeEvent> = Api::namespaced(cluster.client().clone(), "default");
        // The API server's own controllers may warn in `default` too (the
        // ClusterIP repair loop at start): only weft's count here.
        let ours: Vec<KubeEvent> = events
            .list(&Default::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .filter(|e| e.reporting_controller.as_deref() == Some("weft-proxy"))
            .collect();
        assert_eq!(ours.len(), 1, "{ours:?}");
        let event = &ours[0];
        let regarding = event.regarding.clone().unwrap();
        assert_eq!(
            (regarding.name.as_deref(), regarding.uid.as_ref()),
            (Some("broken"), created.metadata.uid.as_ref())
        );
        assert_eq!(event.reason.as_deref(), Some("FailedToProgram"));
        assert_eq!(event.type_.as_deref(), Some("Warning"));
        assert_eq!(event.note.as_deref(), Some(warning.note.as_str()));
        assert_eq!(event.reporting_controller.as_deref(), Some("weft-proxy"));
        assert_eq!(event.reporting_instance.as_deref(), Some("node-1"));
    });
}

fn node(name: &str, pod_cidr: &str, annotations: serde_json::Value) -> Node {
    serde_json::from_value(json!({
        "metadata": {"name": name, "annotations": annotations},
        "spec": {"podCIDR": pod_cidr, "podCIDRs": [pod_cidr]}
    }))
    .unwrap()
}

#[test]
fn subnets_and_liveness_follow_flannels_kube_subnet_manager() {
    let control_plane = ControlPlane::start();
    control_plane.with_cluster(|cluster| async move {
            {
                let nodes: Api<Node> = Api::all(cluster.client().clone());
                // What node IPAM would have set.
                nodes
                    .create(&PostParams::default(), &node("node-a", "10.244.1.0/24", json!({})))
                    .await
                    .unwrap();
                let request = LeaseRequest {
                    node: "node-a".into(),
                    public_ip: "198.18.0.11".parse().unwrap(),
                    backend: json!({"vtepMAC": "0a:58:c6:12:00:0b"}),
                    backend_data: BackendData::Vxlan { vni: 1, vtep_mac: "0a:58:c6:12:00:0b".into() },
                    ttl: Duration::from_secs(60),
                    allowed: SubnetRange {
                        min: "10.244.1.0/24".parse().unwrap(),
                        max: "10.244.255.0/24".parse().unwrap(),
                    },
                };
                let lease = cluster.acquire(&request, |_| None).await.unwrap();
                assert_eq!(lease.subnet.to_string(), "10.244.1.0/24", "the podCIDR, not a choice");
                let publication = NodePublication {
                    node: "node-a".into(),
                    subnet: lease.subnet,
                    public_ip: lease.public_ip,
                    backend: BackendData::Vxlan {
                        vni: 1,
                        vtep_mac: "0a:58:c6:12:00:0b".into(),
                    },
                };
                cluster.publish_node(&publication).await.unwrap();
                let published = nodes.get("node-a").await.unwrap();
                let annotations = published.metadata.annotations.clone().unwrap();
                assert_eq!(annotations["flannel.alpha.coreos.com/kube-subnet-manager"], "true");
                assert_eq!(annotations["flannel.alpha.coreos.com/backend-type"], "vxlan");
                assert_eq!(
                    annotations["flannel.alpha.coreos.com/backend-data"],
                    r#"{"VNI":1,"VtepMAC":"0a:58:c6:12:00:0b"}"#
                );
                assert_eq!(annotations["flannel.alpha.coreos.com/public-ip"], "198.18.0.11");
                let conditions = published.status.unwrap().conditions.unwrap();
                assert!(
                    conditions
                        .iter()
                        .any(|c| c.type_ == "NetworkUnavailable" && c.status == "False"),
                    "{conditions:?}"
                );
                // Publishing again writes nothing.
                let version = published.metadata.resource_version.clone();
                cluster.publish_node(&publication).await.unwrap();
                let again = nodes.get("node-a").await.unwrap();
                assert_eq!(again.metadata.resource_version, version);

                // Peers: node-a, then a flanneld node joining and leaving.
                let mut leases = cluster.watch_leases();
                let mut listed = Vec::new();
                loop {
                    match next(&mut leases).await {
                        Event::InitApply(l) => listed.push(l.node),
                        Event::InitDone => break,
                        _ => {}
                    }
                }
                assert_eq!(listed, ["node-a"]);
                let flanneld = json!({
                    "flannel.alpha.coreos.com/kube-subnet-manager": "true",
                    "flannel.alpha.coreos.com/backend-type": "vxlan",
                    "flannel.alpha.coreos.com/backend-data": r#"{"VNI":1,"VtepMAC":"0a:58:c6:12:00:0c"}"#,
                    "flannel.alpha.coreos.com/public-ip": "198.18.0.12",
                });
                nodes
                    .create(&PostParams::default(), &node("node-b", "10.244.2.0/24", flanneld))
                    .await
                    .unwrap();
                match next(&mut leases).await {
                    Event::Apply(l) => {
                        assert_eq!(l.node, "node-b");
                        assert_eq!(l.subnet.to_string(), "10.244.2.0/24");
                        assert_eq!(l.backend, json!({"vtepMAC": "0a:58:c6:12:00:0c"}));
                    }
                    other => panic!("not node-b's lease: {other:?}"),
                }
                nodes.delete("node-b", &DeleteParams::default()).await.unwrap();
                loop {
                    match next(&mut leases).await {
                        Event::Delete(l) if l.node == "node-b" => break,
                        Event::Apply(l) if l.node == "node-b" => continue, // deletion in progress
                        other => panic!("not node-b's deletion: {other:?}"),
                    }
                }

                assert!(cluster.live_nodes().await.unwrap().is_empty());
                cluster.beat("node-a", Duration::from_secs(30)).await.unwrap();
                cluster.beat("node-a", Duration::from_secs(30)).await.unwrap();
                let live = cluster.live_nodes().await.unwrap();
                assert_eq!(live, ["node-a".to_string()].into());
            }
    });
}

#[test]
fn one_candidate_leads_the_load_balancer_allocator_until_its_lease_runs_out() {
    let cp = ControlPlane::start();
    cp.kubectl_ok(&["create", "namespace", "weft-system"]);
    cp.with_cluster(|cluster| async move {
        let cluster = cluster.in_namespace("weft-system".into());
        let term = Duration::from_secs(2);
        // Both race for the new Lease: exactly one creates it.
        let (a, b) = tokio::join!(cluster.lead("node-a", term), cluster.lead("node-b", term));
        let (a, b) = (a.unwrap(), b.unwrap());
        assert!(a ^ b, "node-a leads: {a}, node-b leads: {b}");
        let (leader, other) = if a {
            ("node-a", "node-b")
        } else {
            ("node-b", "node-a")
        };
        assert!(
            cluster.lead(leader, term).await.unwrap(),
            "the leader renews"
        );
        assert!(!cluster.lead(other, term).await.unwrap());
        // The leader stops renewing: after its term the other takes over.
        tokio::time::sleep(Duration::from_millis(2100)).await;
        assert!(cluster.lead(other, term).await.unwrap(), "no take-over");
        assert!(!cluster.lead(leader, term).await.unwrap());
        // Pools come from the ConfigMap; none is no pools.
        assert_eq!(cluster.load_balancer_pools().await.unwrap(), None);
    });
    cp.kubectl_ok(&[
        "-n",
        "weft-system",
        "create",
        "configmap",
        "weft-lb-pools",
        "--from-literal=pools=198.18.0.200/29",
    ]);
    let pools = cp.with_cluster(|cluster| async move {
        let cluster = cluster.in_namespace("weft-system".into());
        cluster.load_balancer_pools().await.unwrap()
    });
    assert_eq!(pools.as_deref(), Some("198.18.0.200/29"));
}
