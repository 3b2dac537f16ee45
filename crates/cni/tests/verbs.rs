//! Every CNI verb and every error code, driving the real binary as a
//! runtime does (environment + stdin, real network namespaces).

mod common;

use std::path::Path;

use common::{ipv4_of, Node};
use serde_json::{json, Value};
use weft_cni::invoke::Call;

#[test]
fn add_wires_the_pod_and_reports_every_version_correctly() {
    let mut node = Node::new("add");
    for version in ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"] {
        let pod = node.pod(&version.replace('.', ""));
        let conf = node.conf(json!({"cniVersion": version, "mtu": 1400}));
        let r = node.add(&format!("c{}", version.replace('.', "")), &pod, &conf);
        assert_eq!(r.json["cniVersion"], version);
        let ip0 = &r.json["ips"][0];
        assert_eq!(
            ip0.get("version").is_some(),
            version.starts_with("0."),
            "{version}: {ip0}"
        );
        assert_eq!(ip0["gateway"], "10.88.0.1");
        assert_eq!(ip0["interface"], 2);
        let ifaces = r.json["interfaces"].as_array().unwrap();
        assert_eq!(ifaces[0]["name"], "wtbr0");
        assert_eq!(ifaces[2]["name"], "eth0");
        assert_eq!(ifaces[2]["sandbox"], pod.to_str().unwrap());
        assert_eq!(r.json["routes"][0]["dst"], "0.0.0.0/0");
        // The kernel agrees: address, MTU, default route, lo up, veth on the bridge with hairpin.
        let ns = pod.file_name().unwrap().to_str().unwrap();
        let addr = ipv4_of(&r.json);
        assert!(Node::ip(ns, &["addr", "show", "eth0"]).contains(&format!("{addr}/24")));
        assert!(Node::ip(ns, &["link", "show", "eth0"]).contains("mtu 1400"));
        assert!(Node::ip(ns, &["route"]).contains("default via 10.88.0.1 dev eth0"));
        assert!(Node::ip(ns, &["link", "show", "lo"]).contains("UP"));
        let host = ifaces[1]["name"].as_str().unwrap();
        let detail = node.node_ip(&["-d", "link", "show", host]);
        assert!(
            detail.contains("master wtbr0") && detail.contains("hairpin on"),
            "{detail}"
        );
    }
    assert!(node
        .node_ip(&["addr", "show", "wtbr0"])
        .contains("10.88.0.1/24"));
}

#[test]
fn dual_stack_and_requested_addresses_and_mac() {
    let mut node = Node::new("dual");
    let pod = node.pod("p");
    let conf = node.conf(json!({
        "ipam": {"ranges": [[{"subnet": "10.88.0.0/24"}], [{"subnet": "fd88::/64"}]]},
        "runtimeConfig": {"ips": ["fd88::99/64"], "mac": "0a:58:0a:58:00:63"},
    }));
    let r = node
        .call("ADD", "dual1", Some(&pod))
        .with_args("IP=10.88.0.99")
        .run(&conf)
        .unwrap();
    assert!(r.ok(), "{}", r.stdout);
    let addrs: Vec<&str> = r.json["ips"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["address"].as_str().unwrap())
        .collect();
    assert_eq!(addrs, ["10.88.0.99/24", "fd88::99/64"]);
    assert_eq!(r.json["interfaces"][2]["mac"], "0a:58:0a:58:00:63");
    let routes: Vec<&str> = r.json["routes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["dst"].as_str().unwrap())
        .collect();
    assert_eq!(routes, ["0.0.0.0/0", "::/0"]);
    assert!(
        Node::ping(&pod, "fd88::1"),
        "pod cannot reach its IPv6 gateway"
    );
}

trait WithArgs<'a> {
    fn with_args(self, args: &'a str) -> Self;
}
impl<'a> WithArgs<'a> for Call<'a> {
    fn with_args(mut self, args: &'a str) -> Self {
        self.args = args;
        self
    }
}

