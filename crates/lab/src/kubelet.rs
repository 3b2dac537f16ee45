//! The lab's kubelet: runs a Pod on a node. Its network namespace is wired
//! by invoking weft-cni exactly as a container runtime does (the node's
//! conflist, the CNI environment, the result cached for DEL); each
//! container is a process inside that namespace — its command if it has
//! one, otherwise weft's built-in netexec server on its declared ports.
//! Pod status is filled the way Kubernetes fills it.
//!
//! It owns the pod's sandbox on its node, not the pod object: the caller
//! chose the node and the UID (the API server's and the scheduler's part)
//! and keeps the object wherever the cluster keeps it (`persist`), so one
//! kubelet serves the lab's store and a kube-apiserver alike.

use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use k8s_openapi::api::core::v1::{
    Container, ContainerState, ContainerStateRunning, ContainerStatus, EnvVar, Pod, PodCondition,
    PodIP, PodSpec, PodStatus,
};
use serde_json::{json, Map, Value};
use weft_cni::conflist::Conflist;
use weft_cni::invoke::Call;
use weft_datapath::{netns, NetNs};

use crate::container_probes::Probes;
use crate::layout::{LabState, Layout, NodeRecord};
use crate::objects::{key, now};
use crate::procs;

/// What the kubelet needs to run pods.
pub struct Kubelet<'a> {
    pub layout: &'a Layout,
    /// The `weft` binary (for netexec) and the CNI plugin.
    pub weft: PathBuf,
    pub plugin: PathBuf,
    /// Where the supervisors keep pod status: this kubeconfig's API
    /// server, or (`None`) the lab's store.
    pub kubeconfig: Option<PathBuf>,
}

fn owner(layout: &Layout, namespace: &str, pod: &str, container: &str) -> String {
    format!("{}{container}", pod_owner_prefix(layout, namespace, pod))
}

/// The owner tag every container of a pod starts with.
pub(crate) fn pod_owner_prefix(layout: &Layout, namespace: &str, pod: &str) -> String {
    format!("{}/pod/{namespace}/{pod}/", layout.lab)
}

/// The network namespace `pod` runs in: its node's for hostNetwork pods,
/// else its own, named after its UID.
pub fn netns_of(layout: &Layout, pod: &Pod) -> Result<PathBuf> {
    let spec = pod.spec.as_ref().context("the pod has no spec")?;
    if spec.host_network.unwrap_or(false) {
        let node = spec
            .node_name
            .as_deref()
            .context("the pod runs on no node")?;
        return Ok(netns::named_path(&layout.node_ns(node)));
    }
    let uid = pod.metadata.uid.as_deref().context("the pod has no UID")?;
    Ok(netns::named_path(&layout.pod_ns(uid)))
}

/// How long containers get to stop after SIGTERM when the lab itself
/// ends them (a failed start, `weft lab delete` after its grace period).
pub const STOP_GRACE: Duration = Duration::from_secs(2);

/// What a pod holds on its node while it runs: its containers, its
/// network namespace and CNI attachment (unless hostNetwork), its files.
struct Sandbox<'a> {
    namespace: &'a str,
    name: &'a str,
    uid: &'a str,
    /// The node whose CNI configuration wired it; `None` for hostNetwork
    /// pods and for pods whose node is gone.
    cni_node: Option<&'a str>,
}

