//! `weft lab` end to end, through the `weft` binary as a user runs it. Every
//! test uses its own lab name, so they run side by side; a guard removes
//! the lab even when the test fails.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{text, wait_until, Lab, Mode, MANIFEST, WEFT};
use rstest::rstest;
use serde_json::Value;
use weft_datapath::netns;

fn mesh_test(mode: Mode, tag: &str, backend: &str) {
    let lab = Lab::up_in(mode, tag, 3, backend);
    let nodes = lab.json(&["get", "nodes", "-o", "json"]);
    assert_eq!(nodes["kind"], "NodeList");
    let items = nodes["items"].as_array().unwrap();
    assert_eq!(items.len(), 3);
    for n in items {
        assert!(
            n["spec"]["podCIDR"]
                .as_str()
                .unwrap()
                .starts_with("10.244."),
            "{n}"
        );
        assert_eq!(n["status"]["addresses"][0]["type"], "InternalIP");
    }
    lab.ok(&["apply", "-f", MANIFEST]);
    let pods = lab.json(&["get", "pods", "-n", "demo", "-o", "json"]);
    assert_eq!(pods["kind"], "PodList");
    let nodes_used: std::collections::HashSet<String> = pods["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["spec"]["nodeName"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(nodes_used.len(), 3, "pods must be spread over all nodes");
    for p in pods["items"].as_array().unwrap() {
        assert_eq!(p["status"]["phase"], "Running");
        assert_eq!(p["status"]["podIPs"][0]["ip"], p["status"]["podIP"]);
    }
    let v = lab.full_mesh();
    assert_eq!(v["results"].as_array().unwrap().len(), 16);
    // Every agent answers its health endpoints inside its node.
    for node in ["node-1", "node-2", "node-3"] {
        for path in ["/healthz", "/readyz"] {
            let got = lab.agent_http(node, path);
            assert!(matches!(&got, Ok((200, _))), "{node} {path}: {got:?}");
        }
    }
    // UDP too (agnhost netexec's --udp-port), between the Deployment's pods.
    let web = lab.app_pods("web");
    let out = lab.weft(&[
        "probe",
        "--protocol",
        "udp",
        "--from",
        &web[0],
        "--to",
        &web[1],
        "--to",
        &web[2],
        "-o",
        "json",
    ]);
    let v: Value = serde_json::from_str(&text(&out.stdout)).unwrap();
    assert!(v["allOk"].as_bool().unwrap(), "UDP across nodes: {v:#}");
}

#[rstest]
#[case::embedded(Mode::Embedded)]
#[case::kubernetes(Mode::Kubernetes)]
fn three_node_vxlan_lab_full_mesh(#[case] mode: Mode) {
    mesh_test(mode, "vx", "vxlan");
}

#[rstest]
#[case::embedded(Mode::Embedded)]
#[case::kubernetes(Mode::Kubernetes)]
fn three_node_host_gw_lab_full_mesh(#[case] mode: Mode) {
    mesh_test(mode, "hg", "host-gw");
}

#[rstest]
#[case::embedded(Mode::Embedded)]
#[case::kubernetes(Mode::Kubernetes)]
fn containers_share_localhost_and_host_network_pods_use_the_node(#[case] mode: Mode) {
    let lab = Lab::up_in(mode, "loc", 2, "vxlan");
    lab.ok(&["apply", "-f", MANIFEST]);
    let out = lab.ok(&[
        "exec", "-n", "demo", "sidecar", "--", "bash", "-c",
        "exec 3<>/dev/tcp/127.0.0.1/8080; printf 'GET /hostname HTTP/1.0\\r\\n\\r\\n' >&3; tail -1 <&3",
    ]);
    assert_eq!(
        out.trim(),
        "sidecar",
        "the second container reaches the first over localhost"
    );
    let host_pod = "apiVersion: v1\nkind: Pod\nmetadata: {name: hostnet}\nspec:\n  hostNetwork: true\n  nodeName: node-2\n  containers: [{name: c, image: x, ports: [{containerPort: 9090}]}]\n";
    let mut child = Command::new(WEFT)
        .args(["lab", "apply", "--name", &lab.name, "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(host_pod.as_bytes())
        .unwrap();
    assert!(child.wait().unwrap().success());
    let ip = lab.pod_ip("hostnet");
    let node2 = lab.json(&["get", "nodes", "-o", "json"])["items"][1]["status"]["addresses"][0]
        ["address"]
        .clone();
    assert_eq!(
        Value::String(ip),
        node2,
        "a hostNetwork pod has its node's IP"
    );
    let web = &lab.app_pods("web")[0];
    let out = lab.weft(&["probe", "--from", web, "--to", "hostnet", "-o", "json"]);
    let v: Value = serde_json::from_str(&text(&out.stdout)).unwrap();
    assert!(
        v["allOk"].as_bool().unwrap(),
        "pod -> hostNetwork pod on another node: {v:#}"
    );
    // Pods are named with their namespace (names repeat across them).
    let first = &v["results"][0];
    assert_eq!(first["from"], format!("demo/{web}"), "{v:#}");
    assert_eq!(first["to"], "default/hostnet", "{v:#}");
    lab.ok(&["delete", "pod", "hostnet"]);
    assert!(lab
        .pods()
        .iter()
        .all(|p| p["metadata"]["name"] != "hostnet"));
}

/// Two pods (not hostNetwork) on different nodes: the scheduler need not
/// have spread one Deployment's pods in Kubernetes mode.
fn pods_on_two_nodes(lab: &Lab) -> (String, String) {
    let pods: Vec<(String, String)> = lab
        .pods()
        .iter()
        .filter(|p| p["spec"]["hostNetwork"] != true)
        .filter_map(|p| {
            let name = p["metadata"]["name"].as_str()?.to_string();
            Some((name, p["spec"]["nodeName"].as_str()?.to_string()))
        })
        .collect();
    let (first, node) = pods.first().cloned().expect("pods");
    let other = pods
        .iter()
        .find(|(_, n)| *n != node)
        .map(|(p, _)| p.clone())
        .expect("pods on two nodes");
    (first, other)
}

#[rstest]
#[case::embedded(Mode::Embedded)]
#[case::kubernetes(Mode::Kubernetes)]
fn agent_restart_keeps_an_established_tcp_stream(#[case] mode: Mode) {
    let lab = Lab::up_in(mode, "rst", 2, "vxlan");
    lab.ok(&["apply", "-f", MANIFEST]);
    let (client, server) = pods_on_two_nodes(&lab);
    let (client_ns, server_ns) = (lab.pod_netns(&client), lab.pod_netns(&server));
    let server_ip = lab.pod_ip(&server);
    let listener = server_ns
        .run_in(|| TcpListener::bind("0.0.0.0:7000"))
        .unwrap()
        .unwrap();
    let target: SocketAddr = format!("{server_ip}:7000").parse().unwrap();
    let mut client = client_ns
        .run_in(|| TcpStream::connect_timeout(&target, Duration::from_secs(2)))
        .unwrap()
        .unwrap();
    let (mut server, _) = listener.accept().unwrap();
    server
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let received = Arc::new(AtomicUsize::new(0));
    let reader = {
        let (stop, received) = (stop.clone(), received.clone());
        std::thread::spawn(move || -> Result<(), String> {
            let mut buf = [0u8; 64];
            while !stop.load(Ordering::SeqCst) {
                match server.read(&mut buf) {
                    Ok(0) => return Err("stream closed".into()),
                    Ok(n) => {
                        received.fetch_add(n, Ordering::SeqCst);
                    }
                    // The writer has finished: silence is expected now.
                    Err(_) if stop.load(Ordering::SeqCst) => return Ok(()),
                    Err(e) => {
                        return Err(format!(
                            "no data for 500 ms after {} bytes: {e}",
                            received.load(Ordering::SeqCst)
                        ))
                    }
                }
            }
            Ok(())
        })
    };
    let writer = std::thread::spawn(move || {
        let mut sent = 0;
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(4) {
            client.write_all(b"x").unwrap();
            sent += 1;
            std::thread::sleep(Duration::from_millis(10));
        }
        (sent, client) // still open: closing it would end the stream early
    });
    std::thread::sleep(Duration::from_millis(500));
    for node in ["node-1", "node-2"] {
        lab.ok(&["node", "stop", node]);
        lab.ok(&["node", "start", node]);
    }
    let (sent, _client) = writer.join().unwrap();
    wait_until(Duration::from_secs(2), || {
        received.load(Ordering::SeqCst) == sent
    });
    stop.store(true, Ordering::SeqCst);
    reader
        .join()
        .unwrap()
        .expect("the stream must not stall while agents restart");
    assert_eq!(received.load(Ordering::SeqCst), sent, "bytes lost");
    lab.full_mesh();
}

#[rstest]
#[case::embedded(Mode::Embedded)]
#[case::kubernetes(Mode::Kubernetes)]
fn drift_is_repaired_and_leases_survive_restarts(#[case] mode: Mode) {
    let lab = Lab::up_in(mode, "dri", 3, "vxlan");
    lab.ok(&["apply", "-f", MANIFEST]);
    let cidr_before =
        lab.json(&["get", "nodes", "-o", "json"])["items"][0]["spec"]["podCIDR"].clone();
    let peer = lab.json(&["get", "nodes", "-o", "json"])["items"][1]["spec"]["podCIDR"]
        .as_str()
        .unwrap()
        .to_string();
    // Delete a route, the FDB and neighbour entries, then the whole device.
    lab.node_ip_cmd("node-1", &["route", "del", &peer]);
    lab.node_ip_cmd(
        "node-1",
        &["neigh", "flush", "dev", "weft.1", "nud", "permanent"],
    );
    let repaired = wait_until(Duration::from_secs(10), || {
        lab.node_ip_cmd("node-1", &["route"]).contains(&peer)
    });
    assert!(repaired.is_some(), "deleted route not restored within 10 s");
    lab.node_ip_cmd("node-1", &["link", "del", "weft.1"]);
    let repaired = wait_until(Duration::from_secs(10), || {
        lab.node_ip_cmd("node-1", &["route"]).contains(&peer)
            && lab
                .node_ip_cmd("node-1", &["neigh", "show", "dev", "weft.1"])
                .contains("PERMANENT")
    });
    assert!(
        repaired.is_some(),
        "deleted device not restored within 10 s"
    );
    lab.full_mesh();
    // A restarted agent keeps its subnet.
    lab.ok(&["node", "stop", "node-1"]);
    lab.ok(&["node", "start", "node-1"]);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        lab.json(&["get", "nodes", "-o", "json"])["items"][0]["spec"]["podCIDR"],
        cidr_before
    );
}

#[rstest]
#[case::embedded(Mode::Embedded)]
#[case::kubernetes(Mode::Kubernetes)]
fn a_removed_node_disappears_from_every_route_within_two_seconds(#[case] mode: Mode) {
    let lab = Lab::up_in(mode, "rm", 3, "vxlan");
    let node3 = lab.json(&["get", "nodes", "-o", "json"])["items"][2]["spec"]["podCIDR"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(lab.node_ip_cmd("node-1", &["route"]).contains(&node3));
    let start = Instant::now();
    lab.ok(&["node", "remove", "node-3"]);
    let gone = wait_until(Duration::from_secs(2), || {
        ["node-1", "node-2"].iter().all(|n| {
            !lab.node_ip_cmd(n, &["route"]).contains(&node3)
                && !lab
                    .node_ip_cmd(n, &["neigh", "show", "dev", "weft.1"])
                    .contains(node3.trim_end_matches("/24"))
        })
    });
    assert!(
        gone.is_some(),
        "node-3's subnet still routed 2 s after removal ({:?})",
        start.elapsed()
    );
    assert_eq!(
        lab.json(&["get", "nodes", "-o", "json"])["items"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    // Its subnet went back to the pool: a new node gets a lease.
    lab.ok(&["node", "add", "node-4"]);
    assert_eq!(
        lab.json(&["get", "nodes", "-o", "json"])["items"]
            .as_array()
            .unwrap()
            .len(),
        3
    );
}

#[rstest]
#[case::embedded(Mode::Embedded)]
#[case::kubernetes(Mode::Kubernetes)]
fn lab_down_leaves_nothing_and_overlapping_ranges_are_refused(#[case] mode: Mode) {
    let lab = Lab::up_in(mode, "dn", 2, "host-gw");
    lab.ok(&["apply", "-f", MANIFEST]);
    let prefix = format!("wl-{}-", lab.name);
    assert!(netns::list_named().iter().any(|n| n.starts_with(&prefix)));
    lab.ok(&["down"]);
    assert!(
        !netns::list_named().iter().any(|n| n.starts_with(&prefix)),
        "namespaces left"
    );
    assert!(
        !std::path::Path::new("/run/weft/labs")
            .join(&lab.name)
            .exists(),
        "files left"
    );
    let procs = Command::new("pgrep")
        .args(["-f", &format!("WEFT_LAB_OWNER={}", lab.name)])
        .output()
        .unwrap();
    assert!(text(&procs.stdout).trim().is_empty());
    let agents = Command::new("pgrep")
        .args(["-f", &format!("/run/weft/labs/{}/", lab.name)])
        .output()
        .unwrap();
    assert!(
        text(&agents.stdout).trim().is_empty(),
        "agent processes left: {}",
        text(&agents.stdout)
    );

    // A range the host itself routes is refused before anything is created.
    let routes: Value = serde_json::from_slice(
        &Command::new("ip")
            .args(["-j", "-4", "route"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    let host_net = routes
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["dst"].as_str())
        .find(|d| *d != "default" && d.contains('/') && !d.starts_with("127."))
        .map(String::from);
    if let Some(net) = host_net {
        let bad = Lab::named_in(mode, "ov");
        let out = bad.weft(&["up", "--nodes", "1", "--underlay-cidr", &net]);
        assert!(!out.status.success());
        assert!(
            text(&out.stderr).contains("overlaps the host's route"),
            "{}",
            text(&out.stderr)
        );
        assert!(!netns::list_named()
            .iter()
            .any(|n| n.starts_with(&format!("wl-{}-", bad.name))));
    }
}

/// NetworkPolicies are applied (validated as the API server does), listed,
/// explained, enforced as explained (directly and through a Service, and
/// following label changes) and deleted, in both modes.
#[rstest]
#[case::embedded(Mode::Embedded)]
#[case::kubernetes(Mode::Kubernetes)]
fn network_policies_are_applied_explained_and_deleted(#[case] mode: Mode) {
    let lab = Lab::up_in(mode, "netpol", 1, "host-gw");
    // Namespaces carry their name as a label, which namespaceSelectors
    // match on (the API server adds it; so does the lab).
    lab.apply_ok("apiVersion: v1\nkind: Namespace\nmetadata: {name: team-a, labels: {team: a}}\n");
    let labels = match mode {
        Mode::Kubernetes => lab.kubectl_ok(&[
            "get",
            "namespace",
            "team-a",
            "-o",
            "jsonpath={.metadata.labels}",
        ]),
        Mode::Embedded => {
            let store =
                weft_store::Store::open(&weft_lab::layout::Layout::new(&lab.name).unwrap().store())
                    .unwrap();
            let ns: k8s_openapi::api::core::v1::Namespace =
                store.get_typed("", "team-a").unwrap().unwrap();
            serde_json::to_string(&ns.metadata.labels).unwrap()
        }
    };
    assert!(
        labels.contains(r#""kubernetes.io/metadata.name":"team-a""#)
            && labels.contains(r#""team":"a""#),
        "{labels}"
    );
    lab.apply_ok(
        "apiVersion: v1
kind: Pod
metadata: {name: web, labels: {app: web}}
spec:
  containers: [{name: c, image: x, ports: [{name: http, containerPort: 80}]}]
---
apiVersion: v1
kind: Pod
metadata: {name: other}
spec:
  containers: [{name: c, image: x, ports: [{containerPort: 8080}]}]
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: team-a}
spec:
  containers: [{name: c, image: x, ports: [{containerPort: 8080}]}]
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ports: [{port: 8000, targetPort: http}]
",
    );
    let policy = "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-web, namespace: default}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress: [{from: [{namespaceSelector: {matchLabels: {team: a}}}], ports: [{port: http}]}]
";
    let out = lab.apply_ok(policy);
    assert!(
        out.contains("networkpolicy.networking.k8s.io/deny-web created"),
        "{out}"
    );
    let again = lab.apply_ok(policy);
    assert!(
        again.contains("networkpolicy.networking.k8s.io/deny-web unchanged"),
        "{again}"
    );
    let listed = lab.ok(&["get", "networkpolicies"]);
    assert!(
        listed
            .lines()
            .any(|l| l.starts_with("deny-web") && l.ends_with("app=web")),
        "{listed}"
    );
    let bad = lab.apply_fails(&policy.replace("port: http", "port: 80, endPort: 70"));
    assert!(bad.contains("spec.ingress[0].ports[0].endPort"), "{bad}");

    let explain = |from: &str, to: &str| lab.ok(&["explain", "--from", from, "--to", to]);
    let allowed = explain("team-a/client", "default/web");
    assert!(
        allowed.starts_with("allowed team-a/client → default/web:80/TCP: egress of team-a/client is not isolated; ingress of default/web allowed by default/deny-web rule ingress[0]\n"),
        "{allowed}"
    );
    // Enforced as explained: directly and through the Service.
    let reaches = |from: &str, to: &str| lab.probe_http(from, to, 1, "/hostname")[0].0 == "ok";
    let enforced = wait_until(Duration::from_secs(10), || !reaches("other", "default/web"));
    assert!(enforced.is_some(), "default/other still reaches web");
    assert!(reaches("team-a/client", "default/web"));
    assert!(reaches("team-a/client", "svc/default/web"));
    assert!(!reaches("other", "svc/default/web"));
    assert!(reaches("other", "team-a/client"), "only web is isolated");
    let denied = explain("other", "default/web");
    assert!(
        denied.starts_with("denied default/other → default/web:80/TCP: egress of default/other is not isolated; ingress of default/web is isolated by default/deny-web and no rule allows default/other\n"),
        "{denied}"
    );
    let node = explain("node/node-1", "web");
    assert!(
        node.contains("ingress of default/web allows its own node always"),
        "{node}"
    );
    // Through the Service: its backend, on the port the Service reaches.
    let via_service = explain("team-a/client", "svc/default/web");
    assert!(
        via_service.starts_with("allowed team-a/client → default/web:80/TCP"),
        "{via_service}"
    );

    // Labels change without restarting pods, with kubectl's rules, and
    // the selectors follow: the namespace, then the pod.
    let labeled = lab.ok(&["label", "namespace", "default", "team=a"]);
    assert!(labeled.contains("namespace/default labeled"), "{labeled}");
    assert!(explain("other", "default/web").starts_with("allowed"));
    let followed = wait_until(Duration::from_secs(10), || reaches("other", "default/web"));
    assert!(
        followed.is_some(),
        "the namespace label did not open web to other"
    );
    let refused = lab.weft(&["label", "namespace", "default", "team=b"]);
    assert!(!refused.status.success());
    let why = text(&refused.stderr);
    assert!(
        why.contains("'team' already has a value (a), and --overwrite is false"),
        "{why}"
    );
    lab.ok(&["label", "namespace", "default", "team-"]);
    assert!(explain("other", "default/web").starts_with("denied"));
    let closed = wait_until(Duration::from_secs(10), || !reaches("other", "default/web"));
    assert!(
        closed.is_some(),
        "removing the label did not close web again"
    );
    let labeled = lab.ok(&["label", "pod", "other", "app=web"]);
    assert!(labeled.contains("pod/other labeled"), "{labeled}");
    let web_endpoints = || {
        let slices = lab.json(&["get", "endpointslices", "-o", "json"]);
        slices["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s["metadata"]["labels"]["kubernetes.io/service-name"] == "web")
            .map(|s| s["endpoints"].as_array().map_or(0, Vec::len))
            .sum::<usize>()
    };
    let both = wait_until(Duration::from_secs(10), || web_endpoints() == 2);
    assert!(both.is_some(), "the relabeled pod never joined Service web");

    // agnhost porter containers, as the upstream NetworkPolicy tests run
    // them, are served on their SERVE_PORT_N and SERVE_UDP_PORT_N ports.
    lab.apply_ok("apiVersion: v1
kind: Pod
metadata: {name: porter, namespace: team-a}
spec:
  containers:
  - name: c
    image: registry.k8s.io/e2e-test-images/agnhost:2.53
    args: [porter]
    env: [{name: SERVE_PORT_80, value: foo}, {name: SERVE_UDP_PORT_81, value: foo}]
    ports: [{name: serve-80-tcp, containerPort: 80}, {name: serve-81-udp, containerPort: 81, protocol: UDP}]
");
    let tcp = lab.probe_http("team-a/client", "team-a/porter", 1, "/hostname");
    assert_eq!(tcp, [("ok".to_string(), "porter".to_string())]);
    let udp = lab.probe_udp("team-a/client", "team-a/porter", 1);
    assert_eq!(udp, [("ok".to_string(), "porter".to_string())]);

    let deleted = lab.ok(&["delete", "networkpolicy", "deny-web"]);
    assert!(
        deleted.contains("networkpolicy/deny-web deleted"),
        "{deleted}"
    );
    assert!(!lab.ok(&["get", "netpol"]).contains("deny-web"));
    assert!(explain("other", "default/web").starts_with("allowed"));
    let open = wait_until(Duration::from_secs(10), || reaches("other", "default/web"));
    assert!(
        open.is_some(),
        "web stayed isolated after its policy was deleted"
    );
}
