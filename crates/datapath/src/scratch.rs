//! Network namespaces for tests (behind the `scratch` feature, enabled by
//! the test suites' dev-dependencies): uniquely named
//! `<tag>-<pid>-<n>-<role>`, so tests running at once never share one, and
//! removed when the guard is dropped — also when the test fails. Nothing
//! here touches the host's namespace.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::{netns, NetNs};

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// The namespaces of one test; deletes them all on drop.
pub struct Namespaces {
    prefix: String,
    names: Vec<String>,
}

impl Namespaces {
    /// A guard for namespaces named `<tag>-<pid>-<n>-…`; panics unless run
    /// as root (creating namespaces needs it).
    pub fn new(tag: &str) -> Self {
        // SAFETY: geteuid only reads the calling process's credentials.
        let root = unsafe { libc::geteuid() } == 0;
        assert!(
            root,
            "these tests create network namespaces: run them as root"
        );
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        Namespaces {
            prefix: format!("{tag}-{}-{n}", std::process::id()),
            names: Vec::new(),
        }
    }

    /// What every namespace of this guard starts with.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Creates the namespace `<prefix>-<role>`; returns its name and
    /// handle.
    pub fn add(&mut self, role: &str) -> (String, NetNs) {
        let name = format!("{}-{role}", self.prefix);
        let _ = netns::delete_named(&name);
        let ns =
            netns::create_named(&name).unwrap_or_else(|e| panic!("creating namespace {name}: {e}"));
        self.names.push(name.clone());
        (name, ns)
    }

    /// Deletes one of this guard's namespaces before the guard goes.
    pub fn remove(&mut self, name: &str) {
        netns::delete_named(name).unwrap_or_else(|e| panic!("deleting namespace {name}: {e}"));
        self.names.retain(|n| n != name);
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for name in &self.names {
            let _ = netns::delete_named(name);
        }
    }
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
