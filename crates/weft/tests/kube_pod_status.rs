//! The lab kubelet's supervisor keeping a pod's status on a real
//! kube-apiserver (the peers' build), as it will in a lab with a
//! Kubernetes control plane: a container that ends is `terminated` in the
//! pod's status and the pod Failed; one that keeps crashing under
//! `restartPolicy: Always` is restarted, counted and backs off in
//! `CrashLoopBackOff`; a pod deleted and made again under the same name
//! (another UID) is not written to. And the other half of a kubelet's
//! life, with the real kube-scheduler and the Node authorizer: a node
//! registers itself with its own certificate through weft's
//! `node_registration` (and no other node), renews its Lease, and may read
//! the pods bound to it and no others.

mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use common::control_plane::ControlPlane;
use common::kube_node::{with_api, Process};
use common::{wait_until, WEFT};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use kube::api::PostParams;
use kube::Api;
use serde_json::json;
use weft_lab::node_registration;

/// Creates pod `name` as a kubelet would leave it running: container `c`
/// running and ready, the pod Running and Ready; its UID.
fn running_pod(cp: &ControlPlane, name: &'static str) -> String {
    with_api(cp, move |nodes| async move {
        let pods: Api<Pod> = Api::namespaced(nodes.into_client(), "default");
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": name},
            "spec": {"nodeName": "node-a", "containers": [{"name": "c", "image": "x"}]}
        }))
        .unwrap();
        let mut pod = pods.create(&PostParams::default(), &pod).await.unwrap();
        pod.status = serde_json::from_value(json!({
            "phase": "Running",
            "conditions": [{"type": "Ready", "status": "True"}],
            "containerStatuses": [{"name": "c", "image": "x", "imageID": "", "ready": true,
                "restartCount": 0, "started": true, "containerID": "weft://1",
                "state": {"running": {"startedAt": "2026-12-01T00:00:00Z"}}}]
        }))
        .unwrap();
        let pod = pods
            .replace_status(name, &PostParams::default(), &pod)
            .await
            .unwrap();
        pod.metadata.uid.unwrap()
    })
}

fn read_pod(cp: &ControlPlane, name: &'static str) -> serde_json::Value {
    with_api(cp, move |nodes| async move {
        let pods: Api<Pod> = Api::namespaced(nodes.into_client(), "default");
        serde_json::to_value(pods.get(name).await.unwrap()).unwrap()
    })
}

/// `weft lab supervise` of container `c` of pod `name`, its status kept on
/// the API server.
fn supervise(cp: &ControlPlane, name: &str, uid: &str, policy: &str, script: &str) -> Process {
    let child = cp
        .ns()
        .command(WEFT)
        .args(["lab", "supervise", "--lab", "kps", "--namespace", "default"])
        .args(["--pod", name, "--uid", uid, "--container", "c"])
        .args(["--restart-policy", policy, "--kubeconfig"])
        .arg(&cp.kubeconfig)
        .args(["--", "sh", "-c", script])
        .stdin(Stdio::null())
        .spawn()
        .expect("starting weft lab supervise");
    Process(child)
}

#[test]
fn a_supervisor_keeps_the_pods_status_on_the_api_server() {
    let cp = ControlPlane::start();
    // What kube-controller-manager would make, which pods need.
    cp.kubectl_ok(&["create", "serviceaccount", "default"]);
    let uid = running_pod(&cp, "quits");
    let _quits = supervise(&cp, "quits", &uid, "Never", "exit 3");
    let failed = wait_until(Duration::from_secs(10), || {
        read_pod(&cp, "quits")["status"]["phase"] == "Failed"
    });
    let pod = read_pod(&cp, "quits");
    assert!(failed.is_some(), "{pod:#}");
    let c = &pod["status"]["containerStatuses"][0];
    assert_eq!(c["state"]["terminated"]["exitCode"], 3, "{pod:#}");
    assert_eq!(c["ready"], false);
    let ready = pod["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Ready")
        .unwrap()
        .clone();
    assert_eq!(ready["status"], "False", "{pod:#}");

    let uid = running_pod(&cp, "crashes");
    let _crashes = supervise(&cp, "crashes", &uid, "Always", "sleep 0.2; exit 1");
    let backing_off = wait_until(Duration::from_secs(10), || {
        read_pod(&cp, "crashes")["status"]["containerStatuses"][0]["state"]["waiting"]["reason"]
            == "CrashLoopBackOff"
    });
    let pod = read_pod(&cp, "crashes");
    assert!(backing_off.is_some(), "{pod:#}");
    let c = &pod["status"]["containerStatuses"][0];
    assert_eq!(c["restartCount"], 1, "{pod:#}");
    assert_eq!(c["lastState"]["terminated"]["exitCode"], 1, "{pod:#}");
    assert_eq!(pod["status"]["phase"], "Running");

    // Another pod under the same name: the old supervisor leaves it alone.
    let stale = running_pod(&cp, "again");
    cp.kubectl_ok(&["delete", "pod", "again", "--grace-period=0", "--force"]);
    let uid = running_pod(&cp, "again");
    assert_ne!(stale, uid);
    let mut old = supervise(&cp, "again", &stale, "Never", "exit 5");
    let ended = old.0.wait().unwrap();
    assert_eq!(ended.code(), Some(5));
    let pod = read_pod(&cp, "again");
    assert!(
        pod["status"]["containerStatuses"][0]["state"]["running"].is_object(),
        "{pod:#}"
    );
}

