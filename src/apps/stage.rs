//! Reading an app backup into staging: `Stager` takes the entries of one pass over the archive
//! and stages each package's APKs (in `/data/local/tmp`) and data trees (beside their targets
//! in the Android user being recovered into, on the same filesystem) in private directories,
//! checking each package's `_manifest` and the room left; a package's archived `AppDetails`
//! (`cpbackup/details.json`, bounded) is read into memory, a bad one is a warning.
//!
//! It acts on no package (that is `recover`, once the archive is verified), restores no link
//! and no archived owner, and leaves no staging behind (`Stager` removes it on drop).

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::fs::{self, OpenOptions};
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::android::details::{AppDetails, DETAILS_DOMAIN, DETAILS_NAME, MAX_DETAILS};
use crate::android::pm;
use crate::archive::read::{Item, Kind};
use crate::error::{Error, IoContext, Result};
use crate::select;
use crate::sys::walk;
use crate::sys::{self, SPACE_RESERVE};

use super::{domain_target, swap, Area, MANIFEST_VERSION, STAGING_PREFIX};

/// Android's reader refuses a larger `_manifest`.
const MAX_MANIFEST: u64 = 64 * 1024;

/// A package's `_manifest`, as read back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct AppManifest {
    pub package: String,
    pub version_code: i64,
    pub sdk: u32,
    pub installer: String,
    pub has_apk: bool,
    pub signatures: Vec<String>,
}

pub fn parse_app_manifest(text: &str) -> std::result::Result<AppManifest, String> {
    let mut lines = text.split('\n');
    let mut next =
        |what: &str| lines.next().map(str::to_string).ok_or_else(|| format!("_manifest ends before its {what} line"));
    let version = next("version")?;
    if version.trim() != MANIFEST_VERSION {
        return Err(format!("_manifest has version {version:?}; only {MANIFEST_VERSION} is known"));
    }
    let package = next("package")?;
    let version_code =
        next("versionCode")?.trim().parse().map_err(|_| "_manifest has a bad versionCode".to_string())?;
    let sdk = next("SDK")?.trim().parse().map_err(|_| "_manifest has a bad SDK version".to_string())?;
    let installer = next("installer")?;
    let has_apk = next("has-APK")?.trim() == "1";
    let n: usize =
        next("signature count")?.trim().parse().map_err(|_| "_manifest has a bad signature count".to_string())?;
    let mut signatures = Vec::new();
    for _ in 0..n.min(64) {
        signatures.push(next("signature")?);
    }
    Ok(AppManifest { package, version_code, sdk, installer, has_apk, signatures })
}

pub(super) struct StagedArea {
    /// The staged tree (renamed into `target` on success).
    pub(super) dir: PathBuf,
    pub(super) target: PathBuf,
}

#[derive(Default)]
pub(super) struct StagedApp {
    pub(super) manifest: Option<AppManifest>,
    /// Where this package's APKs are staged, and (name, path, size) of each, base first.
    pub(super) apk_dir: Option<PathBuf>,
    pub(super) apks: Vec<(String, PathBuf, u64)>,
    pub(super) areas: BTreeMap<Area, StagedArea>,
    /// Set when an entry of this package could not be taken; the package then fails.
    pub(super) error: Option<String>,
    /// The archived details (permissions, app ops…), when the archive has them and they parse.
    pub(super) details: Option<AppDetails>,
    /// Why archived details were not taken (the package is still recovered, without them).
    pub(super) details_warning: Option<String>,
    pub(super) entries: u64,
    pub(super) bytes: u64,
}

/// Stages the packages of one archive pass. Dropping it removes every staging directory.
pub struct Stager {
    pub(super) root: PathBuf,
    pub(super) id: String,
    /// The Android user whose data dirs the packages are staged beside.
    pub(super) user: u32,
    /// Held while this run lives: recovery leaves the files of a locked run alone. Dropped
    /// after the staging is removed (fields drop after `Drop::drop`).
    _lock: swap::RunLock,
    wanted: Option<BTreeSet<String>>,
    pub(super) apps: BTreeMap<String, StagedApp>,
    order: Vec<String>,
    warnings: Vec<String>,
    warned: BTreeSet<String>,
    available: u64,
    written: u64,
}

