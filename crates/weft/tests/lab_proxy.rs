//! The Service proxy end to end: Services applied to a lab, traffic sent
//! from pods, nodes and the external client through the real agents'
//! nftables, answers checked (who answered, which client address they saw,
//! refused versus timed out).

mod common;

use std::collections::BTreeSet;
use std::net::{SocketAddr, UdpSocket};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{text, wait_until, Lab, Mode, MANIFEST};
use rstest::rstest;
use serde_json::Value;
use weft_datapath::NetNs;

const SERVICES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/services.yaml");

fn probe(lab: &Lab, from: &str, to: &str, count: u32, path: &str) -> Vec<(String, String)> {
    lab.probe_http(from, to, count, path)
}

fn answers(lab: &Lab, from: &str, to: &str, count: u32) -> Vec<String> {
    let attempts = probe(lab, from, to, count, "/hostname");
    assert!(
        attempts.iter().all(|(o, _)| o == "ok"),
        "{from} → {to}: {attempts:?}"
    );
    attempts.into_iter().map(|(_, a)| a).collect()
}

/// Waits until `from` reaches `to` (the agents apply changes within
/// milliseconds, but a test must not race them).
fn reachable(lab: &Lab, from: &str, to: &str) {
    let ok = wait_until(Duration::from_secs(5), || {
        probe(lab, from, to, 1, "/hostname")[0].0 == "ok"
    });
    assert!(ok.is_some(), "{from} never reached {to}");
}

fn demo(lab: &Lab) {
    lab.ok(&["apply", "-f", MANIFEST]);
    lab.ok(&["apply", "-f", SERVICES]);
}

