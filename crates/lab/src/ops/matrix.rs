//! `weft lab probe`: every source (pod, node, the external client) tries
//! every target (pod, Service, node port, address) `count` times, each
//! attempt on a new connection or UDP socket, from inside the source's
//! network namespace. Names are parsed by [`crate::targets`]; the exchange
//! itself is [`crate::probe`]. It owns the threads that enter the sources'
//! namespaces (one each) and the printing of the results.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use serde_json::{json, Value};
use weft_datapath::NetNs;

use super::{pod_netns, runtime, Lab};
use crate::objects::key;
use crate::probe::{self, Outcome, Protocol};
use crate::targets::{self, Source, Target};

/// One attempt of one (source, target) pair.
#[derive(Debug, Clone)]
pub struct ProbeResult {
    pub from: String,
    pub to: String,
    pub target: SocketAddr,
    pub protocol: Protocol,
    /// 1-based.
    pub attempt: u32,
    pub outcome: Outcome,
    pub elapsed: Duration,
}

pub struct ProbeOptions {
    /// Sources as [`targets::parse_source`] reads them; empty: every pod.
    pub from: Vec<String>,
    /// Targets as [`targets::parse_target`] reads them; empty: every pod.
    pub to: Vec<String>,
    /// The port of targets that name none (a pod's default: its first
    /// declared port, or agnhost netexec's).
    pub port: Option<u16>,
    /// `None`: TCP, or a Service port's own protocol.
    pub protocol: Option<Protocol>,
    /// Per attempt.
    pub timeout: Duration,
    /// Attempts per pair.
    pub count: u32,
    /// What each attempt asks (`/hostname`; over UDP also `/clientip`).
    pub http_path: String,
}

/// Where probes start: a label and a network namespace.
struct Origin {
    label: String,
    netns: PathBuf,
}

/// What probes reach.
struct Destination {
    label: String,
    addr: SocketAddr,
    protocol: Protocol,
}

/// `weft lab probe`: returns every attempt (the caller prints them).
pub fn probe_matrix(name: &str, opts: &ProbeOptions) -> Result<Vec<ProbeResult>> {
    if opts.count == 0 {
        bail!("--count must be at least 1");
    }
    let lab = Lab::open(name)?;
    let pods = lab.pods()?;
    let origins = origins(&lab, &pods, &opts.from)?;
    let destinations = destinations(&lab, &pods, opts)?;
    if origins.is_empty() || destinations.is_empty() {
        bail!("no pods to probe (apply some with `weft lab apply -f`)");
    }
    for d in &destinations {
        probe::check_request(d.protocol, &opts.http_path)
            .with_context(|| format!("--http-path for {}", d.label))?;
    }
    let results = std::thread::scope(|s| {
        let handles: Vec<_> = origins
            .iter()
            .map(|origin| {
                let destinations = &destinations;
                s.spawn(move || run_from(origin, destinations, opts))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().map_err(|_| anyhow!("a probe thread panicked"))?)
            .collect::<Result<Vec<_>>>()
    })?;
    Ok(results.into_iter().flatten().collect())
}

/// Attempts one origin has in flight at most.
const PROBES_AT_ONCE: usize = 256;

/// Every attempt from one origin, made on this thread inside its
/// namespace: the destinations side by side (a denied one costs a
/// timeout, not one per destination), each one's attempts in turn.
fn run_from(
    origin: &Origin,
    destinations: &[Destination],
    opts: &ProbeOptions,
) -> Result<Vec<ProbeResult>> {
    let ns = NetNs::open(&origin.netns)?;
    ns.run_in(|| -> Result<Vec<ProbeResult>> {
        let rt = runtime()?;
        let each = destinations.iter().map(|d| async move {
            let mut cells = Vec::new();
            for attempt in 1..=opts.count {
                let started = Instant::now();
                let outcome =
                    probe::attempt(d.addr, d.protocol, &opts.http_path, opts.timeout).await;
                cells.push(ProbeResult {
                    from: origin.label.clone(),
                    to: d.label.clone(),
                    target: d.addr,
                    protocol: d.protocol,
                    attempt,
                    outcome,
                    elapsed: started.elapsed(),
                });
            }
            cells
        });
        // In order, and not more at once than a process has sockets for.
        let cells: Vec<Vec<ProbeResult>> = rt.block_on(
            futures::stream::iter(each)
                .buffered(PROBES_AT_ONCE)
                .collect(),
        );
        Ok(cells.into_iter().flatten().collect())
    })?
}

/// Pods named `selector` (`name` or `namespace/name`); all pods when
/// `selector` is `None`.
fn pods_named<'a>(pods: &'a [Pod], selector: Option<&str>) -> Vec<&'a Pod> {
    pods.iter()
        .filter(|p| {
            let (namespace, name) = key(*p);
            selector.is_none_or(|s| s == name || s == format!("{namespace}/{name}"))
        })
        .collect()
}