impl Stager {
    pub fn new(root: &Path, wanted: &[String], user: u32) -> Result<Stager> {
        let data = select::resolve(root, b"data", true).ctx(|| "resolving /data under the root".into())?.host;
        let available = sys::free_bytes(&data).ctx(|| format!("checking free space on {}", data.display()))?;
        let lock = swap::RunLock::take(&data)?;
        Ok(Stager {
            root: root.to_path_buf(),
            id: lock.id.clone(),
            user,
            _lock: lock,
            wanted: (!wanted.is_empty()).then(|| wanted.iter().cloned().collect()),
            apps: BTreeMap::new(),
            order: Vec::new(),
            warnings: Vec::new(),
            warned: BTreeSet::new(),
            available,
            written: 0,
        })
    }

    /// Refuse up front when `needed` bytes (from the backup's manifest) cannot fit.
    pub fn check_space(&self, needed: u64) -> Result<()> {
        if needed.saturating_add(SPACE_RESERVE) > self.available {
            let path = select::host_path(&self.root, b"data");
            return Err(Error::NoSpace {
                path,
                needed: needed.saturating_add(SPACE_RESERVE),
                available: self.available,
            });
        }
        Ok(())
    }

    fn warn_once(&mut self, key: String, msg: String) {
        if self.warned.insert(key) {
            tracing::warn!("{msg}");
            self.warnings.push(msg);
        }
    }

    /// Take one archive entry.
    pub fn entry(&mut self, item: Item, data: &mut dyn Read) -> Result<()> {
        let path = String::from_utf8_lossy(&item.meta.path).into_owned();
        let mut parts = path.splitn(4, '/');
        let (top, pkg, domain, rest) = (parts.next(), parts.next(), parts.next(), parts.next().unwrap_or(""));
        let (Some("apps"), Some(pkg)) = (top, pkg) else {
            let first = path.split('/').next().unwrap_or("").to_string();
            self.warn_once(
                format!("top:{first}"),
                format!("{path}: skipped: not an app entry (shared storage is not restored)"),
            );
            return Ok(());
        };
        if pm::check_package_name(pkg).is_err() {
            return Err(Error::archive(format!("entry {path:?}"), "names an invalid package"));
        }
        if let Some(w) = &self.wanted {
            if !w.contains(pkg) {
                return Ok(());
            }
        }
        let pkg = pkg.to_string();
        if !self.apps.contains_key(&pkg) {
            self.order.push(pkg.clone());
            self.apps.insert(pkg.clone(), StagedApp::default());
        }
        let Some(domain) = domain else {
            return Ok(()); // `apps/PKG` itself
        };
        let result = self.take(&pkg, domain, rest, &item, data);
        if let Err(e) = result {
            if matches!(e, Error::NoSpace { .. }) {
                return Err(e);
            }
            let app = self.apps.entry(pkg.clone()).or_default();
            if app.error.is_none() {
                tracing::warn!("{pkg}: {e}");
                app.error = Some(e.to_string());
            }
        }
        Ok(())
    }

    fn take(&mut self, pkg: &str, domain: &str, rest: &str, item: &Item, data: &mut dyn Read) -> Result<()> {
        let shown = item.meta.display();
        let app = self.apps.get(pkg).ok_or_else(|| Error::archive("staging", "internal: package missing"))?;
        if app.error.is_some() {
            return Ok(());
        }
        let first = app.manifest.is_none() && app.entries == 0;
        if domain == "_manifest" && rest.is_empty() {
            if !first {
                return Err(Error::archive(format!("entry {shown:?}"), "is a second _manifest"));
            }
            if item.size > MAX_MANIFEST {
                return Err(Error::archive(format!("entry {shown:?}"), "is larger than Android's 64 KiB limit"));
            }
            let mut text = String::new();
            data.take(MAX_MANIFEST)
                .read_to_string(&mut text)
                .map_err(|e| Error::archive(format!("entry {shown:?}"), e.to_string()))?;
            let m = parse_app_manifest(&text).map_err(|e| Error::archive(format!("entry {shown:?}"), e))?;
            if m.package != pkg {
                return Err(Error::archive(format!("entry {shown:?}"), format!("names package {:?}", m.package)));
            }
            let app = self.apps.entry(pkg.to_string()).or_default();
            app.manifest = Some(m);
            app.entries += 1;
            return Ok(());
        }
        if first {
            return Err(Error::archive(format!("entry {shown:?}"), "comes before the package's _manifest"));
        }
        match item.kind {
            Kind::Dir | Kind::File { sparse: false } => {}
            _ => {
                self.warn_once(
                    format!("kind:{shown}"),
                    format!("{shown}: skipped: only files and directories are restored into app data"),
                );
                return Ok(());
            }
        }
        if domain == "a" {
            return self.take_apk(pkg, rest, item, data);
        }
        if domain == DETAILS_DOMAIN && rest == DETAILS_NAME && item.kind != Kind::Dir {
            return self.take_details(pkg, item, data);
        }
        let Some((area, sub)) = domain_target(domain, rest.as_bytes()) else {
            let what = match domain {
                "k" => "key-value data is not restored",
                "_meta" => "widget metadata is not restored",
                _ => "unknown domain",
            };
            self.warn_once(format!("{pkg}:{domain}"), format!("apps/{pkg}/{domain}: skipped: {what}"));
            return Ok(());
        };
        let staged = self.area_dir(pkg, area)?;
        let local = if sub.is_empty() { staged.clone() } else { staged.join(OsStr::from_bytes(&sub)) };
        self.write_entry(&local, item, data)?;
        let app = self.apps.entry(pkg.to_string()).or_default();
        app.entries += 1;
        app.bytes += item.size;
        Ok(())
    }

