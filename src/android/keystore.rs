//! Whether an app holds keys in the Android Keystore: keys that live in the phone's secure
//! hardware (or Keystore's own encrypted blobs), bound to this phone, so no copy of the app's
//! files can take them along. An app whose data depends on them (an encrypted database, a
//! login token sealed with a key) comes back signed out, or crashes until its data is cleared.
//!
//! Keystore 2 (Android 12+) keeps its key entries in `/data/misc/keystore/persistent.sqlite`,
//! table `keyentry`: an app's own keys have `domain = 0` (`Domain::APP`) and `namespace` = the
//! app's uid (`key_type = 0`, a client key; `state = 1`, live). Keystore 1 (Android 10–11, and
//! keys Keystore 2 has not migrated yet) keeps one file per key in
//! `/data/misc/keystore/user_N/`, named `UID_USRPKEY_alias` (a key pair) or `UID_USRSKEY_alias`
//! (a secret key).
//!
//! It only reads: the database is opened read-only (Keystore 2 may be writing it, in WAL mode,
//! at the same time; a reader never blocks it), and nothing here changes a file.

use std::fs;
use std::io;
use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

use crate::error::{Error, Result};
use crate::select;

/// Keystore 2's database, a device path.
pub const KEYSTORE2_DB: &str = "/data/misc/keystore/persistent.sqlite";
/// How long to wait for a lock Keystore holds (it never holds one for long).
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// The keys an app holds, by where they are kept.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AppKeys {
    /// Live client keys of the app in Keystore 2's database.
    pub keystore2: u64,
    /// Key files of the app in Keystore 1's directory for its user.
    pub legacy: u64,
}

impl AppKeys {
    pub fn total(&self) -> u64 {
        self.keystore2 + self.legacy
    }
}

/// Count the keys the app with `uid` (`user × 100000 + appId`) holds on the phone at `root`.
/// A phone without either store has none. A database that exists but cannot be read is an
/// error (the caller warns that it could not tell).
pub fn app_keys(root: &Path, user: u32, uid: u32) -> Result<AppKeys> {
    let db = rooted(root, KEYSTORE2_DB)?;
    let keystore2 = if db.exists() { count_keystore2(&db, uid)? } else { 0 };
    let dir = rooted(root, &format!("/data/misc/keystore/user_{user}"))?;
    let legacy = count_legacy(&dir, uid)?;
    Ok(AppKeys { keystore2, legacy })
}

fn rooted(root: &Path, device: &str) -> Result<std::path::PathBuf> {
    select::resolve(root, device.as_bytes(), true)
        .map(|r| r.host)
        .map_err(|e| Error::Io { context: format!("resolving {device}"), source: e })
}

/// Rows of `keyentry` for the app's own live keys.
fn count_keystore2(db: &Path, uid: u32) -> Result<u64> {
    let fail = |e: rusqlite::Error| Error::Io {
        context: format!("reading Keystore's database {}", db.display()),
        source: io::Error::other(e.to_string()),
    };
    let conn = Connection::open_with_flags(db, OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX)
        .map_err(fail)?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(fail)?;
    let uid = i64::from(uid);
    let full = "SELECT COUNT(*) FROM keyentry WHERE domain = 0 AND namespace = ?1 AND key_type = 0 AND state = 1";
    let n: i64 = match conn.query_row(full, [uid], |r| r.get(0)) {
        Ok(n) => n,
        // The first Keystore 2 schemas had no `key_type` or `state` yet.
        Err(e) if e.to_string().contains("no such column") => conn
            .query_row("SELECT COUNT(*) FROM keyentry WHERE domain = 0 AND namespace = ?1", [uid], |r| r.get(0))
            .map_err(fail)?,
        Err(e) => return Err(fail(e)),
    };
    Ok(u64::try_from(n).unwrap_or(0))
}

