//! Backups of the embedded store without stopping the server, and restoring one.
//!
//! - [`backup`] copies `qiaomen.db` with SQLite's online backup in **one step**: one read
//!   transaction, so the copy is the store at one moment — every change acknowledged before
//!   it began is in it — while writers go on appending to the WAL. (A backup in several
//!   steps restarts whenever another connection writes, which a serving store always does.)
//!   The copy is written beside its name, checked, synced, then renamed: a file at the
//!   name is always a whole, checked backup.
//! - [`restore`] needs the server stopped (it takes the data folder's lock, which a serving
//!   server holds: [`DataLock`]). It checks the backup first, moves the current store aside
//!   into `before-restore-<ms>/` (nothing is deleted), and puts the backup in its place.
//!   Phones that synced after the backup find the log behind their cursors
//!   (`cursor_ahead` / `cursor_diverged`) and upload again what they authored (SYNC-v1 §10).

use std::{
    fs::File,
    path::{Path, PathBuf},
    time::Duration,
};

use rusqlite::{Connection, OpenFlags, OptionalExtension};

/// What a backup or a restore holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// The log's last sequence number in the copy.
    pub log_seq: u64,
    pub households: u64,
    pub bytes: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("{0} already exists; choose a new file (a backup never overwrites one)")]
    Exists(PathBuf),
    #[error("there is no store in {0}")]
    NoStore(PathBuf),
    #[error("{0} is not a Qiaomen store: {1}")]
    NotAStore(PathBuf, String),
    #[error(
        "{path} was made by a newer server (store format {found}; this one reads up to {supported}); restore it with that server"
    )]
    TooNew {
        path: PathBuf,
        found: i64,
        supported: i64,
    },
    #[error(
        "a server is serving {0}; stop it before restoring (a backup needs no stop: admin backup)"
    )]
    Serving(PathBuf),
    #[error("the store: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("the file system: {0}")]
    Io(#[from] std::io::Error),
}

/// The lock a serving server holds on its data folder (`qiaomen.lock`, an OS file lock, so
/// it goes with the process however it ends): a second server, or a restore, is refused
/// while it is held.
#[derive(Debug)]
pub struct DataLock {
    _file: File,
}

impl DataLock {
    /// Takes the lock of `data_dir`; `Ok(None)` if another process holds it.
    pub fn try_take(data_dir: &Path) -> std::io::Result<Option<DataLock>> {
        std::fs::create_dir_all(data_dir)?;
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(data_dir.join("qiaomen.lock"))?;
        match file.try_lock() {
            Ok(()) => Ok(Some(DataLock { _file: file })),
            Err(std::fs::TryLockError::WouldBlock) => Ok(None),
            Err(std::fs::TryLockError::Error(e)) => Err(e),
        }
    }
}

fn store_path(data_dir: &Path) -> PathBuf {
    data_dir.join("qiaomen.db")
}

/// Copies the store of `data_dir` to `to`, consistent at one moment, while the server
/// serves.
pub fn backup(data_dir: &Path, to: &Path) -> Result<Summary, BackupError> {
    let from = store_path(data_dir);
    if !from.exists() {
        return Err(BackupError::NoStore(data_dir.to_path_buf()));
    }
    if to.exists() {
        return Err(BackupError::Exists(to.to_path_buf()));
    }
    let partial = partial_of(to);
    let _ = std::fs::remove_file(&partial);
    let result = (|| {
        // Only read, but opened as the server opens it (a read-only connection cannot set
        // up a WAL store's shared memory when no server runs).
        let src = Connection::open(&from)?;
        src.busy_timeout(Duration::from_secs(30))?;
        {
            let mut dst = Connection::open(&partial)?;
            {
                use rusqlite::backup::StepResult;
                let copy = rusqlite::backup::Backup::new(&src, &mut dst)?;
                // One step: the whole store in one read transaction (the module's notes); in
                // WAL mode a reader holds no writer back. Busy only while a checkpoint or a
                // migration holds the file: wait a little, a bounded number of times.
                let mut waits = 0;
                loop {
                    match copy.step(-1)? {
                        StepResult::Done => break,
                        StepResult::Busy | StepResult::Locked | StepResult::More if waits < 600 => {
                            waits += 1;
                            std::thread::sleep(Duration::from_millis(100));
                        }
                        _ => {
                            return Err(BackupError::Sqlite(rusqlite::Error::SqliteFailure(
                                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_BUSY),
                                Some("the store stayed busy for a minute".into()),
                            )));
                        }
                    }
                }
            }
            // A backup is one self-contained file (no WAL beside it); the server sets WAL
            // again when it opens a restored store.
            dst.query_row("PRAGMA journal_mode=DELETE", [], |r| r.get::<_, String>(0))?;
        }
        let summary = check(&partial)?;
        File::open(&partial)?.sync_all()?;
        std::fs::rename(&partial, to)?;
        if let Some(dir) = to.parent().filter(|d| !d.as_os_str().is_empty()) {
            File::open(dir)?.sync_all()?;
        }
        Ok(summary)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&partial);
    }
    result
}

