//! The kubelet's container probes for the lab's supervisor: a container's
//! `startupProbe`, `livenessProbe` and `readinessProbe`, each an `exec`
//! command, an `httpGet` (a 2xx or 3xx answer succeeds) or a `tcpSocket`
//! connect, with Kubernetes' timing fields and defaults
//! (`initialDelaySeconds` 0, `periodSeconds` 10, `timeoutSeconds` 1,
//! `successThreshold` 1, `failureThreshold` 3).
//!
//! As the kubelet: until the startup probe succeeds the others wait; the
//! liveness probe (or the startup probe) failing `failureThreshold` times
//! in a row has the container killed; the readiness probe decides whether
//! it is ready (not ready until it first succeeds). Without a readiness
//! probe a started container is ready.
//!
//! It owns the probing thread of one container run and the probes' short
//! exchanges, made from the pod's network namespace (the supervisor's). It
//! must not touch the store or the container's process: it reports
//! [`Verdict`]s and the supervisor acts on them.

use std::net::{IpAddr, SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Container, Probe as ProbeSpec};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// How often the thread looks at its stop flag and the probes' schedules.
const TICK: Duration = Duration::from_millis(50);

/// What a probe checks.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Action {
    Exec(Vec<String>),
    Http { port: u16, path: String },
    Tcp { port: u16 },
}

/// One probe with its timing.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Probe {
    action: Action,
    initial_delay: Duration,
    period: Duration,
    timeout: Duration,
    success_threshold: u32,
    failure_threshold: u32,
}

/// A container's probes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Probes {
    startup: Option<Probe>,
    liveness: Option<Probe>,
    readiness: Option<Probe>,
}

impl Probes {
    /// The probes of `container` (named ports resolved against its ports);
    /// an error names the field and what is wrong.
    pub fn of(container: &Container) -> Result<Probes, String> {
        let probe = |field: &str, spec: &Option<ProbeSpec>| {
            spec.as_ref()
                .map(|spec| Probe::of(spec, container).map_err(|e| format!("{field}: {e}")))
                .transpose()
        };
        Ok(Probes {
            startup: probe("startupProbe", &container.startup_probe)?,
            liveness: probe("livenessProbe", &container.liveness_probe)?,
            readiness: probe("readinessProbe", &container.readiness_probe)?,
        })
    }

    /// Whether a container that just started is ready before any probe ran.
    pub fn ready_at_start(&self) -> bool {
        self.startup.is_none() && self.readiness.is_none()
    }

    pub fn is_empty(&self) -> bool {
        self == &Probes::default()
    }
}

impl Probe {
    fn of(spec: &ProbeSpec, container: &Container) -> Result<Probe, String> {
        let seconds = |value: Option<i32>, default: i32, least: i32, field: &str| {
            let value = value.unwrap_or(default);
            if value < least {
                return Err(format!("{field} must be at least {least}, not {value}"));
            }
            Ok(u64::try_from(value).unwrap_or(0))
        };
        let handlers = [
            spec.exec.is_some(),
            spec.http_get.is_some(),
            spec.tcp_socket.is_some(),
        ];
        let action = match handlers.iter().filter(|h| **h).count() {
            1 => action(spec, container)?,
            0 => {
                return Err(
                    "needs one of exec, httpGet or tcpSocket (grpc is not supported)".into(),
                )
            }
            _ => return Err("may have only one of exec, httpGet and tcpSocket".into()),
        };
        Ok(Probe {
            action,
            initial_delay: Duration::from_secs(seconds(
                spec.initial_delay_seconds,
                0,
                0,
                "initialDelaySeconds",
            )?),
            period: Duration::from_secs(seconds(spec.period_seconds, 10, 1, "periodSeconds")?),
            timeout: Duration::from_secs(seconds(spec.timeout_seconds, 1, 1, "timeoutSeconds")?),
            success_threshold: seconds(spec.success_threshold, 1, 1, "successThreshold")? as u32,
            failure_threshold: seconds(spec.failure_threshold, 3, 1, "failureThreshold")? as u32,
        })
    }
}

