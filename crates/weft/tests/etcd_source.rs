//! weft-cluster's etcd subnet manager against a real etcd (the peers'
//! build, the one a test control plane runs, in a namespace of the test's
//! own), in flannel's layout: the network config at `<prefix>/config`;
//! leases created only where no key is, bound to an etcd lease of their
//! TTL and renewed under a new one; a key without a lease (a reservation)
//! never taken by another node, and kept a reservation by its own; a
//! node's lease found again by its public IP; leases written as flanneld
//! writes them read as peers; the leases followed as they come and go.

mod common;

use std::time::Duration;

use common::control_plane::ControlPlane;
use common::lease_request;
use etcd_client::{Client, GetOptions, PutOptions};
use futures::StreamExt;
use ipnet::IpNet;
use serde_json::json;
use weft_cluster::etcd::{Etcd, EtcdConfig};
use weft_cluster::leases::SubnetLease;
use weft_cluster::{Event, EventStream, SubnetManager};

const PREFIX: &str = "/coreos.com/network";

fn config(endpoints: Vec<String>) -> EtcdConfig {
    EtcdConfig {
        endpoints,
        prefix: PREFIX.into(),
        ca_file: None,
        cert_file: None,
        key_file: None,
    }
}

/// The first /24 of 10.244.0.0/16 not taken.
fn first_free(taken: &[IpNet]) -> Option<IpNet> {
    let pool: IpNet = "10.244.0.0/16".parse().unwrap();
    pool.subnets(24).unwrap().find(|s| !taken.contains(s))
}

/// The next event, failing the test after 10 s.
async fn next(stream: &mut EventStream<SubnetLease>) -> Event<SubnetLease> {
    tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("an event within 10 s")
        .expect("the watch goes on")
        .expect("no watch error")
}

fn said(event: &Event<SubnetLease>) -> String {
    match event {
        Event::Init => "<init>".into(),
        Event::InitDone => "<done>".into(),
        Event::InitApply(l) => format!("{} {}", l.node, l.subnet),
        Event::Apply(l) => format!("+{} {}", l.node, l.subnet),
        Event::Delete(l) => format!("-{} {}", l.node, l.subnet),
    }
}

/// The lease of subnet `key_name` (`a.b.c.d-len`) as flanneld v0.28
/// writes it for its node at 198.18.0.12 (VTEP ca:fe:00:00:00:12), under
/// a 24 h etcd lease, which is returned.
async fn flanneld_lease(raw: &mut Client, key_name: &str) -> i64 {
    let lease = raw.lease_grant(86400, None).await.unwrap().id();
    raw.put(
        format!("{PREFIX}/subnets/{key_name}"),
        r#"{"PublicIP":"198.18.0.12","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"ca:fe:00:00:00:12"}}"#,
        Some(PutOptions::new().with_lease(lease)),
    )
    .await
    .unwrap();
    lease
}

/// Every lease key and value under the prefix.
async fn leases(endpoints: &[String]) -> Vec<(String, String)> {
    let mut raw = Client::connect(endpoints, None).await.unwrap();
    let options = GetOptions::new().with_prefix();
    let got = raw
        .get(format!("{PREFIX}/subnets/"), Some(options))
        .await
        .unwrap();
    let text = |kv: &etcd_client::KeyValue| {
        (
            kv.key_str().unwrap().to_string(),
            kv.value_str().unwrap().to_string(),
        )
    };
    got.kvs().iter().map(text).collect()
}

/// The etcd lease a key is bound to (0: none) and its remaining TTL.
async fn bound(client: &mut Client, key: &str) -> (i64, i64) {
    let got = client.get(key, None).await.unwrap();
    let lease = got.kvs()[0].lease();
    if lease == 0 {
        return (0, 0);
    }
    let ttl = client.lease_time_to_live(lease, None).await.unwrap().ttl();
    (lease, ttl)
}

