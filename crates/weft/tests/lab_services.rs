//! The lab's Services end to end, through the `weft` binary: what the lab's
//! "API server" allocates (clusterIPs, nodePorts, LoadBalancer addresses),
//! the EndpointSlices its controller publishes as pods come and go, and the
//! external client. Nothing here needs the Service datapath. Every test has
//! its own lab, removed even when the test fails.

mod common;

use std::net::Ipv4Addr;
use std::process::Command;
use std::time::Duration;

use common::{text, wait_until, Lab, WEFT};
use serde_json::Value;
use weft_datapath::netns;

const NS: &str = "svcs";

/// Three agnhost netexec pods with named ports, and one Service of each kind.
const MANIFEST: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: svcs}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: svcs}
spec:
  replicas: 3
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - name: netexec
        image: registry.k8s.io/e2e-test-images/agnhost:2.53
        args: ["netexec", "--http-port=8080", "--udp-port=8081"]
        ports:
        - {name: http, containerPort: 8080}
        - {name: dns, containerPort: 8081, protocol: UDP}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: svcs}
spec:
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: http}]
---
apiVersion: v1
kind: Service
metadata: {name: web-np, namespace: svcs}
spec:
  type: NodePort
  selector: {app: web}
  ports: [{port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: web-lb, namespace: svcs}
spec:
  type: LoadBalancer
  externalTrafficPolicy: Local
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: http}, {name: dns, port: 53, protocol: UDP, targetPort: dns}]
---
apiVersion: v1
kind: Service
metadata: {name: web-h, namespace: svcs}
spec:
  clusterIP: None
  selector: {app: web}
"#;

fn service(lab: &Lab, namespace: &str, name: &str) -> Value {
    lab.json(&["get", "services", "-n", namespace, "-o", "json"])["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no service {name}"))
        .clone()
}

/// The endpoints of every slice of Service `svc`.
fn endpoints(lab: &Lab, svc: &str) -> Vec<Value> {
    slices(lab, svc)
        .iter()
        .flat_map(|s| s["endpoints"].as_array().cloned().unwrap_or_default())
        .collect()
}

fn slices(lab: &Lab, svc: &str) -> Vec<Value> {
    let list = lab.json(&["get", "endpointslices", "-n", NS, "-o", "json"]);
    assert_eq!(list["kind"], "List");
    list["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["metadata"]["labels"]["kubernetes.io/service-name"] == svc)
        .cloned()
        .collect()
}

fn endpoint_of<'a>(endpoints: &'a [Value], pod: &str) -> Option<&'a Value> {
    endpoints.iter().find(|e| e["targetRef"]["name"] == pod)
}

/// Whether `ip` lies in `network`/`prefix`.
fn within(ip: Ipv4Addr, network: Ipv4Addr, prefix: u32) -> bool {
    let mask = u32::MAX << (32 - prefix);
    u32::from(ip) & mask == u32::from(network) & mask
}

fn node_port(port: &Value) -> u16 {
    let n = port["nodePort"].as_u64().expect("a nodePort") as u16;
    assert!((30000..=32767).contains(&n), "nodePort {n} out of range");
    n
}

