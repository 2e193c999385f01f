//! The audit store: every audit record of `audit.events`, and the notification sender's ledger of
//! what it delivered, in PostgreSQL (production) or SQLite (the embedded default, a file beside
//! the process, so the fleet runs on one machine without a database server).
//!
//! Guarantees and their limits:
//! - [`AuditStore::insert_batch`] writes a batch in one transaction: every row of it is stored,
//!   or none is. `event_id` is the primary key and a row already there is left as it is
//!   (`ON CONFLICT DO NOTHING`), so writing the same record again (a redelivery, a replay of
//!   `audit.events`) never makes a second row. The caller may treat the batch's records as done
//!   once it returns `Ok`.
//! - [`AuditStore::delete_older_than`] deletes rows by event time in batches of a bounded size,
//!   each its own statement, so retention never holds a long lock.
//! - The ledger ([`AuditStore::delivered`], [`AuditStore::record_delivery`]) holds one row per
//!   alert and channel; recording twice keeps the first.
//! - Every error says whether it is transient ([`StoreError::is_transient`]: the database is
//!   unreachable, restarting, out of connections or busy; retry later and commit nothing) or
//!   permanent (the row itself was refused).
//! - Migrations (`migrations/postgres`, `migrations/sqlite`) are compiled in and run by
//!   [`AuditStore::connect`]; they only add, so an older binary keeps working on a newer schema.

use std::str::FromStr;
use std::time::Duration;

use medallion_core::config::{ConfigError, Validate};
use serde::{Deserialize, Serialize};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};
use sqlx::Row;
use uuid::Uuid;

/// Where the store is and how it is kept: the `[stage.store]` table of the groups that use it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// `sqlite://PATH` (created when missing) or `postgres://USER:PASSWORD@HOST:PORT/DB`. Put
    /// the password in the environment (`MEDALLION__STAGE__STORE__URL`), not in a file.
    #[serde(default = "default_url")]
    pub url: String,
    /// Connections the pool keeps at most.
    #[serde(default = "default_max_connections")]
    pub max_connections: u32,
    /// How long a connection attempt or a wait for a free connection may take, in ms.
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// Rows older than this many days (by event time) are deleted; 0 keeps them forever.
    #[serde(default = "default_retention_days")]
    pub retention_days: u32,
    /// Rows one retention statement deletes at most.
    #[serde(default = "default_retention_batch")]
    pub retention_batch: u32,
}

fn default_url() -> String {
    "sqlite://medallion-audit.db".to_owned()
}
fn default_max_connections() -> u32 {
    4
}
fn default_connect_timeout_ms() -> u64 {
    5_000
}
fn default_retention_days() -> u32 {
    90
}
fn default_retention_batch() -> u32 {
    1_000
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            url: default_url(),
            max_connections: default_max_connections(),
            connect_timeout_ms: default_connect_timeout_ms(),
            retention_days: default_retention_days(),
            retention_batch: default_retention_batch(),
        }
    }
}

impl StoreConfig {
    /// The backend the URL names.
    fn backend(&self) -> Option<Backend> {
        if self.url.starts_with("sqlite:") {
            Some(Backend::Sqlite)
        } else if self.url.starts_with("postgres://") || self.url.starts_with("postgresql://") {
            Some(Backend::Postgres)
        } else {
            None
        }
    }

    /// The retention age in ms, if rows are deleted at all.
    pub fn retention_ms(&self) -> Option<i64> {
        (self.retention_days > 0).then(|| i64::from(self.retention_days) * 86_400_000)
    }
}

