//! Per-package plans for app backups and recoveries (Alibaba ECP BackupApp / RecoverApp) in
//! Android's own `.ab` layout.
//!
//! Backup: resolve each package through `pm` (`AppSource`), then write it as Android's
//! `FullBackupEngine` orders it — `apps/PKG/_manifest` (mtime 0), `apps/PKG/a/base.apk`, the
//! split APKs as further `a/split_*.apk` entries (Android's reader has promoted the package to
//! ACCEPT after installing base.apk and skips later `a/` entries, so `adb restore` still works;
//! cpbackup installs them all), then the data domains `r/`, `d_r/`, `ef/`.
//!
//! Recover: `Stager` takes the entries of one pass over the archive and stages each package's
//! APKs and data trees in directories beside their targets; `recover` then, per package, checks
//! the app suits this phone, stops it, uninstalls the installed copy, installs every APK in one
//! session, waits for pm, swaps each staged tree in by renames, and gives it the fresh
//! install's owner and SELinux label.
//!
//! It must never act on a package before the whole archive is read and verified (the caller
//! runs `recover` only then), never leave a data dir half old and half new, never restore an
//! archived owner or label, and never leave its staging behind (`Stager` removes it on drop).

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

use crate::android::apk;
use crate::android::device::Device;
use crate::android::owner::{self, Owner};
use crate::android::pm;
use crate::android::selinux::{self, Relabel};
use crate::archive::disk::{self, HardLinks, Put};
use crate::archive::read::{Item, Kind};
use crate::archive::write::TarWriter;
use crate::archive::{self, Meta};
use crate::error::{Error, IoContext, Result};
use crate::select;
use crate::sys::walk::{self, Step, Walk};
use crate::sys::{self, Stat, SPACE_RESERVE};

mod swap;

pub use swap::finish_interrupted;

/// The `_manifest` format version Android writes and reads.
const MANIFEST_VERSION: &str = "1";
/// Android's reader refuses a larger `_manifest`.
const MAX_MANIFEST: u64 = 64 * 1024;
/// Names left out at the top of a data dir: native libs (a symlink), code cache, no-backup.
const ALWAYS_EXCLUDED: [&str; 3] = ["lib", "code_cache", "no_backup"];
const STAGING_PREFIX: &str = ".cpbackup-app-";
const ASIDE_PREFIX: &str = ".cpbackup-old-";
const INSTALL_TIMEOUT: Duration = Duration::from_secs(120);

/// Where each kind of app data lives on the phone (user 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub enum Area {
    /// Credential-encrypted data dir, `/data/user/0/PKG` (domain `r`).
    Ce,
    /// Device-protected data dir, `/data/user_de/0/PKG` (domain `d_r`).
    De,
    /// External files, `/data/media/0/Android/data/PKG` (domain `ef`).
    Ext,
    /// OBB files, `/data/media/0/Android/obb/PKG` (domain `obb`).
    Obb,
}