fn named_pods<'a>(pods: &'a [Pod], selector: &str) -> Result<Vec<&'a Pod>> {
    let found = pods_named(pods, Some(selector));
    if found.is_empty() {
        bail!("no pod {selector} (see `weft lab get pods -A`)");
    }
    Ok(found)
}

fn origins(lab: &Lab, pods: &[Pod], from: &[String]) -> Result<Vec<Origin>> {
    let pod_origin = |p: &Pod| -> Result<Origin> {
        Ok(Origin {
            label: qualified(p),
            netns: pod_netns(&lab.layout, p)?,
        })
    };
    if from.is_empty() {
        return pods_named(pods, None).into_iter().map(pod_origin).collect();
    }
    let mut out = Vec::new();
    for text in from {
        match targets::parse_source(text)? {
            Source::Pod(selector) => {
                for p in named_pods(pods, &selector)? {
                    out.push(pod_origin(p)?);
                }
            }
            Source::Node(node) => out.push(Origin {
                label: format!("node/{node}"),
                netns: lab.node_netns(&node)?,
            }),
            Source::External => out.push(Origin {
                label: "external".into(),
                netns: lab.external_netns()?,
            }),
        }
    }
    Ok(out)
}

fn destinations(lab: &Lab, pods: &[Pod], opts: &ProbeOptions) -> Result<Vec<Destination>> {
    if opts.to.is_empty() {
        return Ok(pod_destinations(&pods_named(pods, None), opts));
    }
    let mut out = Vec::new();
    for text in &opts.to {
        let protocol = opts.protocol.unwrap_or(Protocol::Tcp);
        let at = |ip: IpAddr, port: Option<u16>| -> Result<Destination> {
            let port = port.or(opts.port).with_context(|| {
                format!("{text} needs a port: write it as {text}:PORT or pass --port")
            })?;
            Ok(Destination {
                label: text.clone(),
                addr: SocketAddr::new(ip, port),
                protocol,
            })
        };
        match targets::parse_target(text)? {
            Target::Pod(selector) => {
                out.extend(pod_destinations(&named_pods(pods, &selector)?, opts))
            }
            Target::Service {
                namespace,
                name,
                port,
            } => {
                let services = lab.services()?;
                let svc = targets::find_service(&services, namespace.as_deref(), &name)?;
                let port = port.or_else(|| opts.port.map(|p| p.to_string()));
                let (mut addr, protocol) =
                    targets::service_address(svc, port.as_deref(), opts.protocol)?;
                // A ClusterIP means nothing outside the cluster: the external
                // client goes to the LoadBalancer address (or an externalIP).
                if from_outside(opts) {
                    if let Some(ip) = outside_address(svc) {
                        addr.set_ip(ip);
                    }
                }
                out.push(Destination {
                    label: text.clone(),
                    addr,
                    protocol,
                });
            }
            Target::Node { name, port } => {
                let node = lab.state.node(&name).with_context(|| {
                    format!(
                        "node {name} is not part of lab {} (see `weft lab get nodes`)",
                        lab.state.name
                    )
                })?;
                out.push(at(IpAddr::V4(node.ip), port)?);
            }
            Target::Address { ip, port } => out.push(at(ip, port)?),
        }
    }
    Ok(out)
}

