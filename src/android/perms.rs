//! Pure parsers of what Android 10–14 prints about an app's runtime permissions (`dumpsys
//! package PKG`) and app ops (`appops get PKG`), and the name rules every permission, op and
//! mode passes before it may reach a command line.
//!
//! Nothing here runs a process or touches a file. The text is the phone's and may be odd: an
//! unknown line is skipped, a name that is not of Android's form (`[A-Za-z0-9_.]`, starting
//! with a letter) is dropped, a mode outside Android's five is dropped; nothing here panics or
//! fails on any input.

use crate::error::{Error, Result};

/// Longest permission or op name kept (Android's own are well under 100 characters).
pub const MAX_NAME: usize = 255;
/// At most this many permissions or ops are kept from one listing.
pub const MAX_ENTRIES: usize = 4096;

/// Whether `name` has Android's form for a permission or app-op name: 1 to 255 characters of
/// `[A-Za-z0-9_.]`, the first a letter. Such a name is one argument that no tool reads as an
/// option (no leading `-`) or a number (AppOps takes a bare number as an op code).
pub fn is_android_name(name: &str) -> bool {
    name.len() <= MAX_NAME
        && name.starts_with(|c: char| c.is_ascii_alphabetic())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.')
}

/// [`is_android_name`] as an error naming what was wrong (`what`: "permission", "app op").
pub fn check_name(what: &str, name: &str) -> Result<()> {
    if is_android_name(name) {
        Ok(())
    } else {
        Err(Error::usage(format!(
            "{what} {name:?} is not an Android {what} name (1 to {MAX_NAME} characters of letters, digits, '_' and '.', starting with a letter)"
        )))
    }
}

/// An app-op mode, as `appops get` prints it and `appops set` takes it (AppOpsManager's
/// `MODE_NAMES`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OpMode {
    Allow,
    Ignore,
    Deny,
    Default,
    Foreground,
}

impl OpMode {
    pub fn parse(s: &str) -> Option<OpMode> {
        Some(match s {
            "allow" => OpMode::Allow,
            "ignore" => OpMode::Ignore,
            "deny" => OpMode::Deny,
            "default" => OpMode::Default,
            "foreground" => OpMode::Foreground,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            OpMode::Allow => "allow",
            OpMode::Ignore => "ignore",
            OpMode::Deny => "deny",
            OpMode::Default => "default",
            OpMode::Foreground => "foreground",
        }
    }
}

// ---------------------------------------------------------------------------------------------
// dumpsys package

/// One line of a user's `runtime permissions:` block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimePermission {
    pub name: String,
    pub granted: bool,
    /// Flag names as printed (`USER_SET`, `USER_FIXED`, `POLICY_FIXED`…), each `[A-Z0-9_]`.
    pub flags: Vec<String>,
}

impl RuntimePermission {
    pub fn has_flag(&self, flag: &str) -> bool {
        self.flags.iter().any(|f| f == flag)
    }
}

