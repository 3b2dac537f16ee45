//! The lab's store file going away under a running lab: lab commands must
//! not create an empty one (the agents keep the old one: split brain).

mod common;

use std::path::PathBuf;

use common::Lab;

#[test]
fn a_deleted_store_is_not_recreated_by_lab_commands() {
    let lab = Lab::up("sto", 1, "host-gw");
    let store = PathBuf::from("/run/weft/labs")
        .join(&lab.name)
        .join("store.db");
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
