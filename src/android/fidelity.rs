//! Bringing an app back as it was, beyond its files: at backup, `observe` asks the phone for
//! what the install will not carry (runtime permissions, app ops, what each APK needs, Keystore
//! keys) and makes the `AppDetails`; at restore, `fit` checks the APKs against this phone
//! before anything is installed, and `apply` grants, flags and sets what the details hold once
//! the app is installed and its data swapped in.
//!
//! Nothing here fails an app for what it could not read or apply: each such thing becomes a
//! warning that names it (only an APK whose native code fits none of the phone's ABIs stops an
//! install, through `fit`). It never revokes a permission and never acts on another package.

use std::path::{Path, PathBuf};

use super::apk;
use super::details::{restore_steps, AppDetails, Step};
use super::device::Device;
use super::keystore;
use super::perms;
use super::splits::{self, Fit, Phone, SplitNeeds};
use crate::error::{Error, Result};

/// The warning for an app that holds Keystore keys, at backup and at restore.
pub fn keystore_warning(package: &str) -> String {
    format!(
        "{package} holds keys in the Android Keystore, which stay on the phone they were made on: \
         after a restore it may need a new sign-in, or its data cleared if it cannot open what it encrypted"
    )
}

/// What the phone says about `package` in `user` (uid `uid`, when pm told it), and the warnings
/// for what it could not tell. `apks` are the APKs as backed up: (name in the archive, host path).
pub fn observe(
    device: &Device,
    root: &Path,
    package: &str,
    user: u32,
    uid: Option<u32>,
    version_code: i64,
    apks: &[(String, PathBuf)],
) -> (AppDetails, Vec<String>) {
    let mut warnings = Vec::new();
    let permissions = match device.dumpsys_package(package) {
        Ok(text) => AppDetails::granted(&perms::parse_runtime_permissions(&text, package, user)),
        Err(e) => {
            warnings.push(format!("{package}: its runtime permissions are not recorded: {e}"));
            Vec::new()
        }
    };
    let app_ops = match device.app_ops(package, user, uid.unwrap_or(user * 100_000)) {
        Ok((uid_ops, package_ops)) => AppDetails::set_ops(&uid_ops, &package_ops),
        Err(e) => {
            warnings.push(format!("{package}: its app ops are not recorded: {e}"));
            Vec::new()
        }
    };
    let mut needs = Vec::new();
    for (name, path) in apks {
        match apk::inspect(path) {
            Ok(info) => needs.push(splits::needs(name, &info.abis)),
            Err(e) => {
                warnings.push(format!("{package}: what {name} needs from a phone is not recorded: {e}"));
                needs.push(splits::needs(name, &[]));
            }
        }
    }
    let keys = match uid {
        Some(uid) => keystore::app_keys(root, user, uid),
        None => Err(Error::Device {
            command: format!("pm list packages --user {user} -U {package}"),
            output: "no uid listed".into(),
        }),
    };
    let keystore_bound = match keys {
        Ok(keys) if keys.total() > 0 => {
            warnings.push(keystore_warning(package));
            true
        }
        Ok(_) => false,
        Err(e) => {
            warnings.push(format!("{package}: could not tell whether it holds Android Keystore keys: {e}"));
            false
        }
    };
    let details = AppDetails {
        package: package.to_string(),
        version_code,
        user,
        splits: needs,
        permissions,
        app_ops,
        keystore_bound,
    };
    (details, warnings)
}

/// The phone as `splits::check` sees it: `ro.product.cpu.abilist`, `ro.sf.lcd_density`, and the
/// language of `persist.sys.locale` (else `ro.product.locale`). What cannot be read is unknown
/// and checks nothing.
pub fn phone(device: &Device) -> Phone {
    let prop = |k: &str| device.getprop(k).unwrap_or_default();
    let mut language = splits::locale_language(&prop("persist.sys.locale"));
    if language.is_none() {
        language = splits::locale_language(&prop("ro.product.locale"));
    }
    Phone {
        abilist: device.abilist().unwrap_or_default(),
        density: prop("ro.sf.lcd_density").trim().parse().unwrap_or(0),
        language,
    }
}

/// Check staged APKs (name, host path) against the phone. The ABIs come from the APKs
/// themselves (`lib/ABI/`) and their names; an APK that cannot be read is an error.
pub fn fit(apks: &[(String, PathBuf)], phone: &Phone) -> Result<Fit> {
    let mut needs: Vec<SplitNeeds> = Vec::new();
    for (name, path) in apks {
        needs.push(splits::needs(name, &apk::inspect(path)?.abis));
    }
    Ok(splits::check(&needs, phone))
}

