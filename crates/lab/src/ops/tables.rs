//! `weft lab get services|endpointslices|events|networkpolicies|clusternetworkpolicies`:
//! kubectl's columns, or
//! the objects as a v1 `List`. The cells are pure functions of one object
//! (and the time); only the `get_*` functions read the cluster; they return
//! the text for the CLI to print.

use anyhow::Result;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointSlice};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::jiff::Timestamp;
use serde::Serialize;
use weft_policy::api::ClusterNetworkPolicy;

use super::{Lab, Output};
use crate::endpointslices::SERVICE_NAME_LABEL;
use crate::objects::key;
use crate::services::protocol;
use weft_proxy::model::ingress_ips;

/// kubectl shows this many items of a list, then `+ N more...`.
const SHOWN: usize = 3;

/// `weft lab get services`: NAMESPACE (all namespaces only), NAME, TYPE,
/// CLUSTER-IP, EXTERNAL-IP, PORT(S); wide adds SELECTOR.
pub fn get_services(name: &str, namespace: Option<&str>, output: Output) -> Result<String> {
    let lab = Lab::open(name)?;
    let items = in_namespace(lab.services()?, namespace);
    let mut headers = vec!["NAME", "TYPE", "CLUSTER-IP", "EXTERNAL-IP", "PORT(S)"];
    if output == Output::Wide {
        headers.push("SELECTOR");
    }
    render_objects(&items, namespace, output, &headers, |svc| {
        let mut row = service_row(svc);
        if output == Output::Wide {
            row.push(selector(svc));
        }
        row
    })
}

/// `weft lab get endpointslices`: NAMESPACE (all namespaces only), NAME,
/// ADDRESSTYPE, PORTS, ENDPOINTS (the ready ones); wide adds SERVICE.
pub fn get_endpointslices(name: &str, namespace: Option<&str>, output: Output) -> Result<String> {
    let lab = Lab::open(name)?;
    let items = in_namespace(lab.cluster.list::<EndpointSlice>()?, namespace);
    let mut headers = vec!["NAME", "ADDRESSTYPE", "PORTS", "ENDPOINTS"];
    if output == Output::Wide {
        headers.push("SERVICE");
    }
    render_objects(&items, namespace, output, &headers, |slice| {
        let mut row = slice_row(slice);
        if output == Output::Wide {
            row.push(
                slice
                    .metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(SERVICE_NAME_LABEL).cloned())
                    .unwrap_or_else(|| "<none>".into()),
            );
        }
        row
    })
}

/// `weft lab get networkpolicies`: NAMESPACE (all namespaces only), NAME,
/// POD-SELECTOR, as kubectl shows them.
pub fn get_network_policies(name: &str, namespace: Option<&str>, output: Output) -> Result<String> {
    let lab = Lab::open(name)?;
    let items = in_namespace(lab.cluster.list::<NetworkPolicy>()?, namespace);
    render_objects(&items, namespace, output, &["NAME", "POD-SELECTOR"], |np| {
        vec![key(np).1, pod_selector(np)]
    })
}

/// `weft lab get clusternetworkpolicies`: NAME, TIER, PRIORITY, AGE (the
/// CRD's printer columns, as kubectl shows them); cluster-scoped, so
/// never a NAMESPACE column and no namespace to filter on.
pub fn get_cluster_network_policies(name: &str, output: Output) -> Result<String> {
    let lab = Lab::open(name)?;
    let items = lab.cluster.list::<ClusterNetworkPolicy>()?;
    if output == Output::Json {
        return super::list_json("List", &items).map(|json| json + "\n");
    }
    let now = Timestamp::now();
    let mut rows = vec![["NAME", "TIER", "PRIORITY", "AGE"]
        .map(String::from)
        .to_vec()];
    rows.extend(items.iter().map(|cnp| cluster_policy_row(cnp, now)));
    Ok(table(&rows))
}

/// NAME, TIER, PRIORITY, AGE.
fn cluster_policy_row(cnp: &ClusterNetworkPolicy, now: Timestamp) -> Vec<String> {
    vec![
        cnp.metadata.name.clone().unwrap_or_default(),
        cnp.spec.tier.clone(),
        cnp.spec.priority.to_string(),
        cnp.metadata
            .creation_timestamp
            .as_ref()
            .map_or_else(|| "<unknown>".into(), |t| age(now, t.0)),
    ]
}

