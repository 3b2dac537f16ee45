//! `weft lab explain`: the policy verdict on a connection between
//! lab parties, per direction, with the policy and rule that decided —
//! computed by `weft-policy` from the lab's Pods, Namespaces and
//! NetworkPolicies. A Service destination is explained for each of its
//! backends (policy holds after the Service's translation).
//!
//! It reads the cluster and decides nothing itself; the verdicts are the
//! model's.

use std::net::IpAddr;

use anyhow::{bail, Context, Result};
use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use weft_policy::api::ClusterNetworkPolicy;
use weft_policy::model::{self, namespace_labels, Policies, Protocol};
use weft_policy::verdict::{verdict, Connection, Party};

use super::matrix::default_port;
use super::Lab;
use crate::endpointslices::SERVICE_NAME_LABEL;
use crate::objects::key;
use crate::probe;
use crate::targets::{self, Source, Target};

/// What to explain: `from` and `to` as `weft lab probe` spells them.
#[derive(Debug, Clone)]
pub struct ExplainOptions {
    pub from: String,
    /// `NS/POD[:PORT][/PROTO]` or `svc/NS/NAME[:PORT][/PROTO]` (a
    /// protocol needs the namespace: `svc/NAME/udp` would be Service
    /// `udp` in namespace `NAME`).
    pub to: String,
    /// The destination port (a pod's first declared port when absent; a
    /// Service's port otherwise, given in `to`).
    pub port: Option<u16>,
    /// TCP unless `to` or this says otherwise.
    pub protocol: Option<Protocol>,
}

/// The destination as asked: `to` without its port (for a pod) and
/// protocol suffixes, and the port and protocol from either place.
#[derive(Debug, PartialEq, Eq)]
struct Query {
    to: String,
    port: Option<u16>,
    protocol: Protocol,
}

impl Query {
    fn of(opts: &ExplainOptions) -> Result<Query> {
        let mut to = opts.to.as_str();
        // A protocol is a last path segment after the full name (names
        // hold no `/`): NS/POD/PROTO or svc/NS/NAME/PROTO.
        let service = to.starts_with("svc/") || to.starts_with("service/");
        let full = if service { 3 } else { 2 };
        let mut protocol = opts.protocol;
        if to.matches('/').count() == full {
            let (rest, suffix) = to.rsplit_once('/').expect("counted");
            let named = Protocol::parse(Some(&suffix.to_ascii_uppercase())).with_context(|| {
                format!("{suffix:?} in --to is not a protocol: write tcp, udp or sctp")
            })?;
            if protocol.is_some_and(|p| p != named) {
                bail!("--to says {suffix} but --protocol says otherwise");
            }
            protocol = Some(named);
            to = rest;
        }
        let mut port = opts.port;
        if !service {
            if let Some((pod, number)) = to.split_once(':') {
                let number: u16 = number
                    .parse()
                    .with_context(|| format!("the port in --to {:?} is not a number", opts.to))?;
                if port.is_some_and(|p| p != number) {
                    bail!(
                        "--to says port {number} but --port says {}",
                        port.unwrap_or_default()
                    );
                }
                port = Some(number);
                to = pod;
            }
        }
        Ok(Query {
            to: to.into(),
            port,
            protocol: protocol.unwrap_or(Protocol::Tcp),
        })
    }
}

/// The verdicts, one line per destination pod.
pub fn explain(name: &str, opts: &ExplainOptions) -> Result<String> {
    let lab = Lab::open(name)?;
    let pods: Vec<Pod> = lab.cluster.list()?;
    let namespaces = namespace_labels(&lab.cluster.list::<Namespace>()?);
    let policies = Policies::read(
        &lab.cluster.list::<NetworkPolicy>()?,
        &lab.cluster.list::<ClusterNetworkPolicy>()?,
    );
    let model_pods: Vec<model::Pod> = pods.iter().map(model::Pod::read).collect();
    let query = Query::of(opts)?;
    let destinations = destinations(&lab, &pods, &model_pods, &query)?;
    let source = parse_source(&lab, &model_pods, &opts.from)?;
    let mut lines = Vec::new();
    for (pod, port) in destinations {
        let from = match &source {
            Side::Pod(p) => Party::Pod(p),
            Side::Node(name, _) if Some(name) == pod.node.as_ref() => Party::OwnNode,
            Side::Node(_, ip) | Side::Address(ip) => Party::Address(*ip),
        };
        let conn = Connection {
            from,
            to: Party::Pod(pod),
            port,
            protocol: query.protocol,
        };
        lines.push(verdict(&policies, &namespaces, &conn).explain(&conn));
    }
    for problem in policies.problems() {
        lines.push(format!("note: {problem}"));
    }
    Ok(lines.join("\n") + "\n")
}

enum Side<'a> {
    Pod(&'a model::Pod),
    Node(String, IpAddr),
    Address(IpAddr),
}

fn parse_source<'a>(lab: &Lab, pods: &'a [model::Pod], text: &str) -> Result<Side<'a>> {
    Ok(match targets::parse_source(text)? {
        Source::External => Side::Address(IpAddr::V4(lab.state.external_ip())),
        Source::Node(name) => {
            let node = lab
                .state
                .node(&name)
                .with_context(|| format!("no node {name} in lab {}", lab.state.name))?;
            Side::Node(name, IpAddr::V4(node.ip))
        }
        Source::Pod(text) => Side::Pod(find_pod(pods, &text)?),
    })
}

