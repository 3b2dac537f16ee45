//! What the API server checks of a ClusterNetworkPolicy before it stores
//! one: the OpenAPI schema and CEL rules of the CRD of
//! `sigs.k8s.io/network-policy-api` v0.3.0 (standard channel), read into
//! one function, for the lab (which plays the API server) and for anything
//! else that takes these objects from users.
//!
//! Errors name the field as the API server does (`spec.ingress[0].from[1]`)
//! and every one is returned, not just the first. Checks of the schema that
//! the Rust type cannot express are left out: a field the type defaults
//! (`priority`, the selectors of `pods`) cannot be told missing.

use std::collections::BTreeSet;

use ipnet::IpNet;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use weft_validation::{labels, names, objects, Errors};

use crate::api::{ClusterNetworkPolicy, NamespacedPod, Peer, Port, ProtocolMatch, Subject};

/// `maxItems` of every list of the kind (rules, peers, networks, protocols).
const MAX_ITEMS: usize = 25;
const TIERS: [&str; 2] = ["Admin", "Baseline"];
const ACTIONS: [&str; 3] = ["Accept", "Deny", "Pass"];
const PRIORITIES: std::ops::RangeInclusive<i32> = 0..=1000;
const RULE_NAME_MAX: usize = 100;
const CIDR_MAX: usize = 43;
const PORTS: std::ops::RangeInclusive<i32> = 1..=65535;

/// A ClusterNetworkPolicy as the API server checks it: its name (a DNS
/// subdomain, no namespace), tier, priority, subject, and each rule's
/// name, action, peers and protocols.
pub fn validate_cluster_network_policy(cnp: &ClusterNetworkPolicy) -> Result<(), Errors> {
    let mut errors = Errors::default();
    objects::metadata(&cnp.metadata, names::dns1123_subdomain, false, &mut errors);
    let spec = &cnp.spec;
    one_of("spec.tier", &spec.tier, &TIERS, &mut errors);
    if !PRIORITIES.contains(&spec.priority) {
        errors.invalid(
            "spec.priority",
            spec.priority,
            "must be between 0 and 1000, inclusive",
        );
    }
    subject(&spec.subject, &mut errors);
    for (direction, peers_field, rules) in spec.directions() {
        count(&format!("spec.{direction}"), rules.len(), 0, &mut errors);
        for (i, rule) in rules.into_iter().enumerate() {
            let at = format!("spec.{direction}[{i}]");
            if let Some(name) = rule.name {
                if name.chars().count() > RULE_NAME_MAX {
                    errors.invalid(
                        format!("{at}.name"),
                        name,
                        format!("must be no more than {RULE_NAME_MAX} characters"),
                    );
                }
            }
            one_of(&format!("{at}.action"), rule.action, &ACTIONS, &mut errors);
            let field = format!("{at}.{peers_field}");
            count(&field, rule.peers.len(), 1, &mut errors);
            for (j, p) in rule.peers.iter().enumerate() {
                peer(
                    p,
                    &format!("{field}[{j}]"),
                    direction == "egress",
                    &mut errors,
                );
            }
            if let Some(protocols) = rule.protocols {
                let field = format!("{at}.protocols");
                count(&field, protocols.len(), 1, &mut errors);
                for (j, p) in protocols.iter().enumerate() {
                    protocol(p, &format!("{field}[{j}]"), &mut errors);
                }
            }
        }
    }
    errors.into_result()
}

/// An enum field: set, and one of `allowed`.
fn one_of(field: &str, value: &str, allowed: &[&str], errors: &mut Errors) {
    let quoted: Vec<String> = allowed.iter().map(|a| format!("{a:?}")).collect();
    let supported = format!("supported values: {}", quoted.join(", "));
    if value.is_empty() {
        errors.required(field, supported);
    } else if !allowed.contains(&value) {
        errors.invalid(field, value, supported);
    }
}

/// A list's `minItems` (`min`) and `maxItems` ([`MAX_ITEMS`]).
fn count(field: &str, len: usize, min: usize, errors: &mut Errors) {
    if len < min {
        errors.required(field, format!("must have at least {min} item"));
    } else if len > MAX_ITEMS {
        errors.invalid(field, len, format!("must have at most {MAX_ITEMS} items"));
    }
}

/// `minProperties: 1, maxProperties: 1`: exactly one of `fields` is set
/// (`set` names those that are).
fn exactly_one(field: &str, set: &[&str], fields: &str, errors: &mut Errors) {
    match set.len() {
        1 => {}
        0 => errors.required(field, format!("must specify exactly one of: {fields}")),
        _ => errors.invalid(
            field,
            set.join(", "),
            format!("must specify exactly one of: {fields}"),
        ),
    }
}

