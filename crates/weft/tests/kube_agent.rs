//! `weft agent --kubeconfig` against a real kube-apiserver (the peers'
//! build): the agent runs in the control plane's namespace (its underlay a
//! veth pair there), takes its subnet from its Node's podCIDR, publishes
//! flannel's annotations, programs a route to a flanneld-style peer Node
//! and removes it when that Node is deleted; its Service proxy programs a
//! Service and EndpointSlice written through the API; with the real
//! kube-controller-manager, node IPAM's podCIDR becomes the node's subnet.

mod common;

use std::process::Command;
use std::time::Duration;

use common::control_plane::ControlPlane;
use common::kube_node::*;
use common::wait_until;
use kube::api::{DeleteParams, PostParams};
use serde_json::json;

#[test]
fn the_agent_takes_its_subnet_from_the_node_and_meshes_with_flannel_peers() {
    let cp = ControlPlane::start();
    let ns = cp.ns_name().to_owned();
    underlay(&cp);
    let dir = tempfile::tempdir().unwrap();
    with_api(&cp, |nodes| async move {
        let node_a = node("node-a", "10.244.1.0/24", json!({}));
        nodes.create(&PostParams::default(), &node_a).await.unwrap();
    });
    let _agent = start_agent(&cp, dir.path(), &["--no-proxy"]);
    let log = || std::fs::read_to_string(dir.path().join("agent.log")).unwrap_or_default();

    // The subnet is the podCIDR; the node is annotated as flanneld does it.
    let env = dir.path().join("subnet.env");
    let got = wait_until(Duration::from_secs(20), || {
        std::fs::read_to_string(&env).is_ok_and(|e| e.contains("FLANNEL_SUBNET=10.244.1.1/24"))
    });
    assert!(got.is_some(), "no subnet.env for 10.244.1.0/24:\n{}", log());
    // Published right after subnet.env is written.
    let mut annotated = Default::default();
    let published = wait_until(Duration::from_secs(5), || {
        annotated = with_api(&cp, |nodes| async move {
            let node = nodes.get("node-a").await.unwrap();
            node.metadata.annotations.unwrap_or_default()
        });
        annotated.contains_key("flannel.alpha.coreos.com/backend-type")
    });
    assert!(published.is_some(), "node-a not annotated:\n{}", log());
    assert_eq!(annotated["flannel.alpha.coreos.com/backend-type"], "vxlan");
    assert_eq!(
        annotated["flannel.alpha.coreos.com/public-ip"],
        "198.18.0.11"
    );
    assert!(
        annotated["flannel.alpha.coreos.com/backend-data"].starts_with(r#"{"VNI":1,"VtepMAC":""#)
    );

    // A flanneld node joins: a route to its subnet over the vxlan device.
    let flanneld = json!({
        "flannel.alpha.coreos.com/kube-subnet-manager": "true",
        "flannel.alpha.coreos.com/backend-type": "vxlan",
        "flannel.alpha.coreos.com/backend-data": r#"{"VNI":1,"VtepMAC":"0a:58:c6:12:00:0c"}"#,
        "flannel.alpha.coreos.com/public-ip": "198.18.0.12",
    });
    with_api(&cp, |nodes| async move {
        let node_b = node("node-b", "10.244.2.0/24", flanneld);
        nodes.create(&PostParams::default(), &node_b).await.unwrap();
    });
    let routed = || ip(&ns, &["route", "show", "10.244.2.0/24"]).contains("weft.1");
    let took = wait_until(Duration::from_secs(5), routed);
    assert!(took.is_some(), "no route to node-b's subnet:\n{}", log());
    let fdb = Command::new("bridge")
        .args(["-n", &ns, "fdb", "show", "dev", "weft.1"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&fdb.stdout).contains("0a:58:c6:12:00:0c dst 198.18.0.12"));

    // The Node goes: so do its route, neighbour and FDB entry, within 2 s.
    with_api(&cp, |nodes| async move {
        nodes
            .delete("node-b", &DeleteParams::default())
            .await
            .unwrap();
    });
    let gone = wait_until(Duration::from_secs(2), || !routed());
    assert!(
        gone.is_some(),
        "node-b's route outlived its Node:\n{}",
        log()
    );
}

#[test]
fn services_written_through_the_api_are_programmed() {
    let cp = ControlPlane::start();
    let ns = cp.ns_name().to_owned();
    let dir = tempfile::tempdir().unwrap();
    underlay_and_node(&cp);
    let _agent = start_agent(&cp, dir.path(), &[]);
    let log = || std::fs::read_to_string(dir.path().join("agent.log")).unwrap_or_default();
    // What a user and the EndpointSlice controller would write.
    let element = format!("{} . tcp . 80", create_service(&cp, "web", "10.244.1.5"));
    let took = wait_until(Duration::from_secs(10), || {
        service_programmed(&ns, &element)
    });
    assert!(took.is_some(), "{element} not programmed:\n{}", log());
}

#[test]
fn until_node_ipam_gives_a_pod_cidr_the_agent_is_alive_and_says_why_it_is_not_ready() {
    let cp = ControlPlane::start();
    // As a kubelet registers its Node: no podCIDR yet.
    underlay_and_node_with(&cp, None);
    let dir = tempfile::tempdir().unwrap();
    let _agent = start_agent(
        &cp,
        dir.path(),
        &[
            "--no-proxy",
            "--health-stale-after",
            "1s",
            "--resync",
            "200ms",
        ],
    );
    let log = || std::fs::read_to_string(dir.path().join("agent.log")).unwrap_or_default();
    await_readyz(&cp, &["503", "spec.podCIDR"], Duration::from_secs(10), &log);
    // Longer than the staleness limit: still alive while it waits.
    std::thread::sleep(Duration::from_secs(2));
    let alive = health(&cp, "/healthz").unwrap_or_default();
    assert!(alive.contains("200 OK"), "{alive}\n{}", log());
    assert!(
        log().contains("waiting for the Node to get a podCIDR"),
        "{}",
        log()
    );
    with_api(&cp, |nodes| async move {
        let patch = json!({"spec": {"podCIDR": "10.244.1.0/24", "podCIDRs": ["10.244.1.0/24"]}});
        nodes
            .patch(
                "node-a",
                &kube::api::PatchParams::default(),
                &kube::api::Patch::Merge(&patch),
            )
            .await
            .unwrap();
    });
    await_readyz(&cp, &["200 OK"], Duration::from_secs(10), &log);
}

#[test]
fn while_the_api_server_is_away_the_datapath_stays_and_it_catches_up_on_return() {
    let mut cp = ControlPlane::start();
    let ns = cp.ns_name().to_owned();
    let dir = tempfile::tempdir().unwrap();
    underlay_and_node(&cp);
    let _agent = start_agent(&cp, dir.path(), &["--resync", "200ms"]);
    let log = || std::fs::read_to_string(dir.path().join("agent.log")).unwrap_or_default();
    let before = format!("{} . tcp . 80", create_service(&cp, "before", "10.244.1.5"));
    let programmed = wait_until(Duration::from_secs(10), || service_programmed(&ns, &before));
    assert!(programmed.is_some(), "{before} not programmed:\n{}", log());
    await_readyz(&cp, &["200 OK"], Duration::from_secs(10), &log);

    cp.stop_apiserver();
    // Unready with the reason, the datapath as it was.
    await_readyz(&cp, &["503", "API server"], Duration::from_secs(10), &log);
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        service_programmed(&ns, &before),
        "the Service was removed while the API server was away"
    );
    assert!(ip(&ns, &["link", "show", "weft.1"]).contains("weft.1"));

    cp.restart_apiserver();
    let returned = std::time::Instant::now();
    let after = format!("{} . tcp . 80", create_service(&cp, "after", "10.244.1.6"));
    let seen = wait_until(Duration::from_secs(10), || service_programmed(&ns, &after));
    let took = returned.elapsed();
    assert!(
        seen.is_some(),
        "{after} not programmed after the API server returned:\n{}",
        log()
    );
    eprintln!(
        "a Service created as the API server returned was programmed {took:?} after it was ready"
    );
    assert!(took < Duration::from_secs(3), "took {took:?}:\n{}", log());
    await_readyz(&cp, &["200 OK"], Duration::from_secs(10), &log);
}