fn from_outside(opts: &ProbeOptions) -> bool {
    !opts.from.is_empty()
        && opts
            .from
            .iter()
            .all(|f| matches!(targets::parse_source(f), Ok(targets::Source::External)))
}

fn outside_address(svc: &k8s_openapi::api::core::v1::Service) -> Option<IpAddr> {
    let external_ips = svc.spec.as_ref()?.external_ips.clone().unwrap_or_default();
    weft_proxy::model::ingress_ips(svc)
        .into_iter()
        .map(IpAddr::V4)
        .chain(external_ips.iter().filter_map(|ip| ip.parse().ok()))
        .next()
}

/// Pods with an address and a port to probe (others are skipped).
fn pod_destinations(pods: &[&Pod], opts: &ProbeOptions) -> Vec<Destination> {
    let protocol = opts.protocol.unwrap_or(Protocol::Tcp);
    pods.iter()
        .filter_map(|p| {
            let ip: IpAddr = p.status.as_ref()?.pod_ip.as_ref()?.parse().ok()?;
            let port = opts.port.or_else(|| default_port(p, protocol))?;
            Some(Destination {
                label: qualified(p),
                addr: SocketAddr::new(ip, port),
                protocol,
            })
        })
        .collect()
}

/// A pod as probes name it: `namespace/name` (pods in different
/// namespaces may share a name).
fn qualified(pod: &Pod) -> String {
    let (namespace, name) = key(pod);
    format!("{namespace}/{name}")
}

/// The port a pod serves by default: its first declared port of the
/// protocol, or agnhost netexec's.
pub(super) fn default_port(pod: &Pod, protocol: Protocol) -> Option<u16> {
    let want = if protocol == Protocol::Tcp {
        "TCP"
    } else {
        "UDP"
    };
    let containers = &pod.spec.as_ref()?.containers;
    let declared = containers
        .iter()
        .flat_map(|c| c.ports.clone().unwrap_or_default())
        .find(|p| p.protocol.as_deref().unwrap_or("TCP") == want)
        .and_then(|p| u16::try_from(p.container_port).ok());
    declared.or_else(|| {
        containers.iter().find_map(|c| {
            let cfg = crate::netexec::parse_agnhost_args(&c.args.clone().unwrap_or_default())?;
            if protocol == Protocol::Tcp {
                cfg.http_ports.first().copied()
            } else {
                cfg.udp_ports.first().copied()
            }
        })
    })
}

fn verdict(outcome: &Outcome) -> &'static str {
    match outcome {
        Outcome::Ok { .. } => "ok",
        Outcome::Refused => "refused",
        Outcome::Timeout => "timeout",
        Outcome::Error(_) => "error",
    }
}

/// A cell of the matrix: the verdict all attempts share, or `k/n ok`.
fn summary(outcomes: &[&Outcome]) -> String {
    let first = outcomes.first().map_or("-", |o| verdict(o));
    if outcomes.iter().all(|o| verdict(o) == first) {
        return first.to_string();
    }
    let ok = outcomes.iter().filter(|o| verdict(o) == "ok").count();
    format!("{ok}/{} ok", outcomes.len())
}

