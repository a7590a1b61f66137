//! Helpers shared by the integration tests: a dev server, configs, control calls.
#![allow(dead_code)]

pub mod checks;

use std::time::Duration;

use pylon_devserver::{spawn, Config as ServerConfig, Handle};
use pylon_sync_engine::{Config, Row};
use serde_json::Value;

pub async fn server() -> Handle {
    spawn(ServerConfig::default()).await.unwrap()
}

pub fn row(v: Value) -> Row {
    v.as_object().unwrap().clone()
}

pub fn config(url: &str, db: Option<&std::path::Path>) -> Config {
    let mut c = Config::new(url);
    c.poll_interval = Duration::from_millis(50);
    c.reconnect_delay = Duration::from_millis(20);
    c.db_path = db.map(|p| p.to_path_buf());
    c
}

pub async fn control(url: &str, what: &str, body: Value) -> Value {
    reqwest::Client::new()
        .post(format!("{url}/__control/{what}"))
        .json(&body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

pub async fn rest(url: &str, method: reqwest::Method, path: &str, body: Value) -> Value {
    reqwest::Client::new()
        .request(method, format!("{url}{path}"))
        .json(&body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap_or(Value::Null)
}

pub async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    for _ in 0..200 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("timed out waiting for {what}");
}

pub async fn get(url: &str, path: &str) -> Value {
    reqwest::get(format!("{url}{path}")).await.unwrap().json().await.unwrap()
}

/// A session token for `user` (the dev server's test login).
pub async fn login(url: &str, user: &str) -> String {
    let v = rest(url, reqwest::Method::POST, "/api/auth/session", serde_json::json!({ "user_id": user })).await;
    v["token"].as_str().unwrap().to_string()
}
