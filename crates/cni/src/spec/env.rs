//! The runtime's side of the call: the `CNI_*` environment variables,
//! validated. Takes a lookup function instead of reading the process
//! environment so that every rule is unit-testable.

use std::net::IpAddr;
use std::path::PathBuf;

use super::error::CniError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Status,
    Gc,
    Version,
}

impl Command {
    fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "STATUS" => Command::Status,
            "GC" => Command::Gc,
            "VERSION" => Command::Version,
            _ => return None,
        })
    }
}

/// `CNI_ARGS`: `KEY=VALUE;KEY=VALUE`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CniArgs {
    pub ips: Vec<IpAddr>,
    pub pod_namespace: Option<String>,
    pub pod_name: Option<String>,
    pub pod_uid: Option<String>,
    pub infra_container_id: Option<String>,
}

impl CniArgs {
    pub fn parse(text: &str) -> Result<Self, CniError> {
        let pairs: Vec<(&str, &str)> = text
            .split(';')
            .filter(|p| !p.is_empty())
            .map(|p| {
                p.split_once('=').ok_or_else(|| {
                    CniError::invalid_env(format!("CNI_ARGS entry {p:?} is not KEY=VALUE"))
                })
            })
            .collect::<Result<_, _>>()?;
        let ignore_unknown = pairs.iter().any(|(k, v)| {
            *k == "IgnoreUnknown" && matches!(v.to_ascii_lowercase().as_str(), "1" | "true")
        });
        let mut args = CniArgs::default();
        for (key, value) in pairs {
            match key {
                "IgnoreUnknown" => {}
                "IP" => {
                    for ip in value.split(',').filter(|s| !s.is_empty()) {
                        // Accept "10.1.2.3" and, as some runtimes send, "10.1.2.3/24".
                        let addr = ip.split('/').next().unwrap_or(ip);
                        let parsed = addr.parse().map_err(|_| {
                            CniError::invalid_env(format!("CNI_ARGS IP={value}: {ip:?} is not an IP address"))
                        })?;
                        args.ips.push(parsed);
                    }
                }
                "K8S_POD_NAMESPACE" => args.pod_namespace = Some(value.into()),
                "K8S_POD_NAME" => args.pod_name = Some(value.into()),
                "K8S_POD_UID" => args.pod_uid = Some(value.into()),
                "K8S_POD_INFRA_CONTAINER_ID" => args.infra_container_id = Some(value.into()),
                other if !ignore_unknown => {
                    return Err(CniError::invalid_env(format!(
                        "CNI_ARGS has unknown key {other:?}; weft-cni knows IP, K8S_POD_NAMESPACE, K8S_POD_NAME, \
                         K8S_POD_UID, K8S_POD_INFRA_CONTAINER_ID (add IgnoreUnknown=1 to ignore others)"
                    )))
                }
                _ => {}
            }
        }
        Ok(args)
    }
}

/// The validated environment of one invocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Env {
    pub command: Command,
    pub container_id: String,
    pub netns: Option<PathBuf>,
    pub ifname: String,
    pub args: CniArgs,
}

impl Env {
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, CniError> {
        let raw = get("CNI_COMMAND").ok_or_else(|| {
            CniError::invalid_env(
                "CNI_COMMAND is not set; set it to ADD, DEL, CHECK, STATUS, GC or VERSION",
            )
        })?;
        let command = Command::parse(&raw).ok_or_else(|| {
            CniError::invalid_env(format!(
                "CNI_COMMAND={raw:?} is not a CNI command; use ADD, DEL, CHECK, STATUS, GC or VERSION"
            ))
        })?;
        let mut env = Env {
            command,
            container_id: String::new(),
            netns: None,
            ifname: String::new(),
            args: CniArgs::default(),
        };
        if command == Command::Version {
            return Ok(env);
        }
        let require = |name: &str| {
            get(name).filter(|v| !v.is_empty()).ok_or_else(|| {
                CniError::invalid_env(format!("{name} is required for {raw} but is not set"))
            })
        };
        require("CNI_PATH")?;
        if matches!(command, Command::Status | Command::Gc) {
            return Ok(env);
        }
        env.container_id = require("CNI_CONTAINERID")?;
        validate_container_id(&env.container_id)?;
        env.ifname = require("CNI_IFNAME")?;
        validate_ifname(&env.ifname)?;
        env.netns = match command {
            Command::Add | Command::Check => Some(require("CNI_NETNS")?.into()),
            _ => get("CNI_NETNS")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from),
        };
        env.args = match CniArgs::parse(&get("CNI_ARGS").unwrap_or_default()) {
            Ok(args) => args,
            // DEL needs none of them, and teardown must never be blocked.
            Err(e) if command == Command::Del => {
                tracing::warn!("DEL goes on without the CNI_ARGS it cannot use: {}", e.msg);
                CniArgs::default()
            }
            Err(e) => return Err(e),
        };
        Ok(env)
    }
}

