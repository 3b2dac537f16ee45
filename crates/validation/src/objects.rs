//! The API server's checks of the objects weft takes from users:
//! Namespaces, Pods (and Deployments' pod templates), Deployments,
//! NetworkPolicies and the fields of Services that weft programs as
//! addresses. Each `validate_*`
//! returns every error of the object, not just the first.

use std::collections::BTreeSet;
use std::net::IpAddr;

use ipnet::IpNet;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Pod, PodSpec, Service};
use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::protocol::Protocol;
use crate::{labels, names, Errors};

const RESTART_POLICIES: [&str; 3] = ["Always", "OnFailure", "Never"];

/// `metadata.name` (checked by `name_rule`), `metadata.namespace` (a DNS
/// label when set; cluster-scoped kinds pass `namespaced: false`) and labels.
pub fn metadata(
    meta: &ObjectMeta,
    name_rule: fn(&str) -> Result<(), String>,
    namespaced: bool,
    errors: &mut Errors,
) {
    match meta.name.as_deref() {
        None | Some("") => errors.required("metadata.name", "name or generateName is required"),
        Some(name) => errors.check("metadata.name", name, name_rule),
    }
    match (meta.namespace.as_deref(), namespaced) {
        (Some(ns), true) if !ns.is_empty() => {
            errors.check("metadata.namespace", ns, names::dns1123_label)
        }
        (Some(ns), false) if !ns.is_empty() => errors.invalid(
            "metadata.namespace",
            ns,
            "not allowed on this type (it is cluster-scoped)",
        ),
        _ => {}
    }
    labels::validate_map(meta.labels.as_ref(), "metadata.labels", errors);
}

pub fn validate_namespace(ns: &Namespace) -> Result<(), Errors> {
    let mut errors = Errors::default();
    metadata(&ns.metadata, names::dns1123_label, false, &mut errors);
    errors.into_result()
}

pub fn validate_pod(pod: &Pod) -> Result<(), Errors> {
    let mut errors = Errors::default();
    metadata(&pod.metadata, names::dns1123_subdomain, true, &mut errors);
    match &pod.spec {
        Some(spec) => pod_spec(spec, "spec", &mut errors),
        None => errors.required("spec", "a Pod needs a spec with containers"),
    }
    errors.into_result()
}

/// A pod's spec: containers (at least one; names unique DNS labels; an
/// image; ports), `nodeName`, `restartPolicy`.
pub fn pod_spec(spec: &PodSpec, field: &str, errors: &mut Errors) {
    if spec.containers.is_empty() {
        errors.required(
            format!("{field}.containers"),
            "a pod needs at least one container",
        );
    }
    let mut container_names = BTreeSet::new();
    let mut port_names = BTreeSet::new();
    for (i, c) in spec.containers.iter().enumerate() {
        let at = format!("{field}.containers[{i}]");
        if c.name.is_empty() {
            errors.required(format!("{at}.name"), "every container needs a name");
        } else if !container_names.insert(c.name.as_str()) {
            errors.duplicate(format!("{at}.name"), &c.name);
        } else {
            errors.check(format!("{at}.name"), &c.name, names::dns1123_label);
        }
        if c.image.as_deref().is_none_or(str::is_empty) {
            errors.required(format!("{at}.image"), "every container needs an image");
        }
        for (j, p) in c.ports.iter().flatten().enumerate() {
            let at = format!("{at}.ports[{j}]");
            if !(1..=65535).contains(&p.container_port) {
                errors.invalid(
                    format!("{at}.containerPort"),
                    p.container_port,
                    "must be between 1 and 65535, inclusive",
                );
            }
            if let Some(host) = p.host_port.filter(|h| !(0..=65535).contains(h)) {
                errors.invalid(
                    format!("{at}.hostPort"),
                    host,
                    "must be between 1 and 65535, inclusive",
                );
            }
            protocol(p.protocol.as_deref(), &format!("{at}.protocol"), errors);
            if let Some(name) = &p.name {
                if !port_names.insert(name.as_str()) {
                    errors.duplicate(format!("{at}.name"), name);
                } else {
                    errors.check(format!("{at}.name"), name, names::port_name);
                }
            }
        }
    }
    if let Some(node) = spec.node_name.as_deref().filter(|n| !n.is_empty()) {
        errors.check(format!("{field}.nodeName"), node, names::dns1123_subdomain);
    }
    if let Some(policy) = spec.restart_policy.as_deref() {
        if !RESTART_POLICIES.contains(&policy) {
            errors.invalid(
                format!("{field}.restartPolicy"),
                policy,
                "supported values: \"Always\", \"OnFailure\", \"Never\"",
            );
        }
    }
}

