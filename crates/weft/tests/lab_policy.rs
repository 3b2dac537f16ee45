//! NetworkPolicy in the lab, through the `weft` binary as a user runs it:
//! enforcement from a pod's first packet and while agents are away.

mod common;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{wait_until, Lab, Mode};
use rstest::rstest;

const ISOLATE_GUARDED: &str = "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: guard}
spec:
  podSelector: {matchLabels: {app: guarded}}
  policyTypes: [Ingress]
";

fn pod(name: &str, app: &str) -> String {
    format!(
        "apiVersion: v1
kind: Pod
metadata: {{name: {name}, labels: {{app: {app}}}}}
spec:
  containers: [{{name: c, image: x, ports: [{{containerPort: 80}}]}}]
"
    )
}

/// The log of node-1's agent.
fn agent_log(lab: &Lab) -> String {
    std::fs::read_to_string(format!(
        "/run/weft/labs/{}/nodes/node-1/agent.log",
        lab.name
    ))
    .unwrap_or_default()
}

/// A lab where policy `guard` isolates pods labelled `app: guarded`, with
/// pods `client` and `other`.
fn isolating_lab(mode: Mode, tag: &str, nodes: u32, backend: &str, other: String) -> Lab {
    let lab = Lab::up_in(mode, tag, nodes, backend);
    lab.apply_ok(&format!(
        "{ISOLATE_GUARDED}---\n{}---\n{other}",
        pod("client", "client")
    ));
    lab
}

/// Connects to `target` from inside a pod's network namespace, from
/// several threads so that a new attempt starts every few milliseconds
/// even while attempts time out; counts the connections accepted.
struct Prober {
    stop: Arc<AtomicBool>,
    connected: Arc<AtomicUsize>,
    threads: Vec<std::thread::JoinHandle<usize>>,
}

const PROBING_THREADS: usize = 8;

impl Prober {
    fn start(lab: &Lab, from: &str, target: SocketAddr) -> Prober {
        let stop = Arc::new(AtomicBool::new(false));
        let connected = Arc::new(AtomicUsize::new(0));
        let threads = (0..PROBING_THREADS)
            .map(|_| {
                let (stop, connected) = (stop.clone(), connected.clone());
                let netns = lab.pod_netns(from);
                std::thread::spawn(move || {
                    netns
                        .run_in(|| {
                            // The client looks for the new pod's MAC
                            // every 10 ms, not every second: the probe
                            // must see the pod as soon as it is wired.
                            std::fs::write("/proc/sys/net/ipv4/neigh/eth0/retrans_time_ms", "10")
                                .unwrap();
                            let mut attempts = 0;
                            while !stop.load(Ordering::SeqCst) {
                                attempts += 1;
                                let timeout = Duration::from_millis(20);
                                if TcpStream::connect_timeout(&target, timeout).is_ok() {
                                    connected.fetch_add(1, Ordering::SeqCst);
                                }
                                std::thread::sleep(Duration::from_millis(2));
                            }
                            attempts
                        })
                        .unwrap()
                })
            })
            .collect();
        Prober {
            stop,
            connected,
            threads,
        }
    }

    /// Stops; `(connections accepted, attempts)`.
    fn finish(self) -> (usize, usize) {
        self.stop.store(true, Ordering::SeqCst);
        let attempts = self.threads.into_iter().map(|t| t.join().unwrap()).sum();
        (self.connected.load(Ordering::SeqCst), attempts)
    }
}

/// Starts pod `name` (label `app`) while a client probes the address it
/// will get (the node's IPAM hands them out in order) from before its
/// creation until well after it serves; the connections accepted.
fn probe_while_starting(lab: &Lab, name: &str, app: &str, address: Ipv4Addr) -> usize {
    let prober = Prober::start(lab, "client", SocketAddr::from((address, 80)));
    std::thread::sleep(Duration::from_millis(200));
    lab.apply_ok(&pod(name, app));
    let running = wait_until(Duration::from_secs(30), || {
        lab.pods()
            .iter()
            .any(|p| p["metadata"]["name"] == name && p["status"]["podIP"].is_string())
    });
    assert!(running.is_some(), "pod {name} did not start");
    assert_eq!(
        lab.pod_ip(name),
        address.to_string(),
        "pod {name} did not get the address probed"
    );
    // Serving now: a connection it accepts would have shown by then.
    std::thread::sleep(Duration::from_secs(1));
    let (connected, attempts) = prober.finish();
    assert!(attempts > 200, "the prober made only {attempts} attempts");
    connected
}

