//! Test scaffolding: the shared scratch namespaces
//! ([`weft_datapath::scratch`]) and `ip` to look inside them. Nothing here
//! touches the host's namespace or sends traffic outside the test's
//! namespaces.
#![allow(dead_code)]

use std::process::Command;
// Each test binary uses its own subset.
#[allow(unused_imports)]
pub use weft_datapath::scratch::{eventually, Namespaces};

/// Runs `ip -n <ns> ARGS` and returns its output; panics when it fails.
pub fn ip(ns: &str, args: &[&str]) -> String {
    let out = Command::new("ip")
        .arg("-n")
        .arg(ns)
        .args(args)
        .output()
        .expect("running ip");
    assert!(
        out.status.success(),
        "ip -n {ns} {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
