//! weft's etcd client over TLS with client certificates (`--etcd-cafile`,
//! `--etcd-certfile`, `--etcd-keyfile`), against the peers' etcd serving
//! clients only over mutual TLS, in a namespace of the test's own: with the
//! CA and a client certificate weft leases a subnet; without the client
//! certificate, or trusting another CA, it is refused with a message
//! naming etcd (and, for the CA, the flag to fix). The keys are made here with openssl (ECDSA P-256).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::control_plane::peer;
use common::kube_node::{ip, Process};
use common::lease_request;
use weft_cluster::etcd::{Etcd, EtcdConfig};
use weft_cluster::SubnetManager;
use weft_datapath::scratch::Namespaces;

const URL: &str = "https://127.0.0.1:2379";

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("running openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// openssl's arguments for a new ECDSA P-256 key, unencrypted.
const NEW_KEY: [&str; 5] = [
    "-newkey",
    "ec",
    "-pkeyopt",
    "ec_paramgen_curve:prime256v1",
    "-nodes",
];

/// A CA `<ca>.crt`/`.key` in `dir`.
fn make_ca(dir: &Path, ca: &str) {
    let (crt, key) = (format!("{ca}.crt"), format!("{ca}.key"));
    let rest = [
        "-keyout",
        &key,
        "-out",
        &crt,
        "-subj",
        "/CN=weft-test-ca",
        "-days",
        "1",
    ];
    openssl(dir, &[&["req", "-x509"], &NEW_KEY[..], &rest].concat());
}

/// `<name>.crt`/`.key` in `dir`, signed by CA `ca`, with extensions `ext`.
fn make_cert(dir: &Path, ca: &str, name: &str, ext: &str) {
    let file = |suffix: &str| format!("{name}.{suffix}");
    let subject = format!("/CN={name}");
    let request = [
        "-keyout",
        &file("key"),
        "-out",
        &file("csr"),
        "-subj",
        &subject,
    ];
    openssl(dir, &[&["req"], &NEW_KEY[..], &request].concat());
    std::fs::write(dir.join(file("ext")), ext).unwrap();
    let (ca_crt, ca_key) = (format!("{ca}.crt"), format!("{ca}.key"));
    let sign = [
        "x509",
        "-req",
        "-in",
        &file("csr"),
        "-CA",
        &ca_crt,
        "-CAkey",
        &ca_key,
        "-CAcreateserial",
        "-out",
        &file("crt"),
        "-days",
        "1",
        "-extfile",
        &file("ext"),
    ];
    openssl(dir, &sign);
}

fn config(dir: &Path, ca: &str, client: Option<&str>) -> EtcdConfig {
    let file = |name: String| -> Option<PathBuf> { Some(dir.join(name)) };
    EtcdConfig {
        endpoints: vec![URL.into()],
        prefix: "/coreos.com/network".into(),
        ca_file: file(format!("{ca}.crt")),
        cert_file: client.and_then(|c| file(format!("{c}.crt"))),
        key_file: client.and_then(|c| file(format!("{c}.key"))),
    }
}

/// Leases a subnet through `config`; the error's text when it cannot.
async fn lease(config: &EtcdConfig) -> Result<String, String> {
    let etcd = Etcd::connect(config).await.map_err(|e| e.to_string())?;
    let pool: ipnet::IpNet = "10.244.0.0/16".parse().unwrap();
    let first_free =
        |taken: &[ipnet::IpNet]| pool.subnets(24).unwrap().find(|s| !taken.contains(s));
    etcd.acquire(&lease_request("node-a", "198.18.0.11"), first_free)
        .await
        .map(|lease| lease.subnet.to_string())
        .map_err(|e| e.to_string())
}

#[test]
fn leases_go_through_etcd_over_mutual_tls() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    make_ca(d, "ca");
    make_ca(d, "other-ca");
    make_cert(
        d,
        "ca",
        "server",
        "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
    );
    make_cert(d, "ca", "client", "extendedKeyUsage=clientAuth\n");
    let mut scratch = Namespaces::new("etls");
    let (ns_name, ns) = scratch.add("etcd");
    ip(&ns_name, &["link", "set", "lo", "up"]);
    let file = |name: &str| d.join(name).display().to_string();
    let log = std::fs::File::create(d.join("etcd.log")).unwrap();
    let _etcd = Process(
        ns.command(peer("etcd"))
            .args([
                format!("--data-dir={}", file("etcd")),
                format!("--listen-client-urls={URL}"),
                format!("--advertise-client-urls={URL}"),
                "--listen-peer-urls=http://127.0.0.1:2380".into(),
                "--initial-advertise-peer-urls=http://127.0.0.1:2380".into(),
                "--initial-cluster=default=http://127.0.0.1:2380".into(),
                format!("--cert-file={}", file("server.crt")),
                format!("--key-file={}", file("server.key")),
                format!("--trusted-ca-file={}", file("ca.crt")),
                "--client-cert-auth".into(),
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting etcd"),
    );
    let etcd_log = || std::fs::read_to_string(d.join("etcd.log")).unwrap_or_default();
    ns.run_in(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            // etcd takes a moment to serve.
            let started = Instant::now();
            let leased = loop {
                match lease(&config(d, "ca", Some("client"))).await {
                    Ok(subnet) => break subnet,
                    Err(e) if started.elapsed() > Duration::from_secs(20) => {
                        panic!("no lease over TLS: {e}\n{}", etcd_log())
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            };
            assert_eq!(leased, "10.244.0.0/24");
            // Without a client certificate TLS 1.3 may end in etcd's alert
            // (then the message says what to give) or in a closed
            // connection; either way it is refused.
            for (why, config, hint) in [
                ("no client certificate", config(d, "ca", None), ""),
                (
                    "another CA trusted",
                    config(d, "other-ca", Some("client")),
                    "--etcd-cafile",
                ),
            ] {
                let refused = lease(&config).await.expect_err(why);
                assert!(
                    refused.starts_with("etcd: ") && refused.contains(hint),
                    "{why}: {refused}"
                );
            }
        });
    })
    .unwrap();
}
