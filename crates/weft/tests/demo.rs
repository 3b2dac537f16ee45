//! The README's first command ends in `weft demo`: it must really wire two
//! pods and show them reaching each other, and leave nothing behind.

use std::path::Path;
use std::process::{Command, Stdio};

#[test]
fn demo_pods_ping_each_other_and_everything_is_removed() {
    let weft = Path::new(env!("CARGO_BIN_EXE_weft"));
    let plugin = weft.with_file_name("weft-cni");
    assert!(
        plugin.is_file(),
        "build the workspace first: {} is missing",
        plugin.display()
    );
    let conflist = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/10-weft.conflist");
    let child = Command::new(weft)
        .args(["demo", "--plugin"])
        .arg(&plugin)
        .arg("--conflist")
        .arg(&conflist)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let prefix = format!("weft-demo-{}-", child.id());
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "weft demo failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout.matches(" 0% packet loss").count(), 2, "{stdout}");
    let left: Vec<String> = weft_datapath::netns::list_named()
        .into_iter()
        .filter(|n| n.starts_with(&prefix))
        .collect();
    assert!(left.is_empty(), "demo namespaces left behind: {left:?}");
    assert!(
        !std::env::temp_dir()
            .join(prefix.trim_end_matches('-'))
            .exists(),
        "demo IPAM state left behind"
    );
}
