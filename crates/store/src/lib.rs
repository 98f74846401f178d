//! Durable state for Ferric.
//!
//! One `Store` over SQLite (default, one file, WAL) or PostgreSQL (by URL,
//! for several `ferricd` processes), with the same SQL and migrations. Nodes
//! and ports are kept whole as JSON, with the fields that are filtered,
//! sorted or unique also in their own columns. A node's exclusive lock (its
//! `reservation`) is taken by an atomic conditional update.

mod conductors;
mod listing;
mod nodes;
mod ports;

use ferric_types::{ProvisionState, Timestamp};
use sqlx::any::AnyPoolOptions;
use sqlx::migrate::Migrator;
use sqlx::{AnyPool, Executor};
use uuid::Uuid;

/// Errors of the store. The API maps them to HTTP statuses.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("node {0} could not be found")]
    NodeNotFound(String),
    #[error("port {0} could not be found")]
    PortNotFound(String),
    /// Another conductor holds the node's lock.
    #[error("node {node} is locked by host {holder}, please retry after the current operation is completed")]
    NodeLocked { node: Uuid, holder: String },
    /// A unique column (uuid, name, instance_uuid, MAC address) already has this value.
    #[error("{0}")]
    Conflict(String),
    #[error("database error: {0}")]
    Database(#[source] sqlx::Error),
    #[error("stored record is corrupt: {0}")]
    Corrupt(#[source] serde_json::Error),
}

/// Sort direction of a listing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SortDir {
    #[default]
    Asc,
    Desc,
}

/// Columns a node listing may be sorted by (Ironic's default is `id`, the
/// order of creation).
pub const NODE_SORT_KEYS: &[&str] = &[
    "id",
    "uuid",
    "name",
    "driver",
    "provision_state",
    "maintenance",
    "instance_uuid",
    "resource_class",
    "conductor_group",
    "owner",
    "lessee",
    "shard",
    "created_at",
    "updated_at",
    "provision_updated_at",
];

/// Filters and paging of `GET /v1/nodes`. Every `Some` filter must match.
#[derive(Debug, Clone, Default)]
pub struct NodeQuery {
    pub provision_state: Option<ProvisionState>,
    pub driver: Option<String>,
    pub maintenance: Option<bool>,
    /// Some(true): nodes with an instance_uuid; Some(false): without.
    pub associated: Option<bool>,
    pub instance_uuid: Option<Uuid>,
    pub resource_class: Option<String>,
    pub conductor_group: Option<String>,
    pub owner: Option<String>,
    pub lessee: Option<String>,
    pub shard: Option<String>,
    pub retired: Option<bool>,
    /// Nodes locked by this conductor (used at start-up and for takeover).
    pub reservation: Option<String>,
    /// Only nodes whose provision state is one of these.
    pub provision_states: Option<Vec<ProvisionState>>,
    /// One of `NODE_SORT_KEYS`; `id` when None.
    pub sort_key: Option<String>,
    pub sort_dir: SortDir,
    /// Start after the node with this UUID (in the chosen order).
    pub marker: Option<Uuid>,
    pub limit: Option<u32>,
}

/// Filters and paging of `GET /v1/ports`.
#[derive(Debug, Clone, Default)]
pub struct PortQuery {
    pub node_uuid: Option<Uuid>,
    pub address: Option<String>,
    /// One of "id", "uuid", "address", "created_at", "updated_at"; `id` when None.
    pub sort_key: Option<String>,
    pub sort_dir: SortDir,
    pub marker: Option<Uuid>,
    pub limit: Option<u32>,
}

/// How to find a node: by UUID or by its logical name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeIdent {
    Uuid(Uuid),
    Name(String),
}

impl NodeIdent {
    /// A UUID if the text parses as one, a name otherwise.
    pub fn parse(s: &str) -> NodeIdent {
        match Uuid::parse_str(s) {
            Ok(u) => NodeIdent::Uuid(u),
            Err(_) => NodeIdent::Name(s.to_string()),
        }
    }
}

