//! The model of Kubernetes' NetworkPolicy e2e suite, run in the lab in both
//! modes: namespaces x, y and z, each with pods a, b and c (labels
//! `pod: NAME`, namespaces `ns: NAME`) serving TCP and UDP on ports 80
//! and 81, and a Service per pod (`s-NS-POD`). A case applies policies,
//! then every pod probes every pod's Service ClusterIP on the four ports:
//! 9×9 matrices, compared with what is expected.
//!
//! Expectations come from two places that share nothing with weft's own
//! model: the upstream cases' matrices written here by hand, and an
//! oracle (below) that reads the policies as plain JSON. The hand-written
//! matrices are checked against the oracle too, then generated cases
//! (selectors × peers × ports × protocols, cyclonus-style; and
//! ClusterNetworkPolicy tiers × actions × peers × protocols) are checked
//! against the oracle alone. As upstream, a pod probing itself is not
//! judged (loopback through a Service is not defined by the API).

mod common;

use std::collections::BTreeMap;

use common::{Lab, Mode};
use rstest::rstest;
use serde_json::{json, Value};

const NAMESPACES: [&str; 3] = ["x", "y", "z"];
const PODS: [&str; 3] = ["a", "b", "c"];
const PORTS: [u16; 2] = [80, 81];
const PROTOCOLS: [&str; 2] = ["TCP", "UDP"];

/// `ns/pod` for all nine pods, in matrix order.
fn all_pods() -> Vec<String> {
    NAMESPACES
        .iter()
        .flat_map(|ns| PODS.iter().map(move |p| format!("{ns}/{p}")))
        .collect()
}

fn split(pod: &str) -> (&str, &str) {
    pod.split_once('/').unwrap()
}

// ---------------------------------------------------------------- oracle

/// What the oracle knows of the cluster: pod addresses and each
/// pod's named ports (all pods have the same).
struct World {
    ips: BTreeMap<String, u32>,
}

fn pod_labels(pod: &str) -> BTreeMap<String, String> {
    BTreeMap::from([("pod".to_string(), split(pod).1.to_string())])
}

fn namespace_labels(ns: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("ns".to_string(), ns.to_string()),
        ("kubernetes.io/metadata.name".to_string(), ns.to_string()),
    ])
}

/// A LabelSelector (matchLabels and matchExpressions) against `labels`;
/// an absent selector matches nothing, an empty one everything.
fn selects(selector: &Value, labels: &BTreeMap<String, String>) -> bool {
    if let Some(wanted) = selector["matchLabels"].as_object() {
        for (k, v) in wanted {
            if labels.get(k).map(String::as_str) != v.as_str() {
                return false;
            }
        }
    }
    for e in selector["matchExpressions"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let key = e["key"].as_str().unwrap();
        let values: Vec<&str> = e["values"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|v| v.as_str().unwrap())
            .collect();
        let value = labels.get(key).map(String::as_str);
        let ok = match e["operator"].as_str().unwrap() {
            "In" => value.is_some_and(|v| values.contains(&v)),
            "NotIn" => value.is_none_or(|v| !values.contains(&v)),
            "Exists" => value.is_some(),
            "DoesNotExist" => value.is_none(),
            other => panic!("operator {other}"),
        };
        if !ok {
            return false;
        }
    }
    true
}

fn in_cidr(ip: u32, cidr: &str) -> bool {
    let (base, len) = cidr.split_once('/').unwrap();
    let base = u32::from(base.parse::<std::net::Ipv4Addr>().unwrap());
    let len: u32 = len.parse().unwrap();
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    ip & mask == base & mask
}

impl World {
    /// Whether `peer` (one entry of from/to, seen from a policy in
    /// `policy_ns`) stands for pod `other`.
    fn peer_matches(&self, peer: &Value, policy_ns: &str, other: &str) -> bool {
        if let Some(block) = peer.get("ipBlock") {
            let ip = self.ips[other];
            let excepted = block["except"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|e| in_cidr(ip, e.as_str().unwrap()));
            return in_cidr(ip, block["cidr"].as_str().unwrap()) && !excepted;
        }
        let (ns, _) = split(other);
        let ns_ok = match peer.get("namespaceSelector") {
            Some(selector) => selects(selector, &namespace_labels(ns)),
            None => ns == policy_ns,
        };
        let pod_ok = match peer.get("podSelector") {
            Some(selector) => selects(selector, &pod_labels(other)),
            None => true,
        };
        ns_ok && pod_ok
    }

    /// Whether a rule's `ports` admits `port`/`protocol` on pod `server`
    /// (whose named ports are `serve-PORT-PROTO`).
    fn port_matches(ports: &Value, port: u16, protocol: &str) -> bool {
        let Some(list) = ports.as_array().filter(|l| !l.is_empty()) else {
            return true;
        };
        list.iter().any(|p| {
            let proto = p["protocol"].as_str().unwrap_or("TCP");
            if proto != protocol {
                return false;
            }
            match &p["port"] {
                Value::Null => true,
                Value::Number(n) => {
                    let start = n.as_u64().unwrap() as u16;
                    let end = p["endPort"].as_u64().map_or(start, |e| e as u16);
                    (start..=end).contains(&port)
                }
                Value::String(name) => *name == format!("serve-{port}-{}", protocol.to_lowercase()),
                other => panic!("port {other}"),
            }
        })
    }

