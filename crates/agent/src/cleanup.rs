//! `weft agent --cleanup`: removes what the agent put on this node, as
//! `kube-proxy --cleanup` does — its VXLAN devices, including one taken
//! over from flanneld (their neighbours and FDB entries go with them), its
//! routes (tagged with weft's route protocol), its nftables tables
//! (masquerade, Service proxy, NetworkPolicy) and the files it wrote for
//! the CNI plugin. It leaves weft-cni's per-pod rules (pods still running
//! need them; the plugin removes them at DEL) and its lease (the cluster's
//! record, released by removing the node).

use std::fmt;
use std::path::{Path, PathBuf};

use weft_datapath::netlink::{Link, WEFT_ROUTE_PROTOCOL};
use weft_datapath::nft::{self, Family};
use weft_datapath::nft_script::Script;
use weft_datapath::Netlink;

use crate::masq;

/// What a cleanup removed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Removed {
    pub links: Vec<String>,
    pub routes: usize,
    pub tables: Vec<String>,
    pub files: Vec<PathBuf>,
}

impl fmt::Display for Removed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let files: Vec<String> = self.files.iter().map(|p| p.display().to_string()).collect();
        let list = |items: &[String]| match items {
            [] => "none".to_string(),
            items => items.join(", "),
        };
        write!(
            f,
            "removed devices: {}; routes: {}; nftables tables: {}; files: {}",
            list(&self.links),
            self.routes,
            list(&self.tables),
            list(&files)
        )
    }
}

/// The agent's tables: masquerade, the Service proxy's and NetworkPolicy's.
const TABLES: [(Family, &str); 3] = [
    (Family::Inet, masq::TABLE),
    (Family::Ip, weft_proxy::table::TABLE),
    (Family::Ip, weft_policy::rules::TABLE),
];

/// Whether `link` is a VXLAN device the agent makes (`weft.<VNI>`) or
/// took over from flanneld (marked so; a node's flanneld keeps its own).
fn is_agent_device(link: &Link) -> bool {
    let weft_named = link
        .name
        .strip_prefix("weft.")
        .is_some_and(|vni| !vni.is_empty() && vni.chars().all(|c| c.is_ascii_digit()));
    weft_named || crate::takeover::is_adopted(link)
}

/// Removes it all; what was not there is no error.
pub async fn cleanup(
    subnet_file: &Path,
    cni_conf_dir: &Path,
    policy_socket: Option<&Path>,
) -> anyhow::Result<Removed> {
    let netlink = Netlink::connect()?;
    let mut removed = Removed::default();
    for v6 in [false, true] {
        for route in netlink.routes(v6).await? {
            if route.protocol == Some(WEFT_ROUTE_PROTOCOL) {
                netlink.delete_route(&route).await?;
                removed.routes += 1;
            }
        }
    }
    for link in netlink.links().await? {
        if is_agent_device(&link) && netlink.delete_link(&link.name).await? {
            removed.links.push(link.name);
        }
    }
    for (family, table) in TABLES {
        if !nft::chain_names(family, table)?.is_empty() {
            let mut script = Script::new(family, table);
            script.delete_table();
            nft::apply(script.as_str(), None)?;
            removed.tables.push(format!("{} {table}", family.word()));
        }
    }
    let files = [
        subnet_file.to_owned(),
        cni_conf_dir.join(crate::files::CONFLIST),
    ];
    // The socket, and the addresses of starting pods kept beside it.
    let policy_files = policy_socket
        .into_iter()
        .flat_map(|s| [s.to_owned(), s.with_extension("started.json")]);
    for file in files.into_iter().chain(policy_files) {
        match std::fs::remove_file(&file) {
            Ok(()) => removed.files.push(file),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(anyhow::Error::new(e).context(format!("removing {}", file.display())))
            }
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_agents_own_devices_are_its_own() {
        let link = |name: &str, alias: Option<&str>| Link {
            index: 3,
            name: name.into(),
            mac: None,
            mtu: None,
            up: true,
            controller: None,
            kind: Some("vxlan".into()),
            vxlan: None,
            alias: alias.map(String::from),
        };
        assert!(is_agent_device(&link("weft.1", None)));
        assert!(is_agent_device(&link("weft.4096", None)));
        let adopted = Some(crate::takeover::ADOPTED_ALIAS);
        assert!(is_agent_device(&link("flannel.1", adopted)));
        assert!(!is_agent_device(&link("flannel.1", None)), "flanneld's own");
        for other in ["weft.", "weft.x", "weft-cni0", "weft", "eth0"] {
            assert!(!is_agent_device(&link(other, None)), "{other}");
        }
    }

    #[test]
    fn the_report_names_what_went() {
        let removed = Removed {
            links: vec!["weft.1".into()],
            routes: 2,
            tables: vec!["inet weft".into()],
            files: vec!["/run/weft/subnet.env".into()],
        };
        assert_eq!(
            removed.to_string(),
            "removed devices: weft.1; routes: 2; nftables tables: inet weft; files: /run/weft/subnet.env"
        );
        assert!(Removed::default().to_string().contains("devices: none"));
    }
}
