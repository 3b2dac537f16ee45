//! The lab under hostile input and faults: names that try to escape the
//! lab's directory or smuggle CNI arguments, manifests the API server
//! would refuse, concurrent applies, commands killed mid-way, a failing
//! container, `down` racing an apply. Each test runs its own lab and
//! checks that nothing is left outside it.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{text, wait_until, Lab};

/// PIDs of live processes the lab tagged as its own (agents, containers).
fn lab_processes(lab: &Lab) -> Vec<u32> {
    let tag = format!("WEFT_LAB_OWNER={}/", lab.name);
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let zombie = stat
                .rsplit(')')
                .next()
                .is_some_and(|r| r.trim_start().starts_with('Z'));
            !zombie
                && std::fs::read(format!("/proc/{pid}/environ")).is_ok_and(|env| {
                    env.split(|b| *b == 0)
                        .any(|kv| kv.starts_with(tag.as_bytes()))
                })
        })
        .collect()
}

fn pod_namespaces(lab: &Lab) -> usize {
    let prefix = format!("wl-{}-pod-", lab.name);
    std::fs::read_dir("/run/netns")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
                .count()
        })
        .unwrap_or(0)
}

fn pods_manifest(prefix: &str, n: usize) -> String {
    (0..n)
        .map(|i| {
            format!(
                "apiVersion: v1\nkind: Pod\nmetadata: {{name: {prefix}{i}}}\nspec:\n  containers: [{{name: c, image: x, ports: [{{containerPort: 8080}}]}}]\n"
            )
        })
        .collect::<Vec<_>>()
        .join("---\n")
}

/// Reservations weft-cni holds on every node (one file per address).
fn reserved_addresses(lab: &Lab) -> usize {
    let nodes = Path::new("/run/weft/labs").join(&lab.name).join("nodes");
    let mut n = 0;
    for node in std::fs::read_dir(&nodes).unwrap().flatten() {
        let ipam = node.path().join("ipam");
        for net in std::fs::read_dir(&ipam).into_iter().flatten().flatten() {
            n += std::fs::read_dir(net.path().join("ips"))
                .into_iter()
                .flatten()
                .flatten()
                .filter(|f| {
                    f.file_name()
                        .to_string_lossy()
                        .parse::<std::net::IpAddr>()
                        .is_ok()
                })
                .count();
        }
    }
    n
}

#[test]
fn hostile_names_and_invalid_manifests_change_nothing() {
    let lab = Lab::up("hn", 1, "vxlan");
    let escape = format!("/tmp/weft-escape-{}", std::process::id());
    let _ = std::fs::remove_dir_all(&escape);
    std::fs::create_dir_all(&escape).unwrap();
    std::fs::write(format!("{escape}/keep"), "x").unwrap();
    let manifest = format!(
        "apiVersion: v1\nkind: Namespace\nmetadata: {{name: fresh}}\n---\n\
         apiVersion: v1\nkind: Pod\nmetadata: {{name: ok, namespace: fresh}}\nspec: {{containers: [{{name: c, image: x}}]}}\n---\n\
         apiVersion: v1\nkind: Pod\nmetadata: {{name: \"/../../../../../..{escape}\"}}\nspec: {{containers: [{{name: c, image: x}}]}}\n---\n\
         apiVersion: v1\nkind: Pod\nmetadata: {{name: logs}}\nspec: {{containers: [{{name: ../../../../../..{escape}/c, image: x}}]}}\n---\n\
         apiVersion: v1\nkind: Pod\nmetadata: {{name: \"inj;IP=10.244.1.200\"}}\nspec: {{containers: [{{name: c, image: x}}]}}\n"
    );
    let err = lab.apply_fails(&manifest);
    assert!(err.contains("nothing changed"), "{err}");
    assert!(err.contains("document 3"), "{err}");
    assert!(err.contains("spec.containers[0].name"), "{err}");
    assert!(err.contains("inj;IP=10.244.1.200"), "{err}");
    assert!(
        Path::new(&format!("{escape}/keep")).exists(),
        "the escape target was touched"
    );
    assert!(lab.pods().is_empty(), "nothing may be applied");
    let err = lab.apply_fails(&pods_manifest("Upper", 1));
    assert!(err.contains("metadata.name"), "{err}");
    let long = format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {}}}\nspec: {{containers: [{{name: c, image: x}}]}}\n",
        "a".repeat(300)
    );
    assert!(lab
        .apply_fails(&long)
        .contains("no more than 253 characters"));
    let err = lab.apply_fails(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: nowhere}\nspec: {containers: [{name: c, image: x}]}\n",
    );
    assert!(err.contains("namespace \"nowhere\" not found"), "{err}");
    // `delete pod` and `logs` with a hostile name never reach the file system.
    let err = lab.fails(&["delete", "pod", &format!("/../../../../../..{escape}")]);
    assert!(err.contains("invalid"), "{err}");
    assert!(Path::new(&format!("{escape}/keep")).exists());
    lab.apply_ok(&pods_manifest("fine", 1));
    let err = lab.fails(&["logs", "fine0", "-c", "../../../../etc/passwd"]);
    assert!(err.contains("no container"), "{err}");
    std::fs::remove_dir_all(&escape).unwrap();
}

