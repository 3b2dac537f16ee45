//! Kubernetes manifests as the lab accepts them: multi-document YAML (or
//! JSON) with Namespaces, Pods, Deployments, Services, NetworkPolicies,
//! ClusterNetworkPolicies (`policy.networking.k8s.io`, either of
//! [`API_VERSIONS`]) and Lists of those,
//! decoded into Kubernetes' own types (weft's for ClusterNetworkPolicy). Deployments are expanded into their
//! Pods here, the way the ReplicaSet controller would; Services are checked
//! and completed by [`crate::services`] when they are applied.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Deserialize;
use serde_json::Value;
use weft_policy::api::{ClusterNetworkPolicy, API_VERSIONS};

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("document {doc}: not valid YAML: {message}")]
    Yaml { doc: usize, message: String },
    #[error("document {doc}: {kind} {name:?} is not a valid {kind}: {message}")]
    Invalid {
        doc: usize,
        kind: String,
        name: String,
        message: String,
    },
    #[error("document {doc}: kind {kind:?} is not supported by the lab yet (supported: Namespace, Pod, Deployment, Service, NetworkPolicy, ClusterNetworkPolicy, List)")]
    Unsupported { doc: usize, kind: String },
    #[error("document {doc}: apiVersion {api_version:?} of {kind} is not served (use {})", .expected.join(" or "))]
    UnsupportedVersion {
        doc: usize,
        kind: String,
        api_version: String,
        expected: Vec<&'static str>,
    },
    #[error("document {doc}: a {kind} needs metadata.name")]
    NoName { doc: usize, kind: String },
    #[error("document {doc}: {what} is invalid: {errors}")]
    Rejected {
        doc: usize,
        what: String,
        errors: weft_validation::Errors,
    },
    /// Every problem of a manifest, one per line: nothing was applied.
    #[error("the manifest was not applied, nothing changed:\n{}", .0.iter().map(|e| format!("  {e}")).collect::<Vec<_>>().join("\n"))]
    Many(Vec<ManifestError>),
}

/// One object from a manifest.
#[derive(Debug, Clone)]
pub enum Resource {
    Namespace(Namespace),
    Pod(Pod),
    Deployment(Deployment),
    Service(Service),
    NetworkPolicy(NetworkPolicy),
    ClusterNetworkPolicy(ClusterNetworkPolicy),
}

impl Resource {
    /// The API server's validation of the object; a Deployment's pods are
    /// checked too (their names are the Deployment's with a suffix).
    pub fn validate(&self) -> Result<(), weft_validation::Errors> {
        use weft_validation::objects as v;
        match self {
            Resource::Namespace(n) => v::validate_namespace(n),
            Resource::Pod(p) => v::validate_pod(p),
            Resource::Service(s) => v::validate_service(s),
            Resource::NetworkPolicy(np) => v::validate_network_policy(np),
            Resource::ClusterNetworkPolicy(cnp) => {
                weft_policy::validate::validate_cluster_network_policy(cnp)
            }
            Resource::Deployment(d) => {
                v::validate_deployment(d)?;
                expand_deployment(d).iter().try_for_each(v::validate_pod)
            }
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Resource::Namespace(n) => {
                format!("namespace/{}", n.metadata.name.as_deref().unwrap_or(""))
            }
            Resource::Pod(p) => format!("pod/{}", p.metadata.name.as_deref().unwrap_or("")),
            Resource::Deployment(d) => format!(
                "deployment.apps/{}",
                d.metadata.name.as_deref().unwrap_or("")
            ),
            Resource::Service(s) => {
                format!("service/{}", s.metadata.name.as_deref().unwrap_or(""))
            }
            Resource::NetworkPolicy(np) => format!(
                "networkpolicy.networking.k8s.io/{}",
                np.metadata.name.as_deref().unwrap_or("")
            ),
            Resource::ClusterNetworkPolicy(cnp) => format!(
                "clusternetworkpolicy.policy.networking.k8s.io/{}",
                cnp.metadata.name.as_deref().unwrap_or("")
            ),
        }
    }
}

const KINDS: [&str; 6] = [
    "Namespace",
    "Pod",
    "Deployment",
    "Service",
    "NetworkPolicy",
    "ClusterNetworkPolicy",
];