/// kubectl's POD-SELECTOR: `k=v,…` and the expressions, `<none>` for all.
fn pod_selector(np: &NetworkPolicy) -> String {
    let selector = np
        .spec
        .as_ref()
        .and_then(|s| s.pod_selector.clone())
        .unwrap_or_default();
    let labels = selector
        .match_labels
        .iter()
        .flatten()
        .map(|(k, v)| format!("{k}={v}"));
    let expressions = selector.match_expressions.iter().flatten().map(|e| {
        let values = e.values.clone().unwrap_or_default().join(",");
        match e.operator.as_str() {
            "Exists" => e.key.clone(),
            "DoesNotExist" => format!("!{}", e.key),
            op => format!("{} {} ({values})", e.key, op.to_lowercase()),
        }
    });
    let all: Vec<String> = labels.chain(expressions).collect();
    if all.is_empty() {
        "<none>".into()
    } else {
        all.join(",")
    }
}

/// `weft lab get events` (`events.k8s.io/v1`, oldest first): NAMESPACE
/// (all namespaces only), LAST SEEN, TYPE, REASON, OBJECT, MESSAGE.
pub fn get_events(name: &str, namespace: Option<&str>, output: Output) -> Result<String> {
    let lab = Lab::open(name)?;
    let mut items = in_namespace(lab.cluster.list::<Event>()?, namespace);
    items.sort_by_key(last_seen);
    let headers = ["LAST SEEN", "TYPE", "REASON", "OBJECT", "MESSAGE"];
    let now = Timestamp::now();
    render_objects(&items, namespace, output, &headers, |e| event_row(e, now))
}

/// When an Event was last seen: its series' last observation, else its
/// time (or the deprecated fields older writers fill in).
fn last_seen(event: &Event) -> Option<Timestamp> {
    event
        .series
        .as_ref()
        .map(|s| s.last_observed_time.0)
        .or(event.event_time.as_ref().map(|t| t.0))
        .or(event.deprecated_last_timestamp.as_ref().map(|t| t.0))
}

fn event_row(event: &Event, now: Timestamp) -> Vec<String> {
    let or_none = |v: Option<&String>| v.cloned().unwrap_or_else(|| "<none>".into());
    let object = event.regarding.as_ref().map(|r| {
        format!(
            "{}/{}",
            r.kind.as_deref().unwrap_or_default().to_lowercase(),
            r.name.as_deref().unwrap_or_default()
        )
    });
    vec![
        last_seen(event).map_or_else(|| "<unknown>".into(), |t| age(now, t)),
        or_none(event.type_.as_ref()),
        or_none(event.reason.as_ref()),
        or_none(object.as_ref()),
        or_none(event.note.as_ref()),
    ]
}

/// kubectl's short age: `42s`, `5m`, `3h`, `2d`.
fn age(now: Timestamp, then: Timestamp) -> String {
    let seconds = now.as_second().saturating_sub(then.as_second()).max(0);
    match seconds {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

fn in_namespace<K>(items: Vec<K>, namespace: Option<&str>) -> Vec<K>
where
    K: k8s_openapi::Metadata<Ty = k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta>,
{
    items
        .into_iter()
        .filter(|o| namespace.is_none_or(|ns| key(o).0 == ns))
        .collect()
}

/// `items` as a v1 List, or as a table of `row`s (NAMESPACE first when
/// listing all namespaces).
fn render_objects<K>(
    items: &[K],
    namespace: Option<&str>,
    output: Output,
    headers: &[&str],
    row: impl Fn(&K) -> Vec<String>,
) -> Result<String>
where
    K: Serialize
        + k8s_openapi::Metadata<Ty = k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta>,
{
    if output == Output::Json {
        return super::list_json("List", items).map(|json| json + "\n");
    }
    let all = namespace.is_none();
    let mut head: Vec<String> = headers.iter().map(|h| h.to_string()).collect();
    if all {
        head.insert(0, "NAMESPACE".into());
    }
    let mut rows = vec![head];
    for item in items {
        let mut cells = row(item);
        if all {
            cells.insert(0, key(item).0);
        }
        rows.push(cells);
    }
    Ok(table(&rows))
}

/// Left-aligned columns three spaces apart, as kubectl prints them.
fn table(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(c, cell)| format!("{cell:<w$}", w = widths[c]))
            .collect();
        out.push_str(line.join("   ").trim_end());
        out.push('\n');
    }
    out
}

