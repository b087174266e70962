//! Pure parsers of what Android 10–14's `pm` (and `/data/system/packages.list`) print, and the
//! package-name rule that every name passes before it reaches a command line.
//!
//! Nothing here runs a process or touches a file: every function takes text and is unit-tested
//! on captured samples.

use crate::error::{Error, Result};

/// A package name Android would accept, and that is safe as one argument: segments of
/// `[A-Za-z0-9_]` separated by dots, each starting with a letter.
pub fn check_package_name(name: &str) -> Result<()> {
    let bad = |why: &str| Error::usage(format!("{name:?} is not a valid Android package name: {why}"));
    if name.is_empty() || name.len() > 255 {
        return Err(bad("it must have 1 to 255 characters"));
    }
    for seg in name.split('.') {
        let mut chars = seg.chars();
        match chars.next() {
            Some(c) if c.is_ascii_alphabetic() => {}
            Some(_) => return Err(bad("each dot-separated part must start with a letter")),
            None => return Err(bad("it has an empty part")),
        }
        if !chars.all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(bad("only letters, digits, '_' and '.' are allowed"));
        }
    }
    Ok(())
}

/// `pm path PKG`: one `package:/path/x.apk` line per APK. The base APK comes first in the
/// result whatever order pm printed; splits keep their order.
pub fn parse_path(out: &str) -> Vec<String> {
    let mut paths: Vec<String> = out
        .lines()
        .filter_map(|l| l.trim().strip_prefix("package:"))
        .map(|p| p.trim().to_string())
        .filter(|p| !p.is_empty())
        .collect();
    if let Some(i) = paths.iter().position(|p| p.ends_with("/base.apk")) {
        let base = paths.remove(i);
        paths.insert(0, base);
    }
    paths
}

/// One line of `pm list packages -U --show-versioncode`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    pub package: String,
    pub version_code: i64,
    pub uid: Option<u32>,
}

/// `pm list packages -U --show-versioncode PKG` filters by substring: find the exact package.
/// Lines look like `package:com.example versionCode:123 uid:10123` (field order varies across
/// releases, so fields are found by name).
pub fn parse_list_packages(out: &str, package: &str) -> Option<Listed> {
    for line in out.lines() {
        let mut fields = line.split_whitespace();
        let Some(name) = fields.next().and_then(|f| f.strip_prefix("package:")) else { continue };
        if name != package {
            continue;
        }
        let mut listed = Listed { package: name.to_string(), version_code: 0, uid: None };
        for f in fields {
            if let Some(v) = f.strip_prefix("versionCode:") {
                listed.version_code = v.parse().unwrap_or(0);
            } else if let Some(v) = f.strip_prefix("uid:") {
                // `uid:10123` or, with shared uids, `uid:10123,10124`: the first is the app's.
                listed.uid = v.split(',').next().and_then(|u| u.parse().ok());
            }
        }
        return Some(listed);
    }
    None
}

/// `pm list packages -i PKG`: `package:PKG  installer=com.android.vending` (or `installer=null`).
pub fn parse_installer(out: &str, package: &str) -> String {
    for line in out.lines() {
        let mut fields = line.split_whitespace();
        if fields.next().and_then(|f| f.strip_prefix("package:")) != Some(package) {
            continue;
        }
        for f in fields {
            if let Some(v) = f.strip_prefix("installer=") {
                return if v == "null" { String::new() } else { v.to_string() };
            }
        }
    }
    String::new()
}

/// `pm install-create …`: `Success: created install session [1234]`.
pub fn parse_session(command: &str, out: &str) -> Result<u32> {
    check_success(command, out)?;
    let id = out
        .lines()
        .find(|l| l.contains("install session"))
        .and_then(|l| l.rsplit_once('[').map(|(_, r)| r))
        .and_then(|r| r.split_once(']').map(|(id, _)| id))
        .and_then(|id| id.trim().parse().ok());
    id.ok_or_else(|| Error::Device { command: command.to_string(), output: format!("no session id in {out:?}") })
}

/// pm commands that end in `Success` or `Failure [REASON]` (install-write, install-commit,
/// uninstall). Anything but a `Success` line is a failure, quoted.
pub fn check_success(command: &str, out: &str) -> Result<()> {
    let failed = out.lines().any(|l| {
        let l = l.trim_start();
        l.starts_with("Failure") || l.starts_with("Error") || l.starts_with("Exception")
    });
    let ok = out.lines().any(|l| l.trim_start().starts_with("Success"));
    if failed || !ok {
        let output =
            if out.trim().is_empty() { "no output (expected Success)".to_string() } else { out.trim().to_string() };
        return Err(Error::Device { command: command.to_string(), output });
    }
    Ok(())
}

/// A line of `/data/system/packages.list`: `PKG UID DEBUGGABLE DATADIR SEINFO GIDS`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackagesListEntry {
    pub uid: u32,
    pub data_dir: String,
    pub seinfo: String,
}

pub fn parse_packages_list(text: &str, package: &str) -> Option<PackagesListEntry> {
    text.lines().find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 4 || f[0] != package {
            return None;
        }
        Some(PackagesListEntry {
            uid: f[1].parse().ok()?,
            data_dir: f[3].to_string(),
            seinfo: f.get(4).map(|s| s.to_string()).unwrap_or_default(),
        })
    })
}

