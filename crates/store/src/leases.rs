//! Subnet leases with flannel's SubnetManager semantics: each node of a
//! network holds at most one subnet until its lease expires, renews it while
//! alive, and gets the same subnet back after a restart if nobody took it.
//!
//! Owns the `leases` table, its SQL and the lease JSON carried by events. It
//! must not decide which subnet a new node gets — the caller's `choose` does,
//! because the pool and how it is split belong to IPAM — and it changes the
//! table only inside the transaction that calls `events::record`, so agents
//! can follow leases with `watch(LEASE_KIND, ..)`.
//!
//! A subnet is one row (the primary key), so while a node's row exists no
//! other node can hold that subnet, expired or not; taking over an expired
//! subnet deletes its old row first.

use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use ipnet::IpNet;
use k8s_openapi::jiff::Timestamp;
use rusqlite::{params, Connection, OptionalExtension, Row};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::SqlContext;
use crate::events::{self, EventKind};
use crate::objects::{Key, Object};
use crate::{parsed_column, time, Store, StoreError};

/// The event kind under which lease changes are logged; the event's
/// namespace is the network and its name the node.
pub const LEASE_KIND: &str = "Lease";

pub(crate) const SCHEMA: &str = "
CREATE TABLE leases (
    network TEXT NOT NULL,
    subnet TEXT NOT NULL,
    node TEXT NOT NULL,
    public_ip TEXT NOT NULL,
    backend TEXT NOT NULL,
    expires_at_ms INTEGER NOT NULL,
    revision INTEGER NOT NULL,
    PRIMARY KEY (network, subnet)
) WITHOUT ROWID;
CREATE UNIQUE INDEX leases_by_node ON leases (network, node);
";

const OF_NODE: &str = "SELECT network, subnet, node, public_ip, backend, expires_at_ms, revision
     FROM leases WHERE network = ?1 AND node = ?2";
const IN_NETWORK: &str = "SELECT network, subnet, node, public_ip, backend, expires_at_ms, revision
     FROM leases WHERE network = ?1";
const UPSERT: &str = "INSERT INTO leases
         (network, subnet, node, public_ip, backend, expires_at_ms, revision)
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
     ON CONFLICT (network, subnet) DO UPDATE SET
         node = excluded.node, public_ip = excluded.public_ip, backend = excluded.backend,
         expires_at_ms = excluded.expires_at_ms, revision = excluded.revision";
const DELETE: &str = "DELETE FROM leases WHERE network = ?1 AND subnet = ?2";

/// A node's hold on a subnet of a network.
///
/// In `Lease` events its JSON is
/// `{"network": "weft", "subnet": "10.244.3.0/24", "node": "node-a",
///   "publicIP": "192.168.1.10", "backend": {"vtepMAC": "…"},
///   "expiresAt": "2025-01-31T12:00:00.123Z"}`,
/// `expiresAt` being RFC 3339 in UTC with millisecond precision. The revision
/// is the event's; [`Lease::from_object`] reads it all back.
#[derive(Debug, Clone, PartialEq)]
pub struct Lease {
    pub network: String,
    pub subnet: IpNet,
    pub node: String,
    pub public_ip: IpAddr,
    /// Backend data other nodes need to reach this one, e.g. `{"vtepMAC": …}`.
    pub backend: Value,
    pub expires_at: SystemTime,
    /// The store revision of the lease's last change.
    pub revision: u64,
}

impl Lease {
    /// Reads the lease carried by a `Lease` event (or its deletion's last
    /// value), taking the revision from the object.
    pub fn from_object(object: &Object) -> Result<Lease, StoreError> {
        let key = lease_key(&object.namespace, &object.name);
        let document = LeaseDocument::deserialize(&object.value).map_err(StoreError::json(key))?;
        Ok(Lease {
            network: document.network,
            subnet: document.subnet,
            node: document.node,
            public_ip: document.public_ip,
            backend: document.backend,
            expires_at: time::system_time(time::unix_ms(document.expires_at)),
            revision: object.revision,
        })
    }
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct LeaseDocument {
    network: String,
    subnet: IpNet,
    node: String,
    #[serde(rename = "publicIP")]
    public_ip: IpAddr,
    backend: Value,
    expires_at: Timestamp,
}

/// A lease as stored: the expiry stays in milliseconds for comparisons.
struct LeaseRow {
    network: String,
    subnet: IpNet,
    node: String,
    public_ip: IpAddr,
    backend: Value,
    expires_at_ms: u64,
    revision: u64,
}

impl LeaseRow {
    fn from_sql(row: &Row<'_>) -> rusqlite::Result<LeaseRow> {
        Ok(LeaseRow {
            network: row.get(0)?,
            subnet: parsed_column(row, 1)?,
            node: row.get(2)?,
            public_ip: parsed_column(row, 3)?,
            backend: parsed_column(row, 4)?,
            expires_at_ms: row.get(5)?,
            revision: row.get(6)?,
        })
    }

