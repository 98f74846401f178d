//! Database connections handed out to one task at a time.
//!
//! PostgreSQL connections come from sqlx's pool, which checks each one's
//! health (a round trip) as it hands it out and as it takes it back: worth
//! it over a network. SQLite connections are local, and that check, a round
//! trip to the connection's worker thread, costs more than most statements
//! here (measured: a `SELECT 1` takes 5 µs on a held connection and over
//! 100 µs through the pool). So SQLite connections are kept open here and
//! lent without checks.

use sqlx::any::AnyPoolOptions;
use sqlx::pool::PoolConnection;
use sqlx::{Any, AnyConnection, AnyPool, Connection as _, Executor};
use std::ops::{Deref, DerefMut};
use std::sync::{Arc, Mutex, PoisonError};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Set on every SQLite connection. WAL lets readers run beside the writer;
/// NORMAL is durable across crashes of the process (not of the machine's
/// power) in WAL mode and saves an fsync per commit; the busy timeout makes
/// writers of other processes wait for the lock rather than fail. A bigger
/// page cache, memory-mapped reads and rarer checkpoints (each one fsyncs)
/// make an INSERT cheaper.
const SQLITE_PRAGMAS: &[&str] = &[
    "PRAGMA journal_mode = WAL",
    "PRAGMA synchronous = NORMAL",
    "PRAGMA busy_timeout = 5000",
    "PRAGMA foreign_keys = ON",
    // KiB
    "PRAGMA cache_size = -16384",
    "PRAGMA mmap_size = 268435456",
    // Sorts of whole rows stay off the disk.
    "PRAGMA temp_store = MEMORY",
    // Pages of 4 KiB (default 1000); the WAL file is cut back to 64 MiB
    // after a checkpoint.
    "PRAGMA wal_autocheckpoint = 4096",
    "PRAGMA journal_size_limit = 67108864",
];

/// Where a store's statements get a connection.
#[derive(Clone)]
pub(crate) enum Connections {
    Pool(AnyPool),
    Sqlite(Arc<SqliteConnections>),
}

/// Up to `size` SQLite connections, opened when first needed and then kept.
pub(crate) struct SqliteConnections {
    url: String,
    size: u32,
    idle: Mutex<Vec<AnyConnection>>,
    /// One per connection that may be lent at once; closed with the store.
    permits: Arc<Semaphore>,
}

/// A connection lent to one task; it goes back when dropped.
pub(crate) enum Connection {
    Pool(PoolConnection<Any>),
    Sqlite {
        conn: Option<AnyConnection>,
        from: Arc<SqliteConnections>,
        _permit: OwnedSemaphorePermit,
    },
}

impl Connections {
    pub async fn postgres(url: &str, size: u32) -> Result<Self, sqlx::Error> {
        let pool = AnyPoolOptions::new()
            .max_connections(size)
            .connect(url)
            .await?;
        Ok(Connections::Pool(pool))
    }

    /// Up to `size` connections to the SQLite database at `url`, the first
    /// one opened at once (an in-memory database lives as long as it).
    pub async fn sqlite(url: &str, size: u32) -> Result<Self, sqlx::Error> {
        let first = open_sqlite(url).await?;
        Ok(Connections::Sqlite(Arc::new(SqliteConnections {
            url: url.to_string(),
            size,
            idle: Mutex::new(vec![first]),
            permits: Arc::new(Semaphore::new(size as usize)),
        })))
    }

    /// A connection, waiting while all are lent.
    pub async fn acquire(&self) -> Result<Connection, sqlx::Error> {
        match self {
            Connections::Pool(pool) => Ok(Connection::Pool(pool.acquire().await?)),
            Connections::Sqlite(sqlite) => {
                let permit = Arc::clone(&sqlite.permits)
                    .acquire_owned()
                    .await
                    .map_err(|_| sqlx::Error::PoolClosed)?;
                let idle = sqlite
                    .idle
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .pop();
                let conn = match idle {
                    Some(conn) => conn,
                    None => open_sqlite(&sqlite.url).await?,
                };
                Ok(Connection::Sqlite {
                    conn: Some(conn),
                    from: Arc::clone(sqlite),
                    _permit: permit,
                })
            }
        }
    }

    /// Closes every connection once those lent have come back; acquiring
    /// fails from then on.
    pub async fn close(&self) {
        match self {
            Connections::Pool(pool) => pool.close().await,
            Connections::Sqlite(sqlite) => {
                let Ok(all) = sqlite.permits.acquire_many(sqlite.size).await else {
                    return;
                };
                sqlite.permits.close();
                drop(all);
                let idle = std::mem::take(
                    &mut *sqlite.idle.lock().unwrap_or_else(PoisonError::into_inner),
                );
                for conn in idle {
                    conn.close().await.ok();
                }
            }
        }
    }
}

async fn open_sqlite(url: &str) -> Result<AnyConnection, sqlx::Error> {
    let mut conn = AnyConnection::connect(url).await?;
    for pragma in SQLITE_PRAGMAS {
        conn.execute(*pragma).await?;
    }
    Ok(conn)
}

impl Deref for Connection {
    type Target = AnyConnection;

    fn deref(&self) -> &AnyConnection {
        match self {
            Connection::Pool(conn) => conn,
            Connection::Sqlite { conn, .. } => conn.as_ref().expect("lent until dropped"),
        }
    }
}

impl DerefMut for Connection {
    fn deref_mut(&mut self) -> &mut AnyConnection {
        match self {
            Connection::Pool(conn) => conn,
            Connection::Sqlite { conn, .. } => conn.as_mut().expect("lent until dropped"),
        }
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        // Also after a cancelled statement: SQLite's worker thread finishes
        // or abandons it before it takes the next one.
        if let Connection::Sqlite { conn, from, .. } = self {
            if let Some(conn) = conn.take() {
                from.idle
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(conn);
            }
        }
    }
}
