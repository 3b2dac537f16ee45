//! What the lab's operations did, as typed results, and how `weft lab`
//! shows them. The operations ([`crate::ops`]) do and report; this module
//! only renders (pure, unit-tested), so the text users read is decided in
//! one place and tested without a lab.

use std::fmt;

use ipnet::Ipv4Net;

/// One thing an operation did, reported as it happens (a long `apply`
/// shows each pod as it starts).
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    UnderlayCreated {
        namespace: String,
        network: Ipv4Net,
    },
    ExternalCreated {
        namespace: String,
        ip: std::net::Ipv4Addr,
    },
    /// Kubernetes mode: the control plane is starting.
    ControlPlaneStarted {
        namespace: String,
        ip: std::net::Ipv4Addr,
        kubeconfig: std::path::PathBuf,
    },
    /// A node's processes started: its agent, and in Kubernetes mode its
    /// kubelet (whose agent starts once the API server is ready).
    /// Kubernetes mode: the API server answers ready, `seconds` after the
    /// control plane started.
    ApiServerReady {
        seconds: f64,
    },
    NodeStarted {
        name: String,
        ip: std::net::Ipv4Addr,
        agent: Option<u32>,
        kubelet: Option<u32>,
    },
    LabUp {
        name: String,
        nodes: u32,
        backend: String,
        pod_cidr: String,
        service_cidr: String,
        lb_pool: String,
        seconds: f64,
    },
    LabRemoved {
        name: String,
        namespaces: usize,
        processes: usize,
    },
    /// `kind/name` relabeled (or left as it was).
    Labeled {
        object: String,
        changed: bool,
    },
    /// A manifest object other than a pod: `kind/name` and what happened.
    Applied {
        object: String,
        outcome: Outcome,
    },
    PodUnchanged {
        name: String,
    },
    PodCreated {
        name: String,
        node: String,
        ip: String,
        millis: f64,
    },
    PodTerminating {
        name: String,
        grace_seconds: u64,
    },
    /// `kind/name` deleted, or not found.
    Deleted {
        object: String,
        found: bool,
    },
    NodeAdded {
        name: String,
    },
    NodeRemoved {
        name: String,
    },
    AgentKilled {
        node: String,
    },
    AgentStarted {
        node: String,
        pid: u32,
    },
}

/// What applying an object did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Created,
    Configured,
    Unchanged,
    /// A Deployment: its pods follow, each reported on its own.
    Applied,
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Outcome::Created => "created",
            Outcome::Configured => "configured",
            Outcome::Unchanged => "unchanged",
            Outcome::Applied => "applied",
        })
    }
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Event::UnderlayCreated { namespace, network } => {
                write!(f, "underlay {namespace} on {network} (no route to the host)")
            }
            Event::ExternalCreated { namespace, ip } => write!(
                f,
                "external client {namespace} at {ip} (reaches nodes and LoadBalancer addresses on-link)"
            ),
            Event::ControlPlaneStarted {
                namespace,
                ip,
                kubeconfig,
            } => write!(
                f,
                "control plane {namespace} at {ip} (etcd, kube-apiserver, kube-controller-manager, kube-scheduler); kubeconfig {}",
                kubeconfig.display()
            ),
            Event::ApiServerReady { seconds } => {
                write!(f, "kube-apiserver ready after {seconds:.2} s")
            }
            Event::NodeStarted {
                name,
                ip,
                agent,
                kubelet,
            } => {
                write!(f, "node {name:<8} {:<14}", ip.to_string())?;
                let processes = [("kubelet", kubelet), ("agent", agent)];
                let started: Vec<String> = processes
                    .iter()
                    .filter_map(|(what, pid)| pid.map(|pid| format!("{what} pid {pid}")))
                    .collect();
                write!(f, " {}", started.join(", "))
            }
            Event::LabUp {
                name,
                nodes,
                backend,
                pod_cidr,
                service_cidr,
                lb_pool,
                seconds,
            } => write!(
                f,
                "lab {name} up: {nodes} nodes, backend {backend}, pods from {pod_cidr}, services from {service_cidr}, LoadBalancers from {lb_pool} ({seconds:.2} s)"
            ),
            Event::LabRemoved {
                name,
                namespaces,
                processes,
            } => write!(f, "lab {name} removed ({namespaces} namespaces, {processes} processes)"),
            Event::Applied { object, outcome } => write!(f, "{object} {outcome}"),
            Event::Labeled { object, changed } => {
                write!(f, "{object} {}", if *changed { "labeled" } else { "not labeled" })
            }
            Event::PodUnchanged { name } => write!(f, "pod/{name} unchanged"),
            Event::PodCreated {
                name,
                node,
                ip,
                millis,
            } => write!(f, "pod/{name} created on {node} with IP {ip} ({millis:.0} ms)"),
            Event::PodTerminating {
                name,
                grace_seconds,
            } => write!(f, "pod/{name} terminating ({grace_seconds} s grace period)"),
            Event::Deleted { object, found } => {
                write!(f, "{object} {}", if *found { "deleted" } else { "not found" })
            }
            Event::NodeAdded { name } => write!(f, "node {name} added"),
            Event::NodeRemoved { name } => write!(f, "node {name} removed; its lease is released"),
            Event::AgentKilled { node } => {
                write!(f, "agent of {node} killed; its datapath stays as it was")
            }
            Event::AgentStarted { node, pid } => write!(f, "agent of {node} started (pid {pid})"),
        }
    }
}