#[test]
fn check_passes_then_detects_a_removed_address_and_route() {
    let mut node = Node::new("check");
    let pod = node.pod("p");
    let conf = node.conf(json!({}));
    let r = node.add("chk", &pod, &conf);
    let mut with_prev = conf.clone();
    with_prev["prevResult"] = r.json.clone();
    let ok = node.run("CHECK", "chk", Some(&pod), &with_prev);
    assert!(ok.ok(), "CHECK of a fresh pod failed: {}", ok.stdout);

    let ns = pod.file_name().unwrap().to_str().unwrap();
    let addr = format!("{}/24", ipv4_of(&r.json));
    Node::ip(ns, &["addr", "del", &addr, "dev", "eth0"]);
    let bad = node.run("CHECK", "chk", Some(&pod), &with_prev);
    assert_eq!(bad.code(), Some(104), "{}", bad.stdout);
    assert!(
        bad.json["msg"].as_str().unwrap().contains(&addr),
        "{}",
        bad.stdout
    );

    // CHECK needs prevResult and a version that has CHECK.
    assert_eq!(node.run("CHECK", "chk", Some(&pod), &conf).code(), Some(7));
    let mut old = with_prev.clone();
    old["cniVersion"] = json!("0.3.1");
    assert_eq!(node.run("CHECK", "chk", Some(&pod), &old).code(), Some(1));
    // A vanished pod namespace is "unknown container".
    node.remove_pod(&pod);
    assert_eq!(
        node.run("CHECK", "chk", Some(&pod), &with_prev).code(),
        Some(3)
    );
}

