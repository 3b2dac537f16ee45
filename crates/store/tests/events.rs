//! The change log and watching: ordering, other processes' writes,
//! compaction and lease events.

mod common;

use std::time::{Duration, Instant};

use common::{pod_network, store_path, temp_store};
use serde_json::json;
use weft_store::{EventKind, Lease, Store, StoreError, LEASE_KIND};

const POLL: Duration = Duration::from_millis(20);
/// Generous against a loaded CI machine; a working watcher needs ~POLL.
const WAKE_BOUND: Duration = Duration::from_secs(2);

#[test]
fn events_since_replays_added_modified_deleted_in_order() {
    let (_dir, store) = temp_store();
    store
        .put("Pod", "default", "a", &json!({"v": 1}))
        .expect("add");
    store.put("Node", "", "n1", &json!({})).expect("other kind");
    store
        .put("Pod", "default", "a", &json!({"v": 2}))
        .expect("modify");
    store.delete("Pod", "default", "a").expect("delete");

    let events = store.events_since("Pod", 0).expect("events");
    let summary: Vec<(EventKind, u64, serde_json::Value)> = events
        .iter()
        .map(|event| (event.kind, event.revision, event.object.value.clone()))
        .collect();
    assert_eq!(
        summary,
        [
            (EventKind::Added, 1, json!({"v": 1})),
            (EventKind::Modified, 3, json!({"v": 2})),
            (EventKind::Deleted, 4, json!({"v": 2})),
        ]
    );
    assert!(events
        .iter()
        .all(|event| event.object.revision == event.revision
            && event.object.kind == "Pod"
            && event.object.namespace == "default"
            && event.object.name == "a"));

    let later = store.events_since("Pod", 3).expect("events after 3");
    assert_eq!(later.len(), 1);
    assert_eq!(later[0].kind, EventKind::Deleted);
    assert!(store.events_since("Pod", 4).expect("none").is_empty());
    assert!(store
        .events_since("Pod", u64::MAX)
        .expect("none")
        .is_empty());
    assert_eq!(EventKind::Modified.as_str(), "MODIFIED");
}

#[tokio::test]
async fn watcher_wakes_on_a_write_by_another_handle() {
    let (dir, store) = temp_store();
    let mut watcher = store.watch("Pod", store.revision().expect("revision"), POLL);

    let path = store_path(&dir);
    let writer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(100));
        let other_process = Store::open(&path).expect("second handle");
        other_process
            .put("Pod", "default", "web", &json!({"spec": {}}))
            .expect("put from the other handle")
    });

    let started = Instant::now();
    let events = tokio::time::timeout(WAKE_BOUND, watcher.next())
        .await
        .expect("watcher woke within the bound")
        .expect("events");
    let written_at = writer.join().expect("writer thread");
    assert!(started.elapsed() < WAKE_BOUND);
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].kind, EventKind::Added);
    assert_eq!(events[0].revision, written_at);
    assert_eq!(events[0].object.name, "web");
    assert_eq!(watcher.revision(), written_at);
}

#[tokio::test]
async fn watcher_batches_its_kind_and_skips_others() {
    let (_dir, store) = temp_store();
    let mut watcher = store.watch("Pod", 0, POLL);
    store.put("Pod", "default", "a", &json!({})).expect("put");
    store.put("Node", "", "n1", &json!({})).expect("put");
    store.put("Pod", "default", "b", &json!({})).expect("put");

    let first = watcher.next().await.expect("first batch");
    let names: Vec<&str> = first
        .iter()
        .map(|event| event.object.name.as_str())
        .collect();
    assert_eq!(names, ["a", "b"]);

    store.put("Node", "", "n2", &json!({})).expect("put");
    let quiet = tokio::time::timeout(POLL * 5, watcher.next()).await;
    assert!(quiet.is_err(), "a Node change must not wake a Pod watcher");
    assert_eq!(watcher.revision(), 4, "it still moved past the Node change");

    store.delete("Pod", "default", "a").expect("delete");
    let second = tokio::time::timeout(WAKE_BOUND, watcher.next())
        .await
        .expect("woke")
        .expect("second batch");
    assert_eq!(second.len(), 1);
    assert_eq!(second[0].kind, EventKind::Deleted);
    assert_eq!(second[0].revision, 5);
}

