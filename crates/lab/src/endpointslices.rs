//! The lab's EndpointSlice controller: which pods back each Service, on
//! which ports and in what condition, computed from the stored Services and
//! Pods as Kubernetes' controller does — one slice per distinct list of
//! resolved ports, at most [`MAX_ENDPOINTS`] endpoints each, a placeholder
//! slice for a Service that selects nothing, none for a Service without a
//! selector. Slices are written only when their content changes and stale
//! ones are deleted, so agents watching them are not woken for nothing.
//!
//! [`desired`] and [`plan`] are pure; [`sync`] is the one store call. It owns
//! only the slices labelled as managed by it; it must not change Services
//! or Pods. Slice names are derived from the Service and its port list
//! (not random as in Kubernetes), so recomputing them changes nothing.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ObjectReference, Pod, Service, ServicePort};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::Resource;
use weft_store::{Store, StoreError};

use crate::objects::{key, now, random_uid};
use crate::services::{protocol, HEADLESS};

/// The label tying a slice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
pub const MANAGED_BY_LABEL: &str = "endpointslice.kubernetes.io/managed-by";
/// This controller's value of [`MANAGED_BY_LABEL`].
pub const MANAGED_BY: &str = "endpointslice-controller.weft.dev";
/// Set on the slices of headless Services (kube-proxy skips them).
pub const HEADLESS_LABEL: &str = "service.kubernetes.io/headless";
/// Kubernetes' default `--max-endpoints-per-slice`.
pub const MAX_ENDPOINTS: usize = 100;

/// The slices `svc` should have, given every pod of the lab and the slices
/// stored for it now (endpoints stay in the slice that holds them).
pub fn desired(svc: &Service, pods: &[Pod], existing: &[EndpointSlice]) -> Vec<EndpointSlice> {
    let Some(spec) = svc.spec.as_ref() else {
        return Vec::new();
    };
    let Some(selector) = spec.selector.as_ref().filter(|s| !s.is_empty()) else {
        return Vec::new();
    };
    if spec.type_.as_deref() == Some("ExternalName") {
        return Vec::new();
    }
    let namespace = key(svc).0;
    let mut chosen: Vec<&Pod> = pods
        .iter()
        .filter(|p| key(*p).0 == namespace && matches(selector, p))
        .collect();
    chosen.sort_by_key(|p| key(*p).1);
    let mut groups: BTreeMap<String, (Vec<EndpointPort>, Vec<Endpoint>)> = BTreeMap::new();
    for pod in chosen {
        let Some(endpoint) = endpoint(svc, pod) else {
            continue;
        };
        let ports = endpoint_ports(svc, pod);
        groups
            .entry(port_key(&ports))
            .or_insert_with(|| (ports, Vec::new()))
            .1
            .push(endpoint);
    }
    if groups.is_empty() {
        groups.insert(port_key(&[]), (Vec::new(), Vec::new()));
    }
    let held = held_by(existing);
    groups
        .into_iter()
        .flat_map(|(group, (ports, endpoints))| chunked(svc, &group, &ports, endpoints, &held))
        .collect()
}

/// Address → the name of the slice (one of ours) holding it.
fn held_by(existing: &[EndpointSlice]) -> BTreeMap<&str, &str> {
    existing
        .iter()
        .filter(|s| managed_by_us(s))
        .flat_map(|s| {
            let name = s.metadata.name.as_deref().unwrap_or_default();
            s.endpoints
                .iter()
                .flatten()
                .filter_map(move |e| Some((e.addresses.first()?.as_str(), name)))
        })
        .collect()
}

