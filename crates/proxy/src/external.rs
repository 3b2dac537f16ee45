//! Which `externalIPs` a Service may use (pure).
//!
//! Any user who can write a Service chooses its externalIPs, and the proxy
//! sends traffic for them to that Service's endpoints: unchecked, one
//! Service could capture another Service's ClusterIP, a node's own address
//! or a port weft itself listens on (the class of CVE-2020-8554). This
//! module owns the rule: an externalIP is refused when it is not a unicast
//! address, is any Service's ClusterIP, is any node's address, or lies
//! outside the operator's allow-list (`--external-ip-cidrs`, empty = any);
//! a Service port on a port weft listens on (the agent's health port,
//! healthCheckNodePorts) gets none. Refused addresses are dropped from the
//! Service and the rest of it is programmed as usual.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use crate::model::{Protocol, ServiceInfo};

/// What decides whether an externalIP is allowed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExternalIpPolicy {
    /// `--external-ip-cidrs`: when not empty, only addresses inside one of
    /// these.
    pub allowed: Vec<Ipv4Net>,
    /// Every node's addresses (their InternalIPs) and this node's own.
    pub node_addresses: BTreeSet<Ipv4Addr>,
    /// TCP ports weft serves on every address of a node (the agent's
    /// health port, healthCheckNodePorts).
    pub reserved_ports: BTreeSet<u16>,
}

/// Why an externalIP was refused.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, thiserror::Error)]
pub enum Refused {
    #[error("externalIP {0} is not a unicast address (loopback, link-local, multicast, broadcast or unspecified)")]
    Special(Ipv4Addr),
    #[error("externalIP {0} is a Service's ClusterIP; it would capture that Service's traffic")]
    ClusterIp(Ipv4Addr),
    #[error("externalIP {0} is a node's address; it would capture that node's own traffic")]
    NodeAddress(Ipv4Addr),
    #[error("externalIP {0} is outside --external-ip-cidrs")]
    NotAllowed(Ipv4Addr),
    #[error("externalIPs on TCP port {0} are refused: weft serves that port on every node")]
    ReservedPort(u16),
}

impl ExternalIpPolicy {
    /// Why `ip` may not be an externalIP, if it may not; `is_cluster_ip`
    /// answers for every Service's ClusterIP.
    pub fn refusal(
        &self,
        ip: Ipv4Addr,
        is_cluster_ip: impl Fn(Ipv4Addr) -> bool,
    ) -> Option<Refused> {
        if ip.is_unspecified()
            || ip.is_loopback()
            || ip.is_link_local()
            || ip.is_multicast()
            || ip.is_broadcast()
        {
            Some(Refused::Special(ip))
        } else if is_cluster_ip(ip) {
            Some(Refused::ClusterIp(ip))
        } else if self.node_addresses.contains(&ip) {
            Some(Refused::NodeAddress(ip))
        } else if !self.allowed.is_empty() && !self.allowed.iter().any(|net| net.contains(&ip)) {
            Some(Refused::NotAllowed(ip))
        } else {
            None
        }
    }

    /// Drops from `info` every externalIP it may not use; returns why, one
    /// entry per refused address or port (sorted).
    pub fn admit(
        &self,
        info: &mut ServiceInfo,
        is_cluster_ip: impl Fn(Ipv4Addr) -> bool,
    ) -> Vec<Refused> {
        let mut refused = BTreeSet::new();
        for port in &mut info.ports {
            if port.external_ips.is_empty() {
                continue;
            }
            if port.protocol == Protocol::Tcp && self.reserved_ports.contains(&port.port) {
                refused.insert(Refused::ReservedPort(port.port));
                port.external_ips.clear();
                continue;
            }
            port.external_ips
                .retain(|ip| match self.refusal(*ip, &is_cluster_ip) {
                    Some(why) => {
                        refused.insert(why);
                        false
                    }
                    None => true,
                });
        }
        refused.into_iter().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ServiceKey, ServicePortInfo, SourceRanges};

    fn ip(text: &str) -> Ipv4Addr {
        text.parse().unwrap()
    }

