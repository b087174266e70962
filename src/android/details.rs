//! `AppDetails`: what an app's install does not carry and a backup records beside its data —
//! the runtime permissions the user granted (with the user-set / user-fixed flags), the app ops
//! set away from their defaults (per package and per uid), what each APK needs from a phone,
//! and whether the app holds Android Keystore keys (which no backup can move). The manifest
//! lists it beside `SourceAppInfoList`; the `.ab` carries it as `apps/PKG/cpbackup/details.json`
//! (see `DETAILS_ENTRY`).
//!
//! Read back from an archive it is hostile input: `from_json` bounds it, and `restore_steps`
//! turns it into argument vectors that can only grant permissions, set flags and set app ops of
//! the package being restored, each name having passed Android's form. It never revokes
//! anything and never names another package.

use serde::{Deserialize, Serialize};

use super::perms::{self, OpLine, OpMode, RuntimePermission};
use super::splits::SplitNeeds;
use crate::error::{Error, Result};

/// The domain and name of the details entry in an `.ab`: `apps/PKG/cpbackup/details.json`.
/// Android's `FullRestoreEngine` passes an entry of an unknown domain to the app's backup
/// agent, whose `onRestoreFile` logs "Unrecognized domain" and drops it, so `adb restore`
/// reads past it. It comes after the APKs (Android wants `a/` first when it installs the APK).
pub const DETAILS_DOMAIN: &str = "cpbackup";
pub const DETAILS_NAME: &str = "details.json";
/// Largest details entry read back (a real one is a few KiB).
pub const MAX_DETAILS: u64 = 1024 * 1024;
/// At most this many permissions, ops and splits are taken from an archive.
pub const MAX_ITEMS: usize = 4096;

/// A runtime permission that was granted, and the user's flags on it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct GrantedPermission {
    pub name: String,
    /// `USER_SET`: the user chose (rather than a default or a policy).
    pub user_set: bool,
    /// `USER_FIXED`: the user said "don't ask again".
    pub user_fixed: bool,
}

/// An app op whose mode was set away from the default.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct AppOpSetting {
    pub op: String,
    pub mode: OpMode,
    /// Set on the app's uid (`appops set --uid`) rather than on the package.
    #[serde(default)]
    pub uid: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct AppDetails {
    pub package: String,
    pub version_code: i64,
    /// The Android user the app was backed up from.
    pub user: u32,
    /// Every APK of the app and what it needs from a phone.
    pub splits: Vec<SplitNeeds>,
    /// Runtime permissions granted at backup.
    pub permissions: Vec<GrantedPermission>,
    /// App ops set away from their defaults at backup.
    pub app_ops: Vec<AppOpSetting>,
    /// The app held keys in the Android Keystore: its data may need a new sign-in after a
    /// restore, since no backup can carry those keys.
    pub keystore_bound: bool,
}

impl AppDetails {
    /// The granted runtime permissions and their user flags (a permission never granted needs
    /// nothing restored).
    pub fn granted(runtime: &[RuntimePermission]) -> Vec<GrantedPermission> {
        runtime
            .iter()
            .filter(|p| p.granted)
            .map(|p| GrantedPermission {
                name: p.name.clone(),
                user_set: p.has_flag("USER_SET"),
                user_fixed: p.has_flag("USER_FIXED"),
            })
            .collect()
    }

    /// The app ops not at `default`, the uid's first.
    pub fn set_ops(uid_ops: &[OpLine], package_ops: &[OpLine]) -> Vec<AppOpSetting> {
        let tagged = uid_ops.iter().map(|o| (o, true)).chain(package_ops.iter().map(|o| (o, false)));
        tagged
            .filter(|(o, _)| o.mode != OpMode::Default)
            .map(|(o, uid)| AppOpSetting { op: o.name.clone(), mode: o.mode, uid })
            .collect()
    }

    pub fn to_json(&self) -> Vec<u8> {
        // A struct of plain fields always serialises.
        serde_json::to_vec_pretty(self).unwrap_or_default()
    }

    /// Read a details entry from an archive: at most `MAX_DETAILS` bytes of JSON of this shape
    /// with at most `MAX_ITEMS` of each list. Names are checked later, one by one, in
    /// `restore_steps`, so that one bad name costs only itself.
    pub fn from_json(bytes: &[u8]) -> Result<AppDetails> {
        let bad = |why: String| Error::archive("app details", why);
        if bytes.len() as u64 > MAX_DETAILS {
            return Err(bad(format!("{} bytes, more than the {MAX_DETAILS} allowed", bytes.len())));
        }
        let d: AppDetails = serde_json::from_slice(bytes).map_err(|e| bad(format!("is not valid: {e}")))?;
        if d.splits.len() > MAX_ITEMS || d.permissions.len() > MAX_ITEMS || d.app_ops.len() > MAX_ITEMS {
            return Err(bad(format!("lists more than {MAX_ITEMS} splits, permissions or app ops")));
        }
        Ok(d)
    }
}