/// Parses and validates every document of `text`, as the API server would
/// each object: any problem in any document refuses the whole manifest,
/// with every problem listed, so nothing is applied half-way.
pub fn parse(text: &str) -> Result<Vec<Resource>, ManifestError> {
    let mut out = Vec::new();
    let mut problems = Vec::new();
    for (i, doc) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let value = match Value::deserialize(doc) {
            Ok(value) => value,
            Err(e) => {
                // A YAML syntax error ends the stream: later documents
                // cannot be told apart.
                problems.push(ManifestError::Yaml {
                    doc: i + 1,
                    message: e.to_string(),
                });
                break;
            }
        };
        if !value.is_null() {
            collect(i + 1, value, &mut out, &mut problems);
        }
    }
    match problems.len() {
        0 => Ok(out),
        1 => Err(problems.remove(0)),
        _ => Err(ManifestError::Many(problems)),
    }
}

fn collect(doc: usize, value: Value, out: &mut Vec<Resource>, problems: &mut Vec<ManifestError>) {
    let kind = value["kind"].as_str().unwrap_or("").to_string();
    let list_of = kind.strip_suffix("List");
    if list_of.is_some_and(|k| k.is_empty() || KINDS.contains(&k)) {
        for item in value["items"].as_array().cloned().unwrap_or_default() {
            collect(doc, item, out, problems);
        }
        return;
    }
    match decode(doc, kind, value) {
        Ok(resource) => match resource.validate() {
            Ok(()) => out.push(resource),
            Err(errors) => problems.push(ManifestError::Rejected {
                doc,
                what: resource.describe(),
                errors,
            }),
        },
        Err(e) => problems.push(e),
    }
}

fn decode(doc: usize, kind: String, value: Value) -> Result<Resource, ManifestError> {
    if !KINDS.contains(&kind.as_str()) {
        return Err(ManifestError::Unsupported { doc, kind });
    }
    // The built-in kinds are read whatever apiVersion they give (kubectl
    // would refuse a wrong one); a custom resource is served only in its
    // own versions, whose schemas are the same.
    if kind == "ClusterNetworkPolicy" {
        let api_version = value["apiVersion"].as_str().unwrap_or("");
        if !API_VERSIONS.contains(&api_version) {
            return Err(ManifestError::UnsupportedVersion {
                doc,
                kind,
                api_version: api_version.into(),
                expected: API_VERSIONS.to_vec(),
            });
        }
    }
    let name = value["metadata"]["name"].as_str().unwrap_or("").to_string();
    if name.is_empty() {
        return Err(ManifestError::NoName { doc, kind });
    }
    let invalid = |e: serde_json::Error| ManifestError::Invalid {
        doc,
        kind: kind.clone(),
        name: name.clone(),
        message: e.to_string(),
    };
    let resource = match kind.as_str() {
        "Namespace" => Resource::Namespace(serde_json::from_value(value).map_err(invalid)?),
        "Pod" => Resource::Pod(serde_json::from_value(value).map_err(invalid)?),
        "Deployment" => Resource::Deployment(serde_json::from_value(value).map_err(invalid)?),
        "Service" => Resource::Service(serde_json::from_value(value).map_err(invalid)?),
        "NetworkPolicy" => Resource::NetworkPolicy(serde_json::from_value(value).map_err(invalid)?),
        "ClusterNetworkPolicy" => {
            Resource::ClusterNetworkPolicy(serde_json::from_value(value).map_err(invalid)?)
        }
        _ => unreachable!("kinds are checked above"),
    };
    Ok(resource)
}

