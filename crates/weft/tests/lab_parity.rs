//! weft's Service proxy against kube-proxy, differentially: the same
//! scenarios run in two Kubernetes-mode labs that differ only in what
//! implements Services — weft's proxy in the agents, or kube-proxy v1.36.3
//! in nftables mode (`--proxy kube-proxy`) — and what clients observe is
//! compared: answered or not (refused, timed out), by which endpoints, and
//! the source address the endpoint saw. A difference fails the test
//! unless docs/proxy-differences.md lists it under its scenario's name;
//! a listed difference that is gone fails it too, so the document stays
//! true.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::{wait_until, Lab, Mode};

const DIFFERENCES: &str = include_str!("../../../docs/proxy-differences.md");

/// Two servers on two nodes, a client beside the first, a Service of each
/// kind the scenarios need.
const MANIFEST: &str = "apiVersion: v1
kind: Pod
metadata: {name: server-a, labels: {app: server}}
spec:
  nodeName: node-1
  containers: [{name: c, image: agnhost, args: [netexec, --http-port=8080, --udp-port=8081], ports: [{containerPort: 8080}, {containerPort: 8081, protocol: UDP}]}]
---
apiVersion: v1
kind: Pod
metadata: {name: server-b, labels: {app: server, local: only}}
spec:
  nodeName: node-2
  containers: [{name: c, image: agnhost, args: [netexec, --http-port=8080, --udp-port=8081], ports: [{containerPort: 8080}, {containerPort: 8081, protocol: UDP}]}]
---
apiVersion: v1
kind: Pod
metadata: {name: client}
spec:
  nodeName: node-1
  containers: [{name: c, image: x, ports: [{containerPort: 9}]}]
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: server}
  ports: [{name: http, port: 80, targetPort: 8080}, {name: dns, port: 53, protocol: UDP, targetPort: 8081}]
---
apiVersion: v1
kind: Service
metadata: {name: web-np}
spec:
  type: NodePort
  selector: {app: server}
  ports: [{port: 80, targetPort: 8080, nodePort: 30100}]
---
apiVersion: v1
kind: Service
metadata: {name: web-local}
spec:
  type: NodePort
  externalTrafficPolicy: Local
  selector: {local: only}
  ports: [{port: 80, targetPort: 8080, nodePort: 30101}]