impl Area {
    fn device_path(self, package: &str) -> String {
        match self {
            Area::Ce => format!("/data/user/0/{package}"),
            Area::De => format!("/data/user_de/0/{package}"),
            Area::Ext => format!("/data/media/0/Android/data/{package}"),
            Area::Obb => format!("/data/media/0/Android/obb/{package}"),
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

// ---------------------------------------------------------------------------------------------
// Backup

#[derive(Debug, Clone, Copy)]
pub struct BackupOptions {
    /// `am force-stop` each app before its data is read.
    pub stop: bool,
    /// Keep `cache` (left out with `--no-cache`).
    pub cache: bool,
}

/// One installed app, resolved for backup.
#[derive(Debug, Clone)]
pub struct AppSource {
    pub package: String,
    pub version_code: i64,
    pub installer: String,
    /// (name in the archive, host path), base.apk first.
    pub apks: Vec<(String, PathBuf)>,
    /// `_manifest` signature lines (lowercase hex of each signer's DER certificate).
    pub signatures: Vec<String>,
    /// Data areas that exist: (area, host dir).
    pub areas: Vec<(Area, PathBuf)>,
    /// Bytes of APKs and data files, from a pre-scan.
    pub bytes: u64,
}

/// Ask pm about `package` and find its APKs and data under `root`.
pub fn resolve(device: &Device, root: &Path, package: &str, opts: BackupOptions) -> Result<AppSource> {
    let listed = device.package(package)?.ok_or_else(|| Error::Device {
        command: format!("pm list packages -U --show-versioncode {package}"),
        output: format!("package {package} is not installed"),
    })?;
    let mut apks = Vec::new();
    for p in device.apk_paths(package)? {
        let host = select::resolve(root, p.as_bytes(), true).ctx(|| format!("resolving {p}"))?.host;
        apks.push((pm::apk_name(&p), host));
    }
    if apks.first().map(|(n, _)| n.as_str()) != Some("base.apk") {
        return Err(Error::Device {
            command: format!("pm path {package}"),
            output: "no base.apk among the paths".into(),
        });
    }
    let signatures = apk::inspect(&apks[0].1)?.signature_hex();
    if signatures.is_empty() {
        tracing::warn!(
            "{package}: base.apk has no signing certificate; Android's own restore will ignore this package"
        );
    }
    let mut areas = Vec::new();
    for area in [Area::Ce, Area::De, Area::Ext] {
        let host = select::resolve(root, area.device_path(package).as_bytes(), true)
            .ctx(|| format!("resolving {}", area.device_path(package)))?
            .host;
        if fs::symlink_metadata(&host).map(|m| m.is_dir()).unwrap_or(false) {
            areas.push((area, host));
        }
    }
    let mut app = AppSource {
        package: package.to_string(),
        version_code: listed.version_code,
        installer: device.installer(package),
        apks,
        signatures,
        areas,
        bytes: 0,
    };
    let mut bytes = 0u64;
    for (_, p) in &app.apks {
        bytes += fs::metadata(p).ctx(|| format!("reading {}", p.display()))?.len();
    }
    for (area, dir) in &app.areas {
        walk_area(dir, &excluded(*area, opts), &mut |_, m| {
            if m.is_file() {
                bytes += m.size;
            }
            Ok(())
        })?;
    }
    app.bytes = bytes;
    Ok(app)
}

/// The `_manifest` text (`AppMetadataBackupWriter.getManifestBytes`).
pub fn manifest_text(app: &AppSource, sdk: u32) -> String {
    let mut s = format!(
        "{MANIFEST_VERSION}\n{}\n{}\n{sdk}\n{}\n1\n{}\n",
        app.package,
        app.version_code,
        app.installer,
        app.signatures.len()
    );
    for sig in &app.signatures {
        s.push_str(sig);
        s.push('\n');
    }
    s
}

fn excluded(area: Area, opts: BackupOptions) -> Vec<&'static str> {
    let mut names: Vec<&'static str> = if area.is_data_dir() { ALWAYS_EXCLUDED.to_vec() } else { Vec::new() };
    if !opts.cache {
        names.push("cache");
    }
    names
}

/// Sorted walk of `dir` (see `sys::walk`: no links followed, no recursion, any depth),
/// skipping `top_excludes` at its top. Calls `f` with the walk (standing at the entry: its path
/// from `dir`, its directory for `*at` calls) and the entry's `lstat`; directories come before
/// their contents. Entries that vanish meanwhile are left out.
fn walk_area(dir: &Path, top_excludes: &[&str], f: &mut dyn FnMut(&Walk, &Stat) -> Result<()>) -> Result<()> {
    let listing = |walk: &Walk| format!("listing {}/{}", dir.display(), archive::shown(walk.rel()));
    let mut walk = Walk::new(dir).ctx(|| format!("listing {}", dir.display()))?;
    while let Some(step) = walk.next() {
        let step = match step {
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            other => other.ctx(|| listing(&walk))?,
        };
        if step == Step::Left {
            continue;
        }
        if walk.depth() == 1 && top_excludes.iter().any(|x| x.as_bytes() == walk.rel()) {
            walk.skip();
            continue;
        }
        let st = match walk.stat() {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                walk.skip();
                continue;
            }
            other => other.ctx(|| format!("reading {}/{}", dir.display(), archive::shown(walk.rel())))?,
        };
        f(&walk, &st)?;
    }
    Ok(())
}

/// Write one app into the tar: `_manifest`, APKs, data. `warn` receives what was skipped.
/// Returns the file bytes written.
pub fn write_app<W: Write>(
    tar: &mut TarWriter<W>,
    app: &AppSource,
    sdk: u32,
    opts: BackupOptions,
    warn: &mut dyn FnMut(String),
    progress: &mut dyn FnMut(u64),
) -> Result<()> {
    let prefix = format!("apps/{}", app.package);
    let manifest = manifest_text(app, sdk);
    let m = Meta { path: format!("{prefix}/_manifest").into_bytes(), mode: 0o600, mtime: 0, ..Default::default() };
    tar.append_file(&m, manifest.len() as u64, &mut manifest.as_bytes())
        .map_err(|e| Error::Io { context: "writing _manifest into the archive".into(), source: e })?;
    // Android's flavour: no hard links, so nothing is ever looked up here.
    let mut links = HardLinks::default();
    for (name, host) in &app.apks {
        let file = File::open(host).ctx(|| format!("opening {}", host.display()))?;
        let st = Stat::from(&file.metadata().ctx(|| format!("reading {}", host.display()))?);
        let meta = disk::meta(format!("{prefix}/a/{name}").into_bytes(), &st);
        let shown = host.display().to_string();
        match disk::put_file(tar, &meta, &st, || Ok(file), &mut links, &shown)? {
            Put::Stored { size, changed: None } => progress(size),
            // An APK that changes while read would install as garbage: refuse the backup.
            Put::Stored { changed: Some(_), .. } => return Err(Error::archive(shown, "changed while it was read")),
            Put::Linked | Put::Unreadable(_) => return Err(Error::archive(shown, "is not a regular file")),
        }
    }
    for (area, dir) in &app.areas {
        let domain = area.domain();
        walk_area(dir, &excluded(*area, opts), &mut |walk, st| {
            let mut path = format!("{prefix}/{domain}/").into_bytes();
            path.extend_from_slice(walk.rel());
            let shown = format!("{}/{}", dir.display(), archive::shown(walk.rel()));
            if st.is_dir() {
                tar.append_dir(&disk::meta(path, st))
                    .map_err(|e| Error::Io { context: format!("writing the archive at {shown}"), source: e })?;
            } else if st.is_file() {
                match disk::put_file(tar, &disk::meta(path, st), st, || walk.open(), &mut links, &shown)? {
                    Put::Stored { size, changed } => {
                        if let Some(w) = changed {
                            warn(w);
                        }
                        progress(size);
                    }
                    Put::Linked => {}
                    Put::Unreadable(reason) => warn(format!("{shown}: {reason}")),
                }
            } else {
                let what = if st.is_symlink() { "a symlink" } else { "a special file" };
                warn(format!("{shown}: skipped: {what} (Android backups carry only files and directories)"));
            }
            Ok(())
        })?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Recover: reading the archive into staging

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

struct StagedArea {
    /// The staged tree (renamed into `target` on success).
    dir: PathBuf,
    target: PathBuf,
}

#[derive(Default)]
struct StagedApp {
    manifest: Option<AppManifest>,
    /// Where this package's APKs are staged, and (name, path, size) of each, base first.
    apk_dir: Option<PathBuf>,
    apks: Vec<(String, PathBuf, u64)>,
    areas: BTreeMap<Area, StagedArea>,
    /// Set when an entry of this package could not be taken; the package then fails.
    error: Option<String>,
    entries: u64,
    bytes: u64,
}

/// Stages the packages of one archive pass. Dropping it removes every staging directory.
pub struct Stager {
    root: PathBuf,
    id: String,
    /// Held while this run lives: recovery leaves the files of a locked run alone. Dropped
    /// after the staging is removed (fields drop after `Drop::drop`).
    _lock: swap::RunLock,
    wanted: Option<BTreeSet<String>>,
    apps: BTreeMap<String, StagedApp>,
    order: Vec<String>,
    warnings: Vec<String>,
    warned: BTreeSet<String>,
    available: u64,
    written: u64,
}

impl Stager {
    pub fn new(root: &Path, wanted: &[String]) -> Result<Stager> {
        let data = select::resolve(root, b"data", true).ctx(|| "resolving /data under the root".into())?.host;
        let available = sys::free_bytes(&data).ctx(|| format!("checking free space on {}", data.display()))?;
        let lock = swap::RunLock::take(&data)?;
        Ok(Stager {
            root: root.to_path_buf(),
            id: lock.id.clone(),
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

    /// The staging dir of a package's area, made on first use beside the area's target.
    fn area_dir(&mut self, pkg: &str, area: Area) -> Result<PathBuf> {
        if let Some(s) = self.apps.get(pkg).and_then(|a| a.areas.get(&area)) {
            return Ok(s.dir.clone());
        }
        let device = area.device_path(pkg);
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

// ---------------------------------------------------------------------------------------------
// Recover: acting on the phone

#[derive(Debug, Clone, Copy, Default)]
pub struct RecoverOptions {
    /// Install even when the app is for a newer Android or another ABI.
    pub force: bool,
}

/// What happened to one package: the `Apps` items of recover-app's result.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct AppOutcome {
    pub package: String,
    pub status: AppStatus,
    /// The step that failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub step: Option<RecoverStep>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub error: String,
    /// Whether the installed copy was uninstalled (a failure after it leaves no app).
    pub uninstalled: bool,
    pub version_code: i64,
    pub uid: Option<u32>,
    pub apks: Vec<String>,
    pub entries: u64,
    pub bytes: u64,
    /// `restorecon` or `chcon CONTEXT`, per restored area.
    pub relabel: Vec<String>,
    pub warnings: Vec<String>,
}

impl AppOutcome {
    pub fn ok(&self) -> bool {
        self.status == AppStatus::Recovered
    }
}

/// Whether a package was recovered (`RECOVERED`, `FAILED`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum AppStatus {
    Recovered,
    #[default]
    Failed,
}

impl fmt::Display for AppStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AppStatus::Recovered => "RECOVERED",
            AppStatus::Failed => "FAILED",
        })
    }
}

/// The steps of a package's recovery, in order (`read`, `check`, … in results).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RecoverStep {
    /// Its entries in the archive.
    Read,
    /// Does it suit this phone (SDK, ABIs).
    Check,
    /// `am force-stop`.
    Stop,
    /// `pm uninstall`, when pm refuses the archived APKs as an update.
    Uninstall,
    /// The install session.
    Install,
    /// Waiting for pm to list it and make its data dir.
    Wait,
    /// The staged data swapped in.
    Data,
    /// The fresh install's owner given to the staged data.
    Owner,
    /// SELinux labels.
    Relabel,
}

impl fmt::Display for RecoverStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RecoverStep::Read => "read",
            RecoverStep::Check => "check",
            RecoverStep::Stop => "stop",
            RecoverStep::Uninstall => "uninstall",
            RecoverStep::Install => "install",
            RecoverStep::Wait => "wait",
            RecoverStep::Data => "data",
            RecoverStep::Owner => "owner",
            RecoverStep::Relabel => "relabel",
        })
    }
}