#[test]
fn node_ipam_of_the_real_controller_manager_gives_the_agent_its_subnet() {
    let mut cp = ControlPlane::start();
    cp.start_controller_manager("10.244.0.0/16");
    // As a kubelet registers its Node: no podCIDR yet.
    underlay_and_node_with(&cp, None);
    let dir = tempfile::tempdir().unwrap();
    let _agent = start_agent(&cp, dir.path(), &["--no-proxy"]);
    let log = || std::fs::read_to_string(dir.path().join("agent.log")).unwrap_or_default();
    let env = dir.path().join("subnet.env");
    let leased = wait_until(Duration::from_secs(60), || {
        cp.assert_running();
        std::fs::read_to_string(&env).is_ok_and(|e| e.contains("FLANNEL_SUBNET=10.244."))
    });
    assert!(leased.is_some(), "no subnet from node IPAM:\n{}", log());
    let pod_cidr = with_api(&cp, |nodes| async move {
        nodes
            .get("node-a")
            .await
            .unwrap()
            .spec
            .unwrap()
            .pod_cidr
            .unwrap()
    });
    let subnet = std::fs::read_to_string(&env).unwrap();
    let first = pod_cidr.trim_end_matches("0/24").to_string() + "1/24";
    assert!(
        subnet.contains(&format!("FLANNEL_SUBNET={first}")),
        "{pod_cidr} vs\n{subnet}"
    );
}

#[test]
fn with_the_install_manifests_service_account_the_agent_does_its_whole_job() {
    let cp = ControlPlane::start();
    cp.prepare_install();
    cp.kubectl_ok(&[
        "apply",
        "-f",
        concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy/weft.yaml"),
    ]);
    let agent_kubeconfig = cp.kubeconfig_of("weft-system", "weft");
    let ns = cp.ns_name().to_owned();
    let dir = tempfile::tempdir().unwrap();
    underlay_and_node(&cp);
    let _agent = start_agent_as(&cp, &agent_kubeconfig, dir.path(), &[]);
    let log = || std::fs::read_to_string(dir.path().join("agent.log")).unwrap_or_default();
    // Subnet, annotations, heartbeat, Services: all under least privilege.
    await_readyz(&cp, &["200 OK"], Duration::from_secs(20), &log);
    let annotated = with_api(&cp, |nodes| async move {
        let node = nodes.get("node-a").await.unwrap();
        node.metadata.annotations.unwrap_or_default()
    });
    assert_eq!(
        annotated["flannel.alpha.coreos.com/kube-subnet-manager"],
        "true"
    );
    let element = format!("{} . tcp . 80", create_service(&cp, "web", "10.244.1.5"));
    let programmed = wait_until(Duration::from_secs(10), || {
        service_programmed(&ns, &element)
    });
    assert!(programmed.is_some(), "{element} not programmed:\n{}", log());
    let beat = wait_until(Duration::from_secs(10), || {
        cp.kubectl(&["get", "lease", "weft-node-a", "-n", "kube-node-lease"])
            .status
            .success()
    });
    assert!(beat.is_some(), "no heartbeat Lease:\n{}", log());
    assert!(
        !log().contains("Forbidden") && !log().contains("forbidden"),
        "{}",
        log()
    );
}