/// The runtime permissions of `package` for `user` in the output of `dumpsys package
/// PACKAGE`: the `runtime permissions:` block under `User N:` inside `Package [PACKAGE]`, in
/// the `Packages:` section (the `Hidden system packages:` section, which repeats an updated
/// system app's factory entry, is not read). The first line for a name wins.
///
/// Shapes (Android 10–14):
/// ```text
/// Packages:
///   Package [com.example.app] (1e0e763):
///     User 0: ceDataInode=1643854 installed=true hidden=false … virtual=false
///       gids=[3003]
///       runtime permissions:
///         android.permission.CAMERA: granted=true, flags=[ USER_SET|USER_SENSITIVE_WHEN_GRANTED]
///         android.permission.READ_CONTACTS: granted=false
/// ```
pub fn parse_runtime_permissions(dump: &str, package: &str, user: u32) -> Vec<RuntimePermission> {
    let mut out: Vec<RuntimePermission> = Vec::new();
    // Where we are: in the Packages: section (or before any section), inside the package's
    // entry (with its header's indentation), inside the wanted user's block, inside its runtime
    // permissions block (with that header's indentation).
    let mut in_packages = true;
    let mut package_indent: Option<usize> = None;
    let mut user_indent: Option<usize> = None;
    let mut block_indent: Option<usize> = None;
    for line in dump.lines() {
        let trimmed = line.trim();
        if trimmed.is_empty() {
            continue;
        }
        let indent = line.len() - line.trim_start().len();
        if indent == 0 && trimmed.ends_with(':') && !trimmed.starts_with("Package [") {
            // A top-level section: only `Packages:` holds the installed entries.
            in_packages = trimmed == "Packages:";
            package_indent = None;
            user_indent = None;
            block_indent = None;
            continue;
        }
        if !in_packages {
            continue;
        }
        if let Some(bi) = block_indent {
            if indent > bi {
                if out.len() < MAX_ENTRIES {
                    if let Some(p) = parse_permission_line(trimmed) {
                        if !out.iter().any(|o| o.name == p.name) {
                            out.push(p);
                        }
                    }
                }
                continue;
            }
            block_indent = None;
        }
        if let Some(rest) = trimmed.strip_prefix("Package [") {
            let name = rest.split_once(']').map(|(n, _)| n).unwrap_or("");
            package_indent = (name == package).then_some(indent);
            user_indent = None;
            continue;
        }
        let Some(pi) = package_indent else { continue };
        if indent <= pi {
            // Something at the package header's level or above: the entry has ended.
            package_indent = None;
            user_indent = None;
            continue;
        }
        if let Some(n) = user_header(trimmed) {
            user_indent = (n == user).then_some(indent);
            continue;
        }
        if let Some(ui) = user_indent {
            if indent <= ui {
                user_indent = None;
            } else if trimmed == "runtime permissions:" {
                block_indent = Some(indent);
            }
        }
    }
    out
}

/// `User 10: ceDataInode=…` → 10.
fn user_header(trimmed: &str) -> Option<u32> {
    let rest = trimmed.strip_prefix("User ")?;
    let (n, _) = rest.split_once(':')?;
    if n.is_empty() || n.len() > 9 || !n.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    n.parse().ok()
}

/// `android.permission.CAMERA: granted=true, flags=[ USER_SET|USER_FIXED]`.
fn parse_permission_line(trimmed: &str) -> Option<RuntimePermission> {
    let (name, rest) = trimmed.split_once(": granted=")?;
    if !is_android_name(name) {
        return None;
    }
    let granted = if rest.starts_with("true") {
        true
    } else if rest.starts_with("false") {
        false
    } else {
        return None;
    };
    let mut flags = Vec::new();
    if let Some((_, f)) = rest.split_once("flags=[") {
        let f = f.split_once(']').map(|(f, _)| f).unwrap_or(f);
        for flag in f.split(|c: char| c == '|' || c.is_whitespace()) {
            let ok = !flag.is_empty()
                && flag.len() <= 64
                && flag.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_');
            if ok && !flags.iter().any(|x| x == flag) {
                flags.push(flag.to_string());
            }
        }
    }
    Some(RuntimePermission { name: name.to_string(), granted, flags })
}

// ---------------------------------------------------------------------------------------------
// appops get

/// One op line of `appops get`: `SYSTEM_ALERT_WINDOW: allow; time=+2h1m ago`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpLine {
    pub name: String,
    pub mode: OpMode,
}

/// What `appops get PKG` (or `appops get UID`) printed, parsed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OpsListing {
    /// The op lines in order, those with a name or mode Android would not print left out.
    pub ops: Vec<OpLine>,
    /// The first op line carried the `Uid mode: ` prefix: the listing starts with the uid's
    /// own modes. AppOps prints the prefix once, on the first uid op only, so where the uid's
    /// ops end and the package's begin cannot be read from this listing alone (see
    /// [`split_uid_ops`]).
    pub uid_first: bool,
}