    fn is_live(&self, now_ms: u64) -> bool {
        self.expires_at_ms > now_ms
    }

    fn key(&self) -> Key<'_> {
        lease_key(&self.network, &self.node)
    }

    fn document(&self) -> Result<String, StoreError> {
        let document = LeaseDocument {
            network: self.network.clone(),
            subnet: self.subnet,
            node: self.node.clone(),
            public_ip: self.public_ip,
            backend: self.backend.clone(),
            expires_at: time::timestamp(self.expires_at_ms),
        };
        serde_json::to_string(&document).map_err(StoreError::json(self.key()))
    }

    fn into_lease(self) -> Lease {
        Lease {
            network: self.network,
            subnet: self.subnet,
            node: self.node,
            public_ip: self.public_ip,
            backend: self.backend,
            expires_at: time::system_time(self.expires_at_ms),
            revision: self.revision,
        }
    }
}

impl Store {
    /// Gives `node` a subnet of `network` for `ttl`, atomically:
    ///
    /// 1. if the node still has a lease row (live, or expired but not taken
    ///    over), it keeps that subnet with a new expiry, address and backend;
    /// 2. otherwise `choose` is given the subnets live-leased to other nodes
    ///    and picks a free one (it may return a subnet whose lease expired,
    ///    which is then taken over); `None` means the network is full.
    pub fn acquire_lease(
        &self,
        network: &str,
        node: &str,
        public_ip: IpAddr,
        backend: &Value,
        ttl: Duration,
        choose: impl FnOnce(&[IpNet]) -> Option<IpNet>,
    ) -> Result<Lease, StoreError> {
        check_lease_key(network, node)?;
        check_ttl(node, ttl)?;
        self.write_changing(LEASE_KIND, "acquire a subnet lease", |transaction| {
            let now = time::now_ms();
            let expires_at_ms = time::expiry_ms(now, ttl);
            if let Some(held) = lease_of(transaction, network, node)? {
                let renewed = LeaseRow {
                    public_ip,
                    backend: backend.clone(),
                    expires_at_ms,
                    ..held
                };
                return save(transaction, renewed, EventKind::Modified).map(LeaseRow::into_lease);
            }
            let (live, expired): (Vec<_>, Vec<_>) = leases_in(transaction, network)?
                .into_iter()
                .partition(|lease| lease.is_live(now));
            let taken: Vec<IpNet> = live.iter().map(|lease| lease.subnet).collect();
            let subnet = choose(&taken)
                .ok_or_else(|| StoreError::Exhausted {
                    network: network.to_owned(),
                })?
                .trunc();
            if let Some(holder) = live.iter().find(|lease| overlaps(lease.subnet, subnet)) {
                return Err(StoreError::SubnetTaken {
                    network: network.to_owned(),
                    subnet,
                    held: holder.subnet,
                    holder: holder.node.clone(),
                });
            }
            for stale in expired
                .iter()
                .filter(|lease| overlaps(lease.subnet, subnet))
            {
                remove(transaction, stale)?;
            }
            let fresh = LeaseRow {
                network: network.to_owned(),
                subnet,
                node: node.to_owned(),
                public_ip,
                backend: backend.clone(),
                expires_at_ms,
                revision: 0, // assigned by `save`
            };
            save(transaction, fresh, EventKind::Added).map(LeaseRow::into_lease)
        })
    }

    /// Extends `node`'s lease by `ttl` from now, even if it just expired, as
    /// long as nobody took the subnet over.
    pub fn renew_lease(
        &self,
        network: &str,
        node: &str,
        ttl: Duration,
    ) -> Result<Lease, StoreError> {
        check_ttl(node, ttl)?;
        self.write_changing(LEASE_KIND, "renew a subnet lease", |transaction| {
            let held =
                lease_of(transaction, network, node)?.ok_or_else(|| StoreError::LeaseLost {
                    node: node.to_owned(),
                })?;
            let renewed = LeaseRow {
                expires_at_ms: time::expiry_ms(time::now_ms(), ttl),
                ..held
            };
            save(transaction, renewed, EventKind::Modified).map(LeaseRow::into_lease)
        })
    }

