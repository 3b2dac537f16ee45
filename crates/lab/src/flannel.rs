//! flannel nodes in a lab whose control plane is Kubernetes (`weft lab up
//! --network flannel`, `weft lab node add NAME --network flannel`): the
//! real flanneld v0.28.9 from the peers cache in the node's namespace, as
//! kube-flannel runs it (`--ip-masq`, `EnableNFTables`), keeping its lease
//! in the lab's API server (`--kube-subnet-mgr`) or in the lab's etcd
//! (flannel's layout, `--subnet-store etcd`); and kube-flannel's CNI
//! configuration on the node.
//!
//! flannel's CNI plugin (github.com/flannel-io/cni-plugin) is not served
//! by the Go module proxy, so the lab's kubelet does what that plugin does
//! for a pod ([`delegate`]): it reads flanneld's subnet.env and runs the
//! reference bridge plugin (v1.10.0) with host-local on that subnet. This
//! module does not wire pods itself, nor touch weft's nodes.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use weft_datapath::NetNs;
use weft_ipam::SubnetEnv;

use crate::layout::{LabState, Layout, SubnetStore};
use crate::{agents, control_plane, kube_control_plane, procs};

/// flannel's etcd prefix (its default).
pub const ETCD_PREFIX: &str = "/coreos.com/network";
/// The node's CNI configuration, as kube-flannel's install-cni writes it.
pub const CONFLIST: &str = "10-flannel.conflist";

/// The lab's etcd, as the nodes reach it.
pub fn etcd_endpoint(state: &LabState) -> String {
    format!("http://{}:2379", state.control_plane_ip())
}

/// The network config flanneld reads: the lab's, with nftables (so that
/// nothing needs iptables).
pub fn net_conf(state: &LabState) -> Value {
    json!({
        "Network": state.pod_cidr,
        "SubnetLen": crate::layout::SUBNET_LEN,
        "Backend": {"Type": state.backend},
        "EnableNFTables": true,
    })
}

/// Starts flanneld on `node` (in `ns`); its PID. Its log is the node's
/// agent.log, its process owned as an agent's, so the lab stops, restarts
/// and reports it as any node's network agent.
pub fn start(layout: &Layout, state: &LabState, node: &str, ns: &NetNs) -> Result<u32> {
    let flanneld = control_plane::peer("flannel")?;
    let dir = layout.node_dir(node);
    std::fs::create_dir_all(dir.join("net.d"))?;
    std::fs::write(
        dir.join("net.d").join(CONFLIST),
        serde_json::to_string_pretty(&conflist(&dir))?,
    )?;
    // flanneld does not turn forwarding on; a node's setup does.
    ns.run_in(|| weft_datapath::sysctl::ensure("net/ipv4/ip_forward", "1"))??;
    let mut args = vec![
        "--iface=eth0".to_string(),
        "--ip-masq".into(),
        format!("--subnet-file={}", dir.join("subnet.env").display()),
    ];
    match state.subnet_store {
        SubnetStore::Cluster => {
            let net_conf = dir.join("flannel-net-conf.json");
            std::fs::write(&net_conf, net_conf_text(state)?)?;
            let kubeconfig = kube_control_plane::admin_kubeconfig_in_lab(layout, state)?;
            args.extend([
                "--kube-subnet-mgr".into(),
                format!("--kubeconfig-file={}", kubeconfig.display()),
                format!("--net-config-path={}", net_conf.display()),
            ]);
        }
        SubnetStore::Etcd => args.extend([
            format!("--etcd-endpoints={}", etcd_endpoint(state)),
            format!("--etcd-prefix={ETCD_PREFIX}"),
        ]),
    }
    let pid = procs::spawn_with_env(
        Some(ns),
        &flanneld,
        &args,
        &[("NODE_NAME", node)],
        &agents::owner(layout, node),
        &dir.join("agent.log"),
    )?;
    Ok(pid)
}

fn net_conf_text(state: &LabState) -> Result<String> {
    Ok(serde_json::to_string_pretty(&net_conf(state))?)
}

/// Puts the network config into the lab's etcd, for flanneld's and weft's
/// etcd mode; etcd may still be starting (tried for up to 30 s).
pub fn put_etcd_config(layout: &Layout, state: &LabState) -> Result<()> {
    let key = format!("{ETCD_PREFIX}/config");
    let text = net_conf_text(state)?;
    with_etcd(layout, |mut client| async move {
        client.put(key.as_str(), text.as_str(), None).await?;
        Ok(())
    })
    .context("writing the network config into the lab's etcd")
}

/// Deletes the etcd lease of the node whose files are in `node_dir` (the
/// subnet in its subnet.env), as removing its Node does in the other
/// store; a node that never held one has nothing to delete.
pub fn release_etcd_lease(layout: &Layout, node_dir: &Path) -> Result<()> {
    let Some(subnet) = agents::held_subnet(node_dir) else {
        return Ok(());
    };
    let key = weft_cluster::etcd::subnet_key(ETCD_PREFIX, subnet);
    with_etcd(layout, |mut client| async move {
        client.delete(key.as_str(), None).await?;
        Ok(())
    })
    .context("deleting the node's lease from the lab's etcd")
}