fn matches(selector: &BTreeMap<String, String>, pod: &Pod) -> bool {
    let labels = pod.metadata.labels.clone().unwrap_or_default();
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// The slices of one port list, `base`, `base-1`, … with at most
/// [`MAX_ENDPOINTS`] endpoints each, or one empty slice (the placeholder of
/// a Service nothing backs). As in Kubernetes' controller, an endpoint
/// stays in the slice that holds it and new ones fill the slices with room
/// before a new slice is made, so a pod coming or going rewrites one slice
/// rather than shifting every later one.
fn chunked(
    svc: &Service,
    group: &str,
    ports: &[EndpointPort],
    endpoints: Vec<Endpoint>,
    held: &BTreeMap<&str, &str>,
) -> Vec<EndpointSlice> {
    let base = format!("{}-{}", key(svc).1, short_hash(group));
    if endpoints.is_empty() {
        return vec![slice(svc, base, ports, Vec::new())];
    }
    let name_of = |i: usize| match i {
        0 => base.clone(),
        i => format!("{base}-{i}"),
    };
    let index_of = |name: &str| -> Option<usize> {
        match name.strip_prefix(base.as_str())? {
            "" => Some(0),
            rest => rest.strip_prefix('-')?.parse().ok().filter(|i| *i > 0),
        }
    };
    let mut slices: BTreeMap<usize, Vec<Endpoint>> = BTreeMap::new();
    let mut homeless = Vec::new();
    for ep in endpoints {
        let home = ep
            .addresses
            .first()
            .and_then(|a| held.get(a.as_str()))
            .and_then(|name| index_of(name));
        match home {
            Some(i) if slices.get(&i).map_or(0, Vec::len) < MAX_ENDPOINTS => {
                slices.entry(i).or_default().push(ep)
            }
            _ => homeless.push(ep),
        }
    }
    let mut i = 0;
    for ep in homeless {
        while slices.get(&i).map_or(0, Vec::len) >= MAX_ENDPOINTS {
            i += 1;
        }
        slices.entry(i).or_default().push(ep);
    }
    slices
        .into_iter()
        .map(|(i, eps)| slice(svc, name_of(i), ports, eps))
        .collect()
}

fn slice(
    svc: &Service,
    name: String,
    ports: &[EndpointPort],
    endpoints: Vec<Endpoint>,
) -> EndpointSlice {
    let (namespace, service) = key(svc);
    let mut labels: BTreeMap<String, String> = svc
        .metadata
        .labels
        .clone()
        .unwrap_or_default()
        .into_iter()
        .filter(|(k, _)| {
            ![SERVICE_NAME_LABEL, MANAGED_BY_LABEL, HEADLESS_LABEL].contains(&k.as_str())
        })
        .collect();
    labels.insert(SERVICE_NAME_LABEL.into(), service.clone());
    labels.insert(MANAGED_BY_LABEL.into(), MANAGED_BY.into());
    if svc.spec.as_ref().and_then(|s| s.cluster_ip.as_deref()) == Some(HEADLESS) {
        labels.insert(HEADLESS_LABEL.into(), String::new());
    }
    EndpointSlice {
        metadata: ObjectMeta {
            name: Some(name),
            generate_name: Some(format!("{service}-")),
            namespace: Some(namespace),
            labels: Some(labels),
            owner_references: Some(vec![OwnerReference {
                api_version: "v1".into(),
                kind: "Service".into(),
                name: service,
                uid: svc.metadata.uid.clone().unwrap_or_default(),
                controller: Some(true),
                block_owner_deletion: Some(true),
            }]),
            ..Default::default()
        },
        address_type: "IPv4".into(),
        endpoints: Some(endpoints),
        ports: Some(ports.to_vec()),
    }
}

/// A pod as an endpoint of `svc`: its IPv4 address, node and conditions —
/// `serving` while its containers run, `terminating` once it is being
/// deleted, `ready` when serving and not terminating (always, with
/// `publishNotReadyAddresses`). Pods without an address, or finished, are
/// not endpoints.
pub fn endpoint(svc: &Service, pod: &Pod) -> Option<Endpoint> {
    let status = pod.status.as_ref()?;
    if matches!(status.phase.as_deref(), Some("Succeeded" | "Failed")) {
        return None;
    }
    let ip = pod_ipv4(pod)?;
    let spec = svc.spec.clone().unwrap_or_default();
    let publish = spec.publish_not_ready_addresses == Some(true);
    let terminating = pod.metadata.deletion_timestamp.is_some();
    let serving = containers_ready(pod);
    let (namespace, name) = key(pod);
    let pod_spec = pod.spec.clone().unwrap_or_default();
    let service = key(svc).1;
    Some(Endpoint {
        addresses: vec![ip],
        conditions: Some(EndpointConditions {
            ready: Some(publish || (serving && !terminating)),
            serving: Some(serving),
            terminating: Some(terminating),
        }),
        hostname: pod_spec
            .hostname
            .filter(|_| pod_spec.subdomain.as_deref() == Some(service.as_str())),
        node_name: pod_spec.node_name,
        target_ref: Some(ObjectReference {
            kind: Some("Pod".into()),
            namespace: Some(namespace),
            name: Some(name),
            uid: pod.metadata.uid.clone(),
            ..Default::default()
        }),
        ..Default::default()
    })
}

fn pod_ipv4(pod: &Pod) -> Option<String> {
    let status = pod.status.as_ref()?;
    status
        .pod_ips
        .iter()
        .flatten()
        .map(|ip| ip.ip.as_str())
        .chain(status.pod_ip.as_deref())
        .find(|ip| ip.parse::<std::net::Ipv4Addr>().is_ok())
        .map(String::from)
}

/// Whether the kubelet reports the pod running with every container ready.
pub fn containers_ready(pod: &Pod) -> bool {
    let Some(status) = pod.status.as_ref() else {
        return false;
    };
    let statuses = status.container_statuses.clone().unwrap_or_default();
    let wanted = pod.spec.as_ref().map_or(0, |s| s.containers.len());
    let ready_condition = status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "Ready")
        .is_none_or(|c| c.status == "True");
    status.phase.as_deref() == Some("Running")
        && ready_condition
        && !statuses.is_empty()
        && statuses.len() >= wanted
        && statuses
            .iter()
            .all(|c| c.ready && c.state.as_ref().is_some_and(|s| s.running.is_some()))
}