    /// One direction: `None` when no policy isolates `pod` there, else
    /// whether some rule allows `peer`.
    fn direction(
        &self,
        policies: &[Value],
        pod: &str,
        peer: &str,
        port: u16,
        protocol: &str,
        egress: bool,
    ) -> Option<bool> {
        let (ns, _) = split(pod);
        let (kind, list_key, peers_key) = if egress {
            ("Egress", "egress", "to")
        } else {
            ("Ingress", "ingress", "from")
        };
        let mut isolated = false;
        let mut allowed = false;
        for policy in policies.iter().filter(|p| p["kind"] == "NetworkPolicy") {
            if policy["metadata"]["namespace"]
                .as_str()
                .unwrap_or("default")
                != ns
            {
                continue;
            }
            let spec = &policy["spec"];
            if !selects(&spec["podSelector"], &pod_labels(pod)) {
                continue;
            }
            let types: Vec<&str> = match spec["policyTypes"].as_array() {
                Some(t) => t.iter().map(|v| v.as_str().unwrap()).collect(),
                None if spec.get("egress").is_some() => vec!["Ingress", "Egress"],
                None => vec!["Ingress"],
            };
            if !types.contains(&kind) {
                continue;
            }
            isolated = true;
            for rule in spec[list_key].as_array().into_iter().flatten() {
                let peers = rule[peers_key].as_array().filter(|p| !p.is_empty());
                let peer_ok =
                    peers.is_none_or(|ps| ps.iter().any(|p| self.peer_matches(p, ns, peer)));
                if peer_ok && Self::port_matches(&rule["ports"], port, protocol) {
                    allowed = true;
                }
            }
        }
        isolated.then_some(allowed)
    }

    /// One ClusterNetworkPolicy tier for one direction of `pod`: `Some`
    /// when an Accept (true) or Deny (false) rule matches first, `None`
    /// when none matches or a Pass does.
    fn tier(
        &self,
        policies: &[Value],
        tier: &str,
        pod: &str,
        peer: &str,
        (port, protocol): (u16, &str),
        egress: bool,
    ) -> Option<bool> {
        let (list_key, peers_key) = if egress {
            ("egress", "to")
        } else {
            ("ingress", "from")
        };
        let mut in_tier: Vec<&Value> = policies
            .iter()
            .filter(|p| p["kind"] == "ClusterNetworkPolicy" && p["spec"]["tier"] == tier)
            .collect();
        in_tier.sort_by_key(|p| {
            (
                p["spec"]["priority"].as_i64(),
                p["metadata"]["name"].to_string(),
            )
        });
        for policy in in_tier {
            let spec = &policy["spec"];
            if !self.cluster_peer_matches(&spec["subject"], pod) {
                continue;
            }
            for rule in spec[list_key].as_array().into_iter().flatten() {
                let peers = rule[peers_key].as_array().unwrap();
                if peers.iter().any(|p| self.cluster_peer_matches(p, peer))
                    && Self::protocols_match(&rule["protocols"], port, protocol)
                {
                    return match rule["action"].as_str().unwrap() {
                        "Accept" => Some(true),
                        "Deny" => Some(false),
                        _ => None,
                    };
                }
            }
        }
        None
    }

    /// A ClusterNetworkPolicy subject or peer (namespaces, pods or
    /// networks) against pod `other`.
    fn cluster_peer_matches(&self, peer: &Value, other: &str) -> bool {
        let (ns, _) = split(other);
        if let Some(selector) = peer.get("namespaces") {
            return selects(selector, &namespace_labels(ns));
        }
        if let Some(pods) = peer.get("pods") {
            return selects(&pods["namespaceSelector"], &namespace_labels(ns))
                && selects(&pods["podSelector"], &pod_labels(other));
        }
        let networks = peer["networks"].as_array().unwrap();
        networks
            .iter()
            .any(|n| in_cidr(self.ips[other], n.as_str().unwrap()))
    }

    /// A ClusterNetworkPolicy rule's `protocols` (absent: every one).
    fn protocols_match(protocols: &Value, port: u16, protocol: &str) -> bool {
        let Some(list) = protocols.as_array() else {
            return true;
        };
        list.iter().any(|p| {
            let Some(matched) = p.get(protocol.to_lowercase()) else {
                return false;
            };
            let wanted = &matched["destinationPort"];
            match (wanted["number"].as_u64(), wanted.get("range")) {
                (Some(n), _) => n == u64::from(port),
                (None, Some(range)) => (range["start"].as_u64().unwrap()
                    ..=range["end"].as_u64().unwrap())
                    .contains(&u64::from(port)),
                (None, None) => true,
            }
        })
    }

    /// One direction through the tiers: Admin, NetworkPolicy, Baseline,
    /// then allowed.
    fn decides(
        &self,
        policies: &[Value],
        pod: &str,
        peer: &str,
        (port, protocol): (u16, &str),
        egress: bool,
    ) -> bool {
        self.tier(policies, "Admin", pod, peer, (port, protocol), egress)
            .or_else(|| self.direction(policies, pod, peer, port, protocol, egress))
            .or_else(|| self.tier(policies, "Baseline", pod, peer, (port, protocol), egress))
            .unwrap_or(true)
    }

    fn allows(&self, policies: &[Value], from: &str, to: &str, port: u16, protocol: &str) -> bool {
        self.decides(policies, from, to, (port, protocol), true)
            && self.decides(policies, to, from, (port, protocol), false)
    }
}

