//! Services and EndpointSlices, reduced to what the datapath needs (pure).
//!
//! Owns the Kubernetes semantics of reading the API objects: which Services
//! are programmed at all (not headless, not claimed by another proxy), the
//! defaults the API server would have filled in, and which endpoints serve a
//! port (ready ones; serving-and-terminating ones only when no ready endpoint
//! is left). It must not know about nftables: [`crate::plan`] turns this
//! model into rules.

use std::collections::BTreeMap;
use std::fmt;
use std::net::Ipv4Addr;
use std::sync::Arc;

use ipnet::{IpNet, Ipv4Net};
use k8s_openapi::api::core::v1::{Service, ServicePort};
use k8s_openapi::api::discovery::v1::{EndpointHints, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use weft_validation::objects::validate_service;
pub use weft_validation::protocol::Protocol;

/// Services carrying this label belong to another proxy and are skipped.
pub const SERVICE_PROXY_NAME_LABEL: &str = "service.kubernetes.io/service-proxy-name";
/// The EndpointSlices of headless Services carry this label.
pub const HEADLESS_LABEL: &str = "service.kubernetes.io/headless";
/// What kube-proxy's Service and EndpointSlice watches leave out: objects
/// with either label (`!service-proxy-name,!headless`).
pub const UNWATCHED_LABELS: &[&str] = &[SERVICE_PROXY_NAME_LABEL, HEADLESS_LABEL];
/// The label that ties an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// Kubernetes' default ClientIP affinity timeout (3 hours).
pub const DEFAULT_AFFINITY_SECONDS: u32 = 10_800;

/// A Service's identity.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServiceKey {
    /// Shared: the agent keeps a key in several indexes per Service.
    pub namespace: Arc<str>,
    pub name: Arc<str>,
}

impl ServiceKey {
    /// The key of the Service named by `meta` (no namespace means "default").
    pub fn of(meta: &ObjectMeta) -> ServiceKey {
        ServiceKey {
            namespace: meta.namespace.as_deref().unwrap_or("default").into(),
            name: meta.name.as_deref().unwrap_or_default().into(),
        }
    }
}

impl fmt::Display for ServiceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// One port of a Service with everything that decides how it is reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePortInfo {
    /// The port's name ("" for a single unnamed port); EndpointSlice ports
    /// are matched on it.
    pub name: String,
    pub protocol: Protocol,
    pub port: u16,
    pub node_port: Option<u16>,
    pub cluster_ip: Option<Ipv4Addr>,
    /// `externalIPs` and LoadBalancer ingress addresses.
    pub external_ips: Vec<Ipv4Addr>,
    pub load_balancer_ips: Vec<Ipv4Addr>,
    /// ClientIP affinity timeout in seconds, when affinity is on.
    pub affinity_seconds: Option<u32>,
    pub external_local: bool,
    pub internal_local: bool,
    pub source_ranges: SourceRanges,
}

/// Which clients may reach a LoadBalancer address
/// (`loadBalancerSourceRanges`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceRanges {
    /// No ranges given: every client.
    Any,
    /// Only clients in these ranges. Empty when no range applies to IPv4
    /// clients — or when one entry could not be read: an entry the proxy
    /// cannot read must never widen access, so the address then admits
    /// nobody until the Service is fixed.
    Only(Vec<Ipv4Net>),
}

impl SourceRanges {
    /// Reads entries [`validate_service`] accepted. Should an unreadable
    /// one get here all the same, the ranges are [`SourceRanges::Only`]
    /// nothing: failing closed, never open.
    fn parse(entries: &[String]) -> SourceRanges {
        if entries.is_empty() {
            return SourceRanges::Any;
        }
        let mut v4 = Vec::new();
        for entry in entries {
            match entry.trim().parse::<IpNet>() {
                Ok(IpNet::V4(net)) => v4.push(net),
                // Restricts IPv6 clients only; it admits no IPv4 one.
                Ok(IpNet::V6(_)) => {}
                Err(_) => return SourceRanges::Only(Vec::new()),
            }
        }
        SourceRanges::Only(v4)
    }
}