    fn service(ports: &[(Protocol, u16)], external: &[&str]) -> ServiceInfo {
        ServiceInfo {
            key: ServiceKey {
                namespace: "other".into(),
                name: "thief".into(),
            },
            ports: ports
                .iter()
                .map(|(protocol, port)| ServicePortInfo {
                    name: port.to_string(),
                    protocol: *protocol,
                    port: *port,
                    node_port: None,
                    cluster_ip: Some(ip("10.96.0.99")),
                    external_ips: external.iter().map(|a| ip(a)).collect(),
                    load_balancer_ips: vec![],
                    affinity_seconds: None,
                    external_local: false,
                    internal_local: false,
                    source_ranges: SourceRanges::Any,
                })
                .collect(),
            health_check_node_port: None,
            load_balancer_class: None,
            cluster_ip: Some(ip("10.96.0.99")),
        }
    }

    fn policy() -> ExternalIpPolicy {
        ExternalIpPolicy {
            allowed: vec![],
            node_addresses: [ip("198.18.0.2"), ip("198.18.0.3")].into(),
            reserved_ports: [10254, 32100].into(),
        }
    }

    fn cluster_ips(ip: Ipv4Addr) -> bool {
        ip == Ipv4Addr::new(10, 96, 0, 10) || ip == Ipv4Addr::new(10, 96, 0, 99)
    }

    #[test]
    fn another_services_cluster_ip_and_node_addresses_are_refused() {
        let mut svc = service(
            &[(Protocol::Tcp, 80)],
            &["10.96.0.10", "198.18.0.3", "198.19.0.50", "10.96.0.99"],
        );
        let refused = policy().admit(&mut svc, cluster_ips);
        assert_eq!(
            refused,
            vec![
                Refused::ClusterIp(ip("10.96.0.10")),
                Refused::ClusterIp(ip("10.96.0.99")),
                Refused::NodeAddress(ip("198.18.0.3")),
            ]
        );
        assert_eq!(svc.ports[0].external_ips, vec![ip("198.19.0.50")]);
        assert!(refused[0].to_string().contains("ClusterIP"));
    }

    #[test]
    fn special_addresses_are_refused() {
        for text in [
            "0.0.0.0",
            "127.0.0.1",
            "169.254.1.1",
            "224.0.0.1",
            "255.255.255.255",
        ] {
            assert_eq!(
                policy().refusal(ip(text), |_| false),
                Some(Refused::Special(ip(text)))
            );
        }
    }

    #[test]
    fn the_allow_list_limits_external_ips_when_given() {
        let mut p = policy();
        assert_eq!(p.refusal(ip("203.0.113.7"), |_| false), None);
        p.allowed = vec!["198.19.0.0/24".parse().unwrap()];
        assert_eq!(p.refusal(ip("198.19.0.50"), |_| false), None);
        assert_eq!(
            p.refusal(ip("203.0.113.7"), |_| false),
            Some(Refused::NotAllowed(ip("203.0.113.7")))
        );
        // The allow-list never lets a ClusterIP or node address through.
        p.allowed = vec!["0.0.0.0/0".parse().unwrap()];
        assert_eq!(
            p.refusal(ip("198.18.0.2"), |_| false),
            Some(Refused::NodeAddress(ip("198.18.0.2")))
        );
    }

    #[test]
    fn ports_weft_listens_on_get_no_external_ips_and_other_ports_keep_theirs() {
        let mut svc = service(
            &[
                (Protocol::Tcp, 10254),
                (Protocol::Udp, 10254),
                (Protocol::Tcp, 80),
            ],
            &["198.19.0.50"],
        );
        let refused = policy().admit(&mut svc, |_| false);
        assert_eq!(refused, vec![Refused::ReservedPort(10254)]);
        assert!(svc.ports[0].external_ips.is_empty());
        assert_eq!(svc.ports[1].external_ips, vec![ip("198.19.0.50")]);
        assert_eq!(svc.ports[2].external_ips, vec![ip("198.19.0.50")]);
    }
}