impl Validate for StoreConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.backend().is_none() {
            return Err(ConfigError::key(
                "stage.store.url",
                "must start with `sqlite:` (for example `sqlite://medallion-audit.db`) or `postgres://`",
            ));
        }
        if self.max_connections == 0 {
            return Err(ConfigError::key(
                "stage.store.max_connections",
                "must be at least 1",
            ));
        }
        if self.connect_timeout_ms == 0 {
            return Err(ConfigError::key(
                "stage.store.connect_timeout_ms",
                "must be at least 1 ms",
            ));
        }
        if self.retention_batch == 0 {
            return Err(ConfigError::key(
                "stage.store.retention_batch",
                "must be at least 1",
            ));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backend {
    Sqlite,
    Postgres,
}

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The database cannot be reached or cannot take the work now: retry later.
    #[error("the audit store is unavailable ({operation}): {source}; check stage.store.url and that the database is up")]
    Unavailable {
        /// What was being done.
        operation: &'static str,
        /// The driver's error.
        #[source]
        source: sqlx::Error,
    },
    /// The database refused the statement or the data.
    #[error("the audit store refused {operation}: {source}")]
    Refused {
        /// What was being done.
        operation: &'static str,
        /// The driver's error.
        #[source]
        source: sqlx::Error,
    },
    /// The schema could not be brought up to date.
    #[error("the audit store's migrations failed: {0}; the database user needs CREATE rights")]
    Migration(#[from] sqlx::migrate::MigrateError),
    /// The configuration cannot be used.
    #[error("invalid audit store configuration: {0}")]
    Config(String),
}

impl StoreError {
    /// Whether trying again later may succeed (the database, not the data, is the problem).
    pub fn is_transient(&self) -> bool {
        matches!(self, StoreError::Unavailable { .. })
    }

    fn from_sqlx(operation: &'static str, source: sqlx::Error) -> Self {
        if is_transient(&source) {
            StoreError::Unavailable { operation, source }
        } else {
            StoreError::Refused { operation, source }
        }
    }
}

/// Whether `error` says the database is unavailable rather than that the statement is wrong.
fn is_transient(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Protocol(_) => true,
        sqlx::Error::Database(database) => {
            let backend = if database
                .try_downcast_ref::<sqlx::sqlite::SqliteError>()
                .is_some()
            {
                Backend::Sqlite
            } else {
                Backend::Postgres
            };
            database
                .code()
                .is_some_and(|code| transient_code(backend, &code))
        }
        _ => false,
    }
}

/// PostgreSQL SQLSTATE classes 08 (connection), 40 (serialization, deadlock), 53 (insufficient
/// resources), 57 (operator intervention: shutdown, restart); SQLite's BUSY (5), LOCKED (6),
/// IOERR (10), FULL (13) and CANTOPEN (14), with their extended codes.
fn transient_code(backend: Backend, code: &str) -> bool {
    match backend {
        Backend::Sqlite => code
            .parse::<u32>()
            .is_ok_and(|code| matches!(code & 0xff, 5 | 6 | 10 | 13 | 14)),
        Backend::Postgres => ["08", "40", "53", "57"]
            .iter()
            .any(|class| code.starts_with(class)),
    }
}

/// One audit record as stored: the envelope's fields, the audit payload's, and the payload as JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditRow {
    /// The envelope's `event_id`: the primary key.
    pub event_id: Uuid,
    /// The envelope's `event_type`.
    pub event_type: String,
    /// The envelope's `event_version`.
    pub event_version: String,
    /// When the audited thing happened, epoch ms.
    pub event_time_ms: i64,
    /// The org.
    pub org_id: i64,
    /// The emitting service.
    pub source_service: String,
    /// The emitting instance.
    pub source_instance: String,
    /// The flow's id, if any.
    pub correlation_id: Option<Uuid>,
    /// The causing event's id, if any.
    pub causation_id: Option<Uuid>,
    /// What happened, e.g. `rule.upsert`: the record's type for queries.
    pub action: String,
    /// Who did it.
    pub actor: String,
    /// Kind of object acted on.
    pub target_type: String,
    /// Id of the object acted on.
    pub target_id: String,
    /// `applied`, `ignored`, `rejected`, `delivered`, ...
    pub outcome: String,
    /// The whole payload (with its details) as JSON.
    pub payload: serde_json::Value,
}

