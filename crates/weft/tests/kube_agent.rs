//! `weft agent --kubeconfig` against a real kube-apiserver (the peers'
//! build): the agent runs in the control plane's namespace (its underlay a
//! veth pair there), takes its subnet from its Node's podCIDR, publishes
//! flannel's annotations, programs a route to a flanneld-style peer Node
//! and removes it when that Node is deleted; its Service proxy programs a
//! Service and EndpointSlice written through the API; with the real
//! kube-controller-manager, node IPAM's podCIDR becomes the node's subnet.

mod common;

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::control_plane::ControlPlane;
use common::{wait_until, WEFT};
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{DeleteParams, PostParams};
use kube::Api;
use serde_json::json;

/// The agent, killed by its PID on drop.
struct Agent(Child);

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn ip(ns: &str, args: &[&str]) -> String {
    let out = Command::new("ip")
        .args(["-n", ns])
        .args(args)
        .output()
        .expect("running ip");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn node(name: &str, pod_cidr: &str, annotations: serde_json::Value) -> Node {
    serde_json::from_value(json!({
        "metadata": {"name": name, "annotations": annotations},
        "spec": {"podCIDR": pod_cidr, "podCIDRs": [pod_cidr]}
    }))
    .unwrap()
}

/// Runs `work` with the Nodes' API, inside the control plane's namespace.
fn with_api<T, F, Fut>(cp: &ControlPlane, work: F) -> T
where
    T: Send + 'static,
    F: FnOnce(Api<Node>) -> Fut + Send,
    Fut: std::future::Future<Output = T>,
{
    cp.with_cluster(|cluster| work(Api::all(cluster.client().clone())))
}

fn start_agent(cp: &ControlPlane, dir: &Path, extra: &[&str]) -> Agent {
    start_agent_as(cp, &cp.kubeconfig, dir, extra)
}

/// [`start_agent`] with the credentials of `kubeconfig`.
fn start_agent_as(cp: &ControlPlane, kubeconfig: &Path, dir: &Path, extra: &[&str]) -> Agent {
    std::fs::write(
        dir.join("net-conf.json"),
        r#"{"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan"}}"#,
    )
    .unwrap();
    let log = std::fs::File::create(dir.join("agent.log")).unwrap();
    let child = cp
        .ns()
        .command(WEFT)
        .args(["agent", "--node", "node-a", "--iface", "d0"])
        .args(extra)
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .arg("--net-conf")
        .arg(dir.join("net-conf.json"))
        .arg("--subnet-file")
        .arg(dir.join("subnet.env"))
        .arg("--cni-conf-dir")
        .arg(dir.join("net.d"))
        .arg("--ipam-dir")
        .arg(dir.join("ipam"))
        .args(["--health", "127.0.0.1:10259"])
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("starting weft agent");
    Agent(child)
}

/// The node's underlay (a veth pair with 198.18.0.11 in the control
/// plane's namespace) and its Node as a kubelet registers it, with
/// `pod_cidr` (what node IPAM would give) or without.
fn underlay_and_node_with(cp: &ControlPlane, pod_cidr: Option<&'static str>) {
    let ns = cp.ns_name();
    ip(
        ns,
        &["link", "add", "d0", "type", "veth", "peer", "name", "d1"],
    );
    ip(ns, &["addr", "add", "198.18.0.11/24", "dev", "d0"]);
    for link in ["d0", "d1"] {
        ip(ns, &["link", "set", link, "up"]);
    }
    with_api(cp, move |nodes| async move {
        let node_a = match pod_cidr {
            Some(cidr) => node("node-a", cidr, json!({})),
            None => serde_json::from_value(json!({"metadata": {"name": "node-a"}})).unwrap(),
        };
        nodes.create(&PostParams::default(), &node_a).await.unwrap();
    });
}

fn underlay_and_node(cp: &ControlPlane) {
    underlay_and_node_with(cp, Some("10.244.1.0/24"));
}

#[test]
fn the_agent_takes_its_subnet_from_the_node_and_meshes_with_flannel_peers() {
    let cp = ControlPlane::start();
    let ns = cp.ns_name().to_owned();
    ip(
        &ns,
        &["link", "add", "d0", "type", "veth", "peer", "name", "d1"],
    );
    ip(&ns, &["addr", "add", "198.18.0.11/24", "dev", "d0"]);
    for link in ["d0", "d1"] {
        ip(&ns, &["link", "set", link, "up"]);
    }
    let dir = tempfile::tempdir().unwrap();
    with_api(&cp, |nodes| async move {
        let node_a = node("node-a", "10.244.1.0/24", json!({}));
        nodes.create(&PostParams::default(), &node_a).await.unwrap();
    });
    let _agent = start_agent(&cp, dir.path(), &["--no-proxy"]);
    let log = || std::fs::read_to_string(dir.path().join("agent.log")).unwrap_or_default();

    // The subnet is the podCIDR; the node is annotated as flanneld does it.
    let env = dir.path().join("subnet.env");
    let got = wait_until(Duration::from_secs(20), || {
        std::fs::read_to_string(&env).is_ok_and(|e| e.contains("FLANNEL_SUBNET=10.244.1.1/24"))
    });
    assert!(got.is_some(), "no subnet.env for 10.244.1.0/24:\n{}", log());
    let annotated = with_api(&cp, |nodes| async move {
        let node = nodes.get("node-a").await.unwrap();
        node.metadata.annotations.unwrap_or_default()
    });
    assert_eq!(annotated["flannel.alpha.coreos.com/backend-type"], "vxlan");
    assert_eq!(
        annotated["flannel.alpha.coreos.com/public-ip"],
        "198.18.0.11"
    );
    assert!(
        annotated["flannel.alpha.coreos.com/backend-data"].starts_with(r#"{"VNI":1,"VtepMAC":""#)
    );

    // A flanneld node joins: a route to its subnet over the vxlan device.
    let flanneld = json!({
        "flannel.alpha.coreos.com/kube-subnet-manager": "true",
        "flannel.alpha.coreos.com/backend-type": "vxlan",
        "flannel.alpha.coreos.com/backend-data": r#"{"VNI":1,"VtepMAC":"0a:58:c6:12:00:0c"}"#,
        "flannel.alpha.coreos.com/public-ip": "198.18.0.12",
    });
    with_api(&cp, |nodes| async move {
        let node_b = node("node-b", "10.244.2.0/24", flanneld);
        nodes.create(&PostParams::default(), &node_b).await.unwrap();
    });
    let routed = || ip(&ns, &["route", "show", "10.244.2.0/24"]).contains("weft.1");
    let took = wait_until(Duration::from_secs(5), routed);
    assert!(took.is_some(), "no route to node-b's subnet:\n{}", log());
    let fdb = Command::new("bridge")
        .args(["-n", &ns, "fdb", "show", "dev", "weft.1"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&fdb.stdout).contains("0a:58:c6:12:00:0c dst 198.18.0.12"));

    // The Node goes: so do its route, neighbour and FDB entry, within 2 s.
    with_api(&cp, |nodes| async move {
        nodes
            .delete("node-b", &DeleteParams::default())
            .await
            .unwrap();
    });
    let gone = wait_until(Duration::from_secs(2), || !routed());
    assert!(
        gone.is_some(),
        "node-b's route outlived its Node:\n{}",
        log()
    );
}

#[test]
fn services_written_through_the_api_are_programmed() {
    let cp = ControlPlane::start();
    let ns = cp.ns_name().to_owned();
    let dir = tempfile::tempdir().unwrap();
    underlay_and_node(&cp);
    let _agent = start_agent(&cp, dir.path(), &[]);
    let log = || std::fs::read_to_string(dir.path().join("agent.log")).unwrap_or_default();
    // What a user and the EndpointSlice controller would write.
    let element = format!("{} . tcp . 80", create_service(&cp, "web", "10.244.1.5"));
    let took = wait_until(Duration::from_secs(10), || {
        service_programmed(&ns, &element)
    });
    assert!(took.is_some(), "{element} not programmed:\n{}", log());
}

/// `GET path` on the agent's health port inside the namespace: the status
/// line and the body.
fn health(cp: &ControlPlane, path: &str) -> Option<String> {
    let request = format!("GET {path} HTTP/1.0\r\n\r\n");
    cp.ns()
        .run_in(move || {
            let mut conn = std::net::TcpStream::connect("127.0.0.1:10259").ok()?;
            conn.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
            conn.write_all(request.as_bytes()).ok()?;
            let mut answer = String::new();
            conn.read_to_string(&mut answer).ok()?;
            Some(answer)
        })
        .ok()
        .flatten()
}

/// Waits up to `limit` for `/readyz` to answer with all of `words`; fails
/// with its last answer and the agent's log otherwise.
fn await_readyz(cp: &ControlPlane, words: &[&str], limit: Duration, log: &dyn Fn() -> String) {
    let seen = wait_until(limit, || {
        health(cp, "/readyz").is_some_and(|a| words.iter().all(|w| a.contains(w)))
    });
    assert!(
        seen.is_some(),
        "/readyz never said {words:?}: {:?}\n{}",
        health(cp, "/readyz"),
        log()
    );
}

#[test]
fn until_node_ipam_gives_a_pod_cidr_the_agent_is_alive_and_says_why_it_is_not_ready() {
    let cp = ControlPlane::start();
    // As a kubelet registers its Node: no podCIDR yet.
    underlay_and_node_with(&cp, None);
    let dir = tempfile::tempdir().unwrap();
    let _agent = start_agent(
        &cp,
        dir.path(),
        &[
            "--no-proxy",
            "--health-stale-after",
            "1s",
            "--resync",
            "200ms",
        ],
    );
    let log = || std::fs::read_to_string(dir.path().join("agent.log")).unwrap_or_default();
    await_readyz(&cp, &["503", "spec.podCIDR"], Duration::from_secs(10), &log);
    // Longer than the staleness limit: still alive while it waits.
    std::thread::sleep(Duration::from_secs(2));
    let alive = health(&cp, "/healthz").unwrap_or_default();
    assert!(alive.contains("200 OK"), "{alive}\n{}", log());
    assert!(
        log().contains("waiting for the Node to get a podCIDR"),
        "{}",
        log()
    );
    with_api(&cp, |nodes| async move {
        let patch = json!({"spec": {"podCIDR": "10.244.1.0/24", "podCIDRs": ["10.244.1.0/24"]}});
        nodes
            .patch(
                "node-a",
                &kube::api::PatchParams::default(),
                &kube::api::Patch::Merge(&patch),
            )
            .await
            .unwrap();
    });
    await_readyz(&cp, &["200 OK"], Duration::from_secs(10), &log);
}

/// Whether `element` is in the proxy's `service-ips` map in `ns`.
fn service_programmed(ns: &str, element: &str) -> bool {
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            ns,
            "nft",
            "list",
            "map",
            "ip",
            "weft-proxy",
            "service-ips",
        ])
        .output()
        .expect("running nft");
    String::from_utf8_lossy(&out.stdout).contains(element)
}