/// A package named with `--app` that the archive does not hold.
pub fn not_in_archive(package: &str) -> AppOutcome {
    AppOutcome {
        package: package.to_string(),
        status: AppStatus::Failed,
        step: Some(RecoverStep::Read),
        error: format!("the archive holds no package {package}"),
        ..Default::default()
    }
}

/// Recover every staged package, in archive order. Call only once the archive is verified.
pub fn recover(stager: &mut Stager, device: &Device, opts: RecoverOptions) -> Vec<AppOutcome> {
    let mut out = Vec::new();
    let sdk = device.sdk().unwrap_or(0);
    let abis = device.abilist().unwrap_or_default();
    for pkg in stager.packages() {
        let Some(app) = stager.apps.get_mut(&pkg) else { continue };
        let mut o = AppOutcome { package: pkg.clone(), entries: app.entries, bytes: app.bytes, ..Default::default() };
        o.apks = app.apks.iter().map(|(n, _, _)| n.clone()).collect();
        if let Some(m) = &app.manifest {
            o.version_code = m.version_code;
        }
        let result = recover_one(&stager.root, &stager.id, &pkg, app, device, sdk, &abis, opts, &mut o);
        match result {
            Ok(()) => o.status = AppStatus::Recovered,
            Err((step, e)) => {
                tracing::error!("{pkg}: {step}: {e}");
                o.status = AppStatus::Failed;
                o.step = Some(step);
                o.error = e.to_string();
            }
        }
        out.push(o);
    }
    out
}

