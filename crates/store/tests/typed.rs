//! Typed round trips with k8s-openapi resources.

mod common;

use std::collections::BTreeMap;

use common::temp_store;
use k8s_openapi::api::core::v1::{Container, Node, NodeSpec, Pod, PodSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use weft_store::StoreError;

fn node(name: &str, pod_cidr: &str) -> Node {
    Node {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            labels: Some(BTreeMap::from([(
                "kubernetes.io/os".to_owned(),
                "linux".to_owned(),
            )])),
            ..ObjectMeta::default()
        },
        spec: Some(NodeSpec {
            pod_cidr: Some(pod_cidr.to_owned()),
            ..NodeSpec::default()
        }),
        ..Node::default()
    }
}

fn pod(namespace: &str, name: &str) -> Pod {
    Pod {
        metadata: ObjectMeta {
            namespace: Some(namespace.to_owned()),
            name: Some(name.to_owned()),
            ..ObjectMeta::default()
        },
        spec: Some(PodSpec {
            containers: vec![Container {
                name: "app".to_owned(),
                image: Some("nginx:1.27".to_owned()),
                ..Container::default()
            }],
            ..PodSpec::default()
        }),
        ..Pod::default()
    }
}

#[test]
fn node_round_trips_with_its_resource_version() {
    let (_dir, store) = temp_store();
    let original = node("node-a", "10.244.1.0/24");
    let revision = store.put_typed(&original).expect("put node");

    let stored: Node = store
        .get_typed("", "node-a")
        .expect("get node")
        .expect("node exists");
    assert_eq!(
        stored.metadata.resource_version.as_deref(),
        Some(revision.to_string().as_str())
    );
    let mut expected = original.clone();
    expected.metadata.resource_version = Some(revision.to_string());
    assert_eq!(stored, expected);

    // The stored JSON is the Kubernetes wire form, resourceVersion included.
    let raw = store
        .get("Node", "", "node-a")
        .expect("get raw")
        .expect("exists");
    assert_eq!(raw.value["apiVersion"], "v1");
    assert_eq!(raw.value["kind"], "Node");
    assert_eq!(raw.value["spec"]["podCIDR"], "10.244.1.0/24");
    assert_eq!(
        raw.value["metadata"]["resourceVersion"],
        revision.to_string()
    );
    assert_eq!(raw.revision, revision);

    let again = store.put_typed(&original).expect("replace node");
    assert!(again > revision);
    let (nodes, at) = store.list_typed::<Node>().expect("list nodes");
    assert_eq!(at, again);
    assert_eq!(nodes.len(), 1);
    assert_eq!(
        nodes[0].metadata.resource_version.as_deref(),
        Some(again.to_string().as_str())
    );
}

