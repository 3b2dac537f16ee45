//! weft beside the real flanneld (v0.28.9, built by `scripts/setup.sh
//! --peers`), sharing one etcd in flannel's layout: node-a runs `weft
//! agent --etcd-endpoints`, node-b runs flanneld, each in a network
//! namespace of its own on one underlay bridge, with etcd on 198.18.0.1.
//! Each programs the other's lease, and a pod on either node reaches a
//! pod on the other over VXLAN. node-b's pod is wired as flannel's CNI
//! plugin wires one: the reference bridge plugin with host-local on the
//! subnet in flanneld's subnet.env.

mod common;

use std::path::Path;
use std::time::Duration;

use common::control_plane::{peer, ControlPlane};
use common::kube_node::{
    add_pod_on, hostname_via, ip, netexec, plug, start_etcd_agent, Pod, Process,
};
use common::wait_until;
use etcd_client::Client;
use rstest::rstest;
use serde_json::json;
use weft_cni::invoke::Call;
use weft_datapath::scratch::Namespaces;
use weft_datapath::NetNs;

const PREFIX: &str = "/coreos.com/network";

/// The network config both read from etcd, with `backend`.
fn config(backend: &str) -> String {
    json!({"Network": "10.244.0.0/16", "Backend": {"Type": backend}, "EnableNFTables": true})
        .to_string()
}

/// A pod of the flanneld node, wired as flannel's CNI plugin does: the
/// reference bridge plugin (cni0, the gateway) with host-local on the
/// node's subnet from flanneld's subnet.env.
fn flannel_pod(host: &NetNs, dir: &Path, scratch: &mut Namespaces, name: &str) -> Pod {
    let env = std::fs::read_to_string(dir.join("subnet.env")).expect("flanneld's subnet.env");
    let field = |key: &str| {
        env.lines()
            .find_map(|l| l.strip_prefix(&format!("{key}=")))
            .unwrap_or_else(|| panic!("{key} in subnet.env: {env}"))
            .to_string()
    };
    let subnet: ipnet::Ipv4Net = field("FLANNEL_SUBNET").parse().unwrap();
    let conf = json!({
        "cniVersion": "1.0.0", "name": "cbr0", "type": "bridge",
        "bridge": "cni0", "isGateway": true, "ipMasq": false, "hairpinMode": true,
        "mtu": field("FLANNEL_MTU").parse::<u32>().unwrap(),
        "ipam": {"type": "host-local", "dataDir": dir.join("ipam"),
                 "ranges": [[{"subnet": subnet.trunc().to_string()}]],
                 "routes": [{"dst": field("FLANNEL_NETWORK")}]}
    });
    let (ns_name, ns) = scratch.add(name);
    let netns = weft_datapath::netns::named_path(&ns_name);
    let reply = Call {
        container_id: &ns_name,
        netns: Some(&netns),
        host: Some(host),
        ..Call::new(Path::new("/usr/lib/cni/bridge"), "ADD")
    }
    .run(&conf)
    .expect("running the bridge plugin");
    assert!(
        reply.ok(),
        "bridge ADD {name}: {} {}",
        reply.stdout,
        reply.stderr
    );
    let address = reply.json["ips"][0]["address"].as_str().unwrap();
    let ip = address.split('/').next().unwrap().parse().unwrap();
    Pod { ns, ip }
}

