//! The database under stress: a full disk, a read-only file system, a
//! truncated or damaged file. Each gives a typed error, loses nothing that
//! was acknowledged, and recovers when the cause goes away.
//!
//! Full and read-only disks are real: a small tmpfs mounted for the test
//! (skipped, with a message, where mounting is not permitted).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{config, eventually, row, server};
use pylon_sync_engine::{Engine, Error, Which};
use serde_json::json;

/// A tmpfs of `size`, unmounted on drop.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(size: &str) -> Option<SmallDisk> {
        let dir = tempfile::tempdir().ok()?;
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .is_ok_and(|o| o.status.success());
        if !ok {
            eprintln!("skipped: cannot mount a tmpfs here (needs root)");
            return None;
        }
        Some(SmallDisk { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn remount(&self, mode: &str) {
        let ok = Command::new("mount").args(["-o", &format!("remount,{mode}")]).arg(self.path()).status().unwrap();
        assert!(ok.success());
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.dir.path()).status();
    }
}

/// Fills the disk, leaving about `leave` bytes.
fn fill(dir: &Path, leave: u64) -> PathBuf {
    let filler = dir.join("filler");
    let mut size = 0u64;
    let chunk = vec![7u8; 16 << 10];
    let mut f = std::fs::File::create(&filler).unwrap();
    use std::io::Write;
    while f.write_all(&chunk).and_then(|_| f.flush()).is_ok() {
        size += chunk.len() as u64;
    }
    drop(f);
    // give back a little, so the database is nearly but not quite full
    let _ = std::fs::OpenOptions::new().write(true).open(&filler).and_then(|f| f.set_len(size.saturating_sub(leave)));
    filler
}

