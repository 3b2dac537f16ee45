//! Several handles and several processes on one store file: the busy
//! timeout and `BEGIN IMMEDIATE` must serialise lease allocation so every
//! node gets a distinct subnet and nobody sees "database is locked".

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::Duration;

use common::{pod_network, store_path};
use serde_json::json;
use weft_store::{Store, LEASE_KIND};

const NETWORK: &str = "weft";
const TTL: Duration = Duration::from_secs(60);

/// Set by `processes_acquire_distinct_subnets` for the child processes.
const CHILD_STORE: &str = "WEFT_STORE_TEST_CHILD_STORE";
const CHILD_NODE: &str = "WEFT_STORE_TEST_CHILD_NODE";

fn acquire_for(path: &Path, node: &str) -> ipnet::IpNet {
    let store = Store::open(path).expect("open own handle");
    let public_ip = "192.168.0.1".parse().expect("address");
    store
        .acquire_lease(
            NETWORK,
            node,
            public_ip,
            &json!({"vtepMAC": node}),
            TTL,
            pod_network,
        )
        .expect("acquire without errors")
        .subnet
}

/// Every node holds one distinct subnet, and every allocation was logged.
fn assert_distinct_allocation(path: &Path, nodes: usize) {
    let store = Store::open(path).expect("open");
    let (leases, revision) = store.leases(NETWORK).expect("leases");
    let subnets: BTreeSet<_> = leases.iter().map(|lease| lease.subnet).collect();
    let holders: BTreeSet<_> = leases.iter().map(|lease| lease.node.as_str()).collect();
    assert_eq!(subnets.len(), nodes, "{leases:#?}");
    assert_eq!(holders.len(), nodes, "{leases:#?}");
    assert_eq!(revision, u64::try_from(nodes).expect("small"));
    assert_eq!(
        store.events_since(LEASE_KIND, 0).expect("events").len(),
        nodes
    );
}

#[test]
fn sixteen_handles_acquire_sixteen_distinct_subnets() {
    const NODES: usize = 16;
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = store_path(&dir);
    // The handles also race to create the file and its schema.
    let start = Arc::new(Barrier::new(NODES));
    let workers: Vec<_> = (0..NODES)
        .map(|index| {
            let (path, start) = (path.clone(), Arc::clone(&start));
            thread::spawn(move || {
                start.wait();
                acquire_for(&path, &format!("node-{index}"))
            })
        })
        .collect();
    let subnets: BTreeSet<_> = workers
        .into_iter()
        .map(|worker| worker.join().expect("worker finished without errors"))
        .collect();

    let expected: BTreeSet<_> = (0..NODES)
        .map(|index| format!("10.244.{index}.0/24").parse().expect("subnet"))
        .collect();
    assert_eq!(subnets, expected);
    assert_distinct_allocation(&path, NODES);
}

#[test]
fn handles_racing_to_create_a_new_store_all_open_it() {
    const HANDLES: usize = 32;
    const ROUNDS: usize = 20;
    for _ in 0..ROUNDS {
        let dir = tempfile::tempdir().expect("temporary directory");
        let path = store_path(&dir);
        let start = Arc::new(Barrier::new(HANDLES));
        let openers: Vec<_> = (0..HANDLES)
            .map(|_| {
                let (path, start) = (path.clone(), Arc::clone(&start));
                thread::spawn(move || {
                    start.wait();
                    Store::open(&path).map(|store| store.revision())
                })
            })
            .collect();
        for opener in openers {
            let revision = opener.join().expect("opener thread");
            assert!(matches!(revision, Ok(Ok(0))), "{revision:?}");
        }
    }
}

#[test]
fn processes_acquire_distinct_subnets() {
    const PROCESSES: usize = 6;
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = store_path(&dir);
    let test_binary = std::env::current_exe().expect("path of this test binary");
    let children: Vec<_> = (0..PROCESSES)
        .map(|index| {
            Command::new(&test_binary)
                .args([
                    "--exact",
                    "child_acquires_one_lease",
                    "--ignored",
                    "--quiet",
                ])
                .env(CHILD_STORE, &path)
                .env(CHILD_NODE, format!("node-{index}"))
                .stdout(Stdio::null())
                .spawn()
                .expect("spawn a child process")
        })
        .collect();
    for mut child in children {
        let status = child.wait().expect("wait for the child");
        assert!(status.success(), "a child process failed: {status}");
    }
    assert_distinct_allocation(&path, PROCESSES);
}

/// The body of each child process of `processes_acquire_distinct_subnets`.
#[test]
#[ignore = "run as a child process by processes_acquire_distinct_subnets"]
fn child_acquires_one_lease() {
    let path = std::env::var_os(CHILD_STORE).expect("started by the parent test");
    let node = std::env::var(CHILD_NODE).expect("started by the parent test");
    acquire_for(Path::new(&path), &node);
}