/// Creates Service `name` with one endpoint through the API; its ClusterIP.
fn create_service(cp: &ControlPlane, name: &'static str, endpoint: &'static str) -> String {
    with_api(cp, move |nodes| async move {
        let client = nodes.into_client();
        let services: Api<Service> = Api::namespaced(client.clone(), "default");
        let svc: Service = serde_json::from_value(json!({
            "metadata": {"name": name},
            "spec": {"ports": [{"port": 80, "targetPort": 8080}]}
        }))
        .unwrap();
        let svc = services.create(&PostParams::default(), &svc).await.unwrap();
        let slices: Api<EndpointSlice> = Api::namespaced(client, "default");
        let slice: EndpointSlice = serde_json::from_value(json!({
            "metadata": {"name": format!("{name}-1"), "labels": {"kubernetes.io/service-name": name}},
            "addressType": "IPv4",
            "ports": [{"port": 8080, "protocol": "TCP"}],
            "endpoints": [{"addresses": [endpoint], "nodeName": "node-a", "conditions": {"ready": true}}]
        }))
        .unwrap();
        slices.create(&PostParams::default(), &slice).await.unwrap();
        svc.spec.unwrap().cluster_ip.unwrap()
    })
}

#[test]
fn while_the_api_server_is_away_the_datapath_stays_and_it_catches_up_on_return() {
    let mut cp = ControlPlane::start();
    let ns = cp.ns_name().to_owned();
    let dir = tempfile::tempdir().unwrap();
    underlay_and_node(&cp);
    let _agent = start_agent(&cp, dir.path(), &["--resync", "200ms"]);
    let log = || std::fs::read_to_string(dir.path().join("agent.log")).unwrap_or_default();
    let before = format!("{} . tcp . 80", create_service(&cp, "before", "10.244.1.5"));
    let programmed = wait_until(Duration::from_secs(10), || service_programmed(&ns, &before));
    assert!(programmed.is_some(), "{before} not programmed:\n{}", log());
    await_readyz(&cp, &["200 OK"], Duration::from_secs(10), &log);

    cp.stop_apiserver();
    // Unready with the reason, the datapath as it was.
    await_readyz(&cp, &["503", "API server"], Duration::from_secs(10), &log);
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        service_programmed(&ns, &before),
        "the Service was removed while the API server was away"
    );
    assert!(ip(&ns, &["link", "show", "weft.1"]).contains("weft.1"));

    cp.restart_apiserver();
    let returned = std::time::Instant::now();
    let after = format!("{} . tcp . 80", create_service(&cp, "after", "10.244.1.6"));
    let seen = wait_until(Duration::from_secs(10), || service_programmed(&ns, &after));
    let took = returned.elapsed();
    assert!(
        seen.is_some(),
        "{after} not programmed after the API server returned:\n{}",
        log()
    );
    eprintln!(
        "a Service created as the API server returned was programmed {took:?} after it was ready"
    );
    assert!(took < Duration::from_secs(3), "took {took:?}:\n{}", log());
    await_readyz(&cp, &["200 OK"], Duration::from_secs(10), &log);
}