/// Where an operation reports what it did.
pub type Report<'a> = &'a mut dyn FnMut(Event);

/// One lab, as `weft lab status` shows it.
#[derive(Debug, Clone, PartialEq)]
pub enum LabStatus {
    Damaged {
        name: String,
    },
    Running {
        name: String,
        /// `embedded` or `kubernetes`.
        control_plane: String,
        backend: String,
        pod_cidr: String,
        service_cidr: String,
        agents_running: usize,
        nodes: usize,
        pods: usize,
        services: usize,
    },
}

/// `weft lab status`.
pub fn status(labs: &[LabStatus]) -> String {
    if labs.is_empty() {
        return "no labs; start one with `weft lab up`\n".into();
    }
    labs.iter()
        .map(|lab| match lab {
            LabStatus::Damaged { name } => {
                format!("lab {name}: damaged; remove it with `weft lab down --name {name}`\n")
            }
            LabStatus::Running {
                name,
                control_plane,
                backend,
                pod_cidr,
                service_cidr,
                agents_running,
                nodes,
                pods,
                services,
            } => format!(
                "lab {name}: {control_plane} control plane, backend {backend}, pods from {pod_cidr}, services from {service_cidr}, {agents_running}/{nodes} agents running, {pods} pods, {services} services\n"
            ),
        })
        .collect()
}

/// A node, as `weft lab get nodes` shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeRow {
    pub name: String,
    pub ready: bool,
    pub ip: String,
    pub pod_cidr: Option<String>,
    pub backend: String,
}

/// `weft lab get nodes`.
pub fn nodes(rows: &[NodeRow]) -> String {
    let line = |a: &str, b: &str, c: &str, d: &str, e: &str| {
        format!("{a:<10} {b:<9} {c:<15} {d:<16} {e:<8}\n")
    };
    let mut out = line("NAME", "STATUS", "INTERNAL-IP", "POD-CIDR", "BACKEND");
    for r in rows {
        out += &line(
            &r.name,
            if r.ready { "Ready" } else { "NotReady" },
            &r.ip,
            r.pod_cidr.as_deref().unwrap_or("<none>"),
            &r.backend,
        );
    }
    out
}

/// A pod, as `weft lab get pods` shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct PodRow {
    pub namespace: String,
    pub name: String,
    pub ready: usize,
    pub containers: usize,
    pub status: String,
    pub restarts: i32,
    pub ip: String,
    pub node: String,
}