/// The pod's ports for each Service port it can serve: a numeric
/// targetPort as is, a named one resolved against the pod's container
/// ports of the same protocol; a name the pod lacks leaves that port out.
pub fn endpoint_ports(svc: &Service, pod: &Pod) -> Vec<EndpointPort> {
    let ports = svc
        .spec
        .as_ref()
        .and_then(|s| s.ports.clone())
        .unwrap_or_default();
    ports
        .iter()
        .filter_map(|port| {
            Some(EndpointPort {
                name: Some(port.name.clone().unwrap_or_default()),
                port: Some(target_port(port, pod)?),
                protocol: Some(protocol(port).to_string()),
                app_protocol: port.app_protocol.clone(),
            })
        })
        .collect()
}

fn target_port(port: &ServicePort, pod: &Pod) -> Option<i32> {
    match &port.target_port {
        None | Some(IntOrString::Int(0)) => Some(port.port),
        Some(IntOrString::Int(n)) => Some(*n),
        Some(IntOrString::String(name)) => pod
            .spec
            .as_ref()?
            .containers
            .iter()
            .flat_map(|c| c.ports.iter().flatten())
            .find(|p| {
                p.name.as_deref() == Some(name.as_str())
                    && p.protocol.as_deref().unwrap_or("TCP") == protocol(port)
            })
            .map(|p| p.container_port),
    }
}

