//! What only a lab whose control plane is Kubernetes has: kubectl on the
//! host drives it (through the lab's forwarder and admin kubeconfig), the
//! real Deployment, ReplicaSet and EndpointSlice controllers and the
//! scheduler act on it, and the lab's kubelets report the truth — a
//! container that crashes goes to CrashLoopBackOff, a pod that is not
//! ready leaves its Service. The suites that hold in both modes run in
//! both from lab.rs and lab_proxy.rs.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{wait_until, Lab, Mode};
use serde_json::Value;

/// An agnhost netexec container serving HTTP on its port `http` (8080), as
/// the fields of a YAML flow mapping.
const NETEXEC: &str = "name: netexec, image: registry.k8s.io/e2e-test-images/agnhost:2.53, \
    args: [netexec, --http-port=8080, --udp-port=-1], ports: [{name: http, containerPort: 8080}]";

/// A Deployment of `replicas` netexec pods and its ClusterIP Service.
fn web(replicas: u32) -> String {
    format!(
        "apiVersion: apps/v1
kind: Deployment
metadata: {{name: web}}
spec:
  replicas: {replicas}
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata: {{labels: {{app: web}}}}
    spec:
      containers: [{{{NETEXEC}}}]
---
apiVersion: v1
kind: Service
metadata: {{name: web}}
spec:
  selector: {{app: web}}
  ports: [{{port: 80, targetPort: http}}]
"
    )
}

fn kubectl_apply(lab: &Lab, manifest: &str) {
    let file = std::env::temp_dir().join(format!("{}-{}.yaml", lab.name, manifest.len()));
    std::fs::write(&file, manifest).unwrap();
    lab.kubectl_ok(&["apply", "-f", file.to_str().unwrap()]);
    let _ = std::fs::remove_file(&file);
}

/// The pods labelled `app=<app>` that run with an address.
fn running(lab: &Lab, app: &str) -> Vec<Value> {
    lab.pods()
        .into_iter()
        .filter(|p| p["metadata"]["labels"]["app"] == app)
        .filter(|p| p["status"]["phase"] == "Running" && p["status"]["podIP"].is_string())
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
        .collect()
}

/// Waits until `count` pods of `app` run; they come back.
fn wait_running(lab: &Lab, app: &str, count: usize) -> Vec<Value> {
    let mut pods = Vec::new();
    let done = wait_until(Duration::from_secs(60), || {
        pods = running(lab, app);
        pods.len() == count
    });
    assert!(
        done.is_some(),
        "{count} pods of {app} never ran: {}",
        lab.ok(&["get", "pods", "-A"])
    );
    pods
}