fn service(lab: &Lab, name: &str) -> Value {
    lab.json(&["get", "services", "-n", "demo", "-o", "json"])["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["metadata"]["name"] == name)
        .cloned()
        .unwrap_or_else(|| panic!("no service {name}"))
}

/// The Service's LoadBalancer address, once it has one (on Kubernetes
/// the agents' allocator writes it a moment after the Service is created).
fn load_balancer_ip(lab: &Lab, name: &str) -> String {
    let mut ip = None;
    wait_until(Duration::from_secs(5), || {
        ip = service(lab, name)["status"]["loadBalancer"]["ingress"][0]["ip"]
            .as_str()
            .map(String::from);
        ip.is_some()
    });
    ip.expect("an ingress address")
}

#[rstest]
#[case::embedded(Mode::Embedded)]
#[case::kubernetes(Mode::Kubernetes)]
fn cluster_ip_spreads_keeps_the_source_and_hairpins(#[case] mode: Mode) {
    let lab = Lab::up_in(mode, "pxcl", 3, "vxlan");
    demo(&lab);
    reachable(&lab, "demo/sidecar", "svc/demo/web");

    let seen: BTreeSet<String> = answers(&lab, "demo/sidecar", "svc/demo/web", 30)
        .into_iter()
        .collect();
    let web = lab.app_pods("web");
    assert_eq!(
        seen,
        web.iter().cloned().collect(),
        "not spread over every endpoint"
    );

    let sidecar_ip = lab.pod_ip("sidecar");
    for (outcome, client) in probe(&lab, "demo/sidecar", "svc/demo/web", 5, "/clientip") {
        assert_eq!(outcome, "ok");
        assert!(
            client.starts_with(&format!("{sidecar_ip}:")),
            "pod-to-ClusterIP was NATed: {client}"
        );
    }

    // The second port: UDP, named target port.
    let udp: BTreeSet<String> = answers(&lab, "demo/sidecar", "svc/demo/web:dns", 20)
        .into_iter()
        .collect();
    assert!(udp.len() >= 2, "UDP not spread: {udp:?}");

    // Hairpin: every pod reaches the Service, including when it picks itself
    // (30 random picks of 3 miss oneself with probability (2/3)^30 ≈ 5e-6
    // per pod; with 15, (2/3)^15 ≈ 0.2 %, it failed once).
    for pod in &web {
        let got = answers(&lab, &format!("demo/{pod}"), "svc/demo/web", 30);
        assert!(
            got.iter().any(|a| a == pod),
            "{pod} never answered itself: {got:?}"
        );
    }

    // From a node (the nat output hook) and from a hostNetwork-like client.
    answers(&lab, "node/node-1", "svc/demo/web", 3);
}

#[rstest]
#[case::embedded(Mode::Embedded)]
#[case::kubernetes(Mode::Kubernetes)]
fn affinity_sticks_and_services_without_endpoints_refuse(#[case] mode: Mode) {
    let lab = Lab::up_in(mode, "pxaf", 2, "host-gw");
    demo(&lab);
    lab.apply_ok("apiVersion: v1\nkind: Service\nmetadata: {name: sticky, namespace: demo}\nspec:\n  selector: {app: web}\n  sessionAffinity: ClientIP\n  sessionAffinityConfig: {clientIP: {timeoutSeconds: 60}}\n  ports: [{port: 80, targetPort: http}]\n---\napiVersion: v1\nkind: Service\nmetadata: {name: nothing, namespace: demo}\nspec:\n  selector: {app: nothing}\n  ports: [{name: t, port: 80, targetPort: 8080}, {name: u, port: 81, protocol: UDP, targetPort: 8081}]\n",
    );
    reachable(&lab, "demo/sidecar", "svc/demo/sticky");
    let got = answers(&lab, "demo/sidecar", "svc/demo/sticky", 15);
    assert!(got.iter().all(|a| *a == got[0]), "affinity broken: {got:?}");

    for port in ["t", "u"] {
        let started = Instant::now();
        let attempts = probe(
            &lab,
            "demo/sidecar",
            &format!("svc/demo/nothing:{port}"),
            3,
            "/hostname",
        );
        assert!(
            attempts.iter().all(|(o, _)| o == "refused"),
            "{port}: {attempts:?}"
        );
        assert!(
            started.elapsed() < Duration::from_millis(900),
            "refusal took {:?}",
            started.elapsed()
        );
    }

    // An address of the service range no Service has: dropped, so a
    // node's datagram is not even sent (it would leave by the node's
    // routes otherwise).
    for (outcome, why) in lab.probe_udp("node/node-1", "10.96.255.254:53", 2) {
        assert!(
            outcome == "error" && why.contains("Operation not permitted"),
            "{outcome} {why}"
        );
    }

    // The Service existed first; its first endpoint arrives now.
    lab.apply_ok("apiVersion: v1\nkind: Pod\nmetadata: {name: late, namespace: demo, labels: {app: nothing}}\nspec:\n  containers: [{name: c, image: x, ports: [{containerPort: 8080}, {containerPort: 8081, protocol: UDP}]}]\n",
    );
    reachable(&lab, "demo/sidecar", "svc/demo/nothing:t");
    assert_eq!(
        answers(&lab, "demo/sidecar", "svc/demo/nothing:u", 2),
        ["late", "late"]
    );
}

#[rstest]
#[case::embedded(Mode::Embedded)]
#[case::kubernetes(Mode::Kubernetes)]
fn node_ports_load_balancers_and_external_traffic_policy_local(#[case] mode: Mode) {
    let lab = Lab::up_in(mode, "pxnp", 2, "vxlan");
    lab.apply_ok("apiVersion: v1\nkind: Namespace\nmetadata: {name: demo}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: only, namespace: demo, labels: {app: only}}\nspec:\n  nodeName: node-2\n  containers: [{name: c, image: x, ports: [{name: http, containerPort: 8080}]}]\n---\napiVersion: v1\nkind: Service\nmetadata: {name: cluster, namespace: demo}\nspec:\n  type: NodePort\n  selector: {app: only}\n  ports: [{port: 80, targetPort: http, nodePort: 30100}]\n---\napiVersion: v1\nkind: Service\nmetadata: {name: local, namespace: demo}\nspec:\n  type: LoadBalancer\n  externalTrafficPolicy: Local\n  selector: {app: only}\n  ports: [{port: 80, targetPort: http, nodePort: 30101}]\n",
    );
    let (n1, n2) = (lab.node_ip("node-1"), lab.node_ip("node-2"));
    let external = "198.18.0.2";

    // externalTrafficPolicy: Cluster: every node forwards, the source is
    // masqueraded (replies must come back through that node).
    reachable(&lab, "external", &format!("{n1}:30100"));
    for (outcome, client) in probe(&lab, "external", &format!("{n1}:30100"), 3, "/clientip") {
        assert_eq!(outcome, "ok");
        assert!(
            !client.starts_with(external),
            "ETP Cluster kept the client address: {client}"
        );
    }

    // Local: the node with the endpoint keeps the client's address; the
    // other drops (no reject: a load balancer's health check steers away).
    reachable(&lab, "external", &format!("{n2}:30101"));
    for (outcome, client) in probe(&lab, "external", &format!("{n2}:30101"), 3, "/clientip") {
        assert_eq!(outcome, "ok");
        assert!(
            client.starts_with(&format!("{external}:")),
            "client address lost: {client}"
        );
    }
    let dropped = probe(&lab, "external", &format!("{n1}:30101"), 1, "/hostname");
    assert_eq!(dropped[0].0, "timeout", "{dropped:?}");

    // healthCheckNodePort: 200 where the endpoint is, 503 elsewhere.
    let hc = service(&lab, "local")["spec"]["healthCheckNodePort"]
        .as_u64()
        .expect("allocated") as u16;
    let health = |ip: &str| probe(&lab, "external", &format!("{ip}:{hc}"), 1, "/").remove(0);
    let (outcome, body) = health(&n2);
    assert_eq!(outcome, "ok");
    assert!(body.contains("\"localEndpoints\":1"), "{body}");
    let (outcome, body) = health(&n1);
    assert!(outcome == "ok" || outcome == "error", "{outcome}");
    assert!(
        body.contains("\"localEndpoints\":0") || body.contains("503"),
        "{body}"
    );

    // The LoadBalancer address is announced by the node with the endpoint.
    let lb = load_balancer_ip(&lab, "local");
    reachable(&lab, "external", &format!("{lb}:80"));
    let (_, client) = probe(&lab, "external", &format!("{lb}:80"), 1, "/clientip").remove(0);
    assert!(client.starts_with(&format!("{external}:")), "{client}");

    // loadBalancerSourceRanges: the external client is outside → dropped;
    // inside → served.
    let ranged = |range: &str| {
        format!("apiVersion: v1\nkind: Service\nmetadata: {{name: local, namespace: demo}}\nspec:\n  type: LoadBalancer\n  externalTrafficPolicy: Local\n  loadBalancerSourceRanges: [{range}]\n  selector: {{app: only}}\n  ports: [{{port: 80, targetPort: http, nodePort: 30101}}]\n")
    };
    lab.apply_ok(&ranged("198.18.0.100/32"));
    let blocked = wait_until(Duration::from_secs(5), || {
        probe(&lab, "external", &format!("{lb}:80"), 1, "/hostname")[0].0 == "timeout"
    });
    assert!(blocked.is_some(), "source ranges not enforced");
    lab.apply_ok(&ranged("198.18.0.0/29"));
    reachable(&lab, "external", &format!("{lb}:80"));
}

#[rstest]
#[case::embedded(Mode::Embedded)]
#[case::kubernetes(Mode::Kubernetes)]
fn external_ips_and_internal_traffic_policy_local(#[case] mode: Mode) {
    let lab = Lab::up_in(mode, "pxit", 2, "host-gw");
    lab.apply_ok("apiVersion: v1\nkind: Namespace\nmetadata: {name: demo}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: server, namespace: demo, labels: {app: server}}\nspec:\n  nodeName: node-2\n  containers: [{name: c, image: x, ports: [{containerPort: 8080}]}]\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: near, namespace: demo}\nspec:\n  nodeName: node-2\n  containers: [{name: c, image: x, ports: [{containerPort: 9}]}]\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: far, namespace: demo}\nspec:\n  nodeName: node-1\n  containers: [{name: c, image: x, ports: [{containerPort: 9}]}]\n---\napiVersion: v1\nkind: Service\nmetadata: {name: local, namespace: demo}\nspec:\n  internalTrafficPolicy: Local\n  externalIPs: [198.19.0.80]\n  selector: {app: server}\n  ports: [{port: 80, targetPort: 8080}]\n",
    );
    reachable(&lab, "demo/near", "svc/demo/local");
    // node-1's agent may program the Service a moment after node-2's
    // (until then the ClusterIP is refused): wait for its verdict.
    let mut far = Vec::new();
    let dropped = wait_until(Duration::from_secs(5), || {
        far = probe(&lab, "demo/far", "svc/demo/local", 1, "/hostname");
        far[0].0 == "timeout"
    });
    assert!(
        dropped.is_some(),
        "internalTrafficPolicy Local let a remote node's pod through: {far:?}"
    );
    // externalIPs are external traffic: internalTrafficPolicy does not apply.
    reachable(&lab, "demo/far", "198.19.0.80:80");
    assert_eq!(
        answers(&lab, "demo/far", "198.19.0.80:80", 2),
        ["server", "server"]
    );
}

#[rstest]
#[case::embedded(Mode::Embedded)]
#[case::kubernetes(Mode::Kubernetes)]
fn headless_and_foreign_services_are_not_programmed(#[case] mode: Mode) {
    let lab = Lab::up_in(mode, "pxhl", 1, "host-gw");
    demo(&lab);
    lab.apply_ok("apiVersion: v1\nkind: Service\nmetadata: {name: headless, namespace: demo}\nspec:\n  clusterIP: None\n  selector: {app: web}\n  ports: [{port: 80, targetPort: http}]\n---\napiVersion: v1\nkind: Service\nmetadata:\n  name: foreign\n  namespace: demo\n  labels: {service.kubernetes.io/service-proxy-name: other}\nspec:\n  selector: {app: web}\n  ports: [{port: 80, targetPort: http}]\n",
    );
    reachable(&lab, "demo/sidecar", "svc/demo/web");
    let table = lab.node_nft("node-1");
    let web_ip = service(&lab, "web")["spec"]["clusterIP"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        table.contains(&format!("{web_ip} . tcp . 80 : goto pick-tcp-3")),
        "{table}"
    );
    assert!(
        !table.contains("demo/headless/"),
        "headless Service programmed"
    );
    assert!(
        !table.contains("demo/foreign/"),
        "another proxy's Service programmed"
    );
    let foreign_ip = service(&lab, "foreign")["spec"]["clusterIP"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(!table.contains(&foreign_ip));
}

#[rstest]
#[case::embedded(Mode::Embedded)]
#[case::kubernetes(Mode::Kubernetes)]
fn load_balancer_address_moves_when_its_node_stops(#[case] mode: Mode) {
    let lab = Lab::up_in(mode, "pxlb", 3, "vxlan");
    demo(&lab);
    let lb = load_balancer_ip(&lab, "web-lb");
    // From outside, svc/NAME means the Service's LoadBalancer address.
    reachable(&lab, "external", "svc/demo/web-lb");
    let owner_mac = lab
        .external_neighbour(&lb)
        .expect("the address was resolved");
    let owner = ["node-1", "node-2", "node-3"]
        .into_iter()
        .find(|n| {
            lab.node_ip_cmd(n, &["link", "show", "eth0"])
                .contains(&owner_mac)
        })
        .expect("a node owns the address");
    lab.ok(&["node", "stop", owner]);
    let moved = wait_until(Duration::from_secs(10), || {
        lab.external_neighbour(&lb)
            .is_some_and(|mac| mac != owner_mac)
    });
    assert!(moved.is_some(), "no other node took over {lb} from {owner}");
    // A client that forgets the old address resolves the new owner.
    lab.external_cmd(&["ip", "neigh", "flush", "dev", "eth0"]);
    reachable(&lab, "external", &format!("{lb}:80"));
    assert_ne!(lab.external_neighbour(&lb), Some(owner_mac));
}

#[rstest]
#[case::embedded(Mode::Embedded)]
#[case::kubernetes(Mode::Kubernetes)]
fn udp_clients_move_on_when_their_endpoint_is_replaced(#[case] mode: Mode) {
    let lab = Lab::up_in(mode, "pxud", 2, "vxlan");
    lab.apply_ok("apiVersion: v1\nkind: Namespace\nmetadata: {name: demo}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: client, namespace: demo}\nspec:\n  containers: [{name: c, image: x, ports: [{containerPort: 9}]}]\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: dns-a, namespace: demo, labels: {app: dns}}\nspec:\n  containers: [{name: c, image: x, ports: [{name: dns, containerPort: 5353, protocol: UDP}]}]\n---\napiVersion: v1\nkind: Service\nmetadata: {name: dns, namespace: demo}\nspec:\n  selector: {app: dns}\n  ports: [{name: dns, port: 53, protocol: UDP, targetPort: dns}]\n",
    );
    reachable(&lab, "demo/client", "svc/demo/dns");
    let vip = service(&lab, "dns")["spec"]["clusterIP"]
        .as_str()
        .unwrap()
        .to_string();
    let target: SocketAddr = format!("{vip}:53").parse().unwrap();
    // One socket for the whole test: one conntrack flow, as a real
    // resolver's long-lived socket.
    let ns: NetNs = lab.pod_netns("client");
    let socket = ns
        .run_in(|| UdpSocket::bind("0.0.0.0:0"))
        .unwrap()
        .expect("socket in the client pod");
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let ask = || -> Option<String> {
        socket.send_to(b"hostname", target).ok()?;
        let mut buf = [0u8; 256];
        let (n, _) = socket.recv_from(&mut buf).ok()?;
        Some(String::from_utf8_lossy(&buf[..n]).into_owned())
    };
    assert_eq!(ask().as_deref(), Some("dns-a"));
    // The replacement comes up, then the old endpoint goes away.
    lab.apply_ok("apiVersion: v1\nkind: Pod\nmetadata: {name: dns-b, namespace: demo, labels: {app: dns}}\nspec:\n  containers: [{name: c, image: x, ports: [{name: dns, containerPort: 5353, protocol: UDP}]}]\n",
    );
    lab.ok(&["delete", "-n", "demo", "pod", "dns-a"]);
    let moved = wait_until(Duration::from_secs(3), || ask().as_deref() == Some("dns-b"));
    assert!(
        moved.is_some(),
        "the UDP flow stayed on the deleted endpoint"
    );
    for _ in 0..5 {
        assert_eq!(ask().as_deref(), Some("dns-b"));
    }
}

#[rstest]
#[case::embedded(Mode::Embedded)]
#[case::kubernetes(Mode::Kubernetes)]
fn terminating_endpoints_serve_only_when_no_ready_one_is_left(#[case] mode: Mode) {
    let lab = Lab::up_in(mode, "pxte", 2, "host-gw");
    // Pods, not a Deployment, whose controller would replace them; they
    // keep serving 4 s after SIGTERM (agnhost's --delay-shutdown), as
    // long as their grace period.
    let app = |name: &str| {
        format!("---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: demo, labels: {{app: app}}}}\nspec:\n  containers: [{{name: c, image: agnhost, args: [netexec, --http-port=8080, --udp-port=-1, --delay-shutdown=4], ports: [{{name: http, containerPort: 8080}}]}}]\n")
    };
    lab.apply_ok(&format!(
        "apiVersion: v1\nkind: Namespace\nmetadata: {{name: demo}}\n{}{}",
        app("app-0"),
        app("app-1")
    ));
    lab.apply_ok("apiVersion: v1\nkind: Pod\nmetadata: {name: client, namespace: demo}\nspec:\n  containers: [{name: c, image: x, ports: [{containerPort: 9}]}]\n---\napiVersion: v1\nkind: Service\nmetadata: {name: app, namespace: demo}\nspec:\n  selector: {app: app}\n  ports: [{port: 80, targetPort: http}]\n",
    );
    reachable(&lab, "demo/client", "svc/demo/app");
    let slow_delete = |pod: &'static str| {
        let name = lab.name.clone();
        std::thread::spawn(move || {
            let out = std::process::Command::new(common::WEFT)
                .args([
                    "lab",
                    "delete",
                    "--name",
                    &name,
                    "-n",
                    "demo",
                    "pod",
                    pod,
                    "--grace-period",
                    "4",
                ])
                .output()
                .expect("running weft");
            assert!(out.status.success(), "{}", text(&out.stderr));
        })
    };
    // app-0 terminates while app-1 is ready: nobody reaches app-0.
    let first = slow_delete("app-0");
    std::thread::sleep(Duration::from_millis(1000));
    let got = answers(&lab, "demo/client", "svc/demo/app", 12);
    assert!(
        got.iter().all(|a| a == "app-1"),
        "a terminating endpoint got traffic: {got:?}"
    );
    first.join().unwrap();
    // app-1 terminates with no ready endpoint left: it keeps serving.
    let second = slow_delete("app-1");
    std::thread::sleep(Duration::from_millis(1000));
    let got = answers(&lab, "demo/client", "svc/demo/app", 5);
    assert!(got.iter().all(|a| a == "app-1"), "{got:?}");
    second.join().unwrap();
    // The last endpoint is gone: refused (once the agents have the news).
    let refused = wait_until(Duration::from_secs(5), || {
        probe(&lab, "demo/client", "svc/demo/app", 1, "/hostname")[0].0 == "refused"
    });
    assert!(refused.is_some(), "a Service without endpoints must refuse");
}

#[rstest]
#[case::embedded(Mode::Embedded)]
#[case::kubernetes(Mode::Kubernetes)]
fn agent_restart_keeps_service_traffic_and_converges(#[case] mode: Mode) {
    let lab = Lab::up_in(mode, "pxrs", 2, "vxlan");
    demo(&lab);
    let node_port = format!("{}:30080", lab.node_ip("node-1"));
    reachable(&lab, "demo/sidecar", "svc/demo/web");
    reachable(&lab, "external", &node_port);
    // web-lb (externalTrafficPolicy: Local) is the one Service with chains
    // of its own; once they are there node-1 has all of the demo.
    let settled = wait_until(Duration::from_secs(5), || {
        lab.node_nft_chains("node-1")
            .iter()
            .any(|c| c.contains("demo/web-lb/"))
    });
    assert!(settled.is_some(), "web-lb never got its chains");
    let chains_before = lab.node_nft_chains("node-1");
    for node in ["node-1", "node-2"] {
        lab.ok(&["node", "stop", node]);
    }
    // Forwarding survives the agents being gone ...
    answers(&lab, "demo/sidecar", "svc/demo/web", 5);
    answers(&lab, "external", &node_port, 2);
    // ... and a Service deleted meanwhile disappears once they are back.
    lab.ok(&["delete", "-n", "demo", "service", "web-nodeport"]);
    for node in ["node-1", "node-2"] {
        lab.ok(&["node", "start", node]);
    }
    let gone = wait_until(Duration::from_secs(10), || {
        probe(&lab, "external", &node_port, 1, "/hostname")[0].0 == "refused"
    });
    assert!(
        gone.is_some(),
        "the deleted Service's NodePort still forwarded after the restart"
    );
    assert!(!lab.node_nft("node-1").contains("30080"));
    // The restarted agent rebuilt the same chains (web-nodeport had none of
    // its own: plain Services are map elements only, and the shared pick it
    // used serves web too — same selector, same number of endpoints).
    assert_eq!(lab.node_nft_chains("node-1"), chains_before);
    answers(&lab, "demo/sidecar", "svc/demo/web", 5);
}

#[rstest]
#[case::embedded(Mode::Embedded)]
#[case::kubernetes(Mode::Kubernetes)]
fn the_periodic_full_sync_restores_a_map_element_deleted_by_hand(#[case] mode: Mode) {
    let lab = Lab::up_with_env_in(
        mode,
        "pxfs",
        &["--nodes", "2", "--backend", "vxlan"],
        &[("WEFT_PROXY_FULL_RESYNC", "2s")],
    );
    demo(&lab);
    reachable(&lab, "demo/sidecar", "svc/demo/web");
    let ip = service(&lab, "web")["spec"]["clusterIP"]
        .as_str()
        .expect("a ClusterIP")
        .to_string();
    let element = format!("{ip} . tcp . 80");
    // Chain and set names stay the same, so only the timer can notice.
    for node in ["node-1", "node-2"] {
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &lab.node_ns(node),
                "nft",
                "delete",
                "element",
            ])
            .args([
                "ip",
                "weft-proxy",
                "service-ips",
                &format!("{{ {element} }}"),
            ])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out.stderr));
    }
    let restored = wait_until(Duration::from_secs(8), || {
        ["node-1", "node-2"]
            .iter()
            .all(|n| lab.node_nft(n).contains(&format!("{element} : goto pick-")))
    });
    assert!(restored.is_some(), "the deleted element never came back");
    reachable(&lab, "demo/sidecar", "svc/demo/web");
}

