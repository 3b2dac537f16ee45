//! The Service proxy against hostile Services, end to end: Services with
//! names no API server would take, written straight into the store (as
//! objects that never passed validation can be), and a lab whose agents run with an
//! externalIP allow-list where a Service in another namespace lists a
//! victim's ClusterIP, a node's address and the agents' health port among
//! its externalIPs.

mod common;

use std::time::Duration;

use common::{wait_until, Lab};
use serde_json::json;
use weft_store::Store;

/// The outcome ("ok", "refused", "timeout", …) of one HTTP probe.
fn outcome(lab: &Lab, from: &str, to: &str, path: &str) -> String {
    lab.probe_http(from, to, 1, path).remove(0).0
}

fn reachable(lab: &Lab, from: &str, to: &str, path: &str) {
    let ok = wait_until(Duration::from_secs(5), || {
        outcome(lab, from, to, path) == "ok"
    });
    assert!(ok.is_some(), "{from} never reached {to}");
}

fn cluster_ip(lab: &Lab, namespace: &str, name: &str) -> String {
    let list = lab.json(&["get", "services", "-n", namespace, "-o", "json"]);
    list["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["metadata"]["name"] == name)
        .and_then(|s| s["spec"]["clusterIP"].as_str().map(String::from))
        .unwrap_or_else(|| panic!("no Service {namespace}/{name}"))
}

const VICTIM: &str = "apiVersion: v1\nkind: Namespace\nmetadata: {name: demo}\n---\napiVersion: v1\nkind: Namespace\nmetadata: {name: other}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: server, namespace: demo, labels: {app: server}}\nspec:\n  nodeName: node-2\n  containers: [{name: c, image: x, ports: [{containerPort: 8080}]}]\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: client, namespace: demo}\nspec:\n  nodeName: node-1\n  containers: [{name: c, image: x, ports: [{containerPort: 9}]}]\n---\napiVersion: v1\nkind: Service\nmetadata: {name: victim, namespace: demo}\nspec:\n  selector: {app: server}\n  ports: [{port: 80, targetPort: 8080}]\n";

#[test]
fn external_ips_cannot_take_a_cluster_ip_a_node_address_or_the_health_port() {
    let lab = Lab::up_with_env(
        "hpext",
        &["--nodes", "2", "--backend", "host-gw"],
        &[("WEFT_EXTERNAL_IP_CIDRS", "198.19.0.0/24")],
    );
    lab.apply_ok(VICTIM);
    reachable(&lab, "demo/client", "svc/demo/victim", "/hostname");
    let (victim_ip, n1) = (cluster_ip(&lab, "demo", "victim"), lab.node_ip("node-1"));
    let health = format!("{n1}:10254");
    reachable(&lab, "external", &health, "/healthz");

    // No endpoints: everything it is allowed to claim rejects connections.
    lab.apply_ok(&format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: thief, namespace: other}}\nspec:\n  externalIPs: [{victim_ip}, {n1}, 198.19.0.80, 198.20.0.80]\n  ports: [{{name: web, port: 80}}, {{name: health, port: 10254}}]\n"
    ));
    // The allowed address is programmed: the agents have seen the thief.
    let programmed = wait_until(Duration::from_secs(5), || {
        lab.node_nft("node-1")
            .contains("198.19.0.80 . tcp . 80 : goto reject-chain")
    });
    assert!(programmed.is_some(), "{}", lab.node_nft("node-1"));

    for _ in 0..3 {
        assert_eq!(
            outcome(&lab, "demo/client", "svc/demo/victim", "/hostname"),
            "ok",
            "the victim's ClusterIP was taken"
        );
        assert_eq!(
            outcome(&lab, "external", &health, "/healthz"),
            "ok",
            "the agents' health port was taken"
        );
    }
    for node in ["node-1", "node-2"] {
        let table = lab.node_nft(node);
        for refused in [
            format!("{victim_ip} . tcp . 80 : goto reject-chain"),
            format!("{n1} . tcp . "),
            "198.20.0.80".into(),
            "198.19.0.80 . tcp . 10254".into(),
        ] {
            assert!(!table.contains(&refused), "{node}: {refused} in {table}");
        }
    }
}