impl ServicePortInfo {
    pub fn has_external(&self) -> bool {
        self.node_port.is_some()
            || !self.external_ips.is_empty()
            || !self.load_balancer_ips.is_empty()
    }
}

/// A Service as the proxy sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceInfo {
    pub key: ServiceKey,
    /// Also in each port; here even when the Service has no port.
    pub cluster_ip: Option<Ipv4Addr>,
    pub ports: Vec<ServicePortInfo>,
    pub health_check_node_port: Option<u16>,
    /// `spec.loadBalancerClass`: which implementation announces its
    /// LoadBalancer addresses (`None`: the cluster's default one).
    pub load_balancer_class: Option<String>,
}

/// Why a Service is not programmed (logged once, so nothing is dropped
/// silently).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Skipped {
    #[error("headless (clusterIP: None): DNS only, nothing to proxy")]
    Headless,
    #[error("labelled {SERVICE_PROXY_NAME_LABEL}: handled by another proxy")]
    OtherProxy,
    #[error("type ExternalName: DNS only, nothing to proxy")]
    ExternalName,
    #[error("clusterIP {0:?} is not an IPv4 address (this proxy is IPv4-only for now)")]
    NotIpv4(String),
    #[error("port {0:?}: protocol {1:?} is not TCP, UDP or SCTP")]
    Protocol(String, String),
    #[error("port {0:?}: {1} is not a valid port number")]
    PortNumber(String, i32),
    /// What the API server would have refused (a store written around it,
    /// or a field this proxy turns into rules that must not be guessed at).
    #[error("invalid, as the API server would say: {0}")]
    Invalid(String),
}

impl Skipped {
    /// Whether the Service is broken (its owner has to fix it), rather
    /// than one that is not proxied by design.
    pub fn is_fault(&self) -> bool {
        !matches!(
            self,
            Skipped::Headless | Skipped::OtherProxy | Skipped::ExternalName
        )
    }
}

/// Reads a Service; `Err` says why it is not programmed.
pub fn service_info(svc: &Service) -> Result<ServiceInfo, Skipped> {
    validate_service(svc).map_err(|errors| Skipped::Invalid(errors.to_string()))?;
    let meta = &svc.metadata;
    let key = ServiceKey::of(meta);
    if meta
        .labels
        .as_ref()
        .is_some_and(|l| l.contains_key(SERVICE_PROXY_NAME_LABEL))
    {
        return Err(Skipped::OtherProxy);
    }
    let spec = svc.spec.clone().unwrap_or_default();
    let kind = spec.type_.as_deref().unwrap_or("ClusterIP");
    if kind == "ExternalName" {
        return Err(Skipped::ExternalName);
    }
    let cluster_ip = match spec.cluster_ip.as_deref() {
        Some("None") => return Err(Skipped::Headless),
        None | Some("") => None,
        Some(text) => Some(
            text.parse::<Ipv4Addr>()
                .map_err(|_| Skipped::NotIpv4(text.to_string()))?,
        ),
    };
    let external_ips = ipv4_list(spec.external_ips.iter().flatten().map(String::as_str));
    let load_balancer_ips = if kind == "LoadBalancer" {
        let mut ips = proxied_ingress_ips(svc);
        ips.sort();
        ips.dedup();
        ips
    } else {
        Vec::new()
    };
    let affinity_seconds = (spec.session_affinity.as_deref() == Some("ClientIP")).then(|| {
        spec.session_affinity_config
            .as_ref()
            .and_then(|c| c.client_ip.as_ref())
            .and_then(|c| c.timeout_seconds)
            .and_then(|t| u32::try_from(t).ok())
            .filter(|t| *t > 0)
            .unwrap_or(DEFAULT_AFFINITY_SECONDS)
    });
    let external_local = spec.external_traffic_policy.as_deref() == Some("Local");
    let internal_local = spec.internal_traffic_policy.as_deref() == Some("Local");
    let source_ranges = SourceRanges::parse(
        spec.load_balancer_source_ranges
            .as_deref()
            .unwrap_or_default(),
    );
    let exposes_node_ports = matches!(kind, "NodePort" | "LoadBalancer");
    let mut ports = Vec::new();
    for p in spec.ports.iter().flatten() {
        ports.push(ServicePortInfo {
            name: p.name.clone().unwrap_or_default(),
            protocol: protocol_of(p)?,
            port: port_number(p, p.port)?,
            node_port: match p.node_port {
                Some(n) if exposes_node_ports && n != 0 => Some(port_number(p, n)?),
                _ => None,
            },
            cluster_ip,
            external_ips: external_ips.clone(),
            load_balancer_ips: load_balancer_ips.clone(),
            affinity_seconds,
            external_local,
            internal_local,
            source_ranges: source_ranges.clone(),
        });
    }
    let health_check_node_port = spec
        .health_check_node_port
        .filter(|_| external_local && kind == "LoadBalancer")
        .and_then(|p| u16::try_from(p).ok())
        .filter(|p| *p != 0);
    Ok(ServiceInfo {
        key,
        cluster_ip,
        ports,
        health_check_node_port,
        load_balancer_class: spec.load_balancer_class.clone(),
    })
}

