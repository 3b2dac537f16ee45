//! What `weft lab probe --from/--to` names, parsed and resolved: pods (by
//! name or `namespace/name`), `node/NAME`, `external`,
//! `svc/[NAMESPACE/]NAME[:PORT]`, `node/NAME:PORT` and `IP:PORT`.
//!
//! Pure: the caller looks the named objects up in the store and enters
//! their namespaces; nothing here touches either. The `node/`, `svc/` and
//! `external` spellings win over a pod of a namespace called `node` or
//! `svc`, or a pod called `external` (write `NAMESPACE/external` for it).

use std::net::{IpAddr, SocketAddr};

use k8s_openapi::api::core::v1::{Service, ServicePort};

use crate::objects::key;
use crate::probe::Protocol;
use crate::services::{protocol, HEADLESS};

/// Where a probe runs from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A pod's name, or `namespace/name`.
    Pod(String),
    Node(String),
    /// The lab's client outside the cluster.
    External,
}

/// What a probe reaches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A pod's name, or `namespace/name`.
    Pod(String),
    /// A Service's clusterIP; `port` is a port number or name.
    Service {
        namespace: Option<String>,
        name: String,
        port: Option<String>,
    },
    /// A node's underlay address.
    Node {
        name: String,
        port: Option<u16>,
    },
    Address {
        ip: IpAddr,
        port: Option<u16>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    #[error("{text:?}: {reason}")]
    Syntax { text: String, reason: &'static str },
    #[error("no Service {service} (see `weft lab get services -A`)")]
    NoService { service: String },
    #[error("Service {service} exists in namespaces {namespaces}; write svc/NAMESPACE/{service}")]
    Ambiguous { service: String, namespaces: String },
    #[error("Service {service} is headless (clusterIP: None); probe its pods instead")]
    Headless { service: String },
    #[error("Service {service} has no clusterIP (an ExternalName Service?); nothing to probe")]
    NoClusterIp { service: String },
    #[error("Service {service} has no port {port:?}; its ports are: {ports}")]
    NoPort {
        service: String,
        port: String,
        ports: String,
    },
    #[error(
        "port {port} of Service {service} is {protocol}; the probe speaks TCP and UDP (pass \
         --protocol to try one of those)"
    )]
    Protocol {
        service: String,
        port: i32,
        protocol: String,
    },
}

fn syntax(text: &str, reason: &'static str) -> TargetError {
    TargetError::Syntax {
        text: text.into(),
        reason,
    }
}

/// `external`, `node/NAME`, or a pod.
pub fn parse_source(text: &str) -> Result<Source, TargetError> {
    if text == "external" {
        return Ok(Source::External);
    }
    match text.strip_prefix("node/") {
        Some(name) if name.is_empty() || name.contains(':') => Err(syntax(
            text,
            "write node/NAME (a probe starts from the node itself)",
        )),
        Some(name) => Ok(Source::Node(name.into())),
        None if text.is_empty() => Err(syntax(text, "name a pod, node/NAME or external")),
        None => Ok(Source::Pod(text.into())),
    }
}

/// `svc/[NAMESPACE/]NAME[:PORT]`, `node/NAME[:PORT]`, `IP[:PORT]` (IPv6
/// with a port as `[IP]:PORT`), or a pod.
pub fn parse_target(text: &str) -> Result<Target, TargetError> {
    let service = text
        .strip_prefix("svc/")
        .or_else(|| text.strip_prefix("service/"));
    if let Some(rest) = service {
        return parse_service(text, rest);
    }
    if let Some(rest) = text.strip_prefix("node/") {
        let (name, port) = split_port(text, rest)?;
        let port = port
            .map(|p| {
                p.parse()
                    .map_err(|_| syntax(text, "the port of node/NAME:PORT is a number"))
            })
            .transpose()?;
        return Ok(Target::Node {
            name: name.into(),
            port,
        });
    }
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(Target::Address {
            ip: addr.ip(),
            port: Some(addr.port()),
        });
    }
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Ok(Target::Address { ip, port: None });
    }
    if text.is_empty() || text.contains(':') {
        return Err(syntax(
            text,
            "name a pod, svc/NAME[:PORT], node/NAME:PORT or IP:PORT",
        ));
    }
    Ok(Target::Pod(text.into()))
}

fn parse_service(text: &str, rest: &str) -> Result<Target, TargetError> {
    let (path, port) = split_port(text, rest)?;
    let (namespace, name) = match path.split_once('/') {
        Some((ns, name)) => (Some(ns.to_string()), name),
        None => (None, path),
    };
    if namespace.as_deref() == Some("") || name.contains('/') {
        return Err(syntax(text, "write svc/NAME or svc/NAMESPACE/NAME"));
    }
    Ok(Target::Service {
        namespace,
        name: name.into(),
        port: port.map(String::from),
    })
}