#[test]
fn node_names_are_checked_and_a_failed_add_leaves_no_ghost() {
    let lab = Lab::up("nn", 1, "vxlan");
    let nodes = Path::new("/run/weft/labs").join(&lab.name).join("nodes");
    for bad in ["", "..", "a/b", "Node", "external"] {
        let err = lab.fails(&["node", "add", bad]);
        assert!(err.contains("invalid"), "{bad:?}: {err}");
        let err = lab.fails(&["node", "remove", bad]);
        assert!(err.contains("invalid"), "{bad:?}: {err}");
    }
    assert!(
        nodes.join("node-1/subnet.env").is_file(),
        "node files must stay"
    );
    lab.ok(&["node", "add", "node-2"]);
    assert!(nodes.join("node-2/subnet.env").is_file());
    let nodes_json = lab.json(&["get", "nodes", "-o", "json"]);
    assert_eq!(nodes_json["items"].as_array().unwrap().len(), 2);
}

#[test]
fn concurrent_applies_start_each_pod_once_and_delete_leaves_nothing() {
    let lab = Lab::up("ca", 2, "vxlan");
    let manifest = pods_manifest("p", 30);
    let a = lab.apply_started(&manifest);
    let b = lab.apply_started(&manifest);
    for child in [a, b] {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", text(&out.stderr));
    }
    assert_eq!(lab.pods().len(), 30);
    assert_eq!(pod_namespaces(&lab), 30, "one sandbox per pod");
    // Two agents, and per pod one container with its supervisor.
    assert_eq!(lab_processes(&lab).len(), 2 + 2 * 30);
    assert_eq!(reserved_addresses(&lab), 30);
    let file = std::env::temp_dir().join(format!("weft-ca-{}.yaml", std::process::id()));
    std::fs::write(&file, &manifest).unwrap();
    lab.ok(&["delete", "-f", file.to_str().unwrap()]);
    std::fs::remove_file(&file).unwrap();
    assert!(lab.pods().is_empty());
    assert_eq!(pod_namespaces(&lab), 0);
    assert_eq!(lab_processes(&lab).len(), 2);
    assert_eq!(reserved_addresses(&lab), 0);
}