#[test]
fn del_is_idempotent_twice_without_netns_and_for_unknown_containers() {
    let mut node = Node::new("del");
    let pod = node.pod("p");
    let conf = node.conf(json!({}));
    let r = node.add("d1", &pod, &conf);
    let host_veth = r.json["interfaces"][1]["name"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(node.links().contains(&host_veth));
    for _ in 0..2 {
        let d = node.run("DEL", "d1", Some(&pod), &conf);
        assert!(
            d.ok() && d.stdout.trim().is_empty(),
            "DEL: {} {}",
            d.stdout,
            d.stderr
        );
    }
    assert!(
        !node.links().contains(&host_veth),
        "host veth still in service after DEL"
    );
    assert!(node.reserved("testnet").is_empty(), "address left reserved");
    assert!(
        node.settled_veths().is_empty(),
        "the retired veth was never unregistered"
    );
    let pod_links = Node::ip(pod.file_name().unwrap().to_str().unwrap(), &["-br", "link"]);
    assert!(!pod_links.contains("eth0"), "{pod_links}");

    // ADD right after DEL into the same namespace and name works (nothing collides).
    node.add("d1", &pod, &conf);
    assert!(node.run("DEL", "d1", Some(&pod), &conf).ok());
    node.add("d1", &pod, &conf);
    assert!(
        Node::ping(&pod, "10.88.0.1"),
        "re-added pod cannot reach its gateway"
    );
    assert!(node.run("DEL", "d1", Some(&pod), &conf).ok());

    // Pod namespace gone before DEL (the runtime lost it): DEL still cleans up.
    let pod2 = node.pod("p2");
    node.add("d2", &pod2, &conf);
    node.remove_pod(&pod2);
    assert!(node.run("DEL", "d2", Some(&pod2), &conf).ok());
    assert!(node.run("DEL", "d2", None, &conf).ok());
    assert!(node.reserved("testnet").is_empty());
    // Never added at all.
    assert!(node.run("DEL", "never-added", None, &conf).ok());
}

#[test]
fn status_reports_ready_unavailable_and_limited() {
    let mut node = Node::new("status");
    let conf =
        node.conf(json!({"ipMasq": true, "ipam": {"ranges": [[{"subnet": "10.88.0.0/30"}]]}}));
    assert!(node.run("STATUS", "", None, &conf).ok());
    let pod = node.pod("p");
    node.add("s1", &pod, &conf);
    // A /30 has one address besides the gateway: now exhausted.
    let full = node.run("STATUS", "", None, &conf);
    assert_eq!(full.code(), Some(50), "{}", full.stdout);
    assert!(full.json["msg"].as_str().unwrap().contains("exhausted"));
    // The ruleset was flushed under a running pod: limited connectivity.
    let flushed = node
        .ns
        .command("nft")
        .args(["flush", "ruleset"])
        .status()
        .unwrap();
    assert!(flushed.success());
    assert_eq!(node.run("STATUS", "", None, &conf).code(), Some(51));
    // A subnet file that does not exist yet: not available.
    let missing =
        node.conf(json!({"ipam": {"subnetFile": "/nonexistent/weft/subnet.env", "ranges": []}}));
    let r = node.run("STATUS", "", None, &missing);
    assert_eq!(r.code(), Some(50), "{}", r.stdout);
    // STATUS is a 1.1.0 verb.
    let mut old = conf.clone();
    old["cniVersion"] = json!("1.0.0");
    assert_eq!(node.run("STATUS", "", None, &old).code(), Some(1));
}

#[test]
fn gc_releases_everything_not_in_valid_attachments() {
    let mut node = Node::new("gc");
    let conf = node.conf(json!({"runtimeConfig": {"portMappings": [{"hostPort": 18080, "containerPort": 80, "protocol": "tcp"}]}}));
    let (pa, pb) = (node.pod("a"), node.pod("b"));
    let ra = node.add("keep", &pa, &conf);
    let rb = node.add("drop", &pb, &node.conf(json!({})));
    let keep_veth = ra.json["interfaces"][1]["name"]
        .as_str()
        .unwrap()
        .to_string();
    let drop_veth = rb.json["interfaces"][1]["name"]
        .as_str()
        .unwrap()
        .to_string();
    // Also a record left by a crashed plugin.
    std::fs::write(node.data_dir.join("testnet/ips/10.88.0.200"), "").unwrap();
    let mut gc = node.conf(json!({}));
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "drop-not", "ifname": "eth0"}, {"containerID": "keep", "ifname": "eth0"}]);
    let r = node.run("GC", "", None, &gc);
    assert!(r.ok(), "GC: {}", r.stdout);
    assert_eq!(node.reserved("testnet"), vec![ipv4_of(&ra.json)]);
    let links = node.links();
    assert!(
        links.contains(&keep_veth) && !links.contains(&drop_veth),
        "{links:?}"
    );
    assert!(
        node.nft_ruleset().contains("tcp . 18080"),
        "the valid pod's hostPort must stay"
    );
    // Now nothing is valid: everything goes, hostPort chains included.
    gc["cni.dev/valid-attachments"] = json!([]);
    assert!(node.run("GC", "", None, &gc).ok());
    assert!(node.reserved("testnet").is_empty());
    let rules = node.nft_ruleset();
    assert!(
        !rules.contains("18080") && !rules.contains("chain hp-"),
        "{rules}"
    );
    // A retired veth whose reaper never ran is removed by GC.
    let orphan = "wr0123456789abc";
    Node::ip(
        &node.name,
        &[
            "link", "add", orphan, "type", "veth", "peer", "name", "wtorphan",
        ],
    );
    assert!(node.links().contains(&orphan.to_string()));
    assert!(node.run("GC", "", None, &gc).ok());
    assert!(
        !node.links().contains(&orphan.to_string()),
        "GC left a retired link"
    );
    // The older key is honoured too.
    let mut legacy = node.conf(json!({}));
    legacy["cni.dev/attachments"] = json!([]);
    assert!(node.run("GC", "", None, &legacy).ok());
}

#[test]
fn version_answers_with_the_supported_list() {
    let r = Call::new(Path::new(common::PLUGIN), "VERSION")
        .run(&json!({"cniVersion": "1.0.0"}))
        .unwrap();
    assert!(r.ok());
    assert_eq!(r.json["cniVersion"], "1.0.0");
    assert_eq!(
        r.json["supportedVersions"],
        json!(["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"])
    );
}

fn expect_code(node: &Node, call: Call, conf: &Value, code: u64, needle: &str) {
    let r = call.run(conf).unwrap();
    assert_eq!(
        r.exit,
        Some(1),
        "exit code for expected error {code}: {} {}",
        r.stdout,
        r.stderr
    );
    assert_eq!(r.code(), Some(code), "{}", r.stdout);
    let msg = format!("{} {}", r.json["msg"], r.json["details"]);
    assert!(
        msg.contains(needle),
        "error {code} should mention {needle:?}: {msg}"
    );
    assert!(r.json["cniVersion"].is_string());
    let _ = node;
}

