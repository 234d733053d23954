//! A real PostgreSQL server for the tests, shared by every test of a run.
//!
//! `scripts/test.sh` starts one (`scripts/postgres.sh`) for the whole run and exports its URL as
//! `STAGEHAND_TEST_DATABASE_URL`: a superuser and its `postgres` database. Each test creates a
//! database of its own, so tests run in parallel and never see each other's rows. A test that
//! needs PostgreSQL fails when the variable is unset, saying how to start a server.

use tokio_postgres::NoTls;

/// The variable that holds the server's URL.
pub const URL_VARIABLE: &str = "STAGEHAND_TEST_DATABASE_URL";

/// The server's URL, as `scripts/postgres.sh` prints it:
/// `postgresql://USER:PASSWORD@HOST:PORT/postgres`.
pub fn server_url() -> String {
    match std::env::var(URL_VARIABLE) {
        Ok(url) if !url.is_empty() => url,
        _ => panic!(
            "{URL_VARIABLE} is not set: this test needs a PostgreSQL server. Run it through \
             scripts/test.sh, or start one with \
             `export {URL_VARIABLE}=$(scripts/postgres.sh up \"$(mktemp -d)\" --watch $$)`"
        ),
    }
}

/// `url` with its database replaced by `database` (the URL form only, as the script prints).
pub fn with_database(url: &str, database: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, format!("?{query}")),
        None => (url, String::new()),
    };
    let authority_end = base
        .find("://")
        .map(|scheme| scheme + 3)
        .and_then(|start| base[start..].find('/').map(|slash| start + slash))
        .unwrap_or(base.len());
    format!("{}/{database}{query}", &base[..authority_end])
}

/// A connection to the server's `postgres` database, as its superuser.
pub async fn admin() -> tokio_postgres::Client {
    connect(&server_url()).await
}

/// A plain connection to `url`, outside any store.
pub async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to the test PostgreSQL server: {e}"));
    tokio::spawn(connection);
    client
}

/// A new, empty database for one test; returns its URL.
pub async fn fresh_database(prefix: &str) -> String {
    let name = format!("{prefix}_{}", super::cluster::unique_suffix());
    admin()
        .await
        .batch_execute(&format!("CREATE DATABASE \"{name}\""))
        .await
        .unwrap_or_else(|e| panic!("cannot create database {name}: {e}"));
    with_database(&server_url(), &name)
}