#[test]
fn pods_round_trip_per_namespace_sorted() {
    let (_dir, store) = temp_store();
    for (namespace, name) in [("prod", "api"), ("default", "web"), ("default", "db")] {
        store.put_typed(&pod(namespace, name)).expect("put pod");
    }
    store
        .put_typed(&node("node-a", "10.244.1.0/24"))
        .expect("put node");

    let (pods, at) = store.list_typed::<Pod>().expect("list pods");
    let keys: Vec<(String, String, String)> = pods
        .iter()
        .map(|pod| {
            (
                pod.metadata.namespace.clone().unwrap_or_default(),
                pod.metadata.name.clone().unwrap_or_default(),
                pod.metadata.resource_version.clone().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        keys,
        [
            ("default".to_owned(), "db".to_owned(), "3".to_owned()),
            ("default".to_owned(), "web".to_owned(), "2".to_owned()),
            ("prod".to_owned(), "api".to_owned(), "1".to_owned()),
        ]
    );
    assert_eq!(at, 4);

    let web: Pod = store
        .get_typed("default", "web")
        .expect("get pod")
        .expect("exists");
    let containers = &web.spec.expect("spec").containers;
    assert_eq!(containers[0].image.as_deref(), Some("nginx:1.27"));
    assert!(store
        .get_typed::<Pod>("prod", "web")
        .expect("get")
        .is_none());
}

#[test]
fn a_resource_without_a_name_is_refused() {
    let (_dir, store) = temp_store();
    let nameless = Pod {
        metadata: ObjectMeta {
            namespace: Some("default".to_owned()),
            ..ObjectMeta::default()
        },
        ..Pod::default()
    };
    let error = store.put_typed(&nameless).expect_err("no name");
    assert!(matches!(error, StoreError::InvalidKey { .. }), "{error}");
}

#[test]
fn a_stored_value_of_the_wrong_shape_is_a_json_error() {
    let (_dir, store) = temp_store();
    store
        .put(
            "Pod",
            "default",
            "odd",
            &serde_json::json!({"spec": "not a PodSpec"}),
        )
        .expect("untyped put");
    let error = store
        .get_typed::<Pod>("default", "odd")
        .expect_err("does not decode");
    assert!(matches!(error, StoreError::Json { .. }), "{error}");
    assert!(error.to_string().contains("Pod default/odd"), "{error}");
}

#[test]
fn updates_from_two_writers_keep_each_others_fields() {
    let (dir, store) = temp_store();
    let path = store.path().to_owned();
    let writers: Vec<_> = ["weft.dev/a", "weft.dev/b"]
        .into_iter()
        .map(|annotation| {
            // Each writer on its own connection, as another process would be.
            let store = weft_store::Store::open(&path).unwrap();
            std::thread::spawn(move || {
                for i in 0..40 {
                    store
                        .update_typed::<Node>("", "node-1", |node| {
                            let mut node = node.unwrap_or_default();
                            node.metadata
                                .annotations
                                .get_or_insert_with(Default::default)
                                .insert(annotation.into(), i.to_string());
                            node
                        })
                        .unwrap();
                }
            })
        })
        .collect();
    for writer in writers {
        writer.join().unwrap();
    }
    let node: Node = store.get_typed("", "node-1").unwrap().unwrap();
    let annotations = node.metadata.annotations.unwrap();
    assert_eq!(annotations["weft.dev/a"], "39");
    assert_eq!(annotations["weft.dev/b"], "39");
    assert_eq!(node.metadata.name.as_deref(), Some("node-1"));
    drop(dir);
}

#[test]
fn an_update_that_changes_nothing_writes_nothing() {
    let (_dir, store) = temp_store();
    let written = store
        .update_typed::<Node>("", "node-1", |_| node("node-1", "10.244.1.0/24"))
        .unwrap();
    assert!(written.is_some());
    let revision = store.revision().unwrap();
    let again = store
        .update_typed::<Node>("", "node-1", |old| old.unwrap())
        .unwrap();
    assert_eq!(again, None);
    assert_eq!(store.revision().unwrap(), revision);
}

#[test]
fn pages_add_up_to_the_whole_list() {
    let (_dir, store) = temp_store();
    for i in 0..25 {
        store
            .put_typed(&pod(&format!("ns-{}", i % 3), &format!("p-{i:02}")))
            .unwrap();
    }
    let (whole, revision) = store.list("Pod").unwrap();
    let whole: Vec<(String, String, serde_json::Value)> = whole
        .into_iter()
        .map(|o| (o.namespace, o.name, o.value))
        .collect();
    let mut paged = Vec::new();
    loop {
        let cursor = paged
            .last()
            .map(|(n, m, _): &(String, String, _)| (n.clone(), m.clone()));
        let after = cursor.as_ref().map(|(n, m)| (n.as_str(), m.as_str()));
        let (at, count) = store
            .list_page_each("Pod", after, 7, |namespace, name, json| {
                let value = serde_json::from_str(json).unwrap();
                paged.push((namespace.to_owned(), name.to_owned(), value));
            })
            .unwrap();
        assert_eq!(at, revision);
        if count < 7 {
            break;
        }
    }
    assert_eq!(paged, whole);
    assert_eq!(paged.len(), 25);
}