#[test]
fn leases_follow_flannels_etcd_layout() {
    let control_plane = ControlPlane::start();
    control_plane.with_etcd(|endpoints| async move {
        let mut raw = Client::connect(&endpoints, None).await.unwrap();
        let etcd = Etcd::connect(&config(endpoints.clone())).await.unwrap();

        // The network config, as flanneld reads it.
        let missing = etcd.network_config().await.unwrap_err().to_string();
        assert!(missing.contains("/coreos.com/network/config is not set"), "{missing}");
        let conf = r#"{"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan"}}"#;
        raw.put(format!("{PREFIX}/config"), conf, None).await.unwrap();
        assert_eq!(etcd.network_config().await.unwrap(), conf);

        // What is there before: a reservation of 10.244.0.0/24 for a node
        // at .20, and flanneld's lease of 10.244.1.0/24 for the node at .12.
        raw.put(
            format!("{PREFIX}/subnets/10.244.0.0-24"),
            r#"{"PublicIP":"198.18.0.20","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"ca:fe:00:00:00:20"}}"#,
            None,
        )
        .await
        .unwrap();
        let flannel_lease = flanneld_lease(&mut raw, "10.244.1.0-24").await;
        let mut leases = etcd.watch_leases();
        let listed: Vec<String> = [
            next(&mut leases).await,
            next(&mut leases).await,
            next(&mut leases).await,
            next(&mut leases).await,
        ]
        .iter()
        .map(said)
        .collect();
        assert_eq!(
            listed,
            ["<init>", "198.18.0.20 10.244.0.0/24", "198.18.0.12 10.244.1.0/24", "<done>"]
        );

        // A new node gets the first subnet neither reserved nor leased,
        // bound to an etcd lease of its TTL, in flannel's value.
        let a = etcd.acquire(&lease_request("node-a", "198.18.0.11"), first_free).await.unwrap();
        assert_eq!(a.subnet.to_string(), "10.244.2.0/24");
        let key_a = format!("{PREFIX}/subnets/10.244.2.0-24");
        let value: serde_json::Value = serde_json::from_str(
            raw.get(key_a.as_str(), None).await.unwrap().kvs()[0].value_str().unwrap(),
        )
        .unwrap();
        assert_eq!(
            value,
            json!({"PublicIP": "198.18.0.11", "BackendType": "vxlan",
                   "BackendData": {"VNI": 1, "VtepMAC": "0a:58:c6:12:00:11"},
                   "weft.dev/node": "node-a"})
        );
        let (lease_a, ttl) = bound(&mut raw, &key_a).await;
        assert!(lease_a != 0 && ttl > 86000, "bound to a 24 h etcd lease: {ttl}");
        assert_eq!(said(&next(&mut leases).await), "+node-a 10.244.2.0/24");

        // A subnet another node took in between is not taken again: the
        // key is created only where none is, and the node chooses again.
        let b = Etcd::connect(&config(endpoints.clone())).await.unwrap();
        let choices = std::sync::atomic::AtomicUsize::new(0);
        let raced = |taken: &[IpNet]| match choices.fetch_add(1, std::sync::atomic::Ordering::SeqCst) {
            // What it chose before node-a's key was there.
            0 => Some("10.244.2.0/24".parse().unwrap()),
            _ => first_free(taken),
        };
        let got_b = b.acquire(&lease_request("node-b", "198.18.0.13"), raced).await.unwrap();
        assert_eq!(got_b.subnet.to_string(), "10.244.3.0/24");
        assert_eq!(choices.into_inner(), 2);
        assert_eq!(said(&next(&mut leases).await), "+node-b 10.244.3.0/24");

        // Restarted, node-a finds its lease by its public IP.
        let a_again = Etcd::connect(&config(endpoints.clone())).await.unwrap();
        let same = a_again
            .acquire(&lease_request("node-a", "198.18.0.11"), |_| panic!("nothing to choose"))
            .await
            .unwrap();
        assert_eq!(same.subnet, a.subnet);
        assert_eq!(said(&next(&mut leases).await), "+node-a 10.244.2.0/24");

        // Renewing puts it under a new etcd lease.
        let before = bound(&mut raw, &key_a).await.0;
        a_again.renew("node-a", Duration::from_secs(3600)).await.unwrap();
        let (after, ttl) = bound(&mut raw, &key_a).await;
        assert!(after != before && ttl <= 3600 && ttl > 3500, "{before} → {after}, {ttl}");
        assert_eq!(said(&next(&mut leases).await), "+node-a 10.244.2.0/24");

        // The node the reservation is for takes it, and it stays one.
        let c = Etcd::connect(&config(endpoints.clone())).await.unwrap();
        let reserved = c
            .acquire(&lease_request("node-c", "198.18.0.20"), |_| panic!("it has a reservation"))
            .await
            .unwrap();
        assert_eq!(reserved.subnet.to_string(), "10.244.0.0/24");
        assert_eq!(bound(&mut raw, &format!("{PREFIX}/subnets/10.244.0.0-24")).await.0, 0);
        c.renew("node-c", Duration::from_secs(60)).await.unwrap();
        assert_eq!(bound(&mut raw, &format!("{PREFIX}/subnets/10.244.0.0-24")).await.0, 0);
        // The reservation's node, as flanneld named it, makes way for it.
        assert_eq!(said(&next(&mut leases).await), "-198.18.0.20 10.244.0.0/24");
        assert_eq!(said(&next(&mut leases).await), "+node-c 10.244.0.0/24");
        assert_eq!(said(&next(&mut leases).await), "+node-c 10.244.0.0/24");

        // A renewal never takes back a key another node holds now: node-b's
        // deleted, and its subnet given to node-d, node-b's renewal fails.
        let key_b = format!("{PREFIX}/subnets/10.244.3.0-24");
        raw.delete(key_b.as_str(), None).await.unwrap();
        assert_eq!(said(&next(&mut leases).await), "-node-b 10.244.3.0/24");
        let d = Etcd::connect(&config(endpoints.clone())).await.unwrap();
        let got_d = d.acquire(&lease_request("node-d", "198.18.0.14"), first_free).await.unwrap();
        assert_eq!(got_d.subnet.to_string(), "10.244.3.0/24");
        assert_eq!(said(&next(&mut leases).await), "+node-d 10.244.3.0/24");
        let refused = b.renew("node-b", Duration::from_secs(60)).await.unwrap_err().to_string();
        assert!(refused.contains("now holds another node's lease"), "{refused}");
        // A key merely gone is written again.
        raw.delete(key_a.as_str(), None).await.unwrap();
        assert_eq!(said(&next(&mut leases).await), "-node-a 10.244.2.0/24");
        a_again.renew("node-a", Duration::from_secs(3600)).await.unwrap();
        assert_eq!(said(&next(&mut leases).await), "+node-a 10.244.2.0/24");

        // node-a at a new address: its lease of the old one goes, so peers
        // never see two leases of one node.
        let moved = a_again.acquire(&lease_request("node-a", "198.18.0.31"), first_free).await.unwrap();
        // (10.244.1.0/24 is flanneld's node's, still.)
        assert_eq!(moved.subnet.to_string(), "10.244.4.0/24");
        assert_eq!(said(&next(&mut leases).await), "-node-a 10.244.2.0/24");
        assert_eq!(said(&next(&mut leases).await), "+node-a 10.244.4.0/24");

        // A lease the network config no longer allows (from before a
        // change of Network) is deleted and another taken, as flanneld does.
        raw.put(
            format!("{PREFIX}/subnets/10.245.7.0-24"),
            r#"{"PublicIP":"198.18.0.40","BackendType":"vxlan","weft.dev/node":"node-e"}"#,
            None,
        )
        .await
        .unwrap();
        assert_eq!(said(&next(&mut leases).await), "+node-e 10.245.7.0/24");
        let e = Etcd::connect(&config(endpoints.clone())).await.unwrap();
        let renewed = e.acquire(&lease_request("node-e", "198.18.0.40"), first_free).await.unwrap();
        assert_eq!(renewed.subnet.to_string(), "10.244.2.0/24");
        assert_eq!(said(&next(&mut leases).await), "-node-e 10.245.7.0/24");
        assert_eq!(said(&next(&mut leases).await), "+node-e 10.244.2.0/24");

        // flanneld's lease expiring (its etcd lease revoked) is a delete.
        raw.lease_revoke(flannel_lease).await.unwrap();
        assert_eq!(said(&next(&mut leases).await), "-198.18.0.12 10.244.1.0/24");

        // Every key is flannel's: nothing else was written under the prefix.
        let keys: Vec<String> = raw
            .get(PREFIX, Some(GetOptions::new().with_prefix().with_keys_only()))
            .await
            .unwrap()
            .kvs()
            .iter()
            .map(|kv| kv.key_str().unwrap().to_string())
            .collect();
        assert_eq!(
            keys,
            [
                "/coreos.com/network/config",
                "/coreos.com/network/subnets/10.244.0.0-24",
                "/coreos.com/network/subnets/10.244.2.0-24",
                "/coreos.com/network/subnets/10.244.3.0-24",
                "/coreos.com/network/subnets/10.244.4.0-24",
            ]
        );
    });
}

