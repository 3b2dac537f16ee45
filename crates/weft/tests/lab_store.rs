//! The lab's store file going away under a running lab: lab commands must
//! not create an empty one (the agents keep the old one: split brain).

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::{wait_until, Lab};

#[test]
fn a_deleted_store_is_not_recreated_by_lab_commands() {
    let lab = Lab::up("sto", 1, "host-gw");
    let dir = PathBuf::from("/run/weft/labs").join(&lab.name);
    let store = dir.join("store.db");
    // Once the agent's Service proxy holds the store too: it opens it by
    // path, after the agent is ready.
    let log = dir.join("nodes/node-1/agent.log");
    let proxy_started = wait_until(Duration::from_secs(10), || {
        std::fs::read_to_string(&log).is_ok_and(|l| l.contains("Service table fully synced"))
    });
    assert!(proxy_started.is_some(), "the proxy did not start");
    std::fs::remove_file(&store).unwrap();
    for command in [&["get", "pods"][..], &["apply", "-f", common::MANIFEST]] {
        let stderr = lab.fails(command);
        for word in [
            &store.display().to_string(),
            "does not exist",
            "weft lab down",
            "weft lab up",
        ] {
            assert!(
                stderr.contains(word),
                "{command:?}: {word:?} missing: {stderr}"
            );
        }
        assert!(!store.exists(), "{command:?} created a new store");
    }
    // The way out the message gives works.
    lab.ok(&["down"]);
}