/// The store. Cheap to clone (a pool inside).
#[derive(Clone)]
pub struct Store {
    /// Runs the reads; on PostgreSQL also the writes (the same pool).
    reads: AnyPool,
    /// Runs the writes. SQLite lets one connection write at a time, so its
    /// writes queue here for a single connection instead of sleeping in
    /// SQLite's busy handler, which would cut concurrent throughput.
    writes: AnyPool,
    backend: Backend,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backend {
    Sqlite,
    Postgres,
}

static MIGRATOR: Migrator = sqlx::migrate!();

/// Set on every SQLite connection. WAL lets readers run beside the writer;
/// NORMAL is durable across crashes of the process (not of the machine's
/// power) in WAL mode and saves an fsync per commit; the busy timeout makes
/// writers of other processes wait for the lock rather than fail.
const SQLITE_PRAGMAS: &[&str] = &[
    "PRAGMA journal_mode = WAL",
    "PRAGMA synchronous = NORMAL",
    "PRAGMA busy_timeout = 5000",
    "PRAGMA foreign_keys = ON",
    "PRAGMA cache_size = -32768",
    "PRAGMA mmap_size = 268435456",
    "PRAGMA wal_autocheckpoint = 8192",
];

/// Connections reading a SQLite file at once.
const SQLITE_READERS: u32 = 8;
const POSTGRES_CONNECTIONS: u32 = 16;

impl Store {
    /// Connects to `url` (`sqlite://PATH`, `sqlite::memory:`, `postgres://...`),
    /// creating the SQLite file if needed, and runs the migrations.
    pub async fn connect(url: &str) -> Result<Store, StoreError> {
        sqlx::any::install_default_drivers();
        let store = if url.starts_with("sqlite:") {
            Self::connect_sqlite(url).await?
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Self::connect_postgres(url).await?
        } else {
            // Only the scheme: the rest may hold a password.
            let scheme = url.split(':').next().unwrap_or_default();
            return Err(StoreError::Database(sqlx::Error::Configuration(
                format!("unsupported database URL scheme {scheme:?}: use sqlite:// or postgres://")
                    .into(),
            )));
        };
        MIGRATOR
            .run(&store.writes)
            .await
            .map_err(|e| StoreError::Database(e.into()))?;
        Ok(store)
    }

    async fn connect_sqlite(url: &str) -> Result<Store, StoreError> {
        let in_memory = url.contains(":memory:") || url.contains("mode=memory");
        let with_pragmas = |options: AnyPoolOptions| {
            options
                // A local file: nothing to lose a connection to.
                .test_before_acquire(false)
                .after_connect(|conn, _| {
                    Box::pin(async move {
                        for pragma in SQLITE_PRAGMAS {
                            conn.execute(*pragma).await?;
                        }
                        Ok(())
                    })
                })
        };
        if in_memory {
            // Each connection to `:memory:` would be a database of its own:
            // keep exactly one, for ever.
            let pool = with_pragmas(AnyPoolOptions::new())
                .max_connections(1)
                .min_connections(1)
                .idle_timeout(None)
                .max_lifetime(None)
                .connect(url)
                .await
                .map_err(StoreError::Database)?;
            return Ok(Store {
                reads: pool.clone(),
                writes: pool,
                backend: Backend::Sqlite,
            });
        }
        let url = if url.contains("mode=") {
            url.to_string()
        } else {
            let separator = if url.contains('?') { '&' } else { '?' };
            format!("{url}{separator}mode=rwc")
        };
        // The writer connects first: it creates the file and turns on WAL
        // before any reader opens it.
        let writes = with_pragmas(AnyPoolOptions::new())
            .max_connections(1)
            .connect(&url)
            .await
            .map_err(StoreError::Database)?;
        let reads = with_pragmas(AnyPoolOptions::new())
            .max_connections(SQLITE_READERS)
            .connect_lazy(&url)
            .map_err(StoreError::Database)?;
        Ok(Store {
            reads,
            writes,
            backend: Backend::Sqlite,
        })
    }

    async fn connect_postgres(url: &str) -> Result<Store, StoreError> {
        let pool = AnyPoolOptions::new()
            .max_connections(POSTGRES_CONNECTIONS)
            .connect(url)
            .await
            .map_err(StoreError::Database)?;
        Ok(Store {
            reads: pool.clone(),
            writes: pool,
            backend: Backend::Postgres,
        })
    }

    /// "sqlite" or "postgres".
    pub fn backend(&self) -> &'static str {
        match self.backend {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }

    /// Closes every connection, waiting for those in use. Other clones of
    /// this store fail from then on. Dropping the store also closes them, but
    /// without waiting.
    pub async fn close(&self) {
        self.writes.close().await;
        self.reads.close().await;
    }
}

/// Whether the database refused a statement because a unique column
/// already holds the value.
fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.is_unique_violation())
}

/// Whether the database refused a statement because a referenced row is
/// missing.
fn is_foreign_key_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.is_foreign_key_violation())
}

/// How often an INSERT may find its `MAX(id) + 1` taken by a concurrent
/// INSERT (PostgreSQL; SQLite writes one at a time) before giving up.
const ID_ATTEMPTS: u32 = 100;

impl Store {
    /// Whether `sql` finds a row, with `value` bound to $1 and `except`, if
    /// given, to $2. Explains unique violations.
    async fn taken(
        &self,
        sql: &'static str,
        value: &str,
        except: Option<&str>,
    ) -> Result<bool, sqlx::Error> {
        let mut query = sqlx::query(sql).bind(value);
        if let Some(except) = except {
            query = query.bind(except);
        }
        Ok(query.fetch_optional(&self.reads).await?.is_some())
    }
}

/// The current time, at the precision a record keeps it (microseconds), so
/// that a written record equals the one read back.
fn now() -> Timestamp {
    Timestamp::from_unix_micros(Timestamp::now().unix_micros())
}