/// `kubectl ARGS` as node `node` (its kubelet's certificate): whether it
/// succeeded, and what it printed.
fn kubectl_as(cp: &ControlPlane, node: &Path, args: &[&str]) -> (bool, String) {
    let out = cp
        .ns()
        .command(common::control_plane::peer("kubectl"))
        .arg("--kubeconfig")
        .arg(node)
        .args(args)
        .output()
        .expect("running kubectl");
    (
        out.status.success(),
        common::text(&[out.stdout, out.stderr].concat()),
    )
}

/// Node `name` registered by weft's lab kubelet code with the
/// credentials of `kubeconfig`, its Lease renewed; the API server's
/// refusal, if any.
fn register(cp: &ControlPlane, kubeconfig: &Path, name: &'static str) -> Result<(), String> {
    cp.with_cluster_as(kubeconfig, move |cluster| async move {
        let client = cluster.client();
        let ip = "198.18.0.11".parse().unwrap();
        node_registration::register(client, name, ip)
            .await
            .map_err(|e| e.to_string())?;
        node_registration::renew(client, name)
            .await
            .map_err(|e| e.to_string())
    })
}

#[test]
fn a_node_registers_itself_and_sees_the_pods_the_scheduler_binds_to_it_and_no_more() {
    let mut cp = ControlPlane::start();
    cp.kubectl_ok(&["create", "serviceaccount", "default"]);
    // The node lifecycle controller lifts the not-ready taint a new Node
    // gets once the node says it is Ready.
    cp.start_controller_manager("10.244.0.0/16");
    cp.start_scheduler();
    let node_a = cp.node_kubeconfig("node-a");
    register(&cp, &node_a, "node-a").unwrap();
    let lease = cp.with_cluster(|cluster| async move {
        let leases: Api<Lease> = Api::namespaced(cluster.client().clone(), "kube-node-lease");
        leases.get("node-a").await.unwrap()
    });
    assert_eq!(
        lease.spec.unwrap().holder_identity.as_deref(),
        Some("node-a")
    );
    let node = cp.kubectl_ok(&["get", "node", "node-a", "-o", "wide"]);
    assert!(
        node.contains("Ready") && node.contains("198.18.0.11"),
        "{node}"
    );
    // NodeRestriction: a node registers only itself.
    let refused = register(&cp, &node_a, "node-b").unwrap_err();
    assert!(refused.contains("forbidden"), "{refused}");

    // The scheduler binds a pod to the only node; its kubelet may read it.
    cp.kubectl_ok(&["run", "web", "--image=x", "--restart=Never"]);
    let bound = wait_until(Duration::from_secs(60), || {
        read_pod(&cp, "web")["spec"]["nodeName"] == "node-a"
    });
    assert!(bound.is_some(), "{:#}", read_pod(&cp, "web"));
    let selector = "--field-selector=spec.nodeName=node-a";
    let (ok, out) = kubectl_as(&cp, &node_a, &["get", "pods", "-A", selector, "-o", "name"]);
    assert!(ok && out.contains("pod/web"), "{out}");
    // A pod bound elsewhere is not node-a's to read.
    let elsewhere = json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "elsewhere"},
        "spec": {"nodeName": "node-b", "containers": [{"name": "c", "image": "x"}]}});
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), elsewhere.to_string()).unwrap();
    cp.kubectl_ok(&["create", "-f", file.path().to_str().unwrap()]);
    let (ok, out) = kubectl_as(&cp, &node_a, &["get", "pod", "elsewhere"]);
    assert!(!ok && out.contains("forbidden"), "{out}");
}
