//! Traffic in Kubernetes mode, with the install manifest's service account
//! (not admin): pods wired by weft-cni behind `weft agent`, Services
//! written through a real kube-apiserver and reached through their
//! ClusterIP, their NodePort and a LoadBalancer address the elected
//! allocator took from the pools ConfigMap (from an external namespace on
//! the underlay); then the API server stopped under live pod-to-pod and
//! ClusterIP TCP streams, which must not lose a byte, and the re-list on
//! its return. Last, two agents in lab-style node namespaces on a bridged
//! underlay, reaching the API server over it: pods across the nodes, and
//! the LoadBalancer address taken over when the node answering for it
//! stops.

mod common;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::control_plane::ControlPlane;
use common::kube_node::{
    add_pod, add_pod_on, hostname_via, ip, netexec, plug, service_programmed, start_agent_as,
    start_agent_in, underlay_and_node, with_api, Pod, Process,
};
use common::wait_until;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{DeleteParams, PostParams};
use kube::Api;
use serde_json::json;
use weft_datapath::scratch::Namespaces;
use weft_datapath::NetNs;

const MANIFEST: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy/weft.yaml");
const NODE_IP: &str = "198.18.0.11";

/// weft's install manifest applied, with the LoadBalancer pool
/// 198.18.0.200/29 in its ConfigMap.
fn install(cp: &ControlPlane) {
    cp.prepare_install();
    cp.kubectl_ok(&["apply", "-f", MANIFEST]);
    cp.kubectl_ok(&[
        "-n",
        "weft-system",
        "patch",
        "configmap",
        "weft-lb-pools",
        "--type",
        "merge",
        "-p",
        r#"{"data": {"pools": "198.18.0.200/29"}}"#,
    ]);
}

/// A control plane with weft installed from its manifest (LoadBalancer
/// pool 198.18.0.200/29), node-a's agent running as the manifest's
/// service account, and an external client namespace on the underlay
/// (198.18.0.20, nothing else routed).
struct Bed {
    cp: ControlPlane,
    dir: tempfile::TempDir,
    scratch: Namespaces,
    external: NetNs,
    _agent: Process,
}

impl Bed {
    fn up(tag: &str) -> Bed {
        let cp = ControlPlane::start();
        install(&cp);
        underlay_and_node(&cp);
        let mut scratch = Namespaces::new(tag);
        let (external_name, external) = scratch.add("ext");
        ip(
            cp.ns_name(),
            &["link", "set", "d1", "netns", &external_name],
        );
        ip(
            &external_name,
            &["addr", "add", "198.18.0.20/24", "dev", "d1"],
        );
        ip(&external_name, &["link", "set", "d1", "up"]);
        // A node's default route, on the underlay (to the external
        // namespace, which routes nowhere): the agent finds its underlay
        // by it, and a ClusterIP is routed before the proxy's output hook
        // rewrites it.
        ip(cp.ns_name(), &["route", "add", "default", "dev", "d0"]);
        let dir = tempfile::tempdir().unwrap();
        let token = cp.kubeconfig_of("weft-system", "weft");
        let agent = start_agent_as(
            &cp,
            &token,
            dir.path(),
            &["--resync", "500ms", "--iface", ""],
        );
        let conflist = dir.path().join("net.d/10-weft.conflist");
        let bed = Bed {
            cp,
            dir,
            scratch,
            external,
            _agent: agent,
        };
        let written = wait_until(Duration::from_secs(20), || conflist.exists());
        assert!(written.is_some(), "no conflist:\n{}", bed.log());
        bed
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("agent.log")).unwrap_or_default()
    }

    fn pod(&mut self, name: &str) -> Pod {
        add_pod(&self.cp, self.dir.path(), &mut self.scratch, name)
    }

    /// Creates Service `name` (its `spec`, one port 80 → `target`) and its
    /// EndpointSlice to `pod` through the API; the Service as created.
    fn service(
        &self,
        name: &'static str,
        spec: serde_json::Value,
        pod: Ipv4Addr,
        target: u16,
    ) -> Service {
        with_api(&self.cp, move |nodes| async move {
            let client = nodes.into_client();
            let services: Api<Service> = Api::namespaced(client.clone(), "default");
            let mut spec = spec;
            spec["ports"] = json!([{"name": "p", "port": 80, "targetPort": target}]);
            let svc: Service =
                serde_json::from_value(json!({"metadata": {"name": name}, "spec": spec})).unwrap();
            let svc = services.create(&PostParams::default(), &svc).await.unwrap();
            let slices: Api<EndpointSlice> = Api::namespaced(client, "default");
            let slice: EndpointSlice = serde_json::from_value(json!({
                "metadata": {"name": format!("{name}-1"), "labels": {"kubernetes.io/service-name": name}},
                "addressType": "IPv4",
                "ports": [{"name": "p", "port": target, "protocol": "TCP"}],
                "endpoints": [{"addresses": [pod.to_string()], "nodeName": "node-a", "conditions": {"ready": true}}]
            }))
            .unwrap();
            slices.create(&PostParams::default(), &slice).await.unwrap();
            svc
        })
    }

    fn read_service(&self, name: &'static str) -> Service {
        with_api(&self.cp, move |nodes| async move {
            let services: Api<Service> = Api::namespaced(nodes.into_client(), "default");
            services.get(name).await.unwrap()
        })
    }
}