/// `weft agent --etcd-endpoints` as node-a (underlay d0, 198.18.0.11, in
/// the control plane's namespace, where etcd is), beside a flanneld node
/// at 198.18.0.12 known only by the lease it keeps in etcd: the agent
/// reads the network config from etcd, leases a subnet there in flannel's
/// layout, and programs the flannel node's subnet over VXLAN (route, ARP
/// and FDB entries to its VTEP); when that lease goes, so do they.
#[test]
fn an_agent_in_etcd_mode_routes_to_flannels_nodes() {
    use common::kube_node::{ip, start_etcd_agent, underlay};
    let control_plane = ControlPlane::start();
    let ns = control_plane.ns_name().to_string();
    underlay(&control_plane);
    let dir = tempfile::tempdir().unwrap();
    let log_path = dir.path().join("agent.log");
    let _agent = start_etcd_agent(
        control_plane.ns(),
        "node-a",
        "d0",
        "http://127.0.0.1:2379",
        dir.path(),
        &[],
    );
    let agent_log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    // Started before the network config is in etcd, it waits for it, as
    // flanneld does.
    let waiting = common::wait_until(Duration::from_secs(10), || {
        agent_log().contains("waiting for etcd and the network config")
    });
    assert!(waiting.is_some(), "{}", agent_log());
    // Alive and saying why it is not ready, while it waits.
    let healthz = common::kube_node::health(&control_plane, "/healthz").unwrap_or_default();
    assert!(healthz.starts_with("HTTP/1.1 200"), "{healthz}");
    let readyz = common::kube_node::health(&control_plane, "/readyz").unwrap_or_default();
    assert!(
        readyz.starts_with("HTTP/1.1 503")
            && readyz.contains("waiting for etcd at http://127.0.0.1:2379"),
        "{readyz}"
    );
    let flannel_lease = control_plane.with_etcd(|endpoints| async move {
        let mut raw = Client::connect(&endpoints, None).await.unwrap();
        let conf = r#"{"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan"}}"#;
        raw.put(format!("{PREFIX}/config"), conf, None)
            .await
            .unwrap();
        flanneld_lease(&mut raw, "10.244.7.0-24").await
    });
    let routed = common::wait_until(Duration::from_secs(20), || {
        ip(&ns, &["route", "show", "10.244.7.0/24"]).contains("onlink")
    });
    assert!(
        routed.is_some(),
        "no route to flanneld's subnet:\n{}",
        agent_log()
    );
    let route = ip(&ns, &["route", "show", "10.244.7.0/24"]);
    assert!(route.contains("via 10.244.7.0"), "{route}");
    // The agent serves its health on the same address once it runs.
    let ready = common::wait_until(Duration::from_secs(10), || {
        common::kube_node::health(&control_plane, "/readyz")
            .is_some_and(|answer| answer.starts_with("HTTP/1.1 200"))
    });
    assert!(ready.is_some(), "{}", agent_log());
    let fdb = ip(&ns, &["neigh", "show", "10.244.7.0"]);
    assert!(
        fdb.contains("ca:fe:00:00:00:12"),
        "ARP entry of the VTEP: {fdb}"
    );
    let bridge = std::process::Command::new("bridge")
        .args(["-n", &ns, "fdb", "show", "brport"])
        .arg(
            route
                .split_whitespace()
                .skip_while(|w| *w != "dev")
                .nth(1)
                .unwrap(),
        )
        .output()
        .unwrap();
    let bridge = String::from_utf8_lossy(&bridge.stdout);
    assert!(
        bridge.contains("ca:fe:00:00:00:12 dst 198.18.0.12"),
        "FDB entry to the VTEP: {bridge}"
    );
    // Its own lease, in flannel's layout, and subnet.env as flanneld's.
    let own = control_plane.with_etcd(|endpoints| async move {
        let leases = leases(&endpoints).await;
        leases.into_iter().find(|(_, v)| v.contains("198.18.0.11"))
    });
    let (key, value) = own.expect("the agent's lease in etcd");
    // The first subnet after the network's first, as flannel's SubnetMin.
    assert_eq!(key, format!("{PREFIX}/subnets/10.244.1.0-24"));
    assert!(value.contains(r#""BackendType":"vxlan""#), "{value}");
    // With etcd alone there are no Services: no proxy table.
    let proxy = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &ns,
            "nft",
            "list",
            "table",
            "ip",
            "weft-proxy",
        ])
        .output()
        .unwrap();
    assert!(!proxy.status.success(), "a proxy table with etcd alone");
    let env = std::fs::read_to_string(dir.path().join("subnet.env")).unwrap();
    assert!(env.contains("FLANNEL_SUBNET=10.244.1.1/24"), "{env}");
    // flanneld's node leaves (its lease expires): its routes go.
    control_plane.with_etcd(move |endpoints| async move {
        let mut raw = Client::connect(&endpoints, None).await.unwrap();
        raw.lease_revoke(flannel_lease).await.unwrap();
    });
    let gone = common::wait_until(Duration::from_secs(20), || {
        ip(&ns, &["route", "show", "10.244.7.0/24"])
            .trim()
            .is_empty()
    });
    assert!(gone.is_some(), "the route stayed:\n{}", agent_log());
}