/// The IPv4 addresses of `status.loadBalancer.ingress`, in order.
pub fn ingress_ips(svc: &Service) -> Vec<Ipv4Addr> {
    svc.status
        .iter()
        .flat_map(|s| s.load_balancer.iter())
        .flat_map(|lb| lb.ingress.iter().flatten())
        .filter_map(|i| i.ip.as_deref()?.parse().ok())
        .collect()
}

/// The ingress addresses the node proxies: all but those whose `ipMode`
/// is `Proxy` (the load balancer itself forwards to the nodes then, to
/// their NodePorts, and must get the packets; kube-proxy skips them too).
fn proxied_ingress_ips(svc: &Service) -> Vec<Ipv4Addr> {
    svc.status
        .iter()
        .flat_map(|s| s.load_balancer.iter())
        .flat_map(|lb| lb.ingress.iter().flatten())
        .filter(|i| i.ip_mode.as_deref() != Some("Proxy"))
        .filter_map(|i| i.ip.as_deref()?.parse().ok())
        .collect()
}

fn ipv4_list<'a>(texts: impl Iterator<Item = &'a str>) -> Vec<Ipv4Addr> {
    let mut ips: Vec<Ipv4Addr> = texts.filter_map(|t| t.parse().ok()).collect();
    ips.sort();
    ips.dedup();
    ips
}

fn protocol_of(p: &ServicePort) -> Result<Protocol, Skipped> {
    Protocol::parse(p.protocol.as_deref()).ok_or_else(|| {
        Skipped::Protocol(
            p.name.clone().unwrap_or_default(),
            p.protocol.clone().unwrap_or_default(),
        )
    })
}

fn port_number(p: &ServicePort, n: i32) -> Result<u16, Skipped> {
    u16::try_from(n)
        .ok()
        .filter(|n| *n != 0)
        .ok_or_else(|| Skipped::PortNumber(p.name.clone().unwrap_or_default(), n))
}

/// One endpoint of one Service port.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Endpoint {
    pub ip: Ipv4Addr,
    pub port: u16,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
    pub place: Arc<Place>,
}

impl Endpoint {
    /// The node it runs on, when known.
    pub fn node(&self) -> Option<&str> {
        self.place.node.as_deref()
    }

    pub fn is_local(&self, node: &str) -> bool {
        self.node() == Some(node)
    }
}

/// Where an endpoint is: its node, and the topology hints the
/// EndpointSlice controller gave it (`hints.forZones`, `hints.forNodes`,
/// from `trafficDistribution`), which follow from that node. Shared:
/// 100,000 endpoints are in a few hundred places.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Place {
    pub node: Option<Box<str>>,
    pub zone_hints: Box<[Box<str>]>,
    pub node_hints: Box<[Box<str>]>,
}

impl Place {
    /// The place of an endpoint on `node` with `hints`.
    pub fn read(node: Option<&str>, hints: Option<&EndpointHints>) -> Arc<Place> {
        let zones = hints.iter().flat_map(|h| h.for_zones.iter().flatten());
        let nodes = hints.iter().flat_map(|h| h.for_nodes.iter().flatten());
        Arc::new(Place {
            node: node.map(Box::from),
            zone_hints: zones.map(|z| Box::from(z.name.as_str())).collect(),
            node_hints: nodes.map(|n| Box::from(n.name.as_str())).collect(),
        })
    }

