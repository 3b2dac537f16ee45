//! The ADD result, encoded in whatever version the configuration asked for
//! (0.3.x/0.4.0 tag each IP with `version`; 1.1.0 adds route and interface
//! fields that older versions must not see), and decoded from `prevResult`.

use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use super::config::Dns;
use super::error::CniError;
use super::version::Version;

#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
pub struct Interface {
    pub name: String,
    #[serde(default)]
    pub mac: String,
    #[serde(default)]
    pub mtu: Option<u32>,
    #[serde(default)]
    pub sandbox: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct IpConfig {
    pub address: IpNet,
    #[serde(default)]
    pub gateway: Option<IpAddr>,
    #[serde(default)]
    pub interface: Option<usize>,
}

/// A route: the result's `routes` entry and the config's `ipam.routes`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteEntry {
    pub dst: IpNet,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<IpAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advmss: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<u8>,
}

impl RouteEntry {
    pub fn to(dst: IpNet, gw: Option<IpAddr>) -> Self {
        Self {
            dst,
            gw,
            mtu: None,
            advmss: None,
            priority: None,
            table: None,
            scope: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
pub struct CniResult {
    #[serde(default)]
    pub interfaces: Vec<Interface>,
    #[serde(default)]
    pub ips: Vec<IpConfig>,
    #[serde(default)]
    pub routes: Vec<RouteEntry>,
    #[serde(default)]
    pub dns: Option<Dns>,
}

impl CniResult {
    /// Decodes a `prevResult` of any supported version.
    pub fn from_prev(value: &Value) -> Result<Self, CniError> {
        serde_json::from_value(value.clone())
            .map_err(|e| CniError::decode(format!("prevResult cannot be decoded: {e}")))
    }

    /// Encodes the result as `version` defines it.
    pub fn to_json(&self, version: Version) -> Value {
        let modern = version >= Version::V1_1_0;
        let interfaces: Vec<Value> = self
            .interfaces
            .iter()
            .map(|i| {
                let mut o = Map::new();
                o.insert("name".into(), json!(i.name));
                if !i.mac.is_empty() {
                    o.insert("mac".into(), json!(i.mac));
                }
                if let (true, Some(mtu)) = (modern, i.mtu) {
                    o.insert("mtu".into(), json!(mtu));
                }
                if let Some(sb) = &i.sandbox {
                    o.insert("sandbox".into(), json!(sb));
                }
                Value::Object(o)
            })
            .collect();
        let ips: Vec<Value> = self
            .ips
            .iter()
            .map(|ip| {
                let mut o = Map::new();
                if version.ips_carry_version() {
                    let v = if ip.address.addr().is_ipv4() {
                        "4"
                    } else {
                        "6"
                    };
                    o.insert("version".into(), json!(v));
                }
                o.insert("address".into(), json!(ip.address.to_string()));
                if let Some(gw) = ip.gateway {
                    o.insert("gateway".into(), json!(gw.to_string()));
                }
                if let Some(idx) = ip.interface {
                    o.insert("interface".into(), json!(idx));
                }
                Value::Object(o)
            })
            .collect();
        let routes: Vec<Value> = self
            .routes
            .iter()
            .map(|r| {
                if modern {
                    serde_json::to_value(r).unwrap_or_default()
                } else {
                    serde_json::to_value(RouteEntry::to(r.dst, r.gw)).unwrap_or_default()
                }
            })
            .collect();
        let mut out = Map::new();
        out.insert("cniVersion".into(), json!(version.as_str()));
        out.insert("interfaces".into(), Value::Array(interfaces));
        out.insert("ips".into(), Value::Array(ips));
        if !routes.is_empty() {
            out.insert("routes".into(), Value::Array(routes));
        }
        if let Some(dns) = self.dns.as_ref().filter(|d| !d.is_empty()) {
            out.insert("dns".into(), serde_json::to_value(dns).unwrap_or_default());
        }
        Value::Object(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> CniResult {
        CniResult {
            interfaces: vec![Interface {
                name: "eth0".into(),
                mac: "0a:58:00:00:00:01".into(),
                mtu: Some(1500),
                sandbox: Some("/run/netns/x".into()),
            }],
            ips: vec![IpConfig {
                address: "10.0.0.2/24".parse().unwrap(),
                gateway: Some("10.0.0.1".parse().unwrap()),
                interface: Some(0),
            }],
            routes: vec![RouteEntry {
                mtu: Some(1400),
                ..RouteEntry::to(
                    "0.0.0.0/0".parse().unwrap(),
                    Some("10.0.0.1".parse().unwrap()),
                )
            }],
            dns: None,
        }
    }

    #[test]
    fn old_versions_tag_ips_and_drop_new_fields() {
        let v = sample().to_json(Version::V0_3_1);
        assert_eq!(v["cniVersion"], "0.3.1");
        assert_eq!(v["ips"][0]["version"], "4");
        assert!(v["routes"][0].get("mtu").is_none());
        assert!(v["interfaces"][0].get("mtu").is_none());
        let v = sample().to_json(Version::V1_0_0);
        assert!(v["ips"][0].get("version").is_none());
        assert!(v["routes"][0].get("mtu").is_none());
        let v = sample().to_json(Version::V1_1_0);
        assert_eq!(v["routes"][0]["mtu"], 1400);
        assert_eq!(v["interfaces"][0]["mtu"], 1500);
    }

    #[test]
    fn prev_result_round_trips_for_every_version() {
        for version in Version::ALL {
            let back = CniResult::from_prev(&sample().to_json(version)).unwrap();
            assert_eq!(back.ips, sample().ips, "{version}");
            assert_eq!(back.interfaces[0].name, "eth0");
        }
        assert!(CniResult::from_prev(&json!({"ips": [{"address": "nope"}]})).is_err());
    }
}
