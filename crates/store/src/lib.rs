//! Durable state for Ferric.
//!
//! One `Store` over SQLite (default, one file, WAL) or PostgreSQL (by URL,
//! for several `ferricd` processes), with the same SQL and migrations. Nodes
//! and ports are kept whole as JSON, with the fields that are filtered,
//! sorted or unique also in their own columns. A node's exclusive lock (its
//! `reservation`) is taken by an atomic conditional update.
//!
//! On SQLite every write goes through one connection, in turn, and reads
//! through a few others beside it. The tests run on SQLite and, given
//! `FERRIC_TEST_POSTGRES_URL` (see `scripts/pg-test-server`), on PostgreSQL;
//! `examples/store_speed.rs` times the hot paths.

mod conductors;
mod connections;
mod listing;
mod nodes;
mod ports;

use connections::{Connection, Connections};
use ferric_types::ProvisionState;
use sqlx::migrate::Migrator;
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
    #[error("database error")]
    Database(#[source] sqlx::Error),
    #[error("stored record is corrupt")]
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
    /// Runs the reads; on PostgreSQL and in memory also the writes.
    reads: Connections,
    /// Runs the writes. SQLite lets one connection write at a time, so its
    /// writes queue here for a single connection instead of sleeping in
    /// SQLite's busy handler, which would cut concurrent throughput.
    writes: Connections,
    backend: Backend,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backend {
    Sqlite,
    Postgres,
}

static MIGRATOR: Migrator = sqlx::migrate!();

/// Connections reading a SQLite file at once.
const SQLITE_READERS: u32 = 8;
const POSTGRES_CONNECTIONS: u32 = 16;

impl Store {
    /// Connects to `url` (`sqlite://PATH`, `sqlite::memory:`, `postgres://...`),
    /// creating the SQLite file if needed, and runs the migrations.
    pub async fn connect(url: &str) -> Result<Store, StoreError> {
        sqlx::any::install_default_drivers();
        let store = if url.starts_with("sqlite:") {
            Self::connect_sqlite(url).await
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Self::connect_postgres(url).await
        } else {
            // Only the scheme: the rest may hold a password.
            let scheme = url.split(':').next().unwrap_or_default();
            Err(sqlx::Error::Configuration(
                format!("unsupported database URL scheme {scheme:?}: use sqlite:// or postgres://")
                    .into(),
            ))
        }
        .map_err(StoreError::Database)?;
        let mut conn = store.writer().await?;
        // `run` would make this future not Send ("Acquire is not general
        // enough"); sqlx offers `run_direct` for that.
        MIGRATOR
            .run_direct(None, &mut *conn, false)
            .await
            .map_err(|e| StoreError::Database(e.into()))?;
        drop(conn);
        Ok(store)
    }

    async fn connect_sqlite(url: &str) -> Result<Store, sqlx::Error> {
        if url.contains(":memory:") || url.contains("mode=memory") {
            // Each connection to `:memory:` would be a database of its own:
            // keep exactly one, for ever.
            let only = Connections::sqlite(url, 1).await?;
            return Ok(Store {
                reads: only.clone(),
                writes: only,
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
        let writes = Connections::sqlite(&url, 1).await?;
        let reads = Connections::sqlite(&url, SQLITE_READERS).await?;
        Ok(Store {
            reads,
            writes,
            backend: Backend::Sqlite,
        })
    }

    async fn connect_postgres(url: &str) -> Result<Store, sqlx::Error> {
        let pool = Connections::postgres(url, POSTGRES_CONNECTIONS).await?;
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

    /// Closes every connection, once those in use are done. Every clone of
    /// this store fails from then on. Dropping the store also closes them,
    /// without waiting.
    pub async fn close(&self) {
        self.writes.close().await;
        self.reads.close().await;
    }

    /// A connection for a write. Hold it for one statement only: on SQLite
    /// every other write waits for it.
    async fn writer(&self) -> Result<Connection, StoreError> {
        self.writes.acquire().await.map_err(StoreError::Database)
    }

    async fn reader(&self) -> Result<Connection, StoreError> {
        self.reads.acquire().await.map_err(StoreError::Database)
    }

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
        let mut conn = self.reads.acquire().await?;
        Ok(query.fetch_optional(&mut *conn).await?.is_some())
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

/// Every future of the store must be Send where the API and the conductor
/// spawn them: inside generic code, where rustc proves less than in a plain
/// function (a future awaiting `Migrator::run` on a connection fails there).
#[cfg(test)]
mod futures_are_send {
    use super::*;
    use ferric_types::{Node, Port};
    use std::future::Future;

    fn spawnable<F, Fut>(_: F)
    where
        F: Fn(Store) -> Fut,
        Fut: Future + Send + 'static,
    {
    }

    fn node() -> Node {
        Node::new(Uuid::nil(), "fake-hardware", ProvisionState::Enroll)
    }

    fn port() -> Port {
        Port::new(Uuid::nil(), "52:54:00:00:00:01", Uuid::nil())
    }

    #[test]
    fn in_generic_code() {
        let ident = || NodeIdent::Uuid(Uuid::nil());
        spawnable(|_| async { Store::connect("sqlite::memory:").await });
        spawnable(|s| async move { s.create_node(&node()).await });
        spawnable(move |s| async move { s.get_node(&ident()).await });
        spawnable(|s| async move { s.list_nodes(&NodeQuery::default()).await });
        spawnable(|s| async move { s.update_node(&node(), "c").await });
        spawnable(|s| async move { s.delete_node(Uuid::nil()).await });
        spawnable(move |s| async move { s.reserve_node(&ident(), "c").await });
        spawnable(|s| async move { s.release_node(Uuid::nil(), "c").await });
        spawnable(|s| async move { s.update_and_release_node(&node(), "c").await });
        spawnable(|s| async move { s.release_all_locks("c").await });
        spawnable(|s| async move { s.create_port(&port()).await });
        spawnable(|s| async move { s.get_port(Uuid::nil()).await });
        spawnable(|s| async move { s.get_port_by_name("p").await });
        spawnable(|s| async move { s.list_ports(&PortQuery::default()).await });
        spawnable(|s| async move { s.update_port(&port()).await });
        spawnable(|s| async move { s.delete_port(Uuid::nil()).await });
        spawnable(|s| async move { s.register_conductor("c", "", &[]).await });
        spawnable(|s| async move { s.touch_conductor("c").await });
        spawnable(|s| async move { s.unregister_conductor("c").await });
        spawnable(|s| async move { s.list_conductors(1).await });
        spawnable(|s| async move { s.close().await });
    }
}
