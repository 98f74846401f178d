//! Nodes and their exclusive locks.

use crate::listing::{parse_rows, Select, SortColumn, Value};
use crate::{is_unique_violation, NodeIdent, NodeQuery, Store, StoreError, ID_ATTEMPTS};
use ferric_types::{Node, Timestamp};
use sqlx::any::{AnyArguments, AnyRow};
use sqlx::query::Query;
use sqlx::{Any, Row};
use std::time::Duration;
use uuid::Uuid;

/// Every `NODE_SORT_KEYS` entry, with whether its column may be NULL.
const NODE_SORT_COLUMNS: &[SortColumn] = &[
    SortColumn::ID,
    SortColumn::not_null("uuid"),
    SortColumn::nullable("name"),
    SortColumn::not_null("driver"),
    SortColumn::not_null("provision_state"),
    SortColumn::not_null("maintenance"),
    SortColumn::nullable("instance_uuid"),
    SortColumn::nullable("resource_class"),
    SortColumn::not_null("conductor_group"),
    SortColumn::nullable("owner"),
    SortColumn::nullable("lessee"),
    SortColumn::nullable("shard"),
    SortColumn::not_null("created_at"),
    SortColumn::nullable("updated_at"),
    SortColumn::nullable("provision_updated_at"),
];

/// A node's lock taken by another conductor is retried this often, this far
/// apart, before `NodeLocked`: short operations finish meanwhile.
const RESERVE_RETRIES: u32 = 3;
const RESERVE_RETRY_DELAY: Duration = Duration::from_millis(20);

/// The holder named by a `NodeLocked` when the lock changed hands too often
/// to tell.
const UNKNOWN_HOLDER: &str = "another conductor";

/// The columns a listed node is read from, for `node_from_row`.
const NODE_COLUMNS: &str = "t.reservation, t.data";

// Placeholders $1 to $15 of both statements are the node's columns, bound by
// `bind_node_columns`.

const INSERT_NODE: &str = "INSERT INTO nodes (name, driver, provision_state, maintenance, \
    instance_uuid, resource_class, conductor_group, owner, lessee, shard, retired, \
    created_at, updated_at, provision_updated_at, data, uuid, id) \
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, \
    (SELECT COALESCE(MAX(id), 0) + 1 FROM nodes)) \
    ON CONFLICT (id) DO NOTHING";

/// Writes a node unless another conductor holds its lock, and releases the
/// lock if $16 is true.
const UPDATE_NODE: &str = "UPDATE nodes SET name = $1, driver = $2, provision_state = $3, \
    maintenance = $4, instance_uuid = $5, resource_class = $6, conductor_group = $7, \
    owner = $8, lessee = $9, shard = $10, retired = $11, created_at = $12, updated_at = $13, \
    provision_updated_at = $14, data = $15, \
    reservation = CASE WHEN $16 THEN NULL ELSE reservation END \
    WHERE uuid = $17 AND (reservation IS NULL OR reservation = $18) \
    RETURNING reservation";

fn bind_node_columns<'q>(
    query: Query<'q, Any, AnyArguments>,
    node: &Node,
    data: String,
) -> Query<'q, Any, AnyArguments> {
    query
        .bind(node.name.clone())
        .bind(node.driver.clone())
        .bind(node.provision_state.as_str())
        .bind(node.maintenance)
        .bind(node.instance_uuid.map(|u| u.to_string()))
        .bind(node.resource_class.clone())
        .bind(node.conductor_group.clone())
        .bind(node.owner.clone())
        .bind(node.lessee.clone())
        .bind(node.shard.clone())
        .bind(node.retired)
        .bind(node.created_at.unix_micros())
        .bind(node.updated_at.map(Timestamp::unix_micros))
        .bind(node.provision_updated_at.map(Timestamp::unix_micros))
        .bind(data)
}

fn node_json(node: &Node) -> Result<String, StoreError> {
    serde_json::to_string(node).map_err(StoreError::Corrupt)
}

/// A node from a row of (reservation, data). The lock lives in its own
/// column only: whatever `reservation` the JSON holds is stale.
fn node_from_row(row: &AnyRow) -> Result<Node, StoreError> {
    let reservation: Option<String> = row.try_get(0).map_err(StoreError::Database)?;
    let data: &str = row.try_get(1).map_err(StoreError::Database)?;
    let mut node: Node = serde_json::from_str(data).map_err(StoreError::Corrupt)?;
    node.reservation = reservation;
    Ok(node)
}

