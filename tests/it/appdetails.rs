//! Apps come back as they were (issue 18): runtime permissions and app ops recorded by
//! `backup-app` and applied by `recover-app` on a fresh phone, a second Android user both ways,
//! splits that do not fit, a Keystore-bound app, and hostile archived names — through the real
//! binary against the fake phones of `android.rs` (`dumpsys`, `appops`, `pm grant`,
//! `pm set-permission-flags` and `--user N` in `support/fakeroid/`).

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::android::{
    ab_tar, build_apk_with, build_split, cpbackup_context, is_root, recover, require_tools, Phone, NOTES,
};
use crate::support::{json, run, stderr};

const CAMERA: &str = "android.permission.CAMERA";
const AUDIO: &str = "android.permission.RECORD_AUDIO";
const FINE: &str = "android.permission.ACCESS_FINE_LOCATION";
const CONTACTS: &str = "android.permission.READ_CONTACTS";
const SMS: &str = "android.permission.READ_SMS";
const INTERNET: &str = "android.permission.INTERNET";
const REQUESTED: [&str; 6] = [CAMERA, AUDIO, FINE, CONTACTS, SMS, INTERNET];

fn set_prop(phone: &Phone, key: &str, value: &str) {
    let mut f = fs::OpenOptions::new().append(true).open(phone.p(".fakeroid/props")).unwrap();
    writeln!(f, "{key}={value}").unwrap();
}

/// A phone with NOTES installed for `user` (base asking for `REQUESTED`, plus `splits`), data
/// in the user's CE, DE and external dirs.
fn phone_for(tmp: &Path, first_uid: u32, user: u32, splits: &[&str]) -> Phone {
    let phone = Phone::new(first_uid, 33, "arm64-v8a,armeabi-v7a,armeabi");
    let dir = tmp.join(format!("apks-{first_uid}"));
    let (base, _) = build_apk_with(&dir, NOTES, 42, "arm64-v8a", &REQUESTED);
    let mut apks = vec![base];
    for s in splits {
        apks.push(build_split(&dir, NOTES, s));
    }
    let refs: Vec<&Path> = apks.iter().map(PathBuf::as_path).collect();
    phone.install_for(user, &refs);
    let ce = ce_dir(&phone, user);
    fs::create_dir_all(ce.join("files")).unwrap();
    fs::write(ce.join("files/note.txt"), format!("note of user {user}\n")).unwrap();
    fs::write(phone.p(&format!("data/user_de/{user}/{NOTES}/de.txt")), "device protected\n").unwrap();
    let ext = phone.p(&format!("data/media/{user}/Android/data/{NOTES}/files"));
    fs::create_dir_all(&ext).unwrap();
    fs::write(ext.join("export.txt"), "external\n").unwrap();
    phone
}

fn ce_dir(phone: &Phone, user: u32) -> PathBuf {
    if user == 0 {
        phone.p(&format!("data/data/{NOTES}"))
    } else {
        phone.p(&format!("data/user/{user}/{NOTES}"))
    }
}

/// The user's runtime permission state of NOTES as the fake dumpsys prints it: name →
/// (granted, flags).
fn granted(phone: &Phone, user: u32) -> Vec<(String, bool, String)> {
    let text = fs::read_to_string(phone.p(&format!(".fakeroid/perms/{user}/{NOTES}"))).unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let mut f = l.split(' ');
            Some((f.next()?.to_string(), f.next()? == "true", f.next().unwrap_or("-").to_string()))
        })
        .collect()
}

fn state_of(phone: &Phone, user: u32, perm: &str) -> Option<(bool, String)> {
    granted(phone, user).into_iter().find(|(n, _, _)| n == perm).map(|(_, g, f)| (g, f))
}

fn backup_with_stderr(phone: &Phone, out: &Path, extra: &[&str]) -> (serde_json::Value, String) {
    let mut c = phone.cpbackup();
    c.arg("backup-app").arg("--to").arg(out).arg("--root").arg(&phone.root).arg("--json");
    c.arg("--app").arg(NOTES).args(extra);
    let o = run(&mut c, 0);
    (json(&o), stderr(&o))
}