/// What [`AuditStore::query`] returns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditFilter {
    /// Only this org's rows.
    pub org_id: Option<i64>,
    /// Only rows of this action (`rule.upsert`).
    pub action: Option<String>,
    /// Only rows at or after this event time, epoch ms.
    pub since_ms: Option<i64>,
    /// At most this many rows, newest first.
    pub limit: u32,
}

#[derive(Debug, Clone)]
enum Pool {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// A connection pool to the audit store.
#[derive(Debug, Clone)]
pub struct AuditStore {
    pool: Pool,
}

const INSERT_AUDIT_PG: &str = "INSERT INTO audit_events (event_id, event_type, event_version, \
    event_time_ms, org_id, source_service, source_instance, correlation_id, causation_id, action, \
    actor, target_type, target_id, outcome, payload, written_at_ms) VALUES ($1::uuid, $2, $3, $4, \
    $5, $6, $7, $8::uuid, $9::uuid, $10, $11, $12, $13, $14, $15::jsonb, $16) \
    ON CONFLICT (event_id) DO NOTHING";
const INSERT_AUDIT_SQLITE: &str = "INSERT INTO audit_events (event_id, event_type, event_version, \
    event_time_ms, org_id, source_service, source_instance, correlation_id, causation_id, action, \
    actor, target_type, target_id, outcome, payload, written_at_ms) VALUES ($1, $2, $3, $4, $5, \
    $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16) ON CONFLICT (event_id) DO NOTHING";
const SELECT_COLUMNS_PG: &str = "event_id::text AS event_id, event_type, event_version, \
    event_time_ms, org_id, source_service, source_instance, correlation_id::text AS correlation_id, \
    causation_id::text AS causation_id, action, actor, target_type, target_id, outcome, \
    payload::text AS payload";
const SELECT_COLUMNS_SQLITE: &str = "event_id, event_type, event_version, event_time_ms, org_id, \
    source_service, source_instance, correlation_id, causation_id, action, actor, target_type, \
    target_id, outcome, payload";
const QUERY_FILTER: &str = "WHERE ($1 IS NULL OR org_id = $1) AND ($2 IS NULL OR action = $2) \
    AND event_time_ms >= $3 ORDER BY event_time_ms DESC, event_id LIMIT $4";
const DELETE_OLD: &str = "DELETE FROM audit_events WHERE event_id IN \
    (SELECT event_id FROM audit_events WHERE event_time_ms < $1 LIMIT $2)";

/// Runs `$body` with `$pool` bound to the store's pool, whichever backend it is (the body is
/// written once and compiled for each).
macro_rules! with_pool {
    ($store:expr, $pool:ident => $body:expr) => {
        match &$store.pool {
            Pool::Sqlite($pool) => $body,
            Pool::Postgres($pool) => $body,
        }
    };
}

impl AuditStore {
    /// Connects, creating a SQLite file when missing, and runs the migrations.
    pub async fn connect(config: &StoreConfig) -> Result<Self, StoreError> {
        let timeout = Duration::from_millis(config.connect_timeout_ms);
        let pool = match config.backend() {
            Some(Backend::Sqlite) => {
                let options = SqliteConnectOptions::from_str(&config.url)
                    .map_err(|error| StoreError::Config(format!("stage.store.url: {error}")))?
                    .create_if_missing(true)
                    .journal_mode(SqliteJournalMode::Wal)
                    .busy_timeout(timeout);
                let pool = SqlitePoolOptions::new()
                    .max_connections(config.max_connections)
                    .acquire_timeout(timeout)
                    .connect_with(options)
                    .await
                    .map_err(|error| StoreError::from_sqlx("connecting", error))?;
                // Two processes opening one new file race on SQLite's migration table (it has
                // no migration lock); the loser finds the work done when it tries again.
                let mut tries = 0;
                loop {
                    match sqlx::migrate!("./migrations/sqlite").run(&pool).await {
                        Ok(()) => break,
                        Err(_) if tries < 5 => {
                            tries += 1;
                            tokio::time::sleep(Duration::from_millis(100 * tries)).await;
                        }
                        Err(error) => return Err(error.into()),
                    }
                }
                Pool::Sqlite(pool)
            }
            Some(Backend::Postgres) => {
                let options = PgConnectOptions::from_str(&config.url)
                    .map_err(|error| StoreError::Config(format!("stage.store.url: {error}")))?;
                let pool = PgPoolOptions::new()
                    .max_connections(config.max_connections)
                    .acquire_timeout(timeout)
                    .connect_with(options)
                    .await
                    .map_err(|error| StoreError::from_sqlx("connecting", error))?;
                sqlx::migrate!("./migrations/postgres").run(&pool).await?;
                Pool::Postgres(pool)
            }
            None => {
                return Err(StoreError::Config(
                    "stage.store.url must start with `sqlite:` or `postgres://`".to_owned(),
                ))
            }
        };
        Ok(Self { pool })
    }

