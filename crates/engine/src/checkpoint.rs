//! Checkpoints off the write path. SQLite's own checkpoint runs inside the
//! commit that takes the write-ahead log past 1,000 pages, on the writer's
//! thread, and syncs the file: measured, it was the slowest one write in a
//! hundred (an awaited insert's p99 0.88 ms with it, 0.33 ms without). Here
//! a commit only notes the log's size; once it has grown by 1,000 pages, a
//! thread of its own waits for a quiet moment (no commit for 20 ms) and
//! copies the log into the file on a connection of its own (`PASSIVE`: it
//! never waits for the writer or a reader, and the writer never waits for
//! it). A log that reaches 10,000 pages with no quiet moment is copied in
//! the commit, as SQLite would. Checkpointing on every 1,000 pages under a
//! steady stream of writes kept one running nearly all the time, and its
//! syncs slowed the writes beside it (p90 0.22 → 0.39 ms).
//!
//! Owns the commit hook's state and the thread while it runs; [`Db`](crate::db::Db)
//! owns one per file, takes its hook off before the connection closes, and
//! drops it after.

use std::ffi::{c_char, c_int, c_void};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rusqlite::{ffi, Connection, OpenFlags};

use crate::error::Result;

/// Log pages written since the last checkpoint after which the file is
/// brought up to date when the writer pauses: SQLite's default mark.
const PAGES: c_int = 1000;
/// ... and at once, in the commit, if no pause came by then (about 40 MB
/// of log): under a steady stream of commits a checkpoint beside them never
/// copies the whole log, and SQLite starts the log over only once it has.
const BOUND: c_int = 10_000;
/// A pause in commits this long is a quiet moment to checkpoint in.
const QUIET: Duration = Duration::from_millis(20);
/// What the log file is cut back to when it starts over (a large
/// transaction, a bootstrap, leaves it as large as it was).
const LOG_KEPT: i64 = 64 << 20;

pub struct Checkpointer {
    shared: Arc<Shared>,
    /// The commit hook holds one count of `shared` until `uninstall`.
    hooked: bool,
}