fn subject(subject: &Subject, errors: &mut Errors) {
    let Subject { namespaces, pods } = subject;
    let set = set_fields(&[
        ("namespaces", namespaces.is_some()),
        ("pods", pods.is_some()),
    ]);
    exactly_one("spec.subject", &set, "namespaces, pods", errors);
    selectors("spec.subject", namespaces.as_ref(), pods.as_ref(), errors);
}

/// One peer: exactly one of namespaces, pods or (egress only) networks.
fn peer(peer: &Peer, at: &str, egress: bool, errors: &mut Errors) {
    let Peer {
        namespaces,
        pods,
        networks,
    } = peer;
    let mut fields = vec![
        ("namespaces", namespaces.is_some()),
        ("pods", pods.is_some()),
    ];
    if egress {
        fields.push(("networks", networks.is_some()));
        let set = set_fields(&fields);
        exactly_one(at, &set, "namespaces, pods, networks", errors);
    } else {
        if let Some(networks) = networks {
            errors.invalid(
                format!("{at}.networks"),
                networks.join(","),
                "not allowed in an ingress peer (only namespaces or pods)",
            );
        }
        let set = set_fields(&fields);
        if !(set.is_empty() && networks.is_some()) {
            exactly_one(at, &set, "namespaces, pods", errors);
        }
    }
    selectors(at, namespaces.as_ref(), pods.as_ref(), errors);
    if let (true, Some(networks)) = (egress, networks) {
        cidrs(networks, &format!("{at}.networks"), errors);
    }
}

fn set_fields<'a>(fields: &[(&'a str, bool)]) -> Vec<&'a str> {
    fields
        .iter()
        .filter(|(_, set)| *set)
        .map(|(name, _)| *name)
        .collect()
}

/// The selectors of a subject or peer, under `at`.
fn selectors(
    at: &str,
    namespaces: Option<&LabelSelector>,
    pods: Option<&NamespacedPod>,
    errors: &mut Errors,
) {
    if let Some(selector) = namespaces {
        labels::validate_selector(selector, &format!("{at}.namespaces"), errors);
    }
    if let Some(pods) = pods {
        let at = format!("{at}.pods");
        labels::validate_selector(
            &pods.namespace_selector,
            &format!("{at}.namespaceSelector"),
            errors,
        );
        labels::validate_selector(&pods.pod_selector, &format!("{at}.podSelector"), errors);
    }
}

/// `networks`: 1–25 distinct CIDRs (a list of type `set`), each at most 43
/// characters and its own network address (CEL's
/// `isCIDR(self) && cidr(self) == cidr(self).masked()`).
fn cidrs(networks: &[String], at: &str, errors: &mut Errors) {
    count(at, networks.len(), 1, errors);
    let mut seen = BTreeSet::new();
    for (i, text) in networks.iter().enumerate() {
        let field = format!("{at}[{i}]");
        if !seen.insert(text.as_str()) {
            errors.duplicate(field, text);
            continue;
        }
        if text.chars().count() > CIDR_MAX {
            errors.invalid(
                field.clone(),
                text,
                format!("must be no more than {CIDR_MAX} characters"),
            );
        }
        match text.parse::<IpNet>() {
            Err(_) => errors.invalid(
                field,
                text,
                "Invalid CIDR format provided: must be a CIDR such as 10.0.0.0/8 or fd00::/8",
            ),
            Ok(net) if net != net.trunc() => errors.invalid(
                field,
                text,
                format!(
                    "Invalid CIDR format provided: must be its network address ({})",
                    net.trunc()
                ),
            ),
            Ok(_) => {}
        }
    }
}

/// One protocol: exactly one of tcp, udp or sctp, with a destination port.
fn protocol(protocol: &ProtocolMatch, at: &str, errors: &mut Errors) {
    let ProtocolMatch { tcp, udp, sctp } = protocol;
    let named = [("tcp", tcp), ("udp", udp), ("sctp", sctp)];
    let set = set_fields(&named.map(|(name, p)| (name, p.is_some())));
    exactly_one(at, &set, "tcp, udp, sctp", errors);
    for (name, p) in named {
        let Some(p) = p else { continue };
        let field = format!("{at}.{name}.destinationPort");
        match &p.destination_port {
            None => errors.required(field, "must specify a port number or range"),
            Some(port) => self::port(port, &field, errors),
        }
    }
}