impl Kubelet<'_> {
    /// Starts `pod` (its UID already given) on `node`, then has
    /// `persist` keep it with its status. If any step fails, `persist`
    /// included, everything done so far is undone (containers, CNI
    /// attachment, namespace, files).
    pub fn run(
        &self,
        node: &NodeRecord,
        pod: Pod,
        persist: impl FnOnce(&Pod) -> Result<()>,
    ) -> Result<Pod> {
        let (namespace, name) = key(&pod);
        let uid = pod.metadata.uid.clone().context("the pod has no UID")?;
        let spec = pod.spec.clone().context("the pod has no spec")?;
        let host_network = spec.host_network.unwrap_or(false);
        let sandbox = Sandbox {
            namespace: &namespace,
            name: &name,
            uid: &uid,
            cni_node: (!host_network).then_some(node.name.as_str()),
        };
        self.start(&sandbox, node, pod)
            .and_then(|pod| persist(&pod).map(|()| pod))
            .map_err(|e| match self.tear_down(&sandbox, STOP_GRACE) {
                Ok(()) => e,
                Err(undo) => e.context(format!("undoing the failed start also failed: {undo:#}")),
            })
    }

    fn start(&self, sandbox: &Sandbox, node: &NodeRecord, mut pod: Pod) -> Result<Pod> {
        let (namespace, name, uid) = (sandbox.namespace, sandbox.name, sandbox.uid);
        let spec = pod.spec.clone().context("the pod has no spec")?;
        let pod_dir = self.layout.pod_dir(namespace, name)?;
        std::fs::create_dir_all(&pod_dir)?;
        let node_ns = NetNs::open(netns::named_path(&self.layout.node_ns(&node.name)))?;
        let (netns_path, ips) = match sandbox.cni_node {
            None => (
                netns::named_path(&self.layout.node_ns(&node.name)),
                vec![IpAddr::V4(node.ip)],
            ),
            Some(_) => {
                let ns_name = self.layout.pod_ns(uid);
                netns::create_named(&ns_name)?;
                let path = netns::named_path(&ns_name);
                let result = self.cni(&node.name, &node_ns, "ADD", uid, &path, namespace, name)?;
                std::fs::write(pod_dir.join("cni-result.json"), result.to_string())?;
                (path, result_ips(&result))
            }
        };
        let pod_ns = NetNs::open(&netns_path)?;
        let pod_ip = ips.first().copied().unwrap_or(IpAddr::from([127, 0, 0, 1]));
        let mut statuses = Vec::new();
        for c in &spec.containers {
            let (program, args) = self.command_of(c, name);
            let starting = || format!("starting container {} ({})", c.name, program.display());
            let program = resolve(&program).with_context(starting)?;
            let probes = Probes::of(c)
                .map_err(|e| anyhow::anyhow!("container {}: {e}; fix the probe", c.name))?;
            let mut supervised = self.supervise_args(sandbox, &c.name, &spec);
            if !probes.is_empty() {
                supervised.extend(["--pod-ip".into(), pod_ip.to_string()]);
                supervised.extend(["--probes".into(), probe_spec(c)?]);
            }
            supervised.push("--".into());
            supervised.push(program.display().to_string());
            supervised.extend(args);
            let log = pod_dir.join(format!("{}.log", c.name));
            let pid = procs::spawn(
                Some(&pod_ns),
                &self.weft,
                &supervised,
                &owner(self.layout, namespace, name, &c.name),
                &log,
            )
            .with_context(starting)?;
            statuses.push(running_status(c, pid, probes.ready_at_start()));
        }
        let all_ready = statuses.iter().all(|c| c.ready);
        wait_for_ports(&pod_ns, &spec.containers);

        pod.metadata.namespace = Some(namespace.into());
        if let Some(s) = pod.spec.as_mut() {
            s.node_name = Some(node.name.clone());
        }
        pod.status = Some(PodStatus {
            phase: Some("Running".into()),
            host_ip: Some(node.ip.to_string()),
            pod_ip: ips.first().map(|ip| ip.to_string()),
            pod_ips: Some(ips.iter().map(|ip| PodIP { ip: ip.to_string() }).collect()),
            start_time: Some(now()),
            container_statuses: Some(statuses),
            conditions: Some(vec![PodCondition {
                type_: "Ready".into(),
                status: if all_ready { "True" } else { "False" }.into(),
                ..Default::default()
            }]),
            ..Default::default()
        });
        Ok(pod)
    }

    /// Stops the pod's containers (SIGTERM, SIGKILL after `grace`), runs
    /// CNI DEL, removes its namespace and files (the object is the
    /// caller's to delete).
    pub fn stop(&self, state: &LabState, pod: &Pod, grace: Duration) -> Result<()> {
        let (namespace, name) = key(pod);
        let host_network = pod
            .spec
            .as_ref()
            .and_then(|s| s.host_network)
            .unwrap_or(false);
        let node = pod.spec.as_ref().and_then(|s| s.node_name.as_deref());
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let sandbox = Sandbox {
            namespace: &namespace,
            name: &name,
            uid: &uid,
            cni_node: node.filter(|n| !host_network && state.node(n).is_some()),
        };
        self.tear_down(&sandbox, grace)
    }

    /// Undoes whatever of `sandbox` exists: containers (found by their
    /// owner tag, so also those no record lists), the CNI attachment, the
    /// network namespace, the pod's files.
    fn tear_down(&self, sandbox: &Sandbox, grace: Duration) -> Result<()> {
        let (namespace, name, uid) = (sandbox.namespace, sandbox.name, sandbox.uid);
        procs::stop_owned(&pod_owner_prefix(self.layout, namespace, name), grace);
        if let Some(node) = sandbox.cni_node {
            let ns_name = self.layout.pod_ns(uid);
            let path = netns::named_path(&ns_name);
            if let Ok(node_ns) = NetNs::open(netns::named_path(&self.layout.node_ns(node))) {
                self.cni(node, &node_ns, "DEL", uid, &path, namespace, name)?;
            }
            netns::delete_named(&ns_name)?;
        }
        if let Ok(dir) = self.layout.pod_dir(namespace, name) {
            self.layout.remove(&dir)?;
        }
        Ok(())
    }

    /// Runs one CNI verb for a pod, as a runtime would.
    #[allow(clippy::too_many_arguments)]
    fn cni(
        &self,
        node: &str,
        node_ns: &NetNs,
        verb: &str,
        uid: &str,
        netns: &Path,
        namespace: &str,
        name: &str,
    ) -> Result<Value> {
        let (plugin, conf) = self.network_config(node)?;
        // CNI_ARGS is `;`-separated `KEY=VALUE`: a value holding either
        // would smuggle in arguments (`IP=` picks the pod's address).
        if [namespace, name, uid]
            .iter()
            .any(|v| v.contains([';', '=']) || v.is_empty())
        {
            bail!("refusing to pass {namespace:?}/{name:?} (uid {uid:?}) to weft-cni: not a valid pod name");
        }
        let args = format!(
            "IgnoreUnknown=1;K8S_POD_NAMESPACE={namespace};K8S_POD_NAME={name};K8S_POD_UID={uid}"
        );
        let call = |plugin: &Path, args: &str, conf: &Value| -> Result<Value> {
            let reply = Call {
                container_id: uid,
                netns: Some(netns),
                args,
                host: Some(node_ns),
                ..Call::new(plugin, verb)
            }
            .run(conf)?;
            if !reply.ok() {
                bail!(
                    "{} {verb} for pod {namespace}/{name} on {node} failed: {}",
                    plugin.display(),
                    reply.stdout.trim()
                );
            }
            Ok(reply.json)
        };
        // weft-cni brings the pod's loopback up itself; for another
        // plugin, a runtime runs CNI's loopback plugin first.
        if plugin != self.plugin && verb == "ADD" {
            let loopback = crate::control_plane::reference_cni_plugin("loopback")?;
            let conf = json!({"cniVersion": "1.0.0", "name": "lo", "type": "loopback"});
            call(&loopback, "", &conf)?;
        }
        call(&plugin, &args, &conf)
    }

    /// The plugin to run and its configuration, from the node's CNI
    /// configuration (the first `*.conflist` by name, as a runtime takes
    /// it): weft-cni, or what flannel's CNI plugin delegates to.
    fn network_config(&self, node: &str) -> Result<(PathBuf, Value)> {
        let dir = self.layout.node_dir(node).join("net.d");
        let mut conflists: Vec<PathBuf> = std::fs::read_dir(&dir)
            .map(|entries| {
                entries
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.extension().is_some_and(|x| x == "conflist"))
                    .collect()
            })
            .unwrap_or_default();
        conflists.sort();
        let path = conflists.first().with_context(|| {
            format!(
                "no CNI configuration in {} (is the agent of {node} running?)",
                dir.display()
            )
        })?;
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let conf = Conflist::parse(&text)?
            .plugin_config(0, &Map::new())
            .context("empty conflist")?;
        match conf["type"].as_str() {
            Some("flannel") => crate::flannel::delegate(&conf),
            _ => Ok((self.plugin.clone(), conf)),
        }
    }

    /// `weft lab supervise …` up to its `--`: which container, and how to
    /// run it (restart policy, grace period).
    fn supervise_args(&self, sandbox: &Sandbox, container: &str, spec: &PodSpec) -> Vec<String> {
        let grace = spec.termination_grace_period_seconds.unwrap_or(30).max(0);
        let mut args: Vec<String> = [
            "lab",
            "supervise",
            "--lab",
            &self.layout.lab,
            "--namespace",
            sandbox.namespace,
            "--pod",
            sandbox.name,
            "--uid",
            sandbox.uid,
            "--container",
            container,
            "--restart-policy",
            spec.restart_policy.as_deref().unwrap_or("Always"),
            "--grace-seconds",
            &grace.to_string(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        if let Some(kubeconfig) = &self.kubeconfig {
            args.extend(["--kubeconfig".into(), kubeconfig.display().to_string()]);
        }
        args
    }

    /// The process for a container: its command, or netexec.
    fn command_of(&self, c: &Container, pod: &str) -> (PathBuf, Vec<String>) {
        let args = c.args.clone().unwrap_or_default();
        let agnhost = c.image.as_deref().is_some_and(|i| i.contains("agnhost"));
        // agnhost's image runs `/agnhost ARGS`; a command naming it (as
        // `kubectl create deployment … -- /agnhost netexec` writes) is the same.
        let agnhost_args = match c.command.as_deref() {
            None => Some(args.clone()),
            Some([entry, rest @ ..])
                if Path::new(entry).file_name() == Some("agnhost".as_ref()) =>
            {
                Some([rest, &args].concat())
            }
            Some(_) => None,
        };
        if let Some(args) = agnhost_args.filter(|_| agnhost) {
            if args.first().map(String::as_str) == Some("porter") {
                let (tcp, udp) = porter_ports(c.env.as_deref().unwrap_or_default());
                return (self.weft.clone(), netexec_args(pod, &tcp, &udp));
            }
            if let Some(cfg) = crate::netexec::parse_agnhost_args(&args) {
                let mut args = netexec_args(pod, &cfg.http_ports, &cfg.udp_ports);
                if cfg.delay_shutdown > 0 {
                    args.extend(["--delay-shutdown".into(), cfg.delay_shutdown.to_string()]);
                }
                return (self.weft.clone(), args);
            }
        }
        if let Some(cmd) = c.command.clone().filter(|c| !c.is_empty()) {
            let mut rest = cmd[1..].to_vec();
            rest.extend(args);
            return (PathBuf::from(&cmd[0]), rest);
        }
        let ports = c.ports.clone().unwrap_or_default();
        let by = |proto: &str| -> Vec<u16> {
            ports
                .iter()
                .filter(|p| p.protocol.as_deref().unwrap_or("TCP") == proto)
                .filter_map(|p| u16::try_from(p.container_port).ok())
                .collect()
        };
        (self.weft.clone(), netexec_args(pod, &by("TCP"), &by("UDP")))
    }
}

/// The executable `program` names: a path as it is, a bare name looked up
/// in `PATH` as a runtime would. A container whose program does not exist
/// cannot start, and its pod is not created.
fn resolve(program: &Path) -> Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let executable = |p: &Path| {
        p.metadata()
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if program.components().count() > 1 || program.is_absolute() {
        return if executable(program) {
            Ok(program.to_path_buf())
        } else {
            bail!("{} is not an executable file", program.display())
        };
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into());
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|p| executable(p))
        .with_context(|| format!("{} not found in PATH", program.display()))
}