/// A pod that a policy isolates never accepts a connection the policy
/// denies, from its first packet on, although it serves at once: its
/// ADD waits for the agent. The same probe reaches a pod no policy
/// selects (so the probe can see a window). While the agent is down, no
/// pod starts on its node; once it is back, the pod starts.
#[rstest]
#[case::embedded(Mode::Embedded)]
#[case::kubernetes(Mode::Kubernetes)]
fn a_new_pod_is_isolated_from_its_first_packet(#[case] mode: Mode) {
    let lab = isolating_lab(mode, "start", 1, "host-gw", pod("marker", "marker"));
    // The node hands out addresses in order: the next pods get the ones
    // after the highest so far (client and marker start in either order).
    let highest = ["client", "marker"]
        .iter()
        .map(|p| u32::from(lab.pod_ip(p).parse::<Ipv4Addr>().unwrap()))
        .max()
        .unwrap();
    let next = |n: u32| Ipv4Addr::from(highest + n);

    let into_guarded = probe_while_starting(&lab, "guarded", "guarded", next(1));
    assert_eq!(
        into_guarded, 0,
        "the isolated pod accepted connections while starting"
    );
    let into_open = probe_while_starting(&lab, "open", "open", next(2));
    assert!(
        into_open > 0,
        "the probe never reached a pod no policy selects"
    );

    // A second isolated pod has the rules of the first: the agent adds its
    // address to set elements (no rewrite of the table), also before ADD
    // returns; a new pod a policy allows in joins a peer set the same way.
    let rewrites = || {
        agent_log(&lab)
            .matches("NetworkPolicy table written")
            .count()
    };
    let before = rewrites();
    let into_second = probe_while_starting(&lab, "guarded2", "guarded", next(3));
    assert_eq!(
        into_second, 0,
        "the second isolated pod accepted connections"
    );
    assert_eq!(
        rewrites(),
        before,
        "the table was rewritten for a pod:\n{}",
        agent_log(&lab)
    );
    lab.apply_ok(
        "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: friends}
spec:
  podSelector: {matchLabels: {app: guarded}}
  ingress: [{from: [{podSelector: {matchLabels: {app: friend}}}]}]
",
    );
    lab.apply_ok(&pod("friend", "friend"));
    let friend_in = wait_until(Duration::from_secs(10), || {
        lab.probe_http("friend", "default/guarded2", 1, "/hostname")[0].0 == "ok"
    });
    assert!(
        friend_in.is_some(),
        "a new pod the policy allows does not get in"
    );
    assert!(lab.probe_http("client", "default/guarded2", 1, "/hostname")[0].0 != "ok");

    // Without its agent a node starts no pod; with it back, it does.
    lab.ok(&["node", "stop", "node-1"]);
    // The lab's apply says why (a kubelet retries with a back-off).
    let refused = lab.apply_fails(&pod("late", "guarded"));
    assert!(
        refused.contains("does not answer at") && refused.contains("policy.sock"),
        "{refused}"
    );
    lab.ok(&["node", "start", "node-1"]);
    if mode == Mode::Embedded {
        lab.apply_ok(&pod("late", "guarded"));
    }
    let started = wait_until(Duration::from_secs(30), || {
        lab.pod("late")["status"]["podIP"].is_string()
    });
    assert!(
        started.is_some(),
        "pod late did not start with its agent back"
    );
}