/// Puts the backup `from` in place of the store of `data_dir` (the server stopped); the
/// store it replaces is moved into `before-restore-<ms>/` in the data folder. Returns what
/// the restored store holds and where the old one went.
pub fn restore(data_dir: &Path, from: &Path) -> Result<(Summary, Option<PathBuf>), BackupError> {
    let Some(_lock) = DataLock::try_take(data_dir)? else {
        return Err(BackupError::Serving(data_dir.to_path_buf()));
    };
    let summary = check(from)?;
    let store = store_path(data_dir);
    let partial = partial_of(&store);
    std::fs::copy(from, &partial)?;
    File::open(&partial)?.sync_all()?;
    let mut aside = None;
    if store.exists() {
        let dir = data_dir.join(format!("before-restore-{}", crate::access::now_ms()));
        std::fs::create_dir_all(&dir)?;
        for suffix in ["", "-wal", "-shm"] {
            let f = data_dir.join(format!("qiaomen.db{suffix}"));
            if f.exists() {
                std::fs::rename(&f, dir.join(format!("qiaomen.db{suffix}")))?;
            }
        }
        aside = Some(dir);
    }
    std::fs::rename(&partial, &store)?;
    File::open(data_dir)?.sync_all()?;
    Ok((summary, aside))
}

fn partial_of(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".partial");
    path.with_file_name(name)
}

/// Checks that `path` is a whole Qiaomen store this server can open, and says what it holds.
fn check(path: &Path) -> Result<Summary, BackupError> {
    let not_a_store = |why: String| BackupError::NotAStore(path.to_path_buf(), why);
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(|e| not_a_store(e.to_string()))?;
    let verdict: String = conn
        .query_row("PRAGMA quick_check", [], |r| r.get(0))
        .map_err(|e| not_a_store(e.to_string()))?;
    if verdict != "ok" {
        return Err(not_a_store("the file is damaged".into()));
    }
    let found: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    let supported = crate::storage::format();
    if found > supported {
        return Err(BackupError::TooNew {
            path: path.to_path_buf(),
            found,
            supported,
        });
    }
    let counts = conn
        .query_row(
            "SELECT (SELECT coalesce(max(seq), 0) FROM changes), (SELECT count(*) FROM docs)",
            [],
            |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)),
        )
        .optional()
        .map_err(|_| not_a_store("it has no change log".into()))?
        .unwrap_or((0, 0));
    Ok(Summary {
        log_seq: counts.0 as u64,
        households: counts.1 as u64,
        bytes: std::fs::metadata(path)?.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_backup_never_overwrites_and_a_restore_keeps_what_it_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        crate::storage::SqliteStorage::open(&data).unwrap();
        let copy = dir.path().join("copy.db");
        let first = backup(&data, &copy).unwrap();
        assert_eq!(first.log_seq, 0);
        assert!(matches!(backup(&data, &copy), Err(BackupError::Exists(_))));
        assert!(!partial_of(&copy).exists());
        // Not a store: refused before anything moves.
        let junk = dir.path().join("junk.db");
        std::fs::write(&junk, b"not sqlite at all, not at all, not at all......").unwrap();
        assert!(matches!(
            restore(&data, &junk),
            Err(BackupError::NotAStore(..))
        ));
        assert!(data.join("qiaomen.db").exists());
        // A server holds the folder: refused.
        let lock = DataLock::try_take(&data).unwrap().unwrap();
        assert!(DataLock::try_take(&data).unwrap().is_none());
        assert!(matches!(
            restore(&data, &copy),
            Err(BackupError::Serving(_))
        ));
        drop(lock);
        let (restored, aside) = restore(&data, &copy).unwrap();
        assert_eq!(restored.log_seq, 0);
        assert!(aside.unwrap().join("qiaomen.db").exists());
        crate::storage::SqliteStorage::open(&data).unwrap();
    }

    #[test]
    fn a_store_of_a_newer_format_is_not_restored() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        crate::storage::SqliteStorage::open(&data).unwrap();
        let newer = dir.path().join("newer.db");
        backup(&data, &newer).unwrap();
        Connection::open(&newer)
            .unwrap()
            .pragma_update(None, "user_version", crate::storage::format() + 1)
            .unwrap();
        assert!(matches!(
            restore(&data, &newer),
            Err(BackupError::TooNew { .. })
        ));
    }
}