/// A ClientIP-affinity Service (chains and sets named after it) and its
/// EndpointSlice, put into the store as they are.
fn put_unvalidated(store: &Store, name: &str, cluster_ip: &str, server_ip: &str) {
    let service = json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"namespace": "demo", "name": name},
        "spec": {"clusterIP": cluster_ip, "sessionAffinity": "ClientIP",
            "ports": [{"name": "web", "port": 80, "protocol": "TCP"}]}});
    store.put("Service", "demo", name, &service).unwrap();
    let slice = json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"namespace": "demo", "name": format!("{name}-x"),
            "labels": {"kubernetes.io/service-name": name}},
        "addressType": "IPv4",
        "ports": [{"name": "web", "port": 8080, "protocol": "TCP"}],
        "endpoints": [{"addresses": [server_ip], "nodeName": "node-2", "conditions": {"ready": true}}]});
    store
        .put("EndpointSlice", "demo", &format!("{name}-x"), &slice)
        .unwrap();
}

/// Services no API server would have stored (a name with a space, a
/// 250-character name) are left out, say so on every node (`/readyz`,
/// `/metrics`, an Event each) and stop nothing else: the longest valid
/// name, whose affinity set name nft could not take whole, is programmed,
/// and so is a Service created after them.
#[test]
fn services_named_anything_do_not_stop_the_ones_created_after_them() {
    let lab = Lab::up("hpname", 2, "host-gw");
    lab.apply_ok(VICTIM);
    reachable(&lab, "demo/client", "svc/demo/victim", "/hostname");
    let server = lab.pod_ip("server");
    let store = Store::open(&weft_lab::layout::Layout::new(&lab.name).unwrap().store()).unwrap();
    let long_bad = "a".repeat(250);
    put_unvalidated(&store, "bad name", "10.96.200.1", &server);
    put_unvalidated(&store, &long_bad, "10.96.200.2", &server);
    put_unvalidated(&store, &"b".repeat(63), "10.96.200.3", &server);

    lab.apply_ok("apiVersion: v1\nkind: Service\nmetadata: {name: later, namespace: demo}\nspec:\n  selector: {app: server}\n  ports: [{port: 80, targetPort: 8080}]\n");
    reachable(&lab, "demo/client", "svc/demo/later", "/hostname");
    reachable(&lab, "demo/client", "10.96.200.3:80", "/hostname");
    for ip in ["10.96.200.1", "10.96.200.2"] {
        let got = outcome(&lab, "demo/client", &format!("{ip}:80"), "/hostname");
        assert_ne!(got, "ok", "the invalid Service at {ip} was programmed");
    }
    for node in ["node-1", "node-2"] {
        let (status, body) = lab.agent_http(node, "/readyz").expect("the agent answers");
        assert_eq!(status, 200, "{body}");
        for name in ["bad name", &long_bad] {
            let line = format!("Service demo/{name} not programmed: invalid");
            assert!(body.contains(&line), "{node}: {line:?} not in {body}");
        }
        let (_, metrics) = lab.agent_http(node, "/metrics").expect("the agent answers");
        let series = "weft_proxy_services_not_programmed{namespace=\"demo\",name=\"bad name\",cause=\"Invalid\"} 1";
        assert!(metrics.contains(series), "{node}: {metrics}");
        assert!(!metrics.contains(&"b".repeat(63)), "{node}: {metrics}");
    }
    let events = lab.ok(&["get", "events", "-n", "demo"]);
    for node in ["node-1", "node-2"] {
        let on_node = format!("not programmed on node {node}: invalid");
        let found = events.lines().any(|l| {
            l.contains("Warning")
                && l.contains("InvalidService")
                && l.contains("service/bad name")
                && l.contains(&on_node)
        });
        assert!(found, "no Event for demo/bad name from {node} in\n{events}");
    }
    assert_eq!(events.matches("InvalidService").count(), 4, "{events}");
}
