//! Postgres helpers: a fresh database per test.

use tokio_postgres::{Client, NoTls};

use super::{services, unique};

pub async fn connect(url: &str) -> Client {
    let (client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to {url}: {e}"));
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

/// Creates a database with a unique name; returns its URL.
pub async fn fresh_database(prefix: &str) -> String {
    let admin_url = services().pg;
    let name = unique(&format!("t_{prefix}"));
    let admin = connect(&admin_url).await;
    admin.batch_execute(&format!("create database \"{name}\"")).await.unwrap();
    let base = admin_url.rsplit_once('/').unwrap().0;
    format!("{base}/{name}")
}

pub async fn count(client: &Client, sql: &str) -> i64 {
    client.query_one(sql, &[]).await.unwrap().get(0)
}
