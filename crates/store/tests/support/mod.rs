//! Runs each test on SQLite (a temporary file) and, when
//! FERRIC_TEST_POSTGRES_URL is set, on PostgreSQL in a schema of its own
//! that the test creates and drops, so tests can run in parallel.
//! `scripts/pg-test-server start DIR PORT` prints a URL to use.

use ferric_store::Store;
use sqlx::{AssertSqlSafe, Connection, Executor, PgConnection};
use std::future::Future;

/// One database a test runs on; `open` may be called again to reconnect.
pub struct TestDb {
    pub url: String,
    pub backend: &'static str,
}

impl TestDb {
    pub async fn open(&self) -> Store {
        let store = Store::connect(&self.url)
            .await
            .unwrap_or_else(|e| panic!("connecting to the {} test database: {e}", self.backend));
        assert_eq!(store.backend(), self.backend);
        store
    }
}

/// Runs `test` on SQLite, then on PostgreSQL if configured. Without a
/// PostgreSQL URL that half is skipped with a notice, unless
/// FERRIC_REQUIRE_POSTGRES=1 makes it a failure.
pub async fn on_each_backend<F, Fut>(test: F)
where
    F: Fn(TestDb) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().join("ferric.sqlite");
    test(TestDb {
        url: format!("sqlite://{}", path.display()),
        backend: "sqlite",
    })
    .await;

    let url = std::env::var("FERRIC_TEST_POSTGRES_URL").unwrap_or_default();
    if url.is_empty() {
        assert!(
            std::env::var("FERRIC_REQUIRE_POSTGRES").as_deref() != Ok("1"),
            "FERRIC_REQUIRE_POSTGRES=1 but FERRIC_TEST_POSTGRES_URL is not set"
        );
        eprintln!("notice: FERRIC_TEST_POSTGRES_URL is not set: PostgreSQL half skipped");
        return;
    }
    let schema = format!("test_{}", uuid::Uuid::new_v4().simple());
    admin(&url, &format!("CREATE SCHEMA {schema}")).await;
    let separator = if url.contains('?') { '&' } else { '?' };
    let db = TestDb {
        url: format!("{url}{separator}options=-c%20search_path%3D{schema}"),
        backend: "postgres",
    };
    // In a task of its own so that the schema is dropped even if it panics.
    let outcome = tokio::spawn(test(db)).await;
    admin(&url, &format!("DROP SCHEMA {schema} CASCADE")).await;
    if let Err(e) = outcome {
        std::panic::resume_unwind(e.into_panic());
    }
}

async fn admin(url: &str, sql: &str) {
    let mut conn = PgConnection::connect(url)
        .await
        .unwrap_or_else(|e| panic!("connecting to FERRIC_TEST_POSTGRES_URL: {e}"));
    conn.execute(AssertSqlSafe(sql.to_string()))
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    conn.close().await.ok();
}