---
apiVersion: v1
kind: Service
metadata: {name: web-close}
spec:
  trafficDistribution: PreferClose
  selector: {app: server}
  ports: [{port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: web-same-node}
spec:
  trafficDistribution: PreferSameNode
  selector: {app: server}
  ports: [{port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: empty}
spec:
  selector: {app: nothing}
  ports: [{port: 80, targetPort: 8080}]
";

/// A UDP NodePort Service and its one pod, applied after a client sent
/// to the port.
const LATE: &str = "apiVersion: v1
kind: Service
metadata: {name: udp-late}
spec:
  type: NodePort
  selector: {app: late}
  ports: [{port: 53, protocol: UDP, targetPort: 8081, nodePort: 30153}]
---
apiVersion: v1
kind: Pod
metadata: {name: late, labels: {app: late}}
spec:
  nodeName: node-2
  containers: [{name: c, image: agnhost, args: [netexec, --http-port=8080, --udp-port=8081], ports: [{containerPort: 8081, protocol: UDP}]}]
";

/// What clients of `lab` observe, per scenario.
fn observe(lab: &Lab) -> BTreeMap<&'static str, String> {
    // Two zones, labelled before any endpoint exists: the EndpointSlice
    // controller hints each endpoint with its node's zone (and node).
    for (node, zone) in [("node-1", "zone-a"), ("node-2", "zone-b")] {
        lab.kubectl_ok(&[
            "label",
            "node",
            node,
            &format!("topology.kubernetes.io/zone={zone}"),
        ]);
    }
    lab.apply_ok(MANIFEST);
    // Both servers answer through the ClusterIP from a pod and a node, and
    // the NodePorts answer: every node's proxy has the Services.
    let both = "ok server-a, ok server-b";
    let ready = wait_until(Duration::from_secs(20), || {
        answers(lab, "client", "svc/default/web", 8, "/hostname") == both
            && answers(lab, "node/node-2", "svc/default/web", 8, "/hostname") == both
            && outcomes(lab, "external", "198.18.0.11:30100", 1) == "ok"
            && outcomes(lab, "external", "198.18.0.12:30101", 1) == "ok"
    });
    assert!(ready.is_some(), "{}: the Services never answered", lab.name);
    // The hinted Services answer from their own zone's or node's server
    // once the hints are written (and read); give them that moment.
    wait_until(Duration::from_secs(10), || {
        answers(lab, "client", "svc/default/web-close", 8, "/hostname") == "ok server-a"
            && answers(
                lab,
                "node/node-2",
                "svc/default/web-same-node",
                8,
                "/hostname",
            ) == "ok server-b"
    });
    let cluster_ip = cluster_ip(lab, "web");
    let client_ip = lab.pod_ip("client");
    let mut seen = BTreeMap::new();
    seen.insert(
        "clusterip-endpoints",
        answers(lab, "client", "svc/default/web", 20, "/hostname"),
    );
    seen.insert(
        "clusterip-udp-endpoints",
        answers(lab, "client", "svc/default/web:dns", 20, "/hostname"),
    );
    seen.insert(
        "clusterip-source",
        sources(lab, "client", "svc/default/web", &client_ip),
    );
    seen.insert(
        "clusterip-from-node",
        answers(lab, "node/node-2", "svc/default/web", 20, "/hostname"),
    );
    seen.insert(
        "clusterip-hairpin",
        answers(lab, "server-a", "svc/default/web", 20, "/hostname"),
    );
    seen.insert(
        "nodeport-cluster-from-outside",
        sources(lab, "external", "198.18.0.11:30100", "198.18.0.2"),
    );
    seen.insert(
        "nodeport-local-endpoint-node",
        sources(lab, "external", "198.18.0.12:30101", "198.18.0.2"),
    );
    seen.insert(
        "nodeport-local-other-node",
        outcomes(lab, "external", "198.18.0.11:30101", 2),
    );
    seen.insert(
        "nodeport-from-pod-via-other-node",
        outcomes(lab, "server-a", "198.18.0.12:30100", 12),
    );
    seen.insert(
        "nodeport-from-pod-via-own-node",
        answers(lab, "server-a", "198.18.0.11:30100", 12, "/hostname"),
    );
    seen.insert(
        "topology-prefer-close-from-zone-a",
        answers(lab, "client", "svc/default/web-close", 20, "/hostname"),
    );
    seen.insert(
        "topology-prefer-same-node-from-node-2",
        answers(
            lab,
            "node/node-2",
            "svc/default/web-same-node",
            20,
            "/hostname",
        ),
    );
    seen.insert(
        "no-endpoints",
        outcomes(lab, "client", "svc/default/empty", 2),
    );
    seen.insert(
        "clusterip-unknown-port",
        outcomes(lab, "client", &format!("{cluster_ip}:81"), 2),
    );
    seen.insert(
        "unallocated-clusterip",
        outcomes(lab, "client", "10.96.255.254:80", 2),
    );
    // From a node a drop shows: the datagram is not sent (EPERM) rather
    // than lost on the way.
    seen.insert(
        "unallocated-clusterip-udp-from-node",
        lab.probe_udp("node/node-2", "10.96.255.254:53", 2)
            .into_iter()
            .map(|(outcome, answer)| format!("{outcome} {answer}"))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect::<Vec<_>>()
            .join(", "),
    );
    // NodePorts on an address of the node other than its InternalIP: the
    // gateway of the client's pod subnet (node-1's bridge).
    let gateway = format!("{}.1", client_ip.rsplit_once('.').unwrap().0);
    seen.insert(
        "nodeport-on-another-node-address",
        outcomes(lab, "client", &format!("{gateway}:30100"), 2),
    );
    // What a cloud load balancer probes for externalTrafficPolicy: Cluster.
    let healthz = lab.probe_http("external", "198.18.0.11:10256", 1, "/healthz");
    seen.insert(
        "proxy-healthz-port-10256",
        match &healthz[0] {
            (ok, body) if ok == "ok" && body.contains("\"healthy\":true") => "ok, healthy".into(),
            (outcome, body) => format!("{outcome} {body}"),
        },
    );
    seen.insert("udp-nodeport-after-first-endpoint", udp_first_endpoint(lab));
    proxy_restart(lab, &mut seen);
    seen.insert(
        "udp-flow-to-a-terminating-endpoint",
        udp_flow_to_terminating(lab),
    );
    load_balancers(lab, &mut seen);
    policies_and_addresses(lab, &mut seen);
    hand_written_slices(lab, &mut seen);
    health_check_node_ports(lab, &mut seen);
    seen
}

/// Affinity, externalIPs, internalTrafficPolicy, hairpin through a
/// LoadBalancer address and LoadBalancer ingress `ipMode`.
const POLICIES: &str = "apiVersion: v1
kind: Service
metadata: {name: sticky}
spec:
  selector: {app: server}
  sessionAffinity: ClientIP
  ports: [{port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: ext}
spec:
  selector: {app: server}
  externalIPs: [198.19.0.80]
  ports: [{port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: ext-node}
spec:
  selector: {app: server}
  externalIPs: [198.18.0.12]
  ports: [{port: 8888, targetPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: itp-local}
spec:
  selector: {local: only}
  internalTrafficPolicy: Local
  ports: [{port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: mode-proxy}
spec:
  type: LoadBalancer
  loadBalancerClass: example.com/elsewhere
  selector: {app: server}
  ports: [{port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: mode-vip}
spec:
  type: LoadBalancer
  loadBalancerClass: example.com/elsewhere
  selector: {app: server}
  ports: [{port: 80, targetPort: 8080}]
";

fn policies_and_addresses(lab: &Lab, seen: &mut BTreeMap<&'static str, String>) {
    lab.apply_ok(POLICIES);
    // Another implementation's load balancer writes these (a class no
    // allocator here serves): one whose address it proxies itself.
    for (name, ip, mode) in [
        ("mode-proxy", "198.18.0.200", "Proxy"),
        ("mode-vip", "198.18.0.201", "VIP"),
    ] {
        let status = format!(
            r#"{{"status":{{"loadBalancer":{{"ingress":[{{"ip":"{ip}","ipMode":"{mode}"}}]}}}}}}"#
        );
        lab.kubectl_ok(&[
            "patch",
            "service",
            name,
            "--subresource=status",
            "--type=merge",
            "-p",
            &status,
        ]);
    }
    let ready = wait_until(Duration::from_secs(10), || {
        outcomes(lab, "client", "svc/default/sticky", 1) == "ok"
            && outcomes(lab, "client", "198.18.0.201:80", 1) == "ok"
    });
    assert!(
        ready.is_some(),
        "{}: the policy Services never answered",
        lab.name
    );
    let sticky = lab.probe_http("client", "svc/default/sticky", 12, "/hostname");
    let servers: BTreeSet<&String> = sticky.iter().map(|(_, answer)| answer).collect();
    seen.insert(
        "affinity-client-ip",
        format!("{} distinct answer(s)", servers.len()),
    );
    seen.insert(
        "externalip-from-pod",
        outcomes(lab, "client", "198.19.0.80:80", 2),
    );
    seen.insert(
        "externalip-on-a-node-address",
        outcomes(lab, "external", "198.18.0.12:8888", 2),
    );
    seen.insert(
        "internal-traffic-policy-local-without-local-endpoint",
        outcomes(lab, "client", "svc/default/itp-local", 2),
    );
    seen.insert(
        "internal-traffic-policy-local-with-local-endpoint",
        answers(lab, "node/node-2", "svc/default/itp-local", 6, "/hostname"),
    );
    let lb = load_balancer_ip(lab, "lb");
    seen.insert(
        "loadbalancer-hairpin",
        answers(lab, "server-a", &format!("{lb}:80"), 12, "/hostname"),
    );
    seen.insert(
        "loadbalancer-hairpin-source",
        sources(
            lab,
            "server-a",
            &format!("{lb}:80"),
            &lab.pod_ip("server-a"),
        ),
    );
    seen.insert(
        "loadbalancer-ipmode-vip-from-pod",
        outcomes(lab, "client", "198.18.0.201:80", 2),
    );
    seen.insert(
        "loadbalancer-ipmode-proxy-from-pod",
        outcomes(lab, "client", "198.18.0.200:80", 2),
    );
}

/// EndpointSlices written by hand (as another controller may), for
/// Services without a selector, to reach what the EndpointSlice
/// controller rarely writes: a pod's address reused while the old pod
/// terminates (two slices), an endpoint with several addresses, and one
/// with `serving` unset while it terminates.
fn hand_written_slices(lab: &Lab, seen: &mut BTreeMap<&'static str, String>) {
    let (a, b) = (lab.pod_ip("server-a"), lab.pod_ip("server-b"));
    let service = |name: &str| {
        format!("apiVersion: v1\nkind: Service\nmetadata: {{name: {name}}}\nspec:\n  ports: [{{port: 80, targetPort: 8080}}]\n")
    };
    let slice = |name: &str, service: &str, endpoints: &str| {
        format!(
            "apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: {name}
  labels: {{kubernetes.io/service-name: {service}, endpointslice.kubernetes.io/managed-by: parity-test}}
addressType: IPv4
ports: [{{port: 8080, protocol: TCP}}]
endpoints: {endpoints}
"
        )
    };
    let manifest = [
        service("reused"),
        slice(
            "reused-old",
            "reused",
            &format!("[{{addresses: [{a}], conditions: {{ready: false, serving: false, terminating: true}}}}]"),
        ),
        slice("reused-new", "reused", &format!("[{{addresses: [{a}], conditions: {{ready: true}}}}]")),
        service("several"),
        slice("several-1", "several", &format!("[{{addresses: [{b}, {a}]}}]")),
        service("serving-unset"),
        slice(
            "serving-unset-1",
            "serving-unset",
            &format!("[{{addresses: [{a}], conditions: {{ready: false, terminating: true}}}}]"),
        ),
    ]
    .join("---\n");
    // EndpointSlices are not among `weft lab apply`'s kinds: kubectl's.
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), manifest).unwrap();
    lab.kubectl_ok(&["apply", "-f", &file.path().display().to_string()]);
    wait_until(Duration::from_secs(10), || {
        outcomes(lab, "client", "svc/default/several", 1) == "ok"
    });
    for (scenario, service) in [
        ("endpointslice-reused-address", "reused"),
        ("endpointslice-several-addresses", "several"),
        (
            "endpointslice-serving-unset-while-terminating",
            "serving-unset",
        ),
    ] {
        let to = format!("svc/default/{service}");
        seen.insert(scenario, answers(lab, "client", &to, 8, "/hostname"));
    }
}

/// `externalTrafficPolicy: Local` LoadBalancers' healthCheckNodePorts, as
/// a cloud load balancer probes them: on a node with a ready local
/// endpoint, on one without, and while the last local endpoint terminates
/// (still serving). The ports asked for lie in the API server's static
/// band (30000–30085 of the default range), which its random allocations
/// avoid: 32100 once collided with a nodePort given out earlier in the run.
fn health_check_node_ports(lab: &Lab, seen: &mut BTreeMap<&'static str, String>) {
    lab.apply_ok(
        "apiVersion: v1
kind: Service
metadata: {name: lb-local}
spec:
  type: LoadBalancer
  externalTrafficPolicy: Local
  healthCheckNodePort: 30082
  selector: {local: only}
  ports: [{port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: lb-draining}
spec:
  type: LoadBalancer
  externalTrafficPolicy: Local
  healthCheckNodePort: 30083
  selector: {app: draining}
  ports: [{port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Pod
metadata: {name: draining, labels: {app: draining}}
spec:
  nodeName: node-1
  terminationGracePeriodSeconds: 30
  containers: [{name: c, image: agnhost, args: [netexec, --http-port=8080, --delay-shutdown=20], ports: [{containerPort: 8080}]}]
",
    );
    let health = |node: &str, port: u16| -> String {
        let (outcome, answer) = lab
            .probe_http("external", &format!("{node}:{port}"), 1, "/")
            .remove(0);
        match outcome.as_str() {
            "ok" => "200".into(),
            _ if answer.contains("HTTP 503") => "503".into(),
            _ => format!("{outcome} {answer}"),
        }
    };
    let ready = wait_until(Duration::from_secs(10), || {
        health("198.18.0.12", 30082) == "200" && health("198.18.0.11", 30083) == "200"
    });
    assert!(
        ready.is_some(),
        "{}: the healthCheckNodePorts never answered 200",
        lab.name
    );
    seen.insert(
        "health-check-node-port",
        format!(
            "with a local endpoint {}, without {}",
            health("198.18.0.12", 30082),
            health("198.18.0.11", 30082)
        ),
    );
    lab.kubectl_ok(&["delete", "pod", "draining", "--wait=false"]);
    wait_until(Duration::from_secs(10), || {
        health("198.18.0.11", 30083) != "200"
    });
    seen.insert(
        "health-check-node-port-while-terminating",
        health("198.18.0.11", 30083),
    );
}

/// The first LoadBalancer address of Service `default/<name>`.
fn load_balancer_ip(lab: &Lab, name: &str) -> String {
    lab.json(&["get", "services", "-o", "json"])["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["metadata"]["name"] == name)
        .and_then(|s| {
            s["status"]["loadBalancer"]["ingress"][0]["ip"]
                .as_str()
                .map(String::from)
        })
        .unwrap_or_else(|| panic!("no Service {name} with a LoadBalancer address"))
}

/// LoadBalancer Services, their addresses from the agents' allocator and
/// announced by the agents (also beside kube-proxy, as MetalLB would).
fn load_balancers(lab: &Lab, seen: &mut BTreeMap<&'static str, String>) {
    lab.apply_ok(
        "apiVersion: v1
kind: Service
metadata: {name: lb}
spec:
  type: LoadBalancer
  selector: {app: server}
  ports: [{port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: lb-ranged-empty}
spec:
  type: LoadBalancer
  loadBalancerSourceRanges: [198.18.0.100/32]
  selector: {app: nothing}
  ports: [{port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: lb-ranged-out}
spec:
  type: LoadBalancer
  loadBalancerSourceRanges: [198.18.0.100/32]
  selector: {app: server}
  ports: [{port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: lb-ranged-in}
spec:
  type: LoadBalancer
  loadBalancerSourceRanges: [198.18.0.0/30]
  selector: {app: server}
  ports: [{port: 80, targetPort: 8080}]
",
    );
    let answered = wait_until(Duration::from_secs(15), || {
        outcomes(lab, "external", "svc/default/lb", 1) == "ok"
    });
    assert!(
        answered.is_some(),
        "{}: the LoadBalancer never answered",
        lab.name
    );
    seen.insert(
        "loadbalancer-from-outside",
        sources(lab, "external", "svc/default/lb", "198.18.0.2"),
    );
    // Wait for its address, then: a client outside its source ranges.
    wait_until(Duration::from_secs(10), || {
        !lab.probe_http("external", "svc/default/lb-ranged-empty", 1, "/")[0]
            .0
            .is_empty()
    });
    seen.insert(
        "source-ranges-without-endpoints",
        outcomes(lab, "external", "svc/default/lb-ranged-empty", 2),
    );
    // With endpoints: a client outside the ranges, and one inside.
    wait_until(Duration::from_secs(10), || {
        outcomes(lab, "external", "svc/default/lb-ranged-in", 1) == "ok"
    });
    seen.insert(
        "source-ranges-client-outside",
        outcomes(lab, "external", "svc/default/lb-ranged-out", 2),
    );
    seen.insert(
        "source-ranges-client-inside",
        outcomes(lab, "external", "svc/default/lb-ranged-in", 2),
    );
}

/// A UDP Service with one pod on node-2.
fn dns_pod(name: &str) -> String {
    format!(
        "apiVersion: v1
kind: Pod
metadata: {{name: {name}, labels: {{app: dns}}}}
spec:
  nodeName: node-2
  containers: [{{name: c, image: agnhost, args: [netexec, --http-port=8080, --udp-port=8081], ports: [{{containerPort: 8081, protocol: UDP}}]}}]
"
    )
}

/// A client pod's UDP flow: one socket, one source port throughout, as a
/// resolver keeps one, to a Service's clusterIP.
struct UdpFlow {
    socket: std::net::UdpSocket,
    target: std::net::SocketAddr,
}

impl UdpFlow {
    /// Creates UDP Service `name` (port 53, selecting `app: <name>`) with
    /// `pod` (`first`, labelled so) as its endpoint; the flow from
    /// `source_port`, once `first` answers it.
    fn to_new_service(lab: &Lab, name: &str, pod: &str, first: &str, source_port: u16) -> UdpFlow {
        lab.apply_ok(&format!(
            "apiVersion: v1
kind: Service
metadata: {{name: {name}}}
spec:
  selector: {{app: {name}}}
  ports: [{{port: 53, protocol: UDP, targetPort: 8081}}]
---
{pod}"
        ));
        let vip = cluster_ip(lab, name);
        let socket = lab
            .pod_netns("client")
            .run_in(|| std::net::UdpSocket::bind(("0.0.0.0", source_port)))
            .unwrap()
            .unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let flow = UdpFlow {
            socket,
            target: format!("{vip}:53").parse().unwrap(),
        };
        let answered = wait_until(Duration::from_secs(10), || {
            flow.ask().as_deref() == Some(first)
        });
        assert!(answered.is_some(), "{}: {first} never answered", lab.name);
        flow
    }

    /// netexec's `hostname` over the flow, or `None` without an answer.
    fn ask(&self) -> Option<String> {
        self.socket.send_to(b"hostname", self.target).ok()?;
        let mut buf = [0u8; 64];
        let (n, _) = self.socket.recv_from(&mut buf).ok()?;
        Some(String::from_utf8_lossy(&buf[..n]).into_owned())
    }
}

/// The proxy of the client's node stopped and started again: do Services
/// keep answering while it is down, and does a client pod's UDP flow (one
/// socket) to a Service whose only endpoint is replaced meanwhile reach
/// the new endpoint once the proxy is back?
fn proxy_restart(lab: &Lab, seen: &mut BTreeMap<&'static str, String>) {
    let flow = UdpFlow::to_new_service(lab, "dns", &dns_pod("dns-a"), "dns-a", 40054);
    let ask = || flow.ask();
    lab.ok(&["node", "stop", "node-1"]);
    seen.insert(
        "clusterip-while-the-proxy-is-down",
        answers(lab, "client", "svc/default/web", 12, "/hostname"),
    );
    lab.apply_ok(&dns_pod("dns-b"));
    lab.ok(&["delete", "pod", "dns-a"]);
    for _ in 0..5 {
        let _ = ask();
    }
    lab.ok(&["node", "start", "node-1"]);
    let replaced = match wait_until(Duration::from_secs(10), || {
        ask().as_deref() == Some("dns-b")
    }) {
        Some(_) => "dns-b answers".into(),
        None => "not answered within 10 s".into(),
    };
    seen.insert("udp-endpoint-replaced-while-the-proxy-is-down", replaced);
    seen.insert(
        "clusterip-after-the-proxy-restarts",
        answers(lab, "client", "svc/default/web", 12, "/hostname"),
    );
}

/// A client pod's UDP flow (one socket) to a pod that starts terminating
/// (still serving, for 15 s) while another pod of the Service is ready:
/// which pod answers the flow in the seconds after?
fn udp_flow_to_terminating(lab: &Lab) -> String {
    let pod = |name: &str| {
        format!(
            "apiVersion: v1
kind: Pod
metadata: {{name: {name}, labels: {{app: udp-drain}}}}
spec:
  nodeName: node-2
  terminationGracePeriodSeconds: 30
  containers: [{{name: c, image: agnhost, args: [netexec, --http-port=8080, --udp-port=8081, --delay-shutdown=15], ports: [{{containerPort: 8081, protocol: UDP}}]}}]
"
        )
    };
    let flow = UdpFlow::to_new_service(lab, "udp-drain", &pod("udp-old"), "udp-old", 40055);
    let ask = || flow.ask();
    lab.apply_ok(&pod("udp-new"));
    lab.kubectl_ok(&["delete", "pod", "udp-old", "--wait=false"]);
    // Both proxies have seen the change well within this.
    std::thread::sleep(Duration::from_secs(3));
    let answers: BTreeSet<String> = (0..4)
        .map(|_| ask().unwrap_or_else(|| "no answer".into()))
        .collect();
    answers.into_iter().collect::<Vec<_>>().join(", ")
}

/// A UDP client that sent to a NodePort before its Service and endpoint
/// existed (one source port throughout, as a resolver's socket; the
/// kernel's conntrack entry for the unanswered flow stays): is it
/// answered once they are there?
fn udp_first_endpoint(lab: &Lab) -> String {
    let external = weft_datapath::netns::named_path(&format!("wl-{}-external", lab.name));
    let socket = weft_datapath::NetNs::open(external)
        .unwrap()
        .run_in(|| std::net::UdpSocket::bind("198.18.0.2:40053"))
        .unwrap()
        .unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let target: std::net::SocketAddr = "198.18.0.11:30153".parse().unwrap();
    let ask = || -> bool {
        let _ = socket.send_to(b"hostname", target);
        let mut buf = [0u8; 64];
        socket.recv_from(&mut buf).is_ok()
    };
    for _ in 0..3 {
        assert!(!ask(), "answered without a Service");
    }
    lab.apply_ok(LATE);
    match wait_until(Duration::from_secs(5), ask) {
        Some(_) => "answered".into(),
        None => "not answered within 5 s".into(),
    }
}

/// The clusterIP of Service `default/<name>`.
fn cluster_ip(lab: &Lab, name: &str) -> String {
    lab.json(&["get", "services", "-o", "json"])["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["metadata"]["name"] == name)
        .and_then(|s| s["spec"]["clusterIP"].as_str().map(String::from))
        .unwrap_or_else(|| panic!("no Service {name} with a clusterIP"))
}

/// The distinct answers of `count` attempts, each with its outcome.
fn answers(lab: &Lab, from: &str, to: &str, count: u32, path: &str) -> String {
    let distinct: BTreeSet<String> = lab
        .probe_http(from, to, count, path)
        .into_iter()
        .map(|(outcome, answer)| format!("{outcome} {}", answer.trim()))
        .collect();
    distinct.into_iter().collect::<Vec<_>>().join(", ")
}

/// The distinct outcomes of `count` attempts.
fn outcomes(lab: &Lab, from: &str, to: &str, count: u32) -> String {
    let distinct: BTreeSet<String> = lab
        .probe_http(from, to, count, "/hostname")
        .into_iter()
        .map(|(outcome, _)| outcome)
        .collect();
    distinct.into_iter().collect::<Vec<_>>().join(", ")
}

/// Whether the endpoints saw the client's own address (`own`) or another.
fn sources(lab: &Lab, from: &str, to: &str, own: &str) -> String {
    let distinct: BTreeSet<String> = lab
        .probe_http(from, to, 5, "/clientip")
        .into_iter()
        .map(|(outcome, answer)| match outcome.as_str() {
            "ok" if answer.starts_with(&format!("{own}:")) => "ok, client's address".into(),
            "ok" => "ok, another address".into(),
            other => other.to_string(),
        })
        .collect();
    distinct.into_iter().collect::<Vec<_>>().join(", ")
}

/// The scenarios docs/proxy-differences.md lists (lines `` - `name`: ``).
fn listed() -> BTreeSet<String> {
    DIFFERENCES
        .lines()
        .filter_map(|l| l.strip_prefix("- `")?.split_once("`:"))
        .map(|(name, _)| name.to_string())
        .collect()
}

#[test]
fn weft_and_kube_proxy_look_the_same_to_clients_but_where_listed() {
    let observed: Vec<BTreeMap<&str, String>> = std::thread::scope(|s| {
        let labs = [("pweft", false), ("pkube", true)].map(|(tag, kube_proxy)| {
            s.spawn(move || {
                let proxy = if kube_proxy { "kube-proxy" } else { "weft" };
                let lab = Lab::up_with_in(
                    Mode::Kubernetes,
                    tag,
                    &["--nodes", "2", "--backend", "vxlan", "--proxy", proxy],
                );
                observe(&lab)
            })
        });
        labs.map(|l| l.join().expect("observing a lab")).into()
    });
    let (weft, kube_proxy) = (&observed[0], &observed[1]);
    let differing: BTreeSet<String> = weft
        .iter()
        .filter(|(scenario, seen)| kube_proxy.get(*scenario) != Some(seen))
        .map(|(scenario, _)| scenario.to_string())
        .collect();
    let report: Vec<String> = weft
        .iter()
        .map(|(scenario, seen)| {
            format!(
                "{scenario}:\n    weft:       {seen}\n    kube-proxy: {}",
                kube_proxy[scenario]
            )
        })
        .collect();
    // Shown with --nocapture: what the comparison saw.
    println!("{}", report.join("\n"));
    let listed = listed();
    let unlisted: Vec<&String> = differing.difference(&listed).collect();
    let stale: Vec<&String> = listed.difference(&differing).collect();
    assert!(
        unlisted.is_empty() && stale.is_empty(),
        "differences not in docs/proxy-differences.md: {unlisted:?}; listed there but gone: {stale:?}\n{}",
        report.join("\n")
    );
}