    fn take_apk(&mut self, pkg: &str, rest: &str, item: &Item, data: &mut dyn Read) -> Result<()> {
        if item.kind == Kind::Dir {
            return Ok(());
        }
        let name = pm::apk_name(rest);
        if rest.contains('/') || !name.ends_with(".apk") {
            self.warn_once(format!("apk:{pkg}:{rest}"), format!("apps/{pkg}/a/{rest}: skipped: not an APK"));
            return Ok(());
        }
        let dir = match self.apps.get(pkg).and_then(|a| a.apk_dir.clone()) {
            Some(d) => d,
            None => {
                let parent = select::resolve(&self.root, b"data/local/tmp", true)
                    .ctx(|| "resolving /data/local/tmp".into())?
                    .host;
                fs::create_dir_all(&parent).ctx(|| format!("creating {}", parent.display()))?;
                let d = parent.join(format!("{STAGING_PREFIX}{}-{pkg}.apks", self.id));
                make_private_dir(&d)?;
                self.apps.entry(pkg.to_string()).or_default().apk_dir = Some(d.clone());
                d
            }
        };
        let local = dir.join(&name);
        self.write_entry(&local, item, data)?;
        let app = self.apps.entry(pkg.to_string()).or_default();
        app.apks.retain(|(n, _, _)| *n != name);
        if name == "base.apk" {
            app.apks.insert(0, (name, local, item.size));
        } else {
            app.apks.push((name, local, item.size));
        }
        app.entries += 1;
        app.bytes += item.size;
        Ok(())
    }

    /// A package's archived `AppDetails`: at most `MAX_DETAILS` bytes, read into memory. One
    /// that is too large, not JSON of its shape, or a second one is a warning and is not used.
    fn take_details(&mut self, pkg: &str, item: &Item, data: &mut dyn Read) -> Result<()> {
        let shown = item.meta.display();
        let taken = if item.size > MAX_DETAILS {
            Err(format!("{shown}: not used: {} bytes, more than the {MAX_DETAILS} allowed", item.size))
        } else {
            let mut bytes = Vec::new();
            data.take(MAX_DETAILS)
                .read_to_end(&mut bytes)
                .map_err(|e| Error::archive(format!("entry {shown:?}"), e.to_string()))?;
            AppDetails::from_json(&bytes).map_err(|e| format!("{shown}: not used: {e}"))
        };
        let app = self.apps.entry(pkg.to_string()).or_default();
        app.entries += 1;
        match taken {
            Ok(_) if app.details.is_some() || app.details_warning.is_some() => {
                app.details = None;
                app.details_warning = Some(format!("{shown}: a second app details entry: neither is used"));
            }
            Ok(d) => app.details = Some(d),
            Err(w) => {
                app.details = None;
                app.details_warning = Some(w);
            }
        }
        Ok(())
    }

    /// The staging dir of a package's area, made on first use beside the area's target.
    fn area_dir(&mut self, pkg: &str, area: Area) -> Result<PathBuf> {
        if let Some(s) = self.apps.get(pkg).and_then(|a| a.areas.get(&area)) {
            return Ok(s.dir.clone());
        }
        let device = area.device_path(pkg, self.user);
        let target = select::resolve(&self.root, device.as_bytes(), true).ctx(|| format!("resolving {device}"))?.host;
        let parent = target
            .parent()
            .map(Path::to_path_buf)
            .ok_or_else(|| Error::archive("staging", format!("{device} has no parent")))?;
        fs::create_dir_all(&parent).ctx(|| format!("creating {}", parent.display()))?;
        let dir = parent.join(format!("{STAGING_PREFIX}{}-{pkg}", self.id));
        make_private_dir(&dir)?;
        self.apps.entry(pkg.to_string()).or_default().areas.insert(area, StagedArea { dir: dir.clone(), target });
        Ok(dir)
    }

