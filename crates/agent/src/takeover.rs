//! Taking a node over from flanneld, node by node, without cutting its
//! pods off. flanneld leaves behind, when it stops: its VXLAN device
//! `flannel.<VNI>` (holding the VNI and port that weft's device needs),
//! routes through that device or the underlay, its nftables tables, its
//! CNI configuration and subnet.env; its pods keep running on `cni0` with
//! host-local addresses.
//!
//! - flanneld's device becomes weft's, MAC and all (marked with the alias
//!   [`ADOPTED_ALIAS`], so that `--cleanup` removes it and no other): its routes, neighbours
//!   and FDB entries carry traffic until weft's reconciler replaces them
//!   with its own (route replacement is atomic), and the other nodes'
//!   entries for this node stay right while its lease changes hands.
//!   host-gw routes to the same destinations are replaced the same way.
//! - flannel's CNI configuration is removed, so that the runtime wires new
//!   pods with weft-cni (it takes the first configuration by name, and
//!   `10-flannel.conflist` sorts before `10-weft.conflist`).
//! - flanneld's nftables tables are deleted once weft's masquerade is in
//!   place. Its iptables rules (flannel's default, `EnableNFTables` off)
//!   are not touched: weft does not program iptables (see
//!   docs/migrate-from-flannel.md).
//!
//! This module owns only what flanneld made; the bridge and the pods'
//! addresses are weft-cni's (which honours host-local's reservations).

use std::path::{Path, PathBuf};

use serde_json::Value;
use weft_datapath::netlink::Link;
use weft_datapath::nft::{self, Family, NftError};
use weft_datapath::nft_script::Script;

use crate::config::vxlan_device_name;

/// flanneld's VXLAN device for `vni`; none where the name would not fit
/// Linux's 15 characters (VNIs of 8 digits), so flanneld cannot have made
/// one.
pub fn flannel_device(vni: u32) -> Option<String> {
    Some(format!("flannel.{vni}")).filter(|name| name.len() <= MAX_LINK_NAME)
}

/// The longest name Linux gives a link.
const MAX_LINK_NAME: usize = libc::IFNAMSIZ - 1;

/// The alias of a device taken over from flanneld: what says, on the node
/// and to `weft agent --cleanup`, that it is weft's now.
pub const ADOPTED_ALIAS: &str = "weft: taken over from flanneld";

/// Whether `link` is a flanneld device weft took over.
pub fn is_adopted(link: &Link) -> bool {
    link.alias.as_deref() == Some(ADOPTED_ALIAS)
}

/// flanneld's nftables tables (`EnableNFTables: true`).
const FLANNEL_TABLES: [(Family, &str); 2] =
    [(Family::Ip, "flannel-ipv4"), (Family::Ip6, "flannel-ipv6")];

/// Removes flannel's CNI configuration from `dir` (kube-flannel's
/// `10-flannel.conflist`, or any other naming the `flannel` plugin): a
/// runtime uses the first configuration by name, and flannel's sorts
/// before weft's. The files removed.
pub fn remove_flannel_cni_config(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let entries = match std::fs::read_dir(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        entries => entries?,
    };
    let mut removed = Vec::new();
    for entry in entries {
        let path = entry?.path();
        let is_config = path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| matches!(e, "conf" | "conflist" | "json"));
        if !is_config || !path.is_file() {
            continue;
        }
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        if names_flannel_plugin(&text) {
            std::fs::remove_file(&path)?;
            tracing::info!(path = %path.display(), "removed flannel's CNI configuration");
            removed.push(path);
        }
    }
    Ok(removed)
}

/// Whether a CNI configuration (a conflist, or a single plugin's conf)
/// runs the `flannel` plugin.
fn names_flannel_plugin(text: &str) -> bool {
    let Ok(conf) = serde_json::from_str::<Value>(text) else {
        return false;
    };
    let is_flannel = |plugin: &Value| plugin["type"] == "flannel";
    is_flannel(&conf)
        || conf["plugins"]
            .as_array()
            .is_some_and(|plugins| plugins.iter().any(is_flannel))
}

