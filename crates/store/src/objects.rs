//! Kubernetes-style objects kept as JSON under (kind, namespace, name), with
//! typed helpers for `k8s-openapi` resources.
//!
//! Owns the `objects` table and its SQL. It must not touch leases, and it
//! changes the table only inside the transaction that calls
//! `events::record`, so every change is in the log under its revision.
//!
//! Typed objects are keyed by [`Resource::KIND`] alone, without the API
//! group, so two resources of the same kind in different groups share a key
//! space. `Lease` is reserved for subnet leases (see [`crate::LEASE_KIND`]),
//! which is why `coordination.k8s.io` Leases cannot be stored here.

use std::fmt;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::{Metadata, Resource};
use rusqlite::{params, Connection, OptionalExtension};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{Map, Value};

use crate::error::SqlContext;
use crate::events::{self, EventKind};
use crate::{parsed_column, Store, StoreError, LEASE_KIND};

pub(crate) const SCHEMA: &str = "
CREATE TABLE objects (
    kind TEXT NOT NULL,
    namespace TEXT NOT NULL,
    name TEXT NOT NULL,
    revision INTEGER NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (kind, namespace, name)
) WITHOUT ROWID;
";

const ONE: &str = "SELECT revision, value FROM objects
     WHERE kind = ?1 AND namespace = ?2 AND name = ?3";
const OF_KIND: &str = "SELECT namespace, name, revision, value FROM objects
     WHERE kind = ?1 ORDER BY namespace, name";
const PAGE_OF_KIND: &str = "SELECT namespace, name, revision, value FROM objects
     WHERE kind = ?1 AND (namespace, name) > (?2, ?3) ORDER BY namespace, name LIMIT ?4";
const UPSERT: &str = "INSERT INTO objects (kind, namespace, name, revision, value)
     VALUES (?1, ?2, ?3, ?4, ?5)
     ON CONFLICT (kind, namespace, name)
     DO UPDATE SET revision = excluded.revision, value = excluded.value";
const DELETE: &str = "DELETE FROM objects WHERE kind = ?1 AND namespace = ?2 AND name = ?3";

/// A stored object. `revision` is the store revision of its last change, the
/// equivalent of a Kubernetes `resourceVersion`.
#[derive(Debug, Clone, PartialEq)]
pub struct Object {
    pub kind: String,
    /// Empty for cluster-scoped objects.
    pub namespace: String,
    pub name: String,
    pub revision: u64,
    pub value: Value,
}

/// Where an object lives; also how events and errors name it.
pub(crate) struct Key<'a> {
    pub(crate) kind: &'a str,
    pub(crate) namespace: &'a str,
    pub(crate) name: &'a str,
}

impl fmt::Display for Key<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.namespace.is_empty() {
            write!(f, "{} {}", self.kind, self.name)
        } else {
            write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
        }
    }
}

impl Key<'_> {
    fn check_storable(&self) -> Result<(), StoreError> {
        let reason = if self.kind.is_empty() {
            "the kind is empty"
        } else if self.name.is_empty() {
            "the name is empty"
        } else if self.kind == LEASE_KIND {
            "kind Lease is reserved for subnet leases; use acquire_lease"
        } else {
            return Ok(());
        };
        Err(StoreError::InvalidKey {
            key: self.to_string(),
            reason,
        })
    }
}

impl Store {
    /// Creates or replaces an object; returns the new store revision.
    pub fn put(
        &self,
        kind: &str,
        namespace: &str,
        name: &str,
        object: &Value,
    ) -> Result<u64, StoreError> {
        let key = Key {
            kind,
            namespace,
            name,
        };
        self.put_encoded(&key, |_| encode(&key, object))
    }

    /// Deletes an object; returns the revision of the deletion, or `None` if
    /// there was nothing to delete (the revision does not move then).
    pub fn delete(
        &self,
        kind: &str,
        namespace: &str,
        name: &str,
    ) -> Result<Option<u64>, StoreError> {
        const OPERATION: &str = "delete an object";
        let key = Key {
            kind,
            namespace,
            name,
        };
        self.write_changing(key.kind, OPERATION, |transaction| {
            let Some((_, last_value)) = stored(transaction, &key)? else {
                return Ok(None);
            };
            let (revision, _) =
                events::record(transaction, EventKind::Deleted, &key, |_| Ok(last_value))?;
            transaction
                .prepare_cached(DELETE)
                .and_then(|mut statement| statement.execute(params![kind, namespace, name]))
                .during(OPERATION)?;
            Ok(Some(revision))
        })
    }

