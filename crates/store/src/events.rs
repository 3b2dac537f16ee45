//! The global revision, the append-only change log, compaction and watching.
//!
//! Owns the `meta` counters and the `events` table. `record` is the only
//! place the revision moves, and it always appends the matching event, so the
//! log and the revision cannot drift apart. This module must not know about
//! the object or lease tables: their modules call `record` inside their own
//! write transactions.

use std::time::Duration;

use rusqlite::types::Type;
use rusqlite::{params, Connection};

use crate::error::SqlContext;
use crate::objects::{Key, Object};
use crate::wake::Signals;
use crate::{parsed_column, Store, StoreError};

pub(crate) const SCHEMA: &str = "
CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
INSERT INTO meta (key, value) VALUES ('revision', 0), ('compacted', 0);
CREATE TABLE events (
    revision INTEGER PRIMARY KEY,
    kind TEXT NOT NULL,
    namespace TEXT NOT NULL,
    name TEXT NOT NULL,
    change TEXT NOT NULL,
    value TEXT NOT NULL
);
CREATE INDEX events_by_kind ON events (kind, revision);
";

const REVISION: &str = "revision";
/// The compaction point: events at or below it are gone.
const COMPACTED: &str = "compacted";

const READ_COUNTER: &str = "SELECT value FROM meta WHERE key = ?1";
const SET_COUNTER: &str = "UPDATE meta SET value = ?2 WHERE key = ?1";
const BUMP_COUNTER: &str = "UPDATE meta SET value = value + 1 WHERE key = ?1 RETURNING value";
const APPEND: &str = "INSERT INTO events (revision, kind, namespace, name, change, value)
     VALUES (?1, ?2, ?3, ?4, ?5, ?6)";
const SINCE: &str = "SELECT revision, namespace, name, change, value FROM events
     WHERE kind = ?1 AND revision > ?2 ORDER BY revision";
const DROP_UP_TO: &str = "DELETE FROM events WHERE revision <= ?1";

/// SQLite integers are signed; a caller asking for changes after a revision
/// beyond that range simply gets none.
const LARGEST_REVISION: u64 = i64::MAX.unsigned_abs();

/// Stops a zero poll interval from turning a watcher into a busy loop.
const SHORTEST_POLL: Duration = Duration::from_millis(1);

/// How often a notified watcher looks anyway, in case a signal was lost (a
/// writer that died between its commit and its signal).
const SAFETY_POLL: Duration = Duration::from_secs(1);

/// What a change did to its object, as in a Kubernetes watch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    Added,
    Modified,
    Deleted,
}

impl EventKind {
    /// The Kubernetes watch event type: `ADDED`, `MODIFIED` or `DELETED`.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Added => "ADDED",
            EventKind::Modified => "MODIFIED",
            EventKind::Deleted => "DELETED",
        }
    }

    fn parse(text: &str) -> Option<Self> {
        [EventKind::Added, EventKind::Modified, EventKind::Deleted]
            .into_iter()
            .find(|kind| kind.as_str() == text)
    }
}

/// One change. `revision` is the store revision the change created and is
/// also `object.revision`; for `Deleted`, `object.value` is the last value.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub kind: EventKind,
    pub revision: u64,
    pub object: Object,
}

/// Bumps the global revision and logs the change under it. `value_at` gives
/// the change's JSON, which may embed the new revision (`resourceVersion`).
/// Returns the revision and that JSON, for the caller to store alike. Must
/// run inside the write transaction that makes the change.
pub(crate) fn record(
    connection: &Connection,
    change: EventKind,
    key: &Key<'_>,
    value_at: impl FnOnce(u64) -> Result<String, StoreError>,
) -> Result<(u64, String), StoreError> {
    const OPERATION: &str = "append to the event log";
    let revision: u64 = connection
        .prepare_cached(BUMP_COUNTER)
        .and_then(|mut statement| statement.query_row([REVISION], |row| row.get(0)))
        .during(OPERATION)?;
    let value = value_at(revision)?;
    connection
        .prepare_cached(APPEND)
        .and_then(|mut statement| {
            statement.execute(params![
                revision,
                key.kind,
                key.namespace,
                key.name,
                change.as_str(),
                value
            ])
        })
        .during(OPERATION)?;
    Ok((revision, value))
}

pub(crate) fn current_revision(connection: &Connection) -> Result<u64, StoreError> {
    read_counter(connection, REVISION)
}

fn read_counter(connection: &Connection, counter: &str) -> Result<u64, StoreError> {
    connection
        .prepare_cached(READ_COUNTER)
        .and_then(|mut statement| statement.query_row([counter], |row| row.get(0)))
        .during("read the store's revision counters")
}