// ---------------------------------------------------------- expectations

/// Expected connectivity for one port and protocol, as upstream's
/// `Reachability`: everything allowed to start with, then changed.
#[derive(Clone, PartialEq, Eq)]
struct Reach(BTreeMap<(String, String), bool>);

impl Reach {
    fn all(allowed: bool) -> Reach {
        let pods = all_pods();
        Reach(
            pods.iter()
                .flat_map(|f| pods.iter().map(move |t| ((f.clone(), t.clone()), allowed)))
                .collect(),
        )
    }

    fn matching<'a>(pattern: &'a str) -> impl Fn(&str) -> bool + 'a {
        move |pod: &str| {
            let (ns, name) = split(pod);
            let (pns, pname) = split(pattern);
            (pns == "*" || pns == ns) && (pname == "*" || pname == name)
        }
    }

    /// Sets every pair from `from` to `to` (`ns/pod`, either part `*`).
    fn set(mut self, from: &str, to: &str, allowed: bool) -> Reach {
        let (f, t) = (Self::matching(from), Self::matching(to));
        for ((a, b), v) in self.0.iter_mut() {
            if f(a) && t(b) {
                *v = allowed;
            }
        }
        self
    }

    fn oracle(world: &World, policies: &[Value], port: u16, protocol: &str) -> Reach {
        let mut r = Reach::all(true);
        for ((from, to), v) in r.0.iter_mut() {
            *v = world.allows(policies, from, to, port, protocol);
        }
        r
    }

    /// The pairs (other than a pod to itself) where `self` and `other`
    /// differ.
    fn differences(&self, other: &Reach) -> Vec<String> {
        self.0
            .iter()
            .filter(|((f, t), v)| f != t && other.0[&(f.clone(), t.clone())] != **v)
            .map(|((f, t), v)| {
                format!(
                    "{f} → {t}: expected {}",
                    if *v { "allowed" } else { "denied" }
                )
            })
            .collect()
    }

    fn table(&self) -> String {
        let pods = all_pods();
        let mut s = format!("{:>5}", "");
        for t in &pods {
            s += &format!(" {t:>3}");
        }
        for f in &pods {
            s += &format!("\n{f:>5}");
            for t in &pods {
                let v = self.0[&(f.clone(), t.clone())];
                s += &format!(
                    " {:>3}",
                    if f == t {
                        "."
                    } else if v {
                        "X"
                    } else {
                        "-"
                    }
                );
            }
        }
        s
    }
}

/// Expectations for the four port/protocol combinations.
struct Expected(BTreeMap<(u16, &'static str), Reach>);

impl Expected {
    /// The same matrix on every port and protocol.
    fn everywhere(r: Reach) -> Expected {
        Expected(
            PORTS
                .iter()
                .flat_map(|p| PROTOCOLS.iter().map(move |pr| (*p, *pr)))
                .map(|k| (k, r.clone()))
                .collect(),
        )
    }

    fn with(mut self, port: u16, protocol: &'static str, r: Reach) -> Expected {
        self.0.insert((port, protocol), r);
        self
    }
}

// ------------------------------------------------------------- the lab

const SETUP_PODS: &str = "
  containers:
  - name: cont
    image: x
    ports:
    - {name: serve-80-tcp, containerPort: 80, protocol: TCP}
    - {name: serve-81-tcp, containerPort: 81, protocol: TCP}
    - {name: serve-80-udp, containerPort: 80, protocol: UDP}
    - {name: serve-81-udp, containerPort: 81, protocol: UDP}
";

fn setup(lab: &Lab) -> World {
    let mut manifest = String::new();
    for ns in NAMESPACES {
        manifest += &format!(
            "apiVersion: v1\nkind: Namespace\nmetadata: {{name: {ns}, labels: {{ns: {ns}}}}}\n---\n"
        );
    }
    for pod in all_pods() {
        let (ns, name) = split(&pod);
        manifest += &format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {ns}, labels: {{pod: {name}}}}}\nspec:{SETUP_PODS}---\n"
        );
        manifest += &format!(
            "apiVersion: v1
kind: Service
metadata: {{name: s-{ns}-{name}, namespace: {ns}}}
spec:
  selector: {{pod: {name}}}
  ports:
  - {{name: tcp-80, port: 80, protocol: TCP}}
  - {{name: tcp-81, port: 81, protocol: TCP}}
  - {{name: udp-80, port: 80, protocol: UDP}}
  - {{name: udp-81, port: 81, protocol: UDP}}
---
"
        );
    }
    lab.apply_ok(&manifest);
    let ips = all_pods()
        .into_iter()
        .map(|pod| {
            let ip: std::net::Ipv4Addr = lab
                .pods()
                .iter()
                .find(|p| {
                    p["metadata"]["namespace"] == split(&pod).0
                        && p["metadata"]["name"] == split(&pod).1
                })
                .and_then(|p| p["status"]["podIP"].as_str()?.parse().ok())
                .unwrap_or_else(|| panic!("{pod} has no address"));
            (pod, u32::from(ip))
        })
        .collect();
    World { ips }
}