/// `NAME[:PORT]` → (NAME, PORT); both parts must be non-empty.
fn split_port<'a>(text: &str, rest: &'a str) -> Result<(&'a str, Option<&'a str>), TargetError> {
    let (name, port) = match rest.split_once(':') {
        Some((name, port)) => (name, Some(port)),
        None => (rest, None),
    };
    if name.is_empty() || port == Some("") {
        return Err(syntax(text, "a name is missing, or a ':' without a port"));
    }
    Ok((name, port))
}

/// The Service `name` of `services`: in `namespace`, or — without one — in
/// the only namespace that has it.
pub fn find_service<'a>(
    services: &'a [Service],
    namespace: Option<&str>,
    name: &str,
) -> Result<&'a Service, TargetError> {
    let found: Vec<&Service> = services
        .iter()
        .filter(|s| {
            let (ns, n) = key(*s);
            n == name && namespace.is_none_or(|want| want == ns)
        })
        .collect();
    match found.as_slice() {
        [one] => Ok(one),
        [] => Err(TargetError::NoService {
            service: name.into(),
        }),
        many => Err(TargetError::Ambiguous {
            service: name.into(),
            namespaces: many
                .iter()
                .map(|s| key(*s).0)
                .collect::<Vec<_>>()
                .join(", "),
        }),
    }
}

/// A Service target as an address: its clusterIP and the port selected by
/// number or name (the first port without one), spoken in `protocol` or,
/// without it, in the port's own protocol.
pub fn service_address(
    svc: &Service,
    port: Option<&str>,
    protocol_override: Option<Protocol>,
) -> Result<(SocketAddr, Protocol), TargetError> {
    let name = svc.metadata.name.clone().unwrap_or_default();
    let spec = svc.spec.clone().unwrap_or_default();
    let ip: IpAddr = match spec.cluster_ip.as_deref() {
        Some(HEADLESS) => return Err(TargetError::Headless { service: name }),
        Some(text) => text.parse().map_err(|_| TargetError::NoClusterIp {
            service: name.clone(),
        })?,
        None => return Err(TargetError::NoClusterIp { service: name }),
    };
    let ports = spec.ports.unwrap_or_default();
    let chosen =
        select_port(&ports, port, protocol_override).ok_or_else(|| TargetError::NoPort {
            service: name.clone(),
            port: port.unwrap_or("(first)").into(),
            ports: describe_ports(&ports),
        })?;
    let spoken = match (protocol_override, protocol(chosen)) {
        (Some(p), _) => p,
        (None, "TCP") => Protocol::Tcp,
        (None, "UDP") => Protocol::Udp,
        (None, other) => {
            return Err(TargetError::Protocol {
                service: name,
                port: chosen.port,
                protocol: other.into(),
            })
        }
    };
    let number = u16::try_from(chosen.port).map_err(|_| TargetError::NoPort {
        service: name,
        port: chosen.port.to_string(),
        ports: describe_ports(&ports),
    })?;
    Ok((SocketAddr::new(ip, number), spoken))
}

/// By number (preferring the port of `protocol` when a number has two), by
/// name, or the first.
pub(crate) fn select_port<'a>(
    ports: &'a [ServicePort],
    wanted: Option<&str>,
    protocol_override: Option<Protocol>,
) -> Option<&'a ServicePort> {
    let Some(wanted) = wanted else {
        return ports.first();
    };
    let speaks = |p: &ServicePort| match protocol_override {
        Some(Protocol::Tcp) => protocol(p) == "TCP",
        Some(Protocol::Udp) => protocol(p) == "UDP",
        None => true,
    };
    match wanted.parse::<i32>() {
        Ok(number) => {
            let same: Vec<&ServicePort> = ports.iter().filter(|p| p.port == number).collect();
            same.iter().find(|p| speaks(p)).or(same.first()).copied()
        }
        Err(_) => ports.iter().find(|p| p.name.as_deref() == Some(wanted)),
    }
}

