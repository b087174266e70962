//! App backups and recoveries (Alibaba ECP BackupApp / RecoverApp) in Android's own `.ab`
//! layout, one package at a time: `backup` resolves apps through `pm` and writes them as
//! Android's `FullBackupEngine` orders them; `stage` reads an archive's packages into staging
//! beside their targets; `recover` then, per package and once the archive is verified, installs
//! the app, gives it its data and applies its archived details (permissions, app ops:
//! `android::fidelity`); `swap` puts that data in place so that a kill at any moment leaves the
//! old data or the new. Everything acts for one Android user (`--user N`). Here the layout they
//! share: the data areas of a user, and where each domain's entries go.
//!
//! It must never act on a package before the whole archive is read and verified (the caller
//! runs `recover` only then), never leave a data dir half old and half new, never restore an
//! archived owner or label, and never leave its staging behind (`Stager` removes it on drop).

use serde::Serialize;

mod backup;
mod recover;
mod stage;
mod swap;

pub use backup::{manifest_text, resolve, write_app, AppSource, BackupOptions};
pub use recover::{not_in_archive, recover, AppOutcome, AppStatus, RecoverOptions, RecoverStep};
pub use stage::{parse_app_manifest, AppManifest, Stager};
pub use swap::finish_interrupted;

/// The `_manifest` format version Android writes and reads.
const MANIFEST_VERSION: &str = "1";
const STAGING_PREFIX: &str = ".cpbackup-app-";
const ASIDE_PREFIX: &str = ".cpbackup-old-";

/// Where each kind of app data lives on the phone, per Android user (`--user N`, 0 the owner).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub enum Area {
    /// Credential-encrypted data dir, `/data/user/N/PKG` (domain `r`).
    Ce,
    /// Device-protected data dir, `/data/user_de/N/PKG` (domain `d_r`).
    De,
    /// External files, `/data/media/N/Android/data/PKG` (domain `ef`).
    Ext,
    /// OBB files, `/data/media/N/Android/obb/PKG` (domain `obb`).
    Obb,
}

impl Area {
    /// The area's directory of `package` for Android user `user`.
    fn device_path(self, package: &str, user: u32) -> String {
        match self {
            Area::Ce => format!("/data/user/{user}/{package}"),
            Area::De => format!("/data/user_de/{user}/{package}"),
            Area::Ext => format!("/data/media/{user}/Android/data/{package}"),
            Area::Obb => format!("/data/media/{user}/Android/obb/{package}"),
        }
    }
    fn domain(self) -> &'static str {
        match self {
            Area::Ce => "r",
            Area::De => "d_r",
            Area::Ext => "ef",
            Area::Obb => "obb",
        }
    }
    /// Data dirs proper: cache dirs get the cache gid; the fresh dir's extras are kept.
    fn is_data_dir(self) -> bool {
        matches!(self, Area::Ce | Area::De)
    }
}

/// Where an archived entry goes: its area and its path below the area's directory.
/// `None` for what cpbackup does not restore (the caller warns).
pub fn domain_target(domain: &str, rest: &[u8]) -> Option<(Area, Vec<u8>)> {
    let (area, sub): (Area, &[u8]) = match domain {
        "r" => (Area::Ce, b""),
        "f" => (Area::Ce, b"files"),
        "db" => (Area::Ce, b"databases"),
        "sp" => (Area::Ce, b"shared_prefs"),
        "c" => (Area::Ce, b"cache"),
        "nb" => (Area::Ce, b"no_backup"),
        "d_r" => (Area::De, b""),
        "d_f" => (Area::De, b"files"),
        "d_db" => (Area::De, b"databases"),
        "d_sp" => (Area::De, b"shared_prefs"),
        "d_c" => (Area::De, b"cache"),
        "d_nb" => (Area::De, b"no_backup"),
        "ef" => (Area::Ext, b""),
        "obb" => (Area::Obb, b""),
        _ => return None,
    };
    let mut path = sub.to_vec();
    if !rest.is_empty() {
        if !path.is_empty() {
            path.push(b'/');
        }
        path.extend_from_slice(rest);
    }
    Some((area, path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domains_map_to_areas() {
        assert_eq!(domain_target("r", b"files/a"), Some((Area::Ce, b"files/a".to_vec())));
        assert_eq!(domain_target("f", b"a"), Some((Area::Ce, b"files/a".to_vec())));
        assert_eq!(domain_target("db", b""), Some((Area::Ce, b"databases".to_vec())));
        assert_eq!(domain_target("d_sp", b"p.xml"), Some((Area::De, b"shared_prefs/p.xml".to_vec())));
        assert_eq!(domain_target("ef", b"x"), Some((Area::Ext, b"x".to_vec())));
        assert_eq!(domain_target("c", b"x"), Some((Area::Ce, b"cache/x".to_vec())));
        assert_eq!(domain_target("k", b"x"), None);
        assert_eq!(domain_target("_meta", b""), None);
    }

    #[test]
    fn areas_are_per_user() {
        assert_eq!(Area::Ce.device_path("a.b", 0), "/data/user/0/a.b");
        assert_eq!(Area::De.device_path("a.b", 10), "/data/user_de/10/a.b");
        assert_eq!(Area::Ext.device_path("a.b", 10), "/data/media/10/Android/data/a.b");
        assert_eq!(Area::Obb.device_path("a.b", 11), "/data/media/11/Android/obb/a.b");
    }
}
