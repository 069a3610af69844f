//! Stores for tests: a fresh schema of the PostgreSQL server every machine
//! here runs (`HOTLINE_TEST_POSTGRES` names another).

use crate::db::Store;

/// The PostgreSQL server tests use.
pub fn postgres_url() -> String {
    std::env::var("HOTLINE_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// A schema no other test uses: `prefix`, the process and a counter.
pub fn postgres_store(prefix: &str) -> Store {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let schema = format!(
        "t_{prefix}_{}_{nanos}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    );
    Store::Postgres {
        url: postgres_url(),
        schema,
    }
}

/// Drops a test's `schema` and everything in it. On a thread of its own:
/// the PostgreSQL client may not run on an async thread.
pub fn drop_schema(url: &str, schema: &str) {
    let (url, schema) = (url.to_owned(), schema.to_owned());
    let _ = std::thread::spawn(move || {
        if let Ok(mut c) = crate::db::connect_postgres(&url, "public") {
            let _ = c.batch_execute(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"));
        }
    })
    .join();
}