/// A port list as text, the key endpoints are grouped by.
fn port_key(ports: &[EndpointPort]) -> String {
    ports
        .iter()
        .map(|p| {
            format!(
                "{}/{}/{}",
                p.name.as_deref().unwrap_or(""),
                p.protocol.as_deref().unwrap_or(""),
                p.port.unwrap_or(0)
            )
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// 32 bits of FNV-1a, as 8 hex digits: stable across builds and platforms.
fn short_hash(text: &str) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in text.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{:08x}", (hash >> 32) as u32 ^ hash as u32)
}

/// What [`sync`] must change in the store.
#[derive(Debug, Default, PartialEq)]
pub struct Plan {
    /// Slices to create or replace (with the UID and creation time of the
    /// stored version when there is one).
    pub write: Vec<EndpointSlice>,
    /// (namespace, name) of slices to delete.
    pub delete: Vec<(String, String)>,
}

/// Compares `desired` with the `existing` slices (only this controller's
/// count), ignoring what the store stamps (resourceVersion) and what a
/// slice keeps for life (UID, creation time).
pub fn plan(desired: Vec<EndpointSlice>, existing: &[EndpointSlice]) -> Plan {
    let mut ours: BTreeMap<(String, String), &EndpointSlice> = existing
        .iter()
        .filter(|s| managed_by_us(s))
        .map(|s| (key(s), s))
        .collect();
    let mut out = Plan::default();
    for mut want in desired {
        if let Some(have) = ours.remove(&key(&want)) {
            want.metadata.uid = have.metadata.uid.clone();
            want.metadata.creation_timestamp = have.metadata.creation_timestamp.clone();
            if comparable(have) == want {
                continue;
            }
        }
        out.write.push(want);
    }
    out.delete = ours.into_keys().collect();
    out
}

fn managed_by_us(slice: &EndpointSlice) -> bool {
    slice
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(MANAGED_BY_LABEL))
        .is_some_and(|v| v == MANAGED_BY)
}

fn comparable(slice: &EndpointSlice) -> EndpointSlice {
    let mut s = slice.clone();
    s.metadata.resource_version = None;
    s
}

/// How many slices a [`sync`] wrote and deleted.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Synced {
    pub written: usize,
    pub deleted: usize,
}

