//! The store's error type and the wording users see.
//!
//! Owns what each failure means and what the user should do about it. It must
//! not decide policy: retrying, re-listing after `Compacted` or re-acquiring
//! after `LeaseLost` is the caller's call.

use std::path::PathBuf;

use ipnet::IpNet;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the cluster store at {path}: {source}; check the path, that its directory exists and that this process may read and write both")]
    Open {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("the cluster store at {path} has schema version {found}, newer than the version {supported} this weft understands; run the weft version that created it, or a newer one")]
    UnsupportedSchema {
        path: PathBuf,
        found: i64,
        supported: i64,
    },
    #[error("the cluster store could not {operation}: {source}; if the store is locked, another weft process held it longer than the busy timeout, so retry")]
    Sql {
        operation: &'static str,
        #[source]
        source: rusqlite::Error,
    },
    #[error("cannot convert {what} to or from JSON: {source}")]
    Json {
        what: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("invalid store key {key}: {reason}")]
    InvalidKey { key: String, reason: &'static str },
    #[error("no free subnet left in network {network}: every subnet is leased; release the leases of departed nodes, let them expire, or enlarge the network")]
    Exhausted { network: String },
    #[error("the subnet chooser picked {subnet} in network {network}, which overlaps {held} leased to node {holder}; the chooser must avoid every subnet it is given as taken")]
    SubnetTaken {
        network: String,
        subnet: IpNet,
        held: IpNet,
        holder: String,
    },
    #[error("node {node} no longer holds its subnet lease (it was released, or it expired and another node took the subnet); acquire a new lease and reconfigure the node's pods")]
    LeaseLost { node: String },
    #[error("changes after revision {requested} are gone: the event log was compacted up to revision {oldest}; list again and watch from the list's revision")]
    Compacted { requested: u64, oldest: u64 },
}

impl StoreError {
    /// Adapter for `map_err` naming the thing that failed to convert.
    pub(crate) fn json(what: impl std::fmt::Display) -> impl FnOnce(serde_json::Error) -> Self {
        move |source| Self::Json {
            what: what.to_string(),
            source,
        }
    }
}

/// Names the operation a SQLite failure interrupted, so the message says what
/// the store was doing rather than only what SQLite saw.
pub(crate) trait SqlContext<T> {
    fn during(self, operation: &'static str) -> Result<T, StoreError>;
}

impl<T> SqlContext<T> for rusqlite::Result<T> {
    fn during(self, operation: &'static str) -> Result<T, StoreError> {
        self.map_err(|source| StoreError::Sql { operation, source })
    }
}
