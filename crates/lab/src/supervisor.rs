//! The lab kubelet's watch over one container. `weft lab supervise` runs
//! the container's process as its child (inside the pod's namespace, with
//! the container's owner tag and log) and, when the process ends on its
//! own — it exits, fails to bind its port, is killed by anything but the
//! lab — records that in the pod's status as a kubelet would: the
//! container `terminated` with its exit code or signal and a reason, not
//! ready, the pod not Ready (phase Succeeded/Failed once every container
//! has ended), and re-syncs the EndpointSlices so the pod stops being a
//! ready endpoint. When the lab stops the pod, it signals the supervisor
//! with the container (both carry the owner tag), and nothing is recorded.
//!
//! Restart policies and probes are not implemented: an ended container
//! stays ended.

use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, ExitStatus};

use anyhow::{Context, Result};
use k8s_openapi::api::core::v1::{
    ContainerState, ContainerStateTerminated, ContainerStatus, Pod, PodCondition,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use weft_store::Store;

use crate::endpointslices;
use crate::layout::Layout;
use crate::objects::now;

/// Which container of which pod a supervisor watches.
#[derive(Debug, Clone)]
pub struct Container {
    pub lab: String,
    pub namespace: String,
    pub pod: String,
    /// The pod's UID: a later pod of the same name is not this one.
    pub uid: String,
    pub name: String,
}

/// Runs `program args` to its end, records how it ended, and returns the
/// exit code the supervisor itself should end with.
pub fn run(container: &Container, program: &Path, args: &[String]) -> Result<i32> {
    let status = Command::new(program)
        .args(args)
        .status()
        .with_context(|| format!("starting {}", program.display()));
    let ended = match &status {
        Ok(status) => Ended::from_status(*status),
        Err(e) => Ended {
            exit_code: 128,
            signal: None,
            reason: "StartError",
            message: Some(format!("{e:#}")),
        },
    };
    record(container, &ended, now())?;
    Ok(ended.exit_code)
}

/// How a container ended, in Kubernetes' terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ended {
    pub exit_code: i32,
    pub signal: Option<i32>,
    pub reason: &'static str,
    pub message: Option<String>,
}

impl Ended {
    pub fn from_status(status: ExitStatus) -> Ended {
        let signal = status.signal();
        // A shell reports death by signal N as 128 + N; so does the kubelet.
        let exit_code = status.code().unwrap_or(128 + signal.unwrap_or(0));
        Ended {
            exit_code,
            signal,
            reason: if exit_code == 0 { "Completed" } else { "Error" },
            message: signal.map(|s| format!("killed by signal {s}")),
        }
    }
}

/// Writes `ended` into the pod's status under the lab lock and syncs the
/// EndpointSlices. Nothing happens if the pod is gone, is another pod of
/// the same name, or the lab is being taken down.
fn record(container: &Container, ended: &Ended, at: Time) -> Result<()> {
    let layout = Layout::new(&container.lab)?;
    let Ok(_lock) = layout.lock() else {
        return Ok(());
    };
    let store = Store::open_existing(&layout.store())?;
    let Some(mut pod) = store.get_typed::<Pod>(&container.namespace, &container.pod)? else {
        return Ok(());
    };
    if pod.metadata.uid.as_deref() != Some(container.uid.as_str()) {
        return Ok(());
    }
    if mark_ended(&mut pod, &container.name, ended, at) {
        store.put_typed(&pod)?;
        endpointslices::sync(&store).context("updating EndpointSlices")?;
    }
    Ok(())
}

/// The pod's status with container `name` ended: the container terminated
/// and not ready, the pod's Ready and ContainersReady conditions False,
/// and its phase Succeeded (every container completed), Failed (every
/// container ended, one with an error) or still Running. Returns whether
/// anything changed.
pub fn mark_ended(pod: &mut Pod, name: &str, ended: &Ended, at: Time) -> bool {
    let Some(status) = pod.status.as_mut() else {
        return false;
    };
    let statuses = status.container_statuses.get_or_insert_with(Vec::new);
    let Some(cs) = statuses.iter_mut().find(|c| c.name == name) else {
        return false;
    };
    if cs.state.as_ref().is_some_and(|s| s.terminated.is_some()) {
        return false;
    }
    let started_at = cs
        .state
        .as_ref()
        .and_then(|s| s.running.as_ref())
        .and_then(|r| r.started_at.clone());
    cs.state = Some(ContainerState {
        terminated: Some(ContainerStateTerminated {
            exit_code: ended.exit_code,
            signal: ended.signal,
            reason: Some(ended.reason.into()),
            message: ended.message.clone(),
            started_at,
            finished_at: Some(at.clone()),
            container_id: cs.container_id.clone(),
        }),
        ..Default::default()
    });
    cs.ready = false;
    cs.started = Some(false);
    let all_ended = statuses
        .iter()
        .all(|c| c.state.as_ref().is_some_and(|s| s.terminated.is_some()));
    let all_completed = statuses.iter().all(|c| exit_code(c) == Some(0));
    status.phase = Some(
        match (all_ended, all_completed) {
            (false, _) => "Running",
            (true, true) => "Succeeded",
            (true, false) => "Failed",
        }
        .into(),
    );
    let conditions = status.conditions.get_or_insert_with(Vec::new);
    for type_ in ["Ready", "ContainersReady"] {
        conditions.retain(|c| c.type_ != type_);
        conditions.push(PodCondition {
            type_: type_.into(),
            status: "False".into(),
            reason: Some("ContainersNotReady".into()),
            message: Some(format!("containers with unready status: [{name}]")),
            last_transition_time: Some(at.clone()),
            ..Default::default()
        });
    }
    true
}

