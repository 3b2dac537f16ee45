//! flannel's `subnet.env`: the file a node agent writes to tell the CNI
//! plugin which pod subnet this node owns.
//!
//! ```text
//! FLANNEL_NETWORK=10.244.0.0/16
//! FLANNEL_SUBNET=10.244.1.1/24      # the node's subnet, written as gateway/prefix
//! FLANNEL_MTU=1450
//! FLANNEL_IPMASQ=true
//! FLANNEL_IPV6_NETWORK=fd00:10:244::/56   # optional, dual-stack
//! FLANNEL_IPV6_SUBNET=fd00:10:244:1::1/64
//! ```

use std::path::{Path, PathBuf};

use ipnet::IpNet;

#[derive(Debug, thiserror::Error)]
pub enum SubnetEnvError {
    #[error("subnet file {path} does not exist yet: is the weft agent (or flanneld) running on this node?")]
    Missing { path: PathBuf },
    #[error("cannot read subnet file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("subnet file {path}: {key}={value} is not valid: {why}")]
    Invalid {
        path: PathBuf,
        key: String,
        value: String,
        why: String,
    },
    #[error("subnet file {path} has neither FLANNEL_SUBNET nor FLANNEL_IPV6_SUBNET")]
    NoSubnet { path: PathBuf },
}

/// The parsed contents of a `subnet.env`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SubnetEnv {
    pub network: Option<IpNet>,
    /// The node subnet as written: its address is the gateway.
    pub subnet: Option<IpNet>,
    pub ipv6_network: Option<IpNet>,
    pub ipv6_subnet: Option<IpNet>,
    pub mtu: Option<u32>,
    pub ipmasq: Option<bool>,
}

impl SubnetEnv {
    pub fn read(path: &Path) -> Result<Self, SubnetEnvError> {
        let text = std::fs::read_to_string(path).map_err(|source| match source.kind() {
            std::io::ErrorKind::NotFound => SubnetEnvError::Missing { path: path.into() },
            _ => SubnetEnvError::Read {
                path: path.into(),
                source,
            },
        })?;
        Self::parse(&text, path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<Self, SubnetEnvError> {
        let mut env = SubnetEnv::default();
        for line in text.lines().map(str::trim) {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((key, value)) = line.split_once('=') else {
                continue;
            };
            let value = value.trim().trim_matches('"');
            let invalid = |why: String| SubnetEnvError::Invalid {
                path: path.into(),
                key: key.to_string(),
                value: value.to_string(),
                why,
            };
            let net = || value.parse::<IpNet>().map_err(|e| invalid(e.to_string()));
            match key.trim() {
                "FLANNEL_NETWORK" => env.network = Some(net()?),
                "FLANNEL_SUBNET" => env.subnet = Some(net()?),
                "FLANNEL_IPV6_NETWORK" => env.ipv6_network = Some(net()?),
                "FLANNEL_IPV6_SUBNET" => env.ipv6_subnet = Some(net()?),
                "FLANNEL_MTU" => {
                    env.mtu = Some(
                        value
                            .parse()
                            .map_err(|e: std::num::ParseIntError| invalid(e.to_string()))?,
                    )
                }
                "FLANNEL_IPMASQ" => {
                    env.ipmasq = Some(
                        value
                            .parse()
                            .map_err(|e: std::str::ParseBoolError| invalid(e.to_string()))?,
                    )
                }
                _ => {}
            }
        }
        if env.subnet.is_none() && env.ipv6_subnet.is_none() {
            return Err(SubnetEnvError::NoSubnet { path: path.into() });
        }
        Ok(env)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_flannel_output() {
        let text = "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n";
        let env = SubnetEnv::parse(text, Path::new("x")).unwrap();
        assert_eq!(env.subnet.unwrap().to_string(), "10.244.1.1/24");
        assert_eq!(env.network.unwrap().to_string(), "10.244.0.0/16");
        assert_eq!(env.mtu, Some(1450));
        assert_eq!(env.ipmasq, Some(true));
    }

    #[test]
    fn rejects_garbage_with_the_key_named() {
        let err = SubnetEnv::parse("FLANNEL_SUBNET=banana\n", Path::new("x")).unwrap_err();
        assert!(err.to_string().contains("FLANNEL_SUBNET=banana"), "{err}");
        let err = SubnetEnv::parse("FLANNEL_MTU=1450\n", Path::new("x")).unwrap_err();
        assert!(matches!(err, SubnetEnvError::NoSubnet { .. }));
    }
}