#[test]
fn crashing_containers_are_restarted_with_back_off_as_their_restart_policy_says() {
    let lab = Lab::up("cl", 1, "vxlan");
    lab.apply_ok(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: crash, labels: {app: crash}}\nspec:\n  containers:\n  - {name: web, image: x, ports: [{containerPort: 8080}]}\n  - {name: dies, image: x, command: [sh, -c, 'sleep 0.3; exit 3']}\n---\n\
         apiVersion: v1\nkind: Pod\nmetadata: {name: once}\nspec:\n  restartPolicy: OnFailure\n  containers: [{name: c, image: x, command: [sh, -c, 'exit 0']}]\n---\n\
         apiVersion: v1\nkind: Service\nmetadata: {name: crash}\nspec:\n  selector: {app: crash}\n  ports: [{port: 80, targetPort: 8080}]\n",
    );
    let pod = |name: &str| lab.pod(name);
    let dies = |p: &serde_json::Value| p["status"]["containerStatuses"][1].clone();
    // Restarted at once after the first crash (restartCount 1), then
    // backing off 10 s after the second.
    let backing_off = wait_until(Duration::from_secs(10), || {
        dies(&pod("crash"))["state"]["waiting"]["reason"] == "CrashLoopBackOff"
    });
    assert!(backing_off.is_some(), "{:#}", pod("crash"));
    let status = dies(&pod("crash"));
    assert_eq!(status["restartCount"], 1, "{status:#}");
    assert_eq!(
        status["lastState"]["terminated"]["exitCode"], 3,
        "{status:#}"
    );
    assert_eq!(status["ready"], false);
    let table = lab.ok(&["get", "pods"]);
    let line = table.lines().find(|l| l.contains("crash")).unwrap();
    assert!(
        line.contains("1/2") && line.contains("CrashLoopBackOff 1 "),
        "{table}"
    );
    // Meanwhile the pod is not a ready endpoint of its Service.
    let slices = lab.json(&["get", "endpointslices", "-o", "json"]);
    let crash_endpoints: Vec<&serde_json::Value> = slices["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["metadata"]["labels"]["kubernetes.io/service-name"] == "crash")
        .flat_map(|s| s["endpoints"].as_array().into_iter().flatten())
        .collect();
    assert_eq!(crash_endpoints.len(), 1, "{slices:#}");
    assert_eq!(
        crash_endpoints[0]["conditions"]["ready"], false,
        "{slices:#}"
    );
    // OnFailure: a clean exit is the end.
    let once = pod("once");
    assert_eq!(once["status"]["phase"], "Succeeded", "{once:#}");
    assert_eq!(once["status"]["containerStatuses"][0]["restartCount"], 0);
    // Deleting a pod stops its supervisors, back-off or not.
    lab.ok(&["delete", "pod", "crash"]);
    lab.ok(&["delete", "pod", "once"]);
    assert_eq!(lab_processes(&lab).len(), 1, "only the agent is left");
}

