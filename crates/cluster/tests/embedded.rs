//! The seam on the embedded store: what a consumer sees from its streams
//! as the store changes, including a re-list after compaction.

use std::time::Duration;

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::events::v1::Event as KubeEvent;
use serde_json::json;
use weft_cluster::embedded::Embedded;
use weft_cluster::leases::{BackendData, LeaseRequest, NodePublication, SubnetRange};
use weft_cluster::{Cluster, Event, Liveness, SubnetManager, Warning, Warnings};
use weft_store::Store;

const POLL: Duration = Duration::from_millis(20);

fn service(namespace: &str, name: &str) -> Service {
    serde_json::from_value(json!({"metadata": {"namespace": namespace, "name": name},
        "spec": {"clusterIP": "10.96.0.10", "ports": [{"port": 80}]}}))
    .unwrap()
}

fn name_of(event: &Event<Service>) -> String {
    match event {
        Event::Apply(s) | Event::Delete(s) | Event::InitApply(s) => {
            s.metadata.name.clone().unwrap()
        }
        Event::Init => "<init>".into(),
        Event::InitDone => "<done>".into(),
    }
}

/// The next event, failing the test after 5 s.
async fn next<T, S: Stream<Item = Result<Event<T>, weft_cluster::ClusterError>> + Unpin>(
    stream: &mut S,
) -> Event<T> {
    tokio::time::timeout(Duration::from_secs(5), stream.next())
        .await
        .expect("an event within 5 s")
        .expect("the stream never ends")
        .expect("no error")
}

/// Events up to and including the next `InitDone`.
async fn through_init_done(stream: &mut weft_cluster::EventStream<Service>) -> Vec<Event<Service>> {
    let mut events = Vec::new();
    loop {
        let event = next(stream).await;
        let done = matches!(event, Event::InitDone);
        events.push(event);
        if done {
            return events;
        }
    }
}

fn open(dir: &tempfile::TempDir) -> (Store, Embedded) {
    let store = Store::open(&dir.path().join("cluster.db")).unwrap();
    let cluster = Embedded::new(store.clone(), "weft", POLL);
    (store, cluster)
}

#[tokio::test]
async fn a_watch_lists_in_pages_then_follows_changes() {
    let dir = tempfile::tempdir().unwrap();
    let (store, cluster) = open(&dir);
    for i in 0..1203 {
        store
            .put_typed(&service("demo", &format!("s-{i:04}")))
            .unwrap();
    }
    let mut stream = cluster.watch::<Service>();
    let events = through_init_done(&mut stream).await;
    assert!(matches!(events[0], Event::Init));
    let listed: Vec<String> = events[1..events.len() - 1].iter().map(name_of).collect();
    let want: Vec<String> = (0..1203).map(|i| format!("s-{i:04}")).collect();
    assert_eq!(
        listed, want,
        "every object once, in order, over three pages"
    );
    store.put_typed(&service("demo", "new")).unwrap();
    assert!(
        matches!(next(&mut stream).await, Event::Apply(s) if s.metadata.name.as_deref() == Some("new"))
    );
    store.delete("Service", "demo", "s-0000").unwrap();
    assert!(
        matches!(next(&mut stream).await, Event::Delete(s) if s.metadata.name.as_deref() == Some("s-0000"))
    );
    // Other kinds do not show up, unreadable objects are skipped.
    store
        .put("Service", "demo", "broken", &json!({"spec": "not a spec"}))
        .unwrap();
    let mut node = Node::default();
    node.metadata.name = Some("n".into());
    store.put_typed(&node).unwrap();
    store.put_typed(&service("demo", "after")).unwrap();
    assert_eq!(name_of(&next(&mut stream).await), "after");
}

#[tokio::test]
async fn a_compacted_log_is_a_relist_in_the_stream_not_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let (store, cluster) = open(&dir);
    store.put_typed(&service("demo", "a")).unwrap();
    store.put_typed(&service("demo", "b")).unwrap();
    let mut stream = cluster.watch::<Service>();
    through_init_done(&mut stream).await;
    // While the consumer is not looking: b goes, c comes, the log is
    // compacted past what the stream has seen.
    let mut other = cluster.watch::<Service>();
    through_init_done(&mut other).await;
    store.delete("Service", "demo", "b").unwrap();
    store.put_typed(&service("demo", "c")).unwrap();
    store.compact(store.revision().unwrap()).unwrap();
    let events: Vec<String> = through_init_done(&mut stream)
        .await
        .iter()
        .map(name_of)
        .collect();
    assert_eq!(events, ["<init>", "a", "c", "<done>"]);
}