/// `weft lab get pods` (`wide`: with IP and node).
pub fn pods(rows: &[PodRow], wide: bool) -> String {
    let line = |cells: [&str; 7]| {
        let [namespace, name, ready, status, restarts, ip, node] = cells;
        let head = format!("{namespace:<12} {name:<20} {ready:<6} {status:<16} {restarts:<8} ");
        match wide {
            true => format!("{head}{ip:<15} {node:<8}\n"),
            false => format!("{head}\n"),
        }
    };
    let mut out = line([
        "NAMESPACE",
        "NAME",
        "READY",
        "STATUS",
        "RESTARTS",
        "IP",
        "NODE",
    ]);
    for r in rows {
        let ready = format!("{}/{}", r.ready, r.containers);
        let restarts = r.restarts.to_string();
        out += &line([
            &r.namespace,
            &r.name,
            &ready,
            &r.status,
            &restarts,
            &r.ip,
            &r.node,
        ]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_read_as_weft_lab_prints_them() {
        let cases = [
            (
                Event::NodeStarted {
                    name: "node-1".into(),
                    ip: "198.18.0.11".parse().unwrap(),
                    agent: Some(42),
                    kubelet: None,
                },
                "node node-1   198.18.0.11    agent pid 42",
            ),
            (
                Event::NodeStarted {
                    name: "node-1".into(),
                    ip: "198.18.0.11".parse().unwrap(),
                    agent: None,
                    kubelet: Some(43),
                },
                "node node-1   198.18.0.11    kubelet pid 43",
            ),
            (
                Event::PodCreated {
                    name: "web-1".into(),
                    node: "node-2".into(),
                    ip: "10.244.2.3".into(),
                    millis: 16.4,
                },
                "pod/web-1 created on node-2 with IP 10.244.2.3 (16 ms)",
            ),
            (
                Event::Applied {
                    object: "service/web".into(),
                    outcome: Outcome::Configured,
                },
                "service/web configured",
            ),
            (
                Event::Deleted {
                    object: "pod/x".into(),
                    found: false,
                },
                "pod/x not found",
            ),
            (
                Event::LabRemoved {
                    name: "demo".into(),
                    namespaces: 8,
                    processes: 12,
                },
                "lab demo removed (8 namespaces, 12 processes)",
            ),
            (
                Event::LabUp {
                    name: "demo".into(),
                    nodes: 2,
                    backend: "vxlan".into(),
                    pod_cidr: "10.244.0.0/16".into(),
                    service_cidr: "10.96.0.0/16".into(),
                    lb_pool: "198.18.0.240/28".into(),
                    seconds: 0.031,
                },
                "lab demo up: 2 nodes, backend vxlan, pods from 10.244.0.0/16, services from 10.96.0.0/16, LoadBalancers from 198.18.0.240/28 (0.03 s)",
            ),
        ];
        for (event, text) in cases {
            assert_eq!(event.to_string(), text);
        }
    }

    #[test]
    fn status_says_what_to_do_with_no_lab_and_a_damaged_one() {
        assert_eq!(status(&[]), "no labs; start one with `weft lab up`\n");
        let labs = [
            LabStatus::Damaged { name: "old".into() },
            LabStatus::Running {
                name: "demo".into(),
                control_plane: "kubernetes".into(),
                backend: "host-gw".into(),
                pod_cidr: "10.244.0.0/16".into(),
                service_cidr: "10.96.0.0/16".into(),
                agents_running: 1,
                nodes: 2,
                pods: 3,
                services: 1,
            },
        ];
        let text = status(&labs);
        assert!(text.starts_with("lab old: damaged; remove it with `weft lab down --name old`\n"));
        assert!(
            text.ends_with("1/2 agents running, 3 pods, 1 services\n"),
            "{text}"
        );
        assert!(text.contains("lab demo: kubernetes control plane, backend host-gw"));
    }

    #[test]
    fn tables_line_up_and_mark_what_is_missing() {
        let text = nodes(&[NodeRow {
            name: "node-1".into(),
            ready: false,
            ip: "198.18.0.11".into(),
            pod_cidr: None,
            backend: "vxlan".into(),
        }]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0].find("STATUS"), lines[1].find("NotReady"));
        assert!(lines[1].contains("<none>"));
        let row = PodRow {
            namespace: "demo".into(),
            name: "web-1".into(),
            ready: 1,
            containers: 2,
            status: "CrashLoopBackOff".into(),
            restarts: 4,
            ip: "10.244.1.2".into(),
            node: "node-1".into(),
        };
        let wide = pods(std::slice::from_ref(&row), true);
        assert!(wide.lines().nth(1).unwrap().contains("1/2"));
        assert_eq!(
            wide.lines().next().unwrap().find("RESTARTS"),
            wide.lines().nth(1).unwrap().find('4')
        );
        assert_eq!(
            wide.lines().next().unwrap().find("NODE"),
            wide.lines().nth(1).unwrap().find("node-1")
        );
        assert!(!pods(&[row], false).contains("10.244.1.2"));
    }
}
