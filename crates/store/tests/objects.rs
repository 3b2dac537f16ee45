//! Untyped objects: put/get/list/delete, revisions, keys and persistence.

mod common;

use common::{store_path, temp_store};
use serde_json::json;
use weft_store::{Store, StoreError};

#[test]
fn put_get_list_delete_move_the_revision_forward() {
    let (_dir, store) = temp_store();
    assert_eq!(store.revision().expect("revision"), 0);

    let created = store
        .put("ConfigMap", "default", "a", &json!({"data": {"k": "1"}}))
        .expect("create");
    assert_eq!(created, 1);
    let replaced = store
        .put("ConfigMap", "default", "a", &json!({"data": {"k": "2"}}))
        .expect("replace");
    assert_eq!(replaced, 2);

    let object = store
        .get("ConfigMap", "default", "a")
        .expect("get")
        .expect("object exists");
    assert_eq!(object.kind, "ConfigMap");
    assert_eq!(object.namespace, "default");
    assert_eq!(object.name, "a");
    assert_eq!(object.revision, 2);
    assert_eq!(object.value, json!({"data": {"k": "2"}}));

    let (objects, at) = store.list("ConfigMap").expect("list");
    assert_eq!(objects, vec![object]);
    assert_eq!(at, 2);

    assert_eq!(
        store.delete("ConfigMap", "default", "a").expect("delete"),
        Some(3)
    );
    assert_eq!(store.get("ConfigMap", "default", "a").expect("get"), None);
    let (objects, at) = store.list("ConfigMap").expect("list");
    assert!(objects.is_empty());
    assert_eq!(at, 3);
    assert_eq!(store.revision().expect("revision"), 3);
}

#[test]
fn deleting_what_is_not_there_changes_nothing() {
    let (_dir, store) = temp_store();
    store
        .put("ConfigMap", "default", "a", &json!({}))
        .expect("put");
    assert_eq!(
        store.delete("ConfigMap", "default", "b").expect("delete"),
        None
    );
    assert_eq!(
        store.delete("Secret", "default", "a").expect("delete"),
        None
    );
    assert_eq!(store.revision().expect("revision"), 1);
    assert_eq!(store.events_since("ConfigMap", 0).expect("events").len(), 1);
}

#[test]
fn list_is_one_kind_sorted_by_namespace_then_name() {
    let (_dir, store) = temp_store();
    for (namespace, name) in [
        ("kube-system", "b"),
        ("default", "z"),
        ("", "c"),
        ("default", "a"),
    ] {
        store
            .put("Service", namespace, name, &json!({"name": name}))
            .expect("put");
    }
    store
        .put("Endpoints", "default", "a", &json!({}))
        .expect("put another kind");

    let (services, at) = store.list("Service").expect("list");
    let keys: Vec<(&str, &str)> = services
        .iter()
        .map(|object| (object.namespace.as_str(), object.name.as_str()))
        .collect();
    assert_eq!(
        keys,
        [
            ("", "c"),
            ("default", "a"),
            ("default", "z"),
            ("kube-system", "b")
        ]
    );
    assert_eq!(at, 5);
    assert!(services.iter().all(|object| object.kind == "Service"));
    assert!(store.list("Pod").expect("list").0.is_empty());

    // Streaming gives the same objects, in the same order, at the same revision.
    let mut streamed = Vec::new();
    let at_streamed = store
        .list_each("Service", |namespace, name, json| {
            let value: serde_json::Value = serde_json::from_str(json).expect("JSON");
            streamed.push((namespace.to_string(), name.to_string(), value));
        })
        .expect("list_each");
    assert_eq!(at_streamed, at);
    let listed: Vec<_> = services
        .iter()
        .map(|o| (o.namespace.clone(), o.name.clone(), o.value.clone()))
        .collect();
    assert_eq!(streamed, listed);
}

#[test]
fn keys_without_kind_or_name_and_the_lease_kind_are_refused() {
    let (_dir, store) = temp_store();
    for (kind, name) in [("", "a"), ("Pod", ""), ("Lease", "a")] {
        let error = store
            .put(kind, "default", name, &json!({}))
            .expect_err("invalid key");
        assert!(
            matches!(error, StoreError::InvalidKey { .. }),
            "{kind:?}/{name:?}: {error}"
        );
    }
    assert_eq!(store.revision().expect("revision"), 0);
}

#[test]
fn objects_outlive_the_handle_that_wrote_them() {
    let (dir, store) = temp_store();
    store
        .put("Namespace", "", "team-a", &json!({"spec": {}}))
        .expect("put");
    drop(store);

    let reopened = Store::open(&store_path(&dir)).expect("reopen");
    assert_eq!(reopened.path(), store_path(&dir));
    let object = reopened
        .get("Namespace", "", "team-a")
        .expect("get")
        .expect("still there");
    assert_eq!(object.value, json!({"spec": {}}));
    assert_eq!(reopened.revision().expect("revision"), 1);
}

#[test]
fn open_errors_name_the_path_and_what_to_check() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let missing = dir.path().join("no-such-dir").join("cluster.db");
    let error = Store::open(&missing).expect_err("directory is missing");
    assert!(matches!(error, StoreError::Open { .. }), "{error}");
    let message = error.to_string();
    assert!(
        message.contains(&missing.display().to_string()),
        "{message}"
    );
    assert!(
        message.contains("permissions") || message.contains("directory exists"),
        "{message}"
    );
    // A file that is not a store: see integrity.rs.
}