/// The details entry of NOTES in an `.ab`, and the names of all entries in order.
fn details_in(ab: &Path) -> (serde_json::Value, Vec<String>) {
    let tar = ab_tar(ab);
    let mut archive = tar::Archive::new(&tar[..]);
    let mut names = Vec::new();
    let mut details = serde_json::Value::Null;
    for e in archive.entries().unwrap() {
        let mut e = e.unwrap();
        let name = e.path().unwrap().to_string_lossy().into_owned();
        if name == format!("apps/{NOTES}/cpbackup/details.json") {
            assert_eq!(e.header().entry_type(), tar::EntryType::Regular);
            let mut s = String::new();
            e.read_to_string(&mut s).unwrap();
            details = serde_json::from_str(&s).unwrap();
        }
        names.push(name);
    }
    (details, names)
}

#[test]
fn appdetails_permissions_and_app_ops_come_back_on_a_fresh_phone() {
    require_tools();
    let tmp = tempfile::tempdir().unwrap();
    let a = phone_for(tmp.path(), 10100, 0, &["split_config.xxhdpi.apk"]);
    // The user granted the camera (chose it), the microphone (and said "don't ask again"),
    // and the SMS permission was exempted on phone A (as an installer may); location was
    // asked and denied. Special access: display over other apps; background use restricted
    // for the uid and the package.
    a.tool("pm", &["grant", NOTES, CAMERA], None);
    a.tool("pm", &["set-permission-flags", NOTES, CAMERA, "user-set"], None);
    a.tool("pm", &["grant", NOTES, AUDIO], None);
    a.tool("pm", &["set-permission-flags", NOTES, AUDIO, "user-set", "user-fixed"], None);
    a.tool("pm", &["set-permission-flags", NOTES, FINE, "user-set"], None);
    fs::OpenOptions::new()
        .append(true)
        .open(a.p(&format!(".fakeroid/perms/0/{NOTES}")))
        .unwrap()
        .write_all(format!("{SMS} true RESTRICTION_INSTALLER_EXEMPT\n").as_bytes())
        .unwrap();
    a.tool("appops", &["set", NOTES, "SYSTEM_ALERT_WINDOW", "allow"], None);
    a.tool("appops", &["set", "--uid", NOTES, "RUN_ANY_IN_BACKGROUND", "ignore"], None);
    a.tool("appops", &["set", NOTES, "RUN_IN_BACKGROUND", "ignore"], None);
    a.clear_log();

    let ab = tmp.path().join("notes.ab");
    let (m, _) = backup_with_stderr(&a, &ab, &[]);
    assert_eq!(m["Status"], "AVAILABLE");
    let log = a.log();
    assert!(log.contains(&format!("dumpsys package {NOTES}")), "{log}");
    assert!(log.contains(&format!("appops get --user 0 {NOTES}")) && log.contains("appops get 10100"), "{log}");

    // The manifest lists the details beside SourceAppInfoList.
    let d = &m["AppDetails"][0];
    assert_eq!(d["Package"], NOTES);
    assert_eq!(d["VersionCode"], 42);
    assert_eq!(d["User"], 0);
    assert_eq!(d["KeystoreBound"], false);
    let perms: Vec<(String, bool, bool)> = d["Permissions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["Name"].as_str().unwrap().to_string(), p["UserSet"] == true, p["UserFixed"] == true))
        .collect();
    assert_eq!(
        perms,
        vec![(CAMERA.to_string(), true, false), (AUDIO.to_string(), true, true), (SMS.to_string(), false, false)],
        "granted runtime permissions only (not denied location, not install-time INTERNET)"
    );
    let ops: Vec<(String, String, bool)> = d["AppOps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| (o["Op"].as_str().unwrap().to_string(), o["Mode"].as_str().unwrap().to_string(), o["Uid"] == true))
        .collect();
    assert_eq!(
        ops,
        vec![
            ("RUN_ANY_IN_BACKGROUND".into(), "ignore".into(), true),
            ("SYSTEM_ALERT_WINDOW".into(), "allow".into(), false),
            ("RUN_IN_BACKGROUND".into(), "ignore".into(), false),
        ]
    );
    let splits = d["Splits"].as_array().unwrap();
    assert_eq!(splits[0]["Name"], "base.apk");
    assert_eq!(splits[0]["Abis"], serde_json::json!(["arm64-v8a"]));
    assert_eq!(splits[1]["Name"], "split_config.xxhdpi.apk");
    assert_eq!(splits[1]["Density"], "xxhdpi");

    // In the .ab: a regular file under a domain Android's restore drops, after the APKs (so
    // that Android installs base.apk first) and before the data.
    let (inside, names) = details_in(&ab);
    assert_eq!(&inside, d, "the archive carries the same details as the manifest");
    let pos = |n: &str| names.iter().position(|x| x == &format!("apps/{NOTES}/{n}")).unwrap_or_else(|| panic!("{n}"));
    assert!(pos("a/split_config.xxhdpi.apk") < pos("cpbackup/details.json"));
    assert!(pos("cpbackup/details.json") < pos("r/files/note.txt"));

    // A fresh phone whose policy grants the contacts permission at install.
    let b = Phone::new(10250, 33, "arm64-v8a,armeabi-v7a");
    fs::write(b.p(".fakeroid/policy_grants"), format!("{NOTES} {CONTACTS}\n")).unwrap();
    let (r, _) = recover(&b, &ab, &[], 0);
    let app = &r["Apps"][0];
    assert_eq!(app["Status"], "RECOVERED", "{app}");
    let log = b.log();
    let at = |s: &str| log.find(s).unwrap_or_else(|| panic!("{s:?} not in {log}"));
    // After the install and the data swap: grants, then the user's flags, then the ops.
    let grant_camera = at(&format!("pm grant --user 0 {NOTES} {CAMERA}\n"));
    assert!(at("pm install-commit") < grant_camera);
    assert!(log.rfind("restorecon").unwrap() < grant_camera, "{log}");
    at(&format!("pm grant --user 0 {NOTES} {AUDIO}\n"));
    at(&format!("pm set-permission-flags --user 0 {NOTES} {CAMERA} user-set\n"));
    at(&format!("pm set-permission-flags --user 0 {NOTES} {AUDIO} user-set user-fixed\n"));
    at(&format!("appops set --user 0 --uid {NOTES} RUN_ANY_IN_BACKGROUND ignore\n"));
    at(&format!("appops set --user 0 {NOTES} SYSTEM_ALERT_WINDOW allow\n"));
    at(&format!("appops set --user 0 {NOTES} RUN_IN_BACKGROUND ignore\n"));
    assert!(!log.contains("pm revoke") && !log.contains("clear-permission-flags"), "nothing revoked: {log}");
    assert!(!log.contains(FINE), "a permission never granted is left alone: {log}");

    // Phone B's state is phone A's, and what the policy granted stays granted.
    assert_eq!(state_of(&b, 0, CAMERA), Some((true, "USER_SET".into())));
    assert_eq!(state_of(&b, 0, AUDIO), Some((true, "USER_SET|USER_FIXED".into())));
    assert_eq!(state_of(&b, 0, CONTACTS), Some((true, "POLICY_FIXED|GRANTED_BY_DEFAULT".into())));
    let uid_ops = fs::read_to_string(b.p(".fakeroid/appops/uid/10250")).unwrap();
    assert_eq!(uid_ops, "RUN_ANY_IN_BACKGROUND ignore\n");
    let pkg_ops = fs::read_to_string(b.p(&format!(".fakeroid/appops/0/{NOTES}"))).unwrap();
    assert_eq!(pkg_ops, "SYSTEM_ALERT_WINDOW allow\nRUN_IN_BACKGROUND ignore\n");

    // The SMS permission is hard-restricted on B: pm says nothing and grants nothing. The
    // result says so, the app is still recovered.
    assert_eq!(state_of(&b, 0, SMS), None);
    let warnings = app["Warnings"].to_string();
    assert!(warnings.contains(SMS) && warnings.contains("not granted"), "{warnings}");
    assert!(!warnings.contains(CAMERA), "{warnings}");

    // An older pm without set-permission-flags: the grants and ops still happen, one warning
    // says the flags could not be set.
    let c = Phone::new(10400, 33, "arm64-v8a");
    c.fail("pm-set-permission-flags", "");
    let (r, _) = recover(&c, &ab, &[], 0);
    let app = &r["Apps"][0];
    assert_eq!(app["Status"], "RECOVERED", "{app}");
    assert_eq!(state_of(&c, 0, CAMERA).map(|s| s.0), Some(true));
    assert!(c.log().contains(&format!("appops set --user 0 {NOTES} SYSTEM_ALERT_WINDOW allow")));
    let warnings = app["Warnings"].to_string();
    assert!(warnings.contains("set-permission-flags"), "{warnings}");
    assert_eq!(
        c.log().matches("pm set-permission-flags").count(),
        1,
        "tried once, not once per permission: {}",
        c.log()
    );
}

#[test]
fn appdetails_second_user_both_ways() {
    require_tools();
    let tmp = tempfile::tempdir().unwrap();
    // Phone A: the app lives in user 10 only.
    let a = phone_for(tmp.path(), 10100, 10, &[]);
    a.tool("pm", &["grant", "--user", "10", NOTES, CAMERA], None);
    a.tool("appops", &["set", "--user", "10", NOTES, "SYSTEM_ALERT_WINDOW", "allow"], None);
    a.clear_log();
    let ab10 = tmp.path().join("user10.ab");
    let (m, _) = backup_with_stderr(&a, &ab10, &["--user", "10"]);
    assert_eq!(m["Status"], "AVAILABLE", "{m}");
    assert_eq!(m["AppDetails"][0]["User"], 10);
    assert_eq!(m["AppDetails"][0]["Permissions"][0]["Name"], CAMERA);
    let log = a.log();
    assert!(log.contains(&format!("pm list packages --user 10 -U --show-versioncode {NOTES}")), "{log}");
    assert!(log.contains(&format!("am force-stop --user 10 {NOTES}")), "{log}");
    assert!(log.contains(&format!("appops get --user 10 {NOTES}")), "{log}");
    let (_, names) = details_in(&ab10);
    let has = |n: &str| names.iter().any(|x| x == &format!("apps/{NOTES}/{n}"));
    assert!(has("r/files/note.txt") && has("d_r/de.txt") && has("ef/files/export.txt"), "{names:?}");

    // Into user 0 of phone B: user 0's paths, uid, categories and --user 0 everywhere.
    let b = Phone::new(10250, 33, "arm64-v8a");
    let (r, _) = recover(&b, &ab10, &["--user", "0"], 0);
    let app = &r["Apps"][0];
    assert_eq!(app["Status"], "RECOVERED", "{app}");
    assert_eq!(app["Uid"], 10250);
    let ce0 = ce_dir(&b, 0);
    assert_eq!(fs::read_to_string(ce0.join("files/note.txt")).unwrap(), "note of user 10\n");
    assert_eq!(fs::read_to_string(b.p(&format!("data/user_de/0/{NOTES}/de.txt"))).unwrap(), "device protected\n");
    assert!(b.p(&format!("data/media/0/Android/data/{NOTES}/files/export.txt")).is_file());
    assert!(!b.p("data/user/10").exists(), "nothing written for user 10");
    let log = b.log();
    assert!(log.contains("pm install-create") && log.contains("--user 0"), "{log}");
    assert!(log.contains(&format!("pm grant --user 0 {NOTES} {CAMERA}")), "{log}");
    assert_eq!(state_of(&b, 0, CAMERA).map(|s| s.0), Some(true));
    if is_root() {
        assert_eq!(fs::metadata(ce0.join("files/note.txt")).unwrap().uid(), 10250);
    }

    // And back: phone B's user 0 into user 10 of phone C.
    let ab0 = tmp.path().join("user0.ab");
    let (m, _) = backup_with_stderr(&b, &ab0, &[]);
    assert_eq!(m["AppDetails"][0]["User"], 0);
    let c = Phone::new(10300, 33, "arm64-v8a");
    let (r, _) = recover(&c, &ab0, &["--user", "10"], 0);
    let app = &r["Apps"][0];
    assert_eq!(app["Status"], "RECOVERED", "{app}");
    assert_eq!(app["Uid"], 1_010_300, "user 10's uid: 10 × 100000 + the app id");
    let ce10 = ce_dir(&c, 10);
    assert_eq!(fs::read_to_string(ce10.join("files/note.txt")).unwrap(), "note of user 10\n");
    assert_eq!(fs::read_to_string(c.p(&format!("data/user_de/10/{NOTES}/de.txt"))).unwrap(), "device protected\n");
    assert!(c.p(&format!("data/media/10/Android/data/{NOTES}/files/export.txt")).is_file());
    assert!(!c.p(&format!("data/data/{NOTES}")).exists(), "nothing written for user 0");
    let log = c.log();
    assert!(log.contains(&format!("pm grant --user 10 {NOTES} {CAMERA}")), "{log}");
    assert!(log.contains(&format!("appops set --user 10 {NOTES} SYSTEM_ALERT_WINDOW allow")), "{log}");
    assert_eq!(state_of(&c, 10, CAMERA).map(|s| s.0), Some(true));
    if is_root() {
        let m = fs::metadata(ce10.join("files/note.txt")).unwrap();
        assert_eq!(m.uid(), 1_010_300);
        assert_eq!(fs::metadata(ce10.join("cache")).unwrap().gid(), 1_020_300, "user 10's cache gid");
    }
    // User 10's SELinux categories (c522: 512 + 10), never user 0's.
    if let Some(ctx) = cpbackup_context(&ce10.join("files/note.txt")) {
        assert!(ctx.ends_with(",c522,c768"), "{ctx}");
    }
}

#[test]
fn appdetails_splits_that_do_not_fit() {
    require_tools();
    let tmp = tempfile::tempdir().unwrap();
    // An x86_64 ABI split (with its native code), an xxhdpi density split, a French split.
    let a = Phone::new(10100, 33, "x86_64,x86");
    let dir = tmp.path().join("apks");
    let (base, _) = build_apk_with(&dir, NOTES, 42, "x86_64", &[]);
    let abi = build_split(&dir, NOTES, "split_config.x86_64.apk");
    let dpi = build_split(&dir, NOTES, "split_config.xxhdpi.apk");
    let fr = build_split(&dir, NOTES, "split_config.fr.apk");
    a.install(&[&base, &abi, &dpi, &fr]);
    fs::write(a.p(&format!("data/data/{NOTES}/kept.txt")), "data\n").unwrap();
    let ab = tmp.path().join("splits.ab");
    let (m, _) = backup_with_stderr(&a, &ab, &[]);
    let splits = m["AppDetails"][0]["Splits"].as_array().unwrap().clone();
    let find = |n: &str| splits.iter().find(|s| s["Name"] == n).cloned().unwrap_or_default();
    assert_eq!(find("split_config.x86_64.apk")["Abis"], serde_json::json!(["x86_64"]));
    assert_eq!(find("split_config.fr.apk")["Locale"], "fr");

    // An arm phone: the ABI split fits none of its ABIs, so the app is refused before anything
    // changes.
    let b = Phone::new(10250, 33, "arm64-v8a,armeabi-v7a");
    set_prop(&b, "ro.sf.lcd_density", "320");
    set_prop(&b, "persist.sys.locale", "en-US");
    let (r, _) = recover(&b, &ab, &[], 1);
    let app = &r["Apps"][0];
    assert_eq!(app["Status"], "FAILED");
    assert_eq!(app["Step"], "check");
    let err = app["Error"].as_str().unwrap();
    assert!(err.contains("split_config.x86_64.apk") && err.contains("--force"), "{err}");
    assert!(!b.log().contains("pm install"), "{}", b.log());

    // With --force it is installed, and the density and language splits that do not suit this
    // phone are warnings.
    let (r, _) = recover(&b, &ab, &["--force"], 0);
    let app = &r["Apps"][0];
    assert_eq!(app["Status"], "RECOVERED", "{app}");
    let warnings = app["Warnings"].to_string();
    assert!(warnings.contains("xxhdpi") && warnings.contains("xhdpi (320 dpi)"), "{warnings}");
    assert!(warnings.contains("language splits for fr") && warnings.contains("(en)"), "{warnings}");

    // A phone of the right ABI, bucket and language has nothing to say.
    let c = Phone::new(10300, 33, "x86_64");
    set_prop(&c, "ro.sf.lcd_density", "440");
    set_prop(&c, "persist.sys.locale", "fr-FR");
    let (r, _) = recover(&c, &ab, &[], 0);
    let app = &r["Apps"][0];
    assert_eq!(app["Status"], "RECOVERED", "{app}");
    assert_eq!(app["Warnings"], serde_json::json!([]), "{app}");
}

#[test]
fn appdetails_keystore_bound_app_is_warned_at_backup_and_in_the_manifest() {
    require_tools();
    crate::support::require(&["sqlite3"]);
    let tmp = tempfile::tempdir().unwrap();
    let a = phone_for(tmp.path(), 10100, 0, &[]);
    // Keystore 2's database as Android 12+ has it (WAL), made by the sqlite3 CLI: two live
    // keys of the app (uid 10100), one of another app, a garbage-collected one of this app.
    let db = a.p("data/misc/keystore/persistent.sqlite");
    fs::create_dir_all(db.parent().unwrap()).unwrap();
    let sql = "PRAGMA journal_mode=WAL;
        CREATE TABLE keyentry (id INTEGER UNIQUE, key_type INTEGER, domain INTEGER, namespace INTEGER, alias BLOB, state INTEGER, km_uuid BLOB);
        INSERT INTO keyentry VALUES (1, 0, 0, 10100, 'login', 1, NULL);
        INSERT INTO keyentry VALUES (2, 0, 0, 10100, 'db', 1, NULL);
        INSERT INTO keyentry VALUES (3, 0, 0, 10177, 'other', 1, NULL);
        INSERT INTO keyentry VALUES (4, 0, 0, 10100, 'old', 2, NULL);";
    let out = Command::new("sqlite3").arg(&db).arg(sql).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let ab = tmp.path().join("bound.ab");
    let (m, err) = backup_with_stderr(&a, &ab, &[]);
    assert_eq!(m["Status"], "AVAILABLE", "a warning, not a failure");
    assert_eq!(m["AppDetails"][0]["KeystoreBound"], true);
    let warnings = m["Warnings"].to_string();
    assert!(warnings.contains(NOTES) && warnings.contains("Keystore") && warnings.contains("sign-in"), "{warnings}");
    assert!(err.contains("Keystore"), "{err}");
    let (inside, _) = details_in(&ab);
    assert_eq!(inside["KeystoreBound"], true);
    // The database is only read.
    let rows = Command::new("sqlite3").arg(&db).arg("SELECT COUNT(*) FROM keyentry;").output().unwrap();
    assert_eq!(String::from_utf8_lossy(&rows.stdout).trim(), "4");

    // At restore the result says the same thing again.
    let b = Phone::new(10250, 33, "arm64-v8a");
    let (r, _) = recover(&b, &ab, &[], 0);
    let app = &r["Apps"][0];
    assert_eq!(app["Status"], "RECOVERED");
    assert!(app["Warnings"].to_string().contains("Keystore"), "{app}");

    // Another app of the same phone without keys is not marked.
    let other = phone_for(tmp.path(), 10177, 0, &[]);
    let (m, _) = backup_with_stderr(&other, &tmp.path().join("free.ab"), &[]);
    assert_eq!(m["AppDetails"][0]["KeystoreBound"], false);
    assert!(!m["Warnings"].to_string().contains("Keystore"), "{m}");
}

/// Rewrite the details entry of NOTES in an `.ab` (24-byte header, zlib, tar) with `f`.
fn with_details(ab: &Path, out: &Path, f: &dyn Fn(&mut serde_json::Value)) {
    let tar = ab_tar(ab);
    let mut archive = tar::Archive::new(&tar[..]);
    let mut builder = tar::Builder::new(Vec::new());
    for e in archive.entries().unwrap() {
        let mut e = e.unwrap();
        let mut header = e.header().clone();
        let mut data = Vec::new();
        e.read_to_end(&mut data).unwrap();
        let path = e.path().unwrap().into_owned();
        if path == Path::new(&format!("apps/{NOTES}/cpbackup/details.json")) {
            let mut v: serde_json::Value = serde_json::from_slice(&data).unwrap();
            f(&mut v);
            data = serde_json::to_vec(&v).unwrap();
        }
        header.set_size(data.len() as u64);
        builder.append_data(&mut header, &path, &data[..]).unwrap();
    }
    let tar = builder.into_inner().unwrap();
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    z.write_all(&tar).unwrap();
    let mut bytes = b"ANDROID BACKUP\n5\n1\nnone\n".to_vec();
    bytes.extend(z.finish().unwrap());
    fs::write(out, bytes).unwrap();
}

#[test]
fn appdetails_hostile_archived_names_are_refused() {
    require_tools();
    let tmp = tempfile::tempdir().unwrap();
    let a = phone_for(tmp.path(), 10100, 0, &[]);
    a.tool("pm", &["grant", NOTES, CAMERA], None);
    let ab = tmp.path().join("notes.ab");
    backup_with_stderr(&a, &ab, &[]);
    let hostile = tmp.path().join("hostile.ab");
    with_details(&ab, &hostile, &|v| {
        let perms = v["Permissions"].as_array_mut().unwrap();
        for name in ["--user", "android.permission.CAMERA;reboot", "$(reboot)", "-g", "1234"] {
            perms.push(serde_json::json!({"Name": name, "UserSet": true, "UserFixed": true}));
        }
        v["AppOps"] = serde_json::json!([
            {"Op": "--uid", "Mode": "allow", "Uid": false},
            {"Op": "SYSTEM_ALERT_WINDOW com.evil", "Mode": "allow", "Uid": false},
            {"Op": "WRITE_SETTINGS", "Mode": "allow", "Uid": false},
        ]);
    });
    let b = Phone::new(10250, 33, "arm64-v8a");
    let (r, _) = recover(&b, &hostile, &[], 0);
    let app = &r["Apps"][0];
    assert_eq!(app["Status"], "RECOVERED", "the data is restored, the names refused: {app}");
    let warnings = app["Warnings"].to_string();
    assert!(warnings.contains("refused") && warnings.contains("--user"), "{warnings}");
    let log = b.log();
    // Only names of Android's form, only to this package, each one argument.
    for line in
        log.lines().filter(|l| l.starts_with("pm grant") || l.starts_with("pm set-perm") || l.starts_with("appops set"))
    {
        assert!(line.contains(&format!(" {NOTES} ")), "{line}");
        assert_eq!(line.matches("--user").count(), 1, "{line}");
        assert!(
            !line.contains("reboot") && !line.contains("-g ") && !line.contains("1234") && !line.contains("evil"),
            "{line}"
        );
    }
    assert!(log.contains(&format!("pm grant --user 0 {NOTES} {CAMERA}")), "{log}");
    assert!(log.contains(&format!("appops set --user 0 {NOTES} WRITE_SETTINGS allow")), "{log}");

    // Details that name another package grant nothing at all.
    let other = tmp.path().join("other.ab");
    with_details(&ab, &other, &|v| v["Package"] = serde_json::json!("com.evil.app"));
    let c = Phone::new(10300, 33, "arm64-v8a");
    let (r, _) = recover(&c, &other, &[], 0);
    assert_eq!(r["Apps"][0]["Status"], "RECOVERED");
    assert!(r["Apps"][0]["Warnings"].to_string().contains("com.evil.app"));
    assert!(!c.log().contains("pm grant") && !c.log().contains("appops set"), "{}", c.log());

    // Details that are not JSON of the right shape: a warning, the app still recovered.
    let broken = tmp.path().join("broken.ab");
    with_details(&ab, &broken, &|v| v["AppOps"] = serde_json::json!([{"Op": "X", "Mode": "root"}]));
    let d = Phone::new(10400, 33, "arm64-v8a");
    let (r, _) = recover(&d, &broken, &[], 0);
    assert_eq!(r["Apps"][0]["Status"], "RECOVERED");
    assert!(r["Apps"][0]["Warnings"].to_string().contains("details"), "{}", r["Apps"][0]);
    assert!(!d.log().contains("pm grant"), "{}", d.log());
}