/// The ports agnhost `porter` serves, from its environment:
/// `SERVE_PORT_<N>` (HTTP over TCP) and `SERVE_UDP_PORT_<N>`, as the
/// upstream NetworkPolicy tests declare them. netexec serves them, so the
/// answer is the pod's name rather than the variable's value;
/// `SERVE_SCTP_PORT_<N>` and `SERVE_TLS_PORT_<N>` are not served.
fn porter_ports(env: &[EnvVar]) -> (Vec<u16>, Vec<u16>) {
    let ports = |prefix: &str| -> Vec<u16> {
        env.iter()
            .filter_map(|v| v.name.strip_prefix(prefix)?.parse().ok())
            .filter(|port: &u16| *port != 0)
            .collect()
    };
    (ports("SERVE_PORT_"), ports("SERVE_UDP_PORT_"))
}

fn netexec_args(pod: &str, http: &[u16], udp: &[u16]) -> Vec<String> {
    let mut v = vec!["netexec".to_string(), "--hostname".into(), pod.into()];
    for p in http {
        v.extend(["--http-port".into(), p.to_string()]);
    }
    for p in udp {
        v.extend(["--udp-port".into(), p.to_string()]);
    }
    v
}

/// What the supervisor needs of a container to probe it: its name, ports
/// and probes, as JSON.
fn probe_spec(c: &Container) -> Result<String> {
    let spec = Container {
        name: c.name.clone(),
        ports: c.ports.clone(),
        startup_probe: c.startup_probe.clone(),
        liveness_probe: c.liveness_probe.clone(),
        readiness_probe: c.readiness_probe.clone(),
        ..Default::default()
    };
    Ok(serde_json::to_string(&spec)?)
}

