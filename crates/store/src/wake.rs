//! Change notification between processes sharing a store file, so watchers
//! sleep until their kind changes instead of polling the database.
//!
//! Owns the per-kind signal files beside the database (`<db>-changed-<kind>`)
//! and the one inotify instance of this process. A writer touches the file of
//! the kind it changed after its transaction committed; a watcher subscribes
//! to the file of its kind and is woken by inotify. A signal says only
//! "look again": the event log stays the truth, so a lost or spurious signal
//! costs at most a delay (the watcher's safety poll) or one cheap read.
//!
//! One inotify instance serves every store and watcher of the process,
//! because the kernel limits instances per user (often to 128) and a lab
//! runs one agent process per node. When inotify cannot be had, a watcher
//! binds a datagram socket in its kind's doorbell directory
//! (`<db>-changed-<kind>.bells/`) and writers ring every socket there after the
//! touch; a socket whose owner is gone is removed by the first writer that
//! finds it. Only where neither works do watchers poll.

use std::collections::HashMap;
use std::ffi::OsString;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, SystemTime};

use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, WatchDescriptor};
use tokio::sync::watch;

/// The file whose touch signals a change of `kind` in the store at `store`.
/// Characters that cannot go in a file name become `_`; two kinds sharing a
/// file only wake each other's watchers for nothing.
pub(crate) fn signal_file(store: &Path, kind: &str) -> PathBuf {
    let safe_kind: String = kind
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    let mut name = store.file_name().map(OsString::from).unwrap_or_default();
    name.push(format!("-changed-{safe_kind}"));
    store.with_file_name(name)
}

/// The directory of the doorbell sockets of `kind`'s watchers.
fn doorbell_dir(store: &Path, kind: &str) -> PathBuf {
    let mut path = signal_file(store, kind).into_os_string();
    path.push(".bells");
    PathBuf::from(path)
}

/// Tells the watchers of `kind` that it changed. A missing signal file means
/// nobody has watched the kind yet, so there is no one to tell; any other
/// failure is left to the watchers' safety poll.
pub(crate) fn signal(store: &Path, kind: &str) {
    touch(store, kind);
    ring(store, kind);
}

/// Rings every doorbell of `kind` (one byte, never waiting): a full socket
/// already has a wake pending; one nobody listens on any more (refused:
/// its process is gone) is removed.
fn ring(store: &Path, kind: &str) {
    let Ok(bells) = std::fs::read_dir(doorbell_dir(store, kind)) else {
        return;
    };
    let mut ringer = None;
    for bell in bells.flatten() {
        let path = bell.path();
        // A datagram stays charged to the socket that sent it until it is
        // read, so one socket runs out of room after a few dozen: a full
        // one is replaced and the ring tried again once (a second refusal
        // means the watcher's own queue is full, i.e. it has wakes pending).
        for _ in 0..2 {
            if ringer.is_none() {
                ringer = nonblocking_ringer().ok();
            }
            let Some(socket) = &ringer else {
                return;
            };
            match socket.send_to(b"!", &path) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => ringer = None,
                Err(e) if e.raw_os_error() == Some(nix::errno::Errno::ECONNREFUSED as i32) => {
                    let _ = std::fs::remove_file(&path);
                    break;
                }
                _ => break,
            }
        }
    }
}

fn nonblocking_ringer() -> std::io::Result<UnixDatagram> {
    let socket = UnixDatagram::unbound()?;
    socket.set_nonblocking(true)?;
    Ok(socket)
}

fn touch(store: &Path, kind: &str) {
    let path = signal_file(store, kind);
    let touched = std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .and_then(|file| file.set_modified(SystemTime::now()));
    match touched {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            tracing::debug!(path = %path.display(), error = %e, "cannot signal a change to watchers; they see it at their next safety poll")
        }
    }
}