    /// [`AuditStore::connect`], trying again (every 0.5 s, doubling up to 10 s) while the store
    /// is unavailable, until `stop` is cancelled: a database that starts after the worker is not
    /// an error. A store that refuses us (bad URL, migrations not allowed) is returned at once.
    pub async fn connect_patiently(
        config: &StoreConfig,
        stop: &tokio_util::sync::CancellationToken,
    ) -> Result<Self, StoreError> {
        let mut delay = Duration::from_millis(500);
        loop {
            match Self::connect(config).await {
                Ok(store) => return Ok(store),
                Err(error) if error.is_transient() => {
                    tracing::warn!(%error, retry_in_ms = delay.as_millis() as u64, "audit store unavailable at start-up; retrying");
                }
                Err(error) => return Err(error),
            }
            tokio::select! {
                () = stop.cancelled() => return Err(StoreError::Config("stopped while waiting for the audit store".to_owned())),
                () = tokio::time::sleep(delay) => {}
            }
            delay = (delay * 2).min(Duration::from_secs(10));
        }
    }

    /// `sqlite` or `postgres`, whichever statement this store's backend takes.
    fn sql<'s>(&self, sqlite: &'s str, postgres: &'s str) -> &'s str {
        match self.pool {
            Pool::Sqlite(_) => sqlite,
            Pool::Postgres(_) => postgres,
        }
    }

    /// Writes `rows` in one transaction; rows whose `event_id` is already stored are skipped.
    /// Returns how many rows were new.
    pub async fn insert_batch(&self, rows: &[AuditRow], now_ms: i64) -> Result<u64, StoreError> {
        let error = |source| StoreError::from_sqlx("writing audit rows", source);
        let sql = self.sql(INSERT_AUDIT_SQLITE, INSERT_AUDIT_PG);
        let mut inserted = 0;
        with_pool!(self, pool => {
            let mut transaction = pool.begin().await.map_err(error)?;
            for row in rows {
                inserted += bind_audit(sqlx::query(sql), row, now_ms)
                    .execute(&mut *transaction)
                    .await
                    .map_err(error)?
                    .rows_affected();
            }
            transaction.commit().await.map_err(error)?;
        });
        Ok(inserted)
    }

    /// The rows `filter` selects, newest first.
    pub async fn query(&self, filter: &AuditFilter) -> Result<Vec<AuditRow>, StoreError> {
        let error = |source| StoreError::from_sqlx("reading audit rows", source);
        let columns = self.sql(SELECT_COLUMNS_SQLITE, SELECT_COLUMNS_PG);
        let sql = format!("SELECT {columns} FROM audit_events {QUERY_FILTER}");
        let rows = with_pool!(self, pool => sqlx::query(&sql)
            .bind(filter.org_id)
            .bind(filter.action.as_deref())
            .bind(filter.since_ms.unwrap_or(i64::MIN))
            .bind(i64::from(filter.limit))
            .fetch_all(pool)
            .await
            .map_err(error)?
            .iter()
            .map(read_row)
            .collect::<Result<Vec<_>, _>>());
        rows.map_err(error)
    }

