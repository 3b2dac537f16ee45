//! `deploy/weft.yaml` against a real kube-apiserver (the peers' build): the
//! server accepts every object (`kubectl apply --dry-run=server`), and once
//! applied the agent's ServiceAccount may do what the agent needs and no
//! more; a lab applies the same objects but the DaemonSet.

mod common;

use common::control_plane::ControlPlane;

const MANIFEST: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy/weft.yaml");
const AGENT: &str = "system:serviceaccount:weft-system:weft";

/// `kubectl auth can-i VERB RESOURCE[/SUBRESOURCE] -n NS` as the agent.
fn agent_may(cp: &ControlPlane, verb: &str, resource: &str, namespace: &str) -> bool {
    let (resource, subresource) = resource.split_once('/').unwrap_or((resource, ""));
    let subresource = format!("--subresource={subresource}");
    let mut args = vec![
        "auth", "can-i", verb, resource, "-n", namespace, "--as", AGENT,
    ];
    if !subresource.ends_with('=') {
        args.push(&subresource);
    }
    can_i(cp, &args)
}

/// `kubectl auth can-i VERB RESOURCE/NAME -n NS` as the agent.
fn agent_may_touch(cp: &ControlPlane, verb: &str, object: &str, namespace: &str) -> bool {
    can_i(
        cp,
        &[
            "auth", "can-i", verb, object, "-n", namespace, "--as", AGENT,
        ],
    )
}

fn can_i(cp: &ControlPlane, args: &[&str]) -> bool {
    let out = cp.kubectl(args);
    String::from_utf8_lossy(&out.stdout).trim() == "yes"
}

#[test]
fn the_install_manifest_is_accepted_and_its_role_is_least_privilege() {
    let cp = ControlPlane::start();
    cp.prepare_install();
    let dry = cp.kubectl_ok(&["apply", "--dry-run=server", "-f", MANIFEST]);
    for object in [
        "daemonset.apps/weft",
        "clusterrole.rbac.authorization.k8s.io/weft",
        "configmap/weft-net-conf",
        "configmap/weft-lb-pools",
        "role.rbac.authorization.k8s.io/weft",
    ] {
        assert!(dry.contains(object), "{object} missing: {dry}");
    }
    cp.kubectl_ok(&["apply", "-f", MANIFEST]);
    // A cluster that has ClusterNetworkPolicies has their CRD.
    let crd =
        weft_lab::control_plane::peer_crd(weft_lab::control_plane::CLUSTER_NETWORK_POLICY_CRD)
            .unwrap();
    cp.kubectl_ok(&["apply", "--server-side", "-f", crd.to_str().unwrap()]);
    for (verb, resource, namespace) in [
        ("watch", "nodes", "default"),
        ("patch", "nodes/status", "default"),
        ("watch", "services", "default"),
        ("watch", "endpointslices.discovery.k8s.io", "default"),
        ("watch", "servicecidrs.networking.k8s.io", "default"),
        ("watch", "networkpolicies.networking.k8s.io", "default"),
        (
            "watch",
            "clusternetworkpolicies.policy.networking.k8s.io",
            "default",
        ),
        ("watch", "pods", "default"),
        ("watch", "namespaces", "default"),
        ("patch", "services/status", "default"),
        ("create", "events.events.k8s.io", "default"),
        ("create", "leases.coordination.k8s.io", "kube-node-lease"),
        ("patch", "leases.coordination.k8s.io", "kube-node-lease"),
    ] {
        assert!(
            agent_may(&cp, verb, resource, namespace),
            "the agent may not {verb} {resource}"
        );
    }
    for (verb, resource, namespace) in [
        ("delete", "pods", "default"),
        ("patch", "nodes", "default"),
        ("delete", "nodes", "default"),
        ("create", "services", "default"),
        ("get", "secrets", "weft-system"),
        ("create", "leases.coordination.k8s.io", "default"),
    ] {
        assert!(
            !agent_may(&cp, verb, resource, namespace),
            "the agent may {verb} {resource}"
        );
    }
    // In its own namespace: its allocator Lease and pools, nothing else.
    for (verb, object, allowed) in [
        ("get", "leases.coordination.k8s.io/weft-lb-allocator", true),
        (
            "update",
            "leases.coordination.k8s.io/weft-lb-allocator",
            true,
        ),
        ("update", "leases.coordination.k8s.io/other", false),
        ("get", "configmaps/weft-lb-pools", true),
        ("get", "configmaps/weft-net-conf", false),
        ("update", "configmaps/weft-lb-pools", false),
    ] {
        assert_eq!(
            agent_may_touch(&cp, verb, object, "weft-system"),
            allowed,
            "may the agent {verb} {object}?"
        );
    }
}

#[test]
fn a_lab_installs_the_manifest_but_its_daemonset_and_the_agent_gets_the_same_rights() {
    let cp = ControlPlane::start();
    // The manifest makes weft-system itself; the Role for the heartbeats
    // goes in kube-node-lease, which the API server makes.
    cp.await_lease_namespace();
    let applied = cp.with_cluster(|cluster| async move {
        weft_lab::install::apply(cluster.client()).await.unwrap()
    });
    assert!(applied >= 8, "{applied} objects");
    // Applied again: nothing to refuse.
    cp.with_cluster(
        |cluster| async move { weft_lab::install::apply(cluster.client()).await.unwrap() },
    );
    let daemonsets = cp.kubectl_ok(&["get", "daemonsets", "-A", "-o", "name"]);
    assert!(daemonsets.trim().is_empty(), "{daemonsets}");
    assert!(agent_may(&cp, "patch", "nodes/status", "default"));
    assert!(agent_may_touch(
        &cp,
        "get",
        "configmaps/weft-lb-pools",
        "weft-system"
    ));
    assert!(!agent_may(&cp, "delete", "pods", "default"));
}