#[test]
fn node_ipam_of_the_real_controller_manager_gives_the_agent_its_subnet() {
    let mut cp = ControlPlane::start();
    cp.start_controller_manager("10.244.0.0/16");
    // As a kubelet registers its Node: no podCIDR yet.
    underlay_and_node_with(&cp, None);
    let dir = tempfile::tempdir().unwrap();
    let _agent = start_agent(&cp, dir.path(), &["--no-proxy"]);
    let log = || std::fs::read_to_string(dir.path().join("agent.log")).unwrap_or_default();
    let env = dir.path().join("subnet.env");
    let leased = wait_until(Duration::from_secs(60), || {
        cp.assert_running();
        std::fs::read_to_string(&env).is_ok_and(|e| e.contains("FLANNEL_SUBNET=10.244."))
    });
    assert!(leased.is_some(), "no subnet from node IPAM:\n{}", log());
    let pod_cidr = with_api(&cp, |nodes| async move {
        nodes
            .get("node-a")
            .await
            .unwrap()
            .spec
            .unwrap()
            .pod_cidr
            .unwrap()
    });
    let subnet = std::fs::read_to_string(&env).unwrap();
    let first = pod_cidr.trim_end_matches("0/24").to_string() + "1/24";
    assert!(
        subnet.contains(&format!("FLANNEL_SUBNET={first}")),
        "{pod_cidr} vs\n{subnet}"
    );
}