#[test]
fn probes_decide_readiness_and_a_failing_liveness_probe_restarts_the_container() {
    let lab = Lab::up("pr", 1, "vxlan");
    let flags = tempfile::tempdir().unwrap();
    let ready_flag = flags.path().join("ready");
    let manifest = format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: gated, labels: {{app: gated}}}}\nspec:\n  containers:\n  - name: web\n    image: x\n    ports: [{{name: http, containerPort: 8080}}]\n    startupProbe: {{httpGet: {{port: http, path: /healthz}}, periodSeconds: 1}}\n    readinessProbe: {{exec: {{command: [test, -e, {ready}]}}, periodSeconds: 1, failureThreshold: 1}}\n---\n\
         apiVersion: v1\nkind: Pod\nmetadata: {{name: dying}}\nspec:\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: web\n    image: x\n    ports: [{{containerPort: 8080}}]\n    livenessProbe: {{tcpSocket: {{port: 9999}}, periodSeconds: 1, failureThreshold: 2}}\n---\n\
         apiVersion: v1\nkind: Service\nmetadata: {{name: gated}}\nspec:\n  selector: {{app: gated}}\n  ports: [{{port: 80, targetPort: 8080}}]\n",
        ready = ready_flag.display()
    );
    lab.apply_ok(&manifest);
    let pod = |name: &str| lab.pod(name);
    let web_ready = |name: &str| pod(name)["status"]["containerStatuses"][0]["ready"] == true;
    let endpoint_ready = || {
        let slices = lab.json(&["get", "endpointslices", "-o", "json"]);
        slices["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s["metadata"]["labels"]["kubernetes.io/service-name"] == "gated")
            .flat_map(|s| s["endpoints"].as_array().into_iter().flatten())
            .any(|e| e["conditions"]["ready"] == true)
    };
    // Started, but its readiness probe fails: not ready, not an endpoint.
    std::thread::sleep(Duration::from_millis(2500));
    assert!(!web_ready("gated"), "{:#}", pod("gated"));
    assert!(!endpoint_ready());
    std::fs::write(&ready_flag, "").unwrap();
    let ready = wait_until(Duration::from_secs(5), || {
        web_ready("gated") && endpoint_ready()
    });
    assert!(ready.is_some(), "{:#}", pod("gated"));
    std::fs::remove_file(&ready_flag).unwrap();
    let unready = wait_until(Duration::from_secs(5), || {
        !web_ready("gated") && !endpoint_ready()
    });
    assert!(unready.is_some(), "{:#}", pod("gated"));
    assert_eq!(
        pod("gated")["status"]["containerStatuses"][0]["restartCount"],
        0
    );

    // Nothing listens on 9999: two failed liveness probes stop the
    // container, which is restarted (Always) and says why in its log.
    let restarted = wait_until(Duration::from_secs(15), || {
        pod("dying")["status"]["containerStatuses"][0]["restartCount"].as_i64() >= Some(1)
    });
    assert!(restarted.is_some(), "{:#}", pod("dying"));
    let logs = lab.ok(&["logs", "dying"]);
    assert!(logs.contains("Liveness probe failed: dial tcp"), "{logs}");
    let last = &pod("dying")["status"]["containerStatuses"][0]["lastState"]["terminated"];
    assert_eq!(last["exitCode"], 143, "SIGTERM: {last:#}");
    // A probe weft cannot run is refused with the reason.
    let err = lab.apply_fails(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: grpc}\nspec:\n  containers:\n  - {name: c, image: x, readinessProbe: {grpc: {port: 9000}}}\n",
    );
    assert!(err.contains("container c: readinessProbe: needs one of exec, httpGet or tcpSocket (grpc is not supported)"), "{err}");
    lab.ok(&["delete", "pod", "gated"]);
    lab.ok(&["delete", "pod", "dying"]);
    assert_eq!(lab_processes(&lab).len(), 1, "only the agent is left");
}

#[test]
fn a_pod_whose_second_container_cannot_start_is_rolled_back() {
    let lab = Lab::up("rb", 1, "vxlan");
    let err = lab.apply_fails(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: half}\nspec:\n  containers:\n  - {name: first, image: x, ports: [{containerPort: 8080}]}\n  - {name: second, image: x, command: [/nonexistent/program]}\n",
    );
    assert!(err.contains("starting container second"), "{err}");
    assert!(err.contains("0 of 1 objects applied"), "{err}");
    assert!(lab.pods().is_empty());
    assert_eq!(pod_namespaces(&lab), 0);
    assert_eq!(lab_processes(&lab).len(), 1, "only the agent may run");
    assert_eq!(reserved_addresses(&lab), 0, "the address is released");
    assert!(!Path::new("/run/weft/labs")
        .join(&lab.name)
        .join("pods/default_half")
        .exists());
}

#[test]
fn down_stops_everything_even_after_a_killed_apply_and_a_deleted_store() {
    let lab = Lab::up("kd", 2, "vxlan");
    let mut child = lab.apply_started(&pods_manifest("k", 40));
    // Kill the apply while it is starting pods.
    wait_until(Duration::from_secs(20), || pod_namespaces(&lab) >= 3)
        .expect("the apply starts pods");
    child.kill().unwrap();
    child.wait().unwrap();
    std::fs::remove_file(Path::new("/run/weft/labs").join(&lab.name).join("store.db")).unwrap();
    assert!(lab_processes(&lab).len() > 2);
    lab.ok(&["down"]);
    assert_eq!(lab_processes(&lab), Vec::<u32>::new());
    assert_eq!(pod_namespaces(&lab), 0);
    assert!(!Path::new("/run/weft/labs").join(&lab.name).exists());
}