/// A denied connection is logged by the agent that dropped it, explained
/// exactly as `weft lab explain` explains it, and `weft lab denials`
/// shows it, for its node only with `--node`.
#[rstest]
#[case::embedded(Mode::Embedded)]
#[case::kubernetes(Mode::Kubernetes)]
fn denials_are_logged_and_explained(#[case] mode: Mode) {
    let lab = isolating_lab(mode, "deny", 2, "vxlan", pod("guarded", "guarded"));
    let why = "denied default/client → default/guarded:80/TCP: egress of default/client is not isolated; \
               ingress of default/guarded is isolated by default/guard and no rule allows default/client";
    let explained = lab.ok(&["explain", "--from", "client", "--to", "default/guarded"]);
    assert!(explained.starts_with(why), "{explained}");
    let udp = lab.ok(&[
        "explain",
        "--from",
        "client",
        "--to",
        "default/guarded:80/udp",
    ]);
    assert!(
        udp.starts_with("denied default/client → default/guarded:80/UDP"),
        "{udp}"
    );
    let denied = wait_until(Duration::from_secs(10), || {
        lab.probe_http("client", "default/guarded", 1, "/hostname")[0].0 != "ok"
    });
    assert!(denied.is_some(), "client reaches the isolated pod");
    let logged = wait_until(Duration::from_secs(10), || {
        lab.ok(&["denials"]).contains(why)
    });
    assert!(logged.is_some(), "not logged:\n{}", lab.ok(&["denials"]));
    let guarded_on = lab.pod("guarded")["spec"]["nodeName"]
        .as_str()
        .unwrap()
        .to_string();
    let other = if guarded_on == "node-1" {
        "node-2"
    } else {
        "node-1"
    };
    let here = lab.ok(&["denials", "--node", &guarded_on]);
    assert!(here.starts_with(&format!("{guarded_on}  ")), "{here}");
    assert!(here.contains(why), "{here}");
    assert!(!lab.ok(&["denials", "--node", other]).contains(why));
    let unknown = lab.fails(&["denials", "--node", "node-9"]);
    assert!(unknown.contains("no node node-9"), "{unknown}");
}

/// The rules stay while the agent is down and while it restarts (it
/// writes its table only once it has read the whole cluster, in one
/// transaction): a client probing an isolated pod the whole time never
/// gets in, and allowed traffic still flows afterwards.
#[rstest]
#[case::embedded(Mode::Embedded)]
#[case::kubernetes(Mode::Kubernetes)]
fn isolation_holds_while_the_agent_is_down_and_restarts(#[case] mode: Mode) {
    let lab = isolating_lab(mode, "hold", 1, "host-gw", pod("guarded", "guarded"));
    let target: Ipv4Addr = lab.pod_ip("guarded").parse().unwrap();
    let prober = Prober::start(&lab, "client", SocketAddr::from((target, 80)));
    for _ in 0..2 {
        lab.ok(&["node", "stop", "node-1"]);
        std::thread::sleep(Duration::from_millis(500));
        lab.ok(&["node", "start", "node-1"]);
        std::thread::sleep(Duration::from_millis(1500));
    }
    let (connected, attempts) = prober.finish();
    assert!(attempts > 200, "the prober made only {attempts} attempts");
    assert_eq!(connected, 0, "the isolated pod accepted connections");
    let back = wait_until(Duration::from_secs(10), || {
        lab.probe_http("guarded", "default/client", 1, "/hostname")[0].0 == "ok"
    });
    assert!(
        back.is_some(),
        "allowed traffic does not flow after the restarts"
    );
}

/// A policy holds for new connections: one established before it keeps
/// carrying data both ways (conntrack), a new one is denied, as with
/// Calico and Cilium.
#[rstest]
#[case::embedded(Mode::Embedded)]
#[case::kubernetes(Mode::Kubernetes)]
fn established_connections_outlive_a_new_policy(#[case] mode: Mode) {
    let lab = Lab::up_in(mode, "estab", 1, "host-gw");
    lab.apply_ok(&format!(
        "{}---\n{}",
        pod("client", "client"),
        pod("guarded", "guarded")
    ));
    let target: SocketAddr = format!("{}:7000", lab.pod_ip("guarded")).parse().unwrap();
    let listener = lab
        .pod_netns("guarded")
        .run_in(|| std::net::TcpListener::bind("0.0.0.0:7000"))
        .unwrap()
        .unwrap();
    let client_ns = lab.pod_netns("client");
    let connect = || {
        client_ns
            .run_in(|| TcpStream::connect_timeout(&target, Duration::from_millis(500)))
            .unwrap()
    };
    let mut stream = connect().expect("connecting before the policy");
    let (mut accepted, _) = listener.accept().unwrap();
    for s in [&stream, &accepted] {
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    }
    lab.apply_ok(ISOLATE_GUARDED);
    let enforced = wait_until(Duration::from_secs(10), || {
        lab.probe_http("client", "default/guarded", 1, "/hostname")[0].0 != "ok"
    });
    assert!(enforced.is_some(), "the policy never took effect");
    let mut buf = [0u8; 4];
    stream.write_all(b"ping").unwrap();
    accepted
        .read_exact(&mut buf)
        .expect("the established connection stalled");
    assert_eq!(&buf, b"ping");
    accepted.write_all(b"pong").unwrap();
    stream
        .read_exact(&mut buf)
        .expect("no reply on the established connection");
    assert_eq!(&buf, b"pong");
    assert!(connect().is_err(), "a new connection got in");
}
