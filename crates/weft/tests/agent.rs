//! `weft agent` as an operator runs it: refused command lines, and (as
//! root) one agent in a network namespace of the test's own with a veth
//! pair as its underlay, removed by `Drop` even when the test fails.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use weft_datapath::scratch::Namespaces;
use weft_datapath::NetNs;

mod common;

use common::{text, wait_until, WEFT};

/// The node's underlay address, on a veth inside the test's namespace.
const NODE_ADDR: &str = "192.0.2.10";
const NET_CONF: &str = r#"{"Network": "10.250.0.0/16", "Backend": {"Type": "host-gw"}}"#;
const HEALTH: &str = "127.0.0.1:10254";

/// One node for one agent: a namespace `wta-<tag>-<pid>-<n>-node` holding a veth
/// pair (`d0` with [`NODE_ADDR`] is the underlay), and a directory for the
/// store, net-conf and the files the agent writes.
struct Node {
    ns_name: String,
    ns: NetNs,
    dir: tempfile::TempDir,
    agent: Option<Child>,
    /// Declared last: the agent is stopped before its namespace goes.
    _namespaces: Namespaces,
}

impl Node {
    fn new(tag: &str) -> Node {
        let mut namespaces = Namespaces::new(&format!("wta-{tag}"));
        let (ns_name, ns) = namespaces.add("node");
        let node = Node {
            ns_name,
            ns,
            dir: tempfile::tempdir().expect("a temporary directory"),
            agent: None,
            _namespaces: namespaces,
        };
        node.ip(&["link", "add", "d0", "type", "veth", "peer", "name", "d1"]);
        node.ip(&["addr", "add", &format!("{NODE_ADDR}/24"), "dev", "d0"]);
        for link in ["lo", "d0", "d1"] {
            node.ip(&["link", "set", link, "up"]);
        }
        node.write_net_conf(NET_CONF);
        node
    }

