//! The reservations of the reference `host-local` IPAM plugin, which
//! flannel's CNI chain uses: one directory per network, one file per
//! address named by the address and holding `"<containerID>\r\n<ifname>"`
//! (older releases: the container ID alone), a `lock` file flock(2)ed by
//! every change, and `last_reserved_ip.<range>` cursors.
//!
//! When a node moves from flannel to weft, its running pods keep the
//! addresses host-local gave them. weft-cni reads these reservations so it
//! never hands such an address out a second time, and releases one at its
//! pod's DEL (the runtime then calls weft-cni, the node's plugin now). It
//! never makes a reservation here.

use std::fs::{self, File};
use std::io::ErrorKind;
use std::net::IpAddr;
use std::path::PathBuf;

use nix::fcntl::Flock;

use crate::store::{io, lock_file, remove_if_exists, Owner, StoreError};

/// host-local's state directory of one network (`<dataDir>/<network>`,
/// by default `/var/lib/cni/networks/cbr0` under flannel).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostLocal {
    dir: PathBuf,
}

impl HostLocal {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// Whether host-local holds `ip` for some container (a missing
    /// directory holds nothing).
    pub fn holds(&self, ip: IpAddr) -> bool {
        self.dir.join(ip.to_string()).symlink_metadata().is_ok()
    }

    /// Releases what host-local holds for `owner`, under host-local's own
    /// lock; the addresses freed.
    pub fn release(&self, owner: &Owner) -> Result<Vec<IpAddr>, StoreError> {
        let entries = match fs::read_dir(&self.dir) {
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
            entries => io("listing", &self.dir, entries)?,
        };
        let _lock = lock_file(&self.dir.join("lock"))?;
        let mut freed = Vec::new();
        for entry in entries.filter_map(Result::ok) {
            let Some(ip) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
                continue;
            };
            let path = entry.path();
            let held_by_owner =
                fs::read_to_string(&path).is_ok_and(|record| holder_matches(&record, owner));
            if held_by_owner {
                remove_if_exists(&path)?;
                freed.push(ip);
            }
        }
        freed.sort();
        Ok(freed)
    }

    /// Takes host-local's lock, so that no host-local ADD of the old
    /// configuration still running can take an address meanwhile; `None`
    /// where host-local never ran (no directory).
    pub fn lock_if_present(&self) -> Result<Option<Flock<File>>, StoreError> {
        if !self.dir.is_dir() {
            return Ok(None);
        }
        lock_file(&self.dir.join("lock")).map(Some)
    }
}

/// Whether a host-local record names `owner`: both lines, or the container
/// ID alone in the older one-line form (host-local's own matching).
fn holder_matches(record: &str, owner: &Owner) -> bool {
    let record = record.trim();
    match record.split_once("\r\n") {
        Some((id, ifname)) => id.trim() == owner.container_id && ifname == owner.ifname,
        None => record == owner.container_id,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// A directory as host-local v1.10 leaves it: two pods, an old-format
    /// record, its lock and cursor.
    fn flannel_node() -> (tempfile::TempDir, HostLocal) {
        let dir = tempfile::tempdir().unwrap();
        let files = [
            ("10.244.1.2", "pod-one\r\neth0"),
            ("10.244.1.3", "pod-two\r\neth0"),
            ("10.244.1.4", "pod-old"),
            ("last_reserved_ip.0", "10.244.1.4"),
            ("lock", ""),
        ];
        for (name, text) in files {
            fs::write(dir.path().join(name), text).unwrap();
        }
        let store = HostLocal::new(dir.path());
        (dir, store)
    }

    #[test]
    fn every_reserved_address_is_held_and_nothing_else() {
        let (_dir, store) = flannel_node();
        for held in ["10.244.1.2", "10.244.1.3", "10.244.1.4"] {
            assert!(store.holds(ip(held)), "{held}");
        }
        assert!(!store.holds(ip("10.244.1.5")));
        assert!(!HostLocal::new("/nonexistent/cbr0").holds(ip("10.244.1.2")));
    }

    #[test]
    fn release_frees_only_the_owners_addresses() {
        let (dir, store) = flannel_node();
        let freed = store.release(&Owner::new("pod-one", "eth0")).unwrap();
        assert_eq!(freed, vec![ip("10.244.1.2")]);
        assert!(!store.holds(ip("10.244.1.2")) && store.holds(ip("10.244.1.3")));
        assert!(store
            .release(&Owner::new("pod-two", "eth1"))
            .unwrap()
            .is_empty());
        assert_eq!(
            store.release(&Owner::new("pod-old", "eth0")).unwrap(),
            vec![ip("10.244.1.4")]
        );
        assert!(dir.path().join("last_reserved_ip.0").exists());
        assert!(dir.path().join("lock").exists());
        let gone = HostLocal::new(dir.path().join("missing"));
        assert!(gone
            .release(&Owner::new("pod-two", "eth0"))
            .unwrap()
            .is_empty());
    }
}
