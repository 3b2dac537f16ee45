//! weft-cluster's Kubernetes source against a real kube-apiserver (the
//! peers' build, in a namespace of the test's own): a watch lists what
//! exists, then follows what is created and deleted through the API.

mod common;

use std::time::Duration;

use common::control_plane::ControlPlane;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Service;
use kube::api::{DeleteParams, PostParams};
use kube::Api;
use serde_json::json;
use weft_cluster::kubernetes::Kubernetes;
use weft_cluster::{Cluster, Event, EventStream};

fn service(name: &str) -> Service {
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"ports": [{"port": 80}]}
    }))
    .unwrap()
}

/// The next event of `stream`, failing the test after 20 s.
async fn next(stream: &mut EventStream<Service>) -> Event<Service> {
    tokio::time::timeout(Duration::from_secs(20), stream.next())
        .await
        .expect("an event within 20 s")
        .expect("the watch goes on")
        .expect("no watch error")
}

fn name(event: &Event<Service>) -> String {
    match event {
        Event::Apply(s) | Event::Delete(s) | Event::InitApply(s) => {
            s.metadata.name.clone().unwrap_or_default()
        }
        Event::Init => "<init>".into(),
        Event::InitDone => "<done>".into(),
    }
}

#[test]
fn a_kubernetes_watch_lists_then_follows_the_api_server() {
    let control_plane = ControlPlane::start();
    let kubeconfig = control_plane.kubeconfig.clone();
    control_plane
        .ns()
        .run_in(|| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let cluster = Kubernetes::from_kubeconfig(&kubeconfig).await.unwrap();
                let api: Api<Service> = Api::namespaced(cluster.client().clone(), "default");
                api.create(&PostParams::default(), &service("before"))
                    .await
                    .unwrap();
                let mut watch = cluster.watch::<Service>();
                let mut listed = Vec::new();
                loop {
                    let event = next(&mut watch).await;
                    let done = matches!(event, Event::InitDone);
                    listed.push(name(&event));
                    if done {
                        break;
                    }
                }
                assert_eq!(listed.first().map(String::as_str), Some("<init>"));
                assert!(listed.contains(&"before".to_string()), "{listed:?}");
                api.create(&PostParams::default(), &service("after"))
                    .await
                    .unwrap();
                let event = next(&mut watch).await;
                assert!(
                    matches!(&event, Event::Apply(s) if s.metadata.name.as_deref() == Some("after")),
                    "{}",
                    name(&event)
                );
                api.delete("before", &DeleteParams::default()).await.unwrap();
                let event = next(&mut watch).await;
                assert!(
                    matches!(&event, Event::Delete(s) if s.metadata.name.as_deref() == Some("before")),
                    "{}",
                    name(&event)
                );
                assert_eq!(cluster.problem(), None);
            })
        })
        .unwrap();
}