/// Every pod to every pod's Service on `port`/`protocol`.
fn observe(lab: &Lab, port: u16, protocol: &str) -> Reach {
    let mut args: Vec<String> = vec!["probe".into()];
    for pod in all_pods() {
        let (ns, name) = split(&pod);
        args.extend(["--to".into(), format!("svc/{ns}/s-{ns}-{name}:{port}")]);
    }
    args.extend([
        "--protocol".into(),
        protocol.to_lowercase(),
        "-o".into(),
        "json".into(),
    ]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = lab.weft(&args);
    let json: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("probe output: {e}: {}", common::text(&out.stderr)));
    let mut r = Reach::all(false);
    for cell in json["results"].as_array().unwrap() {
        let from = cell["from"].as_str().unwrap().to_string();
        let to = cell["to"].as_str().unwrap();
        // svc/x/s-x-a:80 → x/a
        let service = to.trim_start_matches("svc/").split(':').next().unwrap();
        let (ns, svc) = split(service);
        let pod = format!("{ns}/{}", svc.rsplit('-').next().unwrap());
        r.0.insert((from, pod), cell["outcome"] == "ok");
    }
    r
}

/// The four matrices, probed side by side.
fn observe_all(lab: &Lab) -> BTreeMap<(u16, &'static str), Reach> {
    std::thread::scope(|s| {
        let handles: Vec<_> = PORTS
            .iter()
            .flat_map(|p| PROTOCOLS.iter().map(move |pr| (*p, *pr)))
            .map(|(port, protocol)| {
                s.spawn(move || ((port, protocol), observe(lab, port, protocol)))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

/// Probes until the matrices match `expected` (policies take effect
/// within moments, not at once) or 10 s have passed; panics with the
/// differences.
fn assert_reach(lab: &Lab, case: &str, expected: &Expected) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let observed = observe_all(lab);
        let mut wrong = Vec::new();
        for (key, want) in &expected.0 {
            let diff = want.differences(&observed[key]);
            if !diff.is_empty() {
                wrong.push(format!(
                    "{}/{}: {}\nexpected:\n{}\nobserved:\n{}",
                    key.0,
                    key.1,
                    diff.join("; "),
                    want.table(),
                    observed[key].table()
                ));
            }
        }
        if wrong.is_empty() {
            return;
        }
        if std::time::Instant::now() > deadline {
            panic!("case {case}:\n{}", wrong.join("\n"));
        }
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
}

/// A NetworkPolicy in `ns` named `name` with `spec`.
fn policy(ns: &str, name: &str, spec: Value) -> Value {
    json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": name, "namespace": ns},
        "spec": spec,
    })
}

fn apply_policies(lab: &Lab, policies: &[Value]) {
    let docs: Vec<String> = policies.iter().map(|p| p.to_string()).collect();
    lab.apply_ok(&docs.join("\n---\n"));
}

fn delete_policies(lab: &Lab, policies: &[Value]) {
    for p in policies {
        let name = p["metadata"]["name"].as_str().unwrap();
        match p["metadata"]["namespace"].as_str() {
            Some(ns) => lab.ok(&["delete", "-n", ns, "networkpolicy", name]),
            None => lab.ok(&["delete", "clusternetworkpolicy", name]),
        };
    }
}

/// A ClusterNetworkPolicy named `name` in `tier` at `priority`, with the
/// rest of its spec in `spec` (subject and rules).
fn cluster_policy(name: &str, tier: &str, priority: u32, mut spec: Value) -> Value {
    spec["tier"] = json!(tier);
    spec["priority"] = json!(priority);
    json!({
        "apiVersion": "policy.networking.k8s.io/v1beta1",
        "kind": "ClusterNetworkPolicy",
        "metadata": {"name": name},
        "spec": spec,
    })
}

/// The namespaces labelled `ns: NAME`, as a selector.
fn ns_is(name: &str) -> Value {
    json!({"matchLabels": {"ns": name}})
}

/// The tiers of ClusterNetworkPolicy around NetworkPolicy: each case's
/// matrix written by hand from the API's documentation.
fn cluster_cases(lab: &Lab, world: &World) {
    let allow_all_in_x = policy(
        "x",
        "allow-all",
        json!({"podSelector": {}, "ingress": [{}]}),
    );
    let deny_y = cluster_policy(
        "deny-y-to-x",
        "Admin",
        20,
        json!({"subject": {"namespaces": ns_is("x")},
               "ingress": [{"action": "Deny", "from": [{"namespaces": ns_is("y")}]}]}),
    );
    case(
        lab,
        world,
        "admin deny that a NetworkPolicy cannot reopen",
        &[allow_all_in_x.clone(), deny_y.clone()],
        Expected::everywhere(Reach::all(true).set("y/*", "x/*", false)),
    );

    // Priority 10 before 20; within a policy, rule order.
    let accept_y_b = cluster_policy(
        "accept-y-b",
        "Admin",
        10,
        json!({"subject": {"namespaces": ns_is("x")},
               "ingress": [
                 {"action": "Accept", "from": [{"pods": {"namespaceSelector": ns_is("y"), "podSelector": {"matchLabels": {"pod": "b"}}}}],
                  "protocols": [{"tcp": {"destinationPort": {"number": 80}}}, {"udp": {"destinationPort": {"range": {"start": 80, "end": 81}}}}]},
                 {"action": "Deny", "from": [{"pods": {"namespaceSelector": ns_is("y"), "podSelector": {"matchLabels": {"pod": "b"}}}}]}]}),
    );
    let y_b_only_some = Reach::all(true)
        .set("y/a", "x/*", false)
        .set("y/c", "x/*", false);
    case(
        lab,
        world,
        "admin priorities and rule order",
        &[deny_y, accept_y_b],
        Expected::everywhere(y_b_only_some.clone().set("y/b", "x/*", false))
            .with(80, "TCP", y_b_only_some.clone())
            .with(80, "UDP", y_b_only_some.clone())
            .with(81, "UDP", y_b_only_some),
    );

    // Admin passes z to NetworkPolicy (which lets only z/a into x/a) and
    // denies the rest; x/b and x/c have no NetworkPolicy, so Baseline
    // decides for them: it denies z/c.
    let pass_z = cluster_policy(
        "pass-z",
        "Admin",
        1,
        json!({"subject": {"namespaces": ns_is("x")},
               "ingress": [{"action": "Pass", "from": [{"namespaces": ns_is("z")}]},
                           {"action": "Deny", "from": [{"namespaces": {}}]}]}),
    );
    let a_from_z_a = policy(
        "x",
        "a-from-z-a",
        json!({"podSelector": {"matchLabels": {"pod": "a"}}, "ingress": [{"from": [
            {"namespaceSelector": ns_is("z"), "podSelector": {"matchLabels": {"pod": "a"}}}]}]}),
    );
    let baseline_deny_c = cluster_policy(
        "baseline-deny-c",
        "Baseline",
        1,
        json!({"subject": {"namespaces": ns_is("x")},
               "ingress": [{"action": "Deny", "from": [{"pods": {"namespaceSelector": {}, "podSelector": {"matchLabels": {"pod": "c"}}}}]}]}),
    );
    case(
        lab,
        world,
        "admin pass to NetworkPolicy, then Baseline",
        &[pass_z, a_from_z_a, baseline_deny_c],
        Expected::everywhere(
            Reach::all(true)
                .set("*/*", "x/*", false)
                .set("z/a", "x/*", true)
                .set("z/b", "x/b", true)
                .set("z/b", "x/c", true),
        ),
    );

    // Baseline denies ingress to x and y; y's NetworkPolicy overrides it
    // for x's pods.
    let baseline_deny = cluster_policy(
        "baseline-deny",
        "Baseline",
        5,
        json!({"subject": {"namespaces": {"matchExpressions": [{"key": "ns", "operator": "In", "values": ["x", "y"]}]}},
               "ingress": [{"action": "Deny", "from": [{"namespaces": {}}]}]}),
    );
    let y_from_x = policy(
        "y",
        "from-x",
        json!({"podSelector": {}, "ingress": [{"from": [{"namespaceSelector": ns_is("x")}]}]}),
    );
    case(
        lab,
        world,
        "a NetworkPolicy overrides a Baseline deny",
        &[baseline_deny, y_from_x],
        Expected::everywhere(
            Reach::all(true)
                .set("*/*", "x/*", false)
                .set("*/*", "y/*", false)
                .set("x/*", "y/*", true),
        ),
    );

    // Egress by networks: z reaches x/a alone (an Accept of its /32 before
    // a Deny of the pod network).
    let x_a = std::net::Ipv4Addr::from(world.ips["x/a"]);
    let z_to_x_a = cluster_policy(
        "z-to-x-a",
        "Admin",
        3,
        json!({"subject": {"namespaces": ns_is("z")},
               "egress": [{"action": "Accept", "to": [{"networks": [format!("{x_a}/32")]}]},
                          {"action": "Deny", "to": [{"networks": ["10.244.0.0/16"]}]}]}),
    );
    case(
        lab,
        world,
        "admin egress to networks",
        &[z_to_x_a],
        Expected::everywhere(
            Reach::all(true)
                .set("z/*", "*/*", false)
                .set("z/*", "x/a", true),
        ),
    );
}

/// Runs a case: applies `policies`, checks the hand-written expectation
/// against the oracle and then against the lab, and deletes them.
fn case(lab: &Lab, world: &World, name: &str, policies: &[Value], expected: Expected) {
    for ((port, protocol), want) in &expected.0 {
        let oracle = Reach::oracle(world, policies, *port, protocol);
        let diff = want.differences(&oracle);
        assert!(
            diff.is_empty(),
            "case {name}: the hand-written matrix and the oracle disagree on {port}/{protocol}: {}",
            diff.join("; ")
        );
    }
    apply_policies(lab, policies);
    assert_reach(lab, name, &expected);
    delete_policies(lab, policies);
}

/// Everything allowed, except that only `from` reach `to`.
fn ingress_only(to: &str, from: &[&str]) -> Reach {
    from.iter()
        .fold(Reach::all(true).set("*/*", to, false), |r, f| {
            r.set(f, to, true)
        })
}

/// Everything allowed, except that `from` reaches only `to`.
fn egress_only(from: &str, to: &[&str]) -> Reach {
    to.iter()
        .fold(Reach::all(true).set(from, "*/*", false), |r, t| {
            r.set(from, t, true)
        })
}

/// Policy `name` in x selecting x/a, with `ingress` rules.
fn x_a_ingress(name: &str, ingress: Value) -> Vec<Value> {
    vec![policy(
        "x",
        name,
        json!({"podSelector": {"matchLabels": {"pod": "a"}}, "ingress": ingress}),
    )]
}

fn upstream_cases(lab: &Lab, world: &World) {
    let allow_all = Reach::all(true);
    let a_closed = ingress_only("x/a", &[]);
    let only_on = |keys: &[(u16, &'static str)]| {
        keys.iter().fold(
            Expected::everywhere(a_closed.clone()),
            |e, (port, protocol)| e.with(*port, protocol, allow_all.clone()),
        )
    };
    let b_ip = std::net::Ipv4Addr::from(world.ips["y/b"]);
    let cases: Vec<(&str, Vec<Value>, Expected)> = vec![
        (
            "default-deny-ingress",
            vec![policy(
                "x",
                "deny-ingress",
                json!({"podSelector": {}, "policyTypes": ["Ingress"]}),
            )],
            Expected::everywhere(allow_all.clone().set("*/*", "x/*", false)),
        ),
        (
            "default-deny-all",
            vec![policy(
                "x",
                "deny-all",
                json!({"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}),
            )],
            Expected::everywhere(
                allow_all
                    .clone()
                    .set("*/*", "x/*", false)
                    .set("x/*", "*/*", false),
            ),
        ),
        (
            "allow-all-ingress",
            vec![policy(
                "x",
                "allow-all",
                json!({"podSelector": {}, "ingress": [{}]}),
            )],
            Expected::everywhere(allow_all.clone()),
        ),
        (
            "allow-x/a-from-x/b",
            x_a_ingress(
                "a-from-b",
                json!([{"from": [{"podSelector": {"matchLabels": {"pod": "b"}}}]}]),
            ),
            Expected::everywhere(ingress_only("x/a", &["x/b"])),
        ),
        (
            "namespace-selector",
            x_a_ingress(
                "a-from-y",
                json!([{"from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}]}]),
            ),
            Expected::everywhere(ingress_only("x/a", &["y/*"])),
        ),
        (
            "pod-and-namespace-selector",
            x_a_ingress(
                "a-from-y-b",
                json!([{"from": [{
                "namespaceSelector": {"matchExpressions": [{"key": "ns", "operator": "In", "values": ["y"]}]},
                "podSelector": {"matchLabels": {"pod": "b"}}}]}]),
            ),
            Expected::everywhere(ingress_only("x/a", &["y/b"])),
        ),
        (
            "peers-are-ored",
            x_a_ingress(
                "a-from-y-or-b",
                json!([{"from": [
                {"namespaceSelector": {"matchLabels": {"ns": "y"}}},
                {"podSelector": {"matchLabels": {"pod": "b"}}}]}]),
            ),
            Expected::everywhere(ingress_only("x/a", &["y/*", "x/b"])),
        ),
        (
            "namespace-not-in",
            x_a_ingress(
                "a-from-elsewhere",
                json!([{"from": [{"namespaceSelector": {"matchExpressions": [
                {"key": "ns", "operator": "NotIn", "values": ["x"]}]}}]}]),
            ),
            Expected::everywhere(ingress_only("x/a", &["y/*", "z/*"])),
        ),
        (
            "default-namespace-label",
            x_a_ingress(
                "a-from-z",
                json!([{"from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "z"}}}]}]),
            ),
            Expected::everywhere(ingress_only("x/a", &["z/*"])),
        ),
        (
            "any-namespace-pod-c",
            x_a_ingress(
                "a-from-any-c",
                json!([{"from": [{"namespaceSelector": {}, "podSelector": {"matchLabels": {"pod": "c"}}}]}]),
            ),
            Expected::everywhere(ingress_only("x/a", &["*/c"])),
        ),
        (
            "port-81-only",
            x_a_ingress("a-on-81", json!([{"ports": [{"port": 81}]}])),
            only_on(&[(81, "TCP")]),
        ),
        (
            "named-port-udp",
            x_a_ingress(
                "a-on-serve-81-udp",
                json!([{"ports": [{"port": "serve-81-udp", "protocol": "UDP"}]}]),
            ),
            only_on(&[(81, "UDP")]),
        ),
        (
            "end-port",
            x_a_ingress(
                "a-on-80-to-81",
                json!([{"ports": [{"port": 80, "endPort": 81, "protocol": "TCP"}]}]),
            ),
            only_on(&[(80, "TCP"), (81, "TCP")]),
        ),
        (
            "protocol-only",
            x_a_ingress("a-any-udp", json!([{"ports": [{"protocol": "UDP"}]}])),
            only_on(&[(80, "UDP"), (81, "UDP")]),
        ),
        (
            "sctp-is-not-tcp",
            x_a_ingress(
                "a-sctp",
                json!([{"ports": [{"port": 80, "protocol": "SCTP"}]}]),
            ),
            only_on(&[]),
        ),
        (
            "egress-to-x/b",
            vec![policy(
                "x",
                "a-to-b",
                json!({"podSelector": {"matchLabels": {"pod": "a"}}, "policyTypes": ["Egress"],
                "egress": [{"to": [{"podSelector": {"matchLabels": {"pod": "b"}}}]}]}),
            )],
            Expected::everywhere(egress_only("x/a", &["x/b"])),
        ),
        (
            "egress-denied-although-ingress-allowed",
            vec![
                policy(
                    "x",
                    "a-no-egress",
                    json!({"podSelector": {"matchLabels": {"pod": "a"}}, "policyTypes": ["Egress"]}),
                ),
                policy(
                    "y",
                    "allow-all",
                    json!({"podSelector": {}, "ingress": [{}]}),
                ),
            ],
            Expected::everywhere(egress_only("x/a", &[])),
        ),
        (
            "egress-ip-block-except",
            vec![policy(
                "x",
                "a-to-block",
                json!({"podSelector": {"matchLabels": {"pod": "a"}}, "policyTypes": ["Egress"],
                "egress": [{"to": [{"ipBlock": {"cidr": "10.244.0.0/16", "except": [format!("{b_ip}/32")]}}]}]}),
            )],
            Expected::everywhere(allow_all.clone().set("x/a", "y/b", false)),
        ),
        (
            "policies-add-up",
            [
                vec![policy(
                    "x",
                    "deny-ingress",
                    json!({"podSelector": {}, "policyTypes": ["Ingress"]}),
                )],
                x_a_ingress(
                    "a-from-y",
                    json!([{"from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}]}]),
                ),
            ]
            .concat(),
            Expected::everywhere(
                allow_all
                    .clone()
                    .set("*/*", "x/*", false)
                    .set("y/*", "x/a", true),
            ),
        ),
    ];
    for (name, policies, expected) in cases {
        case(lab, world, name, &policies, expected);
    }

    // An update takes effect; a delete reopens.
    let from_y = x_a_ingress(
        "changing",
        json!([{"from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}]}]),
    );
    let from_b = x_a_ingress(
        "changing",
        json!([{"from": [{"namespaceSelector": {}, "podSelector": {"matchLabels": {"pod": "b"}}}]}]),
    );
    apply_policies(lab, &from_y);
    assert_reach(
        lab,
        "update: before",
        &Expected::everywhere(ingress_only("x/a", &["y/*"])),
    );
    apply_policies(lab, &from_b);
    assert_reach(
        lab,
        "update: after",
        &Expected::everywhere(ingress_only("x/a", &["*/b"])),
    );
    delete_policies(lab, &from_b);
    assert_reach(lab, "update: deleted", &Expected::everywhere(allow_all));
}

// ------------------------------------------------------ generated cases

/// A small deterministic generator (no dependency, same cases every run).
struct Lcg(u64);

impl Lcg {
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        &items[((self.0 >> 33) % items.len() as u64) as usize]
    }
}

fn generated_policy(rng: &mut Lcg, world: &World, index: usize) -> Value {
    let targets = [
        json!({}),
        json!({"matchLabels": {"pod": "a"}}),
        json!({"matchExpressions": [{"key": "pod", "operator": "In", "values": ["a", "b"]}]}),
        json!({"matchExpressions": [{"key": "pod", "operator": "NotIn", "values": ["c"]}]}),
    ];
    let c_ip = std::net::Ipv4Addr::from(world.ips["z/c"]);
    let peers = [
        json!(null),
        json!([{"podSelector": {"matchLabels": {"pod": "b"}}}]),
        json!([{"namespaceSelector": {"matchLabels": {"ns": "y"}}}]),
        json!([{"namespaceSelector": {"matchLabels": {"ns": "z"}}, "podSelector": {"matchLabels": {"pod": "c"}}}]),
        json!([{"namespaceSelector": {}}]),
        json!([{"namespaceSelector": {"matchExpressions": [{"key": "ns", "operator": "Exists"}]},
                "podSelector": {"matchExpressions": [{"key": "pod", "operator": "DoesNotExist"}]}}]),
        json!([{"ipBlock": {"cidr": "10.244.0.0/16", "except": [format!("{c_ip}/32")]}}]),
        json!([{"podSelector": {"matchLabels": {"pod": "a"}}}, {"namespaceSelector": {"matchLabels": {"ns": "x"}}}]),
    ];
    let ports = [
        json!(null),
        json!([{"port": 80}]),
        json!([{"port": 81, "protocol": "UDP"}]),
        json!([{"port": "serve-80-udp", "protocol": "UDP"}]),
        json!([{"port": "serve-81-tcp"}]),
        json!([{"port": 80, "endPort": 81}]),
        json!([{"protocol": "UDP"}]),
        json!([{"port": 80, "protocol": "SCTP"}]),
    ];
    let directions = [vec!["Ingress"], vec!["Egress"], vec!["Ingress", "Egress"]];
    let ns = *rng.pick(&NAMESPACES);
    let types = rng.pick(&directions).clone();
    let mut spec = json!({"podSelector": rng.pick(&targets).clone(), "policyTypes": types});
    for (kind, peers_key) in [("Ingress", "from"), ("Egress", "to")] {
        if !types.contains(&kind) {
            continue;
        }
        let rules: Vec<Value> = (0..*rng.pick(&[0usize, 1, 1, 2]))
            .map(|_| {
                let mut rule = json!({});
                let p = rng.pick(&peers);
                if !p.is_null() {
                    rule[peers_key] = p.clone();
                }
                let ports = rng.pick(&ports);
                if !ports.is_null() {
                    rule["ports"] = ports.clone();
                }
                rule
            })
            .collect();
        spec[kind.to_lowercase()] = Value::Array(rules);
    }
    policy(ns, &format!("generated-{index}"), spec)
}

/// A ClusterNetworkPolicy of either tier with one to three rules per
/// direction, of every action, peer kind and protocol form.
fn generated_cluster_policy(rng: &mut Lcg, world: &World, index: usize) -> Value {
    let pods =
        |ns: Value, pod: Value| json!({"pods": {"namespaceSelector": ns, "podSelector": pod}});
    let subjects = [
        json!({"namespaces": {}}),
        json!({"namespaces": ns_is("x")}),
        pods(json!({}), json!({"matchLabels": {"pod": "a"}})),
        pods(
            json!({"matchExpressions": [{"key": "ns", "operator": "In", "values": ["y", "z"]}]}),
            json!({"matchExpressions": [{"key": "pod", "operator": "NotIn", "values": ["c"]}]}),
        ),
    ];
    let ip = |pod: &str| format!("{}/32", std::net::Ipv4Addr::from(world.ips[pod]));
    let peers = [
        json!({"namespaces": {}}),
        json!({"namespaces": ns_is("z")}),
        pods(json!({}), json!({"matchLabels": {"pod": "b"}})),
        pods(ns_is("y"), json!({"matchLabels": {"pod": "a"}})),
    ];
    let networks = [
        json!({"networks": [ip("x/a"), ip("z/c")]}),
        json!({"networks": ["10.244.0.0/16"]}),
    ];
    let protocols = [
        json!(null),
        json!([{"tcp": {"destinationPort": {"number": 80}}}]),
        json!([{"udp": {"destinationPort": {"range": {"start": 80, "end": 81}}}}]),
        json!([{"tcp": {"destinationPort": {"number": 81}}}, {"udp": {"destinationPort": {"number": 80}}}]),
    ];
    let tier = *rng.pick(&["Admin", "Baseline"]);
    let priority = *rng.pick(&[1u32, 5, 5, 9]);
    let mut spec = json!({"subject": rng.pick(&subjects).clone()});
    for (direction, peers_key) in rng.pick(&[
        vec![("ingress", "from")],
        vec![("egress", "to")],
        vec![("ingress", "from"), ("egress", "to")],
    ]) {
        let rules: Vec<Value> = (0..*rng.pick(&[1usize, 2, 3]))
            .map(|_| {
                let mut choices: Vec<&Value> = peers.iter().collect();
                if *direction == "egress" {
                    choices.extend(&networks);
                }
                let mut rule = json!({
                    "action": rng.pick(&["Accept", "Deny", "Pass"]),
                    *peers_key: [*rng.pick(&choices)],
                });
                let protocols = rng.pick(&protocols);
                if !protocols.is_null() {
                    rule["protocols"] = protocols.clone();
                }
                rule
            })
            .collect();
        spec[*direction] = Value::Array(rules);
    }
    cluster_policy(&format!("generated-{index}"), tier, priority, spec)
}

/// Cases of one or two generated ClusterNetworkPolicies and at most one
/// NetworkPolicy, checked against the oracle alone.
fn generated_cluster_cases(lab: &Lab, world: &World, count: usize) {
    let mut rng = Lcg(0xc1_2026);
    let mut denying = 0;
    for i in 0..count {
        let mut policies: Vec<Value> = (0..*rng.pick(&[1usize, 2]))
            .map(|j| generated_cluster_policy(&mut rng, world, i * 10 + j))
            .collect();
        if *rng.pick(&[true, false]) {
            policies.push(generated_policy(&mut rng, world, i * 10 + 5));
        }
        let case = format!("generated cluster-wide {i}");
        denying += usize::from(generated_case(lab, world, &case, &policies) > 0);
    }
    // A generator whose cases deny nothing would test nothing.
    assert!(
        denying * 2 >= count,
        "only {denying} of {count} cases deny anything"
    );
}

fn generated_cases(lab: &Lab, world: &World, count: usize) {
    let mut rng = Lcg(0x5eed_2026);
    for i in 0..count {
        let policies: Vec<Value> = (0..*rng.pick(&[1usize, 2, 3]))
            .map(|j| generated_policy(&mut rng, world, i * 10 + j))
            .collect();
        generated_case(lab, world, &format!("generated {i}"), &policies);
    }
}

/// Applies `policies`, checks every matrix against the oracle, and
/// deletes them; returns how many probes the oracle expected denied.
fn generated_case(lab: &Lab, world: &World, case: &str, policies: &[Value]) -> usize {
    let expected = Expected(
        PORTS
            .iter()
            .flat_map(|p| PROTOCOLS.iter().map(move |pr| (*p, *pr)))
            .map(|(port, protocol)| {
                (
                    (port, protocol),
                    Reach::oracle(world, policies, port, protocol),
                )
            })
            .collect(),
    );
    let name = format!(
        "{case}: {}",
        serde_json::to_string(&policies.iter().map(|p| &p["spec"]).collect::<Vec<_>>()).unwrap()
    );
    apply_policies(lab, policies);
    assert_reach(lab, &name, &expected);
    delete_policies(lab, policies);
    let denied = (expected.0.values())
        .flat_map(|r| r.0.iter())
        .filter(|((from, to), allowed)| from != to && !**allowed)
        .count();
    eprintln!("{case}: {denied} of the 288 probes (4 × 72) denied");
    denied
}

/// The upstream cases, the ClusterNetworkPolicy tiers' cases, 12
/// generated NetworkPolicy cases and 8 generated cluster-wide ones, on
/// two nodes (so that ingress and egress are enforced by different
/// agents for most pairs).
#[rstest]
#[case::embedded(Mode::Embedded)]
#[case::kubernetes(Mode::Kubernetes)]
fn the_upstream_matrix_and_generated_cases_hold(#[case] mode: Mode) {
    let lab = Lab::up_in(mode, "npmx", 2, "vxlan");
    let world = setup(&lab);
    assert_reach(&lab, "no policies", &Expected::everywhere(Reach::all(true)));
    upstream_cases(&lab, &world);
    cluster_cases(&lab, &world);
    generated_cases(&lab, &world, 12);
    generated_cluster_cases(&lab, &world, 8);
}