fn running_status(c: &Container, pid: u32, ready: bool) -> ContainerStatus {
    ContainerStatus {
        name: c.name.clone(),
        image: c.image.clone().unwrap_or_default(),
        image_id: String::new(),
        container_id: Some(format!("weft://{pid}")),
        ready,
        started: Some(true),
        restart_count: 0,
        state: Some(ContainerState {
            running: Some(ContainerStateRunning {
                started_at: Some(now()),
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn result_ips(result: &Value) -> Vec<IpAddr> {
    result["ips"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|ip| ip["address"].as_str()?.split('/').next()?.parse().ok())
        .collect()
}

/// A container counts as started once its first TCP port accepts (at most
/// 2 s), so a probe right after `apply` finds it serving.
fn wait_for_ports(ns: &NetNs, containers: &[Container]) {
    let port = containers
        .iter()
        .flat_map(|c| c.ports.clone().unwrap_or_default())
        .find(|p| p.protocol.as_deref().unwrap_or("TCP") == "TCP")
        .and_then(|p| u16::try_from(p.container_port).ok())
        .or_else(|| {
            containers
                .iter()
                .filter_map(|c| {
                    crate::netexec::parse_agnhost_args(&c.args.clone().unwrap_or_default())
                })
                .find_map(|cfg| cfg.http_ports.first().copied())
        });
    let Some(port) = port else { return };
    let deadline = Instant::now() + Duration::from_secs(2);
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    while Instant::now() < deadline {
        let up = ns
            .run_in(|| TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok())
            .unwrap_or(false);
        if up {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn container(spec: serde_json::Value) -> Container {
        serde_json::from_value(spec).unwrap()
    }

    #[test]
    fn agnhost_netexec_and_porter_containers_are_served_by_netexec() {
        let layout = Layout::new("t").unwrap();
        let kubelet = Kubelet {
            layout: &layout,
            weft: "/w/weft".into(),
            plugin: "/w/weft-cni".into(),
            kubeconfig: None,
        };
        let netexec = |args: &[&str]| -> (PathBuf, Vec<String>) {
            let mut all = vec!["netexec", "--hostname", "p"];
            all.extend_from_slice(args);
            (
                "/w/weft".into(),
                all.iter().map(|s| s.to_string()).collect(),
            )
        };
        let by_args = container(
            serde_json::json!({"name": "c", "image": "registry.k8s.io/e2e-test-images/agnhost:2.53",
            "args": ["netexec", "--http-port=8080", "--udp-port=-1", "--delay-shutdown=3"]}),
        );
        assert_eq!(
            kubelet.command_of(&by_args, "p"),
            netexec(&["--http-port", "8080", "--delay-shutdown", "3"])
        );
        let by_command = container(serde_json::json!({"name": "c", "image": "agnhost",
            "command": ["/agnhost", "netexec", "--http-port=9000"]}));
        assert_eq!(
            kubelet.command_of(&by_command, "p"),
            netexec(&["--http-port", "9000", "--udp-port", "8081"])
        );
        let porter = container(
            serde_json::json!({"name": "c", "image": "agnhost", "args": ["porter"],
            "env": [{"name": "SERVE_PORT_80", "value": "foo"}, {"name": "SERVE_UDP_PORT_81", "value": "foo"},
                    {"name": "SERVE_SCTP_PORT_80", "value": "foo"}, {"name": "OTHER", "value": "x"}]}),
        );
        assert_eq!(
            kubelet.command_of(&porter, "p"),
            netexec(&["--http-port", "80", "--udp-port", "81"])
        );
        let other = container(serde_json::json!({"name": "c", "image": "agnhost",
            "command": ["sleep", "5"]}));
        assert_eq!(
            kubelet.command_of(&other, "p"),
            ("sleep".into(), vec!["5".to_string()])
        );
    }
}