#[rstest]
#[case::vxlan("vxlan")]
#[case::host_gw("host-gw")]
fn weft_and_flanneld_share_etcd_mesh_and_see_each_other_leave(#[case] backend: &str) {
    let cp = ControlPlane::start_reachable_at("198.18.0.1".parse().unwrap());
    let cp_ns = cp.ns_name().to_owned();
    ip(&cp_ns, &["link", "add", "ul", "type", "bridge"]);
    ip(&cp_ns, &["addr", "add", "198.18.0.1/24", "dev", "ul"]);
    ip(&cp_ns, &["link", "set", "ul", "up"]);
    let conf = config(backend);
    cp.with_etcd(|endpoints| async move {
        let mut raw = Client::connect(&endpoints, None).await.unwrap();
        raw.put(format!("{PREFIX}/config"), conf, None)
            .await
            .unwrap();
    });
    let mut scratch = Namespaces::new("fl-mix");
    let (weft_name, weft_ns) = scratch.add("node-a");
    let (flannel_name, flannel_ns) = scratch.add("node-b");
    plug(&cp, &weft_name, "198.18.0.11");
    plug(&cp, &flannel_name, "198.18.0.12");
    let (weft_dir, flannel_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let endpoints = "http://198.18.0.1:2379";

    let weft_log = weft_dir.path().join("agent.log");
    let _weft = start_etcd_agent(&weft_ns, "node-a", "eth0", endpoints, weft_dir.path());
    // flanneld does not turn forwarding on; a node's setup does.
    flannel_ns
        .run_in(|| std::fs::write("/proc/sys/net/ipv4/ip_forward", "1"))
        .unwrap()
        .unwrap();
    let flannel_log = flannel_dir.path().join("flanneld.log");
    let log = std::fs::File::create(&flannel_log).unwrap();
    let _flanneld = Process(
        flannel_ns
            .command(peer("flannel"))
            .args(["--etcd-endpoints", endpoints, "--iface", "eth0"])
            .arg(format!(
                "--subnet-file={}",
                flannel_dir.path().join("subnet.env").display()
            ))
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting flanneld"),
    );
    let logs = || {
        format!(
            "--- weft\n{}\n--- flanneld\n{}",
            std::fs::read_to_string(&weft_log).unwrap_or_default(),
            std::fs::read_to_string(&flannel_log).unwrap_or_default()
        )
    };
    let up = wait_until(Duration::from_secs(30), || {
        weft_dir.path().join("net.d/10-weft.conflist").exists()
            && flannel_dir.path().join("subnet.env").exists()
    });
    assert!(up.is_some(), "a node did not come up:\n{}", logs());

    let pod_a = add_pod_on(&weft_ns, weft_dir.path(), &mut scratch, "pa");
    let pod_b = flannel_pod(&flannel_ns, flannel_dir.path(), &mut scratch, "pb");
    let _server_a = netexec(&pod_a, "a");
    let _server_b = netexec(&pod_b, "b");
    for (from, to, name) in [(&pod_a, &pod_b, "b"), (&pod_b, &pod_a, "a")] {
        let reached = wait_until(Duration::from_secs(20), || {
            hostname_via(&from.ns, &format!("{}:8080", to.ip)).as_deref() == Some(name)
        });
        assert!(
            reached.is_some(),
            "{} did not reach {} ({name}):\nweft's routes: {}\nflanneld's routes: {}\n{}",
            from.ip,
            to.ip,
            ip(&weft_name, &["route"]),
            ip(&flannel_name, &["route"]),
            logs()
        );
    }

    // A node leaving (its lease gone from etcd) leaves the other's routes.
    // weft's first: flanneld stops when its own lease is deleted.
    let subnet_of = |dir: &Path| {
        let env = std::fs::read_to_string(dir.join("subnet.env")).unwrap();
        let line = env
            .lines()
            .find_map(|l| l.strip_prefix("FLANNEL_SUBNET="))
            .unwrap();
        line.parse::<ipnet::Ipv4Net>().unwrap().trunc()
    };
    for (leaving, other) in [(&weft_dir, &flannel_name), (&flannel_dir, &weft_name)] {
        let subnet = subnet_of(leaving.path());
        let key = format!(
            "{PREFIX}/subnets/{}-{}",
            subnet.network(),
            subnet.prefix_len()
        );
        cp.with_etcd(|endpoints| async move {
            let mut raw = Client::connect(&endpoints, None).await.unwrap();
            assert_eq!(raw.delete(key, None).await.unwrap().deleted(), 1);
        });
        let gone = wait_until(Duration::from_secs(20), || {
            ip(other, &["route", "show", &subnet.to_string()])
                .trim()
                .is_empty()
        });
        assert!(
            gone.is_some(),
            "{other} kept its route to {subnet}:\n{}",
            logs()
        );
    }
}
