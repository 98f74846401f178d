//! Conductors: who is running, with which drivers, and since when it was
//! last heard of.

use crate::{Store, StoreError};
use ferric_types::{Conductor, Timestamp};
use sqlx::Row;

impl Store {
    /// Registers (or re-registers) a conductor as alive, with its drivers.
    pub async fn register_conductor(
        &self,
        hostname: &str,
        group: &str,
        drivers: &[String],
    ) -> Result<(), StoreError> {
        let drivers = serde_json::to_string(drivers).map_err(StoreError::Corrupt)?;
        let now = Timestamp::now().unix_micros();
        sqlx::query(
            "INSERT INTO conductors (hostname, conductor_group, drivers, online, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $5) \
             ON CONFLICT (hostname) DO UPDATE SET conductor_group = excluded.conductor_group, \
             drivers = excluded.drivers, online = excluded.online, updated_at = excluded.updated_at",
        )
        .bind(hostname)
        .bind(group)
        .bind(drivers)
        .bind(true)
        .bind(now)
        .execute(&mut *self.writer().await?)
        .await
        .map_err(StoreError::Database)?;
        Ok(())
    }

    /// Refreshes a conductor's heartbeat (`updated_at`). A conductor that is
    /// not registered stays so (and a warning is logged): only
    /// `register_conductor` knows its group and drivers.
    pub async fn touch_conductor(&self, hostname: &str) -> Result<(), StoreError> {
        let done =
            sqlx::query("UPDATE conductors SET updated_at = $1, online = $2 WHERE hostname = $3")
                .bind(Timestamp::now().unix_micros())
                .bind(true)
                .bind(hostname)
                .execute(&mut *self.writer().await?)
                .await
                .map_err(StoreError::Database)?;
        if done.rows_affected() == 0 {
            tracing::warn!(%hostname, "heartbeat of a conductor that is not registered");
        }
        Ok(())
    }

    /// Marks a conductor offline (clean shutdown).
    pub async fn unregister_conductor(&self, hostname: &str) -> Result<(), StoreError> {
        sqlx::query("UPDATE conductors SET online = $1 WHERE hostname = $2")
            .bind(false)
            .bind(hostname)
            .execute(&mut *self.writer().await?)
            .await
            .map_err(StoreError::Database)?;
        Ok(())
    }

    /// Every registered conductor; `alive` is false for those offline or
    /// whose heartbeat is older than `dead_after_secs`.
    pub async fn list_conductors(
        &self,
        dead_after_secs: u64,
    ) -> Result<Vec<Conductor>, StoreError> {
        // `online` is read as a number: the Any driver cannot read a SQLite
        // BOOLEAN column.
        let rows = sqlx::query(
            "SELECT hostname, conductor_group, drivers, CASE WHEN online THEN 1 ELSE 0 END, \
             created_at, updated_at FROM conductors ORDER BY hostname",
        )
        .fetch_all(&mut *self.reader().await?)
        .await
        .map_err(StoreError::Database)?;
        let now = Timestamp::now().unix_micros();
        let dead_after =
            i64::try_from(dead_after_secs.saturating_mul(1_000_000)).unwrap_or(i64::MAX);
        rows.iter()
            .map(|row| {
                let online: i64 = row.try_get(3).map_err(StoreError::Database)?;
                let created_at: i64 = row.try_get(4).map_err(StoreError::Database)?;
                let updated_at: Option<i64> = row.try_get(5).map_err(StoreError::Database)?;
                let drivers: &str = row.try_get(2).map_err(StoreError::Database)?;
                let heartbeat = updated_at.unwrap_or(created_at);
                Ok(Conductor {
                    hostname: row.try_get(0).map_err(StoreError::Database)?,
                    conductor_group: row.try_get(1).map_err(StoreError::Database)?,
                    drivers: serde_json::from_str(drivers).map_err(StoreError::Corrupt)?,
                    alive: online != 0 && now.saturating_sub(heartbeat) <= dead_after,
                    created_at: Timestamp::from_unix_micros(created_at),
                    updated_at: updated_at.map(Timestamp::from_unix_micros),
                })
            })
            .collect()
    }
}