/// With a kubeconfig too, the agent keeps its lease in etcd and takes
/// Services from the API server (flanneld's etcd mode and kube-proxy in
/// one), leaving the Nodes alone.
#[test]
fn with_a_kubeconfig_leases_stay_in_etcd_and_services_come_from_the_api() {
    use common::kube_node::{
        create_service, service_programmed, start_etcd_agent, underlay, with_api,
    };
    let control_plane = ControlPlane::start();
    let ns = control_plane.ns_name().to_string();
    underlay(&control_plane);
    control_plane.with_etcd(|endpoints| async move {
        let mut raw = Client::connect(&endpoints, None).await.unwrap();
        let conf = r#"{"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan"}}"#;
        raw.put(format!("{PREFIX}/config"), conf, None)
            .await
            .unwrap();
    });
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = control_plane.kubeconfig.to_str().unwrap().to_string();
    let _agent = start_etcd_agent(
        control_plane.ns(),
        "node-a",
        "d0",
        "http://127.0.0.1:2379",
        dir.path(),
        &["--kubeconfig", &kubeconfig],
    );
    let log = || std::fs::read_to_string(dir.path().join("agent.log")).unwrap_or_default();
    let element = format!(
        "{} . tcp . 80",
        create_service(&control_plane, "web", "10.244.1.5")
    );
    let programmed = common::wait_until(Duration::from_secs(20), || {
        service_programmed(&ns, &element)
    });
    assert!(programmed.is_some(), "{element} not programmed:\n{}", log());
    let leased = control_plane.with_etcd(|endpoints| async move {
        let leases = leases(&endpoints).await;
        leases.iter().any(|(_, v)| v.contains("198.18.0.11"))
    });
    assert!(leased, "no lease in etcd:\n{}", log());
    let nodes = with_api(&control_plane, |nodes| async move {
        nodes.list(&Default::default()).await.unwrap().items.len()
    });
    assert_eq!(nodes, 0, "a Node was written:\n{}", log());
}