#[tokio::test]
async fn compaction_sends_lagging_readers_back_to_list() {
    let (_dir, store) = temp_store();
    for name in ["a", "b", "c", "d"] {
        store.put("Pod", "default", name, &json!({})).expect("put");
    }
    assert_eq!(store.compact(2).expect("compact"), 2);

    match store.events_since("Pod", 1) {
        Err(StoreError::Compacted { requested, oldest }) => {
            assert_eq!((requested, oldest), (1, 2));
        }
        other => panic!("expected Compacted, got {other:?}"),
    }
    let kept = store
        .events_since("Pod", 2)
        .expect("events after the point");
    assert_eq!(
        kept.iter().map(|event| event.revision).collect::<Vec<_>>(),
        [3, 4]
    );

    let mut lagging = store.watch("Pod", 0, POLL);
    let error = lagging.next().await.expect_err("too old");
    assert!(
        matches!(
            error,
            StoreError::Compacted {
                requested: 0,
                oldest: 2
            }
        ),
        "{error}"
    );
    assert!(error.to_string().contains("list again"), "{error}");

    // Re-listing gives a revision to watch from again.
    let (pods, at) = store.list("Pod").expect("list");
    assert_eq!((pods.len(), at), (4, 4));
    let mut resumed = store.watch("Pod", at, POLL);
    store.put("Pod", "default", "e", &json!({})).expect("put");
    let events = tokio::time::timeout(WAKE_BOUND, resumed.next())
        .await
        .expect("woke")
        .expect("events");
    assert_eq!(events[0].object.name, "e");
}

#[test]
fn compaction_never_passes_the_current_revision_or_goes_back() {
    let (_dir, store) = temp_store();
    store.put("Pod", "default", "a", &json!({})).expect("put");
    assert_eq!(store.compact(100).expect("compact"), 1);
    // Up to date readers are unaffected even though 100 was asked for.
    assert!(store.events_since("Pod", 1).expect("up to date").is_empty());
    assert_eq!(store.compact(0).expect("no-op"), 0);
    assert!(matches!(
        store.events_since("Pod", 0),
        Err(StoreError::Compacted {
            requested: 0,
            oldest: 1
        })
    ));
}

#[tokio::test]
async fn lease_changes_are_watchable_as_lease_events() {
    let (_dir, store) = temp_store();
    let mut watcher = store.watch(LEASE_KIND, 0, POLL);
    let public_ip = "192.168.1.10".parse().expect("address");
    let backend = json!({"vtepMAC": "02:42:ac:11:00:02"});
    let acquired = store
        .acquire_lease(
            "weft",
            "node-a",
            public_ip,
            &backend,
            Duration::from_secs(60),
            pod_network,
        )
        .expect("acquire");
    store.release_lease("weft", "node-a").expect("release");

    let events = tokio::time::timeout(WAKE_BOUND, watcher.next())
        .await
        .expect("woke")
        .expect("events");
    assert_eq!(
        events.iter().map(|event| event.kind).collect::<Vec<_>>(),
        [EventKind::Added, EventKind::Deleted]
    );
    let added = &events[0].object;
    assert_eq!(
        (
            added.kind.as_str(),
            added.namespace.as_str(),
            added.name.as_str()
        ),
        ("Lease", "weft", "node-a")
    );

    let document = added.value.as_object().expect("a JSON object");
    let mut fields: Vec<&str> = document.keys().map(String::as_str).collect();
    fields.sort_unstable();
    assert_eq!(
        fields,
        [
            "backend",
            "expiresAt",
            "network",
            "node",
            "publicIP",
            "subnet"
        ]
    );
    assert_eq!(added.value["subnet"], "10.244.0.0/24");
    assert_eq!(added.value["publicIP"], "192.168.1.10");
    assert_eq!(added.value["backend"], backend);
    let expires_at = added.value["expiresAt"].as_str().expect("a string");
    assert!(
        expires_at.ends_with('Z') && expires_at.contains('T'),
        "{expires_at}"
    );

    let decoded = Lease::from_object(added).expect("decode");
    assert_eq!(
        decoded, acquired,
        "the JSON carries the whole lease, to the millisecond"
    );

    let released = Lease::from_object(&events[1].object).expect("decode the last value");
    assert_eq!(released.node, "node-a");
    assert_eq!(released.revision, events[1].revision);
}