    /// Deletes rows whose event time is before `cutoff_ms`, at most `batch` per statement, until
    /// none is left. Returns how many were deleted.
    pub async fn delete_older_than(&self, cutoff_ms: i64, batch: u32) -> Result<u64, StoreError> {
        let error = |source| StoreError::from_sqlx("deleting old audit rows", source);
        let batch = batch.max(1);
        let mut deleted = 0;
        loop {
            let affected = with_pool!(self, pool => sqlx::query(DELETE_OLD)
                .bind(cutoff_ms)
                .bind(i64::from(batch))
                .execute(pool)
                .await
                .map_err(error)?
                .rows_affected());
            deleted += affected;
            if affected < u64::from(batch) {
                return Ok(deleted);
            }
        }
    }

    /// Whether the ledger holds a delivery of `alert_id` on `channel`.
    pub async fn delivered(&self, alert_id: Uuid, channel: &str) -> Result<bool, StoreError> {
        let error = |source| StoreError::from_sqlx("reading the delivery ledger", source);
        let sql = self.sql(
            "SELECT 1 FROM notification_deliveries WHERE alert_id = $1 AND channel = $2",
            "SELECT 1 FROM notification_deliveries WHERE alert_id = $1::uuid AND channel = $2",
        );
        let found = with_pool!(self, pool => sqlx::query(sql)
            .bind(alert_id.to_string())
            .bind(channel)
            .fetch_optional(pool)
            .await
            .map_err(error)?
            .is_some());
        Ok(found)
    }

    /// Records that `alert_id` was delivered on `channel`; a delivery already recorded is kept.
    pub async fn record_delivery(
        &self,
        alert_id: Uuid,
        channel: &str,
        delivered_at_ms: i64,
        attempts: u32,
    ) -> Result<(), StoreError> {
        let error = |source| StoreError::from_sqlx("writing the delivery ledger", source);
        let sql = self.sql(
            "INSERT INTO notification_deliveries (alert_id, channel, delivered_at_ms, attempts) \
             VALUES ($1, $2, $3, $4) ON CONFLICT (alert_id, channel) DO NOTHING",
            "INSERT INTO notification_deliveries (alert_id, channel, delivered_at_ms, attempts) \
             VALUES ($1::uuid, $2, $3, $4) ON CONFLICT (alert_id, channel) DO NOTHING",
        );
        with_pool!(self, pool => sqlx::query(sql)
            .bind(alert_id.to_string())
            .bind(channel)
            .bind(delivered_at_ms)
            .bind(i64::from(attempts))
            .execute(pool)
            .await
            .map_err(error)?
            .rows_affected());
        Ok(())
    }

    /// Closes the pool's connections.
    pub async fn close(&self) {
        with_pool!(self, pool => pool.close().await);
    }
}

/// Binds `row`'s columns in the order of the insert statements (UUIDs and JSON as text).
fn bind_audit<'q, DB>(
    query: sqlx::query::Query<'q, DB, <DB as sqlx::Database>::Arguments<'q>>,
    row: &AuditRow,
    now_ms: i64,
) -> sqlx::query::Query<'q, DB, <DB as sqlx::Database>::Arguments<'q>>
where
    DB: sqlx::Database,
    String: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    Option<String>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    i64: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
{
    query
        .bind(row.event_id.to_string())
        .bind(row.event_type.clone())
        .bind(row.event_version.clone())
        .bind(row.event_time_ms)
        .bind(row.org_id)
        .bind(row.source_service.clone())
        .bind(row.source_instance.clone())
        .bind(row.correlation_id.map(|id| id.to_string()))
        .bind(row.causation_id.map(|id| id.to_string()))
        .bind(row.action.clone())
        .bind(row.actor.clone())
        .bind(row.target_type.clone())
        .bind(row.target_id.clone())
        .bind(row.outcome.clone())
        .bind(row.payload.to_string())
        .bind(now_ms)
}