/// Keystore 1's key files for the uid: `UID_USRPKEY_…` and `UID_USRSKEY_…`.
fn count_legacy(dir: &Path, uid: u32) -> Result<u64> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(Error::Io { context: format!("listing {}", dir.display()), source: e }),
    };
    let pkey = format!("{uid}_USRPKEY_");
    let skey = format!("{uid}_USRSKEY_");
    let mut n = 0;
    for entry in entries {
        let entry = entry.map_err(|e| Error::Io { context: format!("listing {}", dir.display()), source: e })?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with(&pkey) || name.starts_with(&skey) {
            n += 1;
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    /// Keystore 2's `keyentry` as `database.rs` creates it (schema version 1+).
    const SCHEMA: &str = "CREATE TABLE keyentry (id INTEGER UNIQUE, key_type INTEGER, domain INTEGER, \
                          namespace INTEGER, alias BLOB, state INTEGER, km_uuid BLOB);";

    fn phone() -> (tempfile::TempDir, PathBuf) {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("phone");
        fs::create_dir_all(root.join("data/misc/keystore")).unwrap();
        (tmp, root)
    }

    fn db(root: &Path) -> Connection {
        let c = Connection::open(root.join("data/misc/keystore/persistent.sqlite")).unwrap();
        let mode: String = c.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0)).unwrap();
        assert_eq!(mode, "wal");
        c.execute_batch(SCHEMA).unwrap();
        c
    }

    #[test]
    fn keystore2_rows_of_the_app_only() {
        let (_tmp, root) = phone();
        let c = db(&root);
        // (key_type, domain, namespace, state): two live app keys of uid 10123; one of another
        // app; one unreferenced; a super key (key_type 1) and a SELinux-domain key (domain 2)
        // with the same number.
        for (i, (t, d, ns, st)) in
            [(0, 0, 10123, 1), (0, 0, 10123, 1), (0, 0, 10124, 1), (0, 0, 10123, 2), (1, 0, 10123, 1), (0, 2, 10123, 1)]
                .iter()
                .enumerate()
        {
            c.execute(
                "INSERT INTO keyentry (id, key_type, domain, namespace, alias, state) VALUES (?1, ?2, ?3, ?4, 'k', ?5)",
                rusqlite::params![i as i64, t, d, ns, st],
            )
            .unwrap();
        }
        // A writer holds a transaction open while cpbackup reads (WAL: the reader is not blocked).
        c.execute_batch("BEGIN IMMEDIATE; INSERT INTO keyentry (id, key_type, domain, namespace, state) VALUES (99, 0, 0, 10123, 1);")
            .unwrap();
        let k = app_keys(&root, 0, 10123).unwrap();
        assert_eq!(k, AppKeys { keystore2: 2, legacy: 0 });
        c.execute_batch("COMMIT").unwrap();
        assert_eq!(app_keys(&root, 0, 10123).unwrap().keystore2, 3);
        assert_eq!(app_keys(&root, 0, 10124).unwrap().total(), 1);
        assert_eq!(app_keys(&root, 0, 10125).unwrap().total(), 0);
        // Read-only: the reader changed nothing (no row, no schema).
        let n: i64 = c.query_row("SELECT COUNT(*) FROM keyentry", [], |r| r.get(0)).unwrap();
        assert_eq!(n, 7);
    }

    #[test]
    fn first_schema_without_state_and_legacy_files() {
        let (_tmp, root) = phone();
        let c = Connection::open(root.join("data/misc/keystore/persistent.sqlite")).unwrap();
        c.execute_batch(
            "CREATE TABLE keyentry (id INTEGER UNIQUE, key_type INTEGER, domain INTEGER, namespace INTEGER, alias BLOB);
             INSERT INTO keyentry VALUES (1, 0, 0, 1010123, 'a');",
        )
        .unwrap();
        let user10 = root.join("data/misc/keystore/user_10");
        fs::create_dir_all(&user10).unwrap();
        for f in [
            "1010123_USRPKEY_login",
            "1010123_USRCERT_login",
            ".1010123_chr_USRPKEY_login",
            "1010123_USRSKEY_db",
            "10123_USRPKEY_x",
        ] {
            fs::write(user10.join(f), b"blob").unwrap();
        }
        assert_eq!(app_keys(&root, 10, 1010123).unwrap(), AppKeys { keystore2: 1, legacy: 2 });
        assert_eq!(app_keys(&root, 0, 10123).unwrap().total(), 0);
    }

    #[test]
    fn no_keystore_and_unreadable_database() {
        let (_tmp, root) = phone();
        assert_eq!(app_keys(&root, 0, 10123).unwrap(), AppKeys::default());
        fs::write(root.join("data/misc/keystore/persistent.sqlite"), b"not a database at all, just text").unwrap();
        let e = app_keys(&root, 0, 10123).unwrap_err().to_string();
        assert!(e.contains("Keystore's database"), "{e}");
        // A database without the table (some other file under the name) is an error too.
        fs::remove_file(root.join("data/misc/keystore/persistent.sqlite")).unwrap();
        Connection::open(root.join("data/misc/keystore/persistent.sqlite"))
            .unwrap()
            .execute_batch("CREATE TABLE other (x);")
            .unwrap();
        assert!(app_keys(&root, 0, 10123).is_err());
    }

    #[test]
    fn the_database_path_stays_inside_the_root() {
        let (tmp, root) = phone();
        // An absolute symlink to /data/misc/keystore resolves under the root, not the host's.
        fs::remove_dir_all(root.join("data/misc/keystore")).unwrap();
        fs::create_dir_all(root.join("data/misc/real")).unwrap();
        std::os::unix::fs::symlink("/data/misc/real", root.join("data/misc/keystore")).unwrap();
        let c = Connection::open(root.join("data/misc/real/persistent.sqlite")).unwrap();
        c.execute_batch(SCHEMA).unwrap();
        c.execute("INSERT INTO keyentry (id, key_type, domain, namespace, state) VALUES (1, 0, 0, 10123, 1)", [])
            .unwrap();
        assert_eq!(app_keys(&root, 0, 10123).unwrap().keystore2, 1);
        drop(tmp);
    }
}