impl Store {
    /// Inserts a new node. Conflict if its uuid, name or instance_uuid is taken.
    /// The node starts unlocked, whatever its `reservation` says.
    pub async fn create_node(&self, node: &Node) -> Result<(), StoreError> {
        let data = node_json(node)?;
        for _ in 0..ID_ATTEMPTS {
            let query = bind_node_columns(sqlx::query(INSERT_NODE), node, data.clone())
                .bind(node.uuid.to_string());
            let result = query.execute(&mut *self.writer().await?).await;
            match result {
                Ok(done) if done.rows_affected() == 1 => return Ok(()),
                // A concurrent INSERT took the same id.
                Ok(_) => continue,
                Err(e) if is_unique_violation(&e) => {
                    return Err(self.node_conflict(node, true).await)
                }
                Err(e) => return Err(StoreError::Database(e)),
            }
        }
        Err(StoreError::Conflict(format!(
            "Node {} could not be given an id: too many concurrent creations, please retry.",
            node.uuid
        )))
    }

    pub async fn get_node(&self, ident: &NodeIdent) -> Result<Node, StoreError> {
        let (sql, key) = match ident {
            NodeIdent::Uuid(uuid) => (
                "SELECT reservation, data FROM nodes WHERE uuid = $1",
                uuid.to_string(),
            ),
            NodeIdent::Name(name) => (
                "SELECT reservation, data FROM nodes WHERE name = $1",
                name.clone(),
            ),
        };
        let row = sqlx::query(sql)
            .bind(key.as_str())
            .fetch_optional(&mut *self.reader().await?)
            .await
            .map_err(StoreError::Database)?;
        match row {
            Some(row) => node_from_row(&row),
            None => Err(StoreError::NodeNotFound(key)),
        }
    }

    /// Nodes matching `query`, in its order, at most `limit`.
    /// NodeNotFound if the marker node does not exist.
    pub async fn list_nodes(&self, query: &NodeQuery) -> Result<Vec<Node>, StoreError> {
        let mut select = Select::new(NODE_COLUMNS, "nodes");
        let text = |s: &String| Value::Text(s.clone());
        if let Some(state) = query.provision_state {
            select.equal("provision_state", Value::Text(state.as_str().to_string()));
        }
        if let Some(states) = &query.provision_states {
            let states = states
                .iter()
                .map(|s| Value::Text(s.as_str().to_string()))
                .collect();
            select.one_of("provision_state", states);
        }
        if let Some(driver) = &query.driver {
            select.equal("driver", text(driver));
        }
        if let Some(maintenance) = query.maintenance {
            select.equal("maintenance", Value::Bool(maintenance));
        }
        if let Some(associated) = query.associated {
            select.null("instance_uuid", !associated);
        }
        if let Some(instance_uuid) = query.instance_uuid {
            select.equal("instance_uuid", Value::Text(instance_uuid.to_string()));
        }
        if let Some(resource_class) = &query.resource_class {
            select.equal("resource_class", text(resource_class));
        }
        if let Some(group) = &query.conductor_group {
            select.equal("conductor_group", text(group));
        }
        if let Some(owner) = &query.owner {
            select.equal("owner", text(owner));
        }
        if let Some(lessee) = &query.lessee {
            select.equal("lessee", text(lessee));
        }
        if let Some(shard) = &query.shard {
            select.equal("shard", text(shard));
        }
        if let Some(retired) = query.retired {
            select.equal("retired", Value::Bool(retired));
        }
        if let Some(reservation) = &query.reservation {
            select.equal("reservation", text(reservation));
        }

        let marker_id = match query.marker {
            Some(marker) => Some(self.node_id(marker).await?),
            None => None,
        };
        let sort = SortColumn::find(NODE_SORT_COLUMNS, query.sort_key.as_deref());
        let rows = select
            .fetch(
                &mut *self.reader().await?,
                sort,
                query.sort_dir,
                marker_id,
                query.limit,
            )
            .await
            .map_err(StoreError::Database)?;
        parse_rows(rows, node_from_row).await
    }