    /// The place of an endpoint on `node`, without hints.
    pub fn on(node: &str) -> Arc<Place> {
        Place::read(Some(node), None)
    }
}

/// The endpoints of each port (name, protocol) of one Service.
pub type PortEndpoints = BTreeMap<(String, Protocol), Vec<Endpoint>>;

/// The endpoints of each port of the given slices (usually one slice, or
/// all slices of one Service).
pub fn endpoints_by_port(slices: &[&EndpointSlice]) -> PortEndpoints {
    let mut out = PortEndpoints::new();
    for slice in slices.iter().filter(|s| s.address_type == "IPv4") {
        let places: Vec<Arc<Place>> = slice
            .endpoints
            .iter()
            .flatten()
            .map(|ep| Place::read(ep.node_name.as_deref(), ep.hints.as_ref()))
            .collect();
        for port in slice.ports.iter().flatten() {
            let (Some(number), Some(protocol)) = (
                port.port.and_then(|p| u16::try_from(p).ok()),
                Protocol::parse(port.protocol.as_deref()),
            ) else {
                continue;
            };
            let list = out
                .entry((port.name.clone().unwrap_or_default(), protocol))
                .or_default();
            for (ep, place) in slice.endpoints.iter().flatten().zip(&places) {
                let conditions = ep.conditions.clone().unwrap_or_default();
                // As kube-proxy reads them: a nil `ready` or `serving`
                // means true, a nil `terminating` false.
                let ready = conditions.ready.unwrap_or(true);
                let serving = conditions.serving.unwrap_or(true);
                let terminating = conditions.terminating.unwrap_or(false);
                // Only the first address, as kube-proxy: the others are
                // the same pod's, not more endpoints.
                if let Some(ip) = ep.addresses.first().and_then(|a| a.parse().ok()) {
                    list.push(Endpoint {
                        ip,
                        port: number,
                        ready,
                        serving,
                        terminating,
                        place: place.clone(),
                    });
                }
            }
        }
    }
    dedup(&mut out);
    out
}

/// One slice's [`PortEndpoints`] packed for keeping: a tree per slice
/// costs ~600 bytes of nodes for what is usually a single port.
pub type PackedEndpoints = Box<[((String, Protocol), Box<[Endpoint]>)]>;

/// Packs one slice's endpoints for keeping.
pub fn pack(ports: PortEndpoints) -> PackedEndpoints {
    ports
        .into_iter()
        .map(|(port, list)| (port, list.into_boxed_slice()))
        .collect()
}

/// One Service's endpoints from its slices' parts; the same address in two
/// slices (as happens mid-update) counts once.
pub fn merge<'a>(parts: impl IntoIterator<Item = &'a PackedEndpoints>) -> PortEndpoints {
    let mut out = PortEndpoints::new();
    for (port, list) in parts.into_iter().flat_map(|part| part.iter()) {
        out.entry(port.clone())
            .or_default()
            .extend(list.iter().cloned());
    }
    dedup(&mut out);
    out
}

/// One endpoint per address and port: when a pod's address is reused
/// while the old pod still terminates, the ready copy wins (then the
/// serving one), as in kube-proxy.
fn dedup(ports: &mut PortEndpoints) {
    for list in ports.values_mut() {
        list.sort_by(|a, b| {
            (a.ip, a.port, !a.ready, !a.serving, a.terminating)
                .cmp(&(b.ip, b.port, !b.ready, !b.serving, b.terminating))
                .then_with(|| a.cmp(b))
        });
        list.dedup_by(|later, kept| later.ip == kept.ip && later.port == kept.port);
    }
}

/// The endpoints traffic may go to: the ready ones, or — only when none is
/// ready — the ones still serving while terminating (so connections drain
/// instead of failing during a rollout).
pub fn usable<'a>(endpoints: impl IntoIterator<Item = &'a Endpoint>) -> Vec<&'a Endpoint> {
    let all: Vec<&Endpoint> = endpoints.into_iter().collect();
    let ready: Vec<&Endpoint> = all.iter().copied().filter(|e| e.ready).collect();
    if !ready.is_empty() {
        return ready;
    }
    all.into_iter()
        .filter(|e| e.serving && e.terminating)
        .collect()
}

