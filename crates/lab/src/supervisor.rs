//! The lab kubelet's watch over one container. `weft lab supervise` runs
//! the container's process as its child (inside the pod's namespace, with
//! the container's owner tag and log) and, when the process ends on its
//! own — it exits, fails to bind its port, is killed by anything but the
//! lab — records that in the pod's status as a kubelet would (in the lab's
//! store or on the API server: [`crate::pod_status`]), then follows
//! the pod's `restartPolicy` (Always, the default; OnFailure; Never):
//! - restarted: the ended run becomes `lastState`, the restart count goes
//!   up, and between crashes it waits as the kubelet does (the first
//!   restart at once, then 10 s doubling up to 5 min, from the start again
//!   after a run of 10 min), the container `waiting` in `CrashLoopBackOff`
//!   meanwhile, not ready;
//! - not restarted: the container `terminated` with its exit code or
//!   signal and a reason, the pod's phase Succeeded/Failed once every
//!   container has ended.
//!
//! Either way the pod is not Ready while a container is down, and the
//! EndpointSlices are re-synced, so it stops (and starts again) being a
//! ready endpoint. When the lab stops the pod, it signals the supervisor
//! with the container (both carry the owner tag), and nothing is recorded.
//!
//! Its probes ([`crate::container_probes`]) run beside each run of the
//! process: a failing liveness or startup probe has it stopped (SIGTERM,
//! SIGKILL after the pod's grace period) and handled as an ended run; the
//! readiness probe sets the container's `ready` (and through it the pod's
//! Ready condition and its endpoints).

use std::net::IpAddr;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, ExitStatus};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use k8s_openapi::api::core::v1::{
    ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStateWaiting,
    ContainerStatus, Pod, PodCondition,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::container_probes::{self, Probes, Verdict};
use crate::pod_status::PodStatusStore;

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

/// A pod's `restartPolicy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartPolicy {
    Always,
    OnFailure,
    Never,
}

impl RestartPolicy {
    /// The policy named `text` (as the API spells it; empty is Always).
    pub fn parse(text: &str) -> Result<RestartPolicy, String> {
        match text {
            "" | "Always" => Ok(RestartPolicy::Always),
            "OnFailure" => Ok(RestartPolicy::OnFailure),
            "Never" => Ok(RestartPolicy::Never),
            other => Err(format!(
                "{other:?} is not a restartPolicy (Always, OnFailure, Never)"
            )),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            RestartPolicy::Always => "Always",
            RestartPolicy::OnFailure => "OnFailure",
            RestartPolicy::Never => "Never",
        }
    }

    fn restarts_after(self, ended: &Ended) -> bool {
        match self {
            RestartPolicy::Always => true,
            RestartPolicy::OnFailure => ended.exit_code != 0,
            RestartPolicy::Never => false,
        }
    }
}

/// The kubelet's crash-loop back-off: the wait before restart number
/// `streak + 1` of a container that keeps ending.
pub fn back_off(streak: u32) -> Duration {
    const FIRST: Duration = Duration::from_secs(10);
    const LONGEST: Duration = Duration::from_secs(300);
    match streak {
        0 => Duration::ZERO,
        n => FIRST
            .checked_mul(1 << (n - 1).min(16))
            .map_or(LONGEST, |d| d.min(LONGEST)),
    }
}

/// A run this long ends a crash streak: the next restart is immediate.
const STREAK_RESET: Duration = Duration::from_secs(600);

/// How the container is run besides its command.
#[derive(Debug, Clone)]
pub struct Lifecycle {
    pub restart_policy: RestartPolicy,
    pub probes: Probes,
    /// The pod's address, which the probes connect to.
    pub pod_ip: IpAddr,
    /// From a stop request (a failed probe) to SIGKILL.
    pub grace: Duration,
}

/// Runs `program args`, probing each run and restarting it as the policy
/// says, recording each end and restart; returns the exit code the
/// supervisor itself should end with (the last run's), once the policy
/// stops or the pod is gone.
pub fn run(
    container: &Container,
    status: Arc<dyn PodStatusStore>,
    lifecycle: &Lifecycle,
    program: &Path,
    args: &[String],
) -> Result<i32> {
    let mut restarts = 0;
    let mut streak = 0;
    loop {
        let started = Instant::now();
        let ended = run_once(container, &status, lifecycle, program, args, restarts)?;
        if !lifecycle.restart_policy.restarts_after(&ended) {
            status.update(&mut |pod, at| mark_ended(pod, &container.name, &ended, at))?;
            return Ok(ended.exit_code);
        }
        if started.elapsed() >= STREAK_RESET {
            streak = 0;
        }
        let wait = back_off(streak);
        streak += 1;
        restarts += 1;
        let ours = status
            .update(&mut |pod, at| mark_backing_off(pod, &container.name, &ended, wait, at))?;
        if !ours {
            return Ok(ended.exit_code);
        }
        std::thread::sleep(wait);
    }
}