/// Runs `work` with a client of the lab's etcd, from inside the control
/// plane's namespace (the host has no route into the lab), on a thread of
/// its own; connecting is retried for up to 30 s while etcd starts.
fn with_etcd<F, Fut>(layout: &Layout, work: F) -> Result<()>
where
    F: FnOnce(etcd_client::Client) -> Fut + Send,
    Fut: std::future::Future<Output = Result<(), etcd_client::Error>>,
{
    let ns = NetNs::open(weft_datapath::netns::named_path(&layout.control_plane_ns()))?;
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                ns.run_in(|| {
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()?;
                    runtime.block_on(async {
                        let client = connect_within(Duration::from_secs(30)).await?;
                        work(client).await.map_err(anyhow::Error::from)
                    })
                })?
            })
            .join()
            .map_err(|_| anyhow::anyhow!("the etcd client thread panicked"))?
    })
}

async fn connect_within(limit: Duration) -> Result<etcd_client::Client> {
    let started = Instant::now();
    loop {
        match etcd_client::Client::connect([control_plane::ETCD_CLIENT_URL], None).await {
            Ok(client) => return Ok(client),
            Err(e) if started.elapsed() > limit => {
                bail!(
                    "connecting to etcd at {}: {e}",
                    control_plane::ETCD_CLIENT_URL
                )
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// kube-flannel's CNI configuration for a node whose files are in
/// `node_dir`: the flannel plugin, then portmap; host-local's state in
/// `<node_dir>/ipam` (network `cbr0`, where weft's agents look for it).
pub fn conflist(node_dir: &Path) -> Value {
    json!({
        "name": "cbr0",
        "cniVersion": "0.3.1",
        "plugins": [
            {
                "type": "flannel",
                "subnetFile": node_dir.join("subnet.env"),
                "delegate": {"hairpinMode": true, "isDefaultGateway": true},
                "ipam": {"dataDir": node_dir.join("ipam")}
            },
            {"type": "portmap", "capabilities": {"portMappings": true}}
        ]
    })
}

/// What flannel's CNI plugin runs for a pod: its delegate (the reference
/// bridge plugin) and that plugin's configuration, from the flannel
/// plugin's configuration `conf` and flanneld's subnet.env.
pub fn delegate(conf: &Value) -> Result<(PathBuf, Value)> {
    let subnet_file = conf["subnetFile"]
        .as_str()
        .unwrap_or("/run/flannel/subnet.env");
    let env = SubnetEnv::read(Path::new(subnet_file))?;
    let bridge = control_plane::reference_cni_plugin("bridge")?;
    Ok((bridge, delegate_conf(conf, &env)?))
}

/// The bridge plugin's configuration flannel's CNI plugin derives (its
/// delegate's settings win; then subnet.env's subnet, network, MTU and
/// masquerade choice).
fn delegate_conf(conf: &Value, env: &SubnetEnv) -> Result<Value> {
    let (Some(subnet), Some(network)) = (env.subnet, env.network) else {
        bail!("flanneld's subnet.env has no FLANNEL_SUBNET or FLANNEL_NETWORK yet");
    };
    let mut ipam = json!({
        "type": "host-local",
        "ranges": [[{"subnet": subnet.trunc().to_string()}]],
        "routes": [{"dst": network.to_string()}],
    });
    if let Some(extra) = conf["ipam"].as_object() {
        for (key, value) in extra {
            ipam[key] = value.clone();
        }
    }
    let mut delegate = json!({
        "type": "bridge",
        "isGateway": true,
        "ipMasq": !env.ipmasq.unwrap_or(false),
        "mtu": env.mtu.context("flanneld's subnet.env has no FLANNEL_MTU")?,
    });
    if let Some(own) = conf["delegate"].as_object() {
        for (key, value) in own {
            delegate[key] = value.clone();
        }
    }
    delegate["name"] = conf["name"].clone();
    delegate["cniVersion"] = conf["cniVersion"].clone();
    delegate["ipam"] = ipam;
    Ok(delegate)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_delegate_is_the_bridge_on_flanneld_subnet() {
        let env = SubnetEnv::parse(
            "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.3.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n",
            Path::new("subnet.env"),
        )
        .unwrap();
        let mut conf = conflist(Path::new("/run/weft/labs/x/nodes/node-1"))["plugins"][0].clone();
        conf["name"] = json!("cbr0");
        conf["cniVersion"] = json!("0.3.1");
        let d = delegate_conf(&conf, &env).unwrap();
        assert_eq!(d["type"], "bridge");
        assert_eq!(d["name"], "cbr0");
        assert_eq!(d["mtu"], 1450);
        assert_eq!(d["ipMasq"], false, "flanneld masquerades (--ip-masq)");
        assert_eq!(d["isGateway"], true);
        assert_eq!(d["isDefaultGateway"], true);
        assert_eq!(d["hairpinMode"], true);
        assert_eq!(d["ipam"]["ranges"][0][0]["subnet"], "10.244.3.0/24");
        assert_eq!(d["ipam"]["routes"][0]["dst"], "10.244.0.0/16");
        assert_eq!(d["ipam"]["dataDir"], "/run/weft/labs/x/nodes/node-1/ipam");
        let no_mtu = SubnetEnv::parse(
            "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.3.1/24\n",
            Path::new("subnet.env"),
        )
        .unwrap();
        assert!(delegate_conf(&conf, &no_mtu).is_err());
    }
}