#[test]
fn every_error_code_with_a_useful_message() {
    let mut node = Node::new("errors");
    let pod = node.pod("p");
    let other = node.pod("q");
    let conf = node.conf(json!({}));
    let add = |id: &'static str| node.call("ADD", id, Some(&pod));

    expect_code(
        &node,
        add("e1"),
        &node.conf(json!({"cniVersion": "0.2.0"})),
        1,
        "0.2.0",
    );
    expect_code(
        &node,
        add("e2"),
        &node.conf(json!({"ipam": {"type": "dhcp"}})),
        2,
        "dhcp",
    );
    let gone = Path::new("/run/netns/weft-test-does-not-exist");
    expect_code(
        &node,
        node.call("ADD", "e3", Some(gone)),
        &conf,
        3,
        "CNI_NETNS",
    );
    let mut no_netns = node.call("ADD", "e4", None);
    no_netns.netns = None;
    expect_code(&node, no_netns, &conf, 4, "CNI_NETNS");
    let mut bad_if = add("e4b");
    bad_if.ifname = "eth0:bad";
    expect_code(&node, bad_if, &conf, 4, "CNI_IFNAME");
    expect_code(&node, add("e4c").with_args("FOO=bar"), &conf, 4, "FOO");
    assert!(add("e4d")
        .with_args("FOO=bar;IgnoreUnknown=1")
        .run(&conf)
        .unwrap()
        .ok());
    let file_not_dir = node.data_dir.with_extension("file");
    std::fs::write(&file_not_dir, "").unwrap();
    expect_code(
        &node,
        add("e5"),
        &node.conf(json!({"ipam": {"dataDir": file_not_dir}})),
        5,
        "IPAM",
    );
    std::fs::remove_file(&file_not_dir).unwrap();
    let r = common::run_raw(&node, add("e6"), b"{\"cniVersion\": ");
    assert_eq!(r.code(), Some(6), "{}", r.stdout);
    expect_code(
        &node,
        add("e7"),
        &node.conf(json!({"ipam": {"ranges": [[{"subnet": "10.88.0.5/24"}]]}})),
        7,
        "host bits",
    );
    expect_code(
        &node,
        add("e11"),
        &node.conf(json!({"ipam": {"ranges": [], "subnetFile": "/nonexistent/subnet.env"}})),
        11,
        "agent",
    );
    let tiny =
        node.conf(json!({"ipam": {"ranges": [[{"subnet": "10.89.0.0/30"}]]}, "bridge": "wtbr1"}));
    assert!(node.run("ADD", "tiny1", Some(&other), &tiny).ok());
    expect_code(&node, add("e100"), &tiny, 100, "exhausted");
    let mut first = node.call("ADD", "e101a", Some(&other));
    first.ifname = "net5";
    assert!(first.with_args("IP=10.88.0.5").run(&conf).unwrap().ok());
    expect_code(
        &node,
        add("e101").with_args("IP=10.88.0.5"),
        &conf,
        101,
        "10.88.0.5",
    );
    expect_code(
        &node,
        add("e101b").with_args("IP=10.77.0.5"),
        &conf,
        101,
        "not inside",
    );
    // The pod already has an eth0 (from e4d): the kernel refuses a second one.
    expect_code(&node, add("e102"), &conf, 102, "already exists");
    let mut no_nft = node.call("ADD", "e103", Some(&other));
    no_nft.ifname = "net9";
    let masq = node.conf(json!({"name": "testnet-nft", "ipMasq": true, "bridge": "wtbr2", "ipam": {"ranges": [[{"subnet": "10.90.0.0/24"}]]}}));
    let r = common::run_without_nft(no_nft, &masq);
    assert_eq!(r.code(), Some(103), "{}", r.stdout);
    // A failed ADD leaves nothing behind: no address, no interface.
    assert!(node.reserved("testnet-nft").is_empty());
    assert!(!Node::ip(other.file_name().unwrap().to_str().unwrap(), &["link"]).contains("net9"));
}