fn describe_ports(ports: &[ServicePort]) -> String {
    if ports.is_empty() {
        return "none".into();
    }
    ports
        .iter()
        .map(|p| match p.name.as_deref().filter(|n| !n.is_empty()) {
            Some(name) => format!("{}/{} ({name})", p.port, protocol(p)),
            None => format!("{}/{}", p.port, protocol(p)),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn svc(spec: serde_json::Value) -> Service {
        serde_json::from_value(json!({"metadata": {"name": "web"}, "spec": spec})).unwrap()
    }

    fn web() -> Service {
        svc(json!({"clusterIP": "10.96.1.1", "ports": [
            {"name": "http", "port": 80, "protocol": "TCP"},
            {"name": "dns", "port": 53, "protocol": "UDP"},
            {"name": "dns-tcp", "port": 53, "protocol": "TCP"},
            {"name": "sctp", "port": 9, "protocol": "SCTP"}]}))
    }

    fn addr(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    #[test]
    fn sources() {
        assert_eq!(parse_source("external"), Ok(Source::External));
        assert_eq!(
            parse_source("node/node-1"),
            Ok(Source::Node("node-1".into()))
        );
        assert_eq!(parse_source("web-0"), Ok(Source::Pod("web-0".into())));
        assert_eq!(
            parse_source("demo/web-0"),
            Ok(Source::Pod("demo/web-0".into()))
        );
        assert!(parse_source("node/").is_err());
        assert!(parse_source("node/node-1:80").is_err());
        assert!(parse_source("").is_err());
    }

    #[test]
    fn targets() {
        let service = |ns: Option<&str>, port: Option<&str>| Target::Service {
            namespace: ns.map(String::from),
            name: "web".into(),
            port: port.map(String::from),
        };
        assert_eq!(parse_target("svc/web"), Ok(service(None, None)));
        assert_eq!(parse_target("svc/web:80"), Ok(service(None, Some("80"))));
        assert_eq!(
            parse_target("service/demo/web:http"),
            Ok(service(Some("demo"), Some("http")))
        );
        assert_eq!(
            parse_target("node/node-1:10254"),
            Ok(Target::Node {
                name: "node-1".into(),
                port: Some(10254)
            })
        );
        assert_eq!(
            parse_target("node/node-1"),
            Ok(Target::Node {
                name: "node-1".into(),
                port: None
            })
        );
        assert_eq!(
            parse_target("198.18.0.240:80"),
            Ok(Target::Address {
                ip: "198.18.0.240".parse().unwrap(),
                port: Some(80)
            })
        );
        assert_eq!(
            parse_target("[fd00::1]:80"),
            Ok(Target::Address {
                ip: "fd00::1".parse().unwrap(),
                port: Some(80)
            })
        );
        assert_eq!(
            parse_target("10.96.1.1"),
            Ok(Target::Address {
                ip: "10.96.1.1".parse().unwrap(),
                port: None
            })
        );
        assert_eq!(
            parse_target("demo/web-0"),
            Ok(Target::Pod("demo/web-0".into()))
        );
        for bad in [
            "svc/",
            "svc/web:",
            "svc//web",
            "svc/a/b/c",
            "node/x:http",
            "node/:80",
            "web:80",
            "",
        ] {
            assert!(parse_target(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn services_resolve_to_cluster_ip_and_port() {
        let s = web();
        assert_eq!(
            service_address(&s, None, None),
            Ok((addr("10.96.1.1:80"), Protocol::Tcp))
        );
        assert_eq!(
            service_address(&s, Some("dns"), None),
            Ok((addr("10.96.1.1:53"), Protocol::Udp))
        );
        // 53 has two protocols: the first, unless --protocol picks.
        assert_eq!(
            service_address(&s, Some("53"), None),
            Ok((addr("10.96.1.1:53"), Protocol::Udp))
        );
        assert_eq!(
            service_address(&s, Some("53"), Some(Protocol::Tcp)),
            Ok((addr("10.96.1.1:53"), Protocol::Tcp))
        );
        // --protocol wins over the port's own.
        assert_eq!(
            service_address(&s, Some("http"), Some(Protocol::Udp)),
            Ok((addr("10.96.1.1:80"), Protocol::Udp))
        );
        let e = service_address(&s, Some("8080"), None).unwrap_err();
        assert!(e.to_string().contains("80/TCP (http), 53/UDP (dns)"), "{e}");
        assert!(matches!(
            service_address(&s, Some("metrics"), None),
            Err(TargetError::NoPort { .. })
        ));
        assert!(matches!(
            service_address(&s, Some("sctp"), None),
            Err(TargetError::Protocol { .. })
        ));
    }

    #[test]
    fn services_are_found_by_name_and_namespace() {
        let in_ns = |ns: &str| {
            let mut s = web();
            s.metadata.namespace = Some(ns.into());
            s
        };
        let all = vec![in_ns("a"), in_ns("b"), svc(json!({}))];
        let e = find_service(&all[..2], None, "web").unwrap_err();
        assert!(e.to_string().contains("namespaces a, b"), "{e}");
        assert!(e.to_string().contains("svc/NAMESPACE/web"), "{e}");
        let found = find_service(&all, Some("b"), "web").unwrap();
        assert_eq!(found.metadata.namespace.as_deref(), Some("b"));
        // No namespace in the object means "default".
        assert!(find_service(&all, Some("default"), "web").is_ok());
        assert!(matches!(
            find_service(&all, Some("c"), "web"),
            Err(TargetError::NoService { .. })
        ));
        assert!(find_service(&all[..1], None, "web").is_ok());
    }

    #[test]
    fn services_without_an_address_are_refused() {
        let headless = svc(json!({"clusterIP": "None", "ports": [{"port": 80}]}));
        assert!(matches!(
            service_address(&headless, None, None),
            Err(TargetError::Headless { .. })
        ));
        let external = svc(json!({"type": "ExternalName", "externalName": "x.example"}));
        assert!(matches!(
            service_address(&external, None, None),
            Err(TargetError::NoClusterIp { .. })
        ));
        let portless = svc(json!({"clusterIP": "10.96.1.1"}));
        let e = service_address(&portless, None, None).unwrap_err();
        assert!(e.to_string().contains("its ports are: none"), "{e}");
    }
}