/// One thing to do on the phone after an app's install and data swap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// `pm grant --user N PKG PERM`.
    Grant { permission: String },
    /// `pm set-permission-flags --user N PKG PERM user-set [user-fixed]`.
    Flags { permission: String, flags: Vec<&'static str> },
    /// `appops set --user N [--uid] PKG OP MODE`.
    Op { op: String, mode: OpMode, uid: bool },
}

impl Step {
    /// The program and argument vector for `package` in `user`.
    pub fn argv(&self, package: &str, user: u32) -> (&'static str, Vec<String>) {
        let user = user.to_string();
        let mut args: Vec<String> = Vec::new();
        let program = match self {
            Step::Grant { permission } => {
                args.extend(["grant".into(), "--user".into(), user, package.into(), permission.clone()]);
                "pm"
            }
            Step::Flags { permission, flags } => {
                args.extend(["set-permission-flags".into(), "--user".into(), user, package.into(), permission.clone()]);
                args.extend(flags.iter().map(|f| f.to_string()));
                "pm"
            }
            Step::Op { op, mode, uid } => {
                args.extend(["set".into(), "--user".into(), user]);
                if *uid {
                    args.push("--uid".into());
                }
                args.extend([package.into(), op.clone(), mode.as_str().into()]);
                "appops"
            }
        };
        (program, args)
    }

    /// What the step does, for warnings.
    pub fn describe(&self) -> String {
        match self {
            Step::Grant { permission } => format!("granting {permission}"),
            Step::Flags { permission, flags } => format!("marking {permission} {}", flags.join(" ")),
            Step::Op { op, mode, uid } => {
                format!("setting app op {op} to {}{}", mode.as_str(), if *uid { " for the uid" } else { "" })
            }
        }
    }
}

