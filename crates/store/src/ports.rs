//! Ports: a node's network interfaces, found by MAC address.

use crate::listing::{parse_rows, Select, SortColumn, Value};
use crate::{
    is_foreign_key_violation, is_unique_violation, PortQuery, Store, StoreError, ID_ATTEMPTS,
};
use ferric_types::{Port, Timestamp};
use sqlx::any::{AnyArguments, AnyRow};
use sqlx::query::Query;
use sqlx::{Any, Row};
use uuid::Uuid;

const PORT_SORT_COLUMNS: &[SortColumn] = &[
    SortColumn::ID,
    SortColumn::not_null("uuid"),
    SortColumn::not_null("address"),
    SortColumn::not_null("created_at"),
    SortColumn::nullable("updated_at"),
];

// Placeholders $1 to $6 of both statements are the port's columns, bound by
// `bind_port_columns`.

const INSERT_PORT: &str = "INSERT INTO ports (address, name, node_uuid, created_at, updated_at, \
    data, uuid, id) \
    VALUES ($1, $2, $3, $4, $5, $6, $7, (SELECT COALESCE(MAX(id), 0) + 1 FROM ports)) \
    ON CONFLICT (id) DO NOTHING";

const UPDATE_PORT: &str = "UPDATE ports SET address = $1, name = $2, node_uuid = $3, \
    created_at = $4, updated_at = $5, data = $6 WHERE uuid = $7";

fn bind_port_columns<'q>(
    query: Query<'q, Any, AnyArguments>,
    port: &Port,
    data: String,
) -> Query<'q, Any, AnyArguments> {
    query
        .bind(port.address.clone())
        .bind(port.name.clone())
        .bind(port.node_uuid.to_string())
        .bind(port.created_at.unix_micros())
        .bind(port.updated_at.map(Timestamp::unix_micros))
        .bind(data)
}

fn port_json(port: &Port) -> Result<String, StoreError> {
    serde_json::to_string(port).map_err(StoreError::Corrupt)
}

/// A port from a row whose first column is its JSON.
fn port_from_row(row: &AnyRow) -> Result<Port, StoreError> {
    let data: &str = row.try_get(0).map_err(StoreError::Database)?;
    serde_json::from_str(data).map_err(StoreError::Corrupt)
}

impl Store {
    /// Inserts a port. Conflict if its uuid, address or name is taken;
    /// NodeNotFound if its node does not exist.
    pub async fn create_port(&self, port: &Port) -> Result<(), StoreError> {
        let data = port_json(port)?;
        for _ in 0..ID_ATTEMPTS {
            let query = bind_port_columns(sqlx::query(INSERT_PORT), port, data.clone())
                .bind(port.uuid.to_string());
            let result = query.execute(&mut *self.writer().await?).await;
            match result {
                Ok(done) if done.rows_affected() == 1 => return Ok(()),
                // A concurrent INSERT took the same id.
                Ok(_) => continue,
                Err(e) => return Err(self.port_write_error(port, true, e).await),
            }
        }
        Err(StoreError::Conflict(format!(
            "Port {} could not be given an id: too many concurrent creations, please retry.",
            port.uuid
        )))
    }

    pub async fn get_port(&self, uuid: Uuid) -> Result<Port, StoreError> {
        let row = sqlx::query("SELECT data FROM ports WHERE uuid = $1")
            .bind(uuid.to_string())
            .fetch_optional(&mut *self.reader().await?)
            .await
            .map_err(StoreError::Database)?;
        match row {
            Some(row) => port_from_row(&row),
            None => Err(StoreError::PortNotFound(uuid.to_string())),
        }
    }

    pub async fn get_port_by_name(&self, name: &str) -> Result<Port, StoreError> {
        let row = sqlx::query("SELECT data FROM ports WHERE name = $1")
            .bind(name)
            .fetch_optional(&mut *self.reader().await?)
            .await
            .map_err(StoreError::Database)?;
        match row {
            Some(row) => port_from_row(&row),
            None => Err(StoreError::PortNotFound(name.to_string())),
        }
    }