    /// Writes the whole node (its `reservation` field is ignored: only
    /// `reserve_node`/`release_node` change the lock). Sets `updated_at`.
    /// Only the lock holder may write a locked node: `NodeLocked` when
    /// another conductor holds it. Conflict on a duplicate name or
    /// instance_uuid. Returns the node as stored.
    pub async fn update_node(&self, node: &Node, conductor: &str) -> Result<Node, StoreError> {
        self.write_node(node, conductor, false).await
    }

    /// Deletes a node and its ports. NodeNotFound if absent.
    pub async fn delete_node(&self, uuid: Uuid) -> Result<(), StoreError> {
        // The ports go by ON DELETE CASCADE.
        let done = sqlx::query("DELETE FROM nodes WHERE uuid = $1")
            .bind(uuid.to_string())
            .execute(&mut *self.writer().await?)
            .await
            .map_err(StoreError::Database)?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NodeNotFound(uuid.to_string()));
        }
        Ok(())
    }

    /// Takes the node's exclusive lock for `conductor` (atomic conditional
    /// update, a few quick retries), and returns the node as locked.
    /// `NodeLocked` if another conductor holds it; taking a lock one already
    /// holds also answers `NodeLocked` (locks are not re-entrant).
    pub async fn reserve_node(
        &self,
        ident: &NodeIdent,
        conductor: &str,
    ) -> Result<Node, StoreError> {
        let uuid = match ident {
            NodeIdent::Uuid(uuid) => *uuid,
            NodeIdent::Name(name) => self.node_uuid_by_name(name).await?,
        };
        for attempt in 0..=RESERVE_RETRIES {
            let row = sqlx::query(
                "UPDATE nodes SET reservation = $1 WHERE uuid = $2 AND reservation IS NULL \
                 RETURNING reservation, data",
            )
            .bind(conductor)
            .bind(uuid.to_string())
            .fetch_optional(&mut *self.writer().await?)
            .await
            .map_err(StoreError::Database)?;
            if let Some(row) = row {
                return node_from_row(&row);
            }
            match self.node_lock(uuid).await? {
                // Released since the UPDATE: try again at once.
                None => {}
                Some(holder) if attempt == RESERVE_RETRIES => {
                    return Err(StoreError::NodeLocked { node: uuid, holder })
                }
                Some(holder) => {
                    tracing::debug!(node = %uuid, %holder, "node is locked, retrying");
                    tokio::time::sleep(RESERVE_RETRY_DELAY).await;
                }
            }
        }
        // Every attempt lost to a lock taken and released in between.
        Err(StoreError::NodeLocked {
            node: uuid,
            holder: UNKNOWN_HOLDER.to_string(),
        })
    }

    /// Releases the lock if `conductor` holds it; Ok either way.
    pub async fn release_node(&self, uuid: Uuid, conductor: &str) -> Result<(), StoreError> {
        sqlx::query("UPDATE nodes SET reservation = NULL WHERE uuid = $1 AND reservation = $2")
            .bind(uuid.to_string())
            .bind(conductor)
            .execute(&mut *self.writer().await?)
            .await
            .map_err(StoreError::Database)?;
        Ok(())
    }

    /// Writes the node and releases its lock in one statement.
    pub async fn update_and_release_node(
        &self,
        node: &Node,
        conductor: &str,
    ) -> Result<Node, StoreError> {
        self.write_node(node, conductor, true).await
    }

    /// Releases every lock held by `conductor` (at its start-up, or when
    /// another conductor takes over a dead one). Returns how many.
    pub async fn release_all_locks(&self, conductor: &str) -> Result<u64, StoreError> {
        let done = sqlx::query("UPDATE nodes SET reservation = NULL WHERE reservation = $1")
            .bind(conductor)
            .execute(&mut *self.writer().await?)
            .await
            .map_err(StoreError::Database)?;
        Ok(done.rows_affected())
    }

    /// `update_node`, and with `release` also drops the lock.
    async fn write_node(
        &self,
        node: &Node,
        conductor: &str,
        release: bool,
    ) -> Result<Node, StoreError> {
        let mut node = node.clone();
        node.updated_at = Some(Timestamp::now());
        // The column holds the lock; a copy in the JSON would only go stale.
        node.reservation = None;
        let data = node_json(&node)?;
        // A lock released between the UPDATE and the look-up: one more try.
        for _ in 0..2 {
            let row = bind_node_columns(sqlx::query(UPDATE_NODE), &node, data.clone())
                .bind(release)
                .bind(node.uuid.to_string())
                .bind(conductor)
                .fetch_optional(&mut *self.writer().await?)
                .await;
            match row {
                Ok(Some(row)) => {
                    // As read back: a timestamp finer than microseconds is not kept.
                    let mut stored: Node =
                        serde_json::from_str(&data).map_err(StoreError::Corrupt)?;
                    stored.reservation = row.try_get(0).map_err(StoreError::Database)?;
                    return Ok(stored);
                }
                Ok(None) => {}
                Err(e) if is_unique_violation(&e) => {
                    return Err(self.node_conflict(&node, false).await)
                }
                Err(e) => return Err(StoreError::Database(e)),
            }
            if let Some(holder) = self.node_lock(node.uuid).await? {
                return Err(StoreError::NodeLocked {
                    node: node.uuid,
                    holder,
                });
            }
        }
        Err(StoreError::NodeLocked {
            node: node.uuid,
            holder: UNKNOWN_HOLDER.to_string(),
        })
    }

    /// The holder of the node's lock; NodeNotFound if the node is absent.
    async fn node_lock(&self, uuid: Uuid) -> Result<Option<String>, StoreError> {
        let holder: Option<Option<String>> =
            sqlx::query_scalar("SELECT reservation FROM nodes WHERE uuid = $1")
                .bind(uuid.to_string())
                .fetch_optional(&mut *self.reader().await?)
                .await
                .map_err(StoreError::Database)?;
        holder.ok_or_else(|| StoreError::NodeNotFound(uuid.to_string()))
    }

    async fn node_uuid_by_name(&self, name: &str) -> Result<Uuid, StoreError> {
        let uuid: Option<String> = sqlx::query_scalar("SELECT uuid FROM nodes WHERE name = $1")
            .bind(name)
            .fetch_optional(&mut *self.reader().await?)
            .await
            .map_err(StoreError::Database)?;
        let uuid = uuid.ok_or_else(|| StoreError::NodeNotFound(name.to_string()))?;
        Uuid::parse_str(&uuid).map_err(|_| StoreError::NodeNotFound(name.to_string()))
    }

    /// The row id of a node (the listing marker).
    async fn node_id(&self, uuid: Uuid) -> Result<i64, StoreError> {
        let id: Option<i64> = sqlx::query_scalar("SELECT id FROM nodes WHERE uuid = $1")
            .bind(uuid.to_string())
            .fetch_optional(&mut *self.reader().await?)
            .await
            .map_err(StoreError::Database)?;
        id.ok_or_else(|| StoreError::NodeNotFound(uuid.to_string()))
    }

    /// The Conflict for a node refused by a unique column on INSERT
    /// (`creating`) or UPDATE, in Ironic's words.
    /// The database's own message names the column differently on SQLite and
    /// PostgreSQL, so ask which value is taken.
    async fn node_conflict(&self, node: &Node, creating: bool) -> StoreError {
        match self.node_conflict_message(node, creating).await {
            Ok(message) => StoreError::Conflict(message),
            Err(e) => StoreError::Database(e),
        }
    }

    async fn node_conflict_message(
        &self,
        node: &Node,
        creating: bool,
    ) -> Result<String, sqlx::Error> {
        let uuid = node.uuid.to_string();
        if creating
            && self
                .taken("SELECT 1 FROM nodes WHERE uuid = $1", &uuid, None)
                .await?
        {
            return Ok(format!("A node with UUID {uuid} already exists."));
        }
        if let Some(name) = &node.name {
            let sql = "SELECT 1 FROM nodes WHERE name = $1 AND uuid <> $2";
            if self.taken(sql, name, Some(&uuid)).await? {
                return Ok(format!("A node with name {name} already exists."));
            }
        }
        if let Some(instance) = node.instance_uuid {
            let sql = "SELECT 1 FROM nodes WHERE instance_uuid = $1 AND uuid <> $2";
            if self.taken(sql, &instance.to_string(), Some(&uuid)).await? {
                return Ok(format!(
                    "A node with instance UUID {instance} already exists."
                ));
            }
        }
        // Deleted again meanwhile.
        Ok(format!(
            "A node with the UUID, name or instance UUID of node {uuid} already exists."
        ))
    }
}