/// `ro.product.cpu.abilist`: `arm64-v8a,armeabi-v7a,armeabi`.
pub fn parse_abilist(s: &str) -> Vec<String> {
    s.split(',').map(str::trim).filter(|a| !a.is_empty()).map(str::to_string).collect()
}

/// The name an APK gets inside the archive and the install session: `base.apk` for the base,
/// `split_NAME.apk` for a split (the file name pm reports, made safe).
pub fn apk_name(path: &str) -> String {
    let leaf = path.rsplit('/').next().unwrap_or(path);
    let clean: String =
        leaf.chars().map(|c| if c.is_ascii_alphanumeric() || "._-".contains(c) { c } else { '_' }).collect();
    if clean == "base.apk" || clean.starts_with("split_") {
        clean
    } else {
        format!("split_{clean}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn package_names() {
        for ok in ["com.example.app", "a", "com.Example_1.x9", "android"] {
            assert!(check_package_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "com..x", ".com", "com.1x", "com.x;rm -rf /", "com/x", "com.x ", "-x", "com.ex-ample", "é.x"] {
            assert!(check_package_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn pm_path_with_splits_and_tilde_dirs() {
        let out =
            "package:/data/app/~~Zr3aX-4zZQ==/com.example.app-0Ww_Sf8uTUmbJ5y-QJ0hHA==/split_config.arm64_v8a.apk\n\
                   package:/data/app/~~Zr3aX-4zZQ==/com.example.app-0Ww_Sf8uTUmbJ5y-QJ0hHA==/base.apk\n\
                   package:/data/app/~~Zr3aX-4zZQ==/com.example.app-0Ww_Sf8uTUmbJ5y-QJ0hHA==/split_config.xxhdpi.apk\n";
        let p = parse_path(out);
        assert_eq!(p.len(), 3);
        assert!(p[0].ends_with("/base.apk"));
        assert!(p[1].ends_with("split_config.arm64_v8a.apk"));
        assert_eq!(apk_name(&p[0]), "base.apk");
        assert_eq!(apk_name(&p[1]), "split_config.arm64_v8a.apk");
        assert_eq!(apk_name("/x/odd name.apk"), "split_odd_name.apk");
        assert!(parse_path("").is_empty());
    }

    #[test]
    fn list_packages_exact_match() {
        let out = "package:com.example.app.pro versionCode:7 uid:10200\n\
                   package:com.example.app versionCode:123456789012 uid:10123\n";
        let l = parse_list_packages(out, "com.example.app").unwrap();
        assert_eq!(l, Listed { package: "com.example.app".into(), version_code: 123456789012, uid: Some(10123) });
        assert_eq!(parse_list_packages(out, "com.example").map(|l| l.package), None);
        // Shared uid and Android 10 field order.
        let l = parse_list_packages("package:a.b uid:1000,10001 versionCode:3", "a.b").unwrap();
        assert_eq!((l.version_code, l.uid), (3, Some(1000)));
    }

    #[test]
    fn installers() {
        assert_eq!(parse_installer("package:a.b  installer=com.android.vending\n", "a.b"), "com.android.vending");
        assert_eq!(parse_installer("package:a.b  installer=null\n", "a.b"), "");
        assert_eq!(parse_installer("package:a.bc  installer=x\n", "a.b"), "");
    }

    #[test]
    fn sessions_and_failures() {
        assert_eq!(parse_session("pm install-create", "Success: created install session [1234567]").unwrap(), 1234567);
        assert!(parse_session("pm install-create", "Success: created install session").is_err());
        assert!(check_success("pm install-commit 1", "Success").is_ok());
        assert!(check_success("pm install-write", "Success: streamed 1024 bytes").is_ok());
        let e = check_success(
            "pm install-commit 12",
            "Failure [INSTALL_FAILED_UPDATE_INCOMPATIBLE: Package a.b signatures do not match]",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("INSTALL_FAILED_UPDATE_INCOMPATIBLE") && e.contains("pm install-commit 12"), "{e}");
        assert!(check_success("pm uninstall a.b", "Failure [DELETE_FAILED_INTERNAL_ERROR]").is_err());
        assert!(check_success("pm uninstall a.b", "").is_err());
        assert!(check_success("pm x", "Error: java.lang.IllegalArgumentException").is_err());
    }

    #[test]
    fn packages_list_lines() {
        let text = "com.android.shell 2000 0 /data/user_de/0/com.android.shell platform:privapp:targetSdkVersion=29 1065,3003\n\
                    com.example.app 10123 1 /data/user/0/com.example.app default:targetSdkVersion=33 3003\n\
                    com.example.none 10124 0 /data/user/0/com.example.none default:targetSdkVersion=33 none\n";
        let e = parse_packages_list(text, "com.example.app").unwrap();
        assert_eq!(e.uid, 10123);
        assert_eq!(e.data_dir, "/data/user/0/com.example.app");
        assert!(e.seinfo.starts_with("default"));
        assert!(parse_packages_list(text, "com.example").is_none());
        assert_eq!(parse_packages_list(text, "com.example.none").unwrap().uid, 10124);
    }

    #[test]
    fn abilists() {
        assert_eq!(parse_abilist("arm64-v8a,armeabi-v7a,armeabi\n"), vec!["arm64-v8a", "armeabi-v7a", "armeabi"]);
        assert!(parse_abilist("").is_empty());
    }
}