/// How a watcher learns that its kind changed.
#[derive(Debug)]
pub(crate) enum Signals {
    /// Woken by inotify: a counter bumped at each touch of the signal file.
    Notified {
        path: PathBuf,
        receiver: watch::Receiver<u64>,
    },
    /// Where inotify is unavailable: a doorbell socket writers ring.
    Rung { path: PathBuf, bell: Doorbell },
    /// Where neither works: the signal file's modification time, looked
    /// at every poll (a `stat`, far cheaper than a database read).
    Polled {
        path: PathBuf,
        seen: Option<SystemTime>,
    },
}

impl Signals {
    /// Subscribes to the signals of `kind`, creating its signal file.
    /// Falls back to polling the file (said once per reason in the log)
    /// when this process cannot be notified: no inotify instance left, or
    /// the file cannot be watched.
    pub(crate) fn subscribe(store: &Path, kind: &str) -> Signals {
        let path = signal_file(store, kind);
        let notified = Notifier::shared().and_then(|notifier| match notifier.subscribe(&path) {
            Ok(receiver) => Some(receiver),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot watch the store for changes with inotify; using a doorbell socket instead");
                None
            }
        });
        match notified {
            Some(receiver) => Signals::Notified { path, receiver },
            None => Signals::doorbell(store, kind),
        }
    }

    /// Subscribes through a doorbell socket (polling the signal file where
    /// even that fails).
    pub(crate) fn doorbell(store: &Path, kind: &str) -> Signals {
        let path = signal_file(store, kind);
        match Doorbell::bind(&doorbell_dir(store, kind)) {
            Ok(bell) => Signals::Rung { path, bell },
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot be rung at store changes either; polling the signal file instead");
                Signals::Polled { path, seen: None }
            }
        }
    }

    /// Marks every signal so far as seen; call before reading the store, so
    /// that a change committed after the read still ends the next wait.
    pub(crate) fn mark_seen(&mut self) {
        match self {
            Signals::Notified { receiver, .. } => {
                receiver.borrow_and_update();
            }
            Signals::Rung { bell, .. } => bell.clear(),
            Signals::Polled { path, seen } => *seen = modified(path),
        }
    }

    /// Waits for a signal after the last [`Signals::mark_seen`], looking
    /// every `poll` when polling, but no longer than `safety_poll`.
    pub(crate) async fn wait(&mut self, poll: Duration, safety_poll: Duration) {
        let deadline = tokio::time::Instant::now() + safety_poll;
        match self {
            Signals::Notified { path, receiver } => {
                if let Ok(Err(_)) = tokio::time::timeout_at(deadline, receiver.changed()).await {
                    // The signal file went away (the store is being
                    // removed): polling goes on to the end.
                    *self = Signals::Polled {
                        path: std::mem::take(path),
                        seen: None,
                    };
                }
            }
            Signals::Rung { path, bell } => {
                if let Err(e) = bell.wait_until(deadline).await {
                    tracing::warn!(error = %e, "the store's doorbell failed; polling its signal file instead");
                    *self = Signals::Polled {
                        path: std::mem::take(path),
                        seen: None,
                    };
                }
            }
            Signals::Polled { path, seen } => loop {
                tokio::time::sleep(poll).await;
                let now = modified(path);
                if now != *seen || now.is_none() || tokio::time::Instant::now() >= deadline {
                    return;
                }
            },
        }
    }
}

/// A watcher's datagram socket in its kind's doorbell directory, named
/// after its process; removed when the watcher goes.
#[derive(Debug)]
pub(crate) struct Doorbell {
    path: PathBuf,
    socket: BellSocket,
}

/// The socket, registered with the async runtime at the first wait (a
/// watcher may be made outside one).
#[derive(Debug)]
enum BellSocket {
    Plain(UnixDatagram),
    Registered(tokio::net::UnixDatagram),
    Gone,
}