fn action(spec: &ProbeSpec, container: &Container) -> Result<Action, String> {
    if let Some(exec) = &spec.exec {
        let command = exec.command.clone().unwrap_or_default();
        if command.is_empty() {
            return Err("exec.command is empty".into());
        }
        return Ok(Action::Exec(command));
    }
    if let Some(http) = &spec.http_get {
        if http.host.as_deref().is_some_and(|h| !h.is_empty()) {
            return Err("httpGet.host is not supported: the pod's own address is probed".into());
        }
        if http.scheme.as_deref().is_some_and(|s| s != "HTTP") {
            return Err("httpGet.scheme: only HTTP is supported".into());
        }
        let path = http.path.clone().unwrap_or_else(|| "/".into());
        if !path.starts_with('/')
            || path
                .bytes()
                .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
        {
            return Err(format!(
                "httpGet.path {path:?} must start with / and hold no spaces"
            ));
        }
        let port = port(&http.port, container).map_err(|e| format!("httpGet.port: {e}"))?;
        return Ok(Action::Http { port, path });
    }
    let tcp = spec.tcp_socket.as_ref().ok_or("no handler")?;
    let port = port(&tcp.port, container).map_err(|e| format!("tcpSocket.port: {e}"))?;
    Ok(Action::Tcp { port })
}

/// A probe's port: a number, or the name of one of the container's ports.
fn port(port: &IntOrString, container: &Container) -> Result<u16, String> {
    match port {
        IntOrString::Int(n) => u16::try_from(*n)
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| format!("{n} is not a port (1-65535)")),
        IntOrString::String(name) => container
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(name.as_str()))
            .and_then(|p| u16::try_from(p.container_port).ok())
            .ok_or_else(|| format!("the container has no port named {name:?}")),
    }
}

/// What the probes tell the supervisor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The container became ready or not ready.
    Ready(bool),
    /// The container must be killed (and restarted as its policy says).
    Kill(String),
}

/// Consecutive results of one probe, as the kubelet counts them.
#[derive(Debug, Default)]
struct Tally {
    successes: u32,
    failures: u32,
    /// The last state the thresholds settled on (`None`: none yet).
    state: Option<bool>,
}

impl Tally {
    /// Counts one result; the new state once a threshold is reached.
    fn count(&mut self, ok: bool, probe: &Probe) -> Option<bool> {
        if ok {
            self.successes += 1;
            self.failures = 0;
        } else {
            self.failures += 1;
            self.successes = 0;
        }
        let settled = if self.successes >= probe.success_threshold {
            Some(true)
        } else if self.failures >= probe.failure_threshold {
            Some(false)
        } else {
            None
        };
        match settled {
            Some(state) if self.state != Some(state) => {
                self.state = Some(state);
                Some(state)
            }
            _ => None,
        }
    }
}

/// One probe's schedule and tally while the thread runs.
struct Running<'a> {
    probe: &'a Probe,
    due: Instant,
    tally: Tally,
}

impl<'a> Running<'a> {
    fn new(probe: &'a Probe, from: Instant) -> Self {
        Running {
            probe,
            due: from + probe.initial_delay,
            tally: Tally::default(),
        }
    }

    /// Runs the probe if it is due; the state it settled on, if it changed.
    fn step(&mut self, target: IpAddr, now: Instant) -> Option<(bool, String)> {
        if now < self.due {
            return None;
        }
        self.due = now + self.probe.period;
        let outcome = attempt(&self.probe.action, target, self.probe.timeout);
        let ok = outcome.is_ok();
        self.tally
            .count(ok, self.probe)
            .map(|state| (state, outcome.err().unwrap_or_default()))
    }
}