/// A recovery's result: on failure, the step that failed and why.
type StepResult<T> = std::result::Result<T, (RecoverStep, Error)>;

/// Tags a failure with the recovery step it happened in.
trait During<T> {
    fn during(self, step: RecoverStep) -> StepResult<T>;
}

impl<T> During<T> for Result<T> {
    fn during(self, step: RecoverStep) -> StepResult<T> {
        self.map_err(|e| (step, e))
    }
}

#[allow(clippy::too_many_arguments)]
fn recover_one(
    root: &Path,
    id: &str,
    pkg: &str,
    app: &mut StagedApp,
    device: &Device,
    sdk: u32,
    abis: &[String],
    opts: RecoverOptions,
    o: &mut AppOutcome,
) -> StepResult<()> {
    if let Some(e) = &app.error {
        return Err((RecoverStep::Read, Error::archive(format!("package {pkg}"), e.clone())));
    }
    let manifest = app
        .manifest
        .clone()
        .ok_or_else(|| (RecoverStep::Read, Error::archive(format!("package {pkg}"), "has no _manifest")))?;
    check_suits(pkg, &manifest, app, sdk, abis, opts.force).during(RecoverStep::Check)?;

    // Nothing has changed on the phone up to here.
    let installed = device.package(pkg).during(RecoverStep::Stop)?;
    if installed.is_some() {
        device.force_stop(pkg).during(RecoverStep::Stop)?;
    }
    // Replace the installed copy in place: pm keeps its data, which the swap below exchanges
    // in one rename. Only when pm refuses the update (another signing key, an older version)
    // does the installed copy go first, and its data with it: the one step that a kill before
    // the swap cannot undo.
    match install_staged(app, device) {
        Ok(()) => {}
        Err(e) if installed.is_some() && refused_as_update(&e) => {
            tracing::info!("{pkg}: pm refused the update ({e}); uninstalling the installed copy first");
            device.uninstall(pkg).during(RecoverStep::Uninstall)?;
            o.uninstalled = true;
            install_staged(app, device).during(RecoverStep::Install)?;
        }
        Err(e) => return Err((RecoverStep::Install, e)),
    }
    let ce = target_of(root, Area::Ce, pkg).during(RecoverStep::Wait)?;
    let listed = device.wait_installed(pkg, INSTALL_TIMEOUT, &|| ce.is_dir()).during(RecoverStep::Wait)?;
    o.version_code = listed.version_code;
    o.uid = listed.uid;
    let app_owner = Owner::of(&ce).during(RecoverStep::Owner)?;
    for (area, staged) in &app.areas {
        let relabel = swap_in(root, id, pkg, *area, staged, app_owner, device)?;
        o.relabel.push(match relabel {
            Relabel::Restorecon => format!("{}: restorecon", area.domain()),
            Relabel::Chcon(c) => format!("{}: chcon {c}", area.domain()),
            Relabel::Unlabelled(w) => {
                tracing::warn!("{pkg}: {w}");
                o.warnings.push(w);
                format!("{}: none", area.domain())
            }
        });
    }
    Ok(())
}