/// The VXLAN device the node goes on with, and the VTEP MAC to announce:
/// weft's own (after a restart), else flanneld's (`flannel.<VNI>`, taken
/// over as it is), else a new `weft.<VNI>` with `derived`. Keeping the
/// device keeps the routes, neighbours and FDB entries on it, so not a
/// packet is lost while weft replaces them with its own; keeping its MAC
/// keeps the other nodes' entries for this node right.
pub fn vxlan_device(
    own: Option<&Link>,
    flannels: Option<&Link>,
    vni: u32,
    derived: Vec<u8>,
) -> (String, Vec<u8>) {
    own.into_iter()
        .chain(flannels)
        .find_map(|link| {
            let mac = link.mac.clone().filter(|mac| mac.len() == 6)?;
            Some((link.name.clone(), mac))
        })
        .unwrap_or_else(|| (vxlan_device_name(vni), derived))
}

/// Deletes flanneld's nftables tables; the ones it deleted.
pub fn remove_flannel_tables() -> Result<Vec<String>, NftError> {
    let mut removed = Vec::new();
    for (family, table) in FLANNEL_TABLES {
        if !nft::table_exists(family, table)? {
            continue;
        }
        let mut script = Script::new(family, table);
        script.delete_table();
        if let Err(e) = nft::apply(script.as_str(), None) {
            // flanneld, stopping, may have deleted it in between.
            if nft::table_exists(family, table)? {
                return Err(e);
            }
            continue;
        }
        let name = format!("{} {table}", family.word());
        tracing::info!(table = %name, "removed flanneld's nftables table");
        removed.push(name);
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(name: &str, mac: Option<Vec<u8>>) -> Link {
        Link {
            index: 7,
            name: name.into(),
            mac,
            mtu: None,
            up: true,
            controller: None,
            kind: Some("vxlan".into()),
            vxlan: None,
            alias: None,
        }
    }

    #[test]
    fn the_device_already_on_the_node_is_kept_with_its_mac() {
        let derived = vec![0x0a, 0, 0, 0, 0, 1];
        let own = link("weft.1", Some(vec![0x0a, 0, 0, 0, 0, 2]));
        let flannels = link("flannel.1", Some(vec![0x0a, 0, 0, 0, 0, 3]));
        let chosen = |own, flannels| vxlan_device(own, flannels, 1, derived.clone());
        let of = |link: &Link| (link.name.clone(), link.mac.clone().unwrap());
        assert_eq!(chosen(Some(&own), Some(&flannels)), of(&own));
        assert_eq!(chosen(None, Some(&flannels)), of(&flannels));
        assert_eq!(chosen(None, None), ("weft.1".to_string(), derived.clone()));
        let without_mac = link("flannel.1", None);
        assert_eq!(chosen(None, Some(&without_mac)).0, "weft.1");
    }

    #[test]
    fn flannels_cni_configuration_and_only_it_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        let kube_flannel = r#"{"name": "cbr0", "cniVersion": "0.3.1", "plugins": [
            {"type": "flannel", "delegate": {"hairpinMode": true, "isDefaultGateway": true}},
            {"type": "portmap", "capabilities": {"portMappings": true}}]}"#;
        let files = [
            ("10-flannel.conflist", kube_flannel),
            ("05-old.conf", r#"{"name": "cbr0", "type": "flannel"}"#),
            (
                "10-weft.conflist",
                r#"{"name": "weft", "plugins": [{"type": "weft-cni"}]}"#,
            ),
            ("20-other.conflist", "not json"),
            ("flannel.txt", kube_flannel),
        ];
        for (name, text) in files {
            std::fs::write(dir.path().join(name), text).unwrap();
        }
        let mut removed = remove_flannel_cni_config(dir.path()).unwrap();
        removed.sort();
        let names: Vec<_> = removed.iter().map(|p| p.file_name().unwrap()).collect();
        assert_eq!(names, ["05-old.conf", "10-flannel.conflist"]);
        for kept in ["10-weft.conflist", "20-other.conflist", "flannel.txt"] {
            assert!(dir.path().join(kept).exists(), "{kept}");
        }
        assert!(remove_flannel_cni_config(&dir.path().join("missing"))
            .unwrap()
            .is_empty());
    }

    #[test]
    fn flannels_device_is_named_by_its_vni_where_the_name_fits() {
        assert_eq!(flannel_device(1).as_deref(), Some("flannel.1"));
        assert_eq!(
            flannel_device(9_999_999).as_deref(),
            Some("flannel.9999999")
        );
        assert_eq!(flannel_device(16_777_215), None, "the largest VNI");
    }
}