/// Reads one selected row (UUIDs and JSON as text, as both backends select them).
fn read_row<R>(row: &R) -> Result<AuditRow, sqlx::Error>
where
    R: Row,
    for<'r> &'r str: sqlx::ColumnIndex<R>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> Option<String>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let uuid = |column: &'static str, text: &str| {
        Uuid::parse_str(text).map_err(|error| sqlx::Error::ColumnDecode {
            index: column.to_owned(),
            source: Box::new(error),
        })
    };
    let optional_uuid = |column: &'static str, text: Option<String>| {
        text.map(|text| uuid(column, &text)).transpose()
    };
    let payload: String = row.try_get("payload")?;
    Ok(AuditRow {
        event_id: uuid("event_id", &row.try_get::<String, _>("event_id")?)?,
        event_type: row.try_get("event_type")?,
        event_version: row.try_get("event_version")?,
        event_time_ms: row.try_get("event_time_ms")?,
        org_id: row.try_get("org_id")?,
        source_service: row.try_get("source_service")?,
        source_instance: row.try_get("source_instance")?,
        correlation_id: optional_uuid("correlation_id", row.try_get("correlation_id")?)?,
        causation_id: optional_uuid("causation_id", row.try_get("causation_id")?)?,
        action: row.try_get("action")?,
        actor: row.try_get("actor")?,
        target_type: row.try_get("target_type")?,
        target_id: row.try_get("target_id")?,
        outcome: row.try_get("outcome")?,
        payload: serde_json::from_str(&payload).map_err(|error| sqlx::Error::ColumnDecode {
            index: "payload".to_owned(),
            source: Box::new(error),
        })?,
    })
}

#[cfg(test)]
mod tests {
    //! Pure logic here; the store's behaviour on SQLite and PostgreSQL is tested in the `tests`
    //! crate (`tests/tests/audit_store.rs`), the same scenarios on both.
    use super::*;

    #[tokio::test]
    async fn an_unreachable_database_is_transient() {
        // Port 1 on loopback: nothing listens, so the connection is refused at once.
        let config = StoreConfig {
            url: "postgres://medallion:secret@127.0.0.1:1/audit".into(),
            connect_timeout_ms: 2_000,
            ..StoreConfig::default()
        };
        let error = AuditStore::connect(&config)
            .await
            .expect_err("nothing listens");
        assert!(error.is_transient(), "{error}");
        assert!(error.to_string().contains("stage.store.url"), "{error}");
    }

    #[test]
    fn codes_that_mean_the_database_is_down_or_busy_are_transient() {
        for code in ["08006", "57P01", "53300", "40001"] {
            assert!(transient_code(Backend::Postgres, code), "{code}");
        }
        for code in ["23505", "42P01", "22P02"] {
            assert!(!transient_code(Backend::Postgres, code), "{code}");
        }
        for code in ["5", "517", "10", "14"] {
            assert!(transient_code(Backend::Sqlite, code), "{code}");
        }
        for code in ["19", "1", "2067"] {
            assert!(!transient_code(Backend::Sqlite, code), "{code}");
        }
    }

    #[test]
    fn a_url_of_another_database_is_refused_naming_the_key() {
        let config = StoreConfig {
            url: "mysql://localhost/audit".into(),
            ..StoreConfig::default()
        };
        let error = config.validate().expect_err("mysql is not supported");
        assert!(error.to_string().contains("stage.store.url"), "{error}");
        let zero = StoreConfig {
            retention_batch: 0,
            ..StoreConfig::default()
        };
        assert!(zero.validate().is_err());
        assert_eq!(StoreConfig::default().retention_ms(), Some(90 * 86_400_000));
    }
}
