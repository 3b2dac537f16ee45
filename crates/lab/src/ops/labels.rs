//! `weft lab label [-n NS] pod|namespace NAME KEY=VALUE|KEY- … [--overwrite]`:
//! changes a running pod's or a namespace's labels, with kubectl's rules —
//! a new value for a key that has one needs `--overwrite`, `KEY-` removes
//! the key. Pods are not restarted; Services' selections follow (the
//! EndpointSlices are synced), and so do NetworkPolicies' selectors.

use anyhow::{Context, Result};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;
use weft_validation::labels;
use weft_validation::names;

use super::cluster::Cluster;
use super::{check_name, Lab};
use crate::report::{Event, Report};
use weft_policy::model::{namespace_labels, Labels, NAMESPACE_NAME_LABEL};

/// One change: set a key to a value, or remove it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LabelChange {
    Set(String, String),
    Remove(String),
}

impl LabelChange {
    /// `KEY=VALUE` or `KEY-`, the key and value checked as the API server
    /// checks labels.
    pub fn parse(text: &str) -> Result<LabelChange, String> {
        if let Some(key) = text.strip_suffix('-') {
            labels::key(key).map_err(|e| format!("{text:?}: {e}"))?;
            return Ok(LabelChange::Remove(key.into()));
        }
        let (key, value) = text.split_once('=').ok_or_else(|| {
            format!("{text:?}: write KEY=VALUE to set a label or KEY- to remove one")
        })?;
        labels::key(key).map_err(|e| format!("{text:?}: {e}"))?;
        labels::value(value).map_err(|e| format!("{text:?}: {e}"))?;
        Ok(LabelChange::Set(key.into(), value.into()))
    }
}

/// `current` with `changes` applied; `None` when nothing changes.
pub fn relabel(
    current: &Labels,
    changes: &[LabelChange],
    overwrite: bool,
    protected: &[&str],
) -> Result<Option<Labels>, String> {
    let mut next = current.clone();
    for change in changes {
        let key = match change {
            LabelChange::Set(key, _) | LabelChange::Remove(key) => key,
        };
        if protected.contains(&key.as_str()) {
            return Err(format!(
                "label {key} is set by the API server and cannot be changed"
            ));
        }
        match change {
            LabelChange::Set(key, value) => match next.get(key) {
                Some(old) if old != value && !overwrite => {
                    return Err(format!(
                        "'{key}' already has a value ({old}), and --overwrite is false"
                    ))
                }
                _ => {
                    next.insert(key.clone(), value.clone());
                }
            },
            LabelChange::Remove(key) => {
                next.remove(key);
            }
        }
    }
    Ok((next != *current).then_some(next))
}

/// What to label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Labelled {
    Pod,
    Namespace,
}