/// Brings the stored EndpointSlices in line with the stored Services and
/// Pods. The caller serialises syncs (two at once could write stale
/// results in the wrong order).
pub fn sync(store: &Store) -> Result<Synced, StoreError> {
    let (services, _) = store.list_typed::<Service>()?;
    let (pods, _) = store.list_typed::<Pod>()?;
    let (slices, _) = store.list_typed::<EndpointSlice>()?;
    let mut slices_of: BTreeMap<(String, String), Vec<EndpointSlice>> = BTreeMap::new();
    for slice in &slices {
        if let Some(service) = slice
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(SERVICE_NAME_LABEL))
        {
            slices_of
                .entry((key(slice).0, service.clone()))
                .or_default()
                .push(slice.clone());
        }
    }
    let wanted = services
        .iter()
        .flat_map(|s| {
            desired(
                s,
                &pods,
                slices_of.get(&key(s)).map_or(&[][..], Vec::as_slice),
            )
        })
        .collect();
    let plan = plan(wanted, &slices);
    for mut slice in plan.write.iter().cloned() {
        if slice.metadata.uid.is_none() {
            slice.metadata.uid = Some(random_uid());
            slice.metadata.creation_timestamp = Some(now());
        }
        store.put_typed(&slice)?;
    }
    for (namespace, name) in &plan.delete {
        store.delete(EndpointSlice::KIND, namespace, name)?;
    }
    Ok(Synced {
        written: plan.write.len(),
        deleted: plan.delete.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use serde_json::json;

    fn svc(spec: serde_json::Value) -> Service {
        serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "demo", "uid": "svc-uid",
                         "labels": {"team": "a", "kubernetes.io/service-name": "spoof"}},
            "spec": spec,
        }))
        .unwrap()
    }

    fn web_svc() -> Service {
        svc(
            json!({"clusterIP": "10.96.1.1", "selector": {"app": "web"}, "ports": [
            {"name": "http", "port": 80, "protocol": "TCP", "targetPort": "http"},
            {"name": "raw", "port": 81, "protocol": "TCP", "targetPort": 9000}]}),
        )
    }

    /// A running pod labelled app=web with `ports` (name, number, protocol).
    fn pod(name: &str, ip: &str, ports: &[(&str, i32, &str)]) -> Pod {
        let ports: Vec<serde_json::Value> = ports
            .iter()
            .map(|(n, p, proto)| json!({"name": n, "containerPort": p, "protocol": proto}))
            .collect();
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "demo", "uid": format!("uid-{name}"), "labels": {"app": "web"}},
            "spec": {"nodeName": "node-1", "containers": [{"name": "c", "ports": ports}]},
            "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
                "conditions": [{"type": "Ready", "status": "True"}],
                "containerStatuses": [{"name": "c", "image": "x", "imageID": "", "ready": true,
                    "restartCount": 0, "state": {"running": {}}}]},
        }))
        .unwrap()
    }

    fn http(name: &str, ip: &str, port: i32) -> Pod {
        pod(name, ip, &[("http", port, "TCP")])
    }

    fn addresses(slice: &EndpointSlice) -> Vec<String> {
        slice
            .endpoints
            .iter()
            .flatten()
            .flat_map(|e| e.addresses.clone())
            .collect()
    }

    fn ports(slice: &EndpointSlice) -> Vec<(String, i32)> {
        slice
            .ports
            .iter()
            .flatten()
            .map(|p| (p.name.clone().unwrap(), p.port.unwrap()))
            .collect()
    }

    #[test]
    fn named_target_ports_resolve_per_pod_and_group_slices() {
        let pods = vec![
            http("web-0", "10.244.1.2", 8080),
            http("web-1", "10.244.2.2", 8080),
            http("web-2", "10.244.3.2", 8443),
            pod("web-3", "10.244.3.3", &[]),
        ];
        let slices = desired(&web_svc(), &pods, &[]);
        assert_eq!(slices.len(), 3, "{slices:#?}");
        let by_ports: BTreeMap<Vec<(String, i32)>, Vec<String>> =
            slices.iter().map(|s| (ports(s), addresses(s))).collect();
        let http_raw = |n| vec![("http".to_string(), n), ("raw".to_string(), 9000)];
        assert_eq!(by_ports[&http_raw(8080)], vec!["10.244.1.2", "10.244.2.2"]);
        assert_eq!(by_ports[&http_raw(8443)], vec!["10.244.3.2"]);
        // No port named http: only the numeric targetPort is left.
        assert_eq!(
            by_ports[&vec![("raw".to_string(), 9000)]],
            vec!["10.244.3.3"]
        );
        let names: Vec<&str> = slices
            .iter()
            .map(|s| s.metadata.name.as_deref().unwrap())
            .collect();
        assert!(
            names
                .iter()
                .all(|n| n.starts_with("web-") && n.len() == "web-".len() + 8),
            "{names:?}"
        );
        assert_eq!(
            slices,
            desired(&web_svc(), &pods, &[]),
            "names and order are deterministic"
        );
    }

    #[test]
    fn named_ports_match_the_protocol_too() {
        let s = svc(json!({"selector": {"app": "web"}, "ports": [
            {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": "dns"}]}));
        let both = pod(
            "a",
            "10.244.1.2",
            &[("dns", 5353, "TCP"), ("dns", 5354, "UDP")],
        );
        let tcp_only = pod("b", "10.244.1.3", &[("dns", 5353, "TCP")]);
        let slices = desired(&s, &[both, tcp_only], &[]);
        let by_ports: BTreeMap<Vec<(String, i32)>, Vec<String>> =
            slices.iter().map(|s| (ports(s), addresses(s))).collect();
        assert_eq!(
            by_ports[&vec![("dns".to_string(), 5354)]],
            vec!["10.244.1.2"]
        );
        assert_eq!(by_ports[&vec![]], vec!["10.244.1.3"]);
        let udp = slices.iter().find(|s| !ports(s).is_empty()).unwrap();
        assert_eq!(
            udp.ports.as_ref().unwrap()[0].protocol.as_deref(),
            Some("UDP")
        );
    }

    #[test]
    fn slices_carry_labels_owner_and_endpoint_details() {
        let slices = desired(&web_svc(), &[http("web-0", "10.244.1.2", 8080)], &[]);
        let s = &slices[0];
        let labels = s.metadata.labels.as_ref().unwrap();
        assert_eq!(labels[SERVICE_NAME_LABEL], "web");
        assert_eq!(labels[MANAGED_BY_LABEL], MANAGED_BY);
        assert_eq!(labels["team"], "a");
        assert!(!labels.contains_key(HEADLESS_LABEL));
        assert_eq!(s.metadata.namespace.as_deref(), Some("demo"));
        assert_eq!(s.address_type, "IPv4");
        let owner = &s.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.name.as_str(), owner.uid.as_str()),
            ("Service", "web", "svc-uid")
        );
        assert_eq!(owner.controller, Some(true));
        let ep = &s.endpoints.as_ref().unwrap()[0];
        assert_eq!(ep.node_name.as_deref(), Some("node-1"));
        let target = ep.target_ref.as_ref().unwrap();
        assert_eq!(target.kind.as_deref(), Some("Pod"));
        assert_eq!(target.name.as_deref(), Some("web-0"));
        assert_eq!(target.uid.as_deref(), Some("uid-web-0"));
        let c = ep.conditions.clone().unwrap();
        assert_eq!(
            (c.ready, c.serving, c.terminating),
            (Some(true), Some(true), Some(false))
        );
        let json = serde_json::to_value(s).unwrap();
        assert_eq!(json["apiVersion"], "discovery.k8s.io/v1");
        assert_eq!(json["kind"], "EndpointSlice");
    }

    #[test]
    fn terminating_pods_serve_but_are_not_ready() {
        let mut p = http("web-0", "10.244.1.2", 8080);
        p.metadata.deletion_timestamp = Some(Time(Default::default()));
        let c = endpoint(&web_svc(), &p).unwrap().conditions.unwrap();
        assert_eq!(
            (c.ready, c.serving, c.terminating),
            (Some(false), Some(true), Some(true))
        );
        let mut publish = web_svc();
        publish.spec.as_mut().unwrap().publish_not_ready_addresses = Some(true);
        assert_eq!(
            endpoint(&publish, &p).unwrap().conditions.unwrap().ready,
            Some(true)
        );
        // Containers not running: neither ready nor serving.
        let mut stopped = http("web-1", "10.244.1.3", 8080);
        stopped
            .status
            .as_mut()
            .unwrap()
            .container_statuses
            .as_mut()
            .unwrap()[0]
            .ready = false;
        let c = endpoint(&web_svc(), &stopped).unwrap().conditions.unwrap();
        assert_eq!((c.ready, c.serving), (Some(false), Some(false)));
        // Finished or address-less pods are no endpoints.
        let mut done = http("web-2", "10.244.1.4", 8080);
        done.status.as_mut().unwrap().phase = Some("Succeeded".into());
        assert!(endpoint(&web_svc(), &done).is_none());
        let mut pending = http("web-3", "", 8080);
        pending.status.as_mut().unwrap().pod_ips = None;
        assert!(endpoint(&web_svc(), &pending).is_none());
    }

    #[test]
    fn selectors_namespaces_headless_and_placeholders() {
        let mut other_ns = http("web-9", "10.244.1.9", 8080);
        other_ns.metadata.namespace = Some("other".into());
        let mut other_app = http("db-0", "10.244.1.8", 8080);
        other_app.metadata.labels = Some([("app".to_string(), "db".to_string())].into());
        let slices = desired(&web_svc(), &[other_ns, other_app], &[]);
        assert_eq!(slices.len(), 1, "a placeholder when nothing is selected");
        assert_eq!(slices[0].endpoints, Some(vec![]));
        assert_eq!(slices[0].ports, Some(vec![]));
        let no_selector = svc(json!({"ports": [{"port": 80}]}));
        assert!(desired(&no_selector, &[http("web-0", "10.244.1.2", 8080)], &[]).is_empty());
        let empty_selector = svc(json!({"selector": {}, "ports": [{"port": 80}]}));
        assert!(desired(&empty_selector, &[http("web-0", "10.244.1.2", 8080)], &[]).is_empty());
        let external = svc(
            json!({"type": "ExternalName", "externalName": "x.example", "selector": {"app": "web"}}),
        );
        assert!(desired(&external, &[http("web-0", "10.244.1.2", 8080)], &[]).is_empty());
        let headless = svc(json!({"clusterIP": "None", "selector": {"app": "web"}}));
        let slices = desired(&headless, &[http("web-0", "10.244.1.2", 8080)], &[]);
        assert_eq!(addresses(&slices[0]), vec!["10.244.1.2"]);
        assert!(slices[0]
            .metadata
            .labels
            .as_ref()
            .unwrap()
            .contains_key(HEADLESS_LABEL));
        let mut hostnamed = http("web-0", "10.244.1.2", 8080);
        let spec = hostnamed.spec.as_mut().unwrap();
        spec.hostname = Some("h0".into());
        spec.subdomain = Some("web".into());
        assert_eq!(
            endpoint(&headless, &hostnamed).unwrap().hostname.as_deref(),
            Some("h0")
        );
    }

    #[test]
    fn more_than_a_hundred_endpoints_are_split() {
        let pods: Vec<Pod> = (0..250)
            .map(|i| {
                http(
                    &format!("web-{i:03}"),
                    &format!("10.244.{}.{}", i / 200, i % 200 + 2),
                    8080,
                )
            })
            .collect();
        let slices = desired(&web_svc(), &pods, &[]);
        let sizes: Vec<usize> = slices
            .iter()
            .map(|s| s.endpoints.as_ref().unwrap().len())
            .collect();
        assert_eq!(sizes, vec![100, 100, 50]);
        let base = slices[0].metadata.name.clone().unwrap();
        assert_eq!(slices[1].metadata.name, Some(format!("{base}-1")));
        assert_eq!(slices[2].metadata.name, Some(format!("{base}-2")));
        assert_eq!(addresses(&slices[0])[0], "10.244.0.2");
    }

    #[test]
    fn endpoints_stay_in_their_slice_and_new_ones_fill_holes_first() {
        let pod = |i: usize| {
            http(
                &format!("web-{i:03}"),
                &format!("10.244.{}.{}", i / 200, i % 200 + 2),
                8080,
            )
        };
        let mut pods: Vec<Pod> = (0..250).map(pod).collect();
        let stored = desired(&web_svc(), &pods, &[]);
        assert_eq!(
            plan(desired(&web_svc(), &pods, &stored), &stored),
            Plan::default()
        );
        // web-005 (first slice) goes, web-300 comes: only the first slice
        // changes — the newcomer takes the freed place.
        pods.remove(5);
        pods.push(pod(300));
        let p = plan(desired(&web_svc(), &pods, &stored), &stored);
        assert_eq!(
            p.write.len(),
            1,
            "{:?}",
            p.write.iter().map(|s| &s.metadata.name).collect::<Vec<_>>()
        );
        assert_eq!(p.write[0].metadata.name, stored[0].metadata.name);
        assert!(addresses(&p.write[0]).contains(&"10.244.1.102".to_string()));
        assert!(!addresses(&p.write[0]).contains(&"10.244.0.7".to_string()));
        assert!(p.delete.is_empty());
        // Every pod of the middle slice goes: that slice is deleted, the
        // last one keeps its name and content.
        let middle: Vec<String> = addresses(&stored[1]);
        pods.retain(|p| !middle.contains(&p.status.as_ref().unwrap().pod_ip.clone().unwrap()));
        let p = plan(desired(&web_svc(), &pods, &stored), &stored);
        let written: Vec<_> = p
            .write
            .iter()
            .map(|s| s.metadata.name.clone().unwrap())
            .collect();
        assert_eq!(written, vec![stored[0].metadata.name.clone().unwrap()]);
        assert_eq!(
            p.delete,
            vec![("demo".to_string(), stored[1].metadata.name.clone().unwrap())]
        );
    }

    #[test]
    fn plans_write_only_changes_and_delete_stale_slices() {
        let pods = vec![
            http("web-0", "10.244.1.2", 8080),
            http("web-1", "10.244.2.2", 8080),
        ];
        let mut stored = desired(&web_svc(), &pods, &[]);
        for s in &mut stored {
            s.metadata.uid = Some("slice-uid".into());
            s.metadata.resource_version = Some("42".into());
        }
        let foreign = {
            let mut s = stored[0].clone();
            s.metadata.name = Some("hand-made".into());
            s.metadata.labels = Some([(SERVICE_NAME_LABEL.to_string(), "web".to_string())].into());
            s
        };
        let mut existing = stored.clone();
        existing.push(foreign);
        assert_eq!(
            plan(desired(&web_svc(), &pods, &[]), &existing),
            Plan::default()
        );
        // One pod gone: the slice is rewritten, keeping its UID.
        let p = plan(desired(&web_svc(), &pods[..1], &[]), &existing);
        assert_eq!(p.write.len(), 1);
        assert!(p.delete.is_empty());
        assert_eq!(p.write[0].metadata.uid.as_deref(), Some("slice-uid"));
        assert_eq!(addresses(&p.write[0]), vec!["10.244.1.2"]);
        // A different port list: a new slice, the old one deleted.
        let moved = vec![http("web-0", "10.244.1.2", 9090)];
        let p = plan(desired(&web_svc(), &moved, &[]), &existing);
        assert_eq!(p.write.len(), 1);
        assert_eq!(p.write[0].metadata.uid, None);
        assert_eq!(
            p.delete,
            vec![("demo".to_string(), stored[0].metadata.name.clone().unwrap())]
        );
        // The Service gone: its slices go, slices we do not manage stay.
        let p = plan(Vec::new(), &existing);
        assert_eq!(p.delete.len(), 1);
    }

    #[test]
    fn sync_writes_only_when_something_changed() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("store.db")).unwrap();
        store.put_typed(&web_svc()).unwrap();
        for p in [
            http("web-0", "10.244.1.2", 8080),
            http("web-1", "10.244.2.2", 8080),
        ] {
            store.put_typed(&p).unwrap();
        }
        assert_eq!(
            sync(&store).unwrap(),
            Synced {
                written: 1,
                deleted: 0
            }
        );
        let revision = store.revision().unwrap();
        assert_eq!(sync(&store).unwrap(), Synced::default());
        assert_eq!(store.revision().unwrap(), revision, "no write, no event");
        let (slices, _) = store.list_typed::<EndpointSlice>().unwrap();
        assert!(slices[0].metadata.uid.is_some());
        assert!(slices[0].metadata.creation_timestamp.is_some());
        store.delete("Pod", "demo", "web-1").unwrap();
        assert_eq!(
            sync(&store).unwrap(),
            Synced {
                written: 1,
                deleted: 0
            }
        );
        let (slices, _) = store.list_typed::<EndpointSlice>().unwrap();
        assert_eq!(addresses(&slices[0]), vec!["10.244.1.2"]);
        store.delete("Service", "demo", "web").unwrap();
        assert_eq!(
            sync(&store).unwrap(),
            Synced {
                written: 0,
                deleted: 1
            }
        );
        assert!(store.list_typed::<EndpointSlice>().unwrap().0.is_empty());
    }

    #[test]
    fn hashes_are_stable() {
        assert_eq!(short_hash(""), short_hash(""));
        assert_ne!(short_hash("http/TCP/8080"), short_hash("http/TCP/8443"));
        assert_eq!(short_hash("http/TCP/8080").len(), 8);
    }
}
