//! Watchers are woken by writes, also from other processes, instead of
//! polling; and a write that finds the store busy retries instead of failing.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{store_path, temp_store};
use serde_json::json;
use weft_store::Store;

/// Set by `a_watcher_wakes_at_a_write_by_another_process` for its child.
const CHILD_STORE: &str = "WEFT_STORE_TEST_WAKE_STORE";

/// Long enough that a watcher answering sooner was woken, not polling.
const NO_POLLING: Duration = Duration::from_secs(60);

fn now_micros() -> u64 {
    let since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970");
    u64::try_from(since_epoch.as_micros()).expect("fits")
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

#[test]
fn a_watcher_wakes_at_a_write_by_another_process() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = store_path(&dir);
    let store = Store::open(&path).expect("open");
    let mut watcher = store.watch("Service", store.revision().expect("revision"), NO_POLLING);
    let test_binary = std::env::current_exe().expect("path of this test binary");
    let mut child = Command::new(test_binary)
        .args([
            "--exact",
            "child_writes_one_service",
            "--ignored",
            "--quiet",
        ])
        .env(CHILD_STORE, &path)
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn a child process");

    let events = runtime()
        .block_on(async { tokio::time::timeout(Duration::from_secs(10), watcher.next()).await })
        .expect("woken long before the 60 s poll")
        .expect("events");
    let woken_at = now_micros();
    assert!(child.wait().expect("wait for the child").success());

    assert_eq!(events.len(), 1, "{events:?}");
    let written_at = events[0].object.value["writtenAtMicros"]
        .as_u64()
        .expect("the child's timestamp");
    let latency_ms = woken_at.saturating_sub(written_at) as f64 / 1000.0;
    eprintln!("woken {latency_ms:.2} ms after the other process's write");
    // A few ms when idle; the bound leaves room for a loaded test machine.
    assert!(latency_ms < 250.0, "woken only after {latency_ms} ms");
}

/// The body of the child process of `a_watcher_wakes_at_a_write_by_another_process`.
#[test]
#[ignore = "run as a child process by a_watcher_wakes_at_a_write_by_another_process"]
fn child_writes_one_service() {
    let path = std::env::var_os(CHILD_STORE).expect("started by the parent test");
    let store = Store::open(Path::new(&path)).expect("open the parent's store");
    // The parent's watcher is waiting by now; the pause makes sure of it.
    std::thread::sleep(Duration::from_millis(100));
    store
        .put(
            "Service",
            "default",
            "web",
            &json!({"writtenAtMicros": now_micros()}),
        )
        .expect("write");
}

#[test]
fn a_write_of_another_kind_does_not_end_the_wait_and_one_of_its_kind_does() {
    let (_dir, store) = temp_store();
    let writer = Store::open(store.path()).expect("a second handle");
    let mut watcher = store.watch("Service", 0, NO_POLLING);
    let rt = runtime();
    writer
        .put("NodeLease", "kube-node-lease", "a", &json!({}))
        .expect("write");
    let early = rt
        .block_on(async { tokio::time::timeout(Duration::from_millis(200), watcher.next()).await });
    assert!(early.is_err(), "no Service changed, yet: {early:?}");
    writer
        .put("Service", "default", "web", &json!({}))
        .expect("write");
    let events = rt
        .block_on(async { tokio::time::timeout(Duration::from_secs(5), watcher.next()).await })
        .expect("woken by the Service write")
        .expect("events");
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].object.name, "web");
}

#[test]
fn a_write_that_finds_the_store_busy_retries_instead_of_failing() {
    let (_dir, store) = temp_store();
    store
        .set_busy_timeout(Duration::from_millis(20))
        .expect("busy timeout");
    let holder = rusqlite::Connection::open(store.path()).expect("a raw connection");
    holder
        .execute_batch("BEGIN IMMEDIATE")
        .expect("take the write lock");
    let release = std::thread::spawn(move || {
        // Well past the busy timeout, well inside the retries' back-off.
        std::thread::sleep(Duration::from_millis(300));
        holder.execute_batch("COMMIT").expect("release the lock");
    });

    let written = store.put("Service", "default", "web", &json!({}));
    release.join().expect("lock holder");

    assert!(written.is_ok(), "{written:?}");
    assert!(
        store.contended_writes() >= 1,
        "the write never had to retry"
    );
}

#[test]
fn opening_a_store_that_is_set_up_does_not_wait_for_a_writer() {
    let (_dir, store) = temp_store();
    let holder = rusqlite::Connection::open(store.path()).expect("a raw connection");
    holder
        .execute_batch("BEGIN IMMEDIATE")
        .expect("take the write lock");

    let started = std::time::Instant::now();
    let opened = Store::open(store.path());
    let existing = Store::open_existing(store.path());
    let waited = started.elapsed();
    holder.execute_batch("ROLLBACK").expect("release the lock");

    assert!(opened.is_ok(), "{opened:?}");
    assert!(existing.is_ok(), "{existing:?}");
    assert!(waited < Duration::from_secs(1), "opening waited {waited:?}");
}
