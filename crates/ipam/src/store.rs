//! Allocation state on disk, one directory per network:
//!
//! ```text
//! <dataDir>/<network>/lock                   flock(2) held by every mutation
//! <dataDir>/<network>/ips/<address>          "<containerID>\n<ifname>\n": who holds it
//! <dataDir>/<network>/attachments/<id>:<if>  the addresses of one attachment
//! <dataDir>/<network>/last_reserved.<set>    where round-robin resumes
//! <dataDir>/<network>/containers/<id>        flock(2) serializing one container's verbs
//! ```
//!
//! Why this is crash-safe: everything happens under one flock, which the
//! kernel drops when a process dies, so a killed plugin never leaves the
//! lock held. A reservation writes the attachment file *first* (atomically,
//! by rename) listing the addresses it is about to take, then creates each
//! address file with O_EXCL. A crash at any point therefore leaves either
//! nothing, or an attachment file naming everything it may have taken — DEL
//! releases exactly that — or address files whose owner is not a valid
//! attachment, which GC reclaims. An address file exists at most once, so an
//! address is never handed out twice.

use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

#[derive(Debug, thiserror::Error)]
#[error("IPAM state {op} {path}: {source}")]
pub struct StoreError {
    pub op: &'static str,
    pub path: PathBuf,
    pub source: std::io::Error,
}

type Result<T> = std::result::Result<T, StoreError>;

pub(crate) fn io<T>(op: &'static str, path: &Path, r: std::io::Result<T>) -> Result<T> {
    r.map_err(|source| StoreError {
        op,
        path: path.to_path_buf(),
        source,
    })
}

/// Who holds an address: one interface of one container.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Owner {
    pub container_id: String,
    pub ifname: String,
}

impl Owner {
    pub fn new(container_id: impl Into<String>, ifname: impl Into<String>) -> Self {
        Self {
            container_id: container_id.into(),
            ifname: ifname.into(),
        }
    }

    fn file_name(&self) -> String {
        format!("{}:{}", self.container_id, self.ifname)
    }

    fn from_file_name(name: &str) -> Option<Self> {
        let (id, ifname) = name.split_once(':')?;
        (!id.is_empty() && !ifname.is_empty()).then(|| Self::new(id, ifname))
    }

    fn record(&self) -> String {
        format!("{}\n{}\n", self.container_id, self.ifname)
    }

    fn from_record(text: &str) -> Option<Self> {
        let mut lines = text.lines();
        let (id, ifname) = (lines.next()?, lines.next()?);
        (!id.is_empty() && !ifname.is_empty()).then(|| Self::new(id, ifname))
    }
}

/// The state directory of one network.
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
}

impl Store {
    /// Opens (creating if needed) `<data_dir>/<network>`.
    pub fn open(data_dir: &Path, network: &str) -> Result<Self> {
        let dir = data_dir.join(network);
        for sub in ["ips", "attachments", "containers"] {
            let path = dir.join(sub);
            if !path.is_dir() {
                io("creating", &path, fs::create_dir_all(&path))?;
            }
        }
        Ok(Self { dir })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Takes the network's lock; it is released when the guard drops or the
    /// process dies.
    pub fn lock(&self) -> Result<Locked<'_>> {
        Ok(Locked {
            store: self,
            _lock: lock_file(&self.dir.join("lock"))?,
        })
    }

    /// Takes the lock of one container (its ID must be a valid CNI container
    /// ID, so it is a plain file name): ADD, DEL and CHECK of a container
    /// hold it from start to end, so a DEL can never release addresses that
    /// an ADD still running is about to put on an interface.
    pub fn lock_container(&self, container_id: &str) -> Result<ContainerLock> {
        let path = self.dir.join("containers").join(container_id);
        loop {
            let lock = lock_file(&path)?;
            // Whoever held it before may have removed the file: then this
            // lock is on an orphan and the next caller would not see it.
            if same_file(&lock, &path) {
                return Ok(ContainerLock { path, _lock: lock });
            }
        }
    }

    /// The containers that have a lock file.
    pub fn locked_containers(&self) -> Result<Vec<String>> {
        list_names(&self.dir.join("containers"))
    }
}

/// Opens (creating) `path` and waits for its exclusive flock.
pub(crate) fn lock_file(path: &Path) -> Result<Flock<File>> {
    let file = io(
        "opening",
        path,
        OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path),
    )?;
    Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, errno)| StoreError {
        op: "locking",
        path: path.to_path_buf(),
        source: errno.into(),
    })
}