/// The steps that bring `details` back for `package` (the package being restored, whatever
/// the details say), and a warning for each archived value refused: details of another
/// package, a permission or op name not of Android's form. Grants come first, then flags,
/// then uid ops, then package ops.
pub fn restore_steps(details: &AppDetails, package: &str) -> (Vec<Step>, Vec<String>) {
    let mut warnings = Vec::new();
    if details.package != package {
        warnings.push(format!(
            "the archived app details name package {:?}, not {package}: permissions and app ops not restored",
            details.package
        ));
        return (Vec::new(), warnings);
    }
    let mut steps = Vec::new();
    let mut flags = Vec::new();
    for p in details.permissions.iter().take(MAX_ITEMS) {
        if let Err(e) = perms::check_name("permission", &p.name) {
            warnings.push(format!("refused an archived permission: {e}"));
            continue;
        }
        steps.push(Step::Grant { permission: p.name.clone() });
        let mut f = Vec::new();
        if p.user_set {
            f.push("user-set");
        }
        if p.user_fixed {
            f.push("user-fixed");
        }
        if !f.is_empty() {
            flags.push(Step::Flags { permission: p.name.clone(), flags: f });
        }
    }
    steps.extend(flags);
    let mut ops: Vec<&AppOpSetting> = details.app_ops.iter().take(MAX_ITEMS).collect();
    ops.sort_by_key(|o| !o.uid);
    for o in ops {
        if let Err(e) = perms::check_name("app op", &o.op) {
            warnings.push(format!("refused an archived app op: {e}"));
            continue;
        }
        steps.push(Step::Op { op: o.op.clone(), mode: o.mode, uid: o.uid });
    }
    (steps, warnings)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::android::splits;

    fn sample() -> AppDetails {
        let runtime = perms::parse_runtime_permissions(
            "Packages:\n  Package [com.example.chat] (1):\n    User 0: ceDataInode=1\n      runtime permissions:\n        \
             android.permission.CAMERA: granted=true, flags=[ USER_SET|USER_SENSITIVE_WHEN_GRANTED]\n        \
             android.permission.RECORD_AUDIO: granted=true, flags=[ USER_SET|USER_FIXED]\n        \
             android.permission.READ_CONTACTS: granted=false, flags=[ USER_SET|USER_FIXED]\n        \
             android.permission.POST_NOTIFICATIONS: granted=true\n",
            "com.example.chat",
            0,
        );
        let listing = perms::parse_appops(
            "Uid mode: RUN_ANY_IN_BACKGROUND: ignore\nSYSTEM_ALERT_WINDOW: allow; time=+1m ago\n\
             MANAGE_EXTERNAL_STORAGE: default\nRUN_IN_BACKGROUND: ignore\n",
        );
        let (uid_ops, pkg_ops) =
            perms::split_uid_ops(&listing, &perms::parse_appops("Uid mode: RUN_ANY_IN_BACKGROUND: ignore\n"));
        AppDetails {
            package: "com.example.chat".into(),
            version_code: 4101,
            user: 0,
            splits: vec![splits::needs("base.apk", &[]), splits::needs("split_config.xxhdpi.apk", &[])],
            permissions: AppDetails::granted(&runtime),
            app_ops: AppDetails::set_ops(&uid_ops, &pkg_ops),
            keystore_bound: true,
        }
    }

    #[test]
    fn collected_and_round_tripped() {
        let d = sample();
        let names: Vec<_> = d.permissions.iter().map(|p| (p.name.as_str(), p.user_set, p.user_fixed)).collect();
        assert_eq!(
            names,
            vec![
                ("android.permission.CAMERA", true, false),
                ("android.permission.RECORD_AUDIO", true, true),
                ("android.permission.POST_NOTIFICATIONS", false, false),
            ]
        );
        let ops: Vec<_> = d.app_ops.iter().map(|o| (o.op.as_str(), o.mode, o.uid)).collect();
        assert_eq!(
            ops,
            vec![
                ("RUN_ANY_IN_BACKGROUND", OpMode::Ignore, true),
                ("SYSTEM_ALERT_WINDOW", OpMode::Allow, false),
                ("RUN_IN_BACKGROUND", OpMode::Ignore, false),
            ]
        );
        let json = d.to_json();
        let v: serde_json::Value = serde_json::from_slice(&json).unwrap();
        assert_eq!(v["KeystoreBound"], true);
        assert_eq!(v["VersionCode"], 4101);
        assert_eq!(v["Permissions"][1]["UserFixed"], true);
        assert_eq!(v["AppOps"][0]["Mode"], "ignore");
        assert_eq!(v["AppOps"][0]["Uid"], true);
        assert_eq!(v["Splits"][1]["Density"], "xxhdpi");
        assert_eq!(AppDetails::from_json(&json).unwrap(), d);
    }

    #[test]
    fn steps_and_argument_vectors() {
        let d = sample();
        let (steps, warnings) = restore_steps(&d, "com.example.chat");
        assert!(warnings.is_empty(), "{warnings:?}");
        let lines: Vec<String> = steps
            .iter()
            .map(|s| {
                let (p, a) = s.argv("com.example.chat", 10);
                format!("{p} {}", a.join(" "))
            })
            .collect();
        assert_eq!(
            lines,
            vec![
                "pm grant --user 10 com.example.chat android.permission.CAMERA",
                "pm grant --user 10 com.example.chat android.permission.RECORD_AUDIO",
                "pm grant --user 10 com.example.chat android.permission.POST_NOTIFICATIONS",
                "pm set-permission-flags --user 10 com.example.chat android.permission.CAMERA user-set",
                "pm set-permission-flags --user 10 com.example.chat android.permission.RECORD_AUDIO user-set user-fixed",
                "appops set --user 10 --uid com.example.chat RUN_ANY_IN_BACKGROUND ignore",
                "appops set --user 10 com.example.chat SYSTEM_ALERT_WINDOW allow",
                "appops set --user 10 com.example.chat RUN_IN_BACKGROUND ignore",
            ]
        );
        assert_eq!(steps[0].describe(), "granting android.permission.CAMERA");
    }

    #[test]
    fn hostile_details() {
        let mut d = sample();
        d.permissions.push(GrantedPermission { name: "--user".into(), user_set: true, user_fixed: false });
        d.permissions.push(GrantedPermission { name: "a b;reboot".into(), ..Default::default() });
        d.app_ops.push(AppOpSetting { op: "42".into(), mode: OpMode::Allow, uid: false });
        let (steps, warnings) = restore_steps(&d, "com.example.chat");
        assert_eq!(warnings.len(), 3, "{warnings:?}");
        assert!(warnings[0].contains("\"--user\""));
        for s in &steps {
            let (_, args) = s.argv("com.example.chat", 0);
            assert!(!args.iter().any(|a| a == "a b;reboot" || a == "42"));
            assert_eq!(args.iter().filter(|a| *a == "--user").count(), 1, "{args:?}");
            assert!(args.contains(&"com.example.chat".to_string()));
        }
        // Details of another package grant nothing to this one, nor to that one.
        let (steps, warnings) = restore_steps(&d, "com.example.other");
        assert!(steps.is_empty());
        assert!(warnings[0].contains("com.example.chat"));

        assert!(AppDetails::from_json(b"{\"AppOps\": [{\"Op\": \"X\", \"Mode\": \"sudo\"}]}").is_err());
        assert!(AppDetails::from_json(b"not json").is_err());
        assert!(AppDetails::from_json(&vec![b' '; MAX_DETAILS as usize + 1]).is_err());
        let many = format!("{{\"Permissions\": [{}]}}", vec!["{}"; MAX_ITEMS + 1].join(","));
        assert!(AppDetails::from_json(many.as_bytes()).is_err());
        // Unknown fields from a later cpbackup are ignored; missing ones default.
        let d = AppDetails::from_json(b"{\"Package\": \"a.b\", \"Future\": 1}").unwrap();
        assert_eq!((d.package.as_str(), d.keystore_bound, d.permissions.len()), ("a.b", false, 0));
    }
}