#[test]
fn with_the_install_manifests_service_account_the_agent_does_its_whole_job() {
    let cp = ControlPlane::start();
    cp.prepare_install();
    cp.kubectl_ok(&[
        "apply",
        "-f",
        concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy/weft.yaml"),
    ]);
    let agent_kubeconfig = cp.kubeconfig_of("weft-system", "weft");
    let ns = cp.ns_name().to_owned();
    let dir = tempfile::tempdir().unwrap();
    underlay_and_node(&cp);
    let _agent = start_agent_as(&cp, &agent_kubeconfig, dir.path(), &[]);
    let log = || std::fs::read_to_string(dir.path().join("agent.log")).unwrap_or_default();
    // Subnet, annotations, heartbeat, Services: all under least privilege.
    await_readyz(&cp, &["200 OK"], Duration::from_secs(20), &log);
    let annotated = with_api(&cp, |nodes| async move {
        let node = nodes.get("node-a").await.unwrap();
        node.metadata.annotations.unwrap_or_default()
    });
    assert_eq!(
        annotated["flannel.alpha.coreos.com/kube-subnet-manager"],
        "true"
    );
    let element = format!("{} . tcp . 80", create_service(&cp, "web", "10.244.1.5"));
    let programmed = wait_until(Duration::from_secs(10), || {
        service_programmed(&ns, &element)
    });
    assert!(programmed.is_some(), "{element} not programmed:\n{}", log());
    let beat = wait_until(Duration::from_secs(10), || {
        cp.kubectl(&["get", "lease", "weft-node-a", "-n", "kube-node-lease"])
            .status
            .success()
    });
    assert!(beat.is_some(), "no heartbeat Lease:\n{}", log());
    assert!(
        !log().contains("Forbidden") && !log().contains("forbidden"),
        "{}",
        log()
    );
}
