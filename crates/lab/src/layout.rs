//! Where a lab lives: its namespaces' names and its files under
//! `/run/weft/labs/<lab>/`, plus the small state file that records the lab's
//! shape. Names are derived from the lab's name, so several labs run side
//! by side without touching each other.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

pub const LABS_DIR: &str = "/run/weft/labs";
/// The network every node's `eth0` sits on (RFC 2544 benchmarking space).
pub const DEFAULT_UNDERLAY: &str = "198.18.0.0/24";
pub const DEFAULT_POD_CIDR: &str = "10.244.0.0/16";

#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    #[error("lab name {0:?} is invalid: use 1-12 lowercase letters, digits and '-'")]
    BadName(String),
    #[error("no lab named {0:?} is running (see `weft lab status`)")]
    NoLab(String),
    #[error("cannot read or write lab state {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("lab state {path} is damaged: {source}")]
    Json {
        path: PathBuf,
        source: serde_json::Error,
    },
}

/// One node of a lab as recorded in its state file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct NodeRecord {
    pub name: String,
    pub ip: Ipv4Addr,
    /// The index of the node's port on the underlay bridge (`n<index>`).
    pub index: u32,
    pub agent_pid: Option<u32>,
}

/// The lab's shape, persisted across `weft lab` invocations.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LabState {
    pub name: String,
    pub backend: String,
    pub pod_cidr: String,
    pub underlay: Ipv4Net,
    pub nodes: Vec<NodeRecord>,
}

impl LabState {
    /// The next free underlay address and bridge-port index.
    pub fn next_slot(&self) -> (u32, Ipv4Addr) {
        let index = self
            .nodes
            .iter()
            .map(|n| n.index)
            .max()
            .map_or(1, |i| i + 1);
        let base = u32::from(self.underlay.network());
        (index, Ipv4Addr::from(base + 10 + index))
    }

    pub fn node(&self, name: &str) -> Option<&NodeRecord> {
        self.nodes.iter().find(|n| n.name == name)
    }
}

/// Names and paths of one lab.
#[derive(Debug, Clone)]
pub struct Layout {
    pub lab: String,
    pub root: PathBuf,
}

impl Layout {
    pub fn new(lab: &str) -> Result<Self, LayoutError> {
        let ok = !lab.is_empty()
            && lab.len() <= 12
            && lab
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if !ok {
            return Err(LayoutError::BadName(lab.into()));
        }
        Ok(Self {
            lab: lab.into(),
            root: Path::new(LABS_DIR).join(lab),
        })
    }

    pub fn underlay_ns(&self) -> String {
        format!("wl-{}-underlay", self.lab)
    }
    pub fn node_ns(&self, node: &str) -> String {
        format!("wl-{}-{node}", self.lab)
    }
    pub fn pod_ns(&self, uid: &str) -> String {
        format!("wl-{}-pod-{}", self.lab, &uid[..uid.len().min(12)])
    }
    /// Every namespace of this lab starts with this.
    pub fn ns_prefix(&self) -> String {
        format!("wl-{}-", self.lab)
    }
    pub fn store(&self) -> PathBuf {
        self.root.join("store.db")
    }
    pub fn net_conf(&self) -> PathBuf {
        self.root.join("net-conf.json")
    }
    pub fn node_dir(&self, node: &str) -> PathBuf {
        self.root.join("nodes").join(node)
    }
    pub fn pod_dir(&self, namespace: &str, pod: &str) -> PathBuf {
        self.root.join("pods").join(format!("{namespace}_{pod}"))
    }
    fn state_file(&self) -> PathBuf {
        self.root.join("lab.json")
    }

    pub fn load(&self) -> Result<LabState, LayoutError> {
        let path = self.state_file();
        let text = std::fs::read_to_string(&path).map_err(|source| match source.kind() {
            std::io::ErrorKind::NotFound => LayoutError::NoLab(self.lab.clone()),
            _ => LayoutError::Io {
                path: path.clone(),
                source,
            },
        })?;
        serde_json::from_str(&text).map_err(|source| LayoutError::Json { path, source })
    }

    pub fn save(&self, state: &LabState) -> Result<(), LayoutError> {
        let path = self.state_file();
        let io = |source| LayoutError::Io {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(&self.root).map_err(io)?;
        let text = serde_json::to_string_pretty(state).map_err(|source| LayoutError::Json {
            path: path.clone(),
            source,
        })?;
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, text).map_err(io)?;
        std::fs::rename(&tmp, &path).map_err(io)
    }
}

/// Names of the labs that have a state directory.
pub fn labs() -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(LABS_DIR)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_and_derived() {
        assert!(Layout::new("Bad_Name").is_err());
        assert!(Layout::new("waytoolongname").is_err());
        let l = Layout::new("demo").unwrap();
        assert_eq!(l.node_ns("node-1"), "wl-demo-node-1");
        assert!(l.pod_ns("0123456789abcdef").starts_with(&l.ns_prefix()));
    }

    #[test]
    fn slots_follow_the_underlay() {
        let mut s = LabState {
            name: "x".into(),
            backend: "vxlan".into(),
            pod_cidr: DEFAULT_POD_CIDR.into(),
            underlay: DEFAULT_UNDERLAY.parse().unwrap(),
            nodes: vec![],
        };
        assert_eq!(s.next_slot(), (1, "198.18.0.11".parse().unwrap()));
        s.nodes.push(NodeRecord {
            name: "a".into(),
            ip: "198.18.0.11".parse().unwrap(),
            index: 1,
            agent_pid: None,
        });
        assert_eq!(s.next_slot(), (2, "198.18.0.12".parse().unwrap()));
    }
}