struct Shared {
    path: PathBuf,
    /// The log's size in pages at the last commit, and how many of them
    /// the last checkpoint copied.
    pages: AtomicI32,
    copied: AtomicI32,
    /// When the last commit was, in microseconds from `since`.
    last_commit: AtomicU64,
    since: Instant,
    /// A checkpoint is under way (its thread is `thread`).
    running: AtomicBool,
    /// The writer is closing: a waiting thread leaves without checkpointing
    /// (the last connection to close does that).
    closing: AtomicBool,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Checkpointer {
    /// Takes checkpointing of `conn` (the writer, opened on `path`) off its commits.
    pub fn install(conn: &Connection, path: &Path) -> Result<Checkpointer> {
        conn.execute_batch(&format!("PRAGMA wal_autocheckpoint=0; PRAGMA journal_size_limit={LOG_KEPT};"))?;
        let shared = Arc::new(Shared {
            // the writer's file even if the working directory changes
            path: path.canonicalize().unwrap_or_else(|_| path.to_path_buf()),
            pages: AtomicI32::new(0),
            copied: AtomicI32::new(0),
            last_commit: AtomicU64::new(0),
            since: Instant::now(),
            running: AtomicBool::new(false),
            closing: AtomicBool::new(false),
            thread: Mutex::new(None),
        });
        // SAFETY: the hook owns one count of `shared` (given back by
        // `uninstall`, which the `Db` calls before its connection closes),
        // so its argument stays valid for as long as it is registered.
        unsafe {
            let arg = Arc::into_raw(shared.clone()) as *mut c_void;
            ffi::sqlite3_wal_hook(conn.handle(), Some(on_commit), arg);
        }
        Ok(Checkpointer { shared, hooked: true })
    }

    /// Takes the hook off `conn` (the one `install` was given), before it closes.
    pub fn uninstall(&mut self, conn: &Connection) {
        if !std::mem::take(&mut self.hooked) {
            return;
        }
        // SAFETY: the hook is off, so nothing uses its count of `shared` any more
        unsafe {
            ffi::sqlite3_wal_hook(conn.handle(), None, std::ptr::null_mut());
            drop(Arc::from_raw(Arc::as_ptr(&self.shared)));
        }
    }
}

impl Drop for Checkpointer {
    /// Waits for a checkpoint under way: once a `Db` is gone no connection
    /// to its file is left open (a reset deletes the file next).
    fn drop(&mut self) {
        self.shared.closing.store(true, Ordering::SeqCst);
        if let Some(t) = self.shared.thread.lock().take() {
            let _ = t.join();
        }
    }
}

/// SQLite calls this after each commit with the log's size in pages.
unsafe extern "C" fn on_commit(arg: *mut c_void, db: *mut ffi::sqlite3, name: *const c_char, pages: c_int) -> c_int {
    // SAFETY: see `Checkpointer::install`
    let shared = unsafe { &*(arg as *const Shared) };
    if pages < shared.pages.swap(pages, Ordering::SeqCst) {
        shared.copied.store(0, Ordering::SeqCst); // the log started over
    }
    shared.last_commit.store(shared.since.elapsed().as_micros() as u64, Ordering::SeqCst);
    let unwritten = shared.unwritten();
    if unwritten >= BOUND {
        // as SQLite's own checkpoint does, in this commit: nothing else can
        // commit meanwhile, so it copies the whole log, which then starts over
        let (mut log, mut copied) = (0, 0);
        // SAFETY: `db` and `name` are SQLite's own, valid during the hook
        let rc =
            unsafe { ffi::sqlite3_wal_checkpoint_v2(db, name, ffi::SQLITE_CHECKPOINT_PASSIVE, &mut log, &mut copied) };
        if rc == ffi::SQLITE_OK {
            shared.copied.store(copied, Ordering::SeqCst);
        }
        tracing::debug!(rc, log, copied, "checkpoint in the commit: no quiet moment came");
    } else if unwritten >= PAGES && !shared.running.swap(true, Ordering::SeqCst) {
        // SAFETY: as above; one more count, for the thread
        let shared = unsafe {
            Arc::increment_strong_count(arg as *const Shared);
            Arc::from_raw(arg as *const Shared)
        };
        shared.start();
    }
    ffi::SQLITE_OK
}

impl Shared {
    /// Pages in the log the file does not hold yet.
    fn unwritten(&self) -> c_int {
        self.pages.load(Ordering::SeqCst) - self.copied.load(Ordering::SeqCst)
    }

    /// Starts the thread that waits for a quiet moment and checkpoints.
    fn start(self: Arc<Self>) {
        let mut slot = self.thread.lock();
        if let Some(done) = slot.take() {
            let _ = done.join(); // finished: it cleared `running`
        }
        let shared = self.clone();
        let spawned = std::thread::Builder::new().name("pylon-sync-checkpoint".into()).spawn(move || {
            loop {
                if shared.closing.load(Ordering::SeqCst) {
                    shared.running.store(false, Ordering::SeqCst);
                    return;
                }
                let last = Duration::from_micros(shared.last_commit.load(Ordering::SeqCst));
                let quiet = shared.since.elapsed().saturating_sub(last);
                if quiet >= QUIET {
                    break;
                }
                std::thread::sleep(QUIET - quiet);
            }
            match checkpoint(&shared.path) {
                Ok(copied) => shared.copied.store(copied, Ordering::SeqCst),
                // the log keeps growing until a later one succeeds, or the last close
                Err(e) => tracing::warn!(error = %e, "checkpoint failed"),
            }
            shared.running.store(false, Ordering::SeqCst);
        });
        match spawned {
            Ok(t) => *slot = Some(t),
            Err(e) => {
                tracing::warn!(error = %e, "cannot start a checkpoint thread");
                self.running.store(false, Ordering::SeqCst);
            }
        }
    }
}

/// Copies what it can of the log into the file, on a connection of its
/// own; returns how many of the log's pages the file now holds.
fn checkpoint(path: &Path) -> Result<c_int> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags)?;
    let (busy, log, copied): (i64, c_int, c_int) =
        conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
    tracing::trace!(busy, log, copied, "checkpoint");
    Ok(copied)
}
