//! The node side of the Kubernetes-mode tests: `weft agent --kubeconfig`
//! started in the control plane's namespace as node `node-a` (its
//! underlay a veth pair there, 198.18.0.11), its Node as a kubelet
//! registers it, pods wired by weft-cni as a runtime does, Services
//! written through the API as a user and the EndpointSlice controller
//! would, and what the tests read back (its health answers, the proxy's
//! map).

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::PostParams;
use kube::Api;
use serde_json::{json, Map};
use weft_cni::conflist::Conflist;
use weft_cni::invoke::Call;
use weft_datapath::scratch::Namespaces;
use weft_datapath::NetNs;

use super::control_plane::ControlPlane;
use super::{wait_until, WEFT};

/// A process the test started (the agent, a server), killed by its PID on
/// drop.
pub struct Process(pub Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn ip(ns: &str, args: &[&str]) -> String {
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

pub fn node(name: &str, pod_cidr: &str, annotations: serde_json::Value) -> Node {
    serde_json::from_value(json!({
        "metadata": {"name": name, "annotations": annotations},
        "spec": {"podCIDR": pod_cidr, "podCIDRs": [pod_cidr]}
    }))
    .unwrap()
}

/// Runs `work` with the Nodes' API, inside the control plane's namespace.
pub fn with_api<T, F, Fut>(cp: &ControlPlane, work: F) -> T
where
    T: Send + 'static,
    F: FnOnce(Api<Node>) -> Fut + Send,
    Fut: std::future::Future<Output = T>,
{
    cp.with_cluster(|cluster| work(Api::all(cluster.client().clone())))
}

pub fn start_agent(cp: &ControlPlane, dir: &Path, extra: &[&str]) -> Process {
    start_agent_as(cp, &cp.kubeconfig, dir, extra)
}

/// [`start_agent`] with the credentials of `kubeconfig`.
pub fn start_agent_as(cp: &ControlPlane, kubeconfig: &Path, dir: &Path, extra: &[&str]) -> Process {
    // d0 unless the test names another (or none: the default route's).
    let iface: &[&str] = if extra.contains(&"--iface") {
        &[]
    } else {
        &["--iface", "d0"]
    };
    start_agent_in(cp.ns(), "node-a", kubeconfig, dir, &[iface, extra].concat())
}

/// `weft agent --node node --kubeconfig kubeconfig` in `ns`, its files
/// and log (`agent.log`) in `dir`, vxlan on 10.244.0.0/16 unless `dir`
/// has a net-conf.json already.
pub fn start_agent_in(
    ns: &NetNs,
    node: &str,
    kubeconfig: &Path,
    dir: &Path,
    extra: &[&str],
) -> Process {
    // vxlan, unless the test wrote its own.
    let net_conf = dir.join("net-conf.json");
    if !net_conf.exists() {
        let vxlan = r#"{"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan"}}"#;
        std::fs::write(&net_conf, vxlan).unwrap();
    }
    let mut args: Vec<std::ffi::OsString> = extra.iter().map(Into::into).collect();
    args.extend(["--kubeconfig".into(), kubeconfig.into()]);
    args.extend(["--net-conf".into(), dir.join("net-conf.json").into()]);
    args.extend(["--policy-socket".into(), dir.join("policy.sock").into()]);
    spawn_agent(ns, node, dir, &args)
}

/// `weft agent --node node` in `ns` with `source` (and any other)
/// arguments, its files and log (`agent.log`) in `dir`, health on
/// 127.0.0.1:10259.
fn spawn_agent(ns: &NetNs, node: &str, dir: &Path, source: &[std::ffi::OsString]) -> Process {
    let mut agent = ns.command(WEFT);
    agent
        .args(["agent", "--node", node])
        .args(source)
        .arg("--subnet-file")
        .arg(dir.join("subnet.env"))
        .arg("--cni-conf-dir")
        .arg(dir.join("net.d"))
        .arg("--ipam-dir")
        .arg(dir.join("ipam"))
        .arg("--host-local-dir")
        .arg(dir.join("ipam/cbr0"))
        .args(["--health", "127.0.0.1:10259"]);
    spawn_logged(agent, &dir.join("agent.log"))
}

/// Starts `command` with its output into the file `log`.
pub fn spawn_logged(mut command: Command, log: &Path) -> Process {
    let file = std::fs::File::create(log).unwrap();
    let child = command
        .stdin(Stdio::null())
        .stdout(file.try_clone().unwrap())
        .stderr(file)
        .spawn()
        .unwrap_or_else(|e| panic!("starting {command:?}: {e}"));
    Process(child)
}

/// The node's underlay (a veth pair with 198.18.0.11 in the control
/// plane's namespace) and its Node as a kubelet registers it, with
/// `pod_cidr` (what node IPAM would give) or without.
pub fn underlay_and_node_with(cp: &ControlPlane, pod_cidr: Option<&'static str>) {
    underlay(cp);
    with_api(cp, move |nodes| async move {
        let node_a = match pod_cidr {
            Some(cidr) => node("node-a", cidr, json!({})),
            None => serde_json::from_value(json!({"metadata": {"name": "node-a"}})).unwrap(),
        };
        nodes.create(&PostParams::default(), &node_a).await.unwrap();
    });
}

/// The node's underlay: a veth pair (d0, d1) with 198.18.0.11 on d0, in
/// the control plane's namespace.
pub fn underlay(cp: &ControlPlane) {
    let ns = cp.ns_name();
    ip(
        ns,
        &["link", "add", "d0", "type", "veth", "peer", "name", "d1"],
    );
    ip(ns, &["addr", "add", "198.18.0.11/24", "dev", "d0"]);
    for link in ["d0", "d1"] {
        ip(ns, &["link", "set", link, "up"]);
    }
}

pub fn underlay_and_node(cp: &ControlPlane) {
    underlay_and_node_with(cp, Some("10.244.1.0/24"));
}

/// `GET path` on the agent's health port inside the namespace: the status
/// line and the body.
pub fn health(cp: &ControlPlane, path: &str) -> Option<String> {
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
pub fn await_readyz(cp: &ControlPlane, words: &[&str], limit: Duration, log: &dyn Fn() -> String) {
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

/// Whether `element` is in the proxy's `service-ips` map in `ns`.
pub fn service_programmed(ns: &str, element: &str) -> bool {
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
pub fn create_service(cp: &ControlPlane, name: &'static str, endpoint: &'static str) -> String {
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

/// A pod of node-a, wired by weft-cni (the agent's conflist in `dir`) as a
/// container runtime does; its namespace is `scratch`'s.
pub struct Pod {
    pub ns: NetNs,
    pub ip: Ipv4Addr,
}

pub fn add_pod(cp: &ControlPlane, dir: &Path, scratch: &mut Namespaces, name: &str) -> Pod {
    add_pod_on(cp.ns(), dir, scratch, name)
}

/// [`add_pod`] on the node whose namespace is `host` and files `dir`.
pub fn add_pod_on(host: &NetNs, dir: &Path, scratch: &mut Namespaces, name: &str) -> Pod {
    let text = std::fs::read_to_string(dir.join("net.d/10-weft.conflist"))
        .expect("the agent's conflist (is the agent up?)");
    let conf = Conflist::parse(&text)
        .unwrap()
        .plugin_config(0, &Map::new())
        .unwrap();
    let plugin: PathBuf = Path::new(WEFT).with_file_name("weft-cni");
    // A container, not a pod: there is no Pod in the API for the agent
    // to protect (so ADD does not wait for it).
    wire_pod(host, &plugin, &conf, scratch, name)
}

/// A new namespace of `scratch` (its name the container ID) wired by the
/// CNI `plugin` with `conf`, as a runtime does on `host`.
pub fn wire_pod(
    host: &NetNs,
    plugin: &Path,
    conf: &serde_json::Value,
    scratch: &mut Namespaces,
    name: &str,
) -> Pod {
    let (ns_name, ns) = scratch.add(name);
    let netns = weft_datapath::netns::named_path(&ns_name);
    let reply = Call {
        container_id: &ns_name,
        netns: Some(&netns),
        host: Some(host),
        ..Call::new(plugin, "ADD")
    }
    .run(conf)
    .unwrap_or_else(|e| panic!("running {}: {e}", plugin.display()));
    assert!(
        reply.ok(),
        "{} ADD {name}: {} {}",
        plugin.display(),
        reply.stdout,
        reply.stderr
    );
    let address = reply.json["ips"][0]["address"].as_str().unwrap();
    let ip = address.split('/').next().unwrap().parse().unwrap();
    Pod { ns, ip }
}

/// `GET /hostname` from inside `ns` to `to`; the answer's body.
pub fn hostname_via(ns: &NetNs, to: &str) -> Option<String> {
    let to: SocketAddr = to.parse().unwrap();
    ns.run_in(move || {
        let mut conn = TcpStream::connect_timeout(&to, Duration::from_millis(500)).ok()?;
        conn.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        conn.write_all(b"GET /hostname HTTP/1.0\r\n\r\n").ok()?;
        let mut answer = String::new();
        conn.read_to_string(&mut answer).ok()?;
        Some(answer.rsplit("\r\n\r\n").next()?.trim().to_owned())
    })
    .ok()
    .flatten()
}

/// The pod's netexec (HTTP on 8080) answering `/hostname` with `name`.
pub fn netexec(pod: &Pod, name: &str) -> Process {
    let child = pod
        .ns
        .command(WEFT)
        .args(["netexec", "--http-port", "8080", "--hostname", name])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("starting weft netexec");
    Process(child)
}

/// A link of the lab-style underlay: `eth0` of namespace `ns` (address
/// `address`/24) on the bridge `ul` of the control plane's namespace.
pub fn plug(cp: &ControlPlane, ns: &str, address: &str) {
    let host_end = format!("v{}", &address[address.rfind('.').unwrap() + 1..]);
    let cp_ns = cp.ns_name();
    ip(
        cp_ns,
        &[
            "link", "add", &host_end, "type", "veth", "peer", "name", "eth0", "netns", ns,
        ],
    );
    ip(cp_ns, &["link", "set", &host_end, "master", "ul", "up"]);
    ip(
        ns,
        &["addr", "add", &format!("{address}/24"), "dev", "eth0"],
    );
    ip(ns, &["link", "set", "eth0", "up"]);
    ip(ns, &["link", "set", "lo", "up"]);
}

/// `weft agent --etcd-endpoints endpoints` as `node` in `ns` (underlay
/// `iface`) with `extra` arguments, its files and log (`agent.log`) in
/// `dir`.
#[allow(dead_code)] // Only the etcd tests use it.
pub fn start_etcd_agent(
    ns: &NetNs,
    node: &str,
    iface: &str,
    endpoints: &str,
    dir: &Path,
    extra: &[&str],
) -> Process {
    let args = ["--iface", iface, "--etcd-endpoints", endpoints];
    let mut args: Vec<std::ffi::OsString> = args.iter().chain(extra).map(Into::into).collect();
    // With a kubeconfig among `extra` the agent opens its policy socket:
    // the test's own, never the host's.
    args.extend(["--policy-socket".into(), dir.join("policy.sock").into()]);
    spawn_agent(ns, node, dir, &args)
}