fn exit_code(c: &ContainerStatus) -> Option<i32> {
    c.state.as_ref()?.terminated.as_ref().map(|t| t.exit_code)
}

/// What `get pods` shows in STATUS: the reason of an ended container
/// (Error, Completed, StartError), else the phase.
pub fn display_status(pod: &Pod) -> String {
    let status = pod.status.clone().unwrap_or_default();
    status
        .container_statuses
        .iter()
        .flatten()
        .filter_map(|c| c.state.as_ref()?.terminated.as_ref()?.reason.clone())
        .find(|r| r != "Completed")
        .or_else(|| (status.phase.as_deref() == Some("Succeeded")).then(|| "Completed".to_string()))
        .or(status.phase)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn running_pod() -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "p", "uid": "u"},
            "status": {"phase": "Running",
                "conditions": [{"type": "Ready", "status": "True"}],
                "containerStatuses": [
                    {"name": "a", "image": "x", "imageID": "", "ready": true, "restartCount": 0,
                     "containerID": "weft://1", "state": {"running": {}}},
                    {"name": "b", "image": "x", "imageID": "", "ready": true, "restartCount": 0,
                     "containerID": "weft://2", "state": {"running": {}}}]}
        }))
        .unwrap()
    }

    fn ended(code: i32) -> Ended {
        Ended {
            exit_code: code,
            signal: None,
            reason: if code == 0 { "Completed" } else { "Error" },
            message: None,
        }
    }

    #[test]
    fn an_exited_container_makes_the_pod_unready_and_then_failed() {
        let mut pod = running_pod();
        assert!(mark_ended(&mut pod, "a", &ended(1), now()));
        assert!(!endpointslices::containers_ready(&pod));
        let status = pod.status.clone().unwrap();
        assert_eq!(status.phase.as_deref(), Some("Running"));
        let a = &status.container_statuses.as_ref().unwrap()[0];
        let t = a.state.as_ref().unwrap().terminated.as_ref().unwrap();
        assert_eq!((t.exit_code, t.reason.as_deref()), (1, Some("Error")));
        assert!(!a.ready);
        let ready = status
            .conditions
            .as_ref()
            .unwrap()
            .iter()
            .find(|c| c.type_ == "Ready");
        assert_eq!(ready.unwrap().status, "False");
        assert_eq!(display_status(&pod), "Error");
        assert!(
            !mark_ended(&mut pod, "a", &ended(0), now()),
            "recorded once"
        );
        assert!(mark_ended(&mut pod, "b", &ended(0), now()));
        assert_eq!(
            pod.status.as_ref().unwrap().phase.as_deref(),
            Some("Failed")
        );
    }

    #[test]
    fn completed_containers_make_the_pod_succeed() {
        let mut pod = running_pod();
        mark_ended(&mut pod, "a", &ended(0), now());
        mark_ended(&mut pod, "b", &ended(0), now());
        assert_eq!(
            pod.status.as_ref().unwrap().phase.as_deref(),
            Some("Succeeded")
        );
        assert_eq!(display_status(&pod), "Completed");
        assert!(!mark_ended(&mut pod, "nope", &ended(0), now()));
    }

    #[test]
    fn signals_and_exit_codes_are_reported_like_the_kubelet() {
        let killed = Ended::from_status(ExitStatus::from_raw(9));
        assert_eq!(
            (killed.exit_code, killed.signal, killed.reason),
            (137, Some(9), "Error")
        );
        let code = Ended::from_status(ExitStatus::from_raw(3 << 8));
        assert_eq!(
            (code.exit_code, code.signal, code.reason),
            (3, None, "Error")
        );
        let ok = Ended::from_status(ExitStatus::from_raw(0));
        assert_eq!(ok.reason, "Completed");
    }
}
