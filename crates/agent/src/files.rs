//! The files the agent hands to the CNI plugin: flannel's `subnet.env` and
//! the node's CNI conflist (weft-cni reading that subnet.env), both written
//! atomically so the plugin never reads half a file, and rewritten whenever
//! they are found missing or changed.

use std::path::Path;

use serde_json::{json, Value};

/// The node's CNI configuration, in the CNI config directory.
pub const CONFLIST: &str = "10-weft.conflist";

/// What the conflist tells weft-cni.
pub struct CniPlugin<'a> {
    pub network: &'a str,
    pub subnet_file: &'a Path,
    pub ipam_dir: &'a Path,
    pub host_local_dir: Option<&'a Path>,
    pub policy_socket: Option<&'a Path>,
}

/// The node's conflist: weft-cni on bridge `cni0` with its subnet from the
/// subnet file. Masquerade stays with the agent (FLANNEL_IPMASQ=true).
pub fn conflist(plugin: &CniPlugin) -> Value {
    let mut conflist = json!({
        "cniVersion": "1.1.0",
        "name": plugin.network,
        "plugins": [{
            "type": "weft-cni",
            "bridge": "cni0",
            "hairpinMode": true,
            "isDefaultGateway": true,
            "ipam": {"subnetFile": plugin.subnet_file, "dataDir": plugin.ipam_dir},
            "capabilities": {"portMappings": true, "ips": true, "mac": true}
        }]
    });
    if let Some(dir) = plugin.host_local_dir {
        conflist["plugins"][0]["ipam"]["hostLocalDir"] = json!(dir);
    }
    if let Some(socket) = plugin.policy_socket {
        conflist["plugins"][0]["policySocket"] = json!(socket);
    }
    conflist
}

/// Makes `path` hold exactly `data`, writing it only when it is missing or
/// differs; whether it wrote. Called on every resync pass, so a deleted or
/// edited file comes back.
pub fn ensure(path: &Path, data: &[u8]) -> std::io::Result<bool> {
    match std::fs::read(path) {
        Ok(current) if current == data => Ok(false),
        Ok(_) => write_atomically(path, data).map(|()| true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            write_atomically(path, data).map(|()| true)
        }
        Err(e) => Err(e),
    }
}

/// Writes `data` to `path` through a temporary file and a rename.
pub fn write_atomically(path: &Path, data: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, data)?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conflist_points_weft_cni_at_the_subnet_file() {
        let c = conflist(&CniPlugin {
            network: "weft",
            subnet_file: Path::new("/run/weft/subnet.env"),
            ipam_dir: Path::new("/var/lib/cni/weft"),
            host_local_dir: Some(Path::new("/var/lib/cni/networks/cbr0")),
            policy_socket: Some(Path::new("/run/weft/policy.sock")),
        });
        assert_eq!(c["plugins"][0]["type"], "weft-cni");
        assert_eq!(c["plugins"][0]["policySocket"], "/run/weft/policy.sock");
        assert_eq!(
            c["plugins"][0]["ipam"]["hostLocalDir"],
            "/var/lib/cni/networks/cbr0"
        );
        assert_eq!(
            c["plugins"][0]["ipam"]["subnetFile"],
            "/run/weft/subnet.env"
        );
    }

    #[test]
    fn ensure_writes_only_missing_or_different_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("net.d/10-weft.conflist");
        assert!(ensure(&p, b"one").unwrap());
        assert!(!ensure(&p, b"one").unwrap());
        std::fs::write(&p, b"edited").unwrap();
        assert!(ensure(&p, b"one").unwrap());
        assert_eq!(std::fs::read(&p).unwrap(), b"one");
        std::fs::remove_file(&p).unwrap();
        assert!(ensure(&p, b"one").unwrap());
        assert_eq!(std::fs::read(&p).unwrap(), b"one");
    }

    #[test]
    fn atomic_write_replaces_whole_files() {
        let dir = std::env::temp_dir().join(format!("weft-files-{}", std::process::id()));
        let p = dir.join("a/b.env");
        write_atomically(&p, b"one").unwrap();
        write_atomically(&p, b"two").unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "two");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