/// "NS/NAME" or "NAME" (in default).
fn find_pod<'a>(pods: &'a [model::Pod], text: &str) -> Result<&'a model::Pod> {
    let (namespace, name) = text.split_once('/').unwrap_or(("default", text));
    pods.iter()
        .find(|p| p.namespace == namespace && p.name == name)
        .with_context(|| format!("no pod {namespace}/{name} (see `weft lab get pods -A`)"))
}

/// The destination pods and the port each is reached on.
fn destinations<'a>(
    lab: &Lab,
    api_pods: &[Pod],
    pods: &'a [model::Pod],
    query: &Query,
) -> Result<Vec<(&'a model::Pod, u16)>> {
    match targets::parse_target(&query.to)? {
        Target::Pod(text) => {
            let pod = find_pod(pods, &text)?;
            // As `probe` picks it: the first declared port of the protocol.
            let probed = match query.protocol {
                Protocol::Udp => probe::Protocol::Udp,
                Protocol::Tcp | Protocol::Sctp => probe::Protocol::Tcp,
            };
            let port = query
                .port
                .or_else(|| {
                    let api = api_pods
                        .iter()
                        .find(|p| key(*p) == (pod.namespace.clone(), pod.name.clone()))?;
                    default_port(api, probed)
                })
                .with_context(|| format!("pod {pod} declares no port; give --port"))?;
            Ok(vec![(pod, port)])
        }
        Target::Service {
            namespace,
            name,
            port,
        } => service_backends(
            lab,
            pods,
            namespace.as_deref().unwrap_or("default"),
            &name,
            port.as_deref(),
        ),
        _ => bail!("explain --to takes a pod (NS/NAME) or a Service (svc/NS/NAME[:PORT])"),
    }
}

/// A Service's ready backends, each with the port the Service's chosen
/// port reaches on it (its EndpointSlices' port of the same name).
fn service_backends<'a>(
    lab: &Lab,
    pods: &'a [model::Pod],
    namespace: &str,
    name: &str,
    port: Option<&str>,
) -> Result<Vec<(&'a model::Pod, u16)>> {
    let service: Service = lab
        .cluster
        .get(namespace, name)?
        .with_context(|| format!("no Service {namespace}/{name}"))?;
    let ports = service.spec.and_then(|s| s.ports).unwrap_or_default();
    let chosen = targets::select_port(&ports, port, None)
        .with_context(|| format!("Service {namespace}/{name} has no port {port:?}"))?;
    let port_name = chosen.name.clone().unwrap_or_default();
    let slices: Vec<EndpointSlice> = lab.cluster.list()?;
    let mut out = Vec::new();
    for slice in slices.iter().filter(|s| {
        key(*s).0 == namespace
            && s.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(SERVICE_NAME_LABEL))
                .map(String::as_str)
                == Some(name)
    }) {
        let Some(number) = slice
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.clone().unwrap_or_default() == port_name)
            .and_then(|p| p.port)
            .and_then(|p| u16::try_from(p).ok())
        else {
            continue;
        };
        for endpoint in slice
            .endpoints
            .iter()
            .flatten()
            .filter(|e| e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true))
        {
            let Some(ip) = endpoint
                .addresses
                .first()
                .and_then(|a| a.parse::<IpAddr>().ok())
            else {
                continue;
            };
            if let Some(pod) = pods.iter().find(|p| p.ip == Some(ip)) {
                out.push((pod, number));
            }
        }
    }
    if out.is_empty() {
        let target = match &chosen.target_port {
            Some(IntOrString::Int(n)) => n.to_string(),
            Some(IntOrString::String(s)) => s.clone(),
            None => chosen.port.to_string(),
        };
        bail!(
            "Service {namespace}/{name} has no ready backend for port {target}: nothing to explain"
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(to: &str, port: Option<u16>, protocol: Option<Protocol>) -> Result<Query> {
        Query::of(&ExplainOptions {
            from: "a".into(),
            to: to.into(),
            port,
            protocol,
        })
    }

    fn ok(to: &str, port: Option<u16>, protocol: Protocol) -> Query {
        Query {
            to: to.into(),
            port,
            protocol,
        }
    }

    #[test]
    fn to_takes_a_port_and_a_protocol_after_the_name() {
        assert_eq!(
            query("prod/db", None, None).unwrap(),
            ok("prod/db", None, Protocol::Tcp)
        );
        assert_eq!(
            query("prod/db:5432/UDP", None, None).unwrap(),
            ok("prod/db", Some(5432), Protocol::Udp)
        );
        assert_eq!(
            query("prod/db/sctp", Some(9), None).unwrap(),
            ok("prod/db", Some(9), Protocol::Sctp)
        );
        // A Service's port stays in its name for the Service's own rules.
        assert_eq!(
            query("svc/prod/db:pg/udp", None, None).unwrap(),
            ok("svc/prod/db:pg", None, Protocol::Udp)
        );
        assert_eq!(
            query("svc/prod/db", None, Some(Protocol::Udp)).unwrap(),
            ok("svc/prod/db", None, Protocol::Udp)
        );
        assert_eq!(
            query("service/prod/db:80/udp", None, None).unwrap(),
            ok("service/prod/db:80", None, Protocol::Udp)
        );
    }

    #[test]
    fn contradictions_and_nonsense_are_refused() {
        for (to, port, protocol) in [
            ("prod/db/icmp", None, None),
            ("prod/db:80/tcp", Some(81), None),
            ("prod/db/udp", None, Some(Protocol::Tcp)),
            ("prod/db:http", None, None),
        ] {
            assert!(query(to, port, protocol).is_err(), "{to} accepted");
        }
    }
}