/// A port: exactly one of a number or a range, each port 1–65535, a
/// range's start below its end.
fn port(port: &Port, at: &str, errors: &mut Errors) {
    let set = set_fields(&[
        ("number", port.number.is_some()),
        ("range", port.range.is_some()),
    ]);
    exactly_one(at, &set, "number, range", errors);
    let in_range = |field: String, n: i32, errors: &mut Errors| {
        if !PORTS.contains(&n) {
            errors.invalid(field, n, "must be between 1 and 65535, inclusive");
        }
    };
    if let Some(n) = port.number {
        in_range(format!("{at}.number"), n, errors);
    }
    if let Some(range) = &port.range {
        in_range(format!("{at}.range.start"), range.start, errors);
        in_range(format!("{at}.range.end"), range.end, errors);
        if range.start >= range.end {
            errors.invalid(
                format!("{at}.range"),
                format!("{}-{}", range.start, range.end),
                "Start port must be less than End port",
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    /// A policy using every field, valid.
    fn example() -> Value {
        json!({
            "apiVersion": "policy.networking.k8s.io/v1beta1",
            "kind": "ClusterNetworkPolicy",
            "metadata": {"name": "tenant-a"},
            "spec": {
                "tier": "Admin", "priority": 10,
                "subject": {"namespaces": {"matchLabels": {"tenant": "a"}}},
                "ingress": [{
                    "name": "from-monitoring", "action": "Accept",
                    "from": [{"namespaces": {"matchLabels": {"team": "mon"}}},
                             {"pods": {"namespaceSelector": {}, "podSelector": {"matchLabels": {"app": "prom"}}}}],
                    "protocols": [{"tcp": {"destinationPort": {"number": 9090}}},
                                  {"udp": {"destinationPort": {"range": {"start": 5000, "end": 5100}}}}]
                }],
                "egress": [{
                    "action": "Deny",
                    "to": [{"networks": ["10.0.0.0/8", "fd00::/8"]}],
                    "protocols": [{"sctp": {"destinationPort": {"number": 3868}}}]
                }]
            }
        })
    }

    /// The fields `validate` rejects in the example changed by `change`.
    fn rejected(change: impl FnOnce(&mut Value)) -> Vec<String> {
        let mut value = example();
        change(&mut value);
        let cnp: ClusterNetworkPolicy = serde_json::from_value(value).unwrap();
        match validate_cluster_network_policy(&cnp) {
            Ok(()) => Vec::new(),
            Err(errors) => errors.0.into_iter().map(|e| e.field).collect(),
        }
    }

    /// Sets (or adds) the field at JSON `pointer` to `to`.
    fn set(value: &mut Value, pointer: &str, to: Value) {
        let (parent, last) = pointer.rsplit_once('/').unwrap();
        match value.pointer_mut(parent).unwrap() {
            Value::Array(items) => items[last.parse::<usize>().unwrap()] = to,
            object => object[last] = to,
        }
    }

    #[test]
    fn the_example_is_valid_with_either_tier_and_subject() {
        assert_eq!(rejected(|_| {}), Vec::<String>::new());
        let baseline = |v: &mut Value| set(v, "/spec/tier", json!("Baseline"));
        assert_eq!(rejected(baseline), Vec::<String>::new());
        let pods = json!({"pods": {"namespaceSelector": {}, "podSelector": {}}});
        assert_eq!(
            rejected(|v| set(v, "/spec/subject", pods)),
            Vec::<String>::new()
        );
    }

    #[rustfmt::skip]
    #[test]
    fn each_rule_is_enforced_at_its_field() {
        let n = |n: usize, item: Value| json!(vec![item; n]);
        let ingress_rule = json!({"action": "Pass", "from": [{"namespaces": {}}]});
        let egress_rule = json!({"action": "Pass", "to": [{"namespaces": {}}]});
        let tcp = |port: Value| json!([{"tcp": {"destinationPort": port}}]);
        let nets: Vec<String> = (0..26).map(|i| format!("10.{i}.0.0/16")).collect();
        let (from, to, nets0) = ("/spec/ingress/0/from", "/spec/egress/0/to", "/spec/egress/0/to/0/networks");
        let (ports, udp_range) = ("/spec/ingress/0/protocols", "/spec/ingress/0/protocols/1/udp/destinationPort/range");
        let cases: Vec<(String, Value, &[&str])> = vec![
            ("/metadata/name".into(), json!("Upper"), &["metadata.name"]),
            ("/metadata/namespace".into(), json!("x"), &["metadata.namespace"]),
            ("/spec/tier".into(), json!("Developer"), &["spec.tier"]),
            ("/spec/tier".into(), json!(""), &["spec.tier"]),
            ("/spec/priority".into(), json!(1001), &["spec.priority"]),
            ("/spec/priority".into(), json!(-1), &["spec.priority"]),
            ("/spec/subject".into(), json!({}), &["spec.subject"]),
            ("/spec/subject/pods".into(), json!({"podSelector": {}}), &["spec.subject"]),
            ("/spec/subject/namespaces".into(), json!({"matchLabels": {"a b": "c"}}), &["spec.subject.namespaces.matchLabels"]),
            ("/spec/ingress".into(), n(26, ingress_rule), &["spec.ingress"]),
            ("/spec/egress".into(), n(26, egress_rule), &["spec.egress"]),
            ("/spec/ingress/0/name".into(), json!("n".repeat(101)), &["spec.ingress[0].name"]),
            ("/spec/egress/0/action".into(), json!("Allow"), &["spec.egress[0].action"]),
            ("/spec/ingress/0/action".into(), json!(""), &["spec.ingress[0].action"]),
            (from.into(), json!([]), &["spec.ingress[0].from"]),
            (to.into(), n(26, json!({"namespaces": {}})), &["spec.egress[0].to"]),
            (format!("{from}/1"), json!({}), &["spec.ingress[0].from[1]"]),
            (format!("{from}/0/pods"), json!({"podSelector": {}}), &["spec.ingress[0].from[0]"]),
            (format!("{from}/1"), json!({"networks": ["10.0.0.0/8"]}), &["spec.ingress[0].from[1].networks"]),
            (format!("{from}/1/pods/podSelector"), json!({"matchExpressions": [{"key": "k", "operator": "In"}]}),
             &["spec.ingress[0].from[1].pods.podSelector.matchExpressions[0].values"]),
            (format!("{to}/0/namespaces"), json!({}), &["spec.egress[0].to[0]"]),
            (nets0.into(), json!([]), &["spec.egress[0].to[0].networks"]),
            (nets0.into(), json!(nets), &["spec.egress[0].to[0].networks"]),
            (format!("{nets0}/0"), json!("10.0.0.1/8"), &["spec.egress[0].to[0].networks[0]"]),
            (format!("{nets0}/1"), json!("fd00::"), &["spec.egress[0].to[0].networks[1]"]),
            (format!("{nets0}/1"), json!("0000:0000:0000:0000:0000:ffff:255.255.255.0/120"), &["spec.egress[0].to[0].networks[1]"]),
            (format!("{nets0}/1"), json!("10.0.0.0/8"), &["spec.egress[0].to[0].networks[1]"]),
            (ports.into(), json!([]), &["spec.ingress[0].protocols"]),
            (ports.into(), n(26, tcp(json!({"number": 80}))[0].clone()), &["spec.ingress[0].protocols"]),
            ("/spec/egress/0/protocols/0".into(), json!({}), &["spec.egress[0].protocols[0]"]),
            ("/spec/egress/0/protocols/0/tcp".into(), json!({"destinationPort": {"number": 1}}), &["spec.egress[0].protocols[0]"]),
            ("/spec/egress/0/protocols/0/sctp".into(), json!({}), &["spec.egress[0].protocols[0].sctp.destinationPort"]),
            (ports.into(), tcp(json!({})), &["spec.ingress[0].protocols[0].tcp.destinationPort"]),
            (ports.into(), tcp(json!({"number": 80, "range": {"start": 1, "end": 2}})), &["spec.ingress[0].protocols[0].tcp.destinationPort"]),
            (ports.into(), tcp(json!({"number": 0})), &["spec.ingress[0].protocols[0].tcp.destinationPort.number"]),
            (ports.into(), tcp(json!({"number": 65536})), &["spec.ingress[0].protocols[0].tcp.destinationPort.number"]),
            (udp_range.into(), json!({"start": 0, "end": 70000}),
             &["spec.ingress[0].protocols[1].udp.destinationPort.range.start", "spec.ingress[0].protocols[1].udp.destinationPort.range.end"]),
            (udp_range.into(), json!({"start": 80, "end": 80}), &["spec.ingress[0].protocols[1].udp.destinationPort.range"]),
        ];
        for (pointer, to, want) in cases {
            let what = format!("{pointer} = {to}");
            assert_eq!(rejected(|v| set(v, &pointer, to)), want, "{what}");
        }
    }

    #[test]
    fn every_error_is_reported_and_says_what_to_write() {
        let fields = rejected(|v| {
            v["spec"]["tier"] = json!("Top");
            v["spec"]["priority"] = json!(5000);
            v["spec"]["egress"][0]["to"][0]["networks"][0] = json!("10.0.0.1/8");
        });
        assert_eq!(
            fields,
            [
                "spec.tier",
                "spec.priority",
                "spec.egress[0].to[0].networks[0]"
            ]
        );
        let mut cnp: ClusterNetworkPolicy = serde_json::from_value(example()).unwrap();
        cnp.spec.egress[0].to[0].networks = Some(vec!["10.0.0.1/8".into()]);
        let text = validate_cluster_network_policy(&cnp)
            .unwrap_err()
            .to_string();
        assert!(text.contains("network address (10.0.0.0/8)"), "{text}");
    }
}