/// Probes a container run until `stop` is set (its process ended):
/// `target` is the pod's address; every verdict goes to `report`.
pub fn watch(
    probes: Probes,
    target: IpAddr,
    stop: Arc<AtomicBool>,
    mut report: impl FnMut(Verdict) + Send + 'static,
) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let started = Instant::now();
        let mut startup = probes.startup.as_ref().map(|p| Running::new(p, started));
        let mut liveness: Option<Running> = None;
        let mut readiness: Option<Running> = None;
        let mut probing = startup.is_none();
        if probing {
            liveness = probes.liveness.as_ref().map(|p| Running::new(p, started));
            readiness = probes.readiness.as_ref().map(|p| Running::new(p, started));
            if readiness.is_none() {
                report(Verdict::Ready(true));
            }
        }
        while !stop.load(Ordering::Relaxed) {
            let now = Instant::now();
            if !probing {
                match startup.as_mut().and_then(|s| s.step(target, now)) {
                    Some((true, _)) => {
                        probing = true;
                        liveness = probes.liveness.as_ref().map(|p| Running::new(p, now));
                        readiness = probes.readiness.as_ref().map(|p| Running::new(p, now));
                        if readiness.is_none() {
                            report(Verdict::Ready(true));
                        }
                    }
                    Some((false, why)) => {
                        report(Verdict::Kill(format!("Startup probe failed: {why}")));
                        return;
                    }
                    None => {}
                }
            }
            if let Some((false, why)) = liveness.as_mut().and_then(|l| l.step(target, now)) {
                report(Verdict::Kill(format!("Liveness probe failed: {why}")));
                return;
            }
            if let Some((ready, _)) = readiness.as_mut().and_then(|r| r.step(target, now)) {
                report(Verdict::Ready(ready));
            }
            std::thread::sleep(TICK);
        }
    })
}

/// One probe exchange: `Ok` on success, else why it failed.
fn attempt(action: &Action, target: IpAddr, timeout: Duration) -> Result<(), String> {
    match action {
        Action::Exec(command) => exec(command, timeout),
        Action::Tcp { port } => {
            let to = SocketAddr::new(target, *port);
            TcpStream::connect_timeout(&to, timeout)
                .map(drop)
                .map_err(|e| format!("dial tcp {to}: {e}"))
        }
        Action::Http { port, path } => {
            let to = SocketAddr::new(target, *port);
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_io()
                .enable_time()
                .build()
                .map_err(|e| format!("cannot start the probe runtime: {e}"))?;
            match runtime.block_on(crate::probe::http_get(to, path, timeout)) {
                Ok((status, _)) if (200..400).contains(&status) => Ok(()),
                Ok((status, _)) => Err(format!("HTTP probe failed with statuscode: {status}")),
                Err(e) => Err(e.to_string()),
            }
        }
    }
}

