//! Recovering staged apps on the phone, per package and only once the archive is verified:
//! check the app suits this phone (its SDK, each APK's ABIs, density and language), stop it,
//! install every APK in one session (uninstalling the installed copy first only when pm refuses
//! the update), wait for pm, swap each staged tree in (`swap`) with the fresh install's owner
//! and SELinux label, then apply the archived `AppDetails` (grants, the user's flags, app ops:
//! `fidelity::apply`). All of it in one Android user (`Stager::user`, pm/am/appops `--user N`).
//! A package that fails does not stop the others; each ends in an `AppOutcome` naming the step
//! that failed, and what was not applied is a warning in it.
//!
//! It never restores an archived owner or label, never leaves a data dir half old and half
//! new, and never revokes a permission.

use std::fmt;
use std::fs::{self, File};
use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

use crate::android::device::Device;
use crate::android::fidelity;
use crate::android::owner::{self, Owner};
use crate::android::selinux::{self, Relabel};
use crate::android::splits::Phone;
use crate::error::{Error, IoContext, Result};
use crate::select;

use super::stage::{AppManifest, StagedApp, StagedArea, Stager};
use super::{swap, Area};

const INSTALL_TIMEOUT: Duration = Duration::from_secs(120);

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
    let phone = fidelity::phone(device);
    let (root, id, user) = (stager.root.clone(), stager.id.clone(), stager.user);
    for pkg in stager.packages() {
        let Some(app) = stager.apps.get_mut(&pkg) else { continue };
        let mut o = AppOutcome { package: pkg.clone(), entries: app.entries, bytes: app.bytes, ..Default::default() };
        o.apks = app.apks.iter().map(|(n, _, _)| n.clone()).collect();
        if let Some(m) = &app.manifest {
            o.version_code = m.version_code;
        }
        let target = Target { root: &root, id: &id, user };
        let result = recover_one(target, &pkg, app, device, sdk, &phone, opts, &mut o);
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

/// Where a recovery puts things: the phone's root, the run's id, the Android user.
#[derive(Clone, Copy)]
pub(super) struct Target<'a> {
    pub(super) root: &'a Path,
    pub(super) id: &'a str,
    pub(super) user: u32,
}

#[allow(clippy::too_many_arguments)]
fn recover_one(
    t: Target,
    pkg: &str,
    app: &mut StagedApp,
    device: &Device,
    sdk: u32,
    phone: &Phone,
    opts: RecoverOptions,
    o: &mut AppOutcome,
) -> StepResult<()> {
    let root = t.root;
    if let Some(e) = &app.error {
        return Err((RecoverStep::Read, Error::archive(format!("package {pkg}"), e.clone())));
    }
    let manifest = app
        .manifest
        .clone()
        .ok_or_else(|| (RecoverStep::Read, Error::archive(format!("package {pkg}"), "has no _manifest")))?;
    o.warnings.extend(check_suits(pkg, &manifest, app, sdk, phone, opts.force).during(RecoverStep::Check)?);

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
    let ce = target_of(root, Area::Ce, pkg, t.user).during(RecoverStep::Wait)?;
    let listed = device.wait_installed(pkg, INSTALL_TIMEOUT, &|| ce.is_dir()).during(RecoverStep::Wait)?;
    o.version_code = listed.version_code;
    o.uid = listed.uid;
    let app_owner = Owner::of(&ce).during(RecoverStep::Owner)?;
    for (area, staged) in &app.areas {
        let relabel = swap_in(t, pkg, *area, staged, app_owner, device)?;
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
    // The app is installed and has its data: what the install did not carry comes back now.
    // Nothing here fails the app; what is not applied is a warning.
    if let Some(w) = &app.details_warning {
        o.warnings.push(w.clone());
    }
    if let Some(details) = &app.details {
        for w in fidelity::apply(device, pkg, t.user, details) {
            tracing::warn!("{pkg}: {w}");
            o.warnings.push(w);
        }
    }
    Ok(())
}

fn target_of(root: &Path, area: Area, pkg: &str, user: u32) -> Result<PathBuf> {
    let device = area.device_path(pkg, user);
    Ok(select::resolve(root, device.as_bytes(), true).ctx(|| format!("resolving {device}"))?.host)
}

/// Does the app suit this phone? Not from a newer Android, and every APK with native code has
/// it for one of the phone's ABIs (`--force` installs anyway). Returns the warnings: density
/// and language splits that do not suit the phone.
fn check_suits(
    pkg: &str,
    m: &AppManifest,
    app: &StagedApp,
    sdk: u32,
    phone: &Phone,
    force: bool,
) -> Result<Vec<String>> {
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
    let apks: Vec<(String, PathBuf)> = app.apks.iter().map(|(n, p, _)| (n.clone(), p.clone())).collect();
    let fit = fidelity::fit(&apks, phone).map_err(|e| Error::archive(format!("package {pkg}"), e.to_string()))?;
    if !fit.errors.is_empty() {
        let msg = fit.errors.join("; ");
        if !force {
            return Err(Error::usage(format!("{pkg}: {msg}; use --force to install it anyway")));
        }
        tracing::warn!("{pkg}: {msg}; installing anyway (--force)");
    }
    for w in &fit.warnings {
        tracing::warn!("{pkg}: {w}");
    }
    Ok(fit.warnings)
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
pub(super) fn swap_in(
    t: Target,
    pkg: &str,
    area: Area,
    staged: &StagedArea,
    app_owner: Owner,
    device: &Device,
) -> StepResult<Relabel> {
    let target = &staged.target;
    let parent = target.parent().unwrap_or(t.root);
    let swap = swap::Swap::new(parent, t.id, pkg, area);
    // Recovery finds a swap by these names in the area's own directory.
    if swap.target != *target || swap::area_parent(t.root, area, t.user).as_deref() != Some(parent) {
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
}
