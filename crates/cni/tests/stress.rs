//! Concurrency and crash safety of ADD/DEL/GC, and leak-freedom over many
//! cycles — the properties that keep a node from ever handing out one
//! address twice.

mod common;

use std::collections::HashSet;
use std::thread;
use std::time::Duration;

use common::{ipv4_of, Node};
use serde_json::json;

#[test]
fn fifty_parallel_adds_get_distinct_addresses() {
    let mut node = Node::new("par");
    let pods: Vec<_> = (0..50).map(|i| node.pod(&format!("p{i}"))).collect();
    let conf = node.conf(json!({}));
    let addrs: Vec<String> = thread::scope(|s| {
        let handles: Vec<_> = pods
            .iter()
            .enumerate()
            .map(|(i, pod)| {
                let (node, conf) = (&node, &conf);
                s.spawn(move || ipv4_of(&node.add(&format!("par{i}"), pod, conf).json))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let unique: HashSet<&String> = addrs.iter().collect();
    assert_eq!(unique.len(), 50, "duplicate addresses: {addrs:?}");
    assert_eq!(node.reserved("testnet").len(), 50);
    // And the kernel agrees: each pod carries exactly its own address.
    for (pod, addr) in pods.iter().zip(&addrs) {
        let ns = pod.file_name().unwrap().to_str().unwrap();
        assert!(Node::ip(ns, &["-4", "addr", "show", "eth0"]).contains(&format!("{addr}/24")));
    }
}

#[test]
fn sigkill_mid_add_then_gc_then_full_pool_cycle_has_no_duplicates() {
    let mut node = Node::new("kill");
    // 10.88.0.0/27: .1 is the gateway, .2-.30 are the 29 addresses to hand out.
    let conf = node.conf(json!({"ipam": {"ranges": [[{"subnet": "10.88.0.0/27"}]]}}));
    let mut survivors: Vec<(String, String)> = Vec::new(); // (container id, address)
    let mut killed = 0;
    for i in 0..40u64 {
        let pod = node.pod(&format!("k{i}"));
        let id = format!("kill{i}");
        let call = node.call("ADD", &id, Some(&pod));
        let mut child = call.command().spawn().unwrap();
        {
            use std::io::Write;
            let mut stdin = child.stdin.take().unwrap();
            stdin.write_all(conf.to_string().as_bytes()).unwrap();
        }
        // Spread the kills over the whole ADD: 0-6 ms in 250 us steps.
        thread::sleep(Duration::from_micros((i * 7919 % 25) * 250));
        let _ = child.kill(); // SIGKILL
        let out = child.wait_with_output().unwrap();
        if out.status.success() {
            let result: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            survivors.push((id, ipv4_of(&result)));
        } else {
            killed += 1;
        }
    }
    assert!(
        killed > 5,
        "the kills must land mid-ADD for this test to mean anything (killed {killed})"
    );
    let mut gc = node.conf(json!({"ipam": {"ranges": [[{"subnet": "10.88.0.0/27"}]]}}));
    gc["cni.dev/valid-attachments"] = json!(survivors
        .iter()
        .map(|(id, _)| json!({"containerID": id, "ifname": "eth0"}))
        .collect::<Vec<_>>());
    let r = node.run("GC", "", None, &gc);
    assert!(r.ok(), "GC: {}", r.stdout);
    let mut expected: Vec<String> = survivors.iter().map(|(_, a)| a.clone()).collect();
    expected.sort();
    assert_eq!(
        node.reserved("testnet"),
        expected,
        "after GC only the survivors hold addresses"
    );
    let veths = node
        .links()
        .into_iter()
        .filter(|l| l.starts_with("wv"))
        .count();
    assert_eq!(
        veths,
        survivors.len(),
        "GC must remove veths of killed ADDs"
    );

    // Fill the pool completely: every address exactly once.
    let mut all: Vec<String> = survivors.iter().map(|(_, a)| a.clone()).collect();
    for i in 0.. {
        let pod = node.pod(&format!("f{i}"));
        let r = node.run("ADD", &format!("fill{i}"), Some(&pod), &conf);
        if !r.ok() {
            assert_eq!(r.code(), Some(100), "{}", r.stdout);
            break;
        }
        all.push(ipv4_of(&r.json));
    }
    let unique: HashSet<&String> = all.iter().collect();
    assert_eq!(
        unique.len(),
        all.len(),
        "duplicate address handed out: {all:?}"
    );
    assert_eq!(
        all.len(),
        29,
        "the whole pool must be usable again after GC"
    );
}

/// The node's ruleset once the anti-spoofing elements DEL removed have
/// expired (on the kernel's next tick, 4 ms at HZ=250).
fn settled_ruleset(node: &Node) -> String {
    std::thread::sleep(std::time::Duration::from_millis(50));
    node.nft_ruleset()
}

#[test]
fn a_thousand_add_del_cycles_leave_nothing_behind() {
    let mut node = Node::new("cycle");
    let pod = node.pod("p");
    let plain = node.conf(json!({"ipMasq": true}));
    let hostports = node.conf(json!({"ipMasq": true, "runtimeConfig": {"portMappings": [
        {"hostPort": 28080, "containerPort": 80, "protocol": "tcp"},
        {"hostPort": 25353, "containerPort": 53, "protocol": "udp", "hostIP": "10.88.0.1"}]}}));
    let mut baseline = None;
    for i in 0..1000 {
        let conf = if i % 10 == 0 { &hostports } else { &plain };
        let id = format!("cyc{i}");
        node.add(&id, &pod, conf);
        let d = node.run("DEL", &id, Some(&pod), conf);
        assert!(d.ok(), "DEL {i}: {}", d.stdout);
        if i == 0 {
            baseline = Some(settled_ruleset(&node));
        }
    }
    let links: Vec<String> = node
        .links()
        .into_iter()
        .filter(|l| l.starts_with("wv"))
        .collect();
    assert!(links.is_empty(), "veths left: {links:?}");
    let pod_links = Node::ip(pod.file_name().unwrap().to_str().unwrap(), &["-br", "link"]);
    assert!(!pod_links.contains("eth0"), "{pod_links}");
    assert!(
        node.reserved("testnet").is_empty(),
        "addresses left reserved"
    );
    let attachments = std::fs::read_dir(node.data_dir.join("testnet/attachments"))
        .unwrap()
        .count();
    assert_eq!(attachments, 0, "attachment records left");
    let rules = settled_ruleset(&node);
    assert!(
        !rules.contains("chain hp-") && !rules.contains("28080") && !rules.contains("25353"),
        "{rules}"
    );
    // What remains is the network's one masquerade chain, exactly as after the first cycle.
    assert_eq!(
        Some(rules.clone()),
        baseline,
        "ruleset grew over the cycles"
    );
    assert_eq!(rules.matches("masquerade").count(), 2, "{rules}");
}
