//! `pylon-devserver [--port N] [--manifest FILE] [--admin-token T] [--retention N]`
//!
//! Prints one JSON line `{"port":…,"url":…}` once it listens, then serves
//! until killed.

use std::process::ExitCode;

fn usage() -> ExitCode {
    eprintln!("usage: pylon-devserver [--port N] [--manifest FILE.json] [--admin-token TOKEN] [--retention N]");
    ExitCode::from(2)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    let mut cfg = pylon_devserver::Config::default();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let Some(v) = args.next() else { return usage() };
        match a.as_str() {
            "--port" => match v.parse() {
                Ok(p) => cfg.port = p,
                Err(_) => return usage(),
            },
            "--manifest" => {
                let text = match std::fs::read_to_string(&v) {
                    Ok(t) => t,
                    Err(e) => {
                        eprintln!("cannot read {v}: {e}");
                        return ExitCode::FAILURE;
                    }
                };
                match serde_json::from_str(&text) {
                    Ok(m) => cfg.manifest = Some(m),
                    Err(e) => {
                        eprintln!("{v} is not JSON: {e}");
                        return ExitCode::FAILURE;
                    }
                }
            }
            "--admin-token" => cfg.admin_token = Some(v),
            "--retention" => match v.parse() {
                Ok(n) => cfg.retention = n,
                Err(_) => return usage(),
            },
            _ => return usage(),
        }
    }
    let handle = match pylon_devserver::spawn(cfg).await {
        Ok(h) => h,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    println!("{}", serde_json::json!({ "port": handle.port, "url": handle.url }));
    let _ = tokio::signal::ctrl_c().await;
    handle.stop().await;
    ExitCode::SUCCESS
}