fn target_of(root: &Path, area: Area, pkg: &str) -> Result<PathBuf> {
    let device = area.device_path(pkg);
    Ok(select::resolve(root, device.as_bytes(), true).ctx(|| format!("resolving {device}"))?.host)
}

/// Does the app suit this phone? Not from a newer Android, and native code for one of its ABIs.
fn check_suits(pkg: &str, m: &AppManifest, app: &StagedApp, sdk: u32, abis: &[String], force: bool) -> Result<()> {
    if app.apks.first().map(|(n, _, _)| n.as_str()) != Some("base.apk") {
        return Err(Error::archive(
            format!("package {pkg}"),
            "holds no base.apk: cpbackup reinstalls apps and cannot restore data alone",
        ));
    }
    if sdk != 0 && m.sdk > sdk {
        let msg = format!("was backed up on Android SDK {} and this phone runs SDK {sdk}", m.sdk);
        if !force {
            return Err(Error::usage(format!("{pkg} {msg}; use --force to install it anyway")));
        }
        tracing::warn!("{pkg} {msg}; installing anyway (--force)");
    }
    let mut app_abis = BTreeSet::new();
    for (name, path, _) in &app.apks {
        let info = apk::inspect(path).map_err(|e| Error::archive(format!("{pkg}/{name}"), e.to_string()))?;
        app_abis.extend(info.abis);
    }
    if !app_abis.is_empty() && !abis.is_empty() && !app_abis.iter().any(|a| abis.contains(a)) {
        let msg = format!(
            "has native code for {} only, and this phone runs {}",
            app_abis.iter().cloned().collect::<Vec<_>>().join(", "),
            abis.join(", ")
        );
        if !force {
            return Err(Error::usage(format!("{pkg} {msg}; use --force to install it anyway")));
        }
        tracing::warn!("{pkg} {msg}; installing anyway (--force)");
    }
    Ok(())
}