/// Distinct answers of a pair with how often each came, in first-seen
/// order: `web-0 ×2, web-1 ×1`.
fn answers(outcomes: &[&Outcome]) -> String {
    let mut seen: Vec<(String, usize)> = Vec::new();
    for o in outcomes {
        let text = match o {
            Outcome::Ok { answer, .. } => answer.trim_end().to_string(),
            other => format!("<{}>", verdict(other)),
        };
        match seen.iter_mut().find(|(t, _)| *t == text) {
            Some((_, n)) => *n += 1,
            None => seen.push((text, 1)),
        }
    }
    seen.iter()
        .map(|(t, n)| format!("{t} ×{n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The results as a matrix (and, with several attempts per pair, the
/// answers each pair got).
pub fn matrix_text(results: &[ProbeResult]) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let mut froms: Vec<&str> = Vec::new();
    let mut tos: Vec<&str> = Vec::new();
    let mut cells: BTreeMap<(&str, &str), Vec<&Outcome>> = BTreeMap::new();
    for r in results {
        if !froms.contains(&r.from.as_str()) {
            froms.push(&r.from);
        }
        if !tos.contains(&r.to.as_str()) {
            tos.push(&r.to);
        }
        cells
            .entry((r.from.as_str(), r.to.as_str()))
            .or_default()
            .push(&r.outcome);
    }
    let width = tos.iter().map(|t| t.len()).max().unwrap_or(4).max(8) + 2;
    let first = froms.iter().map(|f| f.len()).max().unwrap_or(4).max(9) + 2;
    let _ = write!(out, "{:<first$}", "FROM\\TO");
    for t in &tos {
        let _ = write!(out, "{t:<width$}");
    }
    out.push('\n');
    for f in &froms {
        let _ = write!(out, "{f:<first$}");
        for t in &tos {
            let cell = cells.get(&(*f, *t)).map_or("-".into(), |o| summary(o));
            let _ = write!(out, "{cell:<width$}");
        }
        out.push('\n');
    }
    if cells.values().any(|o| o.len() > 1) {
        out.push_str("\nANSWERS\n");
        for ((f, t), outcomes) in &cells {
            let _ = writeln!(out, "{f} -> {t}: {}", answers(outcomes));
        }
    }
    out
}

/// Whether every probe got its answer.
pub fn all_ok(results: &[ProbeResult]) -> bool {
    results
        .iter()
        .all(|r| matches!(r.outcome, Outcome::Ok { .. }))
}

/// The results as JSON: one object per attempt (`from`, `to`, `target`,
/// `protocol`, `attempt`, `outcome`, `answer`, `elapsedMs`) and `allOk`.
pub fn matrix_json(results: &[ProbeResult]) -> Value {
    let cells: Vec<Value> = results
        .iter()
        .map(|r| {
            let answer = match &r.outcome {
                Outcome::Ok { answer, .. } => answer.clone(),
                Outcome::Error(e) => e.clone(),
                Outcome::Refused | Outcome::Timeout => String::new(),
            };
            json!({
                "from": r.from,
                "to": r.to,
                "target": r.target.to_string(),
                "protocol": if r.protocol == Protocol::Tcp { "TCP" } else { "UDP" },
                "attempt": r.attempt,
                "outcome": verdict(&r.outcome),
                "answer": answer,
                "elapsedMs": r.elapsed.as_secs_f64() * 1e3,
            })
        })
        .collect();
    json!({"results": cells, "allOk": results.iter().all(|r| matches!(r.outcome, Outcome::Ok { .. }))})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(answer: &str) -> Outcome {
        Outcome::Ok {
            answer: answer.into(),
            millis: 1.0,
        }
    }

    #[test]
    fn cells_summarise_attempts() {
        assert_eq!(summary(&[&ok("a")]), "ok");
        assert_eq!(summary(&[&Outcome::Refused, &Outcome::Refused]), "refused");
        assert_eq!(summary(&[&ok("a"), &Outcome::Timeout, &ok("b")]), "2/3 ok");
        assert_eq!(
            answers(&[&ok("web-0"), &ok("web-1"), &ok("web-0"), &Outcome::Timeout]),
            "web-0 ×2, web-1 ×1, <timeout> ×1"
        );
    }

    #[test]
    fn json_has_one_object_per_attempt() {
        let r = |attempt, outcome| ProbeResult {
            from: "external".into(),
            to: "node/node-1:10254".into(),
            target: "198.18.0.11:10254".parse().unwrap(),
            protocol: Protocol::Tcp,
            attempt,
            outcome,
            elapsed: Duration::from_millis(3),
        };
        let v = matrix_json(&[r(1, ok("ok\n")), r(2, Outcome::Refused)]);
        assert_eq!(v["allOk"], false);
        let first = &v["results"][0];
        assert_eq!(first["from"], "external");
        assert_eq!(first["target"], "198.18.0.11:10254");
        assert_eq!(first["outcome"], "ok");
        assert_eq!(first["answer"], "ok\n");
        assert_eq!(first["attempt"], 1);
        assert_eq!(first["elapsedMs"], 3.0);
        assert_eq!(v["results"][1]["outcome"], "refused");
    }
}