/// NAME, TYPE, CLUSTER-IP, EXTERNAL-IP, PORT(S).
fn service_row(svc: &Service) -> Vec<String> {
    let spec = svc.spec.clone().unwrap_or_default();
    let kind = spec.type_.clone().unwrap_or_else(|| "ClusterIP".into());
    let cluster_ip = spec
        .cluster_ip
        .clone()
        .filter(|ip| !ip.is_empty())
        .unwrap_or_else(|| "<none>".into());
    vec![
        key(svc).1,
        kind,
        cluster_ip,
        external_ip(svc),
        service_ports(svc),
    ]
}

/// kubectl's EXTERNAL-IP: the LoadBalancer addresses and externalIPs (a
/// LoadBalancer without any is `<pending>`), an ExternalName's name.
fn external_ip(svc: &Service) -> String {
    let spec = svc.spec.clone().unwrap_or_default();
    if spec.type_.as_deref() == Some("ExternalName") {
        return spec.external_name.unwrap_or_else(|| "<none>".into());
    }
    let mut ips: Vec<String> = Vec::new();
    if spec.type_.as_deref() == Some("LoadBalancer") {
        ips.extend(ingress_ips(svc).iter().map(|ip| ip.to_string()));
    }
    ips.extend(spec.external_ips.unwrap_or_default());
    match (ips.is_empty(), spec.type_.as_deref()) {
        (true, Some("LoadBalancer")) => "<pending>".into(),
        (true, _) => "<none>".into(),
        (false, _) => ips.join(","),
    }
}

/// `80/TCP`, or `80:30080/TCP` with a nodePort; `<none>` without ports.
fn service_ports(svc: &Service) -> String {
    let ports = svc
        .spec
        .as_ref()
        .and_then(|s| s.ports.clone())
        .unwrap_or_default();
    if ports.is_empty() {
        return "<none>".into();
    }
    ports
        .iter()
        .map(|p| match p.node_port {
            Some(n) => format!("{}:{n}/{}", p.port, protocol(p)),
            None => format!("{}/{}", p.port, protocol(p)),
        })
        .collect::<Vec<_>>()
        .join(",")
}

fn selector(svc: &Service) -> String {
    let pairs: Vec<String> = svc
        .spec
        .as_ref()
        .and_then(|s| s.selector.clone())
        .unwrap_or_default()
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    if pairs.is_empty() {
        "<none>".into()
    } else {
        pairs.join(",")
    }
}

/// NAME, ADDRESSTYPE, PORTS, ENDPOINTS.
fn slice_row(slice: &EndpointSlice) -> Vec<String> {
    let ports: Vec<String> = slice
        .ports
        .iter()
        .flatten()
        .map(|p| match (p.port, &p.name) {
            (Some(n), _) => n.to_string(),
            (None, Some(name)) if !name.is_empty() => name.clone(),
            _ => "*".into(),
        })
        .collect();
    let ready: Vec<String> = slice
        .endpoints
        .iter()
        .flatten()
        .filter(|e| is_ready(e))
        .flat_map(|e| e.addresses.clone())
        .collect();
    vec![
        key(slice).1,
        slice.address_type.clone(),
        shortened(&ports),
        shortened(&ready),
    ]
}

/// Kubernetes: a missing `ready` condition means ready.
fn is_ready(endpoint: &Endpoint) -> bool {
    endpoint
        .conditions
        .as_ref()
        .and_then(|c| c.ready)
        .unwrap_or(true)
}