/// Apply `details` to `package` in `user`, after its install and data swap: grant each
/// permission, set the user's flags on them, set each app op. Returns a warning for each thing
/// not applied, and for a Keystore-bound app. Read back afterwards: a grant pm accepted but did
/// not make (a hard-restricted permission is refused that way) is reported too.
pub fn apply(device: &Device, package: &str, user: u32, details: &AppDetails) -> Vec<String> {
    let (steps, mut warnings) = restore_steps(details, package);
    let mut flags_unsupported = false;
    let mut granted = Vec::new();
    for step in &steps {
        if flags_unsupported && matches!(step, Step::Flags { .. }) {
            continue;
        }
        match device.apply(step, package, user) {
            Ok(()) => {
                if let Step::Grant { permission } = step {
                    granted.push(permission.clone());
                }
            }
            Err(e) if matches!(step, Step::Flags { .. }) && unknown_command(&e.to_string()) => {
                flags_unsupported = true;
                warnings.push(format!(
                    "this phone's pm has no set-permission-flags: the user's choices (user-set, user-fixed) on {package}'s permissions are not restored ({e})"
                ));
            }
            Err(e) => warnings.push(format!("{} for {package} failed: {e}", step.describe())),
        }
    }
    if !granted.is_empty() {
        match device.dumpsys_package(package) {
            Ok(text) => {
                let now = perms::parse_runtime_permissions(&text, package, user);
                for p in granted {
                    if !now.iter().any(|n| n.name == p && n.granted) {
                        warnings.push(format!(
                            "{p} was not granted to {package} on this phone (pm accepted it, but it is restricted here or not a runtime permission)"
                        ));
                    }
                }
            }
            Err(e) => warnings.push(format!("could not read back {package}'s permissions: {e}")),
        }
    }
    if details.keystore_bound && details.package == package {
        warnings.push(keystore_warning(package));
    }
    warnings
}

/// pm's words for a command it does not have.
fn unknown_command(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    m.contains("unknown command") || m.contains("unknown option")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::android::details::{AppOpSetting, GrantedPermission};
    use crate::android::device::CommandLine;
    use crate::android::perms::OpMode;
    use crate::error::Error;
    use std::cell::RefCell;
    use std::io::Read;

    /// A phone's command line: `pm grant` records grants that `dumpsys` then shows, except for
    /// `refuse` (accepted and not made, like a hard-restricted permission); an old pm without
    /// set-permission-flags when `old_pm`.
    struct FakePhone {
        granted: RefCell<Vec<String>>,
        refuse: &'static str,
        old_pm: bool,
        calls: RefCell<Vec<String>>,
    }

    impl CommandLine for FakePhone {
        fn run(&self, program: &str, args: &[&str], _stdin: Option<&mut dyn Read>) -> Result<String> {
            let cmd = format!("{program} {}", args.join(" "));
            self.calls.borrow_mut().push(cmd.clone());
            match (program, args.first().copied()) {
                ("pm", Some("grant")) => {
                    let perm = args[args.len() - 1].to_string();
                    if perm == "android.permission.UNKNOWN" {
                        return Err(Error::Device {
                            command: cmd,
                            output: "java.lang.IllegalArgumentException: Unknown permission: android.permission.UNKNOWN (exit code 255)".into(),
                        });
                    }
                    if perm != self.refuse {
                        self.granted.borrow_mut().push(perm);
                    }
                    Ok(String::new())
                }
                ("pm", Some("set-permission-flags")) if self.old_pm => Err(Error::Device {
                    command: cmd,
                    output: "Unknown command: set-permission-flags (exit code 255)".into(),
                }),
                ("dumpsys", _) => {
                    let mut s =
                        "Packages:\n  Package [a.b] (1):\n    User 10: ceDataInode=1\n      runtime permissions:\n"
                            .to_string();
                    for p in self.granted.borrow().iter() {
                        s.push_str(&format!("        {p}: granted=true\n"));
                    }
                    Ok(s)
                }
                _ => Ok(String::new()),
            }
        }
    }

    fn details() -> AppDetails {
        let perm = |n: &str| GrantedPermission { name: n.into(), user_set: true, user_fixed: false };
        AppDetails {
            package: "a.b".into(),
            permissions: vec![
                perm("android.permission.CAMERA"),
                perm("android.permission.READ_SMS"),
                perm("android.permission.UNKNOWN"),
            ],
            app_ops: vec![AppOpSetting { op: "SYSTEM_ALERT_WINDOW".into(), mode: OpMode::Allow, uid: false }],
            keystore_bound: true,
            ..Default::default()
        }
    }

    #[test]
    fn applied_and_what_was_not_is_reported() {
        let phone = FakePhone {
            granted: RefCell::new(Vec::new()),
            refuse: "android.permission.READ_SMS",
            old_pm: true,
            calls: RefCell::new(Vec::new()),
        };
        let warnings = apply(&Device::new(&phone), "a.b", 10, &details());
        let calls = phone.calls.borrow();
        assert_eq!(calls.iter().filter(|c| c.starts_with("pm set-permission-flags")).count(), 1, "{calls:?}");
        assert!(calls.contains(&"appops set --user 10 a.b SYSTEM_ALERT_WINDOW allow".to_string()), "{calls:?}");
        assert!(!calls.iter().any(|c| c.contains("revoke")));
        let all = warnings.join("\n");
        assert_eq!(warnings.len(), 4, "{all}");
        assert!(
            all.contains("granting android.permission.UNKNOWN for a.b failed") && all.contains("Unknown permission")
        );
        assert!(all.contains("no set-permission-flags"));
        assert!(all.contains("android.permission.READ_SMS was not granted"));
        assert!(!all.contains("CAMERA was not granted"), "{all}");
        assert!(all.contains("Android Keystore"));
    }

    #[test]
    fn an_unreadable_apk_does_not_fit() {
        let tmp = tempfile::tempdir().unwrap();
        let bogus = tmp.path().join("base.apk");
        std::fs::write(&bogus, b"not a zip").unwrap();
        assert!(fit(&[("base.apk".into(), bogus)], &Phone::default()).is_err());
    }
}