/// The Pods a Deployment stands for: `replicas` copies of its template,
/// named `<deployment>-<index>` (stable, so re-applying is idempotent).
/// A Deployment without a spec (which validation refuses) stands for none.
pub fn expand_deployment(d: &Deployment) -> Vec<Pod> {
    let name = d.metadata.name.clone().unwrap_or_default();
    let namespace = d.metadata.namespace.clone();
    let Some(spec) = &d.spec else {
        return Vec::new();
    };
    let replicas = spec.replicas.unwrap_or(1).max(0);
    (0..replicas)
        .map(|i| {
            let template = &spec.template;
            let mut labels = template
                .metadata
                .as_ref()
                .and_then(|m| m.labels.clone())
                .unwrap_or_default();
            labels.insert("weft.dev/deployment".into(), name.clone());
            Pod {
                metadata: ObjectMeta {
                    name: Some(format!("{name}-{i}")),
                    namespace: namespace.clone(),
                    labels: Some(labels),
                    ..Default::default()
                },
                spec: template.spec.clone(),
                status: None,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multi_document_yaml_with_lists_and_deployments() {
        let text = r#"
apiVersion: v1
kind: Namespace
metadata: {name: demo}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: demo}
spec:
  replicas: 3
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers: [{name: c, image: agnhost, args: [netexec, --http-port=8080]}]
---
apiVersion: v1
kind: List
items:
- {apiVersion: v1, kind: Pod, metadata: {name: solo}, spec: {containers: [{name: c, image: x}]}}
"#;
        let r = parse(text).unwrap();
        assert_eq!(r.len(), 3);
        let Resource::Deployment(d) = &r[1] else {
            panic!("{:?}", r[1])
        };
        let pods = expand_deployment(d);
        assert_eq!(pods.len(), 3);
        assert_eq!(pods[2].metadata.name.as_deref(), Some("web-2"));
        assert_eq!(pods[0].metadata.labels.as_ref().unwrap()["app"], "web");
        assert!(matches!(r[2], Resource::Pod(_)));
    }

    #[test]
    fn services_with_named_target_ports() {
        let text = "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: demo}\n\
                    spec:\n  type: NodePort\n  selector: {app: web}\n  \
                    ports: [{name: http, port: 80, targetPort: http}]\n";
        let r = parse(text).unwrap();
        let Resource::Service(s) = &r[0] else {
            panic!("{:?}", r[0])
        };
        assert_eq!(r[0].describe(), "service/web");
        let port = &s.spec.as_ref().unwrap().ports.as_ref().unwrap()[0];
        assert_eq!(
            port.target_port,
            Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String("http".into()))
        );
    }

    #[test]
    fn errors_name_the_document() {
        assert!(matches!(
            parse("kind: Pod\nmetadata: {}\n"),
            Err(ManifestError::NoName { doc: 1, .. })
        ));
        let e = parse("---\nkind: ConfigMap\nmetadata: {name: s}\n").unwrap_err();
        assert!(e.to_string().contains("ConfigMap"), "{e}");
        let e = parse("kind: Service\nmetadata: {name: s}\nspec: {ports: [{port: web}]}\n")
            .unwrap_err();
        assert!(e.to_string().contains("Service \"s\""), "{e}");
        assert!(matches!(parse("a: [b"), Err(ManifestError::Yaml { .. })));
    }

    #[test]
    fn hostile_manifests_are_refused_whole_with_every_reason() {
        let text = "apiVersion: v1\nkind: Namespace\nmetadata: {name: ok}\n---\n\
                    kind: Pod\nmetadata: {name: /../../../../../../tmp/x}\nspec: {containers: [{name: c, image: x}]}\n---\n\
                    kind: Pod\nmetadata: {name: p}\nspec: {containers: []}\n---\n\
                    kind: Pod\nmetadata: {name: q}\nspec: {containers: [{name: c, image: x}, {name: c, image: x}]}\n---\n\
                    kind: Pod\nmetadata: {name: Upper}\nspec: {containers: [{name: c, image: x}]}\n---\n\
                    kind: FooList\nitems: []\n---\n\
                    kind: Deployment\nmetadata: {name: d}\nspec: {replicas: -1, selector: {matchLabels: {app: a}}, \
                    template: {metadata: {labels: {app: b}}, spec: {containers: [{name: c, image: x}]}}}\n";
        let e = parse(text).unwrap_err().to_string();
        for want in [
            "nothing changed",
            "document 2: pod//../../../../../../tmp/x is invalid: metadata.name",
            "document 3: pod/p is invalid: spec.containers: Required value",
            "document 4: pod/q is invalid: spec.containers[1].name: Duplicate value",
            "document 5: pod/Upper is invalid",
            "document 6: kind \"FooList\" is not supported",
            "document 7: deployment.apps/d is invalid: spec.replicas",
        ] {
            assert!(e.contains(want), "{want} not in {e}");
        }
        let long = format!(
            "kind: Pod\nmetadata: {{name: {}}}\nspec: {{containers: [{{name: c, image: x}}]}}\n",
            "a".repeat(300)
        );
        assert!(parse(&long)
            .unwrap_err()
            .to_string()
            .contains("no more than 253"));
        let list = "kind: PodList\nitems: [{kind: Pod, metadata: {name: ok}, spec: {containers: [{name: c, image: x}]}}]\n";
        assert_eq!(parse(list).unwrap().len(), 1);
    }

    #[test]
    fn cluster_network_policies_in_either_version_and_lists() {
        let policy = |version: &str, name: &str, priority: i32| {
            format!(
                "apiVersion: {version}\nkind: ClusterNetworkPolicy\nmetadata: {{name: {name}}}\n\
                 spec:\n  tier: Admin\n  priority: {priority}\n  \
                 subject: {{namespaces: {{matchLabels: {{tenant: a}}}}}}\n  \
                 egress: [{{action: Deny, to: [{{networks: [10.0.0.0/8]}}]}}]\n"
            )
        };
        let text = [
            policy("policy.networking.k8s.io/v1beta1", "a", 10),
            policy("policy.networking.k8s.io/v1alpha2", "b", 20),
        ]
        .join("---\n");
        let r = parse(&text).unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!(
            r[0].describe(),
            "clusternetworkpolicy.policy.networking.k8s.io/a"
        );
        let Resource::ClusterNetworkPolicy(b) = &r[1] else {
            panic!("{:?}", r[1])
        };
        assert_eq!(b.spec.priority, 20);
        assert_eq!(
            b.spec.egress[0].to[0].networks.as_deref(),
            Some(&["10.0.0.0/8".to_string()][..])
        );
        let list = "kind: ClusterNetworkPolicyList\napiVersion: policy.networking.k8s.io/v1beta1\n\
                    items: [{apiVersion: policy.networking.k8s.io/v1beta1, kind: ClusterNetworkPolicy, \
                    metadata: {name: c}, spec: {tier: Baseline, priority: 0, subject: {namespaces: {}}}}]\n";
        assert!(matches!(
            parse(list).unwrap().as_slice(),
            [Resource::ClusterNetworkPolicy(_)]
        ));
    }

    #[test]
    fn cluster_network_policies_are_checked_like_the_crd() {
        let e = parse(
            "apiVersion: policy.networking.k8s.io/v1\nkind: ClusterNetworkPolicy\nmetadata: {name: a}\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains(
                "apiVersion \"policy.networking.k8s.io/v1\" of ClusterNetworkPolicy is not served"
            ) && e
                .contains("policy.networking.k8s.io/v1beta1 or policy.networking.k8s.io/v1alpha2"),
            "{e}"
        );
        let e = parse(
            "apiVersion: policy.networking.k8s.io/v1beta1\nkind: ClusterNetworkPolicy\n\
             metadata: {name: a, namespace: demo}\n\
             spec: {tier: Admin, priority: 1001, subject: {}, \
             ingress: [{action: Deny, from: [{networks: [10.0.0.0/8]}]}], \
             egress: [{action: Deny, to: [{networks: [10.0.0.1/8]}]}]}\n",
        )
        .unwrap_err()
        .to_string();
        for want in [
            "document 1: clusternetworkpolicy.policy.networking.k8s.io/a is invalid",
            "metadata.namespace",
            "spec.priority",
            "spec.subject: Required value",
            "spec.ingress[0].from[0].networks",
            "spec.egress[0].to[0].networks[0]",
        ] {
            assert!(e.contains(want), "{want} not in {e}");
        }
    }

    proptest::proptest! {
        /// Whatever names a manifest uses, what `parse` accepts has paths
        /// that stay one component below the lab's `pods/` directory, and
        /// names no CNI_ARGS separator.
        #[test]
        fn accepted_manifests_have_safe_names(
            name in "[a-zA-Z0-9./;=_ -]{0,70}",
            namespace in "[a-z0-9./-]{0,20}",
            container in "[a-z0-9./-]{0,20}",
        ) {
            let text = serde_json::json!({
                "kind": "Pod",
                "metadata": {"name": name, "namespace": namespace},
                "spec": {"containers": [{"name": container, "image": "x"}]},
            })
            .to_string();
            if let Ok(resources) = parse(&text) {
                let layout = crate::layout::Layout::new("prop").unwrap();
                for r in resources {
                    let Resource::Pod(p) = r else { continue };
                    let (ns, pod) = crate::objects::key(&p);
                    let dir = layout.pod_dir(&ns, &pod).unwrap();
                    let pods = layout.root.join("pods");
                    proptest::prop_assert_eq!(dir.parent(), Some(pods.as_path()));
                    for c in &p.spec.unwrap().containers {
                        proptest::prop_assert!(!c.name.contains(['/', '.', ';', '=']));
                    }
                    proptest::prop_assert!(!pod.contains([';', '=', '/']));
                }
            }
        }
    }
}