fn offline(url: &str, db: &Path) -> Engine {
    let mut c = config(url, Some(db));
    c.transport = Some(Which::Poll);
    Engine::new(c).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_writes_with_a_storage_error_and_recovers() {
    let Some(disk) = SmallDisk::mount("2m") else { return };
    let srv = server().await;
    let db = disk.path().join("r.db");
    let e = offline(&srv.url, &db);
    e.stop().await;
    let mut acknowledged = Vec::new();
    for i in 0..20 {
        acknowledged
            .push(e.insert("Todo", row(json!({ "title": format!("before {i}"), "done": false }))).await.unwrap());
    }
    let filler = fill(disk.path(), 0);
    let big = "x".repeat(64 << 10);
    let mut refused = None;
    for _ in 0..100 {
        match e.insert("Todo", row(json!({ "title": big, "done": false }))).await {
            Ok(id) => acknowledged.push(id),
            Err(err) => {
                refused = Some(err);
                break;
            }
        }
    }
    let err = refused.expect("a full disk must refuse writes");
    assert!(matches!(err, Error::Storage(_)), "{err:?}");
    assert_eq!(err.code(), "ERR_SYNC_STORAGE");
    // space comes back: writes work again, nothing acknowledged was lost
    std::fs::remove_file(filler).unwrap();
    acknowledged.push(e.insert("Todo", row(json!({ "title": "after", "done": false }))).await.unwrap());
    e.close().await;
    let again = offline(&srv.url, &db);
    again.start().await.unwrap();
    eventually("every acknowledged write on the server", || again.mutations().is_empty()).await;
    assert_eq!(again.list("Todo").len(), acknowledged.len());
    again.close().await;
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_disk_gives_a_storage_error_and_keeps_the_replica() {
    let Some(disk) = SmallDisk::mount("8m") else { return };
    let srv = server().await;
    let db = disk.path().join("r.db");
    let e = offline(&srv.url, &db);
    e.start().await.unwrap();
    e.insert("Todo", row(json!({ "title": "kept", "done": false }))).await.unwrap();
    eventually("the insert acknowledged", || e.mutations().is_empty()).await;
    e.close().await;
    disk.remount("ro");
    let ro = offline(&srv.url, &db);
    let err = ro.start().await.expect_err("a read-only database cannot be followed");
    assert_eq!(err.code(), "ERR_SYNC_STORAGE", "{err:?}");
    ro.close().await;
    disk.remount("rw");
    let again = offline(&srv.url, &db);
    again.start().await.unwrap();
    assert_eq!(again.list("Todo").len(), 1);
    again.close().await;
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_file_is_reported_as_corrupt_never_a_crash() {
    let srv = server().await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("r.db");
    let e = offline(&srv.url, &db);
    e.start().await.unwrap();
    for i in 0..200 {
        e.insert("Todo", row(json!({ "title": format!("row {i}"), "done": false }))).await.unwrap();
    }
    eventually("the inserts acknowledged", || e.mutations().is_empty()).await;
    e.close().await;
    let bytes = std::fs::read(&db).unwrap();
    let damaged: Vec<(&str, Vec<u8>)> = vec![
        ("truncated", bytes[..bytes.len() / 3].to_vec()),
        ("header overwritten", {
            let mut b = bytes.clone();
            b[..100].fill(0x5a);
            b
        }),
        ("pages overwritten", {
            let mut b = bytes.clone();
            let mid = b.len() / 2;
            b[4096..mid].fill(0xff);
            b
        }),
    ];
    for (what, content) in damaged {
        let _ = std::fs::remove_file(dir.path().join("r.db-wal"));
        let _ = std::fs::remove_file(dir.path().join("r.db-shm"));
        std::fs::write(&db, content).unwrap();
        let broken = offline(&srv.url, &db);
        let err = broken.start().await.expect_err(what);
        assert!(matches!(err.code(), "ERR_SYNC_CORRUPT" | "ERR_SYNC_STORAGE"), "{what}: {} {err}", err.code());
        broken.close().await;
    }
    // the documented recovery: remove the file; the replica is rebuilt from the server
    std::fs::remove_file(&db).unwrap();
    let fresh = offline(&srv.url, &db);
    fresh.start().await.unwrap();
    assert_eq!(fresh.list("Todo").len(), 200);
    fresh.close().await;
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hydration_that_cannot_be_stored_fails_start_and_leaves_nothing_on_disk() {
    let srv = server().await;
    common::control(
        &srv.url,
        "seed",
        json!({ "entity": "Todo", "count": 10, "data": { "title": "t{i}", "done": false } }),
    )
    .await;
    let data =
        pylon_sync_engine::get_server_data(&srv.url, &["Todo".into()], None, None, Default::default()).await.unwrap();
    assert_eq!(data.cursor.last_seq, 10);
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("replica.db");
    let engine = Engine::new(config(&srv.url, Some(&db))).unwrap();
    assert_eq!(engine.hydrate(data).unwrap(), vec!["Todo".to_string()]);
    assert_eq!(engine.list("Todo").len(), 10, "shown at once");
    // another program holds the file's write lock past the engine's patience
    let other = rusqlite::Connection::open(&db).unwrap();
    other.execute_batch("BEGIN IMMEDIATE").unwrap();
    let err = engine.start().await.unwrap_err();
    assert_eq!(err.code(), "ERR_SYNC_STORAGE", "{err}");
    other.execute_batch("ROLLBACK").unwrap();
    let stored = |c: &rusqlite::Connection| -> (i64, Option<String>) {
        let rows = c.query_row("SELECT count(*) FROM rows", [], |r| r.get(0)).unwrap();
        let cursor = c.query_row("SELECT value FROM meta WHERE key = 'cursor'", [], |r| r.get(0)).ok();
        (rows, cursor)
    };
    let (rows, cursor) = stored(&other);
    assert_eq!(rows, 0, "nothing partial on disk");
    assert!(cursor.as_deref().is_none_or(|c| c == "0"), "the cursor moved without its rows: {cursor:?}");
    // the hydration stays pending: the next start stores it
    engine.start().await.unwrap();
    assert_eq!(stored(&other), (10, Some("10".into())));
    assert_eq!(engine.list("Todo").len(), 10);
    engine.close().await;
    srv.stop().await;
}