fn cluster_ip(svc: &Service) -> String {
    svc.spec.as_ref().unwrap().cluster_ip.clone().unwrap()
}

fn ingress_ips(svc: &Service) -> Vec<String> {
    svc.status
        .iter()
        .flat_map(|s| s.load_balancer.iter())
        .flat_map(|lb| lb.ingress.iter().flatten())
        .filter_map(|i| i.ip.clone())
        .collect()
}

#[test]
fn a_load_balancer_service_is_reached_through_its_cluster_ip_node_port_and_allocated_address() {
    let mut bed = Bed::up("kt-lb");
    let web = bed.pod("web");
    let _server = netexec(&web, "web");
    let created = bed.service("web", json!({"type": "LoadBalancer"}), web.ip, 8080);
    // Another class's Service: someone else's to serve.
    bed.service(
        "other",
        json!({"type": "LoadBalancer", "loadBalancerClass": "example.com/other"}),
        web.ip,
        8080,
    );
    let mut svc = created.clone();
    let allocated = wait_until(Duration::from_secs(20), || {
        svc = bed.read_service("web");
        !ingress_ips(&svc).is_empty()
    });
    assert!(
        allocated.is_some(),
        "no LoadBalancer address:\n{}",
        bed.log()
    );
    eprintln!("LoadBalancer address allocated {allocated:?} after the Service was created");
    let lb = ingress_ips(&svc);
    assert_eq!(lb, ["198.18.0.201"], "the lowest address of the pool");

    let node_port = svc.spec.as_ref().unwrap().ports.as_ref().unwrap()[0]
        .node_port
        .unwrap();
    let node = bed.cp.ns();
    let routes = [
        ("the pod from the node", node, format!("{}:8080", web.ip)),
        (
            "ClusterIP from the node",
            node,
            format!("{}:80", cluster_ip(&svc)),
        ),
        (
            "NodePort from outside",
            &bed.external,
            format!("{NODE_IP}:{node_port}"),
        ),
        (
            "LoadBalancer from outside",
            &bed.external,
            format!("{}:80", lb[0]),
        ),
    ];
    for (what, from, to) in routes {
        let answered = wait_until(Duration::from_secs(10), || {
            hostname_via(from, &to).as_deref() == Some("web")
        });
        assert!(
            answered.is_some(),
            "{what} ({to}) did not answer:\n{}",
            bed.log()
        );
    }
    assert!(
        ingress_ips(&bed.read_service("other")).is_empty(),
        "a Service of another loadBalancerClass got an address"
    );
    // An address outside the pools is refused; both outcomes are Events
    // on the Services, as `kubectl describe service` shows them.
    bed.service(
        "outside",
        json!({"type": "LoadBalancer", "loadBalancerIP": "198.18.0.99"}),
        web.ip,
        8080,
    );
    let events = || bed.cp.kubectl_ok(&["get", "events", "-n", "default"]);
    let told = wait_until(Duration::from_secs(10), || {
        let events = events();
        events.contains("IPAllocated") && events.contains("AllocationFailed")
    });
    assert!(told.is_some(), "{}\n{}", events(), bed.log());
    assert!(
        events().contains("198.18.0.99 is not in a LoadBalancer pool"),
        "{}",
        events()
    );
    assert!(
        !bed.log().to_lowercase().contains("forbidden"),
        "{}",
        bed.log()
    );
}