/// kubectl's list cell: the first three, `+ N more...`, `<unset>` if empty.
fn shortened(items: &[String]) -> String {
    match items.len() {
        0 => "<unset>".into(),
        n if n <= SHOWN => items.join(","),
        n => format!("{} + {} more...", items[..SHOWN].join(","), n - SHOWN),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn svc(spec: serde_json::Value, status: serde_json::Value) -> Service {
        serde_json::from_value(json!({"metadata": {"name": "web"}, "spec": spec, "status": status}))
            .unwrap()
    }

    #[test]
    fn event_rows_read_like_kubectl() {
        let event: Event = serde_json::from_value(json!({
            "metadata": {"namespace": "demo", "name": "weft-proxy.1"},
            "eventTime": "2026-12-01T08:00:00.000000Z", "type": "Warning",
            "reason": "InvalidService", "note": "not programmed on node node-1: bad",
            "regarding": {"kind": "Service", "name": "web"}
        }))
        .unwrap();
        let now: Timestamp = "2026-12-01T08:05:30Z".parse().unwrap();
        assert_eq!(
            event_row(&event, now),
            [
                "5m",
                "Warning",
                "InvalidService",
                "service/web",
                "not programmed on node node-1: bad"
            ]
        );
        let then: Timestamp = "2026-12-01T08:00:00Z".parse().unwrap();
        let ages: Vec<String> = [0, 119, 120, 7199, 7200, 172_800]
            .iter()
            .map(|s| {
                age(
                    then + k8s_openapi::jiff::SignedDuration::from_secs(*s),
                    then,
                )
            })
            .collect();
        assert_eq!(ages, ["0s", "119s", "2m", "119m", "2h", "2d"]);
    }

    #[test]
    fn service_rows_read_like_kubectl() {
        let lb = svc(
            json!({"type": "LoadBalancer", "clusterIP": "10.96.1.1", "selector": {"app": "web", "tier": "a"},
                   "ports": [{"port": 80, "nodePort": 30080, "protocol": "TCP"},
                             {"port": 53, "nodePort": 30053, "protocol": "UDP"}]}),
            json!({"loadBalancer": {"ingress": [{"ip": "198.18.0.240"}]}}),
        );
        assert_eq!(
            service_row(&lb),
            vec![
                "web",
                "LoadBalancer",
                "10.96.1.1",
                "198.18.0.240",
                "80:30080/TCP,53:30053/UDP"
            ]
        );
        assert_eq!(selector(&lb), "app=web,tier=a");
        let pending = svc(
            json!({"type": "LoadBalancer", "ports": [{"port": 80}]}),
            json!({}),
        );
        assert_eq!(external_ip(&pending), "<pending>");
        let headless = svc(json!({"clusterIP": "None"}), json!({}));
        assert_eq!(
            service_row(&headless),
            vec!["web", "ClusterIP", "None", "<none>", "<none>"]
        );
        assert_eq!(selector(&headless), "<none>");
        let external = svc(
            json!({"type": "ExternalName", "externalName": "db.example"}),
            json!({}),
        );
        assert_eq!(external_ip(&external), "db.example");
    }

    #[test]
    fn slice_rows_show_ready_endpoints() {
        let slice: EndpointSlice = serde_json::from_value(json!({
            "metadata": {"name": "web-1a2b3c4d"},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080}, {"name": "udp", "port": 8081}],
            "endpoints": [
                {"addresses": ["10.244.1.2"], "conditions": {"ready": true}},
                {"addresses": ["10.244.1.3"], "conditions": {"ready": false, "serving": true, "terminating": true}},
                {"addresses": ["10.244.1.4"]},
                {"addresses": ["10.244.1.5"], "conditions": {"ready": true}},
                {"addresses": ["10.244.1.6"], "conditions": {"ready": true}}]
        }))
        .unwrap();
        assert_eq!(
            slice_row(&slice),
            vec![
                "web-1a2b3c4d",
                "IPv4",
                "8080,8081",
                "10.244.1.2,10.244.1.4,10.244.1.5 + 1 more..."
            ]
        );
        let empty: EndpointSlice = serde_json::from_value(
            json!({"metadata": {"name": "e"}, "addressType": "IPv4", "endpoints": []}),
        )
        .unwrap();
        assert_eq!(slice_row(&empty), vec!["e", "IPv4", "<unset>", "<unset>"]);
    }

    #[test]
    fn cluster_policy_rows_read_like_kubectl() {
        let cnp: ClusterNetworkPolicy = serde_json::from_value(json!({
            "metadata": {"name": "tenant-a", "creationTimestamp": "2026-12-01T08:00:00Z"},
            "spec": {"tier": "Baseline", "priority": 7, "subject": {"namespaces": {}}}
        }))
        .unwrap();
        let now: Timestamp = "2026-12-01T11:00:00Z".parse().unwrap();
        assert_eq!(
            cluster_policy_row(&cnp, now),
            ["tenant-a", "Baseline", "7", "3h"]
        );
        let mut fresh = cnp.clone();
        fresh.metadata.creation_timestamp = None;
        assert_eq!(cluster_policy_row(&fresh, now)[3], "<unknown>");
    }

    #[test]
    fn tables_align_columns() {
        let rows = vec![
            vec!["NAME".to_string(), "TYPE".to_string()],
            vec!["a-long-name".to_string(), "ClusterIP".to_string()],
        ];
        assert_eq!(
            table(&rows),
            "NAME          TYPE\na-long-name   ClusterIP\n"
        );
    }
}