/// The spec's rule for container IDs and network names: letters, digits,
/// `_`, `.`, `-`, starting with a letter or digit.
pub fn is_identifier(text: &str) -> bool {
    text.chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric())
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
}

pub fn validate_container_id(id: &str) -> Result<(), CniError> {
    if is_identifier(id) {
        Ok(())
    } else {
        Err(CniError::invalid_env(format!(
            "CNI_CONTAINERID {id:?} is invalid: use letters, digits, '_', '.' and '-', starting with a letter or digit"
        )))
    }
}

/// Interface names: 1–15 bytes, no `/`, `:` or whitespace, not `.` or `..`.
pub fn validate_ifname(name: &str) -> Result<(), CniError> {
    let why = if name.is_empty() {
        Some("it is empty")
    } else if name.len() > 15 {
        Some("it is longer than 15 bytes")
    } else if name == "." || name == ".." {
        Some("'.' and '..' are not allowed")
    } else if name
        .chars()
        .any(|c| c == '/' || c == ':' || c.is_whitespace())
    {
        Some("it contains '/', ':' or whitespace")
    } else {
        None
    };
    match why {
        Some(why) => Err(CniError::invalid_env(format!(
            "CNI_IFNAME {name:?} is invalid: {why}"
        ))),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::ErrorCode;
    use std::collections::HashMap;

    fn env(vars: &[(&str, &str)]) -> Result<Env, CniError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Env::from_lookup(|k| map.get(k).cloned())
    }

    const ADD: &[(&str, &str)] = &[
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "abc-1.x_y"),
        ("CNI_NETNS", "/run/netns/x"),
        ("CNI_IFNAME", "eth0"),
        ("CNI_PATH", "/opt/cni/bin"),
    ];

    #[test]
    fn add_needs_all_variables() {
        assert!(env(ADD).is_ok());
        for skip in ["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"] {
            let vars: Vec<_> = ADD.iter().copied().filter(|(k, _)| *k != skip).collect();
            let err = env(&vars).unwrap_err();
            assert_eq!(err.code, ErrorCode::InvalidEnvironment);
            assert!(err.msg.contains(skip), "{}", err.msg);
        }
    }

    #[test]
    fn del_does_not_need_netns_and_version_needs_nothing() {
        let vars: Vec<_> = ADD
            .iter()
            .copied()
            .filter(|(k, _)| *k != "CNI_NETNS")
            .map(|(k, v)| {
                if k == "CNI_COMMAND" {
                    (k, "DEL")
                } else {
                    (k, v)
                }
            })
            .collect();
        assert_eq!(env(&vars).unwrap().netns, None);
        assert!(env(&[("CNI_COMMAND", "VERSION")]).is_ok());
        assert!(env(&[("CNI_COMMAND", "GC"), ("CNI_PATH", "/x")]).is_ok());
        assert_eq!(
            env(&[("CNI_COMMAND", "FROB")]).unwrap_err().code,
            ErrorCode::InvalidEnvironment
        );
        assert_eq!(env(&[]).unwrap_err().code, ErrorCode::InvalidEnvironment);
    }

    #[test]
    fn interface_names_follow_the_spec() {
        for ok in ["eth0", "a", "net1.100", "x-y_z", "123456789012345"] {
            assert!(validate_ifname(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            ".",
            "..",
            "a/b",
            "a:b",
            "a b",
            "a\tb",
            "1234567890123456",
        ] {
            assert!(validate_ifname(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn container_ids_are_validated() {
        assert!(validate_container_id("0123abc_.-").is_ok());
        for bad in ["", "-abc", "a/b", "a b", "a;b"] {
            assert!(validate_container_id(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn cni_args_known_unknown_and_ignore_unknown() {
        let a =
            CniArgs::parse("IP=10.1.2.3,fd00::5;K8S_POD_NAMESPACE=ns;K8S_POD_NAME=p;K8S_POD_UID=u")
                .unwrap();
        assert_eq!(a.ips.len(), 2);
        assert_eq!(a.pod_name.as_deref(), Some("p"));
        assert!(CniArgs::parse("FOO=1").is_err());
        assert!(CniArgs::parse("FOO=1;IgnoreUnknown=1").is_ok());
        assert!(CniArgs::parse("IgnoreUnknown=true;FOO=1").is_ok());
        assert!(CniArgs::parse("IP=banana;IgnoreUnknown=1").is_err());
        assert!(CniArgs::parse("novalue").is_err());
        assert_eq!(CniArgs::parse("").unwrap(), CniArgs::default());
    }
}