#[test]
fn down_during_an_apply_stops_the_apply() {
    let lab = Lab::up("da", 1, "vxlan");
    let child = lab.apply_started(&pods_manifest("d", 60));
    wait_until(Duration::from_secs(20), || pod_namespaces(&lab) >= 2)
        .expect("the apply starts pods");
    lab.ok(&["down"]);
    let out = child.wait_with_output().unwrap();
    assert!(
        !out.status.success(),
        "the apply must notice the lab going down"
    );
    assert!(
        text(&out.stderr).contains("taken down") || text(&out.stderr).contains("no lab"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(lab_processes(&lab), Vec::<u32>::new());
    assert_eq!(pod_namespaces(&lab), 0);
}

#[test]
fn ended_containers_show_in_pod_status_and_leave_the_endpoints() {
    let lab = Lab::up("hs", 1, "vxlan");
    // `holder` owns port 9090 of node-1 before `clash` tries to serve it.
    lab.apply_ok(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: holder}\nspec:\n  hostNetwork: true\n  nodeName: node-1\n  containers: [{name: c, image: x, ports: [{containerPort: 9090}]}]\n",
    );
    lab.apply_ok(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: clash, labels: {app: clash}}\nspec:\n  restartPolicy: Never\n  hostNetwork: true\n  nodeName: node-1\n  containers:\n  - {name: a, image: x, ports: [{containerPort: 9091}]}\n  - {name: b, image: x, ports: [{containerPort: 9090}]}\n---\n\
         apiVersion: v1\nkind: Pod\nmetadata: {name: quits}\nspec:\n  restartPolicy: Never\n  containers: [{name: c, image: x, command: [sh, -c, 'exit 3']}]\n---\n\
         apiVersion: v1\nkind: Service\nmetadata: {name: clash}\nspec:\n  selector: {app: clash}\n  ports: [{port: 80, targetPort: 9091}]\n",
    );
    let pod = |name: &str| lab.pod(name);
    let terminated = |p: &serde_json::Value, container: &str| {
        p["status"]["containerStatuses"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == container)
            .unwrap()["state"]["terminated"]
            .clone()
    };
    wait_until(Duration::from_secs(10), || {
        pod("quits")["status"]["phase"] == "Failed" && !terminated(&pod("clash"), "b").is_null()
    })
    .expect("ended containers are recorded");
    let quits = pod("quits");
    assert_eq!(terminated(&quits, "c")["exitCode"], 3);
    assert_eq!(terminated(&quits, "c")["reason"], "Error");
    let clash = pod("clash");
    assert_ne!(terminated(&clash, "b")["exitCode"], 0);
    assert!(terminated(&clash, "a").is_null(), "a still runs");
    assert_eq!(clash["status"]["phase"], "Running");
    let ready = clash["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Ready")
        .unwrap()["status"]
        .clone();
    assert_eq!(ready, "False");
    let table = lab.ok(&["get", "pods"]);
    let line = table.lines().find(|l| l.contains("quits")).unwrap();
    assert!(line.contains("0/1") && line.contains("Error"), "{table}");
    let slices = lab.json(&["get", "endpointslices", "-o", "json"]);
    let endpoints: Vec<&serde_json::Value> = slices["items"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| s["endpoints"].as_array().into_iter().flatten())
        .collect();
    assert_eq!(endpoints.len(), 1, "{slices:#}");
    assert_eq!(endpoints[0]["conditions"]["ready"], false, "{slices:#}");
    // Deleting a pod records nothing: the supervisor is stopped with it.
    lab.ok(&["delete", "pod", "clash"]);
    assert!(lab.pods().iter().all(|p| p["metadata"]["name"] != "clash"));
    lab.ok(&["delete", "pod", "holder"]);
    assert_eq!(lab_processes(&lab).len(), 1, "only the agent is left");
}