fn same_file(held: &File, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (held.metadata(), fs::metadata(path)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

/// One container's lock, released on drop.
pub struct ContainerLock {
    path: PathBuf,
    _lock: Flock<File>,
}

impl ContainerLock {
    /// Removes the lock file (the container is gone) and releases the lock;
    /// waiters notice the removal and take a fresh one.
    pub fn remove(self) -> Result<()> {
        remove_if_exists(&self.path)
    }
}

/// The store with its lock held; every read and change goes through here.
pub struct Locked<'a> {
    store: &'a Store,
    _lock: Flock<File>,
}

impl Locked<'_> {
    fn ip_path(&self, ip: IpAddr) -> PathBuf {
        self.store.dir.join("ips").join(ip.to_string())
    }

    fn attachment_path(&self, owner: &Owner) -> PathBuf {
        self.store.dir.join("attachments").join(owner.file_name())
    }

    pub fn is_reserved(&self, ip: IpAddr) -> bool {
        self.ip_path(ip).symlink_metadata().is_ok()
    }

    /// The addresses recorded for `owner`, `None` when it has none.
    pub fn addresses_of(&self, owner: &Owner) -> Result<Option<Vec<IpAddr>>> {
        let path = self.attachment_path(owner);
        match fs::read_to_string(&path) {
            Ok(text) => Ok(Some(text.lines().filter_map(|l| l.parse().ok()).collect())),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => io("reading", &path, Err(e)),
        }
    }

    pub fn last_reserved(&self, set: usize) -> Option<IpAddr> {
        let path = self.store.dir.join(format!("last_reserved.{set}"));
        fs::read_to_string(path).ok()?.trim().parse().ok()
    }

    /// Records `ips` as held by `owner`. `sets[i]` is the range-set index of
    /// `ips[i]`, used to move the round-robin cursor.
    pub fn reserve(&mut self, owner: &Owner, ips: &[IpAddr], sets: &[usize]) -> Result<()> {
        let path = self.attachment_path(owner);
        let listing: String = ips.iter().map(|ip| format!("{ip}\n")).collect();
        write_atomically(&path, listing.as_bytes())?;
        for &ip in ips {
            let ip_path = self.ip_path(ip);
            let mut file = io(
                "creating",
                &ip_path,
                OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&ip_path),
            )?;
            io(
                "writing",
                &ip_path,
                file.write_all(owner.record().as_bytes()),
            )?;
        }
        for (&ip, &set) in ips.iter().zip(sets) {
            let cursor = self.store.dir.join(format!("last_reserved.{set}"));
            // Only a hint for round-robin: a torn write just restarts the scan.
            let _ = fs::write(cursor, ip.to_string());
        }
        Ok(())
    }

    /// Releases everything `owner` holds; returns the addresses freed.
    pub fn release(&mut self, owner: &Owner) -> Result<Vec<IpAddr>> {
        let Some(ips) = self.addresses_of(owner)? else {
            return Ok(Vec::new());
        };
        let mut freed = Vec::new();
        for ip in ips {
            let ip_path = self.ip_path(ip);
            // An unreadable or empty record is one a crashed ADD of this very
            // owner was writing (the lock rules out anyone else); free it too.
            let holder = fs::read_to_string(&ip_path)
                .ok()
                .map(|t| Owner::from_record(&t));
            match holder {
                Some(Some(h)) if &h != owner => continue,
                Some(_) => {
                    remove_if_exists(&ip_path)?;
                    freed.push(ip);
                }
                None => {}
            }
        }
        remove_if_exists(&self.attachment_path(owner))?;
        Ok(freed)
    }

    /// All attachments with recorded addresses.
    pub fn attachments(&self) -> Result<Vec<Owner>> {
        let dir = self.store.dir.join("attachments");
        let mut out: Vec<Owner> = list_names(&dir)?
            .iter()
            .filter_map(|n| Owner::from_file_name(n))
            .collect();
        out.sort();
        Ok(out)
    }

    /// Every reserved address with its holder (`None` for a torn record).
    pub fn reservations(&self) -> Result<Vec<(IpAddr, Option<Owner>)>> {
        let dir = self.store.dir.join("ips");
        let mut out = Vec::new();
        for name in list_names(&dir)? {
            let Ok(ip) = name.parse::<IpAddr>() else {
                continue;
            };
            let holder = fs::read_to_string(dir.join(&name))
                .ok()
                .and_then(|t| Owner::from_record(&t));
            out.push((ip, holder));
        }
        Ok(out)
    }

    /// Frees everything not held by an attachment `keep` accepts, including
    /// leftovers of crashed plugins. Returns the addresses freed.
    pub fn garbage_collect(&mut self, keep: impl Fn(&Owner) -> bool) -> Result<Vec<IpAddr>> {
        let mut freed = Vec::new();
        for owner in self.attachments()? {
            if !keep(&owner) {
                freed.extend(self.release(&owner)?);
            }
        }
        for (ip, holder) in self.reservations()? {
            if !holder.as_ref().is_some_and(&keep) {
                remove_if_exists(&self.ip_path(ip))?;
                freed.push(ip);
            }
        }
        let attachments = self.store.dir.join("attachments");
        for name in list_names(&attachments)? {
            if name.starts_with(".tmp") {
                remove_if_exists(&attachments.join(name))?;
            }
        }
        freed.sort();
        freed.dedup();
        Ok(freed)
    }
}