impl Doorbell {
    fn bind(dir: &Path) -> std::io::Result<Doorbell> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        std::fs::create_dir_all(dir)?;
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = dir.join(format!("{}-{n}", std::process::id()));
        let socket = match UnixDatagram::bind(&path) {
            // Left by a process that had this PID and is gone.
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                std::fs::remove_file(&path)?;
                UnixDatagram::bind(&path)?
            }
            other => other?,
        };
        socket.set_nonblocking(true)?;
        Ok(Doorbell {
            path,
            socket: BellSocket::Plain(socket),
        })
    }

    /// Takes every ring so far.
    fn clear(&mut self) {
        let mut buf = [0u8; 16];
        match &self.socket {
            BellSocket::Plain(socket) => while socket.recv(&mut buf).is_ok() {},
            BellSocket::Registered(socket) => while socket.try_recv(&mut buf).is_ok() {},
            BellSocket::Gone => {}
        }
    }

    /// Waits for a ring until `deadline`.
    async fn wait_until(&mut self, deadline: tokio::time::Instant) -> std::io::Result<()> {
        if let BellSocket::Plain(_) = self.socket {
            let BellSocket::Plain(plain) = std::mem::replace(&mut self.socket, BellSocket::Gone)
            else {
                unreachable!("matched above")
            };
            self.socket = BellSocket::Registered(tokio::net::UnixDatagram::from_std(plain)?);
        }
        let BellSocket::Registered(socket) = &self.socket else {
            return Err(std::io::Error::other("the doorbell socket is gone"));
        };
        let mut buf = [0u8; 16];
        match tokio::time::timeout_at(deadline, socket.recv(&mut buf)).await {
            Ok(received) => received.map(drop),
            Err(_) => Ok(()),
        }
    }
}

impl Drop for Doorbell {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The signal file's modification time; `None` if it cannot be read, which
/// makes the watcher read the store at every poll.
fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// The process's inotify instance and, per watched signal file, a counter
/// its watchers wait on.
struct Notifier {
    inotify: Inotify,
    counters: Mutex<HashMap<WatchDescriptor, watch::Sender<u64>>>,
}

impl Notifier {
    /// The process's notifier, started on first use; `None` (logged once) if
    /// inotify is unavailable.
    fn shared() -> Option<Arc<Notifier>> {
        static SHARED: OnceLock<Option<Arc<Notifier>>> = OnceLock::new();
        SHARED.get_or_init(Notifier::start).clone()
    }

    fn start() -> Option<Arc<Notifier>> {
        let started = Inotify::init(InitFlags::IN_CLOEXEC)
            .map_err(std::io::Error::from)
            .and_then(|inotify| {
                let notifier = Arc::new(Notifier {
                    inotify,
                    counters: Mutex::default(),
                });
                let reader = notifier.clone();
                std::thread::Builder::new()
                    .name("store-wake".into())
                    .spawn(move || reader.dispatch())?;
                Ok(notifier)
            });
        match started {
            Ok(notifier) => Some(notifier),
            Err(e) => {
                tracing::warn!(error = %e, "cannot be notified of store changes by inotify (too many instances? fs.inotify.max_user_instances); watchers use doorbell sockets instead");
                None
            }
        }
    }

    fn subscribe(&self, path: &Path) -> std::io::Result<watch::Receiver<u64>> {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        let descriptor = self
            .inotify
            .add_watch(path, AddWatchFlags::IN_ATTRIB | AddWatchFlags::IN_MODIFY)?;
        let mut counters = self.counters();
        let counter = counters
            .entry(descriptor)
            .or_insert_with(|| watch::channel(0).0);
        Ok(counter.subscribe())
    }

