//! Kubernetes' own components, built by `scripts/setup.sh --peers`, start and
//! answer: etcd and kube-apiserver run inside a network namespace of the
//! test's own, the apiserver becomes ready, and `kubectl get --raw
//! /version` reports the pinned release (see `common::control_plane`).

mod common;

use std::process::Command;

use common::control_plane::{peer, text, ControlPlane, KUBERNETES_VERSION};

#[test]
fn etcd_and_kube_apiserver_start_and_report_the_pinned_version() {
    let kubectl = peer("kubectl");
    let control_plane = ControlPlane::start();
    let out = control_plane.kubectl_raw("/version");
    assert!(
        out.status.success(),
        "kubectl get --raw /version: {}",
        text(&out)
    );
    let version: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("/version answers JSON");
    assert_eq!(version["gitVersion"], KUBERNETES_VERSION, "{version}");
    assert_eq!(version["minor"], "36", "{version}");

    let client = Command::new(kubectl)
        .args(["version", "--client", "--output=json"])
        .output()
        .expect("running kubectl version");
    let client: serde_json::Value =
        serde_json::from_slice(&client.stdout).expect("kubectl version answers JSON");
    assert_eq!(
        client["clientVersion"]["gitVersion"], KUBERNETES_VERSION,
        "{client}"
    );
}