/// Echoes every connection to port 9000 of `pod`, from a listener made in
/// its namespace.
fn echo_server(pod: &Pod) {
    let listener = pod
        .ns
        .run_in(|| TcpListener::bind("0.0.0.0:9000"))
        .unwrap()
        .expect("listening in the pod");
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut back = conn.try_clone().unwrap();
                let mut from = conn;
                let _ = std::io::copy(&mut from, &mut back);
            });
        }
    });
}

/// A TCP stream from `ns` to `to` that sends numbered chunks every 10 ms
/// and checks every echoed byte, until stopped.
struct Stream {
    echoed: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    pump: JoinHandle<Result<u64, String>>,
}

impl Stream {
    fn open(ns: &NetNs, to: &str) -> Stream {
        let to: SocketAddr = to.parse().unwrap();
        let mut conn = ns
            .run_in(move || TcpStream::connect_timeout(&to, Duration::from_secs(2)))
            .unwrap()
            .unwrap_or_else(|e| panic!("connecting to {to}: {e}"));
        conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let (echoed, stop) = (
            Arc::new(AtomicU64::new(0)),
            Arc::new(AtomicBool::new(false)),
        );
        let (count, stopped) = (echoed.clone(), stop.clone());
        let pump = std::thread::spawn(move || {
            let mut n: u64 = 0;
            while !stopped.load(Ordering::Relaxed) {
                let chunk: Vec<u8> = (0..1000u64).map(|i| ((n * 1000 + i) % 251) as u8).collect();
                conn.write_all(&chunk)
                    .map_err(|e| format!("write after {n} chunks: {e}"))?;
                let mut back = vec![0; chunk.len()];
                conn.read_exact(&mut back)
                    .map_err(|e| format!("read after {n} chunks: {e}"))?;
                if back != chunk {
                    return Err(format!("chunk {n} came back altered"));
                }
                n += 1;
                count.store(n * 1000, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(10));
            }
            Ok(n * 1000)
        });
        Stream { echoed, stop, pump }
    }

    fn echoed(&self) -> u64 {
        self.echoed.load(Ordering::Relaxed)
    }

    fn finish(self) -> Result<u64, String> {
        self.stop.store(true, Ordering::Relaxed);
        self.pump.join().unwrap()
    }
}