/// With `policySocket`, ADD of a pod returns only once the node's agent
/// has put the pod's policy in place: no agent is "try again later", and
/// the failed ADD leaves nothing behind. A container that is not a pod
/// (no K8S_POD_NAME) does not wait.
#[test]
fn add_waits_for_the_agent_to_protect_the_pod() {
    let mut node = Node::new("gate");
    let pod = node.pod("p");
    let conf = node.conf(json!({"name": "testnet-gate", "bridge": "wtbr3", "policySocket": "/nonexistent/weft/policy.sock", "ipam": {"ranges": [[{"subnet": "10.91.0.0/24"}]]}}));
    let asked = node
        .call("ADD", "gate1", Some(&pod))
        .with_args("K8S_POD_NAMESPACE=default;K8S_POD_NAME=p");
    expect_code(
        &node,
        asked,
        &conf,
        11,
        "does not answer at /nonexistent/weft/policy.sock",
    );
    assert!(node.reserved("testnet-gate").is_empty());
    assert!(!Node::ip(pod.file_name().unwrap().to_str().unwrap(), &["link"]).contains("eth0"));

    let not_a_pod = node.run("ADD", "gate2", Some(&pod), &conf);
    assert!(not_a_pod.ok(), "{}", not_a_pod.stdout);
    let relative = node.conf(json!({"policySocket": "policy.sock"}));
    expect_code(
        &node,
        node.call("ADD", "gate3", Some(&pod)),
        &relative,
        7,
        "absolute",
    );
}

#[test]
fn a_repeated_add_fails_without_breaking_the_live_pod() {
    let mut node = Node::new("again");
    let pod = node.pod("p");
    let conf = node.conf(json!({}));
    let first = node.add("twice", &pod, &conf);
    let again = node.run("ADD", "twice", Some(&pod), &conf);
    assert_eq!(again.code(), Some(102), "{}", again.stdout);
    assert!(
        again.json["msg"].as_str().unwrap().contains("call DEL"),
        "{}",
        again.stdout
    );
    assert_eq!(
        node.reserved("testnet"),
        vec![ipv4_of(&first.json)],
        "the live pod lost its address"
    );
    assert!(
        Node::ping(&pod, "10.88.0.1"),
        "the live pod was disturbed by the repeated ADD"
    );
}

#[test]
fn a_bridge_name_taken_by_another_device_is_reported() {
    let mut node = Node::new("notbr");
    let pod = node.pod("p");
    node.node_ip(&[
        "link",
        "add",
        "wtbr0",
        "type",
        "veth",
        "peer",
        "name",
        "wtbr0peer",
    ]);
    let r = node.run("ADD", "nb", Some(&pod), &node.conf(json!({})));
    assert_eq!(r.code(), Some(102), "{}", r.stdout);
    assert!(
        r.json["details"].as_str().unwrap().contains("not a bridge"),
        "{}",
        r.stdout
    );
    assert!(
        node.reserved("testnet").is_empty(),
        "a failed ADD kept its address"
    );
}

/// A node that moves from flannel keeps pods host-local addressed: their
/// addresses are never handed out again, and their DEL (now weft-cni's)
/// releases them.
#[test]
fn addresses_host_local_holds_are_skipped_and_released_at_del() {
    let mut node = Node::new("hl");
    let host_local = node.data_dir.join("host-local/cbr0");
    std::fs::create_dir_all(&host_local).unwrap();
    // As host-local v1.10 leaves two pods of flannel's chain.
    std::fs::write(host_local.join("10.88.0.2"), "flannel-one\r\neth0").unwrap();
    std::fs::write(host_local.join("10.88.0.3"), "flannel-two\r\neth0").unwrap();
    std::fs::write(host_local.join("last_reserved_ip.0"), "10.88.0.3").unwrap();
    let conf = node.conf(json!({"ipam": {"hostLocalDir": host_local}}));
    let pod = node.pod("p");
    assert_eq!(ipv4_of(&node.add("w1", &pod, &conf).json), "10.88.0.4");

    let d = node.run("DEL", "flannel-one", None, &conf);
    assert!(d.ok(), "DEL: {} {}", d.stdout, d.stderr);
    assert!(!host_local.join("10.88.0.2").exists());
    assert!(host_local.join("10.88.0.3").exists());
    assert!(node.run("DEL", "w1", Some(&pod), &conf).ok());
    assert!(host_local.join("10.88.0.3").exists());

    let relative = node.conf(json!({"ipam": {"hostLocalDir": "cbr0"}}));
    let r = node.run("ADD", "w3", Some(&pod), &relative);
    assert!(
        !r.ok()
            && r.stdout
                .contains("hostLocalDir cbr0 is not an absolute path"),
        "{}",
        r.stdout
    );
}