    pub fn get(
        &self,
        kind: &str,
        namespace: &str,
        name: &str,
    ) -> Result<Option<Object>, StoreError> {
        let key = Key {
            kind,
            namespace,
            name,
        };
        let Some((revision, text)) =
            self.read("read an object", |transaction| stored(transaction, &key))?
        else {
            return Ok(None);
        };
        let value = serde_json::from_str(&text).map_err(StoreError::json(&key))?;
        Ok(Some(Object {
            kind: kind.to_owned(),
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            revision,
            value,
        }))
    }

    /// All objects of `kind` in every namespace, sorted by (namespace, name),
    /// and the revision the list is consistent at: watch from it to follow on.
    pub fn list(&self, kind: &str) -> Result<(Vec<Object>, u64), StoreError> {
        const OPERATION: &str = "list objects";
        self.read(OPERATION, |transaction| {
            let objects = transaction
                .prepare_cached(OF_KIND)
                .and_then(|mut statement| {
                    statement
                        .query_map([kind], |row| {
                            Ok(Object {
                                kind: kind.to_owned(),
                                namespace: row.get(0)?,
                                name: row.get(1)?,
                                revision: row.get(2)?,
                                value: parsed_column(row, 3)?,
                            })
                        })?
                        .collect()
                })
                .during(OPERATION)?;
            Ok((objects, events::current_revision(transaction)?))
        })
    }

    /// Up to `limit` objects of `kind` sorted after `after` (namespace,
    /// name; `None`: from the first), each handed to `each` as
    /// `(namespace, name, JSON text)` as it is read; returns the current
    /// revision and how many there were. A list read page by page holds one
    /// object at a time; watching from the revision of the first page
    /// replays whatever changed meanwhile, so the pages plus the watch add
    /// up to the store's state.
    pub fn list_page_each(
        &self,
        kind: &str,
        after: Option<(&str, &str)>,
        limit: usize,
        mut each: impl FnMut(&str, &str, &str),
    ) -> Result<(u64, usize), StoreError> {
        const OPERATION: &str = "list a page of objects";
        let (namespace, name) = after.unwrap_or_default();
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.read(OPERATION, |transaction| {
            let mut statement = transaction.prepare_cached(PAGE_OF_KIND).during(OPERATION)?;
            let mut rows = statement
                .query(params![kind, namespace, name, limit])
                .during(OPERATION)?;
            let mut count = 0;
            while let Some(row) = rows.next().during(OPERATION)? {
                let namespace: String = row.get(0).during(OPERATION)?;
                let name: String = row.get(1).during(OPERATION)?;
                let value: String = row.get(3).during(OPERATION)?;
                each(&namespace, &name, &value);
                count += 1;
            }
            Ok((events::current_revision(transaction)?, count))
        })
    }

    /// Like [`Store::list`], but hands each object's JSON text to `each` as
    /// it is read, so a caller decoding thousands of objects into its own
    /// types never holds them all as JSON values at once. Returns the
    /// revision the list is consistent at.
    pub fn list_each(
        &self,
        kind: &str,
        mut each: impl FnMut(&str, &str, &str),
    ) -> Result<u64, StoreError> {
        const OPERATION: &str = "list objects";
        self.read(OPERATION, |transaction| {
            let mut statement = transaction.prepare_cached(OF_KIND).during(OPERATION)?;
            let mut rows = statement.query([kind]).during(OPERATION)?;
            while let Some(row) = rows.next().during(OPERATION)? {
                let namespace: String = row.get(0).during(OPERATION)?;
                let name: String = row.get(1).during(OPERATION)?;
                let value: String = row.get(3).during(OPERATION)?;
                each(&namespace, &name, &value);
            }
            events::current_revision(transaction)
        })
    }

    /// Stores a Kubernetes resource under its kind, namespace and name, with
    /// `metadata.resourceVersion` set to the new revision, as an API server
    /// would; returns that revision.
    pub fn put_typed<K>(&self, object: &K) -> Result<u64, StoreError>
    where
        K: Resource + Metadata<Ty = ObjectMeta> + Serialize,
    {
        let metadata = object.metadata();
        let key = Key {
            kind: K::KIND,
            namespace: metadata.namespace.as_deref().unwrap_or_default(),
            name: metadata.name.as_deref().unwrap_or_default(),
        };
        let mut value = serde_json::to_value(object).map_err(StoreError::json(&key))?;
        self.put_encoded(&key, |revision| {
            stamp_resource_version(&mut value, revision);
            encode(&key, &value)
        })
    }

