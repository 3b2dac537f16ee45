//! The network configuration weft-cni reads on stdin (one plugin entry of a
//! conflist, with `cniVersion`, `name`, `runtimeConfig` and `prevResult`
//! filled in by the runtime). Keys are matched as Go runtimes write them
//! (see [`super::fold`]); decoding reports the exact field at fault.
//! `runtimeConfig` is decoded on its own so that DEL can go on without it.

use std::net::IpAddr;
use std::path::PathBuf;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::error::CniError;
use super::fold::Folding;
use super::result::RouteEntry;

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetConf {
    pub cni_version: Option<String>,
    pub name: Option<String>,
    #[serde(rename = "type")]
    pub plugin_type: Option<String>,
    /// Node bridge; `cni0` when absent.
    pub bridge: Option<String>,
    pub mtu: Option<u32>,
    /// Give the bridge the gateway address (default true).
    pub is_gateway: Option<bool>,
    /// Default route in the pod via the gateway (default true).
    pub is_default_gateway: Option<bool>,
    /// Masquerade pod traffic leaving the pod network.
    pub ip_masq: Option<bool>,
    /// Hairpin mode on the host port (default true): a pod can reach itself through a Service.
    pub hairpin_mode: Option<bool>,
    /// The node agent's socket: ADD answers only once the agent has put
    /// the pod's NetworkPolicy in place (see `policy_gate`).
    pub policy_socket: Option<PathBuf>,
    #[serde(default)]
    pub ipam: IpamConf,
    pub dns: Option<Dns>,
    /// The capabilities' arguments as the runtime sent them; read through
    /// [`NetConf::runtime_config`].
    #[serde(rename = "runtimeConfig", default)]
    runtime_config_json: Value,
    #[serde(skip, default = "no_runtime_config")]
    runtime_config: Result<RuntimeConfig, CniError>,
    pub prev_result: Option<serde_json::Value>,
    #[serde(rename = "cni.dev/valid-attachments")]
    pub valid_attachments: Option<Vec<Attachment>>,
    /// The key CNI 1.1 release candidates used for the same list.
    #[serde(rename = "cni.dev/attachments")]
    pub attachments_legacy: Option<Vec<Attachment>>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IpamConf {
    #[serde(rename = "type")]
    pub kind: Option<String>,
    #[serde(default)]
    pub ranges: Vec<Vec<RangeConf>>,
    /// host-local's older single-range form.
    pub subnet: Option<IpNet>,
    pub range_start: Option<IpAddr>,
    pub range_end: Option<IpAddr>,
    pub gateway: Option<IpAddr>,
    #[serde(default)]
    pub routes: Vec<RouteEntry>,
    pub data_dir: Option<PathBuf>,
    /// flannel's subnet.env: the node's pod subnet, MTU and masquerade choice.
    pub subnet_file: Option<PathBuf>,
    /// The reference host-local plugin's directory of this network on the
    /// node (flannel's: /var/lib/cni/networks/cbr0): addresses it holds
    /// are never handed out, and are released at their pod's DEL.
    pub host_local_dir: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RangeConf {
    pub subnet: IpNet,
    pub range_start: Option<IpAddr>,
    pub range_end: Option<IpAddr>,
    pub gateway: Option<IpAddr>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dns {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

impl Dns {
    pub fn is_empty(&self) -> bool {
        self == &Dns::default()
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RuntimeConfig {
    #[serde(default)]
    pub port_mappings: Vec<PortMapping>,
    #[serde(default)]
    pub ips: Vec<String>,
    pub mac: Option<String>,
}

/// One `portMappings` entry (the `portMappings` capability).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PortMapping {
    pub host_port: u16,
    pub container_port: u16,
    #[serde(default = "default_protocol")]
    pub protocol: String,
    #[serde(rename = "hostIP", default)]
    pub host_ip: Option<String>,
}

fn default_protocol() -> String {
    "tcp".into()
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize)]
pub struct Attachment {
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
}

fn no_runtime_config() -> Result<RuntimeConfig, CniError> {
    Ok(RuntimeConfig::default())
}

/// Decodes `value` with Go's key matching; an error names the field, under
/// `context`.
fn decode_value<T: serde::de::DeserializeOwned>(
    value: Value,
    context: &str,
) -> Result<T, CniError> {
    serde_path_to_error::deserialize(Folding(value)).map_err(|e| {
        let path = e.path().to_string();
        let field = match (context, path.as_str()) {
            ("", _) => path,
            (_, ".") => context.to_string(),
            _ => format!("{context}.{path}"),
        };
        CniError::invalid_config(format!(
            "network configuration field {field}: {}",
            e.into_inner()
        ))
    })
}

impl NetConf {
    /// Decodes stdin: broken JSON is code 6, a wrong value code 7 naming
    /// the field.
    pub fn parse(bytes: &[u8]) -> Result<Self, CniError> {
        let value: Value = serde_json::from_slice(bytes).map_err(|e| {
            CniError::decode(format!(
                "the network configuration on stdin is not valid JSON: {e}"
            ))
        })?;
        let mut conf: NetConf = decode_value(value, "")?;
        let runtime = std::mem::take(&mut conf.runtime_config_json);
        if !runtime.is_null() {
            conf.runtime_config = decode_value(runtime, "runtimeConfig");
        }
        Ok(conf)
    }

    /// The capabilities' arguments (`portMappings`, `ips`, `mac`); an error
    /// names the field the runtime got wrong.
    pub fn runtime_config(&self) -> Result<&RuntimeConfig, CniError> {
        self.runtime_config.as_ref().map_err(Clone::clone)
    }

    /// `cniVersion`, `name` and `type` are required; the name names a
    /// directory, so it is restricted like a container ID.
    pub fn require_identity(&self) -> Result<(&str, &str), CniError> {
        let version = self
            .cni_version
            .as_deref()
            .ok_or_else(|| CniError::invalid_config("network configuration has no cniVersion"))?;
        let name = self
            .name
            .as_deref()
            .ok_or_else(|| CniError::invalid_config("network configuration has no name"))?;
        if !super::env::is_identifier(name) {
            return Err(CniError::invalid_config(format!(
                "network name {name:?} is invalid: use letters, digits, '_', '.' and '-', starting with a letter or digit"
            )));
        }
        if self.plugin_type.is_none() {
            return Err(CniError::invalid_config(
                "network configuration has no type",
            ));
        }
        Ok((version, name))
    }

    /// The valid attachments GC must keep.
    pub fn gc_keep_list(&self) -> Vec<Attachment> {
        self.valid_attachments
            .clone()
            .or_else(|| self.attachments_legacy.clone())
            .unwrap_or_default()
    }

    /// Addresses requested through the `ips` capability.
    pub fn requested_ips(&self) -> Result<Vec<IpAddr>, CniError> {
        self.runtime_config()?
            .ips
            .iter()
            .map(|text| {
                let addr = text.split('/').next().unwrap_or(text);
                addr.parse().map_err(|_| {
                    CniError::invalid_config(format!(
                        "runtimeConfig.ips: {text:?} is not an IP address"
                    ))
                })
            })
            .collect()
    }

    /// The MAC requested through the `mac` capability.
    pub fn requested_mac(&self) -> Result<Option<Vec<u8>>, CniError> {
        let Some(text) = &self.runtime_config()?.mac else {
            return Ok(None);
        };
        let bytes: Option<Vec<u8>> = text
            .split(':')
            .map(|b| u8::from_str_radix(b, 16).ok())
            .collect();
        match bytes {
            Some(b) if b.len() == 6 && b[0] & 1 == 0 => Ok(Some(b)),
            _ => Err(CniError::invalid_config(format!(
                "runtimeConfig.mac {text:?} is not a unicast MAC address like 0a:58:0a:f4:01:02"
            ))),
        }
    }

    pub fn port_mappings(&self) -> Result<&[PortMapping], CniError> {
        let mappings = &self.runtime_config()?.port_mappings;
        for pm in mappings {
            if !matches!(pm.protocol.as_str(), "tcp" | "udp" | "sctp") {
                return Err(CniError::invalid_config(format!(
                    "runtimeConfig.portMappings: protocol {:?} is not tcp, udp or sctp",
                    pm.protocol
                )));
            }
            if pm.host_port == 0 || pm.container_port == 0 {
                return Err(CniError::invalid_config(format!(
                    "runtimeConfig.portMappings: hostPort {} / containerPort {}: ports must be 1-65535",
                    pm.host_port, pm.container_port
                )));
            }
            if let Some(ip) = pm.host_ip.as_deref().filter(|s| !s.is_empty()) {
                ip.parse::<IpAddr>().map_err(|_| {
                    CniError::invalid_config(format!(
                        "runtimeConfig.portMappings: hostIP {ip:?} is not an IP address"
                    ))
                })?;
            }
        }
        Ok(mappings)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::ErrorCode;

    #[test]
    fn decode_errors_are_classified_and_name_the_field() {
        assert_eq!(
            NetConf::parse(b"{not json").unwrap_err().code,
            ErrorCode::Decode
        );
        let err =
            NetConf::parse(br#"{"ipam":{"ranges":[[{"subnet":"10.0.0.0/33"}]]}}"#).unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidConfig);
        assert!(err.msg.contains("ipam.ranges[0][0].subnet"), "{}", err.msg);
        let err = NetConf::parse(br#"{"mtu":"big"}"#).unwrap_err();
        assert!(err.msg.contains("mtu"), "{}", err.msg);
    }

    #[test]
    fn identity_is_required() {
        let c = NetConf::parse(br#"{"cniVersion":"1.1.0","name":"n","type":"weft-cni"}"#).unwrap();
        assert_eq!(c.require_identity().unwrap(), ("1.1.0", "n"));
        for bad in [
            r#"{"name":"n","type":"x"}"#,
            r#"{"cniVersion":"1.1.0","type":"x"}"#,
            r#"{"cniVersion":"1.1.0","name":"n"}"#,
            r#"{"cniVersion":"1.1.0","name":"../etc","type":"x"}"#,
        ] {
            let c = NetConf::parse(bad.as_bytes()).unwrap();
            assert_eq!(
                c.require_identity().unwrap_err().code,
                ErrorCode::InvalidConfig,
                "{bad}"
            );
        }
    }

    #[test]
    fn capabilities_are_validated() {
        let c = NetConf::parse(
            br#"{"runtimeConfig":{"ips":["10.0.0.9/24","fd00::9"],"mac":"0a:58:0a:00:00:09",
                "portMappings":[{"hostPort":8080,"containerPort":80,"protocol":"tcp"},{"hostPort":53,"containerPort":53,"protocol":"udp","hostIP":""}]}}"#,
        )
        .unwrap();
        assert_eq!(c.requested_ips().unwrap().len(), 2);
        assert_eq!(c.requested_mac().unwrap().unwrap()[5], 9);
        assert_eq!(c.port_mappings().unwrap().len(), 2);
        let bad = NetConf::parse(br#"{"runtimeConfig":{"mac":"01:00:00:00:00:01"}}"#).unwrap();
        assert!(bad.requested_mac().is_err(), "multicast MAC accepted");
        let bad = NetConf::parse(br#"{"runtimeConfig":{"portMappings":[{"hostPort":1,"containerPort":1,"protocol":"icmp"}]}}"#).unwrap();
        assert!(bad.port_mappings().is_err());
    }

    #[test]
    fn containerd_port_mappings_and_unusable_runtime_config() {
        let c = NetConf::parse(
            br#"{"CNIVersion":"1.1.0","runtimeConfig":{"portMappings":[{"HostPort":38080,"ContainerPort":8080,"Protocol":"tcp","HostIP":""}]}}"#,
        )
        .unwrap();
        assert_eq!(c.cni_version.as_deref(), Some("1.1.0"));
        let pm = &c.port_mappings().unwrap()[0];
        assert_eq!((pm.host_port, pm.container_port), (38080, 8080));
        // Unusable runtime configuration still parses; using it names the field.
        let c =
            NetConf::parse(br#"{"name":"n","runtimeConfig":{"portMappings":[{"hostPort":"x"}]}}"#)
                .unwrap();
        assert_eq!(c.name.as_deref(), Some("n"));
        let err = c.port_mappings().unwrap_err();
        assert!(
            err.msg.contains("runtimeConfig.portMappings[0].hostPort"),
            "{}",
            err.msg
        );
    }

    #[test]
    fn gc_list_accepts_both_keys() {
        let c = NetConf::parse(br#"{"cni.dev/attachments":[{"containerID":"a","ifname":"eth0"}]}"#)
            .unwrap();
        assert_eq!(c.gc_keep_list().len(), 1);
        let c = NetConf::parse(
            br#"{"cni.dev/valid-attachments":[{"containerID":"b","ifname":"eth0"}]}"#,
        )
        .unwrap();
        assert_eq!(c.gc_keep_list()[0].container_id, "b");
    }
}