/// `weft lab label`.
pub fn label(
    name: &str,
    kind: Labelled,
    namespace: &str,
    object: &str,
    changes: &[LabelChange],
    overwrite: bool,
    report: Report<'_>,
) -> Result<()> {
    let lab = Lab::open(name)?;
    let (what, protected): (String, &[&str]) = match kind {
        Labelled::Pod => {
            check_name("pod", namespace, object, names::dns1123_subdomain)?;
            (format!("pod/{object}"), &[])
        }
        Labelled::Namespace => {
            names::dns1123_label(object)
                .map_err(|e| anyhow::anyhow!("namespace {object:?} is invalid: {e}"))?;
            (format!("namespace/{object}"), &[NAMESPACE_NAME_LABEL])
        }
    };
    let current = current_labels(&lab, kind, namespace, object)?
        .with_context(|| format!("{what} not found"))?;
    let Some(next) = relabel(&current, changes, overwrite, protected)
        .map_err(|e| anyhow::anyhow!("{what} was not labeled: {e}"))?
    else {
        report(Event::Labeled {
            object: what,
            changed: false,
        });
        return Ok(());
    };
    match &lab.cluster {
        Cluster::Api { runtime, client } => {
            // A merge patch: keys gone from `next` are removed with null.
            let mut patch = serde_json::Map::new();
            for key in current.keys().filter(|k| !next.contains_key(*k)) {
                patch.insert(key.clone(), serde_json::Value::Null);
            }
            for (key, value) in &next {
                patch.insert(key.clone(), json!(value));
            }
            let body = json!({"metadata": {"labels": patch}});
            let params = PatchParams::default();
            runtime
                .block_on(async {
                    match kind {
                        Labelled::Pod => {
                            let api: Api<Pod> = Api::namespaced(client.clone(), namespace);
                            api.patch(object, &params, &Patch::Merge(&body))
                                .await
                                .map(drop)
                        }
                        Labelled::Namespace => {
                            let api: Api<Namespace> = Api::all(client.clone());
                            api.patch(object, &params, &Patch::Merge(&body))
                                .await
                                .map(drop)
                        }
                    }
                })
                .with_context(|| format!("labeling {what}"))?;
        }
        Cluster::Store(store) => {
            let lock = lab.lock()?;
            match kind {
                Labelled::Pod => {
                    let mut pod: Pod = store
                        .get_typed(namespace, object)?
                        .with_context(|| format!("{what} not found"))?;
                    pod.metadata.labels = Some(next);
                    store.put_typed(&pod)?;
                }
                Labelled::Namespace => {
                    let mut ns: Namespace = store.get_typed("", object)?.unwrap_or_default();
                    ns.metadata.name = Some(object.into());
                    ns.metadata.labels = Some(next);
                    store.put_typed(&ns)?;
                }
            }
            drop(lock);
            lab.then_sync(Ok(()))?;
        }
    }
    report(Event::Labeled {
        object: what,
        changed: true,
    });
    Ok(())
}

/// The object's labels (a namespace's include its name label); `None`
/// when there is no such object.
fn current_labels(
    lab: &Lab,
    kind: Labelled,
    namespace: &str,
    object: &str,
) -> Result<Option<Labels>> {
    Ok(match kind {
        Labelled::Pod => lab
            .cluster
            .get::<Pod>(namespace, object)?
            .map(|p| p.metadata.labels.unwrap_or_default()),
        Labelled::Namespace => namespace_labels(&lab.cluster.list::<Namespace>()?).remove(object),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn changes(texts: &[&str]) -> Vec<LabelChange> {
        texts
            .iter()
            .map(|t| LabelChange::parse(t).unwrap())
            .collect()
    }

    #[test]
    fn changes_follow_kubectl() {
        let current: Labels = [("app".to_string(), "web".to_string())].into();
        let add = relabel(&current, &changes(&["tier=front"]), false, &[])
            .unwrap()
            .unwrap();
        assert_eq!(add.get("tier").map(String::as_str), Some("front"));
        let err = relabel(&current, &changes(&["app=db"]), false, &[]).unwrap_err();
        assert_eq!(
            err,
            "'app' already has a value (web), and --overwrite is false"
        );
        let over = relabel(&current, &changes(&["app=db"]), true, &[])
            .unwrap()
            .unwrap();
        assert_eq!(over.get("app").map(String::as_str), Some("db"));
        assert_eq!(
            relabel(&current, &changes(&["app=web"]), false, &[]),
            Ok(None)
        );
        let removed = relabel(&current, &changes(&["app-"]), false, &[])
            .unwrap()
            .unwrap();
        assert!(removed.is_empty());
        assert!(relabel(
            &current,
            &changes(&["kubernetes.io/metadata.name=x"]),
            true,
            &[NAMESPACE_NAME_LABEL]
        )
        .is_err());
    }

    #[test]
    fn keys_and_values_are_checked() {
        for bad in ["app", "=x", "Bad Key=x", "app=bad value", "-"] {
            assert!(LabelChange::parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            LabelChange::parse("example.com/team=a"),
            Ok(LabelChange::Set("example.com/team".into(), "a".into()))
        );
    }
}