fn protocol(value: Option<&str>, field: &str, errors: &mut Errors) {
    if let Some(p) = value.filter(|p| Protocol::parse(Some(p)).is_none()) {
        errors.invalid(field, p, "supported values: \"SCTP\", \"TCP\", \"UDP\"");
    }
}

/// A Deployment: its name, `replicas` ≥ 0, a non-empty selector that
/// matches its template's labels, and the template's pod spec.
pub fn validate_deployment(d: &Deployment) -> Result<(), Errors> {
    let mut errors = Errors::default();
    metadata(&d.metadata, names::dns1123_subdomain, true, &mut errors);
    let Some(spec) = &d.spec else {
        errors.required("spec", "a Deployment needs a selector and a pod template");
        return errors.into_result();
    };
    if let Some(n) = spec.replicas.filter(|n| *n < 0) {
        errors.invalid("spec.replicas", n, "must be greater than or equal to 0");
    }
    labels::validate_selector(&spec.selector, "spec.selector", &mut errors);
    let template_labels = spec
        .template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    labels::validate_map(
        Some(&template_labels),
        "spec.template.metadata.labels",
        &mut errors,
    );
    if labels::is_empty(&spec.selector) {
        errors.required("spec.selector", "a Deployment needs a non-empty selector");
    } else if !labels::matches(&spec.selector, &template_labels) {
        errors.invalid(
            "spec.template.metadata.labels",
            format!("{template_labels:?}"),
            "`selector` does not match template `labels`",
        );
    }
    match &spec.template.spec {
        Some(pod) => pod_spec(pod, "spec.template.spec", &mut errors),
        None => errors.required("spec.template.spec", "the template needs a pod spec"),
    }
    errors.into_result()
}

/// A Service's name and the fields weft turns into addresses and rules:
/// `clusterIP(s)`, `externalIPs`, `loadBalancerIP`,
/// `loadBalancerSourceRanges`, port protocols. Defaults, ports and
/// allocations are the lab's admission's business.
pub fn validate_service(svc: &Service) -> Result<(), Errors> {
    let mut errors = Errors::default();
    metadata(&svc.metadata, names::dns1035_label, true, &mut errors);
    let spec = svc.spec.clone().unwrap_or_default();
    let cluster_ips = spec
        .cluster_ip
        .iter()
        .chain(spec.cluster_ips.iter().flatten());
    for ip in cluster_ips.filter(|ip| !ip.is_empty() && *ip != "None") {
        if ip.parse::<IpAddr>().is_err() {
            errors.invalid(
                "spec.clusterIPs",
                ip,
                "must be a valid IP address or \"None\"",
            );
        }
    }
    for (i, ip) in spec.external_ips.iter().flatten().enumerate() {
        if let Err(detail) = public_ip(ip) {
            errors.invalid(format!("spec.externalIPs[{i}]"), ip, detail);
        }
    }
    if let Some(ip) = spec.load_balancer_ip.as_deref().filter(|ip| !ip.is_empty()) {
        if let Err(detail) = public_ip(ip) {
            errors.invalid("spec.loadBalancerIP", ip, detail);
        }
    }
    for (i, range) in spec
        .load_balancer_source_ranges
        .iter()
        .flatten()
        .enumerate()
    {
        if range.trim().parse::<IpNet>().is_err() {
            errors.invalid(
                format!("spec.loadBalancerSourceRanges[{i}]"),
                range,
                "must be a CIDR such as 198.18.1.0/24 (a single address is 198.18.1.99/32)",
            );
        }
    }
    for (i, p) in spec.ports.iter().flatten().enumerate() {
        protocol(
            p.protocol.as_deref(),
            &format!("spec.ports[{i}].protocol"),
            &mut errors,
        );
    }
    errors.into_result()
}

