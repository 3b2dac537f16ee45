//! Embedded cluster store: Kubernetes objects with revisions, list + watch, and
//! subnet leases, in one SQLite file safe for several processes.
//!
//! This file owns opening the file (WAL journal, busy timeout, schema) and the
//! transaction discipline every other module goes through: reads run in one
//! snapshot, writes in `BEGIN IMMEDIATE` so concurrent writers queue on the
//! busy timeout instead of failing halfway through a read-modify-write (and
//! back off and try again when the queue outlasts it). It
//! must not hold table-specific SQL; each module owns its tables.
//!
//! - `objects`: Kubernetes-style objects as JSON, untyped and typed.
//! - `events`: the global revision, the append-only change log, compaction
//!   and [`Watcher`].
//! - `leases`: flannel-style subnet leases.
//! - `wake`: change signals between processes, so watchers sleep until
//!   their kind changes instead of polling.
//!
//! Every change — object or lease — bumps one global revision and appends
//! exactly one event, so a watcher resuming from any revision misses nothing.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use rusqlite::types::Type;
use rusqlite::{Connection, OpenFlags, Row, Transaction, TransactionBehavior};

mod error;
mod events;
mod leases;
mod objects;
mod time;
mod wake;

pub use error::StoreError;
pub use events::{Event, EventKind, Watcher};
pub use leases::{Lease, LEASE_KIND};
pub use objects::Object;

use error::SqlContext;

/// How long one attempt to take the write lock waits for other processes'
/// transactions (SQLite's busy timeout). Transactions take milliseconds, but
/// with hundreds of agents on two cores the queue can outlast it.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// How often a writer tries again after a busy timeout ran out, and the
/// pause before the first retry (doubling each time): with the busy timeout
/// a write waits about half a minute before it fails.
const WRITE_RETRIES: u32 = 5;
const FIRST_RETRY_PAUSE: Duration = Duration::from_millis(50);

/// How long to back off before trying again to switch a new file to WAL.
const WAL_RETRY_PAUSE: Duration = Duration::from_millis(5);

/// Bumped whenever the tables change shape; a store written by a newer weft
/// is refused rather than misread.
const SCHEMA_VERSION: i64 = 1;

/// Room for every statement the modules prepare, so none is re-parsed on the
/// hot paths (agents list and poll often).
const STATEMENT_CACHE_CAPACITY: usize = 32;

/// A handle on the store file. Clones share one connection; open the file
/// again for an independent connection (as another process would have).
#[derive(Clone, Debug)]
pub struct Store {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    connection: Mutex<Connection>,
    path: PathBuf,
    /// The file opened, to notice it being removed or replaced.
    file: FileId,
    /// Writes of this handle that found the store locked past the busy
    /// timeout and had to try again.
    contended_writes: AtomicU64,
}

/// A file's identity: the same path may later name another file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileId {
    device: u64,
    inode: u64,
}

impl FileId {
    fn of(metadata: &std::fs::Metadata) -> FileId {
        FileId {
            device: metadata.dev(),
            inode: metadata.ino(),
        }
    }
}