#[tokio::test]
async fn leases_are_acquired_renewed_and_followed() {
    let dir = tempfile::tempdir().unwrap();
    let (_store, cluster) = open(&dir);
    let request = |node: &str, ip: &str| LeaseRequest {
        node: node.into(),
        public_ip: ip.parse().unwrap(),
        backend: json!({"vtepMAC": "02:00:00:00:00:01"}),
        backend_data: BackendData::Vxlan {
            vni: 1,
            vtep_mac: "02:00:00:00:00:01".into(),
        },
        ttl: Duration::from_secs(60),
        allowed: SubnetRange {
            min: "10.244.1.0/24".parse().unwrap(),
            max: "10.244.255.0/24".parse().unwrap(),
        },
    };
    let first_free = |taken: &[ipnet::IpNet]| {
        let pool: ipnet::IpNet = "10.244.0.0/16".parse().unwrap();
        pool.subnets(24).unwrap().find(|s| !taken.contains(s))
    };
    let a = cluster
        .acquire(&request("node-a", "198.18.0.11"), first_free)
        .await
        .unwrap();
    assert_eq!(a.subnet.to_string(), "10.244.0.0/24");
    let mut leases = cluster.watch_leases();
    assert!(matches!(next(&mut leases).await, Event::Init));
    assert!(matches!(next(&mut leases).await, Event::InitApply(l) if l.node == "node-a"));
    assert!(matches!(next(&mut leases).await, Event::InitDone));
    let b = cluster
        .acquire(&request("node-b", "198.18.0.12"), first_free)
        .await
        .unwrap();
    assert_eq!(b.subnet.to_string(), "10.244.1.0/24");
    assert!(matches!(next(&mut leases).await, Event::Apply(l) if l == b));
    let renewed = cluster
        .renew("node-a", Duration::from_secs(120))
        .await
        .unwrap();
    assert!(renewed.expires_at > a.expires_at);
    assert!(matches!(next(&mut leases).await, Event::Apply(l) if l.node == "node-a"));
    // The same node asking again keeps its subnet.
    let again = cluster
        .acquire(&request("node-b", "198.18.0.12"), first_free)
        .await
        .unwrap();
    assert_eq!(again.subnet, b.subnet);
}

#[tokio::test]
async fn a_published_node_keeps_what_others_wrote() {
    let dir = tempfile::tempdir().unwrap();
    let (store, cluster) = open(&dir);
    let mut labelled = Node::default();
    labelled.metadata.name = Some("node-a".into());
    labelled.metadata.labels = Some([("zone".to_string(), "x".to_string())].into());
    store.put_typed(&labelled).unwrap();
    let publication = NodePublication {
        node: "node-a".into(),
        subnet: "10.244.3.0/24".parse().unwrap(),
        public_ip: "198.18.0.11".parse().unwrap(),
        backend: weft_cluster::leases::BackendData::HostGw,
    };
    cluster.publish_node(&publication).await.unwrap();
    let revision = store.revision().unwrap();
    cluster.publish_node(&publication).await.unwrap();
    assert_eq!(
        store.revision().unwrap(),
        revision,
        "unchanged: not written again"
    );
    let node: Node = store.get_typed("", "node-a").unwrap().unwrap();
    assert_eq!(node.metadata.labels.unwrap()["zone"], "x");
    assert_eq!(
        node.spec.unwrap().pod_cidr.as_deref(),
        Some("10.244.3.0/24")
    );
}

#[tokio::test]
async fn heartbeats_make_nodes_live_and_the_file_is_checked() {
    let dir = tempfile::tempdir().unwrap();
    let (_store, cluster) = open(&dir);
    assert!(cluster.live_nodes().await.unwrap().is_empty());
    cluster
        .beat("node-a", Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(
        cluster.live_nodes().await.unwrap(),
        ["node-a".to_string()].into()
    );
    assert_eq!(cluster.problem(), None);
    std::fs::remove_file(dir.path().join("cluster.db")).unwrap();
    let problem = cluster.problem().expect("a removed file is a problem");
    assert!(problem.contains("cluster.db"), "{problem}");
}

#[tokio::test]
async fn a_scoped_watch_leaves_out_labelled_objects_and_drops_those_that_gain_the_label() {
    let dir = tempfile::tempdir().unwrap();
    let (store, cluster) = open(&dir);
    let labelled = |name: &str| {
        let mut svc = service("demo", name);
        svc.metadata.labels = Some(
            [(
                "service.kubernetes.io/service-proxy-name".to_string(),
                "other".to_string(),
            )]
            .into(),
        );
        svc
    };
    store.put_typed(&service("demo", "mine")).unwrap();
    store.put_typed(&labelled("theirs")).unwrap();
    let mut stream =
        cluster.watch_without::<Service>(&["service.kubernetes.io/service-proxy-name"]);
    let listed: Vec<String> = through_init_done(&mut stream)
        .await
        .iter()
        .map(name_of)
        .collect();
    assert_eq!(listed, ["<init>", "mine", "<done>"]);
    // "mine" is handed to another proxy: for this watcher it is gone.
    store.put_typed(&labelled("mine")).unwrap();
    assert!(
        matches!(next(&mut stream).await, Event::Delete(s) if s.metadata.name.as_deref() == Some("mine"))
    );
    store.put_typed(&service("demo", "back")).unwrap();
    assert_eq!(name_of(&next(&mut stream).await), "back");
}

#[tokio::test]
async fn a_warning_is_an_event_on_the_service_and_a_repeat_replaces_it() {
    let dir = tempfile::tempdir().unwrap();
    let (store, cluster) = open(&dir);
    let mut svc = service("demo", "web");
    svc.metadata.uid = Some("uid-web".into());
    store.put_typed(&svc).unwrap();
    let warning = |note: &str| Warning {
        reason: "FailedToProgram",
        note: note.into(),
        node: "node-1".into(),
    };
    cluster
        .warn_service("demo", "web", &warning("first"))
        .await
        .unwrap();
    cluster
        .warn_service("demo", "web", &warning("second"))
        .await
        .unwrap();
    // A Service that is gone gets none.
    cluster
        .warn_service("demo", "gone", &warning("lost"))
        .await
        .unwrap();
    let (events, _) = store.list_typed::<KubeEvent>().unwrap();
    assert_eq!(events.len(), 1, "{events:?}");
    let event = &events[0];
    assert_eq!(event.note.as_deref(), Some("second"));
    assert_eq!(event.metadata.namespace.as_deref(), Some("demo"));
    let regarding = event.regarding.clone().unwrap();
    assert_eq!(
        (regarding.name.as_deref(), regarding.uid.as_deref()),
        (Some("web"), Some("uid-web"))
    );
}
