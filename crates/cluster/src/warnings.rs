//! Warnings about a Service for its owner, where Kubernetes users look for
//! them: an Event (`events.k8s.io/v1`) regarding the Service, as
//! `kubectl describe` and `weft lab get events` show it. The agent's proxy
//! records one when it cannot program a Service; the log and the metrics
//! carry the same news for the operator.
//!
//! It owns the trait and the Event's shape on the embedded store; it must
//! not decide when to warn (the caller warns once per change).

use std::future::Future;

use k8s_openapi::api::core::v1::{ObjectReference, Service};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use sha2::{Digest, Sha256};

use crate::{Cluster, ClusterError};

/// Who reports: Events name it as their reporting controller.
pub const REPORTER: &str = "weft-proxy";

/// One warning about one Service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    /// PascalCase, as Event reasons are (`FailedToProgram`).
    pub reason: &'static str,
    /// What went wrong and what to do, for a person.
    pub note: String,
    /// The node whose proxy saw it (the Event's reporting instance).
    pub node: String,
}

/// Where warnings about Services go.
pub trait Warnings: Cluster {
    /// Records `warning` on Service `namespace/name`; nothing when the
    /// Service is gone.
    fn warn_service(
        &self,
        namespace: &str,
        name: &str,
        warning: &Warning,
    ) -> impl Future<Output = Result<(), ClusterError>> + Send;
}

/// The Event recording `warning` on `service` at `now`, for a store that
/// has no API server to build it. Its name is the same for the same
/// Service, node and reason, so a repeated warning replaces the last one
/// instead of piling up.
pub fn event(service: &Service, warning: &Warning, now: Timestamp) -> Event {
    let meta = &service.metadata;
    let namespace = meta.namespace.clone().unwrap_or_else(|| "default".into());
    let name = meta.name.clone().unwrap_or_default();
    let digest = Sha256::digest(format!(
        "{namespace}\n{name}\n{}\n{}",
        warning.node, warning.reason
    ));
    let hash: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    Event {
        metadata: ObjectMeta {
            name: Some(format!("{REPORTER}.{hash}")),
            namespace: Some(namespace.clone()),
            ..ObjectMeta::default()
        },
        event_time: Some(MicroTime(now)),
        type_: Some("Warning".into()),
        reason: Some(warning.reason.into()),
        note: Some(warning.note.clone()),
        action: Some(ACTION.into()),
        reporting_controller: Some(REPORTER.into()),
        reporting_instance: Some(warning.node.clone()),
        regarding: Some(ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Service".into()),
            namespace: Some(namespace),
            name: Some(name),
            uid: meta.uid.clone(),
            ..ObjectReference::default()
        }),
        ..Event::default()
    }
}

/// The Events' action: what the proxy was doing.
pub const ACTION: &str = "ProgramService";

#[cfg(test)]
mod tests {
    use super::*;

    fn service(name: &str) -> Service {
        serde_json::from_value(serde_json::json!({
            "metadata": {"namespace": "demo", "name": name, "uid": "u-1"}
        }))
        .unwrap()
    }

    fn warning(node: &str, reason: &'static str) -> Warning {
        Warning {
            reason,
            note: "nft rejected its rules".into(),
            node: node.into(),
        }
    }

    #[test]
    fn the_event_regards_the_service_and_names_its_reporter() {
        let now = Timestamp::from_second(1_700_000_000).unwrap();
        let e = event(&service("web"), &warning("node-1", "FailedToProgram"), now);
        let regarding = e.regarding.clone().unwrap();
        assert_eq!(
            (
                regarding.kind.as_deref(),
                regarding.name.as_deref(),
                regarding.uid.as_deref()
            ),
            (Some("Service"), Some("web"), Some("u-1"))
        );
        assert_eq!(e.metadata.namespace.as_deref(), Some("demo"));
        assert_eq!(e.type_.as_deref(), Some("Warning"));
        assert_eq!(e.reporting_instance.as_deref(), Some("node-1"));
        assert_eq!(e.event_time, Some(MicroTime(now)));
    }

    #[test]
    fn a_repeat_replaces_and_other_nodes_or_reasons_add() {
        let now = Timestamp::now();
        let name = |svc: &str, node: &str, reason| {
            event(&service(svc), &warning(node, reason), now)
                .metadata
                .name
                .unwrap()
        };
        let first = name("web", "node-1", "FailedToProgram");
        assert_eq!(first, name("web", "node-1", "FailedToProgram"));
        assert_ne!(first, name("web", "node-2", "FailedToProgram"));
        assert_ne!(first, name("web", "node-1", "Invalid"));
        assert_ne!(first, name("api", "node-1", "FailedToProgram"));
        assert!(
            first.starts_with("weft-proxy.") && first.len() <= 63,
            "{first}"
        );
    }
}