/// Where a node prefers to send traffic, from the endpoints' topology
/// hints (kube-proxy's rules): to the endpoints hinted for this node when
/// every ready endpoint has node hints and one is for this node; else to
/// those hinted for this node's zone when every ready endpoint has zone
/// hints and one is for this zone; else anywhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Topology<'a> {
    Anywhere,
    SameNode(&'a str),
    SameZone(&'a str),
}

impl<'a> Topology<'a> {
    fn of(ready: &[&Endpoint], node: &'a str, zone: Option<&'a str>) -> Topology<'a> {
        let hinted_for = |hints: fn(&Place) -> &[Box<str>], place: &str| {
            ready.iter().all(|e| !hints(&e.place).is_empty())
                && ready
                    .iter()
                    .any(|e| hints(&e.place).iter().any(|h| &**h == place))
        };
        if ready.is_empty() {
            Topology::Anywhere
        } else if hinted_for(|p| &p.node_hints, node) {
            Topology::SameNode(node)
        } else if let Some(zone) = zone.filter(|zone| hinted_for(|p| &p.zone_hints, zone)) {
            Topology::SameZone(zone)
        } else {
            Topology::Anywhere
        }
    }

    fn admits(self, endpoint: &Endpoint) -> bool {
        let has = |hints: &[Box<str>], place: &str| hints.iter().any(|h| &**h == place);
        match self {
            Topology::Anywhere => true,
            Topology::SameNode(node) => has(&endpoint.place.node_hints, node),
            Topology::SameZone(zone) => has(&endpoint.place.zone_hints, zone),
        }
    }
}

