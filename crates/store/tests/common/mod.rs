//! Helpers shared by the store's integration tests: a store in a throwaway
//! directory and the subnet choosers the lease tests use. No assertions here.

#![allow(dead_code)] // each test binary uses its own subset

use std::path::PathBuf;

use ipnet::IpNet;
use tempfile::TempDir;
use weft_store::Store;

/// A fresh store; keep the directory alive as long as the store is used.
pub fn temp_store() -> (TempDir, Store) {
    let dir = tempfile::tempdir().expect("create a temporary directory");
    let store = Store::open(&store_path(&dir)).expect("open a fresh store");
    (dir, store)
}

pub fn store_path(dir: &TempDir) -> PathBuf {
    dir.path().join("cluster.db")
}

/// The first /24 of `pool` not in `taken`, as a flannel-like IPAM would pick.
pub fn first_free_24(pool: &str, taken: &[IpNet]) -> Option<IpNet> {
    let pool: IpNet = pool.parse().expect("valid pool");
    pool.subnets(24)
        .expect("pool is at most a /24")
        .find(|subnet| !taken.contains(subnet))
}

pub fn pod_network(taken: &[IpNet]) -> Option<IpNet> {
    first_free_24("10.244.0.0/16", taken)
}

pub fn net(text: &str) -> IpNet {
    text.parse().expect("valid subnet")
}
