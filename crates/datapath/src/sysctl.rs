//! Kernel knobs under `/proc/sys`, written directly (never through the
//! `sysctl` binary). Files under `/proc/sys/net` belong to the network
//! namespace of the thread that opens them, so call these inside
//! [`crate::NetNs::run_in`] to reach another namespace.

use std::fs;
use std::io::Write;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
#[error("cannot set {path} to {value}: {source}")]
pub struct SysctlError {
    pub path: PathBuf,
    pub value: String,
    pub source: std::io::Error,
}

/// Sets a knob such as `net/ipv4/ip_forward`, writing only when it differs.
pub fn ensure(key: &str, value: &str) -> Result<(), SysctlError> {
    let path = PathBuf::from("/proc/sys").join(key);
    if fs::read_to_string(&path).is_ok_and(|now| now.trim() == value) {
        return Ok(());
    }
    let err = |source| SysctlError {
        path: path.clone(),
        value: value.to_string(),
        source,
    };
    let mut file = fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .map_err(err)?;
    file.write_all(value.as_bytes()).map_err(err)
}

/// Reads a knob, `None` when it does not exist.
pub fn read(key: &str) -> Option<String> {
    fs::read_to_string(PathBuf::from("/proc/sys").join(key))
        .ok()
        .map(|s| s.trim().to_string())
}