    /// Gives up `node`'s subnet; returns whether it held one.
    pub fn release_lease(&self, network: &str, node: &str) -> Result<bool, StoreError> {
        self.write_changing(LEASE_KIND, "release a subnet lease", |transaction| {
            let Some(held) = lease_of(transaction, network, node)? else {
                return Ok(false);
            };
            remove(transaction, &held)?;
            Ok(true)
        })
    }

    /// The unexpired leases of `network`, sorted by subnet, and the revision
    /// they are consistent at.
    pub fn leases(&self, network: &str) -> Result<(Vec<Lease>, u64), StoreError> {
        self.read("list subnet leases", |transaction| {
            let now = time::now_ms();
            let mut live: Vec<Lease> = leases_in(transaction, network)?
                .into_iter()
                .filter(|lease| lease.is_live(now))
                .map(LeaseRow::into_lease)
                .collect();
            live.sort_by_key(|lease| lease.subnet);
            Ok((live, events::current_revision(transaction)?))
        })
    }

    /// Deletes the expired leases of `network`, logging each as deleted;
    /// returns how many there were.
    pub fn expire_leases(&self, network: &str) -> Result<usize, StoreError> {
        self.write_changing(LEASE_KIND, "expire subnet leases", |transaction| {
            let now = time::now_ms();
            let expired: Vec<LeaseRow> = leases_in(transaction, network)?
                .into_iter()
                .filter(|lease| !lease.is_live(now))
                .collect();
            for lease in &expired {
                remove(transaction, lease)?;
            }
            Ok(expired.len())
        })
    }
}

fn lease_key<'a>(network: &'a str, node: &'a str) -> Key<'a> {
    Key {
        kind: LEASE_KIND,
        namespace: network,
        name: node,
    }
}

fn check_lease_key(network: &str, node: &str) -> Result<(), StoreError> {
    let reason = if network.is_empty() {
        "the network name is empty"
    } else if node.is_empty() {
        "the node name is empty"
    } else {
        return Ok(());
    };
    Err(StoreError::InvalidKey {
        key: lease_key(network, node).to_string(),
        reason,
    })
}

fn check_ttl(node: &str, ttl: Duration) -> Result<(), StoreError> {
    if ttl.is_zero() {
        return Err(StoreError::ZeroTtl {
            node: node.to_owned(),
        });
    }
    Ok(())
}

fn overlaps(a: IpNet, b: IpNet) -> bool {
    a.contains(&b) || b.contains(&a)
}

fn lease_of(
    connection: &Connection,
    network: &str,
    node: &str,
) -> Result<Option<LeaseRow>, StoreError> {
    connection
        .prepare_cached(OF_NODE)
        .and_then(|mut statement| {
            statement
                .query_row([network, node], LeaseRow::from_sql)
                .optional()
        })
        .during("read a subnet lease")
}

fn leases_in(connection: &Connection, network: &str) -> Result<Vec<LeaseRow>, StoreError> {
    connection
        .prepare_cached(IN_NETWORK)
        .and_then(|mut statement| {
            statement
                .query_map([network], LeaseRow::from_sql)?
                .collect()
        })
        .during("read subnet leases")
}

/// Logs the change and writes the lease under the revision it got.
fn save(
    connection: &Connection,
    mut lease: LeaseRow,
    change: EventKind,
) -> Result<LeaseRow, StoreError> {
    let document = lease.document()?;
    let (revision, _) = events::record(connection, change, &lease.key(), |_| Ok(document))?;
    lease.revision = revision;
    connection
        .prepare_cached(UPSERT)
        .and_then(|mut statement| {
            statement.execute(params![
                lease.network,
                lease.subnet.to_string(),
                lease.node,
                lease.public_ip.to_string(),
                lease.backend.to_string(),
                lease.expires_at_ms,
                lease.revision
            ])
        })
        .during("write a subnet lease")?;
    Ok(lease)
}

/// Logs the deletion with the lease's last value and deletes it.
fn remove(connection: &Connection, lease: &LeaseRow) -> Result<(), StoreError> {
    let document = lease.document()?;
    events::record(connection, EventKind::Deleted, &lease.key(), |_| {
        Ok(document)
    })?;
    connection
        .prepare_cached(DELETE)
        .and_then(|mut statement| {
            statement.execute(params![lease.network, lease.subnet.to_string()])
        })
        .during("delete a subnet lease")?;
    Ok(())
}
