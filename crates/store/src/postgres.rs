//! The PostgreSQL backend, for several server nodes sharing one database.
//!
//! Every connection may carry a `search_path`, which the conformance suite uses to give each test its own
//! schema. Transactions run at READ COMMITTED: the compare-and-swaps (`UPDATE … WHERE rotated_at IS NULL`,
//! `… WHERE used_at IS NULL`) are re-checked by PostgreSQL against the newest row version after waiting on
//! the row lock, so two nodes cannot both win.

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

use crate::{Result, StoreError};

type Db = sqlx::Postgres;
type WritePool = PgPool;
type StoreImpl = PostgresStore;
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// Connections per node, unless the URL's pool settings say otherwise.
const POOL_SIZE: u32 = 16;

/// The PostgreSQL store.
#[derive(Debug)]
pub struct PostgresStore {
    pool: PgPool,
    rotations: tokio::sync::mpsc::Sender<RotationJob>,
}

impl PostgresStore {
    /// Connects to `url`. With `schema`, every connection uses it as its `search_path` (it must exist).
    /// Does not migrate; see [`crate::Store::migrate`].
    ///
    /// # Errors
    /// [`StoreError::Database`] for a malformed URL, [`StoreError::Unavailable`] if the server cannot be
    /// reached.
    pub async fn connect(url: &str, schema: Option<&str>) -> Result<Self> {
        let mut options = PgConnectOptions::from_str(url)
            .map_err(|_| StoreError::Database("the PostgreSQL URL is malformed".into()))?;
        if let Some(schema) = schema {
            options = options.options([("search_path", schema)]);
        }
        let pool = PgPoolOptions::new()
            .max_connections(POOL_SIZE)
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(options)
            .await
            .map_err(|e| StoreError::Unavailable(format!("cannot connect to PostgreSQL: {e}")))?;
        let rotations = spawn_rotation_writer(&pool);
        Ok(PostgresStore { pool, rotations })
    }

    /// Closes the pool, waiting for connections in use to be returned.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    fn read(&self) -> &PgPool {
        &self.pool
    }

    fn write(&self) -> &PgPool {
        &self.pool
    }

    async fn begin_write(&self) -> Result<sqlx::Transaction<'static, Db>> {
        begin_write_on(&self.pool).await
    }

    fn backend_name(&self) -> &'static str {
        "postgres"
    }
}

async fn begin_write_on(pool: &PgPool) -> Result<sqlx::Transaction<'static, Db>> {
    Ok(pool.begin().await?)
}

include!("sql_body.rs");
