//! The CNI verbs. Each takes the validated invocation and returns the JSON
//! to print (if any); the binary turns errors into the spec's error object.

mod add;
mod check;
mod del;
pub use del::{reap, REAP_FLAG};
mod gc;
mod status;

use serde_json::Value;
use weft_ipam::{Owner, Store};

use crate::plan::{Network, Ranges};
use crate::spec::{version, CniError, Command, Env, NetConf, Version};

/// Everything one invocation knows: environment, configuration, version.
pub struct Invocation {
    pub env: Env,
    pub conf: NetConf,
    pub version: Version,
}

impl Invocation {
    fn owner(&self) -> Owner {
        Owner::new(&self.env.container_id, &self.env.ifname)
    }

    fn require(&self, min: Version, verb: &str) -> Result<(), CniError> {
        if self.version < min {
            return Err(CniError::incompatible_version(format!(
                "{verb} needs cniVersion {min} or later, but the configuration says {}",
                self.version
            )));
        }
        Ok(())
    }
}

/// Parses stdin and environment and runs the verb.
pub fn run(env: Env, stdin: &[u8]) -> Result<Option<Value>, CniError> {
    if env.command == Command::Version {
        let requested = serde_json::from_slice::<Value>(stdin).ok();
        let requested = requested.as_ref().and_then(|v| v["cniVersion"].as_str());
        return Ok(Some(version::version_report(requested)));
    }
    let conf = NetConf::parse(stdin)?;
    let (version_text, _) = conf.require_identity()?;
    let version = Version::parse(version_text)?;
    let inv = Invocation { env, conf, version };
    match inv.env.command {
        Command::Add | Command::Del | Command::Check => run_serialized(&inv),
        Command::Status => status::status(&inv).map(|_| None),
        Command::Gc => gc::gc(&inv).map(|_| None),
        Command::Version => unreachable!("handled above"),
    }
}

/// Runs ADD, DEL or CHECK holding the container's lock, so the verbs of one
/// container never interleave (a DEL racing an ADD would release addresses
/// the ADD is about to put on an interface). The lock file goes with the
/// container: after its DEL, and after a failed ADD, which leaves nothing.
fn run_serialized(inv: &Invocation) -> Result<Option<Value>, CniError> {
    // Planning validates the configuration before anything is touched,
    // the IPAM directory included.
    let net = match inv.env.command {
        Command::Del => Network::plan(&inv.conf, Ranges::Optional)?,
        _ => Network::plan(&inv.conf, Ranges::Required)?,
    };
    let store = open_store(&net)?;
    let lock = store.lock_container(&inv.env.container_id)?;
    let (result, gone) = match inv.env.command {
        Command::Add => {
            let r = add::add(inv, &net, &store);
            let failed = r.is_err();
            (r.map(Some), failed)
        }
        Command::Del => {
            let r = del::del(inv, &net, &store);
            let deleted = r.is_ok();
            (r.map(|_| None), deleted)
        }
        _ => (check::check(inv, &net, &store).map(|_| None), false),
    };
    if gone {
        if let Err(e) = lock.remove() {
            tracing::warn!("cannot remove the container's lock file: {e}");
        }
    }
    result
}

/// A single-threaded runtime: the plugin is one short sequence of netlink
/// requests, and entering namespaces is per thread.
fn runtime() -> Result<tokio::runtime::Runtime, CniError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CniError::io("cannot start the plugin's I/O runtime").with_details(e))
}

/// The name of the network's masquerade chain (it changes with the subnets).
fn masquerade_chain(net: &Network) -> String {
    let mut identity = net.pod_subnets();
    identity.extend(&net.cluster_networks);
    crate::plan::network_chain("masq", &net.name, &identity)
}

fn open_store(net: &Network) -> Result<Store, CniError> {
    Ok(Store::open(&net.data_dir, &net.name)?)
}