    fn write_entry(&mut self, local: &Path, item: &Item, data: &mut dyn Read) -> Result<()> {
        let shown = item.meta.display();
        if local.as_os_str().len() >= sys::PATH_MAX {
            return Err(Error::archive(
                format!("entry {shown:?}"),
                format!(
                    "is too long to restore: {} bytes with the staging directory, and a path is at most {} bytes",
                    local.as_os_str().len(),
                    sys::PATH_MAX
                ),
            ));
        }
        if let Some(parent) = local.parent() {
            fs::create_dir_all(parent).ctx(|| format!("creating {}", parent.display()))?;
        }
        // Android's own restore applies only the owner bits of the mode; keep group/other too
        // (installd's defaults), never set-id bits.
        let mode = item.meta.mode & 0o777;
        match item.kind {
            Kind::Dir => {
                match fs::symlink_metadata(local) {
                    Ok(m) if m.is_dir() => {}
                    Ok(_) => return Err(Error::archive(format!("entry {shown:?}"), "is a directory where a file was")),
                    Err(_) => fs::create_dir(local).ctx(|| format!("creating {}", local.display()))?,
                }
                fs::set_permissions(local, fs::Permissions::from_mode(mode | 0o700))
                    .ctx(|| format!("chmod {}", local.display()))?;
            }
            _ => {
                if item.size > self.available.saturating_sub(self.written).saturating_sub(SPACE_RESERVE) {
                    return Err(Error::NoSpace {
                        path: local.to_path_buf(),
                        needed: item.size.saturating_add(SPACE_RESERVE),
                        available: self.available.saturating_sub(self.written),
                    });
                }
                if fs::symlink_metadata(local).is_ok() {
                    fs::remove_file(local).ctx(|| format!("replacing {}", local.display()))?;
                }
                let mut f = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(local)
                    .ctx(|| format!("creating {}", local.display()))?;
                let n = io::copy(&mut data.take(item.size), &mut f)
                    .map_err(|e| Error::archive(format!("entry {shown:?}"), e.to_string()))?;
                if n != item.size {
                    return Err(Error::archive(format!("entry {shown:?}"), "is truncated"));
                }
                f.set_permissions(fs::Permissions::from_mode(mode)).ctx(|| format!("chmod {}", local.display()))?;
                let t = filetime::FileTime::from_unix_time(item.meta.mtime, 0);
                filetime::set_file_handle_times(&f, Some(t), Some(t))
                    .ctx(|| format!("setting times of {}", local.display()))?;
                self.written += item.size;
            }
        }
        Ok(())
    }

    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// Packages in archive order.
    pub fn packages(&self) -> Vec<String> {
        self.order.clone()
    }

    fn cleanup(&mut self) {
        for app in self.apps.values() {
            let dirs = app.apk_dir.iter().chain(app.areas.values().map(|a| &a.dir));
            for d in dirs {
                if let Err(e) = walk::remove_tree(d) {
                    if e.kind() != io::ErrorKind::NotFound {
                        tracing::warn!("could not remove staging {}: {e}", d.display());
                    }
                }
            }
        }
    }
}

impl Drop for Stager {
    fn drop(&mut self) {
        self.cleanup();
    }
}

fn make_private_dir(d: &Path) -> Result<()> {
    fs::create_dir(d).ctx(|| format!("creating staging directory {}", d.display()))?;
    fs::set_permissions(d, fs::Permissions::from_mode(0o700)).ctx(|| format!("securing {}", d.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apps::{manifest_text, AppSource};

    #[test]
    fn manifest_round_trip() {
        let app = AppSource {
            package: "com.example.app".into(),
            version_code: 42,
            installer: "com.android.vending".into(),
            apks: vec![],
            signatures: vec!["3082aa".into()],
            areas: vec![],
            bytes: 0,
            details: Default::default(),
            warnings: vec![],
        };
        let text = manifest_text(&app, 33);
        assert_eq!(text, "1\ncom.example.app\n42\n33\ncom.android.vending\n1\n1\n3082aa\n");
        let m = parse_app_manifest(&text).unwrap();
        assert_eq!(m.package, "com.example.app");
        assert_eq!((m.version_code, m.sdk, m.has_apk), (42, 33, true));
        assert_eq!(m.signatures, vec!["3082aa"]);
        assert!(parse_app_manifest("2\nx\n").is_err());
        assert!(parse_app_manifest("1\nx\nnotanumber\n").is_err());
    }
}
