//! Which conntrack flows a Service change leaves stale (pure).
//!
//! TCP flows to a removed endpoint end by themselves (the endpoint resets
//! or times out and the client reconnects through the Service). A UDP
//! "flow" lives as long as the client keeps sending, so conntrack would keep
//! NATing it to an endpoint that is gone; kube-proxy deletes those entries,
//! and so does this proxy. When a UDP Service gets its first endpoint, flows
//! created while it had none (to its addresses and to its NodePort) are
//! deleted too, so they are NATed afresh.

use std::collections::BTreeMap;
use std::net::IpAddr;

use weft_datapath::conntrack::FlowFilter;

use crate::model::Protocol;
use crate::plan::UdpPort;

/// The UDP ports of one Service, by port id.
pub type UdpPorts = BTreeMap<String, UdpPort>;

/// UDP flows to `dst` (any address if `None`) on `port`.
fn to(dst: Option<IpAddr>, port: u16) -> FlowFilter {
    FlowFilter {
        protocol: Protocol::Udp.number(),
        original_dst: dst,
        original_dst_port: Some(port),
        reply_src: None,
        reply_src_not_in: Vec::new(),
    }
}

/// Every flow to the UDP ports of `services` that none of their current
/// endpoints answers: what a full sync clears, since it cannot know what
/// changed meanwhile (the agent was down, or an incremental apply failed
/// after computing its own deletions). kube-proxy reconciles the same way.
pub fn not_answered_by_endpoints<'a>(
    services: impl IntoIterator<Item = &'a UdpPorts>,
) -> Vec<FlowFilter> {
    let mut out = Vec::new();
    for port in services.into_iter().flat_map(|ports| ports.values()) {
        let endpoints: Vec<IpAddr> = port.endpoints.iter().map(|ip| IpAddr::V4(*ip)).collect();
        let stale = |dst: Option<IpAddr>, number: u16| FlowFilter {
            reply_src_not_in: endpoints.clone(),
            ..to(dst, number)
        };
        out.extend(
            port.destinations
                .iter()
                .map(|d| stale(Some(IpAddr::V4(*d)), port.port)),
        );
        out.extend(port.node_port.map(|np| stale(None, np)));
    }
    out
}

pub fn stale(old: &UdpPorts, new: &UdpPorts) -> Vec<FlowFilter> {
    let none = UdpPort::default();
    let mut out = Vec::new();
    let filter = |dst: Option<IpAddr>, port: u16, reply_src: Option<IpAddr>| FlowFilter {
        reply_src,
        ..to(dst, port)
    };
    for (id, before) in old {
        let after = new.get(id).unwrap_or(&none);
        for gone in before.endpoints.difference(&after.endpoints) {
            let gone = Some(IpAddr::V4(*gone));
            for dst in &before.destinations {
                out.push(filter(Some(IpAddr::V4(*dst)), before.port, gone));
            }
            if let Some(np) = before.node_port {
                out.push(filter(None, np, gone));
            }
        }
    }
    for (id, after) in new {
        let had_none = old.get(id).is_none_or(|b| b.endpoints.is_empty());
        if had_none && !after.endpoints.is_empty() {
            for dst in &after.destinations {
                out.push(filter(Some(IpAddr::V4(*dst)), after.port, None));
            }
            // Flows to the NodePort from before (on any of the node's
            // addresses, as kube-proxy clears them) would otherwise stay
            // un-NATed for as long as their client keeps sending.
            if let Some(np) = after.node_port {
                out.push(filter(None, np, None));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn port(endpoints: &[[u8; 4]]) -> UdpPorts {
        [(
            "demo/dns/udp/dns".to_string(),
            UdpPort {
                destinations: vec![Ipv4Addr::new(10, 96, 0, 10)],
                port: 53,
                node_port: Some(30053),
                endpoints: endpoints.iter().map(|o| Ipv4Addr::from(*o)).collect(),
            },
        )]
        .into()
    }

    #[test]
    fn removed_endpoint_flows_are_stale_on_every_address() {
        let filters = stale(
            &port(&[[10, 244, 1, 2], [10, 244, 2, 2]]),
            &port(&[[10, 244, 2, 2]]),
        );
        let gone = Some(IpAddr::V4(Ipv4Addr::new(10, 244, 1, 2)));
        assert_eq!(filters.len(), 2);
        assert_eq!(
            filters[0].original_dst,
            Some(IpAddr::V4(Ipv4Addr::new(10, 96, 0, 10)))
        );
        assert_eq!(
            (filters[0].original_dst_port, filters[0].reply_src),
            (Some(53), gone)
        );
        assert_eq!(
            (filters[1].original_dst, filters[1].original_dst_port),
            (None, Some(30053))
        );
        assert_eq!(filters[1].protocol, 17);
    }

    #[test]
    fn first_endpoint_clears_flows_to_the_service_address_and_node_port() {
        let filters = stale(&port(&[]), &port(&[[10, 244, 1, 2]]));
        assert_eq!(filters.len(), 2);
        assert_eq!(
            (filters[0].original_dst_port, filters[0].reply_src),
            (Some(53), None)
        );
        assert_eq!(
            (filters[1].original_dst, filters[1].original_dst_port),
            (None, Some(30053))
        );
        assert!(stale(&BTreeMap::new(), &port(&[[10, 244, 1, 2]])).len() == 2);
    }

    #[test]
    fn a_full_sync_clears_flows_no_current_endpoint_answers() {
        let filters = not_answered_by_endpoints([&port(&[[10, 244, 1, 2]])]);
        let endpoint = vec![IpAddr::V4(Ipv4Addr::new(10, 244, 1, 2))];
        assert_eq!(filters.len(), 2);
        assert_eq!(
            (filters[0].original_dst, filters[0].original_dst_port),
            (Some(IpAddr::V4(Ipv4Addr::new(10, 96, 0, 10))), Some(53))
        );
        assert_eq!(filters[0].reply_src_not_in, endpoint);
        assert_eq!(
            (filters[1].original_dst, filters[1].original_dst_port),
            (None, Some(30053))
        );
        assert_eq!(filters[1].reply_src_not_in, endpoint);
    }

    #[test]
    fn deleted_service_flows_are_stale_and_unchanged_ones_are_not() {
        assert_eq!(stale(&port(&[[10, 244, 1, 2]]), &BTreeMap::new()).len(), 2);
        assert!(stale(&port(&[[10, 244, 1, 2]]), &port(&[[10, 244, 1, 2]])).is_empty());
    }
}