/// Runs `command` (in the container's context: the pod's namespace) and
/// waits up to `timeout`; exit 0 succeeds.
fn exec(command: &[String], timeout: Duration) -> Result<(), String> {
    let (program, args) = command.split_first().ok_or("empty command")?;
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("running {program}: {e}"))?;
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) if status.success() => return Ok(()),
            Ok(Some(status)) => return Err(format!("command {command:?} ended with {status}")),
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("command {command:?} timed out after {timeout:?}"));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => return Err(format!("waiting for {program}: {e}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::sync::Mutex;

    fn container(probes: serde_json::Value) -> Container {
        let mut spec =
            json!({"name": "c", "image": "x", "ports": [{"name": "http", "containerPort": 8080}]});
        spec.as_object_mut()
            .unwrap()
            .extend(probes.as_object().unwrap().clone());
        serde_json::from_value(spec).unwrap()
    }

    #[test]
    fn probes_take_kubernetes_defaults_and_resolve_named_ports() {
        let probes = Probes::of(&container(json!({
            "readinessProbe": {"httpGet": {"port": "http", "path": "/healthz"}},
            "livenessProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 2, "failureThreshold": 1},
        })))
        .unwrap();
        let readiness = probes.readiness.as_ref().unwrap();
        assert_eq!(
            readiness.action,
            Action::Http {
                port: 8080,
                path: "/healthz".into()
            }
        );
        assert_eq!(
            (
                readiness.period,
                readiness.timeout,
                readiness.success_threshold,
                readiness.failure_threshold
            ),
            (Duration::from_secs(10), Duration::from_secs(1), 1, 3)
        );
        assert_eq!(probes.liveness.as_ref().unwrap().failure_threshold, 1);
        assert!(!probes.ready_at_start());
        assert!(Probes::of(&container(json!({}))).unwrap().ready_at_start());
    }

    #[test]
    fn bad_probes_say_which_field_is_wrong() {
        for (probe, wanted) in [
            (
                json!({"readinessProbe": {}}),
                "readinessProbe: needs one of",
            ),
            (
                json!({"livenessProbe": {"tcpSocket": {"port": "nope"}}}),
                "no port named \"nope\"",
            ),
            (
                json!({"livenessProbe": {"tcpSocket": {"port": 0}}}),
                "0 is not a port",
            ),
            (
                json!({"startupProbe": {"exec": {"command": []}}}),
                "exec.command is empty",
            ),
            (
                json!({"readinessProbe": {"httpGet": {"port": 80, "host": "198.51.100.1"}}}),
                "host is not supported",
            ),
            (
                json!({"readinessProbe": {"tcpSocket": {"port": 80}, "periodSeconds": 0}}),
                "periodSeconds must be at least 1",
            ),
        ] {
            let e = Probes::of(&container(probe)).unwrap_err();
            assert!(e.contains(wanted), "{e}");
        }
    }

    #[test]
    fn thresholds_settle_the_state_once_per_change() {
        let probe = Probe {
            action: Action::Tcp { port: 1 },
            initial_delay: Duration::ZERO,
            period: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            success_threshold: 2,
            failure_threshold: 3,
        };
        let mut tally = Tally::default();
        let results: Vec<Option<bool>> = [true, true, true, false, false, false, false, true, true]
            .iter()
            .map(|ok| tally.count(*ok, &probe))
            .collect();
        assert_eq!(
            results,
            [
                None,
                Some(true),
                None,
                None,
                None,
                Some(false),
                None,
                None,
                Some(true)
            ]
        );
    }

    /// Probes `probes` against 127.0.0.1: the verdicts so far, the stop
    /// flag, the thread.
    fn watched(probes: Probes) -> (Arc<Mutex<Vec<Verdict>>>, Arc<AtomicBool>, JoinHandle<()>) {
        let verdicts = Arc::new(Mutex::new(Vec::new()));
        let seen = verdicts.clone();
        let stop = Arc::new(AtomicBool::new(false));
        let thread = watch(
            probes,
            "127.0.0.1".parse().unwrap(),
            stop.clone(),
            move |v| seen.lock().unwrap().push(v),
        );
        (verdicts, stop, thread)
    }

    #[test]
    fn a_failing_liveness_probe_asks_for_a_kill_and_readiness_follows_its_probe() {
        let probes = Probes::of(&container(json!({
            "readinessProbe": {"exec": {"command": ["true"]}, "periodSeconds": 1},
            "livenessProbe": {"exec": {"command": ["false"]}, "periodSeconds": 1, "failureThreshold": 2},
        })))
        .unwrap();
        let (verdicts, _stop, thread) = watched(probes);
        thread.join().unwrap();
        let verdicts = verdicts.lock().unwrap().clone();
        assert_eq!(verdicts[0], Verdict::Ready(true));
        assert!(
            matches!(&verdicts[1], Verdict::Kill(why) if why.starts_with("Liveness probe failed: command")),
            "{verdicts:?}"
        );
    }

    #[test]
    fn a_startup_probe_holds_the_others_back_until_it_succeeds() {
        let probes = Probes::of(&container(json!({
            "startupProbe": {"exec": {"command": ["true"]}, "initialDelaySeconds": 1},
        })))
        .unwrap();
        let (verdicts, stop, thread) = watched(probes);
        std::thread::sleep(Duration::from_millis(500));
        assert!(
            verdicts.lock().unwrap().is_empty(),
            "ready before the startup probe"
        );
        std::thread::sleep(Duration::from_millis(800));
        assert_eq!(*verdicts.lock().unwrap(), [Verdict::Ready(true)]);
        stop.store(true, Ordering::Relaxed);
        thread.join().unwrap();
    }
}
