//! App backups: each package resolved through `pm` (`AppSource`: its APKs, signatures, data
//! areas and their size), then written as Android's `FullBackupEngine` orders it —
//! `apps/PKG/_manifest` (mtime 0), `apps/PKG/a/base.apk`, the split APKs as further
//! `a/split_*.apk` entries (Android's reader has promoted the package to ACCEPT after installing
//! base.apk and skips later `a/` entries, so `adb restore` still works; cpbackup installs them
//! all), then `cpbackup/details.json` (the app's `AppDetails`: permissions, app ops, what each
//! APK needs, Keystore keys; a domain Android's restore drops), then the data domains `r/`,
//! `d_r/`, `ef/`, in Android's tar flavour. Everything is of one Android user (`--user N`).
//!
//! It never follows a link in an app's data (an app's tree is walked relative to each
//! directory, `sys::walk`), and never archives an APK that changed while it was read.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::android::apk;
use crate::android::details::{AppDetails, DETAILS_DOMAIN, DETAILS_NAME};
use crate::android::device::Device;
use crate::android::fidelity;
use crate::android::pm;
use crate::archive::disk::{self, HardLinks, Put};
use crate::archive::write::TarWriter;
use crate::archive::{self, Meta};
use crate::error::{Error, IoContext, Result};
use crate::select;
use crate::sys::walk::{Step, Walk};
use crate::sys::Stat;

use super::{Area, MANIFEST_VERSION};

/// Names left out at the top of a data dir: native libs (a symlink), code cache, no-backup.
const ALWAYS_EXCLUDED: [&str; 3] = ["lib", "code_cache", "no_backup"];

#[derive(Debug, Clone, Copy)]
pub struct BackupOptions {
    /// `am force-stop` each app before its data is read.
    pub stop: bool,
    /// Keep `cache` (left out with `--no-cache`).
    pub cache: bool,
    /// The Android user whose copy of the apps is backed up (`--user N`).
    pub user: u32,
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
    /// What the install does not carry (archived as `cpbackup/details.json`, and listed in the
    /// backup's manifest).
    pub details: AppDetails,
    /// What could not be recorded, and the Keystore warning of an app that holds keys.
    pub warnings: Vec<String>,
}

/// Ask pm about `package` and find its APKs and data under `root`, for the user `device` acts
/// for (`opts.user`), and observe what its install does not carry (`fidelity::observe`).
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
        let path = area.device_path(package, opts.user);
        let host = select::resolve(root, path.as_bytes(), true).ctx(|| format!("resolving {path}"))?.host;
        if fs::symlink_metadata(&host).map(|m| m.is_dir()).unwrap_or(false) {
            areas.push((area, host));
        }
    }
    let (details, warnings) =
        fidelity::observe(device, root, package, opts.user, listed.uid, listed.version_code, &apks);
    let mut app = AppSource {
        package: package.to_string(),
        version_code: listed.version_code,
        installer: device.installer(package),
        apks,
        signatures,
        areas,
        bytes: 0,
        details,
        warnings,
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

/// Write one app into the tar: `_manifest`, APKs, details, data. `warn` receives what was skipped.
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
    // After the APKs (Android installs from the first `a/` entry) and before the data.
    let details = app.details.to_json();
    let m = Meta {
        path: format!("{prefix}/{DETAILS_DOMAIN}/{DETAILS_NAME}").into_bytes(),
        mode: 0o600,
        mtime: 0,
        ..Default::default()
    };
    tar.append_file(&m, details.len() as u64, &mut &details[..])
        .map_err(|e| Error::Io { context: "writing the app details into the archive".into(), source: e })?;
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