/// One run of the process with its probes; a restart (`restarts` > 0) is
/// recorded once it started.
fn run_once(
    container: &Container,
    status: &Arc<dyn PodStatusStore>,
    lifecycle: &Lifecycle,
    program: &Path,
    args: &[String],
    restarts: i32,
) -> Result<Ended> {
    let child = Command::new(program)
        .args(args)
        .spawn()
        .with_context(|| format!("starting {}", program.display()));
    let mut child = match child {
        Ok(child) => child,
        Err(e) => {
            return Ok(Ended {
                exit_code: 128,
                signal: None,
                reason: "StartError",
                message: Some(format!("{e:#}")),
            })
        }
    };
    if restarts > 0 {
        let id = format!("weft://{}", child.id());
        let ready = lifecycle.probes.ready_at_start();
        status.update(&mut |pod, at| {
            mark_restarted(pod, &container.name, restarts, &id, ready, at)
        })?;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let prober = (!lifecycle.probes.is_empty()).then(|| {
        let act = ProbeVerdicts {
            name: container.name.clone(),
            status: status.clone(),
            pid: child.id(),
            grace: lifecycle.grace,
            ended: stop.clone(),
        };
        container_probes::watch(
            lifecycle.probes.clone(),
            lifecycle.pod_ip,
            stop.clone(),
            move |verdict| act.take(verdict),
        )
    });
    let status = child.wait().context("waiting for the container");
    stop.store(true, Ordering::Relaxed);
    if let Some(prober) = prober {
        let _ = prober.join();
    }
    Ok(Ended::from_status(status?))
}

/// What the supervisor does with its probes' verdicts.
struct ProbeVerdicts {
    name: String,
    status: Arc<dyn PodStatusStore>,
    pid: u32,
    grace: Duration,
    /// Set once the process has ended (and may have been reaped).
    ended: Arc<AtomicBool>,
}

impl ProbeVerdicts {
    fn take(&self, verdict: Verdict) {
        let name = &self.name;
        match verdict {
            Verdict::Ready(ready) => {
                let change = &mut |pod: &mut Pod, at| mark_ready(pod, name, ready, at);
                if let Err(e) = self.status.update(change) {
                    eprintln!("weft lab supervise: recording readiness: {e:#}");
                }
            }
            Verdict::Kill(why) => {
                // In the container's log, where `weft lab logs` shows it.
                eprintln!(
                    "{why}; container {name} will be restarted as its pod's restartPolicy says"
                );
                self.stop();
            }
        }
    }

    /// SIGTERM, then SIGKILL after the grace period unless it ended.
    fn stop(&self) {
        let pid = Pid::from_raw(i32::try_from(self.pid).unwrap_or(i32::MAX));
        let _ = kill(pid, Signal::SIGTERM);
        let deadline = Instant::now() + self.grace;
        while Instant::now() < deadline {
            if self.ended.load(Ordering::Relaxed) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        if !self.ended.load(Ordering::Relaxed) {
            let _ = kill(pid, Signal::SIGKILL);
        }
    }
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

/// The container's status after a run that will be restarted: the run as
/// `lastState`, the container waiting (`CrashLoopBackOff` when the
/// restart is `wait` away) and not ready, the pod not Ready.
pub fn mark_backing_off(
    pod: &mut Pod,
    name: &str,
    ended: &Ended,
    wait: Duration,
    at: Time,
) -> bool {
    let pod_name = pod.metadata.name.clone().unwrap_or_default();
    let Some(cs) = container_status(pod, name) else {
        return false;
    };
    cs.last_state = Some(terminated_state(cs, ended, at.clone()));
    cs.state = Some(ContainerState {
        waiting: Some(ContainerStateWaiting {
            reason: Some(
                if wait.is_zero() {
                    "Restarting"
                } else {
                    "CrashLoopBackOff"
                }
                .into(),
            ),
            message: Some(format!(
                "back-off {}s restarting failed container={name} pod={pod_name}",
                wait.as_secs(),
            )),
        }),
        ..Default::default()
    });
    cs.ready = false;
    cs.started = Some(false);
    set_ready(pod, Some(name), at);
    true
}

/// The container's status once restarted: running again (as process
/// `id`), its restart count `restarts`, ready; the pod Ready again if all
/// its containers are.
pub fn mark_restarted(
    pod: &mut Pod,
    name: &str,
    restarts: i32,
    id: &str,
    ready: bool,
    at: Time,
) -> bool {
    let Some(cs) = container_status(pod, name) else {
        return false;
    };
    cs.state = Some(ContainerState {
        running: Some(ContainerStateRunning {
            started_at: Some(at.clone()),
        }),
        ..Default::default()
    });
    cs.restart_count = restarts;
    cs.container_id = Some(id.into());
    cs.ready = ready;
    cs.started = Some(true);
    settle_ready(pod, at);
    true
}

/// Container `name` ready or not (as its readiness probe says), and the
/// pod's Ready condition with it; whether anything changed.
pub fn mark_ready(pod: &mut Pod, name: &str, ready: bool, at: Time) -> bool {
    let Some(cs) = container_status(pod, name) else {
        return false;
    };
    let running = cs.state.as_ref().is_some_and(|s| s.running.is_some());
    if cs.ready == ready || !running {
        return false;
    }
    cs.ready = ready;
    settle_ready(pod, at);
    true
}

/// The pod's Ready condition from its containers' `ready`.
fn settle_ready(pod: &mut Pod, at: Time) {
    let unready = pod
        .status
        .iter()
        .flat_map(|s| s.container_statuses.iter().flatten())
        .find(|c| !c.ready)
        .map(|c| c.name.clone());
    set_ready(pod, unready.as_deref(), at);
}

fn container_status<'a>(pod: &'a mut Pod, name: &str) -> Option<&'a mut ContainerStatus> {
    pod.status
        .as_mut()?
        .container_statuses
        .as_mut()?
        .iter_mut()
        .find(|c| c.name == name)
}

/// `ended` as a terminated state of `cs`'s current run.
fn terminated_state(cs: &ContainerStatus, ended: &Ended, at: Time) -> ContainerState {
    let started_at = cs
        .state
        .as_ref()
        .and_then(|s| s.running.as_ref())
        .and_then(|r| r.started_at.clone());
    ContainerState {
        terminated: Some(ContainerStateTerminated {
            exit_code: ended.exit_code,
            signal: ended.signal,
            reason: Some(ended.reason.into()),
            message: ended.message.clone(),
            started_at,
            finished_at: Some(at),
            container_id: cs.container_id.clone(),
        }),
        ..Default::default()
    }
}

/// The pod's Ready and ContainersReady conditions: True, or False because
/// of container `unready`.
fn set_ready(pod: &mut Pod, unready: Option<&str>, at: Time) {
    let Some(status) = pod.status.as_mut() else {
        return;
    };
    let conditions = status.conditions.get_or_insert_with(Vec::new);
    for type_ in ["Ready", "ContainersReady"] {
        conditions.retain(|c| c.type_ != type_);
        conditions.push(PodCondition {
            type_: type_.into(),
            status: if unready.is_some() { "False" } else { "True" }.into(),
            reason: unready.map(|_| "ContainersNotReady".into()),
            message: unready.map(|name| format!("containers with unready status: [{name}]")),
            last_transition_time: Some(at.clone()),
            ..Default::default()
        });
    }
}

/// The pod's status with container `name` ended: the container terminated
/// and not ready, the pod's Ready and ContainersReady conditions False,
/// and its phase Succeeded (every container completed), Failed (every
/// container ended, one with an error) or still Running. Returns whether
/// anything changed.
pub fn mark_ended(pod: &mut Pod, name: &str, ended: &Ended, at: Time) -> bool {
    let Some(cs) = container_status(pod, name) else {
        return false;
    };
    if cs.state.as_ref().is_some_and(|s| s.terminated.is_some()) {
        return false;
    }
    cs.state = Some(terminated_state(cs, ended, at.clone()));
    cs.ready = false;
    cs.started = Some(false);
    let Some(status) = pod.status.as_mut() else {
        return false;
    };
    let statuses = status.container_statuses.as_deref().unwrap_or_default();
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
    set_ready(pod, Some(name), at);
    true
}

fn exit_code(c: &ContainerStatus) -> Option<i32> {
    c.state.as_ref()?.terminated.as_ref().map(|t| t.exit_code)
}

/// What `get pods` shows in STATUS, as kubectl: a waiting container's
/// reason (CrashLoopBackOff), else the reason of an ended container
/// (Error, Completed, StartError), else the phase.
pub fn display_status(pod: &Pod) -> String {
    let status = pod.status.clone().unwrap_or_default();
    let containers = status.container_statuses.clone().unwrap_or_default();
    let waiting = containers
        .iter()
        .filter_map(|c| c.state.as_ref()?.waiting.as_ref()?.reason.clone())
        .next();
    let ended = || {
        containers
            .iter()
            .filter_map(|c| c.state.as_ref()?.terminated.as_ref()?.reason.clone())
            .find(|r| r != "Completed")
    };
    waiting
        .or_else(ended)
        .or_else(|| (status.phase.as_deref() == Some("Succeeded")).then(|| "Completed".to_string()))
        .or(status.phase)
        .unwrap_or_default()
}

/// The RESTARTS column: the restarts of all the pod's containers.
pub fn restarts(pod: &Pod) -> i32 {
    pod.status
        .iter()
        .flat_map(|s| s.container_statuses.iter().flatten())
        .map(|c| c.restart_count)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::endpointslices;
    use crate::objects::now;
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
    fn a_restarted_container_keeps_its_last_run_and_backs_off_between_crashes() {
        let mut pod = running_pod();
        let wait = back_off(1);
        assert!(mark_backing_off(&mut pod, "a", &ended(3), wait, now()));
        assert!(!endpointslices::containers_ready(&pod));
        assert_eq!(display_status(&pod), "CrashLoopBackOff");
        let a = pod
            .status
            .as_ref()
            .unwrap()
            .container_statuses
            .as_ref()
            .unwrap()[0]
            .clone();
        let last = a.last_state.unwrap().terminated.unwrap();
        assert_eq!(
            (last.exit_code, last.container_id.as_deref()),
            (3, Some("weft://1"))
        );
        assert!(a
            .state
            .unwrap()
            .waiting
            .unwrap()
            .message
            .unwrap()
            .contains("back-off 10s"));
        assert_eq!(
            pod.status.as_ref().unwrap().phase.as_deref(),
            Some("Running")
        );

        assert!(mark_restarted(&mut pod, "a", 1, "weft://7", true, now()));
        assert!(endpointslices::containers_ready(&pod));
        assert_eq!(display_status(&pod), "Running");
        assert_eq!(restarts(&pod), 1);
        let a = &pod
            .status
            .as_ref()
            .unwrap()
            .container_statuses
            .as_ref()
            .unwrap()[0];
        assert_eq!(a.container_id.as_deref(), Some("weft://7"));
        assert!(a.last_state.is_some(), "the last run stays");
    }

    #[test]
    fn readiness_moves_the_pods_ready_condition_and_endpoints() {
        let mut pod = running_pod();
        assert!(mark_ready(&mut pod, "b", false, now()));
        assert!(!endpointslices::containers_ready(&pod));
        assert!(!mark_ready(&mut pod, "b", false, now()), "no change");
        assert!(mark_ready(&mut pod, "b", true, now()));
        assert!(endpointslices::containers_ready(&pod));
        mark_ended(&mut pod, "a", &ended(1), now());
        assert!(
            !mark_ready(&mut pod, "a", true, now()),
            "an ended container is not ready"
        );
    }

    #[test]
    fn the_back_off_doubles_from_10s_to_5min_after_an_immediate_restart() {
        let waits: Vec<u64> = (0..8).map(|n| back_off(n).as_secs()).collect();
        assert_eq!(waits, [0, 10, 20, 40, 80, 160, 300, 300]);
        assert_eq!(back_off(u32::MAX).as_secs(), 300);
    }

    #[test]
    fn restart_policies_decide_by_the_exit_code() {
        let policy = |text| RestartPolicy::parse(text).unwrap();
        assert!(policy("").restarts_after(&ended(0)));
        assert!(policy("Always").restarts_after(&ended(0)));
        assert!(policy("OnFailure").restarts_after(&ended(1)));
        assert!(!policy("OnFailure").restarts_after(&ended(0)));
        assert!(!policy("Never").restarts_after(&ended(1)));
        assert!(RestartPolicy::parse("Sometimes").is_err());
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