fn list_names(dir: &Path) -> Result<Vec<String>> {
    let entries = io("listing", dir, fs::read_dir(dir))?;
    Ok(entries
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .collect())
}

pub(crate) fn remove_if_exists(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != ErrorKind::NotFound => io("removing", path, Err(e)),
        _ => Ok(()),
    }
}

fn write_atomically(path: &Path, data: &[u8]) -> Result<()> {
    let tmp = path.with_file_name(format!(".tmp-{}", std::process::id()));
    io("writing", &tmp, fs::write(&tmp, data))?;
    io("renaming", path, fs::rename(&tmp, path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn reserve_release_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), "net").unwrap();
        let mut l = store.lock().unwrap();
        let a = Owner::new("c1", "eth0");
        l.reserve(&a, &[ip("10.0.0.2"), ip("fd00::2")], &[0, 1])
            .unwrap();
        assert!(l.is_reserved(ip("10.0.0.2")));
        assert_eq!(l.last_reserved(1), Some(ip("fd00::2")));
        assert_eq!(l.addresses_of(&a).unwrap().unwrap().len(), 2);
        assert_eq!(l.release(&a).unwrap().len(), 2);
        assert!(!l.is_reserved(ip("10.0.0.2")));
        assert_eq!(l.addresses_of(&a).unwrap(), None);
        // Releasing again is a no-op.
        assert!(l.release(&a).unwrap().is_empty());
    }

    #[test]
    fn an_address_is_never_reserved_twice() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), "net").unwrap();
        let mut l = store.lock().unwrap();
        l.reserve(&Owner::new("c1", "eth0"), &[ip("10.0.0.2")], &[0])
            .unwrap();
        assert!(l
            .reserve(&Owner::new("c2", "eth0"), &[ip("10.0.0.2")], &[0])
            .is_err());
        // c2's failed attempt must not free c1's address.
        l.release(&Owner::new("c2", "eth0")).unwrap();
        assert!(l.is_reserved(ip("10.0.0.2")));
    }

    #[test]
    fn a_container_lock_serializes_and_survives_removal_by_its_holder() {
        use std::sync::mpsc;
        use std::time::Duration;
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), "net").unwrap();
        let first = store.lock_container("c1").unwrap();
        let other = store.lock_container("c2").unwrap(); // other containers do not wait
        let (tx, rx) = mpsc::channel();
        let waiter = {
            let store = store.clone();
            std::thread::spawn(move || {
                let lock = store.lock_container("c1").unwrap();
                tx.send(()).unwrap();
                lock
            })
        };
        assert!(
            rx.recv_timeout(Duration::from_millis(200)).is_err(),
            "lock not exclusive"
        );
        first.remove().unwrap();
        rx.recv_timeout(Duration::from_secs(5))
            .expect("waiter never got the lock");
        let second = waiter.join().unwrap();
        // The waiter holds a lock on the file that exists now, not on the removed one.
        assert!(store.dir().join("containers/c1").exists());
        let (tx, rx) = mpsc::channel();
        let store2 = store.clone();
        let third = std::thread::spawn(move || {
            let _l = store2.lock_container("c1").unwrap();
            tx.send(()).unwrap();
        });
        assert!(
            rx.recv_timeout(Duration::from_millis(200)).is_err(),
            "two holders at once"
        );
        drop(second);
        rx.recv_timeout(Duration::from_secs(5)).unwrap();
        third.join().unwrap();
        drop(other);
    }

    #[test]
    fn gc_frees_invalid_owners_and_torn_records() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), "net").unwrap();
        let mut l = store.lock().unwrap();
        let keep = Owner::new("keep", "eth0");
        l.reserve(&keep, &[ip("10.0.0.2")], &[0]).unwrap();
        l.reserve(&Owner::new("gone", "eth0"), &[ip("10.0.0.3")], &[0])
            .unwrap();
        // A crash right after creating the address file, before writing it.
        File::create(store.dir().join("ips/10.0.0.4")).unwrap();
        let freed = l.garbage_collect(|o| o == &keep).unwrap();
        assert_eq!(freed, vec![ip("10.0.0.3"), ip("10.0.0.4")]);
        assert!(l.is_reserved(ip("10.0.0.2")));
        assert_eq!(l.attachments().unwrap(), vec![keep]);
    }
}