/// A NetworkPolicy as the API server checks it: its name, selectors,
/// `policyTypes`, each peer (exactly one of ipBlock or selectors; CIDRs,
/// exceptions inside their block) and each port (protocol, number or
/// name, `endPort` only after a number and not below it).
pub fn validate_network_policy(np: &NetworkPolicy) -> Result<(), Errors> {
    let mut errors = Errors::default();
    metadata(&np.metadata, names::dns1123_subdomain, true, &mut errors);
    let Some(spec) = &np.spec else {
        return errors.into_result();
    };
    if let Some(selector) = &spec.pod_selector {
        labels::validate_selector(selector, "spec.podSelector", &mut errors);
    }
    for (i, kind) in spec.policy_types.iter().flatten().enumerate() {
        if kind != "Ingress" && kind != "Egress" {
            errors.invalid(
                format!("spec.policyTypes[{i}]"),
                kind,
                "must be Ingress or Egress",
            );
        }
    }
    let directions = [
        (
            "ingress",
            "from",
            spec.ingress
                .iter()
                .flatten()
                .map(|r| (r.from.as_deref(), r.ports.as_deref()))
                .collect::<Vec<_>>(),
        ),
        (
            "egress",
            "to",
            spec.egress
                .iter()
                .flatten()
                .map(|r| (r.to.as_deref(), r.ports.as_deref()))
                .collect(),
        ),
    ];
    for (direction, peers_field, rules) in directions {
        for (i, (peers, ports)) in rules.into_iter().enumerate() {
            let at = format!("spec.{direction}[{i}]");
            for (j, peer) in peers.unwrap_or_default().iter().enumerate() {
                policy_peer(peer, &format!("{at}.{peers_field}[{j}]"), &mut errors);
            }
            for (j, port) in ports.unwrap_or_default().iter().enumerate() {
                policy_port(port, &format!("{at}.ports[{j}]"), &mut errors);
            }
        }
    }
    errors.into_result()
}

fn policy_peer(peer: &NetworkPolicyPeer, at: &str, errors: &mut Errors) {
    let selectors = [
        ("podSelector", &peer.pod_selector),
        ("namespaceSelector", &peer.namespace_selector),
    ];
    for (field, selector) in selectors {
        if let Some(selector) = selector {
            labels::validate_selector(selector, &format!("{at}.{field}"), errors);
        }
    }
    let has_selector = peer.pod_selector.is_some() || peer.namespace_selector.is_some();
    match &peer.ip_block {
        None if !has_selector => errors.required(
            at.to_string(),
            "must specify a peer: podSelector, namespaceSelector or ipBlock",
        ),
        None => {}
        Some(_) if has_selector => errors.invalid(
            format!("{at}.ipBlock"),
            "ipBlock",
            "may not be specified with podSelector or namespaceSelector",
        ),
        Some(block) => ip_block(
            &block.cidr,
            block.except.as_deref(),
            &format!("{at}.ipBlock"),
            errors,
        ),
    }
}

fn ip_block(cidr: &str, except: Option<&[String]>, at: &str, errors: &mut Errors) {
    let Ok(block) = cidr.parse::<IpNet>() else {
        errors.invalid(
            format!("{at}.cidr"),
            cidr,
            "must be a CIDR such as 10.0.0.0/8",
        );
        return;
    };
    for (i, text) in except.unwrap_or_default().iter().enumerate() {
        let field = format!("{at}.except[{i}]");
        match text.parse::<IpNet>() {
            Err(_) => errors.invalid(field, text, "must be a CIDR such as 10.0.1.0/24"),
            Ok(net) if !block.contains(&net) || net.prefix_len() == block.prefix_len() => errors
                .invalid(
                    field,
                    text,
                    format!("must be a strict subset of `cidr` {cidr}"),
                ),
            Ok(_) => {}
        }
    }
}

fn policy_port(port: &NetworkPolicyPort, at: &str, errors: &mut Errors) {
    protocol(port.protocol.as_deref(), &format!("{at}.protocol"), errors);
    match (&port.port, port.end_port) {
        (Some(IntOrString::Int(n)), end) => {
            if !(1..=65535).contains(n) {
                errors.invalid(
                    format!("{at}.port"),
                    n,
                    "must be between 1 and 65535, inclusive",
                );
            }
            if let Some(end) = end {
                if !(1..=65535).contains(&end) || end < *n {
                    errors.invalid(
                        format!("{at}.endPort"),
                        end,
                        "must be a port number not below `port`",
                    );
                }
            }
        }
        (Some(IntOrString::String(name)), end) => {
            errors.check(format!("{at}.port"), name, names::port_name);
            if end.is_some() {
                errors.invalid(
                    format!("{at}.endPort"),
                    name,
                    "may not be used with a named port",
                );
            }
        }
        (None, Some(end)) => errors.invalid(
            format!("{at}.endPort"),
            end,
            "may not be specified without `port`",
        ),
        (None, None) => {}
    }
}