/// The endpoints a node in `zone` sends cluster-wide traffic to (traffic
/// policy `Cluster`): the ready ones its topology hints leave (see
/// [`Topology`]), or — only when none is ready anywhere — the ones still
/// serving while terminating, as [`usable`].
pub fn cluster_endpoints<'a>(
    endpoints: &'a [Endpoint],
    node: &str,
    zone: Option<&str>,
) -> Vec<&'a Endpoint> {
    let ready: Vec<&Endpoint> = endpoints.iter().filter(|e| e.ready).collect();
    if ready.is_empty() {
        return usable(endpoints);
    }
    let topology = Topology::of(&ready, node, zone);
    ready.into_iter().filter(|e| topology.admits(e)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn service(value: serde_json::Value) -> Service {
        serde_json::from_value(value).expect("valid Service")
    }

    fn slice(value: serde_json::Value) -> EndpointSlice {
        serde_json::from_value(value).expect("valid EndpointSlice")
    }

    fn basic(extra_spec: serde_json::Value) -> Service {
        let mut spec = json!({"clusterIP": "10.96.0.10", "ports": [{"name": "http", "port": 80, "targetPort": 8080}]});
        for (k, v) in extra_spec.as_object().cloned().unwrap_or_default() {
            spec[k] = v;
        }
        service(json!({"metadata": {"namespace": "demo", "name": "web"}, "spec": spec}))
    }

    #[test]
    fn cluster_ip_service_reads_with_defaults() {
        let info = service_info(&basic(json!({}))).unwrap();
        assert_eq!(info.key.to_string(), "demo/web");
        let p = &info.ports[0];
        assert_eq!((p.protocol, p.port, p.node_port), (Protocol::Tcp, 80, None));
        assert_eq!(p.cluster_ip, Some(Ipv4Addr::new(10, 96, 0, 10)));
        assert!(!p.external_local && !p.internal_local && p.affinity_seconds.is_none());
        assert!(!p.has_external());
    }

    #[test]
    fn skipped_services_say_why() {
        assert_eq!(
            service_info(&basic(json!({"clusterIP": "None"}))),
            Err(Skipped::Headless)
        );
        let mut svc = basic(json!({}));
        svc.metadata.labels =
            Some([(SERVICE_PROXY_NAME_LABEL.to_string(), "other".to_string())].into());
        assert_eq!(service_info(&svc), Err(Skipped::OtherProxy));
        assert_eq!(
            service_info(&basic(json!({"clusterIP": "fd00::1"}))),
            Err(Skipped::NotIpv4("fd00::1".into()))
        );
        let bad = basic(json!({"ports": [{"port": 80, "protocol": "ICMP"}]}));
        assert!(
            matches!(service_info(&bad), Err(Skipped::Invalid(why)) if why.contains("spec.ports[0].protocol"))
        );
        let mut bad = basic(json!({}));
        bad.metadata.name = Some("bad name".into());
        assert!(
            matches!(service_info(&bad), Err(Skipped::Invalid(why)) if why.contains("metadata.name"))
        );
        let bad = basic(json!({"ports": [{"port": 70000}]}));
        assert!(matches!(
            service_info(&bad),
            Err(Skipped::PortNumber(_, 70000))
        ));
    }

    #[test]
    fn load_balancer_reads_status_policies_and_ranges() {
        let mut svc = basic(json!({
            "type": "LoadBalancer", "externalTrafficPolicy": "Local", "healthCheckNodePort": 32000,
            "externalIPs": ["198.18.0.99"], "loadBalancerSourceRanges": ["198.18.0.0/30", " 198.18.0.8/29 "],
            "sessionAffinity": "ClientIP", "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 30}},
            "ports": [{"name": "http", "port": 80, "nodePort": 30080}]
        }));
        svc.status = serde_json::from_value(json!({"loadBalancer": {"ingress": [
            {"ip": "198.18.0.240"}, {"ip": "198.18.0.241", "ipMode": "VIP"},
            {"ip": "198.18.0.242", "ipMode": "Proxy"}
        ]}}))
        .unwrap();
        let info = service_info(&svc).unwrap();
        let p = &info.ports[0];
        assert_eq!(p.node_port, Some(30080));
        // ipMode Proxy: the load balancer's own address, not the node's.
        assert_eq!(
            p.load_balancer_ips,
            vec![
                Ipv4Addr::new(198, 18, 0, 240),
                Ipv4Addr::new(198, 18, 0, 241)
            ]
        );
        assert_eq!(p.external_ips, vec![Ipv4Addr::new(198, 18, 0, 99)]);
        assert_eq!(p.affinity_seconds, Some(30));
        assert_eq!(
            p.source_ranges,
            SourceRanges::Only(vec![
                "198.18.0.0/30".parse().unwrap(),
                "198.18.0.8/29".parse().unwrap()
            ])
        );
        assert!(p.external_local);
        assert_eq!(info.health_check_node_port, Some(32000));
    }

    #[test]
    fn node_ports_only_count_for_node_port_types() {
        let svc = basic(json!({"ports": [{"port": 80, "nodePort": 30080}]}));
        assert_eq!(service_info(&svc).unwrap().ports[0].node_port, None);
        let svc = basic(json!({"type": "NodePort", "ports": [{"port": 80, "nodePort": 30080}]}));
        assert_eq!(service_info(&svc).unwrap().ports[0].node_port, Some(30080));
    }

    #[test]
    fn affinity_defaults_to_three_hours() {
        let svc = basic(json!({"sessionAffinity": "ClientIP"}));
        assert_eq!(
            service_info(&svc).unwrap().ports[0].affinity_seconds,
            Some(DEFAULT_AFFINITY_SECONDS)
        );
    }

    fn two_slices() -> (EndpointSlice, EndpointSlice) {
        let a = slice(json!({
            "metadata": {"name": "web-a", "namespace": "demo"},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": [
                {"addresses": ["10.244.1.2"], "nodeName": "node-1", "conditions": {"ready": true}},
                {"addresses": ["10.244.2.2"], "nodeName": "node-2", "conditions": {"ready": false, "serving": true, "terminating": true}},
                {"addresses": ["10.244.2.3"], "nodeName": "node-2"}
            ]
        }));
        let b = slice(json!({
            "metadata": {"name": "web-b", "namespace": "demo"},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 9090}],
            "endpoints": [
                {"addresses": ["10.244.3.2"], "nodeName": "node-3", "conditions": {"ready": true}},
                {"addresses": ["10.244.1.2"], "nodeName": "node-1", "conditions": {"ready": true}}
            ]
        }));
        (a, b)
    }

    #[test]
    fn endpoints_are_read_as_kube_proxy_reads_them() {
        let one = slice(json!({
            "metadata": {"name": "web-a", "namespace": "demo"},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": [
                // Terminating, serving unset: serving.
                {"addresses": ["10.244.1.2"], "conditions": {"ready": false, "terminating": true}},
                // Two addresses: the first is the endpoint.
                {"addresses": ["10.244.1.3", "10.244.1.4"]},
                // An address reused while its old pod terminates: the
                // ready copy wins, whichever comes first.
                {"addresses": ["10.244.1.5"], "conditions": {"ready": false, "serving": false, "terminating": true}},
                {"addresses": ["10.244.1.5"], "conditions": {"ready": true}}
            ]
        }));
        let by_port = endpoints_by_port(&[&one]);
        let eps = &by_port[&("http".to_string(), Protocol::Tcp)];
        let got: Vec<(String, bool, bool)> = eps
            .iter()
            .map(|e| (e.ip.to_string(), e.ready, e.serving))
            .collect();
        assert_eq!(
            got,
            [
                ("10.244.1.2", false, true),
                ("10.244.1.3", true, true),
                ("10.244.1.5", true, true)
            ]
            .map(|(a, r, s)| (a.to_string(), r, s))
        );
    }

    #[test]
    fn endpoints_merge_slices_with_their_own_target_ports() {
        let (a, b) = two_slices();
        let by_port = endpoints_by_port(&[&a, &b]);
        let eps = &by_port[&("http".to_string(), Protocol::Tcp)];
        let got: Vec<(String, u16)> = eps.iter().map(|e| (e.ip.to_string(), e.port)).collect();
        assert_eq!(
            got,
            [
                ("10.244.1.2", 8080),
                ("10.244.1.2", 9090),
                ("10.244.2.2", 8080),
                ("10.244.2.3", 8080),
                ("10.244.3.2", 9090)
            ]
            .map(|(a, p)| (a.to_string(), p))
        );
        // A nil ready condition means ready.
        assert!(
            eps.iter()
                .find(|e| e.ip == Ipv4Addr::new(10, 244, 2, 3))
                .unwrap()
                .ready
        );
    }

    #[test]
    fn terminating_endpoints_only_when_nothing_is_ready() {
        let (a, _) = two_slices();
        let by_port = endpoints_by_port(&[&a]);
        let eps = &by_port[&("http".to_string(), Protocol::Tcp)];
        assert_eq!(usable(eps).len(), 2);
        let only_terminating: Vec<Endpoint> =
            eps.iter().filter(|e| e.terminating).cloned().collect();
        let picked = usable(&only_terminating);
        assert_eq!(picked.len(), 1);
        assert_eq!(picked[0].ip, Ipv4Addr::new(10, 244, 2, 2));
        let not_serving = Endpoint {
            serving: false,
            ..only_terminating[0].clone()
        };
        assert!(usable(&[not_serving]).is_empty());
    }

    /// Endpoints a (node-1, zone-a) and b (node-2, zone-b) with the hints
    /// given, plus c (node-3) not ready and unhinted.
    fn hinted(a: serde_json::Value, b: serde_json::Value) -> Vec<Endpoint> {
        let s = slice(json!({
            "metadata": {"name": "web-1"}, "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080}],
            "endpoints": [
                {"addresses": ["10.244.1.2"], "nodeName": "node-1", "hints": a},
                {"addresses": ["10.244.2.2"], "nodeName": "node-2", "hints": b},
                {"addresses": ["10.244.3.2"], "nodeName": "node-3", "conditions": {"ready": false}}
            ]
        }));
        endpoints_by_port(&[&s])
            .remove(&("http".to_string(), Protocol::Tcp))
            .unwrap()
    }

    fn chosen(eps: &[Endpoint], node: &str, zone: Option<&str>) -> Vec<String> {
        cluster_endpoints(eps, node, zone)
            .iter()
            .map(|e| e.ip.to_string())
            .collect()
    }

    #[test]
    fn topology_hints_keep_traffic_in_the_zone_or_on_the_node_when_they_can() {
        const A: &str = "10.244.1.2";
        const B: &str = "10.244.2.2";
        let zones = hinted(
            json!({"forZones": [{"name": "zone-a"}]}),
            json!({"forZones": [{"name": "zone-b"}]}),
        );
        assert_eq!(chosen(&zones, "node-1", Some("zone-a")), [A]);
        assert_eq!(chosen(&zones, "node-9", Some("zone-b")), [B]);
        // No endpoint for the node's zone, or a node without a zone: all.
        assert_eq!(chosen(&zones, "node-9", Some("zone-c")), [A, B]);
        assert_eq!(chosen(&zones, "node-1", None), [A, B]);
        // One ready endpoint without hints: the hints are not used at all.
        let partial = hinted(json!({"forZones": [{"name": "zone-a"}]}), json!(null));
        assert_eq!(chosen(&partial, "node-1", Some("zone-a")), [A, B]);
        // Node hints come first, and fall back to zone hints.
        let both = hinted(
            json!({"forNodes": [{"name": "node-1"}], "forZones": [{"name": "zone-x"}]}),
            json!({"forNodes": [{"name": "node-2"}], "forZones": [{"name": "zone-x"}]}),
        );
        assert_eq!(chosen(&both, "node-2", Some("zone-x")), [B]);
        assert_eq!(chosen(&both, "node-9", Some("zone-x")), [A, B]);
        assert_eq!(chosen(&both, "node-9", Some("zone-y")), [A, B]);
        // Nothing ready: the terminating fallback ignores topology.
        let draining: Vec<Endpoint> = zones
            .iter()
            .map(|e| Endpoint {
                ready: false,
                terminating: true,
                ..e.clone()
            })
            .collect();
        assert_eq!(
            chosen(&draining, "node-1", Some("zone-a")),
            [A, B, "10.244.3.2"]
        );
    }

    #[test]
    fn merging_slice_parts_equals_reading_them_together() {
        let (a, b) = two_slices();
        let together = endpoints_by_port(&[&a, &b]);
        let parts = [
            pack(endpoints_by_port(&[&a])),
            pack(endpoints_by_port(&[&b])),
        ];
        assert_eq!(merge(&parts), together);
    }

    #[test]
    fn ipv6_slices_are_ignored() {
        let s = slice(json!({
            "metadata": {"name": "v6"}, "addressType": "IPv6",
            "ports": [{"name": "http", "port": 8080}],
            "endpoints": [{"addresses": ["fd00::2"]}]
        }));
        assert!(endpoints_by_port(&[&s]).is_empty());
    }

    fn ranges(list: serde_json::Value) -> Result<SourceRanges, Skipped> {
        let svc = basic(json!({"type": "LoadBalancer", "loadBalancerSourceRanges": list}));
        service_info(&svc).map(|info| info.ports[0].source_ranges.clone())
    }

    /// The Service is not programmed at all: its LoadBalancer addresses
    /// admit nobody, rather than everybody.
    #[test]
    fn an_unreadable_source_range_leaves_the_service_out() {
        assert_eq!(ranges(json!([])), Ok(SourceRanges::Any));
        for bad in ["198.18.1.99", "junk", "", "198.18.1.0/33", "300.1.1.0/24"] {
            let Err(Skipped::Invalid(why)) = ranges(json!(["198.18.0.0/30", bad])) else {
                panic!("{bad:?} was accepted");
            };
            assert!(why.contains("loadBalancerSourceRanges[1]"), "{why}");
            assert!(why.contains(&format!("{bad:?}")), "{why}");
        }
    }

    #[test]
    fn a_source_range_that_still_cannot_be_read_fails_closed() {
        let entries = ["198.18.0.0/30".to_string(), "junk".to_string()];
        assert_eq!(SourceRanges::parse(&entries), SourceRanges::Only(vec![]));
    }

    #[test]
    fn ipv6_source_ranges_admit_no_ipv4_client() {
        assert_eq!(
            ranges(json!(["2001:db8::/64"])),
            Ok(SourceRanges::Only(vec![]))
        );
    }
}