/// Parse `appops get PKG` / `appops get UID` output. `No operations.` (and any other line
/// that is not `NAME: MODE…`) gives nothing.
pub fn parse_appops(out: &str) -> OpsListing {
    let mut listing = OpsListing::default();
    let mut seen_any = false;
    for line in out.lines() {
        let mut line = line.trim();
        let mut uid = false;
        if let Some(rest) = line.strip_prefix("Uid mode: ") {
            line = rest.trim_start();
            uid = true;
        }
        let Some((name, rest)) = line.split_once(": ") else { continue };
        let mode_word = rest.split(|c: char| c == ';' || c.is_whitespace()).next().unwrap_or("");
        let Some(mode) = OpMode::parse(mode_word) else { continue };
        if !is_android_name(name) || listing.ops.len() >= MAX_ENTRIES {
            continue;
        }
        if !seen_any {
            listing.uid_first = uid;
            seen_any = true;
        }
        listing.ops.push(OpLine { name: name.to_string(), mode });
    }
    listing
}

/// Split the listing of `appops get PKG` into (uid modes, package modes), given the listing of
/// `appops get UID` (the app's uid as a number, which lists the uid's modes alone). AppOps
/// prints the uid's ops first and marks only the first of them, so the package's ops are what
/// follows the leading lines that repeat the uid listing. A listing without the `Uid mode:`
/// mark has no uid modes.
pub fn split_uid_ops(package: &OpsListing, uid: &OpsListing) -> (Vec<OpLine>, Vec<OpLine>) {
    if !package.uid_first {
        return (Vec::new(), package.ops.clone());
    }
    let uid_ops: Vec<OpLine> = if uid.uid_first { uid.ops.clone() } else { Vec::new() };
    let lead = package.ops.iter().zip(uid_ops.iter()).take_while(|(a, b)| a == b).count();
    if lead == 0 {
        // The uid listing does not match (it changed in between, or could not be read): only
        // the marked first line is surely the uid's.
        let first = package.ops.first().cloned().into_iter().collect();
        return (first, package.ops.iter().skip(1).cloned().collect());
    }
    (uid_ops[..lead].to_vec(), package.ops[lead..].to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Android 14 (UP1A), an app installed for user 11 only, trimmed of other sections.
    const DUMPSYS_14: &str = "\
Database versions:
  Internal:
    sdkVersion=34 databaseVersion=3
Packages:
  Package [org.proninyaroslav.libretorrent] (1e0e763):
    appId=10076
    pkg=Package{5a36244 org.proninyaroslav.libretorrent}
    codePath=/data/app/~~H-4fKmtR1gLG8IXeIY7WSg==/org.proninyaroslav.libretorrent-yZOLSlAHADAyHKQiDyceWw==
    primaryCpuAbi=arm64-v8a
    versionCode=26 minSdk=24 targetSdk=31
    splits=[base]
    install permissions:
      android.permission.MANAGE_EXTERNAL_STORAGE: granted=false
      android.permission.FOREGROUND_SERVICE: granted=true
    User 0: ceDataInode=0 installed=false hidden=false suspended=false distractionFlags=0 stopped=true notLaunched=true enabled=0 instant=false virtual=false
      installReason=0
      firstInstallTime=2024-03-11 23:16:14
      overlay paths:
        /product/overlay/NavigationBarMode3Button/NavigationBarMode3ButtonOverlay.apk
      runtime permissions:
        android.permission.POST_NOTIFICATIONS: granted=false
        android.permission.READ_EXTERNAL_STORAGE: granted=false, flags=[ APPLY_RESTRICTION]
    User 11: ceDataInode=1643854 installed=true hidden=false suspended=false distractionFlags=0 stopped=false notLaunched=false enabled=0 instant=false virtual=false
      installReason=4
      firstInstallTime=2024-03-11 23:16:27
      gids=[3003]
      runtime permissions:
        android.permission.POST_NOTIFICATIONS: granted=true, flags=[ USER_SET|USER_SENSITIVE_WHEN_GRANTED|USER_SENSITIVE_WHEN_DENIED]
        android.permission.READ_MEDIA_VISUAL_USER_SELECTED: granted=false, flags=[ USER_SENSITIVE_WHEN_GRANTED|USER_SENSITIVE_WHEN_DENIED]
        android.permission.READ_EXTERNAL_STORAGE: granted=false, flags=[ USER_SENSITIVE_WHEN_GRANTED|USER_SENSITIVE_WHEN_DENIED|RESTRICTION_INSTALLER_EXEMPT]
      disabledComponents:
        org.proninyaroslav.libretorrent.receiver.BootReceiver
  Package [com.android.uwb.resources] (cd4df60):
    appId=10217
    User 11: ceDataInode=800469 installed=true hidden=false
      runtime permissions:
        android.permission.OTHER_SENSORS: granted=true, flags=[ USER_SENSITIVE_WHEN_GRANTED]

Hidden system packages:
  Package [org.proninyaroslav.libretorrent] (aaaaaaa):
    User 11: ceDataInode=0 installed=true
      runtime permissions:
        android.permission.CAMERA: granted=true
";

    /// Android 10 (QQ3A): `gids` then the block, flags with USER_FIXED, a shared-user line.
    const DUMPSYS_10: &str = "\
Packages:
  Package [com.example.chat] (8c1f2a0):
    userId=10187
    pkg=Package{6b9f3d9 com.example.chat}
    codePath=/data/app/com.example.chat-Qx9yq4-Hgx_Mn3U6hCEfWg==
    versionCode=4101 minSdk=21 targetSdk=29
    splits=[base, config.arm64_v8a, config.xxhdpi, config.fr]
    requested permissions:
      android.permission.CAMERA
      android.permission.RECORD_AUDIO
      android.permission.ACCESS_FINE_LOCATION
    install permissions:
      android.permission.INTERNET: granted=true
    User 0: ceDataInode=421337 installed=true hidden=false suspended=false stopped=false notLaunched=false enabled=0 instant=false virtual=false
      gids=[3003]
      runtime permissions:
        android.permission.ACCESS_FINE_LOCATION: granted=false, flags=[ USER_SET|USER_FIXED|USER_SENSITIVE_WHEN_GRANTED|USER_SENSITIVE_WHEN_DENIED]
        android.permission.CAMERA: granted=true, flags=[ USER_SET|USER_SENSITIVE_WHEN_GRANTED|USER_SENSITIVE_WHEN_DENIED]
        android.permission.RECORD_AUDIO: granted=true, flags=[ USER_SENSITIVE_WHEN_GRANTED|USER_SENSITIVE_WHEN_DENIED]
        android.permission.READ_CONTACTS: granted=true, flags=[ POLICY_FIXED|GRANTED_BY_DEFAULT]
    User 10: ceDataInode=0 installed=true hidden=false suspended=false stopped=true notLaunched=true enabled=0 instant=false virtual=false
      gids=[3003]
      runtime permissions:
        android.permission.CAMERA: granted=false, flags=[ USER_SENSITIVE_WHEN_GRANTED|USER_SENSITIVE_WHEN_DENIED]

Package Changes:
  Sequence number=37
";

    #[test]
    fn android_14_runtime_permissions_of_one_user() {
        let p = parse_runtime_permissions(DUMPSYS_14, "org.proninyaroslav.libretorrent", 11);
        let names: Vec<_> = p.iter().map(|p| (p.name.as_str(), p.granted)).collect();
        assert_eq!(
            names,
            vec![
                ("android.permission.POST_NOTIFICATIONS", true),
                ("android.permission.READ_MEDIA_VISUAL_USER_SELECTED", false),
                ("android.permission.READ_EXTERNAL_STORAGE", false),
            ]
        );
        assert_eq!(p[0].flags, vec!["USER_SET", "USER_SENSITIVE_WHEN_GRANTED", "USER_SENSITIVE_WHEN_DENIED"]);
        assert!(p[0].has_flag("USER_SET") && !p[0].has_flag("USER_FIXED"));
        // User 0 has the package but nothing granted; the hidden entry's CAMERA is not read;
        // another package's block is not this one's.
        let u0 = parse_runtime_permissions(DUMPSYS_14, "org.proninyaroslav.libretorrent", 0);
        assert_eq!(u0.len(), 2);
        assert!(u0.iter().all(|p| !p.granted));
        assert_eq!(u0[1].flags, vec!["APPLY_RESTRICTION"]);
        let uwb = parse_runtime_permissions(DUMPSYS_14, "com.android.uwb.resources", 11);
        assert_eq!(uwb.len(), 1);
        assert!(parse_runtime_permissions(DUMPSYS_14, "org.proninyaroslav", 11).is_empty());
        assert!(parse_runtime_permissions(DUMPSYS_14, "org.proninyaroslav.libretorrent", 13).is_empty());
    }

    #[test]
    fn android_10_runtime_permissions() {
        let p = parse_runtime_permissions(DUMPSYS_10, "com.example.chat", 0);
        assert_eq!(p.len(), 4);
        let fine = &p[0];
        assert_eq!(fine.name, "android.permission.ACCESS_FINE_LOCATION");
        assert!(!fine.granted && fine.has_flag("USER_FIXED"));
        assert!(p[1].granted && p[1].has_flag("USER_SET"));
        assert!(p[3].has_flag("POLICY_FIXED"));
        let u10 = parse_runtime_permissions(DUMPSYS_10, "com.example.chat", 10);
        assert_eq!(u10.len(), 1);
        assert!(!u10[0].granted);
    }

    #[test]
    fn snippets_without_a_section_header_and_odd_lines() {
        // `dumpsys package PKG | grep -A…` style output starts inside the entry.
        let text = "  Package [a.b] (1):\n    User 0: ceDataInode=1\n      runtime permissions:\n        \
                    a.b.permission.X: granted=true\n        bad name;rm: granted=true\n        \
                    -x: granted=true\n        1x: granted=true\n        a.B_c.D9: granted=maybe\n        \
                    a.c: granted=true, flags=[ lower|OK_1|WITH SPACE]\n        a.b.permission.X: granted=false\n";
        let p = parse_runtime_permissions(text, "a.b", 0);
        let names: Vec<_> = p.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, vec!["a.b.permission.X", "a.c"]);
        assert!(p[0].granted, "the first line for a name wins");
        assert_eq!(p[1].flags, vec!["OK_1", "WITH", "SPACE"]);
        assert!(parse_runtime_permissions("", "a.b", 0).is_empty());
        assert!(parse_runtime_permissions("runtime permissions:\n  x.y: granted=true\n", "a.b", 0).is_empty());
    }

    #[test]
    fn names() {
        for ok in ["android.permission.CAMERA", "SYSTEM_ALERT_WINDOW", "a", "com.x.permission.C2D_MESSAGE"] {
            assert!(is_android_name(ok), "{ok}");
            assert!(check_name("permission", ok).is_ok());
        }
        for bad in ["", "-g", "--user", "1", "12345", "a b", "a;b", "a/b", "a-b", "é", "_x", ".x", &"a".repeat(256)] {
            assert!(!is_android_name(bad), "{bad:?}");
        }
        let e = check_name("permission", "--user").unwrap_err().to_string();
        assert!(e.contains("\"--user\"") && e.contains("permission"), "{e}");
        assert_eq!(OpMode::parse("foreground"), Some(OpMode::Foreground));
        assert_eq!(OpMode::parse("mode=5"), None);
        for m in [OpMode::Allow, OpMode::Ignore, OpMode::Deny, OpMode::Default, OpMode::Foreground] {
            assert_eq!(OpMode::parse(m.as_str()), Some(m));
        }
    }

    /// `appops get com.example.chat` on Android 13: one uid mode, then the package's ops with
    /// access times, reject times, durations and a running op.
    const APPOPS_13: &str = "\
Uid mode: RUN_ANY_IN_BACKGROUND: ignore
COARSE_LOCATION: foreground; time=+1h3m12s45ms ago; duration=+1s2ms
FINE_LOCATION: foreground; rejectTime=+3d1h ago
CAMERA: allow; time=+5m ago (running)
SYSTEM_ALERT_WINDOW: allow
WAKE_LOCK: allow; time=+8s312ms ago; duration=+51ms
RUN_IN_BACKGROUND: ignore
READ_EXTERNAL_STORAGE: mode=7
MANAGE_EXTERNAL_STORAGE: default; rejectTime=+2d ago
";

    #[test]
    fn appops_listing_with_uid_modes() {
        let l = parse_appops(APPOPS_13);
        assert!(l.uid_first);
        let ops: Vec<_> = l.ops.iter().map(|o| (o.name.as_str(), o.mode)).collect();
        assert_eq!(
            ops,
            vec![
                ("RUN_ANY_IN_BACKGROUND", OpMode::Ignore),
                ("COARSE_LOCATION", OpMode::Foreground),
                ("FINE_LOCATION", OpMode::Foreground),
                ("CAMERA", OpMode::Allow),
                ("SYSTEM_ALERT_WINDOW", OpMode::Allow),
                ("WAKE_LOCK", OpMode::Allow),
                ("RUN_IN_BACKGROUND", OpMode::Ignore),
                ("MANAGE_EXTERNAL_STORAGE", OpMode::Default),
            ]
        );
        // `appops get 10187`: the uid's modes alone.
        let uid = parse_appops("Uid mode: RUN_ANY_IN_BACKGROUND: ignore\n");
        let (u, p) = split_uid_ops(&l, &uid);
        assert_eq!(u, vec![OpLine { name: "RUN_ANY_IN_BACKGROUND".into(), mode: OpMode::Ignore }]);
        assert_eq!(p.len(), 7);
        assert_eq!(p[0].name, "COARSE_LOCATION");
    }

    #[test]
    fn appops_uid_block_of_several_lines() {
        // Two uid modes: only the first line is marked; the uid listing says where they end.
        let pkg =
            parse_appops("Uid mode: COARSE_LOCATION: ignore\nRUN_ANY_IN_BACKGROUND: ignore\nCOARSE_LOCATION: allow\n");
        let uid = parse_appops("Uid mode: COARSE_LOCATION: ignore\nRUN_ANY_IN_BACKGROUND: ignore\n");
        let (u, p) = split_uid_ops(&pkg, &uid);
        assert_eq!(u.len(), 2);
        assert_eq!(p, vec![OpLine { name: "COARSE_LOCATION".into(), mode: OpMode::Allow }]);
        // A uid listing that does not match: only the marked line is the uid's.
        let (u, p) = split_uid_ops(&pkg, &OpsListing::default());
        assert_eq!(u.len(), 1);
        assert_eq!(p.len(), 2);
        // No mark: everything is the package's.
        let plain = parse_appops("SYSTEM_ALERT_WINDOW: allow; time=+1m ago\n");
        assert!(!plain.uid_first);
        let (u, p) = split_uid_ops(&plain, &uid);
        assert!(u.is_empty());
        assert_eq!(p.len(), 1);
    }

    #[test]
    fn appops_odd_output() {
        for text in ["No operations.", "", "Error: No UID for x in user 0", "Default mode: allow", ":", ": allow"] {
            let l = parse_appops(text);
            assert!(l.ops.is_empty() && !l.uid_first, "{text:?}");
        }
        let l = parse_appops("-x: allow\n123: allow\nA B: allow\nOK: allowed\nOK2: deny\n");
        assert_eq!(l.ops, vec![OpLine { name: "OK2".into(), mode: OpMode::Deny }]);
    }
}
