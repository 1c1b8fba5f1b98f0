//! The store's file at rest: SQLCipher (rusqlite's bundled build), keyed with 32 bytes the
//! app keeps in the platform's keystore.
//!
//! Every connection to a store file is made here ([`connect`]), so no code path can read or
//! write the file before its key is applied and checked. The rules:
//!
//! - **A key opens only its own file.** The key is checked by reading the schema before
//!   anything writes; a wrong key is [`StoreError::WrongKey`] and the file is not touched.
//! - **A plaintext store opened with a key is encrypted first**, whole: SQLCipher's
//!   `sqlcipher_export` copies it into a new file beside it, which is made durable and then
//!   renamed over the old one. A crash at any moment leaves either the plaintext store or the
//!   encrypted one, never a mix; a copy left half-made by a crash is thrown away at the next
//!   open.
//! - **No key, no plaintext fallback**: an encrypted file opened without a key is refused
//!   as [`StoreError::CorruptStore`] (SQLCipher cannot tell an encrypted file from noise).
//!
//! The raw-key form (`x'…'`) skips SQLCipher's passphrase derivation: the key is random
//! already, so opening costs no PBKDF2 rounds.

use std::path::{Path, PathBuf};

use rusqlite::{Connection, OptionalExtension};
use zeroize::Zeroizing;

use crate::error::{Result, StoreError};

/// What every plaintext SQLite file starts with; an encrypted one starts with its salt.
const PLAINTEXT_HEADER: &[u8; 16] = b"SQLite format 3\0";

/// The key of an encrypted store: 32 random bytes the app makes once (a secure random
/// generator) and keeps in the platform's keystore (Android Keystore, iOS Keychain). Losing
/// it loses the store's unsynced edits, so the app keeps it as long as the store. Never
/// printed, wiped from memory when dropped.
#[derive(Clone, PartialEq, Eq)]
pub struct StoreKey(Zeroizing<[u8; StoreKey::LEN]>);

impl StoreKey {
    /// The key's length in bytes (256 bits).
    pub const LEN: usize = 32;

    /// The key from its bytes; [`StoreError::BadKey`] unless there are exactly
    /// [`StoreKey::LEN`].
    pub fn new(bytes: &[u8]) -> Result<StoreKey> {
        let bytes: [u8; StoreKey::LEN] = bytes
            .try_into()
            .map_err(|_| StoreError::BadKey { len: bytes.len() })?;
        Ok(StoreKey(Zeroizing::new(bytes)))
    }

    /// SQLCipher's raw-key literal, `x'<64 hex digits>'`.
    fn literal(&self) -> Zeroizing<String> {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut s = Zeroizing::new(String::with_capacity(3 + 2 * StoreKey::LEN));
        s.push_str("x'");
        for b in self.0.iter() {
            s.push(HEX[usize::from(b >> 4)] as char);
            s.push(HEX[usize::from(b & 0xf)] as char);
        }
        s.push('\'');
        s
    }
}

impl std::fmt::Debug for StoreKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StoreKey(..)")
    }
}

/// A connection to the store file at `path`, with `key` applied and checked (`None`: a
/// plaintext store). A plaintext store opened with a key is encrypted first. The connection
/// waits up to 5 s for a lock.
pub(crate) fn connect(path: &Path, key: Option<&StoreKey>) -> Result<Connection> {
    if let Some(key) = key {
        let copy = encrypting_copy(path);
        remove_with_journals(&copy)?;
        if is_plaintext_store(path)? {
            encrypt(path, &copy, key)?;
        }
    }
    let conn = Connection::open(path)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    // SQLCipher would write its own lines to stderr (logcat) on a wrong key; the app hears of
    // failures as errors, and nothing else of the library prints.
    conn.query_row("PRAGMA cipher_log_level = NONE", [], |_| Ok(()))
        .optional()?;
    if let Some(key) = key {
        conn.pragma_update(None, "key", key.literal().as_str())?;
    }
    // The first read decrypts page 1: a wrong key fails here, before anything is written.
    match conn.query_row("SELECT count(*) FROM sqlite_master", [], |r| {
        r.get::<_, i64>(0)
    }) {
        Ok(_) => Ok(conn),
        Err(e) if key.is_some() && not_a_database(&e) => Err(StoreError::WrongKey),
        Err(e) => Err(e.into()),
    }
}