/// Install the staged APKs in one pm session.
fn install_staged(app: &StagedApp, device: &Device) -> Result<()> {
    let mut files = Vec::new();
    for (name, path, size) in &app.apks {
        let f = File::open(path).ctx(|| format!("opening staged {}", path.display()))?;
        files.push((name.clone(), *size, f));
    }
    let mut apks: Vec<(String, u64, &mut dyn Read)> =
        files.iter_mut().map(|(n, s, f)| (n.clone(), *s, f as &mut dyn Read)).collect();
    device.install(&mut apks)
}

/// pm's answers that refuse an install as an update of the installed copy.
fn refused_as_update(e: &Error) -> bool {
    let Error::Device { output, .. } = e else { return false };
    ["INSTALL_FAILED_UPDATE_INCOMPATIBLE", "INSTALL_FAILED_VERSION_DOWNGRADE", "INSTALL_FAILED_ALREADY_EXISTS"]
        .iter()
        .any(|code| output.contains(code))
}

/// Put a staged tree in place of the fresh one, crash-safe (see `swap`): make it final first
/// (the fresh dir's mode and owner, its SELinux context with `chcon -R`), commit it under its
/// ready name, then set the fresh dir aside, keep what the install made and the archive does not
/// carry, rename the tree in, remove the aside, and relabel from the policy (`restorecon`).
/// A failure before the commit point leaves the target untouched (the `Stager` removes the
/// staging); one after it leaves names that `finish_interrupted` completes.
fn swap_in(
    root: &Path,
    id: &str,
    pkg: &str,
    area: Area,
    staged: &StagedArea,
    app_owner: Owner,
    device: &Device,
) -> StepResult<Relabel> {
    let target = &staged.target;
    let parent = target.parent().unwrap_or(root);
    let swap = swap::Swap::new(parent, id, pkg, area);
    // Recovery finds a swap by these names in the area's own directory.
    if swap.target != *target || swap::area_parent(root, area).as_deref() != Some(parent) {
        return Err((
            RecoverStep::Data,
            swap::unexpected(target, "is not the package's own directory in its area (a symlink?)"),
        ));
    }
    let fresh = match fs::symlink_metadata(target) {
        Ok(m) if m.is_dir() => Some(m),
        Ok(_) => return Err((RecoverStep::Data, swap::unexpected(target, "is not a directory"))),
        Err(_) => None,
    };
    // Owner, mode and label come from the fresh dir; an external dir that does not exist yet
    // takes the app's uid and its parent's group and label.
    let (owner, mode, context) = match &fresh {
        Some(m) => {
            let owner = if area.is_data_dir() {
                Owner::of(target).during(RecoverStep::Owner)?
            } else {
                Owner { uid: m.uid(), gid: m.gid(), cache_gid: m.gid() }
            };
            (owner, m.mode() & 0o7777, selinux::context_of(target))
        }
        None => {
            let pm = fs::metadata(parent).ctx(|| format!("reading {}", parent.display())).during(RecoverStep::Owner)?;
            let owner = if area.is_data_dir() {
                app_owner
            } else {
                Owner { uid: app_owner.uid, gid: pm.gid(), cache_gid: pm.gid() }
            };
            (owner, if area.is_data_dir() { 0o700 } else { 0o770 }, selinux::context_of(parent))
        }
    };

    // The staged tree made final, so that it is right even if nothing after the commit runs.
    let dir = &staged.dir;
    swap::crash_point().during(RecoverStep::Owner)?;
    fs::set_permissions(dir, fs::Permissions::from_mode(mode))
        .ctx(|| format!("chmod {}", dir.display()))
        .during(RecoverStep::Owner)?;
    swap::crash_point().during(RecoverStep::Owner)?;
    owner::chown_tree(dir, owner, area.is_data_dir()).during(RecoverStep::Owner)?;
    match &context {
        Some(ctx) => {
            swap::crash_point().during(RecoverStep::Relabel)?;
            device.chcon(ctx, &dir.to_string_lossy()).during(RecoverStep::Relabel)?;
        }
        None => tracing::debug!("{}: no SELinux context to copy; labelled after the swap only", target.display()),
    }
    swap.commit(dir).during(RecoverStep::Data)?;

    // Past the commit point: the swap is finished from here, now or by the next recovery.
    if let Err(e) = swap.settle() {
        tracing::error!(
            "{pkg}: the recovered data is committed but not yet in place ({e}); the next recover-app or `cpbackup cleanup --root` finishes it"
        );
        return Err((RecoverStep::Data, e));
    }
    if !area.is_data_dir() {
        if let Some(ctx) = context {
            // External storage takes the copied context (restorecon gives the wrong type):
            // already applied before the commit.
            return Ok(Relabel::Chcon(ctx));
        }
    }
    swap::crash_point().during(RecoverStep::Relabel)?;
    selinux::relabel(device, target, context.as_deref(), !area.is_data_dir()).during(RecoverStep::Relabel)
}

#[cfg(test)]
mod tests {
    use super::*;

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

    /// Results carry status and step as the words they always had, and the messages say the
    /// same words.
    #[test]
    fn outcomes_serialize_their_status_and_step_as_words() {
        let failed = serde_json::to_value(not_in_archive("com.a")).unwrap();
        assert_eq!((failed["Status"].as_str(), failed["Step"].as_str()), (Some("FAILED"), Some("read")));
        let ok = AppOutcome { status: AppStatus::Recovered, ..Default::default() };
        let ok = serde_json::to_value(ok).unwrap();
        assert_eq!(ok["Status"], "RECOVERED");
        assert!(ok.get("Step").is_none() && ok.get("Error").is_none(), "{ok}");
        use RecoverStep::*;
        for step in [Read, Check, Stop, Uninstall, Install, Wait, Data, Owner, Relabel] {
            assert_eq!(serde_json::to_value(step).unwrap(), step.to_string());
        }
        assert_eq!(serde_json::to_value(AppStatus::Failed).unwrap(), AppStatus::Failed.to_string());
    }

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
}