    /// Wakes the watchers of each touched file, for as long as the process
    /// runs. A file removed (its watch is dropped by the kernel) closes its
    /// counter, which sends its watchers back to polling.
    fn dispatch(&self) {
        loop {
            let events = match self.inotify.read_events() {
                Ok(events) => events,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "reading store change notifications failed; watchers poll instead");
                    self.counters().clear();
                    return;
                }
            };
            let mut counters = self.counters();
            for event in events {
                if event.mask.contains(AddWatchFlags::IN_IGNORED) {
                    counters.remove(&event.wd);
                } else if let Some(counter) = counters.get(&event.wd) {
                    counter.send_modify(|count| *count = count.wrapping_add(1));
                }
            }
        }
    }

    fn counters(&self) -> std::sync::MutexGuard<'_, HashMap<WatchDescriptor, watch::Sender<u64>>> {
        self.counters.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::{doorbell_dir, signal, signal_file, Signals};

    const POLL: Duration = Duration::from_millis(10);

    fn polled_signals(store: &std::path::Path) -> Signals {
        let path = signal_file(store, "Service");
        std::fs::write(&path, b"").expect("create the signal file");
        let mut signals = Signals::Polled { path, seen: None };
        signals.mark_seen();
        signals
    }

    #[tokio::test]
    async fn a_polling_watcher_sees_a_touch_at_its_next_poll() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let store = dir.path().join("cluster.db");
        let mut signals = polled_signals(&store);
        signal(&store, "Service");
        let started = Instant::now();
        signals.wait(POLL, Duration::from_secs(60)).await;
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{:?}",
            started.elapsed()
        );
    }

    #[tokio::test]
    async fn a_polling_watcher_without_a_touch_waits_for_the_safety_poll() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let store = dir.path().join("cluster.db");
        let mut signals = polled_signals(&store);
        signal(&store, "Endpoints");
        let started = Instant::now();
        signals.wait(POLL, Duration::from_millis(200)).await;
        assert!(started.elapsed() >= Duration::from_millis(200));
    }

    /// Whether `signals` is woken within `limit` (its safety poll is far
    /// longer).
    async fn woken(signals: &mut Signals, limit: Duration) -> bool {
        let started = Instant::now();
        signals.wait(POLL, Duration::from_secs(60)).await;
        started.elapsed() < limit
    }

    #[tokio::test]
    async fn doorbells_ring_for_their_kind_only() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let store = dir.path().join("cluster.db");
        let mut services = Signals::doorbell(&store, "Service");
        assert!(matches!(services, Signals::Rung { .. }), "{services:?}");
        services.mark_seen();
        signal(&store, "Lease");
        let started = Instant::now();
        let waited = tokio::time::timeout(
            Duration::from_millis(300),
            services.wait(POLL, Duration::from_secs(60)),
        )
        .await;
        assert!(
            waited.is_err(),
            "woken by another kind after {:?}",
            started.elapsed()
        );
        signal(&store, "Service");
        assert!(woken(&mut services, Duration::from_secs(1)).await);
        // A ring taken by mark_seen does not end the next wait.
        signal(&store, "Service");
        services.mark_seen();
        let waited = tokio::time::timeout(
            Duration::from_millis(300),
            services.wait(POLL, Duration::from_secs(60)),
        )
        .await;
        assert!(waited.is_err());
        drop(services);
        let left = std::fs::read_dir(doorbell_dir(&store, "Service"))
            .unwrap()
            .count();
        assert_eq!(left, 0, "a watcher's socket outlived it");
    }

    #[tokio::test]
    async fn hundreds_of_doorbells_all_ring_at_one_write() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let store = dir.path().join("cluster.db");
        // More than the 128 inotify instances a user gets here.
        let mut watchers: Vec<Signals> = (0..300)
            .map(|_| Signals::doorbell(&store, "Lease"))
            .collect();
        watchers.iter_mut().for_each(Signals::mark_seen);
        signal(&store, "Lease");
        for (i, signals) in watchers.iter_mut().enumerate() {
            assert!(
                woken(signals, Duration::from_secs(1)).await,
                "watcher {i} slept"
            );
        }
    }

    #[tokio::test]
    async fn a_dead_watchers_socket_is_cleared_and_the_others_still_ring() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let store = dir.path().join("cluster.db");
        let mut live = Signals::doorbell(&store, "Lease");
        live.mark_seen();
        // A socket file whose process is gone: bound, then closed unremoved.
        let dead = doorbell_dir(&store, "Lease").join("dead");
        drop(std::os::unix::net::UnixDatagram::bind(&dead).unwrap());
        assert!(dead.exists());
        signal(&store, "Lease");
        assert!(!dead.exists(), "the dead socket was left");
        assert!(woken(&mut live, Duration::from_secs(1)).await);
    }
}