#[test]
fn services_get_addresses_and_endpoint_slices_follow_their_pods() {
    let lab = Lab::up("svc", 3, "vxlan");
    lab.apply_ok(MANIFEST);

    let list = lab.json(&["get", "services", "-n", NS, "-o", "json"]);
    assert_eq!(
        (list["apiVersion"].as_str(), list["kind"].as_str()),
        (Some("v1"), Some("List"))
    );
    assert_eq!(list["items"].as_array().unwrap().len(), 4);
    let web = service(&lab, NS, "web");
    let cluster_ip: Ipv4Addr = web["spec"]["clusterIP"].as_str().unwrap().parse().unwrap();
    assert!(
        within(cluster_ip, Ipv4Addr::new(10, 96, 0, 0), 16),
        "{cluster_ip}"
    );
    assert_eq!(web["spec"]["clusterIPs"][0], web["spec"]["clusterIP"]);
    assert_eq!(web["spec"]["ipFamilies"][0], "IPv4");
    assert_eq!(web["spec"]["ipFamilyPolicy"], "SingleStack");
    assert_eq!(web["spec"]["ports"][0]["protocol"], "TCP");
    let np = service(&lab, NS, "web-np");
    let np_port = node_port(&np["spec"]["ports"][0]);
    assert_eq!(np["spec"]["externalTrafficPolicy"], "Cluster");
    let lb = service(&lab, NS, "web-lb");
    let lb_ip: Ipv4Addr = lb["status"]["loadBalancer"]["ingress"][0]["ip"]
        .as_str()
        .expect("an ingress address")
        .parse()
        .unwrap();
    assert!(within(lb_ip, Ipv4Addr::new(198, 18, 0, 240), 28), "{lb_ip}");
    let health = lb["spec"]["healthCheckNodePort"].as_u64().unwrap() as u16;
    assert!((30000..=32767).contains(&health));
    let lb_ports: Vec<u16> = (0..2).map(|i| node_port(&lb["spec"]["ports"][i])).collect();
    assert!(!lb_ports.contains(&np_port) && !lb_ports.contains(&health));
    assert_eq!(service(&lab, NS, "web-h")["spec"]["clusterIP"], "None");

    let table = lab.ok(&["get", "svc", "-A"]);
    for cell in [
        "NAMESPACE".to_string(),
        "LoadBalancer".into(),
        lb_ip.to_string(),
        format!("80:{np_port}/TCP"),
        cluster_ip.to_string(),
    ] {
        assert!(table.contains(&cell), "{cell} missing from\n{table}");
    }

    // A named targetPort resolves to the pods' container port.
    let eps = endpoints(&lab, "web");
    assert_eq!(eps.len(), 3, "{eps:#?}");
    for e in &eps {
        assert_eq!(e["conditions"]["ready"], true, "{e}");
        assert!(e["nodeName"].as_str().unwrap().starts_with("node-"));
        assert_eq!(e["targetRef"]["kind"], "Pod");
    }
    let web_slices = slices(&lab, "web");
    assert_eq!(web_slices[0]["addressType"], "IPv4");
    assert_eq!(web_slices[0]["ports"][0]["port"], 8080);
    assert_eq!(web_slices[0]["ports"][0]["name"], "http");
    assert_eq!(
        web_slices[0]["metadata"]["labels"]["endpointslice.kubernetes.io/managed-by"],
        "endpointslice-controller.weft.dev"
    );
    assert_eq!(
        web_slices[0]["metadata"]["ownerReferences"][0]["name"],
        "web"
    );
    let lb_ports: Vec<(String, u64)> = slices(&lab, "web-lb")[0]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap().to_string(),
                p["port"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(lb_ports, vec![("http".into(), 8080), ("dns".into(), 8081)]);
    // Headless Services get slices too (for DNS).
    assert_eq!(endpoints(&lab, "web-h").len(), 3);

    lab.ok(&["delete", "-n", NS, "pod", "web-0"]);
    assert_eq!(endpoints(&lab, "web").len(), 2);

    // During a grace period the endpoint is terminating, still serving, not ready.
    let name = lab.name.clone();
    let deleting = std::thread::spawn(move || {
        Command::new(WEFT)
            .args(["lab", "delete", "--name", &name, "-n", NS, "pod", "web-1"])
            .args(["--grace-period", "2"])
            .output()
            .expect("running weft")
    });
    let mut seen = Value::Null;
    let terminating = wait_until(Duration::from_millis(1800), || {
        let eps = endpoints(&lab, "web");
        seen = endpoint_of(&eps, "web-1").cloned().unwrap_or(Value::Null);
        seen["conditions"]["terminating"] == true
    });
    assert!(terminating.is_some(), "web-1 never terminating: {seen}");
    assert_eq!(seen["conditions"]["serving"], true, "{seen}");
    assert_eq!(seen["conditions"]["ready"], false, "{seen}");
    let out = deleting.join().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let eps = endpoints(&lab, "web");
    assert_eq!(eps.len(), 1, "{eps:#?}");
    assert!(endpoint_of(&eps, "web-2").is_some());

    // Applying again recreates the pods and keeps every allocation.
    let again = lab.apply_ok(MANIFEST);
    assert!(again.contains("service/web unchanged"), "{again}");
    assert_eq!(endpoints(&lab, "web").len(), 3);
    assert_eq!(
        service(&lab, NS, "web")["spec"]["clusterIP"],
        web["spec"]["clusterIP"]
    );
    assert_eq!(service(&lab, NS, "web-lb")["status"], lb["status"]);

    lab.ok(&["delete", "-n", NS, "service", "web"]);
    assert!(slices(&lab, "web").is_empty());
    assert_eq!(slices(&lab, "web-np").len(), 1);
    let manifest = std::env::temp_dir().join(format!("{}-services.yaml", lab.name));
    std::fs::write(&manifest, MANIFEST).unwrap();
    let deleted = lab.ok(&["delete", "-f", manifest.to_str().unwrap()]);
    let _ = std::fs::remove_file(&manifest);
    assert!(deleted.contains("service/web-lb deleted"), "{deleted}");
    let left = lab.json(&["get", "endpointslices", "-A", "-o", "json"]);
    assert_eq!(left["items"], Value::Array(vec![]), "{left:#}");
    assert!(lab.pods().is_empty());
}

#[test]
fn the_external_client_reaches_nodes_and_their_agents_health_servers() {
    let lab = Lab::up("ext", 2, "host-gw");
    let external = format!("wl-{}-external", lab.name);
    assert!(netns::list_named().contains(&external));
    let node1 = lab.json(&["get", "nodes", "-o", "json"])["items"][0]["status"]["addresses"][0]
        ["address"]
        .as_str()
        .unwrap()
        .to_string();
    lab.ok(&[
        "exec",
        "--external",
        "--",
        "ping",
        "-c5",
        "-i0.2",
        "-W1",
        &node1,
    ]);
    let routes = lab.ok(&["exec", "--external", "--", "ip", "route"]);
    assert!(!routes.contains("default"), "no default route: {routes}");
    assert!(
        lab.ok(&["exec", "--external", "--", "ip", "-4", "addr"])
            .contains("198.18.0.2/24"),
        "the external client is .2 on the underlay"
    );

    let v = lab.json(&[
        "probe",
        "--from",
        "external",
        "--to",
        "node/node-1:10254",
        "--http-path",
        "/healthz",
        "-o",
        "json",
    ]);
    assert_eq!(v["allOk"], true, "{v:#}");
    let r = &v["results"][0];
    assert_eq!(r["from"], "external");
    assert_eq!(r["to"], "node/node-1:10254");
    assert_eq!(r["target"], format!("{node1}:10254"));
    assert_eq!(r["outcome"], "ok");
    assert_eq!(r["answer"].as_str().unwrap().trim(), "ok");
    assert!(r["elapsedMs"].as_f64().unwrap() >= 0.0);

    // Several attempts, from a node, to an IP:PORT target.
    let v = lab.json(&[
        "probe",
        "--from",
        "node/node-2",
        "--to",
        &format!("{node1}:10254"),
        "--http-path",
        "/healthz",
        "--count",
        "3",
        "-o",
        "json",
    ]);
    let attempts: Vec<u64> = v["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["attempt"].as_u64().unwrap())
        .collect();
    assert_eq!(attempts, vec![1, 2, 3], "{v:#}");
    assert_eq!(v["allOk"], true, "{v:#}");

    // A closed port is refused at once, not timed out.
    let out = lab.weft(&[
        "probe",
        "--from",
        "external",
        "--to",
        "node/node-1:9",
        "-o",
        "json",
    ]);
    assert!(!out.status.success());
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["results"][0]["outcome"], "refused", "{v:#}");
    assert!(
        v["results"][0]["elapsedMs"].as_f64().unwrap() < 500.0,
        "{v:#}"
    );

    // A lab from before the external client gets it on first use.
    netns::delete_named(&external).unwrap();
    let state = format!("/run/weft/labs/{}/lab.json", lab.name);
    let mut old: Value = serde_json::from_str(&std::fs::read_to_string(&state).unwrap()).unwrap();
    let fields = old.as_object_mut().unwrap();
    fields.remove("service_cidr");
    fields.remove("lb_pool");
    std::fs::write(&state, old.to_string()).unwrap();
    let out = lab.weft(&[
        "exec",
        "--external",
        "--",
        "ping",
        "-c5",
        "-i0.2",
        "-W1",
        &node1,
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("predates"),
        "{}",
        text(&out.stderr)
    );
    assert!(netns::list_named().contains(&external));

    lab.ok(&["down"]);
    let prefix = format!("wl-{}-", lab.name);
    let left: Vec<String> = netns::list_named()
        .into_iter()
        .filter(|n| n.starts_with(&prefix))
        .collect();
    assert!(left.is_empty(), "namespaces left: {left:?}");
}

#[test]
fn requested_addresses_are_checked_and_pools_run_out() {
    let bad = Lab::named("badr");
    let e = bad.fails(&["up", "--nodes", "1", "--service-cidr", "10.244.0.0/20"]);
    assert!(e.contains("overlaps the pod CIDR"), "{e}");
    let e = bad.fails(&["up", "--nodes", "1", "--lb-cidr", "198.19.0.0/28"]);
    assert!(e.contains("not inside the underlay"), "{e}");
    let e = bad.fails(&["up", "--nodes", "1", "--lb-cidr", "198.18.0.0/28"]);
    assert!(e.contains("external client"), "{e}");
    assert!(!netns::list_named()
        .iter()
        .any(|n| n.starts_with(&format!("wl-{}-", bad.name))));

    let lab = Lab::up_with("alloc", &["--nodes", "1", "--lb-cidr", "198.18.0.248/30"]);
    let svc = |name: &str, spec: &str| {
        format!("apiVersion: v1\nkind: Service\nmetadata: {{name: {name}}}\nspec:\n{spec}")
    };
    let e = lab.apply_fails(&svc("a", "  clusterIP: 10.97.0.1\n  ports: [{port: 80}]\n"));
    assert!(e.contains("outside the lab's service CIDR"), "{e}");
    lab.apply_ok(&svc(
        "a",
        "  clusterIP: 10.96.0.50\n  ports: [{port: 80}]\n",
    ));
    let e = lab.apply_fails(&svc(
        "b",
        "  clusterIP: 10.96.0.50\n  ports: [{port: 80}]\n",
    ));
    assert!(e.contains("already used by Service default/a"), "{e}");

    let node_port = |name: &str, n: u32| {
        svc(
            name,
            &format!("  type: NodePort\n  ports: [{{port: 80, nodePort: {n}}}]\n"),
        )
    };
    lab.apply_ok(&node_port("np", 30500));
    let e = lab.apply_fails(&node_port("np2", 30500));
    assert!(e.contains("30500/TCP is already used"), "{e}");
    let e = lab.apply_fails(&node_port("np2", 40000));
    assert!(e.contains("outside the nodePort range"), "{e}");

    // 198.18.0.248/30 holds four usable addresses.
    let lb = |name: &str| svc(name, "  type: LoadBalancer\n  ports: [{port: 80}]\n");
    for name in ["lb1", "lb2", "lb3", "lb4"] {
        lab.apply_ok(&lb(name));
    }
    let e = lab.apply_fails(&lb("lb5"));
    assert!(e.contains("no free address left"), "{e}");
    let freed =
        service(&lab, "default", "lb2")["status"]["loadBalancer"]["ingress"][0]["ip"].clone();
    lab.ok(&["delete", "svc", "lb2"]);
    lab.apply_ok(&lb("lb5"));
    assert_eq!(
        service(&lab, "default", "lb5")["status"]["loadBalancer"]["ingress"][0]["ip"],
        freed
    );
    let e = lab.apply_fails(&svc(
        "lb6",
        "  type: LoadBalancer\n  loadBalancerIP: 198.18.0.240\n  ports: [{port: 80}]\n",
    ));
    assert!(e.contains("198.18.0.248/30"), "{e}");
}