impl Store {
    /// Opens the store at `path`, creating the file and its tables if missing.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let (connection, found) = retry_while_busy("open the store", None, || {
            let mut connection = Connection::open_with_flags(path, OpenFlags::default())?;
            configure(&connection)?;
            let found = create_schema(&mut connection)?;
            Ok((connection, found))
        })
        .map_err(open_error(path))?;
        Store::opened(path, connection, found)
    }

    /// Opens the store at `path` only if it exists with its tables: for
    /// commands that join a running cluster, where a new empty store would
    /// silently split them from the processes using the old one.
    pub fn open_existing(path: &Path) -> Result<Store, StoreError> {
        let missing = || StoreError::Missing {
            path: path.to_owned(),
        };
        // Also an empty file: SQLite would take it for a new database.
        if std::fs::metadata(path).map_or(true, |m| m.len() == 0) {
            return Err(missing());
        }
        let without_create = OpenFlags::default().difference(OpenFlags::SQLITE_OPEN_CREATE);
        let (connection, found) = retry_while_busy("open the store", None, || {
            let connection = Connection::open_with_flags(path, without_create)?;
            configure(&connection)?;
            let found = schema_version(&connection)?;
            Ok((connection, found))
        })
        .map_err(open_error(path))?;
        if found == 0 {
            return Err(missing());
        }
        Store::opened(path, connection, found)
    }

    fn opened(path: &Path, connection: Connection, found: i64) -> Result<Store, StoreError> {
        if found > SCHEMA_VERSION {
            return Err(StoreError::UnsupportedSchema {
                path: path.to_owned(),
                found,
                supported: SCHEMA_VERSION,
            });
        }
        let file = file_at(path)?.ok_or_else(|| StoreError::Removed {
            path: path.to_owned(),
        })?;
        Ok(Store {
            shared: Arc::new(Shared {
                connection: Mutex::new(connection),
                path: path.to_owned(),
                file,
                contended_writes: AtomicU64::new(0),
            }),
        })
    }

    /// Whether the path still names the file this handle opened; fails with
    /// [`StoreError::Removed`] or [`StoreError::Replaced`] when not (the
    /// handle goes on working on its file, which no new process will see).
    pub fn check_file(&self) -> Result<(), StoreError> {
        let path = || self.shared.path.clone();
        match file_at(&self.shared.path)? {
            Some(file) if file == self.shared.file => Ok(()),
            Some(_) => Err(StoreError::Replaced { path: path() }),
            None => Err(StoreError::Removed { path: path() }),
        }
    }

    pub fn path(&self) -> &Path {
        &self.shared.path
    }

    /// Runs `work` in a `BEGIN IMMEDIATE` transaction: the write lock is taken
    /// up front, so the data `work` reads cannot change before it writes.
    pub(crate) fn write<T>(
        &self,
        operation: &'static str,
        work: impl FnOnce(&Transaction<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.transaction(TransactionBehavior::Immediate, operation, work)
    }

    /// [`Store::write`] for a change of `kind`, whose watchers are told once
    /// it committed.
    pub(crate) fn write_changing<T>(
        &self,
        kind: &str,
        operation: &'static str,
        work: impl FnOnce(&Transaction<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let outcome = self.write(operation, work)?;
        wake::signal(self.path(), kind);
        Ok(outcome)
    }

    /// How many writes through this handle (and its clones) found the store
    /// locked by other processes for longer than the busy timeout and tried
    /// again: a measure of contention, for logs and health reports.
    pub fn contended_writes(&self) -> u64 {
        self.shared.contended_writes.load(Ordering::Relaxed)
    }

    /// Sets how long one attempt to take the write lock waits for other
    /// processes before backing off and trying again (5 s unless set).
    pub fn set_busy_timeout(&self, timeout: Duration) -> Result<(), StoreError> {
        self.connection()
            .busy_timeout(timeout)
            .during("set the busy timeout")
    }

    /// Runs `work` in one read snapshot, so e.g. a list and its revision agree.
    pub(crate) fn read<T>(
        &self,
        operation: &'static str,
        work: impl FnOnce(&Transaction<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.transaction(TransactionBehavior::Deferred, operation, work)
    }

    fn transaction<T>(
        &self,
        behavior: TransactionBehavior,
        operation: &'static str,
        work: impl FnOnce(&Transaction<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let connection = self.connection();
        let run = || {
            let transaction = self.begin(&connection, behavior, operation)?;
            let outcome = work(&transaction)?;
            transaction.commit().during(operation)?;
            Ok(outcome)
        };
        run().map_err(|error: StoreError| error.of_file(&self.shared.path))
    }

    /// Begins a transaction. Taking the write lock is where a busy store
    /// shows (in WAL mode nothing after it waits for other processes), so
    /// that step alone is retried, with back-off, before giving up.
    fn begin<'c>(
        &self,
        connection: &'c Connection,
        behavior: TransactionBehavior,
        operation: &'static str,
    ) -> Result<Transaction<'c>, StoreError> {
        let contended = Some(&self.shared.contended_writes);
        retry_while_busy(operation, contended, || {
            Transaction::new_unchecked(connection, behavior)
        })
        .during(operation)
    }

    fn connection(&self) -> MutexGuard<'_, Connection> {
        // A panic while the lock was held (say, in a caller's subnet chooser)
        // leaves the connection sound: the transaction rolled back on drop.
        self.shared
            .connection
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// Runs `attempt` again, with back-off, while it fails because other
/// processes held the store past the busy timeout (at most
/// [`WRITE_RETRIES`] times); each retry is logged and counted in `contended`.
fn retry_while_busy<T>(
    operation: &'static str,
    contended: Option<&AtomicU64>,
    mut attempt: impl FnMut() -> rusqlite::Result<T>,
) -> rusqlite::Result<T> {
    let mut pause = FIRST_RETRY_PAUSE;
    for retry in 1..=WRITE_RETRIES {
        match attempt() {
            Err(error) if is_busy(&error) => {
                if let Some(counter) = contended {
                    counter.fetch_add(1, Ordering::Relaxed);
                }
                tracing::warn!(
                    operation,
                    retry,
                    of = WRITE_RETRIES,
                    pause_ms = pause.as_millis() as u64,
                    "the cluster store is busy (other processes held it past the busy timeout); trying again"
                );
                std::thread::sleep(pause);
                pause *= 2;
            }
            outcome => return outcome,
        }
    }
    attempt()
}

/// A failure to open `path`, told apart as [`StoreError::of_file`] does.
fn open_error(path: &Path) -> impl Fn(rusqlite::Error) -> StoreError + '_ {
    move |source| {
        StoreError::Open {
            path: path.to_owned(),
            source,
        }
        .of_file(path)
    }
}

/// The identity of the file at `path`; `None` if there is none.
fn file_at(path: &Path) -> Result<Option<FileId>, StoreError> {
    match std::fs::metadata(path) {
        Ok(metadata) => Ok(Some(FileId::of(&metadata))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(StoreError::Inaccessible {
            path: path.to_owned(),
            source,
        }),
    }
}

fn configure(connection: &Connection) -> rusqlite::Result<()> {
    connection.busy_timeout(BUSY_TIMEOUT)?;
    connection.set_prepared_statement_cache_capacity(STATEMENT_CACHE_CAPACITY);
    enable_wal(connection)
}

/// WAL lets agents read while another process writes. The mode is stored in
/// the file, so only the first open of a new file changes anything; but that
/// change needs an exclusive lock, and SQLite reports a conflict with another
/// process opening the new file at once instead of calling the busy handler
/// (waiting could deadlock). So this waits itself, within the same budget.
fn enable_wal(connection: &Connection) -> rusqlite::Result<()> {
    let deadline = Instant::now() + BUSY_TIMEOUT;
    loop {
        match connection.query_row("PRAGMA journal_mode = WAL", [], |_| Ok(())) {
            Err(error) if is_busy(&error) && Instant::now() < deadline => {
                std::thread::sleep(WAL_RETRY_PAUSE);
            }
            outcome => return outcome,
        }
    }
}

fn is_busy(error: &rusqlite::Error) -> bool {
    error.sqlite_error_code() == Some(rusqlite::ErrorCode::DatabaseBusy)
}

/// Creates the tables of a new store; returns the schema version found.
fn create_schema(connection: &mut Connection) -> rusqlite::Result<i64> {
    // A store already set up needs no write lock: with hundreds of agents
    // starting at once, opening must not queue behind their writes.
    let existing = schema_version(connection)?;
    if existing != 0 {
        return Ok(existing);
    }
    // Immediate, so two processes opening a new file do not both create it.
    let transaction = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let found = schema_version(&transaction)?;
    if found == 0 {
        transaction.execute_batch(events::SCHEMA)?;
        transaction.execute_batch(objects::SCHEMA)?;
        transaction.execute_batch(leases::SCHEMA)?;
        transaction.pragma_update(None, "user_version", SCHEMA_VERSION)?;
    }
    transaction.commit()?;
    Ok(if found == 0 { SCHEMA_VERSION } else { found })
}

/// The schema version in the file; 0 for a file without weft's tables.
fn schema_version(connection: &Connection) -> rusqlite::Result<i64> {
    connection.query_row("PRAGMA user_version", [], |row| row.get(0))
}

/// Reads a text column through `FromStr` (subnets, addresses, JSON), so a
/// malformed row surfaces as a SQLite conversion error naming the column.
pub(crate) fn parsed_column<T>(row: &Row<'_>, index: usize) -> rusqlite::Result<T>
where
    T: FromStr,
    T::Err: std::error::Error + Send + Sync + 'static,
{
    let text: String = row.get(index)?;
    text.parse().map_err(|error| {
        rusqlite::Error::FromSqlConversionFailure(index, Type::Text, Box::new(error))
    })
}
