//! The API server's side of Services in the lab: defaults, validation and
//! the allocators — clusterIPs from the service CIDR, nodePorts and
//! healthCheckNodePorts from 30000–32767, LoadBalancer addresses from the
//! lab's pool, published in `status.loadBalancer` as a cloud controller
//! would.
//!
//! Pure: what is taken is read from the other Services passed in, so an
//! allocation is released by deleting the Service that holds it or changing
//! its type. It must not touch the store, the network or the clock; the
//! caller stores what [`admit`] returns. Allocation is deterministic (the
//! lowest free value) and, as in Kubernetes, prefers the part of a range
//! above a small "static" band kept for values asked for explicitly.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::ops::RangeInclusive;

use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::{
    ClientIPConfig, LoadBalancerIngress, LoadBalancerStatus, Service, ServicePort, ServiceSpec,
    ServiceStatus, SessionAffinityConfig,
};
use k8s_openapi::api::networking::v1::{ServiceCIDR, ServiceCIDRSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use weft_proxy::model::ingress_ips;
use weft_validation::{names, objects::validate_service};

use crate::objects::key;

/// Kubernetes' default `--service-node-port-range`.
pub const NODE_PORTS: RangeInclusive<u16> = 30000..=32767;
/// Kubernetes' default ClientIP affinity timeout (3 hours), and its maximum.
const DEFAULT_AFFINITY_SECONDS: i32 = 10_800;
const MAX_AFFINITY_SECONDS: i32 = 86_400;
/// `clusterIP: None`.
pub const HEADLESS: &str = "None";

/// The ServiceCIDR holding the lab's service range, named as the API
/// server names the one it makes from `--service-cluster-ip-range`. The
/// agents drop traffic to addresses of it that no Service has.
pub fn default_service_cidr(cidr: Ipv4Net) -> ServiceCIDR {
    ServiceCIDR {
        metadata: ObjectMeta {
            name: Some("kubernetes".into()),
            ..ObjectMeta::default()
        },
        spec: Some(ServiceCIDRSpec {
            cidrs: Some(vec![cidr.to_string()]),
        }),
        status: None,
    }
}

/// Where the allocators take from.
#[derive(Debug, Clone)]
pub struct Pools {
    pub service_cidr: Ipv4Net,
    pub lb_pool: Ipv4Net,
    /// Pool addresses never handed out: the underlay's network and
    /// broadcast addresses, the external client, the nodes.
    pub lb_reserved: Vec<Ipv4Addr>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ServiceError {
    #[error("{field}: {reason}")]
    Invalid { field: String, reason: String },
    /// What the API server's validation found (every field at once).
    #[error("{0}")]
    Rejected(weft_validation::Errors),
    #[error(
        "spec.clusterIP {ip} is outside the lab's service CIDR {cidr}; use an address of {cidr} \
         or leave clusterIP out to get one"
    )]
    ClusterIpOutside { ip: Ipv4Addr, cidr: Ipv4Net },
    #[error(
        "spec.clusterIP {ip} is already used by Service {holder}; use another address or leave \
         clusterIP out to get one"
    )]
    ClusterIpTaken { ip: Ipv4Addr, holder: String },
    #[error(
        "the service CIDR {cidr} has no free address left; delete a Service or recreate the lab \
         with a larger --service-cidr"
    )]
    ClusterIpsExhausted { cidr: Ipv4Net },
    #[error("{field}: {port} is outside the nodePort range 30000-32767")]
    NodePortOutOfRange { field: String, port: i32 },
    #[error(
        "{field}: port {port}/{protocol} is already used by Service {holder}; use another or \
         leave it out to get one"
    )]
    NodePortTaken {
        field: String,
        port: u16,
        protocol: String,
        holder: String,
    },
    #[error(
        "no free nodePort left for {protocol} in 30000-32767; delete a NodePort or LoadBalancer \
         Service"
    )]
    NodePortsExhausted { protocol: String },
    #[error(
        "spec.loadBalancerIP {ip} is not a usable address of the lab's LoadBalancer pool {pool} \
         (weft lab up --lb-cidr; the underlay's broadcast address, the external client and the \
         nodes are never handed out); use another or leave loadBalancerIP out to get one"
    )]
    LbIpOutside { ip: Ipv4Addr, pool: Ipv4Net },
    #[error(
        "spec.loadBalancerIP {ip} is already used by Service {holder}; use another address of \
         {pool} or leave loadBalancerIP out to get one"
    )]
    LbIpTaken {
        ip: Ipv4Addr,
        holder: String,
        pool: Ipv4Net,
    },
    #[error(
        "the LoadBalancer pool {pool} has no free address left; delete a LoadBalancer Service or \
         recreate the lab with a larger --lb-cidr"
    )]
    LbPoolExhausted { pool: Ipv4Net },
}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> ServiceError {
    ServiceError::Invalid {
        field: field.into(),
        reason: reason.into(),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    ClusterIp,
    NodePort,
    LoadBalancer,
    ExternalName,
}

impl Kind {
    fn of(spec: &ServiceSpec) -> Result<Kind, ServiceError> {
        match spec.type_.as_deref().unwrap_or("ClusterIP") {
            "ClusterIP" => Ok(Kind::ClusterIp),
            "NodePort" => Ok(Kind::NodePort),
            "LoadBalancer" => Ok(Kind::LoadBalancer),
            "ExternalName" => Ok(Kind::ExternalName),
            other => Err(invalid(
                "spec.type",
                format!("{other:?} is not ClusterIP, NodePort, LoadBalancer or ExternalName"),
            )),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Kind::ClusterIp => "ClusterIP",
            Kind::NodePort => "NodePort",
            Kind::LoadBalancer => "LoadBalancer",
            Kind::ExternalName => "ExternalName",
        }
    }

    fn has_node_ports(self) -> bool {
        matches!(self, Kind::NodePort | Kind::LoadBalancer)
    }
}

/// What the other Services hold, and who holds it (`namespace/name`).
#[derive(Debug, Default)]
struct Taken {
    cluster_ips: BTreeMap<Ipv4Addr, String>,
    /// (protocol, port): nodePorts and healthCheckNodePorts (TCP).
    node_ports: BTreeMap<(String, u16), String>,
    lb_ips: BTreeMap<Ipv4Addr, String>,
}

impl Taken {
    fn of(services: &[Service]) -> Taken {
        let mut taken = Taken::default();
        for svc in services {
            let (namespace, name) = key(svc);
            let holder = format!("{namespace}/{name}");
            let spec = svc.spec.clone().unwrap_or_default();
            for ip in spec.cluster_ips.iter().flatten().chain(&spec.cluster_ip) {
                if let Ok(ip) = ip.parse() {
                    taken.cluster_ips.insert(ip, holder.clone());
                }
            }
            for port in spec.ports.iter().flatten() {
                if let Some(n) = port.node_port.and_then(|n| u16::try_from(n).ok()) {
                    taken
                        .node_ports
                        .insert((protocol(port).to_string(), n), holder.clone());
                }
            }
            if let Some(n) = spec
                .health_check_node_port
                .and_then(|n| u16::try_from(n).ok())
            {
                taken.node_ports.insert(("TCP".into(), n), holder.clone());
            }
            for ip in ingress_ips(svc) {
                taken.lb_ips.insert(ip, holder.clone());
            }
        }
        taken
    }
}

/// A Service port's protocol; absent means TCP.
pub fn protocol(port: &ServicePort) -> &str {
    port.protocol.as_deref().unwrap_or("TCP")
}

/// The Service the lab stores for `applied`: defaults filled in as the API
/// server does, validated, with its clusterIP, nodePorts,
/// healthCheckNodePort and LoadBalancer address allocated. `current` is the
/// stored version when `applied` updates it: what it was allocated stays
/// unless `applied` asks for something else. `others` are every other
/// Service of the lab (not `current`).
pub fn admit(
    applied: &Service,
    current: Option<&Service>,
    others: &[Service],
    pools: &Pools,
) -> Result<Service, ServiceError> {
    validate_service(applied).map_err(ServiceError::Rejected)?;
    let mut taken = Taken::of(others);
    let (namespace, name) = key(applied);
    let own = format!("{namespace}/{name}");
    let mut spec = applied.spec.clone().unwrap_or_default();
    let kind = Kind::of(&spec)?;
    spec.type_ = Some(kind.name().into());
    let old = current
        .and_then(|c| c.spec.as_ref())
        .filter(|o| Kind::of(o) != Ok(Kind::ExternalName) && kind != Kind::ExternalName);
    cluster_ip(&mut spec, kind, old, &pools.service_cidr, &taken)?;
    ports(&mut spec, kind)?;
    policies(&mut spec, kind)?;
    node_ports(&mut spec, kind, old, &mut taken, &own)?;
    let status = load_balancer(&spec, kind, current, pools, &taken)?;
    Ok(Service {
        metadata: applied.metadata.clone(),
        spec: Some(spec),
        status: Some(status),
    })
}

/// `clusterIP`/`clusterIPs` and the IP families: an ExternalName Service
/// has none, `None` is headless, an address asked for must be free and in
/// the CIDR, and otherwise one is allocated (or kept from `old`).
fn cluster_ip(
    spec: &mut ServiceSpec,
    kind: Kind,
    old: Option<&ServiceSpec>,
    cidr: &Ipv4Net,
    taken: &Taken,
) -> Result<(), ServiceError> {
    let requested = requested_cluster_ip(spec)?;
    if kind == Kind::ExternalName {
        if requested.is_some() {
            return Err(invalid(
                "spec.clusterIP",
                "an ExternalName Service has no clusterIP; remove it",
            ));
        }
        spec.cluster_ip = None;
        spec.cluster_ips = None;
        spec.ip_families = None;
        spec.ip_family_policy = None;
        return Ok(());
    }
    let kept = old
        .and_then(|o| o.cluster_ip.clone())
        .filter(|ip| !ip.is_empty());
    let chosen = match requested.or(kept) {
        Some(headless) if headless == HEADLESS => {
            if kind != Kind::ClusterIp {
                return Err(invalid(
                    "spec.clusterIP",
                    format!(
                        "a {} Service cannot be headless (clusterIP: None)",
                        kind.name()
                    ),
                ));
            }
            HEADLESS.to_string()
        }
        Some(text) => requested_ip(&text, cidr, taken)?.to_string(),
        None => allocate_ip(cidr, taken)?.to_string(),
    };
    spec.cluster_ip = Some(chosen.clone());
    spec.cluster_ips = Some(vec![chosen]);
    ip_families(spec)
}

/// The clusterIP the manifest asks for, from `clusterIP` and `clusterIPs`.
fn requested_cluster_ip(spec: &ServiceSpec) -> Result<Option<String>, ServiceError> {
    let single = spec.cluster_ip.clone().filter(|ip| !ip.is_empty());
    let list = spec.cluster_ips.clone().unwrap_or_default();
    if list.len() > 1 {
        return Err(invalid(
            "spec.clusterIPs",
            "the lab is IPv4 single-stack: give at most one address",
        ));
    }
    match (single, list.into_iter().next().filter(|ip| !ip.is_empty())) {
        (Some(a), Some(b)) if a != b => Err(invalid(
            "spec.clusterIPs",
            format!("must start with spec.clusterIP ({a}), not {b}"),
        )),
        (a, b) => Ok(a.or(b)),
    }
}

fn requested_ip(text: &str, cidr: &Ipv4Net, taken: &Taken) -> Result<Ipv4Addr, ServiceError> {
    let ip: Ipv4Addr = text.parse().map_err(|_| {
        invalid(
            "spec.clusterIP",
            format!("{text:?} is not an IPv4 address (or None for a headless Service)"),
        )
    })?;
    if !hosts(cidr).contains(&u32::from(ip)) {
        return Err(ServiceError::ClusterIpOutside { ip, cidr: *cidr });
    }
    match taken.cluster_ips.get(&ip) {
        Some(holder) => Err(ServiceError::ClusterIpTaken {
            ip,
            holder: holder.clone(),
        }),
        None => Ok(ip),
    }
}

fn allocate_ip(cidr: &Ipv4Net, taken: &Taken) -> Result<Ipv4Addr, ServiceError> {
    let range = hosts(cidr);
    let band = static_band(range_size(&range), 16, 256);
    pick(range, band, |v| {
        !taken.cluster_ips.contains_key(&Ipv4Addr::from(v))
    })
    .map(Ipv4Addr::from)
    .ok_or(ServiceError::ClusterIpsExhausted { cidr: *cidr })
}

/// The usable addresses of a network (without network and broadcast
/// addresses where it has them).
fn hosts(net: &Ipv4Net) -> RangeInclusive<u32> {
    let (first, last) = (u32::from(net.network()), u32::from(net.broadcast()));
    if net.prefix_len() >= 31 {
        first..=last
    } else {
        first + 1..=last - 1
    }
}

fn range_size(range: &RangeInclusive<u32>) -> u32 {
    range.end().saturating_sub(*range.start()).saturating_add(1)
}

/// Kubernetes' static band: the low part of a range that dynamic
/// allocation uses only when the rest is full — 1/`step` of the range,
/// at least 16 and at most `max` (none for ranges under 16).
fn static_band(size: u32, step: u32, max: u32) -> u32 {
    const MIN: u32 = 16;
    if size < MIN {
        0
    } else {
        (size / step).clamp(MIN, max)
    }
}

/// The lowest free value above the static band, else the lowest in it.
fn pick(range: RangeInclusive<u32>, band: u32, free: impl Fn(u32) -> bool) -> Option<u32> {
    let (start, end) = (*range.start(), *range.end());
    let split = start.saturating_add(band).min(end);
    (split..=end).chain(start..split).find(|v| free(*v))
}

fn ip_families(spec: &mut ServiceSpec) -> Result<(), ServiceError> {
    let families = spec.ip_families.clone().unwrap_or_default();
    if families.iter().any(|f| f != "IPv4") || families.len() > 1 {
        return Err(invalid(
            "spec.ipFamilies",
            "the lab is IPv4 single-stack: use [IPv4] or leave it out",
        ));
    }
    spec.ip_families = Some(vec!["IPv4".into()]);
    match spec.ip_family_policy.as_deref() {
        None => spec.ip_family_policy = Some("SingleStack".into()),
        Some("SingleStack" | "PreferDualStack") => {}
        Some(other) => {
            return Err(invalid(
                "spec.ipFamilyPolicy",
                format!(
                    "{other:?}: the lab is IPv4 single-stack; use SingleStack or PreferDualStack"
                ),
            ))
        }
    }
    Ok(())
}

/// Each port's defaults (protocol TCP, targetPort = port) and validity.
fn ports(spec: &mut ServiceSpec, kind: Kind) -> Result<(), ServiceError> {
    let ports = spec.ports.get_or_insert_with(Vec::new);
    let headless = spec.cluster_ip.as_deref() == Some(HEADLESS);
    if ports.is_empty() && !headless && kind != Kind::ExternalName {
        return Err(invalid(
            "spec.ports",
            "a Service needs at least one port (only headless and ExternalName Services may have none)",
        ));
    }
    let several = ports.len() > 1;
    let mut seen: Vec<(String, i32, String)> = Vec::new();
    for (i, port) in ports.iter_mut().enumerate() {
        let field = format!("spec.ports[{i}]");
        default_port(port, &field, several)?;
        if port.node_port.is_some_and(|n| n != 0) && !kind.has_node_ports() {
            return Err(invalid(
                format!("{field}.nodePort"),
                "only NodePort and LoadBalancer Services have nodePorts; remove it or change the type",
            ));
        }
        port.node_port = port.node_port.filter(|n| *n != 0);
        let name = port.name.clone().unwrap_or_default();
        let proto = protocol(port).to_string();
        if seen.iter().any(|(n, _, _)| !name.is_empty() && *n == name) {
            return Err(invalid(
                format!("{field}.name"),
                format!("{name:?} is used twice"),
            ));
        }
        if seen
            .iter()
            .any(|(_, p, pr)| *p == port.port && *pr == proto)
        {
            return Err(invalid(
                format!("{field}.port"),
                format!("{}/{proto} is used twice", port.port),
            ));
        }
        seen.push((name, port.port, proto));
    }
    Ok(())
}

fn default_port(port: &mut ServicePort, field: &str, several: bool) -> Result<(), ServiceError> {
    if !(1..=65535).contains(&port.port) {
        return Err(invalid(format!("{field}.port"), "must be 1-65535"));
    }
    let proto = protocol(port).to_string();
    if !matches!(proto.as_str(), "TCP" | "UDP" | "SCTP") {
        return Err(invalid(
            format!("{field}.protocol"),
            format!("{proto:?} is not TCP, UDP or SCTP"),
        ));
    }
    port.protocol = Some(proto);
    match port.name.as_deref().unwrap_or("") {
        "" if several => {
            return Err(invalid(
                format!("{field}.name"),
                "every port needs a name when a Service has more than one",
            ))
        }
        "" => {}
        name if names::dns1123_label(name).is_err() => {
            return Err(invalid(
                format!("{field}.name"),
                format!("{name:?} is not a valid name: lowercase letters, digits and '-'"),
            ))
        }
        _ => {}
    }
    port.target_port = Some(target_port(port, field)?);
    Ok(())
}

fn target_port(port: &ServicePort, field: &str) -> Result<IntOrString, ServiceError> {
    match &port.target_port {
        None | Some(IntOrString::Int(0)) => Ok(IntOrString::Int(port.port)),
        Some(IntOrString::Int(n)) if (1..=65535).contains(n) => Ok(IntOrString::Int(*n)),
        Some(IntOrString::Int(n)) => Err(invalid(
            format!("{field}.targetPort"),
            format!("{n} is not 1-65535"),
        )),
        Some(IntOrString::String(name)) if names::port_name(name).is_ok() => {
            Ok(IntOrString::String(name.clone()))
        }
        Some(IntOrString::String(name)) => Err(invalid(
            format!("{field}.targetPort"),
            format!(
                "{name:?} is neither a port number (write numbers without quotes) nor a \
                 container port name (up to 15 lowercase letters, digits and '-', with a letter)"
            ),
        )),
    }
}

/// The traffic policies, session affinity and LoadBalancer-only fields.
fn policies(spec: &mut ServiceSpec, kind: Kind) -> Result<(), ServiceError> {
    let external =
        kind.has_node_ports() || spec.external_ips.as_ref().is_some_and(|e| !e.is_empty());
    spec.external_traffic_policy =
        match (external, spec.external_traffic_policy.take()) {
            (true, None) => Some("Cluster".into()),
            (true, Some(p)) => Some(one_of(
                "spec.externalTrafficPolicy",
                p,
                &["Cluster", "Local"],
            )?),
            (false, None) => None,
            (false, Some(_)) => return Err(invalid(
                "spec.externalTrafficPolicy",
                "applies only to NodePort and LoadBalancer Services (or externalIPs); remove it",
            )),
        };
    if kind != Kind::ExternalName {
        let policy = spec
            .internal_traffic_policy
            .take()
            .unwrap_or("Cluster".into());
        spec.internal_traffic_policy = Some(one_of(
            "spec.internalTrafficPolicy",
            policy,
            &["Cluster", "Local"],
        )?);
    }
    session_affinity(spec)?;
    lb_only_fields(spec, kind)
}

fn one_of(field: &str, value: String, allowed: &[&str]) -> Result<String, ServiceError> {
    if allowed.contains(&value.as_str()) {
        Ok(value)
    } else {
        Err(invalid(
            field,
            format!("{value:?} is not one of {}", allowed.join(", ")),
        ))
    }
}

fn session_affinity(spec: &mut ServiceSpec) -> Result<(), ServiceError> {
    let affinity = spec.session_affinity.take().unwrap_or("None".into());
    spec.session_affinity = Some(one_of(
        "spec.sessionAffinity",
        affinity,
        &["None", "ClientIP"],
    )?);
    if spec.session_affinity.as_deref() == Some("None") {
        spec.session_affinity_config = None;
        return Ok(());
    }
    let timeout = spec
        .session_affinity_config
        .as_ref()
        .and_then(|c| c.client_ip.as_ref())
        .and_then(|c| c.timeout_seconds)
        .unwrap_or(DEFAULT_AFFINITY_SECONDS);
    if !(1..=MAX_AFFINITY_SECONDS).contains(&timeout) {
        return Err(invalid(
            "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
            format!("{timeout} is not 1-{MAX_AFFINITY_SECONDS}"),
        ));
    }
    spec.session_affinity_config = Some(SessionAffinityConfig {
        client_ip: Some(ClientIPConfig {
            timeout_seconds: Some(timeout),
        }),
    });
    Ok(())
}

fn lb_only_fields(spec: &mut ServiceSpec, kind: Kind) -> Result<(), ServiceError> {
    if kind == Kind::LoadBalancer {
        spec.allocate_load_balancer_node_ports =
            Some(spec.allocate_load_balancer_node_ports.unwrap_or(true));
        return Ok(());
    }
    let set = [
        (
            "spec.allocateLoadBalancerNodePorts",
            spec.allocate_load_balancer_node_ports.is_some(),
        ),
        (
            "spec.loadBalancerIP",
            spec.load_balancer_ip
                .as_ref()
                .is_some_and(|ip| !ip.is_empty()),
        ),
        ("spec.loadBalancerClass", spec.load_balancer_class.is_some()),
    ];
    match set.iter().find(|(_, set)| *set) {
        Some((field, _)) => Err(invalid(
            *field,
            "applies only to LoadBalancer Services; remove it or change the type",
        )),
        None => Ok(()),
    }
}

/// Every port's nodePort, and the healthCheckNodePort of a LoadBalancer
/// Service with `externalTrafficPolicy: Local` (no other Service has one).
/// Numbers asked for, or kept from `old` for the same port and protocol, are
/// reserved first, so that allocating the others cannot hand them out; they
/// need only be free for their own protocol. A port without one gets the
/// number of the same port in another protocol when that is free, else a
/// new number.
fn node_ports(
    spec: &mut ServiceSpec,
    kind: Kind,
    old: Option<&ServiceSpec>,
    taken: &mut Taken,
    own: &str,
) -> Result<(), ServiceError> {
    const HEALTH: &str = "spec.healthCheckNodePort";
    let health = health_check_wanted(spec, kind)?;
    if !kind.has_node_ports() {
        return Ok(());
    }
    let allocate = spec.allocate_load_balancer_node_ports != Some(false);
    let ports = spec.ports.get_or_insert_with(Vec::new);
    for (i, port) in ports.iter_mut().enumerate() {
        if let Some(n) = port.node_port.or_else(|| old_node_port(old, port)) {
            let field = format!("spec.ports[{i}].nodePort");
            let proto = protocol(port).to_string();
            let n = requested_node_port(&field, n, &proto, taken)?;
            reserve(taken, &proto, n, own, &mut port.node_port);
        }
    }
    let kept_health = old
        .and_then(|o| o.health_check_node_port)
        .filter(|p| *p != 0);
    if let Some(n) = spec
        .health_check_node_port
        .or(kept_health)
        .filter(|_| health)
    {
        let n = requested_node_port(HEALTH, n, "TCP", taken)?;
        reserve(taken, "TCP", n, own, &mut spec.health_check_node_port);
    }
    for i in 0..ports.len() {
        if ports[i].node_port.is_none() && allocate {
            let proto = protocol(&ports[i]).to_string();
            let n = new_node_port(ports, i, taken)?;
            reserve(taken, &proto, n, own, &mut ports[i].node_port);
        }
    }
    if health && spec.health_check_node_port.is_none() {
        let n = allocate_node_port("TCP", taken)?;
        reserve(taken, "TCP", n, own, &mut spec.health_check_node_port);
    }
    Ok(())
}

/// Whether the Service needs a healthCheckNodePort; one asked for where it
/// does not is refused, and a stale one dropped.
fn health_check_wanted(spec: &mut ServiceSpec, kind: Kind) -> Result<bool, ServiceError> {
    let needed =
        kind == Kind::LoadBalancer && spec.external_traffic_policy.as_deref() == Some("Local");
    spec.health_check_node_port = spec.health_check_node_port.filter(|p| *p != 0);
    if !needed && spec.health_check_node_port.is_some() {
        return Err(invalid(
            "spec.healthCheckNodePort",
            "only a LoadBalancer Service with externalTrafficPolicy: Local has one; remove it",
        ));
    }
    Ok(needed)
}

/// For `ports[i]`: the number the same port has in another protocol, if it
/// is free for this one, else a new one.
fn new_node_port(ports: &[ServicePort], i: usize, taken: &Taken) -> Result<u16, ServiceError> {
    let proto = protocol(&ports[i]).to_string();
    let sibling = ports
        .iter()
        .enumerate()
        .filter(|(j, p)| *j != i && p.port == ports[i].port)
        .find_map(|(_, p)| p.node_port.and_then(|n| u16::try_from(n).ok()))
        .filter(|n| !taken.node_ports.contains_key(&(proto.clone(), *n)));
    match sibling {
        Some(n) => Ok(n),
        None => allocate_node_port(&proto, taken),
    }
}

fn reserve(taken: &mut Taken, proto: &str, n: u16, own: &str, field: &mut Option<i32>) {
    taken
        .node_ports
        .insert((proto.to_string(), n), own.to_string());
    *field = Some(i32::from(n));
}

fn old_node_port(old: Option<&ServiceSpec>, port: &ServicePort) -> Option<i32> {
    old?.ports
        .iter()
        .flatten()
        .find(|o| o.port == port.port && protocol(o) == protocol(port))?
        .node_port
}

fn requested_node_port(
    field: &str,
    port: i32,
    proto: &str,
    taken: &Taken,
) -> Result<u16, ServiceError> {
    let number = u16::try_from(port)
        .ok()
        .filter(|n| NODE_PORTS.contains(n))
        .ok_or_else(|| ServiceError::NodePortOutOfRange {
            field: field.into(),
            port,
        })?;
    match taken.node_ports.get(&(proto.to_string(), number)) {
        Some(holder) => Err(ServiceError::NodePortTaken {
            field: field.into(),
            port: number,
            protocol: proto.into(),
            holder: holder.clone(),
        }),
        None => Ok(number),
    }
}

/// A number no protocol uses yet, as Kubernetes' single nodePort allocator
/// hands out: the TCP and UDP variants of one Service port may then share
/// it (see [`node_ports`]), and no two Services end up sharing one.
fn allocate_node_port(proto: &str, taken: &Taken) -> Result<u16, ServiceError> {
    let range = u32::from(*NODE_PORTS.start())..=u32::from(*NODE_PORTS.end());
    let band = static_band(range_size(&range), 32, 128);
    pick(range, band, |v| {
        u16::try_from(v).is_ok_and(|n| !taken.node_ports.keys().any(|(_, used)| *used == n))
    })
    .and_then(|v| u16::try_from(v).ok())
    .ok_or_else(|| ServiceError::NodePortsExhausted {
        protocol: proto.into(),
    })
}

/// `status.loadBalancer`: a LoadBalancer Service (without a
/// `loadBalancerClass`, which means another controller) gets the address it
/// asks for in `loadBalancerIP`, else the one it had, else a free one.
fn load_balancer(
    spec: &ServiceSpec,
    kind: Kind,
    current: Option<&Service>,
    pools: &Pools,
    taken: &Taken,
) -> Result<ServiceStatus, ServiceError> {
    let empty = ServiceStatus {
        load_balancer: Some(LoadBalancerStatus::default()),
        ..Default::default()
    };
    if kind != Kind::LoadBalancer || spec.load_balancer_class.is_some() {
        return Ok(empty);
    }
    let usable = |ip: &Ipv4Addr| pools.lb_pool.contains(ip) && !pools.lb_reserved.contains(ip);
    let ip = match spec.load_balancer_ip.as_deref().filter(|ip| !ip.is_empty()) {
        Some(text) => requested_lb_ip(text, pools, taken, usable)?,
        None => {
            let kept = current
                .filter(|c| {
                    c.spec.as_ref().and_then(|s| s.type_.as_deref()) == Some("LoadBalancer")
                })
                .and_then(|c| ingress_ips(c).into_iter().next())
                .filter(|ip| usable(ip) && !taken.lb_ips.contains_key(ip));
            match kept {
                Some(ip) => ip,
                None => allocate_lb_ip(pools, taken, usable)?,
            }
        }
    };
    Ok(ServiceStatus {
        load_balancer: Some(LoadBalancerStatus {
            ingress: Some(vec![LoadBalancerIngress {
                ip: Some(ip.to_string()),
                ip_mode: Some("VIP".into()),
                ..Default::default()
            }]),
        }),
        ..Default::default()
    })
}

fn requested_lb_ip(
    text: &str,
    pools: &Pools,
    taken: &Taken,
    usable: impl Fn(&Ipv4Addr) -> bool,
) -> Result<Ipv4Addr, ServiceError> {
    let ip: Ipv4Addr = text.parse().map_err(|_| {
        invalid(
            "spec.loadBalancerIP",
            format!("{text:?} is not an IPv4 address"),
        )
    })?;
    if !usable(&ip) {
        return Err(ServiceError::LbIpOutside {
            ip,
            pool: pools.lb_pool,
        });
    }
    match taken.lb_ips.get(&ip) {
        Some(holder) => Err(ServiceError::LbIpTaken {
            ip,
            holder: holder.clone(),
            pool: pools.lb_pool,
        }),
        None => Ok(ip),
    }
}

fn allocate_lb_ip(
    pools: &Pools,
    taken: &Taken,
    usable: impl Fn(&Ipv4Addr) -> bool,
) -> Result<Ipv4Addr, ServiceError> {
    let pool = &pools.lb_pool;
    (u32::from(pool.network())..=u32::from(pool.broadcast()))
        .map(Ipv4Addr::from)
        .find(|ip| usable(ip) && !taken.lb_ips.contains_key(ip))
        .ok_or(ServiceError::LbPoolExhausted { pool: *pool })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pools() -> Pools {
        Pools {
            service_cidr: "10.96.0.0/16".parse().unwrap(),
            lb_pool: "198.18.0.240/28".parse().unwrap(),
            lb_reserved: vec!["198.18.0.255".parse().unwrap()],
        }
    }

    fn svc(name: &str, spec: serde_json::Value) -> Service {
        serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": "default"},
            "spec": spec,
        }))
        .unwrap()
    }

    fn web() -> serde_json::Value {
        json!({"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": "http"}]})
    }

    fn admitted(name: &str, spec: serde_json::Value, others: &[Service]) -> Service {
        admit(&svc(name, spec), None, others, &pools()).unwrap()
    }

    fn spec(s: &Service) -> &ServiceSpec {
        s.spec.as_ref().unwrap()
    }

    #[test]
    fn cluster_ip_services_get_the_api_server_defaults() {
        let s = admitted("web", web(), &[]);
        let sp = spec(&s);
        assert_eq!(sp.type_.as_deref(), Some("ClusterIP"));
        // Above the static band of a /16 (256 addresses).
        assert_eq!(sp.cluster_ip.as_deref(), Some("10.96.1.1"));
        assert_eq!(sp.cluster_ips, Some(vec!["10.96.1.1".to_string()]));
        assert_eq!(sp.ip_families, Some(vec!["IPv4".to_string()]));
        assert_eq!(sp.ip_family_policy.as_deref(), Some("SingleStack"));
        assert_eq!(sp.session_affinity.as_deref(), Some("None"));
        assert_eq!(sp.internal_traffic_policy.as_deref(), Some("Cluster"));
        assert_eq!(sp.external_traffic_policy, None);
        let port = &sp.ports.as_ref().unwrap()[0];
        assert_eq!(port.protocol.as_deref(), Some("TCP"));
        assert_eq!(port.target_port, Some(IntOrString::String("http".into())));
        assert_eq!(port.node_port, None);
        let unnamed = admitted(
            "plain",
            json!({"ports": [{"port": 53, "protocol": "UDP"}]}),
            &[],
        );
        let port = &spec(&unnamed).ports.as_ref().unwrap()[0];
        assert_eq!(port.target_port, Some(IntOrString::Int(53)));
        assert_eq!(s.status.unwrap().load_balancer, Some(Default::default()));
    }

    #[test]
    fn cluster_ips_are_unique_and_requests_are_checked() {
        let first = admitted("a", web(), &[]);
        let second = admitted("b", web(), std::slice::from_ref(&first));
        assert_eq!(spec(&second).cluster_ip.as_deref(), Some("10.96.1.2"));
        let mut wanted = web();
        wanted["clusterIP"] = json!("10.96.0.10");
        let fixed = admitted("dns", wanted.clone(), &[]);
        assert_eq!(spec(&fixed).cluster_ip.as_deref(), Some("10.96.0.10"));
        let e = admit(&svc("dns2", wanted), None, &[fixed], &pools()).unwrap_err();
        assert_eq!(
            e,
            ServiceError::ClusterIpTaken {
                ip: "10.96.0.10".parse().unwrap(),
                holder: "default/dns".into()
            }
        );
        assert!(e.to_string().contains("leave clusterIP out"), "{e}");
        for (ip, outside) in [
            ("10.97.0.1", true),
            ("10.96.255.255", true),
            ("10.96.0.0", true),
        ] {
            let mut spec = web();
            spec["clusterIP"] = json!(ip);
            let e = admit(&svc("x", spec), None, &[], &pools()).unwrap_err();
            assert_eq!(
                matches!(e, ServiceError::ClusterIpOutside { .. }),
                outside,
                "{ip}: {e}"
            );
        }
        let mut bad = web();
        bad["clusterIP"] = json!("fd00::1");
        assert!(admit(&svc("x", bad), None, &[], &pools()).is_err());
        let mut dual = web();
        dual["clusterIPs"] = json!(["10.96.0.5", "fd00::5"]);
        let e = admit(&svc("x", dual), None, &[], &pools()).unwrap_err();
        assert!(e.to_string().contains("single-stack"), "{e}");
        let mut v6 = web();
        v6["ipFamilies"] = json!(["IPv6"]);
        assert!(admit(&svc("x", v6), None, &[], &pools()).is_err());
    }

    #[test]
    fn the_service_cidr_can_run_out() {
        let mut p = pools();
        p.service_cidr = "10.96.0.0/30".parse().unwrap();
        let a = admit(&svc("a", web()), None, &[], &p).unwrap();
        let b = admit(&svc("b", web()), None, std::slice::from_ref(&a), &p).unwrap();
        assert_eq!(spec(&a).cluster_ip.as_deref(), Some("10.96.0.1"));
        assert_eq!(spec(&b).cluster_ip.as_deref(), Some("10.96.0.2"));
        let e = admit(&svc("c", web()), None, &[a, b], &p).unwrap_err();
        assert!(matches!(e, ServiceError::ClusterIpsExhausted { .. }), "{e}");
        assert!(e.to_string().contains("--service-cidr"), "{e}");
    }

    #[test]
    fn headless_services_get_no_address() {
        let s = admitted(
            "h",
            json!({"clusterIP": "None", "selector": {"app": "web"}}),
            &[],
        );
        assert_eq!(spec(&s).cluster_ip.as_deref(), Some("None"));
        assert_eq!(spec(&s).cluster_ips, Some(vec!["None".to_string()]));
        let e = admit(
            &svc(
                "h",
                json!({"type": "NodePort", "clusterIP": "None", "ports": [{"port": 80}]}),
            ),
            None,
            &[],
            &pools(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("cannot be headless"), "{e}");
        let e = admit(
            &svc("p", json!({"selector": {"a": "b"}})),
            None,
            &[],
            &pools(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("at least one port"), "{e}");
        let ext = admitted(
            "e",
            json!({"type": "ExternalName", "externalName": "example.com"}),
            &[],
        );
        assert_eq!(spec(&ext).cluster_ip, None);
        assert_eq!(spec(&ext).ip_families, None);
    }

    #[test]
    fn node_ports_are_allocated_in_range_and_unique_per_protocol() {
        let np = json!({"type": "NodePort", "selector": {"app": "web"},
            "ports": [{"name": "http", "port": 80}, {"name": "dns", "port": 53, "protocol": "UDP"},
                      {"name": "dns-tcp", "port": 53, "protocol": "TCP"}]});
        let a = admitted("a", np.clone(), &[]);
        let sp = spec(&a);
        assert_eq!(sp.external_traffic_policy.as_deref(), Some("Cluster"));
        let nps: Vec<i32> = sp
            .ports
            .iter()
            .flatten()
            .map(|p| p.node_port.unwrap())
            .collect();
        // Above the static band (86 ports); 53/UDP and 53/TCP share a number.
        assert_eq!(nps, vec![30086, 30087, 30087]);
        let b = admitted("b", np, std::slice::from_ref(&a));
        let nps: Vec<i32> = spec(&b)
            .ports
            .iter()
            .flatten()
            .map(|p| p.node_port.unwrap())
            .collect();
        assert_eq!(nps, vec![30088, 30089, 30089]);
        // Asked for: in range, free for its protocol (another protocol may have it).
        let asked = |n: i32, proto: &str| json!({"type": "NodePort", "ports": [{"port": 80, "protocol": proto, "nodePort": n}]});
        let e = admit(
            &svc("c", asked(30086, "TCP")),
            None,
            std::slice::from_ref(&a),
            &pools(),
        )
        .unwrap_err();
        assert_eq!(
            e,
            ServiceError::NodePortTaken {
                field: "spec.ports[0].nodePort".into(),
                port: 30086,
                protocol: "TCP".into(),
                holder: "default/a".into()
            }
        );
        let udp = admit(
            &svc("c", asked(30086, "UDP")),
            None,
            std::slice::from_ref(&a),
            &pools(),
        )
        .unwrap();
        assert_eq!(spec(&udp).ports.as_ref().unwrap()[0].node_port, Some(30086));
        for n in [80, 29999, 32768, 70000] {
            let e = admit(&svc("c", asked(n, "TCP")), None, &[], &pools()).unwrap_err();
            assert!(
                matches!(e, ServiceError::NodePortOutOfRange { .. }),
                "{n}: {e}"
            );
        }
        let twice = json!({"type": "NodePort", "ports": [
            {"name": "a", "port": 80, "nodePort": 30100}, {"name": "b", "port": 81, "nodePort": 30100}]});
        assert!(admit(&svc("d", twice), None, &[], &pools()).is_err());
        // The number asked for one protocol is shared with the other, even after it.
        let dns = json!({"type": "NodePort", "ports": [
            {"name": "tcp", "port": 53}, {"name": "udp", "port": 53, "protocol": "UDP", "nodePort": 30200}]});
        let nps: Vec<i32> = spec(&admitted("dns", dns, &[]))
            .ports
            .iter()
            .flatten()
            .map(|p| p.node_port.unwrap())
            .collect();
        assert_eq!(nps, vec![30200, 30200]);
        let cluster = json!({"ports": [{"port": 80, "nodePort": 30100}]});
        let e = admit(&svc("d", cluster), None, &[], &pools()).unwrap_err();
        assert!(
            e.to_string().contains("only NodePort and LoadBalancer"),
            "{e}"
        );
    }

    #[test]
    fn node_ports_can_run_out() {
        // Every TCP nodePort but one taken by one big Service.
        let ports: Vec<serde_json::Value> = (30000..32767)
            .map(|n| json!({"name": format!("p{n}"), "port": n - 29000, "nodePort": n}))
            .collect();
        let big = admitted("big", json!({"type": "NodePort", "ports": ports}), &[]);
        let last = admitted(
            "last",
            json!({"type": "NodePort", "ports": [{"port": 80}]}),
            std::slice::from_ref(&big),
        );
        assert_eq!(
            spec(&last).ports.as_ref().unwrap()[0].node_port,
            Some(32767)
        );
        let e = admit(
            &svc("more", json!({"type": "NodePort", "ports": [{"port": 80}]})),
            None,
            &[big, last],
            &pools(),
        )
        .unwrap_err();
        assert_eq!(
            e,
            ServiceError::NodePortsExhausted {
                protocol: "TCP".into()
            }
        );
    }

    #[test]
    fn load_balancers_get_pool_addresses_and_health_check_ports() {
        let lb = json!({"type": "LoadBalancer", "externalTrafficPolicy": "Local",
            "selector": {"app": "web"}, "ports": [{"port": 80}]});
        let a = admitted("a", lb.clone(), &[]);
        assert_eq!(
            ingress_ips(&a),
            vec!["198.18.0.240".parse::<Ipv4Addr>().unwrap()]
        );
        let sp = spec(&a);
        assert!(NODE_PORTS.contains(&(sp.ports.as_ref().unwrap()[0].node_port.unwrap() as u16)));
        let hc = sp.health_check_node_port.unwrap();
        assert!(NODE_PORTS.contains(&(hc as u16)));
        assert_ne!(hc, sp.ports.as_ref().unwrap()[0].node_port.unwrap());
        assert_eq!(sp.allocate_load_balancer_node_ports, Some(true));
        let b = admitted("b", lb.clone(), std::slice::from_ref(&a));
        assert_eq!(
            ingress_ips(&b),
            vec!["198.18.0.241".parse::<Ipv4Addr>().unwrap()]
        );
        // Cluster policy: no health check port; asking for one is refused.
        let mut cluster = lb.clone();
        cluster["externalTrafficPolicy"] = json!("Cluster");
        assert_eq!(
            spec(&admitted("c", cluster.clone(), &[])).health_check_node_port,
            None
        );
        cluster["healthCheckNodePort"] = json!(30500);
        assert!(admit(&svc("c", cluster), None, &[], &pools()).is_err());
        // Asked-for addresses: in the pool, not reserved, free.
        let mut asked = lb.clone();
        asked["loadBalancerIP"] = json!("198.18.0.250");
        assert_eq!(
            ingress_ips(&admitted("d", asked.clone(), &[])),
            vec!["198.18.0.250".parse::<Ipv4Addr>().unwrap()]
        );
        for ip in ["198.18.0.255", "198.18.0.10", "10.0.0.1"] {
            asked["loadBalancerIP"] = json!(ip);
            let e = admit(&svc("d", asked.clone()), None, &[], &pools()).unwrap_err();
            assert!(matches!(e, ServiceError::LbIpOutside { .. }), "{ip}: {e}");
        }
        asked["loadBalancerIP"] = json!("198.18.0.240");
        let e = admit(&svc("d", asked), None, std::slice::from_ref(&a), &pools()).unwrap_err();
        assert!(matches!(e, ServiceError::LbIpTaken { .. }), "{e}");
        // Another controller's class: no address from the lab.
        let mut classy = lb;
        classy["loadBalancerClass"] = json!("example.com/lb");
        assert!(ingress_ips(&admitted("e", classy, &[])).is_empty());
    }

    #[test]
    fn the_pool_can_run_out() {
        let mut p = pools();
        p.lb_pool = "198.18.0.252/30".parse().unwrap();
        p.lb_reserved = vec!["198.18.0.255".parse().unwrap()];
        let lb = json!({"type": "LoadBalancer", "ports": [{"port": 80}]});
        let mut held = Vec::new();
        for name in ["a", "b", "c"] {
            held.push(admit(&svc(name, lb.clone()), None, &held, &p).unwrap());
        }
        let ips: Vec<Ipv4Addr> = held.iter().flat_map(ingress_ips).collect();
        assert_eq!(ips.len(), 3);
        assert!(!ips.contains(&"198.18.0.255".parse().unwrap()));
        let e = admit(&svc("d", lb), None, &held, &p).unwrap_err();
        assert_eq!(e, ServiceError::LbPoolExhausted { pool: p.lb_pool });
        assert!(e.to_string().contains("--lb-cidr"), "{e}");
    }

    #[test]
    fn updates_keep_what_was_allocated_unless_asked_otherwise() {
        let lb = json!({"type": "LoadBalancer", "externalTrafficPolicy": "Local",
            "ports": [{"name": "http", "port": 80}]});
        let first = admitted("a", lb.clone(), &[]);
        let mut changed = lb.clone();
        changed["ports"] = json!([{"name": "http", "port": 80}, {"name": "extra", "port": 81}]);
        let second = admit(&svc("a", changed), Some(&first), &[], &pools()).unwrap();
        let (s1, s2) = (spec(&first), spec(&second));
        assert_eq!(s1.cluster_ip, s2.cluster_ip);
        assert_eq!(s1.health_check_node_port, s2.health_check_node_port);
        let p1 = s1.ports.as_ref().unwrap();
        let p2 = s2.ports.as_ref().unwrap();
        assert_eq!(p1[0].node_port, p2[0].node_port);
        assert_ne!(p2[1].node_port, p2[0].node_port);
        assert_ne!(Some(p2[1].node_port.unwrap()), s2.health_check_node_port);
        assert_eq!(ingress_ips(&first), ingress_ips(&second));
        // Explicit values win; no longer a LoadBalancer releases the address.
        let mut moved = lb.clone();
        moved["clusterIP"] = json!("10.96.0.20");
        moved["loadBalancerIP"] = json!("198.18.0.245");
        let third = admit(&svc("a", moved), Some(&second), &[], &pools()).unwrap();
        assert_eq!(spec(&third).cluster_ip.as_deref(), Some("10.96.0.20"));
        assert_eq!(
            ingress_ips(&third),
            vec!["198.18.0.245".parse::<Ipv4Addr>().unwrap()]
        );
        let plain = admit(
            &svc("a", json!({"ports": [{"name": "http", "port": 80}]})),
            Some(&third),
            &[],
            &pools(),
        )
        .unwrap();
        assert_eq!(spec(&plain).cluster_ip.as_deref(), Some("10.96.0.20"));
        assert!(ingress_ips(&plain).is_empty());
        assert_eq!(spec(&plain).ports.as_ref().unwrap()[0].node_port, None);
        assert_eq!(spec(&plain).health_check_node_port, None);
    }

    #[test]
    fn ports_are_validated_like_the_api_server() {
        let bad = [
            (json!([{"port": 0}]), "spec.ports[0].port"),
            (
                json!([{"port": 80, "protocol": "ICMP"}]),
                "spec.ports[0].protocol",
            ),
            (json!([{"port": 80}, {"port": 81}]), "spec.ports[0].name"),
            (
                json!([{"name": "a", "port": 80}, {"name": "a", "port": 81}]),
                "spec.ports[1].name",
            ),
            (
                json!([{"name": "a", "port": 80}, {"name": "b", "port": 80}]),
                "spec.ports[1].port",
            ),
            (
                json!([{"port": 80, "targetPort": "8080"}]),
                "spec.ports[0].targetPort",
            ),
            (
                json!([{"port": 80, "targetPort": "a-very-long-port-name"}]),
                "spec.ports[0].targetPort",
            ),
            (
                json!([{"port": 80, "targetPort": 70000}]),
                "spec.ports[0].targetPort",
            ),
            (json!([{"name": "Http", "port": 80}]), "spec.ports[0].name"),
        ];
        for (ports, field) in bad {
            let e = admit(&svc("x", json!({"ports": ports})), None, &[], &pools()).unwrap_err();
            assert!(e.to_string().starts_with(field), "{ports}: {e}");
        }
        let e = admit(
            &svc("x", json!({"type": "Balanced", "ports": [{"port": 80}]})),
            None,
            &[],
            &pools(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("spec.type"), "{e}");
        let e = admit(
            &svc(
                "x",
                json!({"externalTrafficPolicy": "Local", "ports": [{"port": 80}]}),
            ),
            None,
            &[],
            &pools(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("externalTrafficPolicy"), "{e}");
        let affinity = admitted(
            "x",
            json!({"sessionAffinity": "ClientIP", "ports": [{"port": 80}]}),
            &[],
        );
        let config = spec(&affinity).session_affinity_config.clone().unwrap();
        assert_eq!(config.client_ip.unwrap().timeout_seconds, Some(10_800));
    }

    #[test]
    fn bands_and_picks() {
        assert_eq!(static_band(65534, 16, 256), 256);
        assert_eq!(static_band(2768, 32, 128), 86);
        assert_eq!(static_band(254, 16, 256), 16);
        assert_eq!(static_band(2, 16, 256), 0);
        assert_eq!(pick(1..=10, 3, |v| v != 4), Some(5));
        assert_eq!(pick(1..=10, 3, |v| v < 3), Some(1));
        assert_eq!(pick(1..=10, 3, |_| false), None);
        assert_eq!(
            hosts(&"10.0.0.0/30".parse().unwrap()),
            0x0a00_0001..=0x0a00_0002
        );
    }
}
