//! Network namespaces: opening them by path, running code inside them, and
//! creating/removing *named* namespaces under `/run/netns` (the layout
//! `ip netns` uses, so operators can inspect them with the usual tools).
//!
//! Entering a namespace changes only the calling thread, so [`NetNs::run_in`]
//! always returns the thread to where it was, even when the closure fails.

use std::fs::{self, File};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{setns, unshare, CloneFlags};

/// Where named namespaces are bind-mounted, as `ip netns` does.
pub const NETNS_RUN_DIR: &str = "/run/netns";

#[derive(Debug, thiserror::Error)]
pub enum NetNsError {
    #[error("network namespace {path} does not exist")]
    NotFound { path: PathBuf },
    #[error("cannot open network namespace {path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a network namespace (it must be a bind mount of /proc/<pid>/ns/net)")]
    NotNetNs { path: PathBuf },
    #[error("cannot enter network namespace {path}: {source}")]
    Enter { path: PathBuf, source: nix::Error },
    #[error("cannot create network namespace {name}: {what}: {source}")]
    Create {
        name: String,
        what: &'static str,
        source: std::io::Error,
    },
    #[error("invalid namespace name {0:?}: use letters, digits, '-', '_' and '.' only")]
    BadName(String),
}

/// An open handle on a network namespace.
#[derive(Debug)]
pub struct NetNs {
    file: File,
    path: PathBuf,
}

impl NetNs {
    /// Opens the namespace at `path` (e.g. `/run/netns/x` or `/proc/1234/ns/net`).
    pub fn open(path: impl AsRef<Path>) -> Result<Self, NetNsError> {
        let path = path.as_ref().to_path_buf();
        let file = File::open(&path).map_err(|source| match source.kind() {
            std::io::ErrorKind::NotFound => NetNsError::NotFound { path: path.clone() },
            _ => NetNsError::Open {
                path: path.clone(),
                source,
            },
        })?;
        if !is_netns(&file) {
            return Err(NetNsError::NotNetNs { path });
        }
        Ok(Self { file, path })
    }

    /// The namespace the calling thread is in now.
    pub fn current() -> Result<Self, NetNsError> {
        Self::open("/proc/thread-self/ns/net")
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }

    /// Runs `f` with the calling thread inside this namespace, then returns
    /// the thread to the namespace it was in. Sockets opened inside stay bound
    /// to this namespace after the return.
    pub fn run_in<T>(&self, f: impl FnOnce() -> T) -> Result<T, NetNsError> {
        let origin = Self::current()?;
        self.enter()?;
        let out = f();
        origin.enter()?;
        Ok(out)
    }

    fn enter(&self) -> Result<(), NetNsError> {
        setns(self.file.as_fd(), CloneFlags::CLONE_NEWNET).map_err(|source| NetNsError::Enter {
            path: self.path.clone(),
            source,
        })
    }

    /// A command that will run inside this namespace (only the network
    /// namespace changes; the filesystem and PIDs stay the host's).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new(program);
        let fd = self.file.as_raw_fd();
        // SAFETY: setns is async-signal-safe; the fd stays open in the child
        // until exec because it is only closed by the parent's drop.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        cmd
    }
}

fn is_netns(file: &File) -> bool {
    // NS_GET_NSTYPE = _IO(0xb7, 0x3); a regular file or another namespace type fails.
    const NS_GET_NSTYPE: libc::c_ulong = 0xb703;
    // SAFETY: plain ioctl on an fd we own; no memory is passed.
    let kind = unsafe { libc::ioctl(file.as_raw_fd(), NS_GET_NSTYPE as _) };
    kind == libc::CLONE_NEWNET
}

/// The path a named namespace is mounted at.
pub fn named_path(name: &str) -> PathBuf {
    Path::new(NETNS_RUN_DIR).join(name)
}

fn check_name(name: &str) -> Result<(), NetNsError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name != "."
        && name != ".."
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    if ok {
        Ok(())
    } else {
        Err(NetNsError::BadName(name.to_string()))
    }
}

/// Creates a new, empty network namespace mounted at `/run/netns/<name>`.
/// Fails if one of that name exists.
pub fn create_named(name: &str) -> Result<NetNs, NetNsError> {
    check_name(name)?;
    let create_err = |what| {
        let name = name.to_string();
        move |source| NetNsError::Create { name, what, source }
    };
    fs::create_dir_all(NETNS_RUN_DIR).map_err(create_err("creating /run/netns"))?;
    let path = named_path(name);
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(create_err("creating the mount point"))?;
    // unshare() moves the calling thread, so do it on a throwaway thread.
    let target = path.clone();
    let result = std::thread::spawn(move || -> std::io::Result<()> {
        unshare(CloneFlags::CLONE_NEWNET)?;
        mount(
            Some("/proc/thread-self/ns/net"),
            &target,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )?;
        Ok(())
    })
    .join()
    .unwrap_or_else(|_| Err(std::io::Error::other("namespace thread panicked")));
    if let Err(source) = result {
        let _ = fs::remove_file(&path);
        return Err(NetNsError::Create {
            name: name.to_string(),
            what: "unshare and bind-mount",
            source,
        });
    }
    NetNs::open(&path)
}

/// Removes a named namespace; processes still inside keep it alive until
/// they exit. Removing one that does not exist is not an error.
pub fn delete_named(name: &str) -> Result<(), NetNsError> {
    check_name(name)?;
    let path = named_path(name);
    if !path.exists() {
        return Ok(());
    }
    let _ = umount2(&path, MntFlags::MNT_DETACH);
    fs::remove_file(&path).map_err(|source| NetNsError::Create {
        name: name.to_string(),
        what: "removing the mount point",
        source,
    })
}

/// Names of the namespaces under `/run/netns`.
pub fn list_named() -> Vec<String> {
    fs::read_dir(NETNS_RUN_DIR)
        .map(|dir| {
            dir.filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_validated() {
        assert!(check_name("weft-test_1.a").is_ok());
        for bad in ["", ".", "..", "a/b", "a b", &"x".repeat(65)] {
            assert!(check_name(bad).is_err(), "{bad:?} accepted");
        }
    }
}
