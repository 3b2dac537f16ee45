//! NetworkPolicy in the lab, through the `weft` binary as a user runs it:
//! enforcement from a pod's first packet and while agents are away.

mod common;

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
    let lab = Lab::up_in(mode, "start", 1, "host-gw");
    lab.apply_ok(&format!(
        "{ISOLATE_GUARDED}---\n{}---\n{}",
        pod("client", "client"),
        pod("marker", "marker")
    ));
    let marker: Ipv4Addr = lab.pod_ip("marker").parse().unwrap();
    let next = |n: u32| Ipv4Addr::from(u32::from(marker) + n);

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
