//! The throw-away PostgreSQL cluster of the tests, and a fresh database per hub.
//!
//! `make test` runs the tests under `.ci/with-postgres.sh`, which starts a cluster in a
//! temporary directory on a loopback port and names it in the environment; every hub that
//! runs on PostgreSQL gets a database of its own there, so tests running at once never see
//! each other's rows.

use std::process::Command;

/// Set to `postgres` to run every hub the harness starts on PostgreSQL (`make test` runs the
/// lifecycle, bad-input, Privacy Pass and seized-disk suites once more so).
pub const STORAGE_ENV: &str = "MIMI_TEST_STORAGE";
/// Socket directory, port and user of the test cluster (set by `.ci/with-postgres.sh`).
const HOST_ENV: &str = "MIMI_TEST_PG_HOST";
const PORT_ENV: &str = "MIMI_TEST_PG_PORT";
const USER_ENV: &str = "MIMI_TEST_PG_USER";
/// Directory of the cluster's PostgreSQL programs (`pg_dump`).
const BIN_ENV: &str = "MIMI_TEST_PG_BIN";

/// Whether the harness runs hubs on PostgreSQL by default.
pub fn default_backend_is_postgres() -> bool {
    std::env::var(STORAGE_ENV).is_ok_and(|v| v == "postgres")
}

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!(
            "{name} is not set: tests that need PostgreSQL run under .ci/with-postgres.sh \
             (`make test` does this)"
        )
    })
}

/// The connection string of database `db` in the test cluster (key-value form: the host is
/// the directory of the cluster's socket).
pub fn url_of(db: &str) -> String {
    format!(
        "host={} port={} user={} dbname={db}",
        env(HOST_ENV),
        env(PORT_ENV),
        env(USER_ENV)
    )
}

/// Runs one SQL statement on database `url` over a connection of its own (on a thread of its
/// own: callers may be inside a tokio runtime) and returns the first column of its first row,
/// if it has one, as text.
fn run_sql(url: &str, sql: &str) -> Option<String> {
    let (url, sql) = (url.to_owned(), sql.to_owned());
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                .await
                .expect("connect to the test cluster");
            let driver = tokio::spawn(connection);
            let answer = client
                .simple_query(&sql)
                .await
                .expect("run SQL on the test cluster");
            drop(client);
            let _ = driver.await;
            answer.into_iter().find_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0).map(str::to_owned),
                _ => None,
            })
        })
    })
    .join()
    .expect("SQL thread")
}

/// Creates an empty database in the test cluster and returns its URL.
pub fn fresh_database() -> String {
    let name = format!("hub_{}", hex::encode(rand::random::<[u8; 8]>()));
    run_sql(&url_of("postgres"), &format!("CREATE DATABASE {name}"));
    url_of(&name)
}

/// Ends, as an administrator would, every connection to database `url` that sits idle in a
/// transaction (a hub request's lock transaction); returns how many.
pub fn terminate_idle_transactions(url: &str) -> i64 {
    run_sql(
        url,
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
         WHERE datname = current_database() AND state = 'idle in transaction'",
    )
    .and_then(|n| n.parse().ok())
    .expect("a count")
}

/// `pg_dump`'s plain-text dump of the database at `url`: what an operator's backup, or a
/// seized copy of the database, holds.
pub fn pg_dump(url: &str) -> String {
    let bin = std::path::Path::new(&env(BIN_ENV)).join("pg_dump");
    let out = Command::new(bin)
        .args(["--no-owner", "--no-privileges", "--dbname", url])
        .output()
        .expect("run pg_dump");
    assert!(
        out.status.success(),
        "pg_dump failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("pg_dump prints text")
}

/// The rows of every table in a plain-text `pg_dump`, by table name, each row a list of its
/// columns as printed (`COPY` text format).
pub fn dumped_tables(dump: &str) -> std::collections::BTreeMap<String, Vec<Vec<String>>> {
    let mut tables = std::collections::BTreeMap::new();
    let mut current: Option<(String, Vec<Vec<String>>)> = None;
    for line in dump.lines() {
        if let Some((name, rows)) = current.as_mut() {
            if line == "\\." {
                let (name, rows) = (std::mem::take(name), std::mem::take(rows));
                tables.insert(name, rows);
                current = None;
            } else {
                rows.push(line.split('\t').map(str::to_owned).collect());
            }
        } else if let Some(rest) = line.strip_prefix("COPY public.") {
            let name = rest.split([' ', '(']).next().unwrap_or_default().to_owned();
            current = Some((name, Vec::new()));
        }
    }
    tables
}

/// A `bytea` column as `pg_dump` prints it (`\\x` and hex) decoded to bytes.
pub fn bytea(column: &str) -> Option<Vec<u8>> {
    hex::decode(column.strip_prefix("\\\\x")?).ok()
}
