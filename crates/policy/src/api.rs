//! The cluster-wide policy kind weft enforces, as the API serves it:
//! `policy.networking.k8s.io/v1beta1` ClusterNetworkPolicy of the
//! `sigs.k8s.io/network-policy-api` project (v0.3.0, its standard
//! channel; `v1alpha2` has the same schema). k8s-openapi has no such type,
//! so it is declared here with the traits kube and the store need.
//!
//! Fields of the experimental channel (`nodes` and `domainNames` peers,
//! `destinationNamedPort`) are not declared: a peer or protocol that has
//! only such a field reads as one with no field set, which the API says
//! to treat as "fail closed" (see `model::ClusterPolicy`).
//!
//! It owns the shapes only; reading them into rules is `model`'s.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use serde::{Deserialize, Serialize};

/// A cluster-wide network policy.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct ClusterNetworkPolicy {
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: ClusterNetworkPolicySpec,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterNetworkPolicySpec {
    /// `Admin` or `Baseline`.
    #[serde(default)]
    pub tier: String,
    /// 0–1000; lower is checked first within its tier.
    #[serde(default)]
    pub priority: i32,
    #[serde(default)]
    pub subject: Subject,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ingress: Vec<IngressRule>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub egress: Vec<EgressRule>,
}

/// The pods a policy applies to: exactly one field is set.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Subject {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespaces: Option<LabelSelector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pods: Option<NamespacedPod>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NamespacedPod {
    #[serde(default)]
    pub namespace_selector: LabelSelector,
    #[serde(default)]
    pub pod_selector: LabelSelector,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IngressRule {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `Accept`, `Deny` or `Pass`.
    #[serde(default)]
    pub action: String,
    #[serde(default)]
    pub from: Vec<Peer>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocols: Option<Vec<ProtocolMatch>>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EgressRule {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `Accept`, `Deny` or `Pass`.
    #[serde(default)]
    pub action: String,
    #[serde(default)]
    pub to: Vec<Peer>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocols: Option<Vec<ProtocolMatch>>,
}

/// One peer of a rule: exactly one field is set (`networks` only on
/// egress).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Peer {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespaces: Option<LabelSelector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pods: Option<NamespacedPod>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub networks: Option<Vec<String>>,
}

/// One protocol of a rule: exactly one field is set.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProtocolMatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<ProtocolPort>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub udp: Option<ProtocolPort>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sctp: Option<ProtocolPort>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProtocolPort {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination_port: Option<Port>,
}

/// A port number or a range: exactly one field is set.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Port {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub number: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub range: Option<PortRange>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PortRange {
    #[serde(default)]
    pub start: i32,
    #[serde(default)]
    pub end: i32,
}

/// One rule of either direction: ingress and egress rules differ only
/// in the name of their peers' field.
#[derive(Debug, Clone, Copy)]
pub struct RuleView<'a> {
    pub name: Option<&'a str>,
    pub action: &'a str,
    pub peers: &'a [Peer],
    pub protocols: Option<&'a [ProtocolMatch]>,
}

/// A direction's rules: which (`ingress`, `egress`), its peers' field
/// (`from`, `to`) and the rules in order.
pub type Direction<'a> = (&'static str, &'static str, Vec<RuleView<'a>>);

impl ClusterNetworkPolicySpec {
    /// Its ingress rules, then its egress rules.
    pub fn directions(&self) -> [Direction<'_>; 2] {
        let ingress = self.ingress.iter().map(|r| RuleView {
            name: r.name.as_deref(),
            action: &r.action,
            peers: &r.from,
            protocols: r.protocols.as_deref(),
        });
        let egress = self.egress.iter().map(|r| RuleView {
            name: r.name.as_deref(),
            action: &r.action,
            peers: &r.to,
            protocols: r.protocols.as_deref(),
        });
        [
            ("ingress", "from", ingress.collect()),
            ("egress", "to", egress.collect()),
        ]
    }
}

impl k8s_openapi::Resource for ClusterNetworkPolicy {
    const API_VERSION: &'static str = "policy.networking.k8s.io/v1beta1";
    const GROUP: &'static str = "policy.networking.k8s.io";
    const KIND: &'static str = "ClusterNetworkPolicy";
    const VERSION: &'static str = "v1beta1";
    const URL_PATH_SEGMENT: &'static str = "clusternetworkpolicies";
    type Scope = k8s_openapi::ClusterResourceScope;
}

impl k8s_openapi::ListableResource for ClusterNetworkPolicy {
    const LIST_KIND: &'static str = "ClusterNetworkPolicyList";
}

impl k8s_openapi::Metadata for ClusterNetworkPolicy {
    type Ty = ObjectMeta;

    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn metadata_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

/// With `apiVersion` and `kind`, as the API server (and server-side apply)
/// expects every object to say what it is.
impl Serialize for ClusterNetworkPolicy {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use k8s_openapi::Resource;
        use serde::ser::SerializeStruct;
        let mut s = serializer.serialize_struct(Self::KIND, 4)?;
        s.serialize_field("apiVersion", Self::API_VERSION)?;
        s.serialize_field("kind", Self::KIND)?;
        s.serialize_field("metadata", &self.metadata)?;
        s.serialize_field("spec", &self.spec)?;
        s.end()
    }
}

/// The API versions a manifest may name the kind with (same schema).
pub const API_VERSIONS: [&str; 2] = [
    "policy.networking.k8s.io/v1beta1",
    "policy.networking.k8s.io/v1alpha2",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_upstream_example_and_writes_its_kind_back() {
        let cnp: ClusterNetworkPolicy = serde_json::from_value(serde_json::json!({
            "apiVersion": "policy.networking.k8s.io/v1alpha2",
            "kind": "ClusterNetworkPolicy",
            "metadata": {"name": "deny-sensitive"},
            "spec": {
                "tier": "Admin", "priority": 10,
                "subject": {"namespaces": {"matchLabels": {"tenant": "a"}}},
                "ingress": [{"name": "deny-all", "action": "Deny",
                             "from": [{"namespaces": {}}],
                             "protocols": [{"tcp": {"destinationPort": {"range": {"start": 80, "end": 81}}}}]}],
                "egress": [{"action": "Accept", "to": [{"networks": ["198.18.0.0/15"]}, {"nodes": {}}]}]
            }
        }))
        .unwrap();
        assert_eq!(cnp.spec.tier, "Admin");
        let rule = &cnp.spec.ingress[0];
        let port = rule.protocols.as_ref().unwrap()[0].tcp.as_ref().unwrap();
        assert_eq!(
            port.destination_port.as_ref().unwrap().range,
            Some(PortRange { start: 80, end: 81 })
        );
        // `nodes` is experimental: the peer reads with no field set.
        assert_eq!(cnp.spec.egress[0].to[1], Peer::default());
        let written = serde_json::to_value(&cnp).unwrap();
        assert_eq!(written["apiVersion"], "policy.networking.k8s.io/v1beta1");
        assert_eq!(written["kind"], "ClusterNetworkPolicy");
        assert_eq!(
            written["spec"]["subject"]["namespaces"]["matchLabels"]["tenant"],
            "a"
        );
    }
}
