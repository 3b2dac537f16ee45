//! The store's error type and the wording users see.
//!
//! Owns what each failure means and what the user should do about it. It must
//! not decide policy: retrying, re-listing after `Compacted` or re-acquiring
//! after `LeaseLost` is the caller's call.

use std::path::{Path, PathBuf};

use ipnet::IpNet;
use rusqlite::ErrorCode;

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
    #[error("the cluster store {path} does not exist or was never set up (it has no tables); it is not created here, because processes still using a removed one would no longer share their state with this one: bring the cluster up afresh (a lab: `weft lab down`, then `weft lab up`)")]
    Missing { path: PathBuf },
    #[error("the cluster store {path} was removed while this process had it open: this process now works on a file no other process sees; restart it on the store the cluster uses (a lab: `weft lab down`, then `weft lab up`)")]
    Removed { path: PathBuf },
    #[error("the cluster store {path} was replaced by another file while this process had it open: this process still works on the old one, which others no longer see; restart it so that it opens the current file (a lab: `weft lab down`, then `weft lab up`)")]
    Replaced { path: PathBuf },
    #[error("cannot check the cluster store file {path}: {source}")]
    Inaccessible {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the cluster store {path} is damaged ({source}): weft cannot use it; stop the weft processes using it, then restore it from a backup, or move it away and bring the cluster up afresh (a lab: `weft lab down`, then `weft lab up`)")]
    Corrupt {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("the cluster store could not {operation}: another weft process held it locked longer than the busy timeout; retry")]
    Locked {
        operation: &'static str,
        #[source]
        source: rusqlite::Error,
    },
    #[error("the cluster store could not {operation}: {source}")]
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
    #[error("a subnet lease for node {node} must last longer than 0 s: a lease that expires as it is written can be taken over at once; give a positive time to live")]
    ZeroTtl { node: String },
    #[error("node {node} no longer holds its subnet lease (it was released, or it expired and another node took the subnet); acquire a new lease and reconfigure the node's pods")]
    LeaseLost { node: String },
    #[error("changes after revision {requested} are gone: the event log was compacted up to revision {oldest}; list again and watch from the list's revision")]
    Compacted { requested: u64, oldest: u64 },
}

impl StoreError {
    /// Tells the SQLite failures a user acts on differently apart: a
    /// damaged file (named, with what to do) and a lock held too long
    /// (retry); other errors pass unchanged.
    pub(crate) fn of_file(self, path: &Path) -> Self {
        let code = match &self {
            Self::Sql { source, .. } | Self::Open { source, .. } => source.sqlite_error_code(),
            _ => None,
        };
        match (self, code) {
            (Self::Sql { source, .. } | Self::Open { source, .. }, Some(code))
                if is_damage(code) =>
            {
                Self::Corrupt {
                    path: path.to_owned(),
                    source,
                }
            }
            (Self::Sql { operation, source }, Some(code)) if is_lock(code) => {
                Self::Locked { operation, source }
            }
            (error, _) => error,
        }
    }

    /// Adapter for `map_err` naming the thing that failed to convert.
    pub(crate) fn json(what: impl std::fmt::Display) -> impl FnOnce(serde_json::Error) -> Self {
        move |source| Self::Json {
            what: what.to_string(),
            source,
        }
    }
}

fn is_damage(code: ErrorCode) -> bool {
    matches!(code, ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase)
}

fn is_lock(code: ErrorCode) -> bool {
    matches!(code, ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked)
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