/// The changes of `kind` after `since`, and the revision they are complete
/// up to (read in the same snapshot).
fn changes_since(
    connection: &Connection,
    kind: &str,
    since: u64,
) -> Result<(Vec<Event>, u64), StoreError> {
    let oldest = read_counter(connection, COMPACTED)?;
    if since < oldest {
        return Err(StoreError::Compacted {
            requested: since,
            oldest,
        });
    }
    let events = connection
        .prepare_cached(SINCE)
        .and_then(|mut statement| {
            statement
                .query_map(params![kind, since.min(LARGEST_REVISION)], |row| {
                    event_from_row(kind, row)
                })?
                .collect()
        })
        .during("read the event log")?;
    Ok((events, current_revision(connection)?))
}

fn event_from_row(kind: &str, row: &rusqlite::Row<'_>) -> rusqlite::Result<Event> {
    let revision = row.get(0)?;
    let change: String = row.get(3)?;
    let change = EventKind::parse(&change)
        .ok_or_else(|| rusqlite::Error::InvalidColumnType(3, "change".to_owned(), Type::Text))?;
    Ok(Event {
        kind: change,
        revision,
        object: Object {
            kind: kind.to_owned(),
            namespace: row.get(1)?,
            name: row.get(2)?,
            revision,
            value: parsed_column(row, 4)?,
        },
    })
}

impl Store {
    /// The store's global revision: the number of changes ever made.
    pub fn revision(&self) -> Result<u64, StoreError> {
        self.read("read the store revision", |transaction| {
            current_revision(transaction)
        })
    }

    /// Every change of `kind` with revision > `since`, oldest first; fails
    /// with [`StoreError::Compacted`] if some of them were compacted away.
    pub fn events_since(&self, kind: &str, since: u64) -> Result<Vec<Event>, StoreError> {
        self.read("read the event log", |transaction| {
            changes_since(transaction, kind, since)
        })
        .map(|(events, _)| events)
    }

    /// Drops the events at or below `keep_after` (capped at the current
    /// revision, so a watcher that is up to date never needs to re-list).
    /// Returns how many events were dropped.
    pub fn compact(&self, keep_after: u64) -> Result<usize, StoreError> {
        const OPERATION: &str = "compact the event log";
        self.write(OPERATION, |transaction| {
            let point = keep_after.min(current_revision(transaction)?);
            if point <= read_counter(transaction, COMPACTED)? {
                return Ok(0);
            }
            transaction
                .prepare_cached(SET_COUNTER)
                .and_then(|mut statement| statement.execute(params![COMPACTED, point]))
                .during(OPERATION)?;
            transaction
                .prepare_cached(DROP_UP_TO)
                .and_then(|mut statement| statement.execute([point]))
                .during(OPERATION)
        })
    }

    /// Follows the changes of `kind` after `since`. Writes by other
    /// processes are seen as well as this handle's own. The watcher sleeps
    /// until a writer signals a change of its kind, and looks anyway every
    /// `poll` or every second, whichever is longer; where change signals are
    /// unavailable (see the `wake` module) it polls every `poll`.
    pub fn watch(&self, kind: &str, since: u64, poll: Duration) -> Watcher {
        let poll = poll.max(SHORTEST_POLL);
        Watcher {
            store: self.clone(),
            kind: kind.to_owned(),
            since,
            signals: Signals::subscribe(self.path(), kind),
            poll,
            safety_poll: poll.max(SAFETY_POLL),
        }
    }
}

/// A watch on one kind; see [`Store::watch`].
#[derive(Debug)]
pub struct Watcher {
    store: Store,
    kind: String,
    since: u64,
    signals: Signals,
    poll: Duration,
    safety_poll: Duration,
}

impl Watcher {
    /// Waits until at least one change exists after the last batch returned,
    /// then returns all of them, oldest first.
    ///
    /// Cancel-safe (fit for `tokio::select!`): the watcher only moves past
    /// changes it has returned or that were not of its kind. Each look is a
    /// short blocking SQLite read of one row; the change query runs only when
    /// the global revision has moved.
    pub async fn next(&mut self) -> Result<Vec<Event>, StoreError> {
        loop {
            // Before reading, so a signal sent after the read wakes the wait.
            self.signals.mark_seen();
            if self.store.revision()? > self.since {
                let (events, complete_up_to) =
                    self.store.read("read the event log", |transaction| {
                        changes_since(transaction, &self.kind, self.since)
                    })?;
                self.since = complete_up_to;
                if !events.is_empty() {
                    return Ok(events);
                }
            }
            self.signals.wait(self.poll, self.safety_poll).await;
        }
    }

    /// The revision up to which this watcher has delivered every change of
    /// its kind.
    pub fn revision(&self) -> u64 {
        self.since
    }
}
