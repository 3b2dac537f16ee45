//! weft's install manifest (`deploy/weft.yaml`) as a lab with a Kubernetes
//! control plane applies it: every object but the DaemonSet — the
//! namespace, the service account, its roles and bindings, the ConfigMaps —
//! so the lab's agents run with exactly the rights a real install gives
//! them (one source of truth). The DaemonSet is left out: a lab's agents
//! are its own processes.
//!
//! It owns reading the manifest compiled into the binary and applying it
//! (server-side apply, so it can be applied again); it must not change
//! the manifest's objects.

use kube::api::{DynamicObject, Patch, PatchParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::{Api, Client};
use serde::Deserialize;

/// The manifest, as shipped.
pub const MANIFEST: &str = include_str!("../../../deploy/weft.yaml");

/// The field manager of the lab's writes.
const MANAGER: &str = "weft-lab";

#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("deploy/weft.yaml, document {index}: {reason}")]
    Manifest { index: usize, reason: String },
    #[error("applying {kind} {name} from deploy/weft.yaml: {source}")]
    Apply {
        kind: String,
        name: String,
        source: kube::Error,
    },
}

/// The manifest's objects but its DaemonSet, in the manifest's order
/// (the namespace first), each with the API resource it is written to.
pub fn objects() -> Result<Vec<(ApiResource, DynamicObject)>, InstallError> {
    let mut objects = Vec::new();
    for (index, doc) in serde_yaml_ng::Deserializer::from_str(MANIFEST).enumerate() {
        let refuse = |reason: String| InstallError::Manifest { index, reason };
        let value = serde_yaml_ng::Value::deserialize(doc).map_err(|e| refuse(e.to_string()))?;
        if value.is_null() {
            continue;
        }
        let object: DynamicObject =
            serde_yaml_ng::from_value(value).map_err(|e| refuse(e.to_string()))?;
        let types = object
            .types
            .clone()
            .ok_or_else(|| refuse("no apiVersion/kind".into()))?;
        if types.kind == "DaemonSet" {
            continue;
        }
        let gvk = GroupVersionKind::try_from(&types).map_err(|e| refuse(e.to_string()))?;
        objects.push((ApiResource::from_gvk(&gvk), object));
    }
    Ok(objects)
}

/// Applies [`objects`] through `client` (an admin's); how many.
pub async fn apply(client: &Client) -> Result<usize, InstallError> {
    let objects = objects()?;
    for (resource, object) in &objects {
        let name = object.metadata.name.clone().unwrap_or_default();
        let api: Api<DynamicObject> = match object.metadata.namespace.as_deref() {
            Some(namespace) => Api::namespaced_with(client.clone(), namespace, resource),
            None => Api::all_with(client.clone(), resource),
        };
        api.patch(
            &name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(object),
        )
        .await
        .map_err(|source| InstallError::Apply {
            kind: resource.kind.clone(),
            name,
            source,
        })?;
    }
    Ok(objects.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_object_but_the_daemonset_in_the_manifests_order() {
        let objects = objects().unwrap();
        let kinds: Vec<&str> = objects
            .iter()
            .map(|(resource, _)| resource.kind.as_str())
            .collect();
        assert_eq!(kinds[0], "Namespace");
        assert!(!kinds.contains(&"DaemonSet"), "{kinds:?}");
        for wanted in [
            "ServiceAccount",
            "ClusterRole",
            "ClusterRoleBinding",
            "Role",
            "RoleBinding",
            "ConfigMap",
        ] {
            assert!(kinds.contains(&wanted), "{wanted} missing: {kinds:?}");
        }
    }
}