/// The addresses of Service `svc`'s ready endpoints (EndpointSlices of the
/// real controller).
fn ready_endpoints(lab: &Lab, svc: &str) -> BTreeSet<String> {
    let slices = lab.json(&["get", "endpointslices", "-A", "-o", "json"]);
    slices["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["metadata"]["labels"]["kubernetes.io/service-name"] == svc)
        .inspect(|s| {
            assert_eq!(
                s["metadata"]["labels"]["endpointslice.kubernetes.io/managed-by"],
                "endpointslice-controller.k8s.io"
            )
        })
        .flat_map(|s| s["endpoints"].as_array().cloned().unwrap_or_default())
        .filter(|e| e["conditions"]["ready"] == true)
        .filter_map(|e| e["addresses"][0].as_str().map(String::from))
        .collect()
}

fn ips(pods: &[Value]) -> BTreeSet<String> {
    pods.iter()
        .filter_map(|p| p["status"]["podIP"].as_str().map(String::from))
        .collect()
}

/// Who answers `svc/default/<svc>` from `from`, `count` times (all must).
fn answers(lab: &Lab, from: &str, svc: &str, count: u32) -> Vec<String> {
    let attempts = lab.probe_http(from, &format!("svc/default/{svc}"), count, "/hostname");
    assert!(
        attempts.iter().all(|(o, _)| o == "ok"),
        "{from} → {svc}: {attempts:?}"
    );
    attempts.into_iter().map(|(_, a)| a).collect()
}

#[test]
fn kubectl_drives_a_deployment_reachable_from_every_node_and_replaces_deleted_pods() {
    let lab = Lab::up_in(Mode::Kubernetes, "kdep", 3, "vxlan");
    let table = lab.kubectl_ok(&["get", "nodes", "-o", "wide"]);
    for (node, ip) in [("node-1", "198.18.0.11"), ("node-3", "198.18.0.13")] {
        assert!(
            table
                .lines()
                .any(|l| l.contains(node) && l.contains(ip) && l.contains("Ready")),
            "{table}"
        );
    }
    kubectl_apply(&lab, &web(6));
    let pods = wait_running(&lab, "web", 6);
    let nodes: BTreeSet<&str> = pods
        .iter()
        .filter_map(|p| p["spec"]["nodeName"].as_str())
        .collect();
    assert_eq!(nodes.len(), 3, "the scheduler spreads the replicas");
    let settled = wait_until(Duration::from_secs(10), || {
        ready_endpoints(&lab, "web") == ips(&pods)
    });
    assert!(settled.is_some(), "{:?}", ready_endpoints(&lab, "web"));
    for node in ["node/node-1", "node/node-2", "node/node-3"] {
        let reached = wait_until(Duration::from_secs(5), || {
            lab.probe_http(node, "svc/default/web", 1, "/hostname")[0].0 == "ok"
        });
        assert!(reached.is_some(), "{node} never reached the ClusterIP");
        let seen: BTreeSet<String> = answers(&lab, node, "web", 24).into_iter().collect();
        assert!(seen.len() >= 3, "{node}: not spread: {seen:?}");
    }

    // A pod deleted with kubectl: its kubelet tears the sandbox down, the
    // ReplicaSet controller replaces it, the new one serves.
    let victim = pods[0]["metadata"]["name"].as_str().unwrap().to_string();
    let victim_ns = format!(
        "wl-{}-pod-{}",
        lab.name,
        &pods[0]["metadata"]["uid"].as_str().unwrap()[..12]
    );
    lab.kubectl_ok(&["delete", "pod", &victim, "--wait=true"]);
    assert!(
        !weft_datapath::netns::list_named().contains(&victim_ns),
        "the deleted pod's namespace is left"
    );
    let pods = wait_running(&lab, "web", 6);
    assert!(pods
        .iter()
        .all(|p| p["metadata"]["name"] != victim.as_str()));
    let settled = wait_until(Duration::from_secs(10), || {
        ready_endpoints(&lab, "web") == ips(&pods)
    });
    assert!(settled.is_some(), "{:?}", ready_endpoints(&lab, "web"));
    let names: BTreeSet<String> = pods
        .iter()
        .filter_map(|p| p["metadata"]["name"].as_str().map(String::from))
        .collect();
    let heard = wait_until(Duration::from_secs(10), || {
        answers(&lab, "node/node-2", "web", 30)
            .into_iter()
            .collect::<BTreeSet<_>>()
            == names
    });
    assert!(heard.is_some(), "the replacement pod never answered");

    // `weft lab delete -f` of the same manifest: the Deployment, its pods
    // (their kubelets ran CNI DEL) and the Service are gone.
    let manifest = std::env::temp_dir().join(format!("{}-web.yaml", lab.name));
    std::fs::write(&manifest, web(6)).unwrap();
    let deleted = lab.ok(&["delete", "-f", manifest.to_str().unwrap()]);
    let _ = std::fs::remove_file(&manifest);
    assert!(deleted.contains("deployment/web deleted"), "{deleted}");
    assert!(lab.pods().is_empty(), "{:#?}", lab.pods());
    let pod_namespaces = format!("wl-{}-pod-", lab.name);
    assert!(!weft_datapath::netns::list_named()
        .iter()
        .any(|n| n.starts_with(&pod_namespaces)));
}

#[test]
fn a_crashing_container_backs_off_and_an_unready_pod_leaves_its_service() {
    let lab = Lab::up_in(Mode::Kubernetes, "kcrash", 2, "host-gw");
    let flag = std::env::temp_dir().join(format!("{}-ready", lab.name));
    let _ = std::fs::remove_file(&flag);
    kubectl_apply(&lab, &web(1));
    // Two more pods of the Service: one whose container exits after a
    // second, one ready only while a file exists.
    kubectl_apply(
        &lab,
        &format!(
            "apiVersion: v1
kind: Pod
metadata: {{name: crasher, labels: {{app: web}}}}
spec:
  containers:
  - name: c
    image: busybox
    command: [sh, -c, 'sleep 1; exit 3']
    ports: [{{name: http, containerPort: 8080}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: flaky, labels: {{app: web}}}}
spec:
  containers:
  - {{{NETEXEC}, readinessProbe: {{exec: {{command: [test, -e, {flag}]}}, periodSeconds: 1, failureThreshold: 1}}}}
",
            flag = flag.display()
        ),
    );
    let pod_json = |name: &str| -> Value {
        serde_json::from_str(&lab.kubectl_ok(&["get", "pod", name, "-o", "json"])).unwrap()
    };
    let backing_off = wait_until(Duration::from_secs(30), || {
        let pod = pod_json("crasher");
        let status = &pod["status"]["containerStatuses"][0];
        status["state"]["waiting"]["reason"] == "CrashLoopBackOff"
            && status["restartCount"].as_u64() >= Some(1)
            && status["lastState"]["terminated"]["exitCode"] == 3
    });
    assert!(backing_off.is_some(), "{:#}", pod_json("crasher")["status"]);
    let listed = lab.kubectl_ok(&["get", "pod", "crasher"]);
    assert!(listed.contains("CrashLoopBackOff"), "{listed}");

    // Only the steady pod is a ready endpoint: the crashing one and the
    // unready one are not, and traffic goes to the steady pod alone.
    let steady = wait_running(&lab, "web", 3)
        .into_iter()
        .find(|p| {
            p["metadata"]["name"]
                .as_str()
                .is_some_and(|n| n.starts_with("web-"))
        })
        .unwrap();
    let steady_name = steady["metadata"]["name"].as_str().unwrap().to_string();
    let steady_ip = steady["status"]["podIP"].as_str().unwrap().to_string();
    let only_steady = wait_until(Duration::from_secs(10), || {
        ready_endpoints(&lab, "web") == BTreeSet::from([steady_ip.clone()])
    });
    assert!(only_steady.is_some(), "{:?}", ready_endpoints(&lab, "web"));
    let got = answers(&lab, "node/node-1", "web", 10);
    assert!(got.iter().all(|a| *a == steady_name), "{got:?}");

    // The readiness probe passes: the pod joins; it fails: the pod leaves.
    std::fs::write(&flag, b"").unwrap();
    let flaky_ip = pod_json("flaky")["status"]["podIP"]
        .as_str()
        .unwrap()
        .to_string();
    let joined = wait_until(Duration::from_secs(10), || {
        ready_endpoints(&lab, "web").contains(&flaky_ip)
    });
    assert!(joined.is_some(), "{:?}", ready_endpoints(&lab, "web"));
    let heard = wait_until(Duration::from_secs(10), || {
        answers(&lab, "node/node-1", "web", 20)
            .iter()
            .any(|a| a == "flaky")
    });
    assert!(heard.is_some(), "the ready pod never answered");
    std::fs::remove_file(&flag).unwrap();
    let left = wait_until(Duration::from_secs(10), || {
        !ready_endpoints(&lab, "web").contains(&flaky_ip)
    });
    assert!(left.is_some(), "{:?}", ready_endpoints(&lab, "web"));
    let quiet = wait_until(Duration::from_secs(5), || {
        answers(&lab, "node/node-1", "web", 10)
            .iter()
            .all(|a| *a == steady_name)
    });
    assert!(quiet.is_some(), "the unready pod still got traffic");

    // A container whose program does not exist: `weft lab apply` says so
    // (from the pod's status, which its kubelet wrote) instead of waiting.
    let out = lab.apply("apiVersion: v1\nkind: Pod\nmetadata: {name: broken}\nspec:\n  containers: [{name: c, image: x, command: [/nonexistent/server]}]\n");
    let error = common::text(&out.stderr);
    assert!(
        !out.status.success() && error.contains("cannot start"),
        "{error}"
    );
    assert!(
        error.contains("/nonexistent/server is not an executable file"),
        "{error}"
    );
    let listed = lab.ok(&["get", "pods"]);
    assert!(
        listed
            .lines()
            .any(|l| l.contains("broken") && l.contains("CreateContainerError")),
        "{listed}"
    );

    // The lab's own exec and logs reach the pods the API server holds.
    let addresses = lab.ok(&["exec", "flaky", "--", "ip", "-4", "-o", "addr"]);
    assert!(addresses.contains(&flaky_ip), "{addresses}");
    let logs = lab.ok(&["logs", &steady_name]);
    assert!(logs.contains("/hostname"), "{logs}");
}