    /// Ports matching `query`, in its order, at most `limit`. PortNotFound if
    /// the marker port does not exist.
    pub async fn list_ports(&self, query: &PortQuery) -> Result<Vec<Port>, StoreError> {
        let mut select = Select::new("t.data", "ports");
        if let Some(node_uuid) = query.node_uuid {
            select.equal("node_uuid", Value::Text(node_uuid.to_string()));
        }
        if let Some(address) = &query.address {
            select.equal("address", Value::Text(address.clone()));
        }
        let marker_id = match query.marker {
            Some(marker) => Some(self.port_id(marker).await?),
            None => None,
        };
        let sort = SortColumn::find(PORT_SORT_COLUMNS, query.sort_key.as_deref());
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
        parse_rows(rows, port_from_row).await
    }

    /// Writes the whole port, sets `updated_at`. Conflict on a duplicate address.
    /// PortNotFound if absent; NodeNotFound if its (new) node does not exist.
    pub async fn update_port(&self, port: &Port) -> Result<Port, StoreError> {
        let mut port = port.clone();
        port.updated_at = Some(Timestamp::now());
        let data = port_json(&port)?;
        let done = bind_port_columns(sqlx::query(UPDATE_PORT), &port, data.clone())
            .bind(port.uuid.to_string())
            .execute(&mut *self.writer().await?)
            .await;
        match done {
            Ok(done) if done.rows_affected() == 0 => {
                Err(StoreError::PortNotFound(port.uuid.to_string()))
            }
            // As read back: a timestamp finer than microseconds is not kept.
            Ok(_) => serde_json::from_str(&data).map_err(StoreError::Corrupt),
            Err(e) => Err(self.port_write_error(&port, false, e).await),
        }
    }

    /// Deletes a port. PortNotFound if absent.
    pub async fn delete_port(&self, uuid: Uuid) -> Result<(), StoreError> {
        let done = sqlx::query("DELETE FROM ports WHERE uuid = $1")
            .bind(uuid.to_string())
            .execute(&mut *self.writer().await?)
            .await
            .map_err(StoreError::Database)?;
        if done.rows_affected() == 0 {
            return Err(StoreError::PortNotFound(uuid.to_string()));
        }
        Ok(())
    }

    /// The row id of a port (the listing marker).
    async fn port_id(&self, uuid: Uuid) -> Result<i64, StoreError> {
        let id: Option<i64> = sqlx::query_scalar("SELECT id FROM ports WHERE uuid = $1")
            .bind(uuid.to_string())
            .fetch_optional(&mut *self.reader().await?)
            .await
            .map_err(StoreError::Database)?;
        id.ok_or_else(|| StoreError::PortNotFound(uuid.to_string()))
    }

    /// The StoreError for a refused INSERT (`creating`) or UPDATE of `port`,
    /// in Ironic's words for a taken unique value.
    async fn port_write_error(&self, port: &Port, creating: bool, e: sqlx::Error) -> StoreError {
        if is_foreign_key_violation(&e) {
            return StoreError::NodeNotFound(port.node_uuid.to_string());
        }
        if !is_unique_violation(&e) {
            return StoreError::Database(e);
        }
        match self.port_conflict_message(port, creating).await {
            Ok(message) => StoreError::Conflict(message),
            Err(e) => StoreError::Database(e),
        }
    }

    /// Which unique value of `port` is taken: the database's own message
    /// names it differently on SQLite and PostgreSQL.
    async fn port_conflict_message(
        &self,
        port: &Port,
        creating: bool,
    ) -> Result<String, sqlx::Error> {
        let uuid = port.uuid.to_string();
        if creating
            && self
                .taken("SELECT 1 FROM ports WHERE uuid = $1", &uuid, None)
                .await?
        {
            return Ok(format!("A port with UUID {uuid} already exists."));
        }
        let sql = "SELECT 1 FROM ports WHERE address = $1 AND uuid <> $2";
        if self.taken(sql, &port.address, Some(&uuid)).await? {
            return Ok(format!(
                "A port with MAC address {} already exists.",
                port.address
            ));
        }
        if let Some(name) = &port.name {
            let sql = "SELECT 1 FROM ports WHERE name = $1 AND uuid <> $2";
            if self.taken(sql, name, Some(&uuid)).await? {
                return Ok(format!("A port with name {name} already exists."));
            }
        }
        // Deleted again meanwhile.
        Ok(format!(
            "A port with the UUID, MAC address or name of port {uuid} already exists."
        ))
    }
}
