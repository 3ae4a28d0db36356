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

/// One rotation inside the writer's transaction, as one statement: the compare-and-swap on the old token
/// and, only if it matched, the successor's insert (a data-modifying CTE, which SQLite lacks; SQLite runs the
/// same two steps as two statements). `true` if this call rotated the token.
async fn rotate_one(tx: &mut Tx, job: &RotationJob) -> Result<bool> {
    let s = &job.successor;
    let inserted = sqlx::query(
        "WITH parent AS ( \
           UPDATE refresh_tokens SET rotated_at = $1, successor = $2 \
           WHERE hash = $3 AND rotated_at IS NULL AND family_id = $4 AND EXISTS ( \
             SELECT 1 FROM refresh_families f WHERE f.id = $4 AND f.revoked_at IS NULL) \
           RETURNING 1) \
         INSERT INTO refresh_tokens (hash, family_id, generation, scope, created_at, expires_at, rotated_at, \
           successor) SELECT $2, $4, $5, $6, $7, $8, NULL, NULL FROM parent",
    )
    .bind(job.now)
    .bind(s.hash.as_bytes())
    .bind(job.old.as_bytes())
    .bind(&s.family_id)
    .bind(s.generation)
    .bind(&s.scope)
    .bind(s.created_at)
    .bind(s.expires_at)
    .execute(&mut **tx)
    .await
    .map_err(|e| conflict(e, "refresh token"))?
    .rows_affected();
    Ok(inserted == 1)
}

include!("sql_body.rs");