#[test]
fn streams_survive_an_api_server_outage_and_its_return_is_relisted() {
    let mut bed = Bed::up("kt-out");
    let (a, b) = (bed.pod("a"), bed.pod("b"));
    echo_server(&b);
    let echo = cluster_ip(&bed.service("echo", json!({}), b.ip, 9000));
    let gone = cluster_ip(&bed.service("gone", json!({}), b.ip, 9000));
    let ns = bed.cp.ns_name().to_owned();
    let programmed = wait_until(Duration::from_secs(10), || {
        service_programmed(&ns, &format!("{gone} . tcp . 80"))
            && service_programmed(&ns, &format!("{echo} . tcp . 80"))
    });
    assert!(
        programmed.is_some(),
        "Services not programmed:\n{}",
        bed.log()
    );
    let streams = [
        ("pod to pod", Stream::open(&a.ns, &format!("{}:9000", b.ip))),
        (
            "pod to ClusterIP",
            Stream::open(&a.ns, &format!("{echo}:80")),
        ),
    ];
    // Writes the agent does not watch move the store's revision on, so
    // the watches' last versions are older than the restarted server's.
    bed.cp
        .kubectl_ok(&["create", "configmap", "moves-the-revision"]);
    std::thread::sleep(Duration::from_millis(300));

    bed.cp.stop_apiserver();
    let before: Vec<u64> = streams.iter().map(|(_, s)| s.echoed()).collect();
    std::thread::sleep(Duration::from_secs(3));
    for ((what, stream), before) in streams.iter().zip(before) {
        assert!(
            stream.echoed() > before + 50_000,
            "{what}: {} bytes echoed during the outage",
            stream.echoed() - before
        );
    }
    bed.cp.restart_apiserver();
    let returned = Instant::now();
    with_api(&bed.cp, |nodes| async move {
        let services: Api<Service> = Api::namespaced(nodes.into_client(), "default");
        services
            .delete("gone", &DeleteParams::default())
            .await
            .unwrap();
    });
    let after = cluster_ip(&bed.service("after", json!({}), b.ip, 9000));
    let works = wait_until(Duration::from_secs(10), || {
        let to: SocketAddr = format!("{after}:80").parse().unwrap();
        a.ns.run_in(move || TcpStream::connect_timeout(&to, Duration::from_millis(200)).is_ok())
            .unwrap_or(false)
    });
    let took = returned.elapsed();
    assert!(
        works.is_some(),
        "a Service created on the API server's return never worked:\n{}",
        bed.log()
    );
    eprintln!("a Service created as the API server returned worked {took:?} after it was ready");
    assert!(
        took < Duration::from_secs(5),
        "took {took:?}:\n{}",
        bed.log()
    );
    let removed = wait_until(Duration::from_secs(10), || {
        !service_programmed(&ns, &format!("{gone} . tcp . 80"))
    });
    assert!(
        removed.is_some(),
        "the Service deleted on return stayed:\n{}",
        bed.log()
    );
    std::thread::sleep(Duration::from_secs(1));
    for (what, stream) in streams {
        let total = stream.finish();
        assert!(total.is_ok(), "{what}: {total:?}");
        eprintln!("{what}: {} bytes echoed, none lost", total.unwrap());
    }
    // The watches' versions were too old for the restarted server: it
    // said 410 Gone and the agent listed everything again.
    let log = bed.log();
    let gone_at = log.find("(410 Gone); listing again kind=\"Service\"");
    assert!(gone_at.is_some(), "no 410 re-list:\n{log}");
    assert!(
        log[gone_at.unwrap()..].contains("Service table fully synced"),
        "no full sync after the re-list:\n{log}"
    );
}

fn mac_of(ns: &str) -> String {
    let shown = ip(ns, &["-br", "link", "show", "eth0"]);
    shown.split_whitespace().nth(2).unwrap().to_owned()
}