    fn ip(&self, args: &[&str]) {
        let out = Command::new("ip")
            .args(["-n", &self.ns_name])
            .args(args)
            .output()
            .expect("running ip");
        assert!(out.status.success(), "ip {args:?}: {}", text(&out.stderr));
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn store(&self) -> PathBuf {
        self.path("store.db")
    }

    fn subnet_env(&self) -> PathBuf {
        self.path("subnet.env")
    }

    fn conflist(&self) -> PathBuf {
        self.path("net.d/10-weft.conflist")
    }

    fn write_net_conf(&self, json: &str) {
        std::fs::write(self.path("net-conf.json"), json).unwrap();
    }

    /// `weft agent` for this node with `extra` flags, its output in agent.log.
    fn agent_command(&self, extra: &[&str]) -> Command {
        let mut cmd = self.ns.command(WEFT);
        cmd.args(["agent", "--node", "node-1", "--iface", "d0", "--no-proxy"])
            .args(["--health", HEALTH])
            .arg("--store")
            .arg(self.store())
            .arg("--net-conf")
            .arg(self.path("net-conf.json"))
            .arg("--subnet-file")
            .arg(self.subnet_env())
            .arg("--cni-conf-dir")
            .arg(self.path("net.d"))
            .arg("--ipam-dir")
            .arg(self.path("ipam"))
            .arg("--policy-socket")
            .arg(self.path("policy.sock"))
            .args(extra)
            .env("RUST_BACKTRACE", "0");
        cmd
    }

    /// Runs an agent that must stop by itself within 10 s; its output.
    fn agent_exits(&self, extra: &[&str]) -> Output {
        let mut child = self
            .agent_command(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting weft agent");
        let deadline = Instant::now() + Duration::from_secs(10);
        while child.try_wait().unwrap().is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!(
                    "the agent ran on: {}",
                    text(&child.wait_with_output().unwrap().stderr)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        child.wait_with_output().unwrap()
    }

    /// Starts the agent and waits until it is ready.
    fn start_agent(&mut self, extra: &[&str]) {
        let log = std::fs::File::create(self.path("agent.log")).unwrap();
        let child = self
            .agent_command(extra)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting weft agent");
        self.agent = Some(child);
        let ready = wait_until(Duration::from_secs(10), || self.readyz().0 == 200);
        assert!(
            ready.is_some(),
            "the agent did not become ready:\n{}",
            self.log()
        );
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.path("agent.log")).unwrap_or_default()
    }

    /// GET /readyz inside the namespace: status code and body (0 when the
    /// agent does not answer).
    fn readyz(&self) -> (u16, String) {
        let response = self
            .ns
            .run_in(|| -> std::io::Result<String> {
                let mut conn = TcpStream::connect(HEALTH)?;
                conn.set_read_timeout(Some(Duration::from_secs(2)))?;
                conn.write_all(
                    b"GET /readyz HTTP/1.1\r\nHost: agent\r\nConnection: close\r\n\r\n",
                )?;
                let mut response = String::new();
                conn.read_to_string(&mut response)?;
                Ok(response)
            })
            .expect("entering the namespace");
        let Ok(response) = response else {
            return (0, String::new());
        };
        let status = response
            .split_whitespace()
            .nth(1)
            .and_then(|code| code.parse().ok())
            .unwrap_or(0);
        let body = response.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
        (status, body)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut agent) = self.agent.take() {
            let _ = agent.kill();
            let _ = agent.wait();
        }
    }
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// `weft agent --node n ARGS` with a net-conf path that does not exist,
/// so it fails either on its command line or, past it, on net-conf.json.
fn agent_without_net_conf(args: &[&str]) -> Output {
    Command::new(WEFT)
        .args(["agent", "--node", "n", "--net-conf", NO_NET_CONF])
        .args(args)
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("running weft")
}

const NO_NET_CONF: &str = "/nonexistent/weft/net-conf.json";

/// `weft agent --node n ARGS`, which must be refused before it touches
/// anything.
fn refused(args: &[&str]) -> Output {
    let out = agent_without_net_conf(args);
    assert!(!out.status.success(), "{args:?} was accepted");
    assert!(
        !text(&out.stderr).contains(NO_NET_CONF),
        "{args:?} got past the command line: {}",
        text(&out.stderr)
    );
    out
}

#[test]
fn node_names_the_api_server_would_refuse_are_refused() {
    for bad in ["", "../x", "Node", "a b", "n;IP=1"] {
        let out = Command::new(WEFT)
            .args(["agent", "--node", bad, "--net-conf", NO_NET_CONF])
            .output()
            .expect("running weft");
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{bad:?}: {stderr}");
        assert!(stderr.contains("--node"), "{bad:?}: {stderr}");
    }
}

#[test]
fn zero_and_nonsensical_periods_are_refused_naming_the_flag_and_range() {
    for (flag, value, range) in [
        ("--resync", "0s", "100ms..=1h"),
        ("--resync", "99ms", "100ms..=1h"),
        ("--resync", "3600001ms", "100ms..=1h"),
        ("--heartbeat", "0ms", "100ms..=1m"),
        ("--heartbeat", "18446744073709551615ms", "100ms..=1m"),
        ("--watch-poll", "0ms", "1ms..=1m"),
        ("--lease-ttl", "0s", "1s..=365d"),
        ("--lease-ttl", "366d", "1s..=365d"),
        ("--proxy-full-resync", "0s", "1s..=7d"),
        ("--proxy-full-resync", "18446744073709551615d", "too long"),
        ("--proxy-drift-check", "2h", "100ms..=1h"),
        ("--health-stale-after", "100ms", "200ms..=2h"),
        ("--resync", "2000", "a whole number and a unit"),
        ("--lease-ttl", "1.5h", "not a whole number"),
    ] {
        let out = refused(&[flag, value]);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{flag} {value}: {stderr}");
        assert!(
            stderr.contains(flag) && stderr.contains(range),
            "{flag} {value}: {stderr}"
        );
    }
}

#[test]
fn a_lease_that_would_expire_between_renewals_is_refused() {
    // Renewal happens on a resync pass once half the TTL is gone, so a TTL
    // shorter than four passes could lapse (and 0 did, with a lost-lease error).
    let out = refused(&["--lease-ttl", "1s", "--resync", "300ms"]);
    let stderr = text(&out.stderr);
    for word in [
        "--lease-ttl 1s",
        "--resync 300ms",
        "at least 4 ×",
        "(1200ms here)",
    ] {
        assert!(stderr.contains(word), "{word:?} missing: {stderr}");
    }
    // /healthz must not fail between two passes of a healthy loop.
    let out = refused(&["--resync", "5s"]);
    let stderr = text(&out.stderr);
    for word in ["--health-stale-after 6s", "--resync 5s", "(10s)"] {
        assert!(stderr.contains(word), "{word:?} missing: {stderr}");
    }
    // The shortest TTL allowed for a period passes the command line.
    let out = agent_without_net_conf(&["--lease-ttl", "1s", "--resync", "250ms"]);
    assert!(
        text(&out.stderr).contains(NO_NET_CONF),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn a_network_holding_the_nodes_own_address_is_refused_before_leasing() {
    let node = Node::new("own");
    node.write_net_conf(r#"{"Network": "192.0.0.0/16", "Backend": {"Type": "host-gw"}}"#);
    let out = node.agent_exits(&[]);
    let stderr = text(&out.stderr);
    assert!(!out.status.success(), "accepted: {stderr}");
    for word in ["Network", "192.0.0.0/16", NODE_ADDR, "d0", "--iface"] {
        assert!(stderr.contains(word), "{word:?} missing: {stderr}");
    }
    assert!(!node.subnet_env().exists(), "a subnet was handed out");
    // A multicast network is refused by its field, not by netlink later.
    node.write_net_conf(r#"{"Network": "224.0.0.0/4"}"#);
    let stderr = text(&node.agent_exits(&[]).stderr);
    assert!(
        stderr.contains("Network: 224.0.0.0/4 overlaps") && stderr.contains("multicast"),
        "{stderr}"
    );
}

#[test]
fn deleted_or_changed_cni_files_are_restored_within_the_resync_period() {
    let mut node = Node::new("files");
    node.start_agent(&["--resync", "200ms"]);
    let files = [node.subnet_env(), node.conflist()];
    let written: Vec<String> = files.iter().map(|f| read(f)).collect();
    assert!(
        written[0].contains("FLANNEL_SUBNET=10.250."),
        "{}",
        written[0]
    );
    assert!(written[1].contains("weft-cni"), "{}", written[1]);
    let restored = |what: &str| {
        let back = wait_until(Duration::from_secs(2), || {
            files.iter().zip(&written).all(|(f, w)| read(f) == *w)
        });
        assert!(
            back.is_some(),
            "{what}: not restored within 2 s:\n{}",
            node.log()
        );
    };
    for file in &files {
        std::fs::remove_file(file).unwrap();
    }
    restored("deleted");
    std::fs::write(&files[0], "FLANNEL_SUBNET=10.99.0.1/24\n").unwrap();
    std::fs::write(&files[1], "{}").unwrap();
    restored("changed");
    std::fs::remove_dir_all(node.path("net.d")).unwrap();
    restored("directory removed");
    assert!(node.log().contains("restored"), "{}", node.log());
}

#[test]
fn a_removed_or_replaced_store_makes_the_agent_unready_and_say_why() {
    let mut node = Node::new("store");
    node.start_agent(&["--resync", "200ms"]);
    let store = node.store().display().to_string();
    let unready_because = |what: &str| {
        let mut last = (0, String::new());
        let seen = wait_until(Duration::from_secs(3), || {
            last = node.readyz();
            last.0 == 503 && last.1.contains(what)
        });
        assert!(
            seen.is_some(),
            "/readyz {last:?}, not 503 with {what:?}:\n{}",
            node.log()
        );
        assert!(last.1.contains(&store), "{last:?}");
        assert!(node.log().contains(what), "not logged:\n{}", node.log());
    };
    std::fs::remove_file(node.store()).unwrap();
    unready_because("was removed");
    // Another file at the path (a new store, a restored copy).
    std::fs::write(node.store(), b"").unwrap();
    unready_because("was replaced");
    // The datapath stays: the agent keeps running.
    assert!(node.agent.as_mut().unwrap().try_wait().unwrap().is_none());
}

#[test]
fn a_damaged_store_stops_the_agent_naming_the_file_and_what_to_do() {
    let node = Node::new("dmg");
    std::fs::write(
        node.store(),
        "not SQLite: a text that is long enough to have a header",
    )
    .unwrap();
    let out = node.agent_exits(&[]);
    let stderr = text(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    let store = node.store().display().to_string();
    for word in [store.as_str(), "is damaged", "backup"] {
        assert!(stderr.contains(word), "{word:?} missing: {stderr}");
    }
    assert!(!stderr.contains("retry"), "{stderr}");
}

#[test]
fn cleanup_removes_what_the_agent_put_on_the_node() {
    let mut node = Node::new("cleanup");
    node.write_net_conf(r#"{"Network": "10.250.0.0/16", "Backend": {"Type": "vxlan"}}"#);
    // A peer's lease, so the agent has a route to remove.
    let store = weft_store::Store::open(&node.store()).unwrap();
    store
        .acquire_lease(
            "weft",
            "node-2",
            "192.0.2.11".parse().unwrap(),
            &serde_json::json!({"vtepMAC": "02:00:00:00:00:02"}),
            Duration::from_secs(3600),
            |_| Some("10.250.9.0/24".parse().unwrap()),
        )
        .unwrap();
    node.start_agent(&["--resync", "200ms"]);
    let route = || {
        let out = node
            .ns
            .command("ip")
            .args(["route", "show", "proto", "152"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let routed = wait_until(Duration::from_secs(5), || route().contains("10.250.9.0/24"));
    assert!(routed.is_some(), "no route to the peer:\n{}", node.log());
    if let Some(mut agent) = node.agent.take() {
        agent.kill().unwrap();
        agent.wait().unwrap();
    }
    // Only this test's files: the defaults are the host's.
    let cleanup = || {
        node.ns
            .command(WEFT)
            .args(["agent", "--cleanup", "--subnet-file"])
            .arg(node.subnet_env())
            .arg("--cni-conf-dir")
            .arg(node.path("net.d"))
            .arg("--policy-socket")
            .arg(node.path("policy.sock"))
            .output()
            .unwrap()
    };
    let out = cleanup();
    let said = text(&out.stdout);
    assert!(out.status.success(), "{said}{}", text(&out.stderr));
    for word in [
        "weft.1",
        "routes: 1",
        "inet weft",
        "subnet.env",
        "10-weft.conflist",
    ] {
        assert!(said.contains(word), "{word:?} missing: {said}");
    }
    assert!(route().is_empty(), "{}", route());
    let links = node.ns.command("ip").args(["-o", "link"]).output().unwrap();
    assert!(
        !text(&links.stdout).contains("weft."),
        "{}",
        text(&links.stdout)
    );
    let tables = node
        .ns
        .command("nft")
        .args(["list", "tables"])
        .output()
        .unwrap();
    assert!(
        !text(&tables.stdout).contains("weft"),
        "{}",
        text(&tables.stdout)
    );
    assert!(!node.subnet_env().exists() && !node.conflist().exists());
    // A second cleanup finds nothing and says so.
    let again = cleanup();
    assert!(
        text(&again.stdout).contains("removed devices: none; routes: 0"),
        "{}",
        text(&again.stdout)
    );
}