/// `--nodeport-addresses` as CIDRs (kube-proxy's form): the agents'
/// NodePorts answer on the node addresses in them (here the pod
/// network's: the bridge, a pod's gateway) and on no other (the underlay).
#[test]
fn node_ports_answer_on_the_addresses_in_the_nodeport_cidrs() {
    let lab = Lab::up_with_env(
        "npcidr",
        &["--nodes", "2", "--backend", "host-gw"],
        &[("WEFT_NODEPORT_ADDRESSES", "10.244.0.0/16")],
    );
    lab.apply_ok("apiVersion: v1\nkind: Namespace\nmetadata: {name: demo}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: server, namespace: demo, labels: {app: server}}\nspec:\n  nodeName: node-2\n  containers: [{name: c, image: x, ports: [{containerPort: 8080}]}]\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: client, namespace: demo}\nspec:\n  nodeName: node-1\n  containers: [{name: c, image: x, ports: [{containerPort: 9}]}]\n---\napiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: demo}\nspec:\n  type: NodePort\n  selector: {app: server}\n  ports: [{port: 80, targetPort: 8080, nodePort: 30100}]\n");
    let client = lab.pod_ip("client");
    let gateway = format!("{}.1:30100", client.rsplit_once('.').unwrap().0);
    reachable(&lab, "demo/client", &gateway);
    let underlay = format!("{}:30100", lab.node_ip("node-1"));
    for (outcome, _) in probe(&lab, "external", &underlay, 2, "/hostname") {
        assert_ne!(outcome, "ok", "the NodePort answered on the underlay");
    }
}