#[test]
fn two_nodes_reading_the_api_server_connect_pods_and_fail_over_a_load_balancer_address() {
    let cp = ControlPlane::start_reachable_at("198.18.0.1".parse().unwrap());
    install(&cp);
    // The underlay: a bridge in the control plane's namespace (which
    // forwards nothing) with the API server on 198.18.0.1, two nodes and
    // an external client.
    let cp_ns = cp.ns_name().to_owned();
    ip(&cp_ns, &["link", "add", "ul", "type", "bridge"]);
    ip(&cp_ns, &["addr", "add", "198.18.0.1/24", "dev", "ul"]);
    ip(&cp_ns, &["link", "set", "ul", "up"]);
    let mut scratch = Namespaces::new("kt-2n");
    let mut nodes = Vec::new();
    for (node, address, cidr) in [
        ("node-a", "198.18.0.11", "10.244.1.0/24"),
        ("node-b", "198.18.0.12", "10.244.2.0/24"),
    ] {
        let (name, ns) = scratch.add(node);
        plug(&cp, &name, address);
        with_api(&cp, move |api| async move {
            let spec =
                json!({"metadata": {"name": node}, "spec": {"podCIDR": cidr, "podCIDRs": [cidr]}});
            api.create(
                &PostParams::default(),
                &serde_json::from_value(spec).unwrap(),
            )
            .await
            .unwrap();
        });
        nodes.push((node, name, ns, tempfile::tempdir().unwrap()));
    }
    let (external_name, external) = scratch.add("ext");
    plug(&cp, &external_name, "198.18.0.20");

    let token = cp.kubeconfig_of("weft-system", "weft");
    let server = "https://198.18.0.1:6443";
    let mut agents: Vec<Option<Process>> = nodes
        .iter()
        .map(|(node, _, ns, dir)| {
            let extra = ["--iface", "eth0", "--kube-api-server", server];
            Some(start_agent_in(ns, node, &token, dir.path(), &extra))
        })
        .collect();
    let logs = |nodes: &[(&str, String, NetNs, tempfile::TempDir)]| -> String {
        nodes
            .iter()
            .map(|(node, _, _, dir)| {
                let log = std::fs::read_to_string(dir.path().join("agent.log")).unwrap_or_default();
                format!("--- {node}\n{log}")
            })
            .collect()
    };
    for (_, _, _, dir) in &nodes {
        let conflist = dir.path().join("net.d/10-weft.conflist");
        let up = wait_until(Duration::from_secs(20), || conflist.exists());
        assert!(up.is_some(), "an agent did not start:\n{}", logs(&nodes));
    }
    let pod_a = add_pod_on(&nodes[0].2, nodes[0].3.path(), &mut scratch, "pa");
    let pod_b = add_pod_on(&nodes[1].2, nodes[1].3.path(), &mut scratch, "pb");
    let _server = netexec(&pod_b, "b");

    // Pod to pod across the nodes (VXLAN), as each agent learnt the other
    // from its Node.
    let across = wait_until(Duration::from_secs(10), || {
        hostname_via(&pod_a.ns, &format!("{}:8080", pod_b.ip)).as_deref() == Some("b")
    });
    assert!(
        across.is_some(),
        "pod a cannot reach pod b:\n{}",
        logs(&nodes)
    );

    // A LoadBalancer Service whose endpoint is on node-b, from pod a and
    // from outside.
    let created: Service = with_api(&cp, move |api| async move {
        let client = api.into_client();
        let services: Api<Service> = Api::namespaced(client.clone(), "default");
        let svc = json!({"metadata": {"name": "web"}, "spec": {"type": "LoadBalancer",
            "ports": [{"name": "p", "port": 80, "targetPort": 8080}]}});
        let svc = services
            .create(
                &PostParams::default(),
                &serde_json::from_value(svc).unwrap(),
            )
            .await
            .unwrap();
        let slices: Api<EndpointSlice> = Api::namespaced(client, "default");
        let slice = json!({
            "metadata": {"name": "web-1", "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4",
            "ports": [{"name": "p", "port": 8080, "protocol": "TCP"}],
            "endpoints": [{"addresses": [pod_b.ip.to_string()], "nodeName": "node-b", "conditions": {"ready": true}}]
        });
        slices
            .create(
                &PostParams::default(),
                &serde_json::from_value(slice).unwrap(),
            )
            .await
            .unwrap();
        svc
    });
    let via_cluster_ip = format!("{}:80", cluster_ip(&created));
    let reached = wait_until(Duration::from_secs(10), || {
        hostname_via(&pod_a.ns, &via_cluster_ip).as_deref() == Some("b")
    });
    assert!(reached.is_some(), "ClusterIP from pod a:\n{}", logs(&nodes));
    let lb = "198.18.0.201:80";
    let reached = wait_until(Duration::from_secs(20), || {
        hostname_via(&external, lb).as_deref() == Some("b")
    });
    assert!(
        reached.is_some(),
        "LoadBalancer {lb} from outside:\n{}",
        logs(&nodes)
    );

    // The node answering for the address goes: the other takes it over.
    let neighbour = || ip(&external_name, &["neigh", "show", "198.18.0.201"]);
    let owner = nodes
        .iter()
        .position(|(_, name, _, _)| neighbour().contains(&mac_of(name)))
        .unwrap_or_else(|| panic!("no node's MAC in {}", neighbour()));
    let survivor = &nodes[1 - owner].1;
    agents[owner] = None;
    let stopped = Instant::now();
    let moved = wait_until(Duration::from_secs(20), || {
        neighbour().contains(&mac_of(survivor))
            && hostname_via(&external, lb).as_deref() == Some("b")
    });
    assert!(
        moved.is_some(),
        "no failover:\n{}\n{}",
        neighbour(),
        logs(&nodes)
    );
    eprintln!(
        "{} took over {lb} {:?} after {}'s agent stopped",
        nodes[1 - owner].0,
        stopped.elapsed(),
        nodes[owner].0
    );
    drop(agents);
}