    /// Changes a resource in one write transaction: `change` is given the
    /// stored object (`None`: there is none) and returns what to store, so
    /// a concurrent writer's change to other fields is never lost (as a
    /// patch on an API server). Returns the new revision, or `None` when the
    /// object came back unchanged (nothing is written then).
    pub fn update_typed<K>(
        &self,
        namespace: &str,
        name: &str,
        change: impl FnOnce(Option<K>) -> K,
    ) -> Result<Option<u64>, StoreError>
    where
        K: Resource + Metadata<Ty = ObjectMeta> + Serialize + DeserializeOwned + PartialEq + Clone,
    {
        const OPERATION: &str = "update an object";
        let key = Key {
            kind: K::KIND,
            namespace,
            name,
        };
        key.check_storable()?;
        self.write_changing(key.kind, OPERATION, |transaction| {
            let old: Option<K> = stored(transaction, &key)?
                .map(|(_, text)| serde_json::from_str(&text).map_err(StoreError::json(&key)))
                .transpose()?;
            let existed = old.is_some();
            let mut new = change(old.clone());
            if old.as_ref() == Some(&new) {
                return Ok(None);
            }
            // The key is the caller's, whatever the object says.
            let metadata = new.metadata_mut();
            metadata.namespace = (!namespace.is_empty()).then(|| namespace.to_owned());
            metadata.name = Some(name.to_owned());
            let mut value = serde_json::to_value(&new).map_err(StoreError::json(&key))?;
            let change = if existed {
                EventKind::Modified
            } else {
                EventKind::Added
            };
            let (revision, value) = events::record(transaction, change, &key, |revision| {
                stamp_resource_version(&mut value, revision);
                encode(&key, &value)
            })?;
            transaction
                .prepare_cached(UPSERT)
                .and_then(|mut statement| {
                    statement.execute(params![key.kind, key.namespace, key.name, revision, value])
                })
                .during(OPERATION)?;
            Ok(Some(revision))
        })
    }

    pub fn get_typed<K>(&self, namespace: &str, name: &str) -> Result<Option<K>, StoreError>
    where
        K: Resource + DeserializeOwned,
    {
        self.get(K::KIND, namespace, name)?.map(decode).transpose()
    }

    /// Like [`Store::list`], decoded into `K`.
    pub fn list_typed<K>(&self) -> Result<(Vec<K>, u64), StoreError>
    where
        K: Resource + DeserializeOwned,
    {
        let (objects, revision) = self.list(K::KIND)?;
        let decoded = objects.into_iter().map(decode).collect::<Result<_, _>>()?;
        Ok((decoded, revision))
    }

    /// Writes an object whose JSON may depend on the revision the write gets.
    fn put_encoded(
        &self,
        key: &Key<'_>,
        encode_at: impl FnOnce(u64) -> Result<String, StoreError>,
    ) -> Result<u64, StoreError> {
        const OPERATION: &str = "store an object";
        key.check_storable()?;
        self.write_changing(key.kind, OPERATION, |transaction| {
            let change = match stored(transaction, key)? {
                Some(_) => EventKind::Modified,
                None => EventKind::Added,
            };
            let (revision, value) = events::record(transaction, change, key, encode_at)?;
            transaction
                .prepare_cached(UPSERT)
                .and_then(|mut statement| {
                    statement.execute(params![key.kind, key.namespace, key.name, revision, value])
                })
                .during(OPERATION)?;
            Ok(revision)
        })
    }
}

/// The stored revision and JSON text of an object, if it exists.
fn stored(connection: &Connection, key: &Key<'_>) -> Result<Option<(u64, String)>, StoreError> {
    connection
        .prepare_cached(ONE)
        .and_then(|mut statement| {
            statement
                .query_row(params![key.kind, key.namespace, key.name], |row| {
                    Ok((row.get(0)?, row.get(1)?))
                })
                .optional()
        })
        .during("read an object")
}

fn encode(key: &Key<'_>, value: &Value) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(StoreError::json(key))
}

fn decode<K: DeserializeOwned>(object: Object) -> Result<K, StoreError> {
    let key = Key {
        kind: &object.kind,
        namespace: &object.namespace,
        name: &object.name,
    }
    .to_string();
    serde_json::from_value(object.value).map_err(StoreError::json(key))
}

/// Resources always serialize as a JSON object with `metadata`; anything else
/// is left untouched rather than reshaped.
fn stamp_resource_version(value: &mut Value, revision: u64) {
    if let Value::Object(fields) = value {
        let metadata = fields
            .entry("metadata")
            .or_insert_with(|| Value::Object(Map::new()));
        if let Value::Object(metadata) = metadata {
            metadata.insert(
                "resourceVersion".to_owned(),
                Value::String(revision.to_string()),
            );
        }
    }
}