/// etcd going away and coming back: the lease watch reports the outage,
/// then lists again (a new `Init` … `InitDone`, with what changed
/// meanwhile) and follows on; the history it missed was compacted away
/// too, so the listing is all it can have.
#[test]
fn the_lease_watch_lists_again_after_etcd_comes_back() {
    let mut control_plane = ControlPlane::start();
    let (tx, rx) = std::sync::mpsc::channel::<&'static str>();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<Vec<String>>();
    // The watch runs on its own thread (in the namespace) while the test
    // stops and restarts etcd.
    let ns = weft_datapath::NetNs::open(control_plane.ns().path()).unwrap();
    let watcher = std::thread::spawn(move || {
        ns.run_in(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let endpoints = vec![weft_lab::control_plane::ETCD_CLIENT_URL.to_string()];
                let etcd = Etcd::connect(&config(endpoints)).await.unwrap();
                let mut leases = etcd.watch_leases();
                let mut seen = vec![
                    said(&next(&mut leases).await),
                    said(&next(&mut leases).await),
                ];
                tx.send("listed").unwrap();
                // Through the outage: errors, then a listing again.
                let mut errors = 0;
                loop {
                    let item = tokio::time::timeout(Duration::from_secs(30), leases.next())
                        .await
                        .expect("the watch goes on")
                        .expect("the stream does not end");
                    match item {
                        Err(_) => errors += 1,
                        Ok(event) => {
                            let text = said(&event);
                            // The lease written once etcd was back, by
                            // the listing again or the watch after it.
                            let done = text.ends_with("198.18.0.19 10.244.9.0/24");
                            seen.push(text);
                            if done {
                                break;
                            }
                        }
                    }
                }
                seen.push(format!("errors: {}", errors > 0));
                done_tx.send(seen).unwrap();
            })
        })
        .unwrap()
    });
    assert_eq!(rx.recv_timeout(Duration::from_secs(20)).unwrap(), "listed");
    control_plane.stop_etcd();
    std::thread::sleep(Duration::from_secs(2));
    control_plane.restart_etcd();
    // A lease written once etcd is back, and the history compacted.
    control_plane.with_etcd(|endpoints| async move {
        let mut raw = loop {
            if let Ok(mut client) = Client::connect(&endpoints, None).await {
                if client.status().await.is_ok() {
                    break client;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let put = raw
            .put(
                format!("{PREFIX}/subnets/10.244.9.0-24"),
                r#"{"PublicIP":"198.18.0.19","BackendType":"host-gw"}"#,
                None,
            )
            .await
            .unwrap();
        raw.compact(put.header().unwrap().revision(), None)
            .await
            .unwrap();
    });
    let seen = done_rx.recv_timeout(Duration::from_secs(40)).unwrap();
    watcher.join().unwrap();
    // Either the listing after the outage has the new lease, or the
    // watch from it brings it: both end in the lease, after a relisting.
    let relisted = seen.iter().filter(|s| *s == "<init>").count();
    assert_eq!(relisted, 2, "{seen:?}");
    assert!(seen.contains(&"errors: true".to_string()), "{seen:?}");
    assert!(
        seen.iter()
            .any(|s| s.ends_with("198.18.0.19 10.244.9.0/24")),
        "{seen:?}"
    );
}