/// An address a Service may claim for traffic from outside: a valid IP,
/// and not unspecified, loopback, link-local or multicast (as the API
/// server's `ValidateNonSpecialIP`).
fn public_ip(text: &str) -> Result<(), String> {
    let ip: IpAddr = text
        .parse()
        .map_err(|_| "must be a valid IP address".to_string())?;
    let special = ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        || match ip {
            IpAddr::V4(v4) => v4.is_link_local() || v4.is_broadcast(),
            IpAddr::V6(v6) => v6.is_unicast_link_local(),
        };
    if special {
        return Err("may not be unspecified, loopback, link-local, broadcast or multicast".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(v: serde_json::Value) -> Pod {
        serde_json::from_value(v).unwrap()
    }

    fn errors_of(r: Result<(), Errors>) -> String {
        r.err().map(|e| e.to_string()).unwrap_or_default()
    }

    #[test]
    fn a_good_pod_passes() {
        let p = pod(
            json!({"metadata": {"name": "web-0", "namespace": "demo", "labels": {"app": "web"}},
            "spec": {"containers": [{"name": "c", "image": "x", "ports": [{"name": "http", "containerPort": 80}]},
                                    {"name": "d", "image": "y"}]}}),
        );
        assert_eq!(validate_pod(&p), Ok(()));
    }

    #[test]
    fn hostile_pods_are_refused_with_every_reason() {
        let p = pod(
            json!({"metadata": {"name": "/../../../../../../tmp/x", "namespace": "Demo"},
            "spec": {"containers": [{"name": "../c", "image": "x"}, {"name": "../c", "image": "x"},
                                    {"name": "e", "ports": [{"containerPort": 0, "protocol": "ICMP"}]}],
                     "nodeName": ""}}),
        );
        let text = errors_of(validate_pod(&p));
        for want in [
            "metadata.name: Invalid value: \"/../../../../../../tmp/x\"",
            "metadata.namespace: Invalid value: \"Demo\"",
            "spec.containers[0].name: Invalid value: \"../c\"",
            "spec.containers[1].name: Duplicate value: \"../c\"",
            "spec.containers[2].image: Required value",
            "spec.containers[2].ports[0].containerPort: Invalid value: \"0\"",
            "spec.containers[2].ports[0].protocol: Invalid value: \"ICMP\"",
        ] {
            assert!(text.contains(want), "{want} not in {text}");
        }
        let text = errors_of(validate_pod(&pod(
            json!({"metadata": {"name": "inj;IP=10.244.2.200"},
            "spec": {"containers": [{"name": "c", "image": "x"}]}}),
        )));
        assert!(text.contains("metadata.name"), "{text}");
        let text = errors_of(validate_pod(&pod(
            json!({"metadata": {"name": "p"}, "spec": {"containers": []}}),
        )));
        assert!(text.contains("spec.containers: Required value"), "{text}");
        let text = errors_of(validate_pod(&pod(
            json!({"metadata": {"name": "a".repeat(300)},
            "spec": {"containers": [{"name": "c", "image": "x"}]}}),
        )));
        assert!(
            text.contains("must be no more than 253 characters"),
            "{text}"
        );
    }

    #[test]
    fn deployments_need_a_matching_selector_and_sane_replicas() {
        let d = |replicas: i64, selector: serde_json::Value| -> Deployment {
            serde_json::from_value(json!({"metadata": {"name": "web"}, "spec": {
                "replicas": replicas, "selector": selector,
                "template": {"metadata": {"labels": {"app": "web"}},
                             "spec": {"containers": [{"name": "c", "image": "x"}]}}}}))
            .unwrap()
        };
        assert_eq!(
            validate_deployment(&d(2, json!({"matchLabels": {"app": "web"}}))),
            Ok(())
        );
        let text = errors_of(validate_deployment(&d(
            -1,
            json!({"matchLabels": {"app": "db"}}),
        )));
        assert!(
            text.contains("spec.replicas: Invalid value: \"-1\""),
            "{text}"
        );
        assert!(
            text.contains("`selector` does not match template `labels`"),
            "{text}"
        );
        let text = errors_of(validate_deployment(&d(1, json!({}))));
        assert!(text.contains("spec.selector: Required value"), "{text}");
        let bare: Deployment =
            serde_json::from_value(json!({"metadata": {"name": "web"}})).unwrap();
        let text = errors_of(validate_deployment(&bare));
        assert!(text.contains("spec: Required value"), "{text}");
    }

    #[test]
    fn namespaces_are_dns_labels() {
        let ns = |name: &str| -> Namespace {
            serde_json::from_value(json!({"metadata": {"name": name}})).unwrap()
        };
        assert_eq!(validate_namespace(&ns("demo")), Ok(()));
        assert!(validate_namespace(&ns("a.b")).is_err());
        assert!(validate_namespace(&ns("")).is_err());
    }

    #[test]
    fn service_addresses_must_be_addresses() {
        let svc = |spec: serde_json::Value| -> Service {
            serde_json::from_value(json!({"metadata": {"name": "web"}, "spec": spec})).unwrap()
        };
        let good = svc(json!({"clusterIP": "None", "externalIPs": ["198.19.0.80"],
            "loadBalancerSourceRanges": ["198.18.1.0/24", "198.18.1.99/32"]}));
        assert_eq!(validate_service(&good), Ok(()));
        let bad = svc(
            json!({"clusterIP": "10.96.0.x", "externalIPs": ["127.0.0.1", "nope"],
            "loadBalancerIP": "224.0.0.1", "loadBalancerSourceRanges": ["198.18.1.99"]}),
        );
        let text = errors_of(validate_service(&bad));
        for want in [
            "spec.clusterIPs: Invalid value: \"10.96.0.x\"",
            "spec.externalIPs[0]: Invalid value: \"127.0.0.1\"",
            "spec.externalIPs[1]: Invalid value: \"nope\"",
            "spec.loadBalancerIP: Invalid value: \"224.0.0.1\"",
            "spec.loadBalancerSourceRanges[0]: Invalid value: \"198.18.1.99\"",
        ] {
            assert!(text.contains(want), "{want} not in {text}");
        }
        let named: Service =
            serde_json::from_value(json!({"metadata": {"name": "bad name"}})).unwrap();
        assert!(errors_of(validate_service(&named)).contains("metadata.name"));
    }

    fn network_policy(spec: serde_json::Value) -> NetworkPolicy {
        serde_json::from_value(json!({"metadata": {"name": "np", "namespace": "x"}, "spec": spec}))
            .unwrap()
    }

    #[test]
    fn a_complete_network_policy_passes() {
        let np = network_policy(json!({
            "podSelector": {"matchExpressions": [{"key": "pod", "operator": "In", "values": ["a"]}]},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [{"from": [
                {"namespaceSelector": {"matchLabels": {"ns": "y"}}, "podSelector": {}},
                {"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]}}
            ], "ports": [{"port": 80}, {"port": "serve-81-tcp", "protocol": "TCP"}, {"port": 8000, "endPort": 8080, "protocol": "SCTP"}]}],
            "egress": [{"to": [{"podSelector": {"matchLabels": {"app": "db"}}}], "ports": [{"protocol": "UDP"}]}]
        }));
        assert_eq!(validate_network_policy(&np), Ok(()));
    }

    #[test]
    fn network_policies_are_refused_as_the_api_server_refuses_them() {
        for (spec, field) in [
            (json!({"policyTypes": ["Sideways"]}), "spec.policyTypes[0]"),
            (
                json!({"ingress": [{"from": [{}]}]}),
                "spec.ingress[0].from[0]",
            ),
            (
                json!({"ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/8"}, "podSelector": {}}]}]}),
                "spec.ingress[0].from[0].ipBlock",
            ),
            (
                json!({"egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.1"}}]}]}),
                "spec.egress[0].to[0].ipBlock.cidr",
            ),
            (
                json!({"egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["192.168.0.0/16"]}}]}]}),
                "spec.egress[0].to[0].ipBlock.except[0]",
            ),
            (
                json!({"ingress": [{"ports": [{"port": 0}]}]}),
                "spec.ingress[0].ports[0].port",
            ),
            (
                json!({"ingress": [{"ports": [{"port": 90, "endPort": 80}]}]}),
                "spec.ingress[0].ports[0].endPort",
            ),
            (
                json!({"ingress": [{"ports": [{"port": "http", "endPort": 90}]}]}),
                "spec.ingress[0].ports[0].endPort",
            ),
            (
                json!({"ingress": [{"ports": [{"endPort": 90}]}]}),
                "spec.ingress[0].ports[0].endPort",
            ),
            (
                json!({"ingress": [{"ports": [{"port": "Not_A_Name"}]}]}),
                "spec.ingress[0].ports[0].port",
            ),
            (
                json!({"ingress": [{"ports": [{"protocol": "ICMP"}]}]}),
                "spec.ingress[0].ports[0].protocol",
            ),
            (
                json!({"podSelector": {"matchExpressions": [{"key": "a", "operator": "In"}]}}),
                "spec.podSelector.matchExpressions[0].values",
            ),
        ] {
            let errors = errors_of(validate_network_policy(&network_policy(spec.clone())));
            assert!(errors.contains(field), "{spec}: {errors}");
        }
        let mut named = network_policy(json!({}));
        named.metadata.name = Some("Bad_Name".into());
        assert!(errors_of(validate_network_policy(&named)).contains("metadata.name"));
    }
}