fn not_a_database(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ffi::ErrorCode::NotADatabase)
    )
}

/// Whether the file at `path` is a plaintext SQLite database (not absent, empty or
/// encrypted).
fn is_plaintext_store(path: &Path) -> Result<bool> {
    use std::io::Read;
    let mut header = [0u8; 16];
    match std::fs::File::open(path) {
        Ok(mut f) => match f.read_exact(&mut header) {
            Ok(()) => Ok(&header == PLAINTEXT_HEADER),
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(false),
            Err(e) => Err(StoreError::Io(e)),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(StoreError::Io(e)),
    }
}

/// Where a plaintext store is copied while it is encrypted.
fn encrypting_copy(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".encrypting");
    PathBuf::from(name)
}

/// `path` and the journal files SQLite may keep beside it (the WAL, its index, the rollback
/// journal).
fn with_journals(path: &Path) -> [PathBuf; 4] {
    let beside = |suffix: &str| {
        let mut name = path.as_os_str().to_owned();
        name.push(suffix);
        PathBuf::from(name)
    };
    [
        path.to_path_buf(),
        beside("-wal"),
        beside("-shm"),
        beside("-journal"),
    ]
}

fn remove_with_journals(path: &Path) -> Result<()> {
    with_journals(path)
        .iter()
        .try_for_each(|p| remove_if_present(p))
}

fn remove_if_present(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(StoreError::Io(e)),
        _ => Ok(()),
    }
}

/// Encrypts the plaintext store at `path` with `key`: a full copy at `copy`, made durable,
/// then renamed over `path`. The plaintext file is never written to.
fn encrypt(path: &Path, copy: &Path, key: &StoreKey) -> Result<()> {
    {
        let plain = Connection::open(path)?;
        plain.busy_timeout(std::time::Duration::from_secs(5))?;
        let copy_name = copy.to_str().ok_or_else(|| {
            StoreError::Io(std::io::Error::other("the store's path is not UTF-8"))
        })?;
        plain.execute(
            "ATTACH DATABASE ?1 AS encrypted KEY ?2",
            rusqlite::params![copy_name, key.literal().as_str()],
        )?;
        plain.query_row("SELECT sqlcipher_export('encrypted')", [], |_| Ok(()))?;
        let version: i64 = plain.query_row("PRAGMA main.user_version", [], |r| r.get(0))?;
        plain.pragma_update(Some("encrypted"), "user_version", version)?;
        plain.execute("DETACH DATABASE encrypted", [])?;
        // Closing the last connection checkpoints the plaintext's WAL into it and removes it.
    }
    let [_, wal, shm, _] = with_journals(path);
    if std::fs::metadata(&wal).is_ok_and(|m| m.len() > 0) {
        // Another connection holds the plaintext store open: its WAL would be replayed onto
        // the encrypted file. Leave the plaintext store as it is.
        remove_with_journals(copy)?;
        return Err(StoreError::InUse);
    }
    std::fs::File::open(copy)
        .and_then(|f| f.sync_all())
        .map_err(StoreError::Io)?;
    std::fs::rename(copy, path).map_err(StoreError::Io)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        // The rename itself made durable (a directory's fsync; not possible everywhere).
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    // What is left of the plaintext's journals belongs to it, not to the encrypted file.
    remove_if_present(&wal)?;
    remove_if_present(&shm)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_exactly_32_bytes_and_never_printed() {
        assert!(matches!(
            StoreKey::new(&[7; 31]),
            Err(StoreError::BadKey { len: 31 })
        ));
        assert!(StoreKey::new(&[7; 33]).is_err());
        let key = StoreKey::new(&[0xab; 32]).unwrap();
        assert_eq!(format!("{key:?}"), "StoreKey(..)");
        let literal = key.literal();
        assert_eq!(literal.len(), 67);
        assert!(literal.starts_with("x'abab") && literal.ends_with("ab'"));
    }

    #[test]
    fn the_plaintext_header_is_recognised() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.db");
        assert!(!is_plaintext_store(&p).unwrap(), "absent");
        std::fs::write(&p, b"").unwrap();
        assert!(!is_plaintext_store(&p).unwrap(), "empty");
        Connection::open(&p)
            .unwrap()
            .execute_batch("CREATE TABLE t (x)")
            .unwrap();
        assert!(is_plaintext_store(&p).unwrap());
    }
}
