//! Test scaffolding: network namespaces the test creates itself, with
//! unique names (`wdt-<tag>-<pid>-<n>-<role>`), removed when the guard is
//! dropped — also when the test fails. Nothing here touches the host's
//! namespace or sends traffic outside the test's namespaces.
#![allow(dead_code)]

use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use weft_datapath::{netns, NetNs};

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// The namespaces of one test; deletes them all on drop.
pub struct Namespaces {
    prefix: String,
    names: Vec<String>,
}

impl Namespaces {
    pub fn new(tag: &str) -> Self {
        assert!(
            unsafe { libc::geteuid() } == 0,
            "these tests create network namespaces: run them as root"
        );
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        Namespaces {
            prefix: format!("wdt-{tag}-{}-{n}", std::process::id()),
            names: Vec::new(),
        }
    }

    /// Creates the namespace `<prefix>-<role>`; returns its name and handle.
    pub fn add(&mut self, role: &str) -> (String, NetNs) {
        let name = format!("{}-{role}", self.prefix);
        let ns =
            netns::create_named(&name).unwrap_or_else(|e| panic!("creating namespace {name}: {e}"));
        self.names.push(name.clone());
        (name, ns)
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for name in &self.names {
            let _ = netns::delete_named(name);
        }
    }
}

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

/// Polls `check` every 20 ms until it holds or `limit` passes.
pub fn eventually(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if check() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
