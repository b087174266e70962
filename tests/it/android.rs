//! App backups (`backup-app`) and recoveries (`recover-app`) through the real binary, against
//! fake phones: temp roots driven by the fake Android tools in `support/fakeroid/` (pm, am,
//! getprop, restorecon, chcon), which keep their state and a log of every call in
//! `ROOT/.fakeroid/`.

use std::fs;
use std::os::unix::fs::{symlink, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::support::{cpbackup, json, run, stderr};

pub(crate) const NOTES: &str = "com.example.notes";

pub(crate) fn fakeroid_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/support/fakeroid")
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

pub(crate) fn path_env() -> String {
    format!("{}:{}", fakeroid_dir().display(), std::env::var("PATH").unwrap_or_default())
}

pub(crate) fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// One fake phone: its root, its props, the uid its next fresh install gets.
pub(crate) struct Phone {
    _tmp: tempfile::TempDir,
    pub(crate) root: PathBuf,
}

impl Phone {
    pub(crate) fn new(first_uid: u32, sdk: u32, abilist: &str) -> Phone {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("phone");
        for d in ["data/data", "data/user", "data/user_de/0", "data/local/tmp", "data/system", ".fakeroid"] {
            fs::create_dir_all(root.join(d)).unwrap();
        }
        symlink("/data/data", root.join("data/user/0")).unwrap();
        fs::write(
            root.join(".fakeroid/props"),
            format!(
                "ro.build.version.sdk={sdk}\nro.product.cpu.abilist={abilist}\nro.product.cpu.abi={}\nro.build.fingerprint=fake/phone/{first_uid}\n",
                abilist.split(',').next().unwrap()
            ),
        )
        .unwrap();
        fs::write(root.join(".fakeroid/next_uid"), first_uid.to_string()).unwrap();
        fs::write(root.join("data/system/packages.list"), "").unwrap();
        Phone { _tmp: tmp, root }
    }

    pub(crate) fn p(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    pub(crate) fn cpbackup(&self) -> Command {
        let mut c = cpbackup();
        c.env("PATH", path_env()).env("FAKEROID_ROOT", &self.root).arg("-v");
        c
    }

    /// Run a fake tool directly (to set the phone up), returning its stdout.
    pub(crate) fn tool(&self, tool: &str, args: &[&str], stdin: Option<&Path>) -> String {
        let mut c = Command::new(fakeroid_dir().join(tool));
        c.args(args).env("FAKEROID_ROOT", &self.root).stdin(match stdin {
            Some(p) => Stdio::from(fs::File::open(p).unwrap()),
            None => Stdio::null(),
        });
        let out = c.output().unwrap();
        assert!(out.status.success(), "{tool} {args:?}: {}", String::from_utf8_lossy(&out.stdout));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Install APKs through the fake pm's session commands, as a user would.
    pub(crate) fn install(&self, apks: &[&Path]) {
        self.install_for(0, apks)
    }

    /// The same, for an Android user (`pm install-create --user N`).
    pub(crate) fn install_for(&self, user: u32, apks: &[&Path]) {
        let total: u64 = apks.iter().map(|a| fs::metadata(a).unwrap().len()).sum();
        let mut create = vec!["install-create".to_string()];
        if user != 0 {
            create.extend(["--user".to_string(), user.to_string()]);
        }
        create.extend(["-r", "-t", "-S"].map(String::from));
        create.push(total.to_string());
        let create: Vec<&str> = create.iter().map(String::as_str).collect();
        let out = self.tool("pm", &create, None);
        let sid = out.split('[').nth(1).unwrap().trim().trim_end_matches(']').to_string();
        for a in apks {
            let size = fs::metadata(a).unwrap().len().to_string();
            let name = a.file_name().unwrap().to_str().unwrap();
            self.tool("pm", &["install-write", "-S", &size, &sid, name, "-"], Some(a));
        }
        assert_eq!(self.tool("pm", &["install-commit", &sid], None).trim(), "Success");
        self.clear_log();
    }

    pub(crate) fn log(&self) -> String {
        fs::read_to_string(self.p(".fakeroid/log")).unwrap_or_default()
    }

    pub(crate) fn clear_log(&self) {
        let _ = fs::remove_file(self.p(".fakeroid/log"));
    }

    pub(crate) fn fail(&self, name: &str, line: &str) {
        fs::create_dir_all(self.p(".fakeroid/fail")).unwrap();
        fs::write(self.p(".fakeroid/fail").join(name), format!("{line}\n")).unwrap();
    }

    /// APK bytes pm received in install-write, by name (over all sessions).
    fn received(&self, name: &str) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        if let Ok(rd) = fs::read_dir(self.p(".fakeroid/received")) {
            for s in rd {
                let f = s.unwrap().path().join(name);
                if f.exists() {
                    out.push(fs::read(f).unwrap());
                }
            }
        }
        out
    }
}

/// A test APK: a zip whose AndroidManifest.xml is the plain text the fake pm reads, with
/// native code for `abi`, v1-signed (META-INF/CERT.RSA, PKCS#7 by openssl) with a fresh
/// self-signed certificate. Returns the APK and the certificate's DER.
fn build_apk(dir: &Path, package: &str, version: u32, abi: &str) -> (PathBuf, Vec<u8>) {
    build_apk_with(dir, package, version, abi, &[])
}

/// `build_apk` for an app whose manifest asks for `permissions` (`uses-permission=` lines, which
/// the fake pm records and `pm grant` checks).
pub(crate) fn build_apk_with(
    dir: &Path,
    package: &str,
    version: u32,
    abi: &str,
    permissions: &[&str],
) -> (PathBuf, Vec<u8>) {
    let work = dir.join(format!("apk-src-{package}"));
    fs::create_dir_all(work.join("META-INF")).unwrap();
    fs::create_dir_all(work.join(format!("lib/{abi}"))).unwrap();
    let uses: String = permissions.iter().map(|p| format!("uses-permission={p}\n")).collect();
    fs::write(work.join("AndroidManifest.xml"), format!("package={package}\nversionCode={version}\n{uses}")).unwrap();
    fs::write(work.join("classes.dex"), format!("dex for {package}\n").repeat(200)).unwrap();
    fs::write(work.join(format!("lib/{abi}/libnative.so")), b"\x7fELF fake").unwrap();
    fs::write(work.join("META-INF/MANIFEST.MF"), "Manifest-Version: 1.0\nCreated-By: cpbackup tests\n").unwrap();
    let sh = |cmd: &str| {
        let st = Command::new("sh").arg("-c").arg(cmd).current_dir(&work).status().unwrap();
        assert!(st.success(), "{cmd}");
    };
    sh("openssl req -x509 -newkey rsa:2048 -nodes -keyout key.pem -out cert.pem -subj /CN=cpbackup-test -days 3650 2>/dev/null");
    sh("openssl smime -sign -binary -noattr -in META-INF/MANIFEST.MF -signer cert.pem -inkey key.pem -outform DER -out META-INF/CERT.RSA");
    sh("openssl x509 -in cert.pem -outform DER -out cert.der");
    let apk = dir.join(format!("{package}-base.apk"));
    sh(&format!(
        "zip -qX {} AndroidManifest.xml classes.dex lib/{abi}/libnative.so META-INF/MANIFEST.MF META-INF/CERT.RSA",
        apk.display()
    ));
    let der = fs::read(work.join("cert.der")).unwrap();
    let renamed = dir.join(format!("{package}/base.apk"));
    fs::create_dir_all(renamed.parent().unwrap()).unwrap();
    fs::rename(&apk, &renamed).unwrap();
    (renamed, der)
}

pub(crate) fn build_split(dir: &Path, package: &str, name: &str) -> PathBuf {
    let work = dir.join(format!("split-src-{package}-{name}"));
    fs::create_dir_all(&work).unwrap();
    fs::write(work.join("AndroidManifest.xml"), format!("split={name}\n")).unwrap();
    fs::write(work.join("resources.arsc"), "xxhdpi resources\n".repeat(50)).unwrap();
    let apk = dir.join(format!("{package}/{name}"));
    let st = Command::new("zip")
        .arg("-qX")
        .arg(&apk)
        .arg("AndroidManifest.xml")
        .arg("resources.arsc")
        .current_dir(&work)
        .status()
        .unwrap();
    assert!(st.success());
    apk
}

/// The tools that build test APKs; `.ci/run` installs them, and a test fails without them.
pub(crate) fn require_tools() {
    crate::support::require(&["openssl", "zip", "unzip"]);
}

/// Phone A with NOTES installed (base + one split) and data in every area.
pub(crate) fn phone_with_notes(tmp: &Path) -> (Phone, PathBuf, PathBuf, Vec<u8>) {
    let a = Phone::new(10100, 33, "arm64-v8a,armeabi-v7a,armeabi");
    let (base, der) = build_apk(tmp, NOTES, 42, "arm64-v8a");
    let split = build_split(tmp, NOTES, "split_config.xxhdpi.apk");
    a.install(&[&base, &split]);
    let ce = a.p("data/data/com.example.notes");
    fs::create_dir_all(ce.join("files/sub")).unwrap();
    fs::create_dir_all(ce.join("databases")).unwrap();
    fs::create_dir_all(ce.join("no_backup")).unwrap();
    fs::write(ce.join("files/sub/note.txt"), "remember the milk\n").unwrap();
    fs::write(ce.join("files/big.bin"), vec![7u8; 300_000]).unwrap();
    fs::write(ce.join("databases/notes.db"), "SQLite format 3\0...").unwrap();
    fs::write(ce.join("cache/thumb.bin"), "cached\n").unwrap();
    fs::write(ce.join("code_cache/jit.bin"), "jit\n").unwrap();
    fs::write(ce.join("no_backup/token"), "secret\n").unwrap();
    let long = ce.join(format!("files/{}", "long-directory-name/".repeat(8)));
    fs::create_dir_all(&long).unwrap();
    fs::write(long.join("deep-file-with-a-long-name.txt"), "deep\n").unwrap();
    symlink("/data/app/whatever/lib/arm64", ce.join("lib")).unwrap();
    symlink("note.txt", ce.join("files/sub/link-to-note")).unwrap();
    fs::write(a.p("data/user_de/0/com.example.notes/de.txt"), "device protected\n").unwrap();
    let ext = a.p("data/media/0/Android/data/com.example.notes/files");
    fs::create_dir_all(&ext).unwrap();
    fs::write(ext.join("export.txt"), "external\n").unwrap();
    (a, base, split, der)
}

fn backup(phone: &Phone, out: &Path, apps: &[&str], extra: &[&str], code: i32) -> serde_json::Value {
    let mut c = phone.cpbackup();
    c.arg("backup-app").arg("--to").arg(out).arg("--root").arg(&phone.root).arg("--json");
    for a in apps {
        c.arg("--app").arg(a);
    }
    c.args(extra);
    let o = run(&mut c, code);
    if code == 0 {
        json(&o)
    } else {
        serde_json::Value::Null
    }
}

pub(crate) fn recover(phone: &Phone, from: &Path, extra: &[&str], code: i32) -> (serde_json::Value, String) {
    let mut c = phone.cpbackup();
    c.arg("recover-app").arg("--from").arg(from).arg("--root").arg(&phone.root).arg("--json").args(extra);
    let o = run(&mut c, code);
    let v = if o.stdout.is_empty() { serde_json::Value::Null } else { json(&o) };
    (v, stderr(&o))
}

/// The raw tar inside an `.ab` we wrote, by the shell recipe.
pub(crate) fn ab_tar(ab: &Path) -> Vec<u8> {
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!("dd if='{}' bs=24 skip=1 status=none | zlib-flate -uncompress", ab.display()))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}

/// (typeflag, name) of every header block, walking the raw tar.
fn raw_headers(tar: &[u8]) -> Vec<(u8, String)> {
    let mut out = Vec::new();
    let mut i = 0;
    while i + 512 <= tar.len() {
        let h = &tar[i..i + 512];
        if h.iter().all(|b| *b == 0) {
            break;
        }
        let size_field =
            String::from_utf8_lossy(&h[124..136]).trim_matches(|c: char| c == '\0' || c == ' ').to_string();
        assert!(size_field.chars().all(|c| ('0'..='7').contains(&c)), "size field is not octal: {size_field:?}");
        let size = u64::from_str_radix(&size_field, 8).unwrap_or(0) as usize;
        let name = String::from_utf8_lossy(&h[..100]).trim_end_matches('\0').to_string();
        let prefix = String::from_utf8_lossy(&h[345..500]).trim_end_matches('\0').to_string();
        let name = if prefix.is_empty() { name } else { format!("{prefix}/{name}") };
        out.push((h[156], name));
        i += 512 + size.div_ceil(512) * 512;
    }
    out
}

#[test]
fn android_app_backup_recovers_onto_another_phone() {
    require_tools();
    let tmp = tempfile::tempdir().unwrap();
    let (a, base, split, der) = phone_with_notes(tmp.path());
    let ab = tmp.path().join("notes.ab");
    let m = backup(&a, &ab, &[NOTES], &[], 0);
    assert_eq!(m["Status"], "AVAILABLE");
    assert_eq!(m["SourceAppInfoList"], serde_json::json!([NOTES]));
    assert_eq!(m["Format"], "ab");
    // The app was stopped before its data was read.
    assert!(a.log().contains(&format!("am force-stop --user 0 {NOTES}")), "{}", a.log());
    // The manifest beside the archive records the archive's SHA-256.
    let side: serde_json::Value =
        serde_json::from_slice(&fs::read(tmp.path().join("notes.ab.manifest.json")).unwrap()).unwrap();
    assert_eq!(side["Sha256"], m["Sha256"]);

    // _manifest: version, package, versionCode, SDK, installer, has-APK, signatures (the v1 cert).
    let tar = ab_tar(&ab);
    let mut archive = tar::Archive::new(&tar[..]);
    let mut names = Vec::new();
    let mut manifest = String::new();
    for e in archive.entries().unwrap() {
        let mut e = e.unwrap();
        let name = e.path().unwrap().to_string_lossy().into_owned();
        if name.ends_with("/_manifest") {
            std::io::Read::read_to_string(&mut e, &mut manifest).unwrap();
            assert_eq!(e.header().mtime().unwrap(), 0);
        }
        names.push(name);
    }
    let lines: Vec<&str> = manifest.lines().collect();
    assert_eq!(&lines[..7], &["1", NOTES, "42", "33", "", "1", "1"], "{manifest}");
    assert_eq!(lines[7], hex::encode(&der), "the signature line is the certificate's DER in lowercase hex");
    let p = |s: &str| format!("apps/{NOTES}/{s}");
    assert_eq!(names[0], p("_manifest"));
    assert_eq!(names[1], p("a/base.apk"));
    assert_eq!(names[2], p("a/split_config.xxhdpi.apk"));
    for want in
        ["r/files/sub/note.txt", "r/databases/notes.db", "r/cache/thumb.bin", "d_r/de.txt", "ef/files/export.txt"]
    {
        assert!(names.contains(&p(want)), "{want} missing from {names:?}");
    }
    for unwanted in ["r/lib", "r/code_cache", "r/no_backup", "r/files/sub/link-to-note"] {
        assert!(
            !names.iter().any(|n| n == &p(unwanted) || n.starts_with(&format!("{}/", p(unwanted)))),
            "{unwanted} in {names:?}"
        );
    }

    // Onto phone B: a different uid, a fresh install, the data swapped in.
    let b = Phone::new(10250, 33, "arm64-v8a,armeabi-v7a");
    let (r, _) = recover(&b, &ab, &[], 0);
    assert_eq!(r["ChecksumVerified"], true);
    let app = &r["Apps"][0];
    assert_eq!(app["Package"], NOTES);
    assert_eq!(app["Status"], "RECOVERED");
    assert_eq!(app["Uid"], 10250);
    assert_eq!(app["VersionCode"], 42);
    let log = b.log();
    assert!(log.contains("pm install-create --user 0 -r -t -S "), "{log}");
    assert!(log.contains("base.apk -") && log.contains("split_config.xxhdpi.apk -"), "{log}");
    assert!(!log.contains("pm uninstall"), "nothing to uninstall on a fresh phone: {log}");
    // What pm received is byte for byte what phone A had installed.
    assert_eq!(b.received("base.apk"), vec![fs::read(&base).unwrap()]);
    assert_eq!(b.received("split_config.xxhdpi.apk"), vec![fs::read(&split).unwrap()]);

    let ce = b.p("data/data/com.example.notes");
    assert_eq!(fs::read_to_string(ce.join("files/sub/note.txt")).unwrap(), "remember the milk\n");
    assert_eq!(fs::read(ce.join("files/big.bin")).unwrap(), vec![7u8; 300_000]);
    assert_eq!(fs::read_to_string(ce.join("cache/thumb.bin")).unwrap(), "cached\n");
    let long = ce.join(format!("files/{}deep-file-with-a-long-name.txt", "long-directory-name/".repeat(8)));
    assert_eq!(fs::read_to_string(long).unwrap(), "deep\n");
    assert!(!ce.join("no_backup").exists());
    assert!(ce.join("code_cache").is_dir(), "the fresh install's code_cache is kept");
    assert_eq!(fs::read_to_string(b.p("data/user_de/0/com.example.notes/de.txt")).unwrap(), "device protected\n");
    assert_eq!(
        fs::read_to_string(b.p("data/media/0/Android/data/com.example.notes/files/export.txt")).unwrap(),
        "external\n"
    );
    // No staging left behind.
    for dir in ["data/data", "data/user_de/0", "data/local/tmp", "data/media/0/Android/data"] {
        for e in fs::read_dir(b.p(dir)).unwrap() {
            let n = e.unwrap().file_name().to_string_lossy().into_owned();
            assert!(!n.starts_with(".cpbackup"), "{dir}/{n} left behind");
        }
    }
    if is_root() {
        let owner = |p: &Path| {
            let m = fs::symlink_metadata(p).unwrap();
            (m.uid(), m.gid())
        };
        assert_eq!(owner(&ce), (10250, 10250));
        assert_eq!(owner(&ce.join("files/sub/note.txt")), (10250, 10250));
        assert_eq!(owner(&ce.join("databases")), (10250, 10250));
        assert_eq!(owner(&ce.join("cache")), (10250, 20250), "cache gets the cache gid");
        assert_eq!(owner(&ce.join("cache/thumb.bin")), (10250, 20250));
        assert_eq!(owner(&ce.join("code_cache")), (10250, 20250));
        assert_eq!(owner(&b.p("data/user_de/0/com.example.notes/de.txt")), (10250, 10250));
        assert_eq!(fs::metadata(&ce).unwrap().mode() & 0o777, 0o700, "the fresh data dir's mode");
    }
    // Relabelled from the policy.
    assert!(log.contains(&format!("restorecon -R {}", ce.display())), "{log}");
    assert!(log.contains(&format!("restorecon -R {}", b.p("data/user_de/0/com.example.notes").display())), "{log}");
}

#[test]
fn android_app_ab_passes_the_shell_recipe_with_only_android_types() {
    require_tools();
    crate::support::require(&["zlib-flate"]);
    let tmp = tempfile::tempdir().unwrap();
    let (a, _, _, _) = phone_with_notes(tmp.path());
    let ab = tmp.path().join("notes.ab");
    backup(&a, &ab, &[NOTES], &["--no-cache", "--no-stop"], 0);
    assert!(!a.log().contains("am force-stop"), "--no-stop: {}", a.log());
    let raw = fs::read(&ab).unwrap();
    assert_eq!(&raw[..24], b"ANDROID BACKUP\n5\n1\nnone\n");
    assert_eq!(raw[24], 0x78, "a zlib stream follows the header");
    let listing = Command::new("sh")
        .arg("-c")
        .arg(format!("dd if='{}' bs=24 skip=1 status=none | zlib-flate -uncompress | tar -t", ab.display()))
        .output()
        .unwrap();
    assert!(listing.status.success(), "{}", String::from_utf8_lossy(&listing.stderr));
    let listing = String::from_utf8(listing.stdout).unwrap();
    assert_eq!(listing.lines().next(), Some("apps/com.example.notes/_manifest"), "{listing}");
    assert!(!listing.contains("/r/cache"), "--no-cache: {listing}");
    let headers = raw_headers(&ab_tar(&ab));
    let types: std::collections::BTreeSet<u8> = headers.iter().map(|(t, _)| *t).collect();
    assert!(
        types.iter().all(|t| [b'0', b'5', b'x'].contains(t)),
        "types {:?}",
        types.iter().map(|t| *t as char).collect::<Vec<_>>()
    );
    assert!(
        types.contains(&b'x') || headers.iter().any(|(_, n)| n.len() > 100),
        "the long path needs a pax header or the prefix field"
    );
    // Directories without trailing slash; no domain-root entries (Android's reader rejects `apps/PKG/r`).
    for (t, n) in &headers {
        if *t == b'5' {
            assert!(!n.ends_with('/'), "{n}");
            assert!(n.split('/').count() > 3, "domain root entry {n}");
        }
    }
    // The pax headers carry both path= and size=.
    let tar = ab_tar(&ab);
    let mut i = 0;
    while i + 512 <= tar.len() {
        let h = &tar[i..i + 512];
        if h.iter().all(|b| *b == 0) {
            break;
        }
        let size = u64::from_str_radix(String::from_utf8_lossy(&h[124..135]).trim_matches('\0'), 8).unwrap() as usize;
        if h[156] == b'x' {
            let body = String::from_utf8_lossy(&tar[i + 512..i + 512 + size]);
            assert!(body.contains(" path=") && body.contains(" size="), "{body}");
        }
        i += 512 + size.div_ceil(512) * 512;
    }
}

#[test]
fn android_unknown_packages_give_part_backup_or_failure() {
    require_tools();
    let tmp = tempfile::tempdir().unwrap();
    let (a, _, _, _) = phone_with_notes(tmp.path());
    let ab = tmp.path().join("part.ab");
    let m = backup(&a, &ab, &[NOTES, "com.example.missing"], &[], 0);
    assert_eq!(m["Status"], "PART_BACKUP_FINISHED");
    assert_eq!(m["SourceAppInfoList"], serde_json::json!([NOTES]));
    assert!(m["Warnings"].to_string().contains("com.example.missing"), "{m}");

    let none = tmp.path().join("none.ab");
    backup(&a, &none, &["com.example.missing", "org.other.missing"], &[], 1);
    let side: serde_json::Value =
        serde_json::from_slice(&fs::read(tmp.path().join("none.ab.manifest.json")).unwrap()).unwrap();
    assert_eq!(side["Status"], "BACKUP_FAILED");
    assert!(side["FailureReason"].as_str().unwrap().contains("not installed"), "{side}");
    assert!(!none.exists(), "no archive under the final name");
}

#[test]
fn android_bad_package_names_never_reach_a_command() {
    let a = Phone::new(10100, 33, "arm64-v8a");
    let tmp = tempfile::tempdir().unwrap();
    for bad in ["com.x;reboot", "../etc", "com..x", "1com.x", "com.x y"] {
        let mut c = a.cpbackup();
        c.args(["backup-app", "--app", bad, "--to"]).arg(tmp.path().join("x.ab")).arg("--root").arg(&a.root);
        let o = run(&mut c, 2);
        assert!(stderr(&o).contains("not a valid Android package name"), "{}", stderr(&o));
        let mut c = a.cpbackup();
        c.args(["recover-app", "--app", bad, "--from"]).arg(fixture("adb-backup-v5.ab")).arg("--root").arg(&a.root);
        run(&mut c, 2);
    }
    assert_eq!(a.log(), "", "no tool was called");
}

#[test]
fn android_recover_replaces_an_installed_copy() {
    require_tools();
    let tmp = tempfile::tempdir().unwrap();
    let (a, _, _, _) = phone_with_notes(tmp.path());
    let ab = tmp.path().join("notes.ab");
    backup(&a, &ab, &[NOTES], &[], 0);

    // Phone B already has another build of the app, with its own data.
    let b = Phone::new(10300, 34, "arm64-v8a");
    let other = tmp.path().join("other");
    fs::create_dir_all(&other).unwrap();
    let (old_base, _) = build_apk(&other, NOTES, 7, "arm64-v8a");
    b.install(&[&old_base]);
    let ce = b.p("data/data/com.example.notes");
    fs::create_dir_all(ce.join("files")).unwrap();
    fs::write(ce.join("files/stale.txt"), "from the old install\n").unwrap();

    let (r, _) = recover(&b, &ab, &[], 0);
    assert_eq!(r["Apps"][0]["Status"], "RECOVERED");
    assert_eq!(r["Apps"][0]["Uninstalled"], true);
    let log = b.log();
    let pos = |s: &str| log.find(s).unwrap_or_else(|| panic!("{s} not in {log}"));
    // pm refuses the update (another signing key), so the installed copy goes first.
    assert!(pos("am force-stop --user 0 com.example.notes") < pos("pm install-create"));
    assert!(pos("pm install-create") < pos("pm uninstall --user 0 com.example.notes"));
    assert!(pos("pm uninstall --user 0 com.example.notes") < log.rfind("pm install-create").unwrap());
    assert!(!ce.join("files/stale.txt").exists(), "the old data is gone, not mixed in");
    assert_eq!(fs::read_to_string(ce.join("files/sub/note.txt")).unwrap(), "remember the milk\n");
    // A reinstall after uninstall gets a new uid; the files follow it.
    let uid = r["Apps"][0]["Uid"].as_u64().unwrap() as u32;
    assert_eq!(uid, 10301);
    if is_root() {
        assert_eq!(fs::metadata(ce.join("files/sub/note.txt")).unwrap().uid(), uid);
        assert_eq!(fs::metadata(ce.join("cache")).unwrap().gid(), uid - 10000 + 20000);
    }

    // The same build again: pm takes it as an update, nothing is uninstalled (so no moment
    // exists where the app's data is gone), and the data is still exchanged whole.
    fs::write(
        ce.join("files/stale.txt"),
        "written since
",
    )
    .unwrap();
    b.clear_log();
    let (r, _) = recover(&b, &ab, &[], 0);
    assert_eq!(r["Apps"][0]["Status"], "RECOVERED");
    assert_eq!(r["Apps"][0]["Uninstalled"], false);
    assert!(!b.log().contains("pm uninstall"), "{}", b.log());
    assert_eq!(r["Apps"][0]["Uid"].as_u64().unwrap() as u32, uid, "an update keeps the uid");
    assert!(!ce.join("files/stale.txt").exists(), "the data is the archive's, not mixed");
    assert_eq!(fs::read_to_string(ce.join("files/sub/note.txt")).unwrap(), "remember the milk\n");
}

#[test]
fn android_unsuitable_app_is_refused_before_anything_changes() {
    require_tools();
    let tmp = tempfile::tempdir().unwrap();
    let (a, _, _, _) = phone_with_notes(tmp.path());
    let ab = tmp.path().join("notes.ab");
    backup(&a, &ab, &[NOTES], &[], 0);

    for (sdk, abis, why) in [(30, "arm64-v8a", "SDK 33"), (33, "x86_64,x86", "native code for arm64-v8a")] {
        let b = Phone::new(10400, sdk, abis);
        let other = tmp.path().join(format!("old-{sdk}"));
        fs::create_dir_all(&other).unwrap();
        let (old_base, _) = build_apk(&other, NOTES, 7, "x86_64");
        b.install(&[&old_base]);
        let ce = b.p("data/data/com.example.notes");
        fs::write(ce.join("keep.txt"), "untouched\n").unwrap();
        let before = fs::read_to_string(b.p(".fakeroid/packages/com.example.notes")).unwrap();

        let (r, _) = recover(&b, &ab, &[], 1);
        let app = &r["Apps"][0];
        assert_eq!(app["Status"], "FAILED");
        assert_eq!(app["Step"], "check");
        assert!(
            app["Error"].as_str().unwrap().contains(why) && app["Error"].as_str().unwrap().contains("--force"),
            "{app}"
        );
        assert_eq!(app["Uninstalled"], false);
        let log = b.log();
        assert!(
            !log.contains("pm uninstall") && !log.contains("install-create") && !log.contains("force-stop"),
            "{log}"
        );
        assert_eq!(fs::read_to_string(ce.join("keep.txt")).unwrap(), "untouched\n");
        assert_eq!(fs::read_to_string(b.p(".fakeroid/packages/com.example.notes")).unwrap(), before);

        let (r, _) = recover(&b, &ab, &["--force"], 0);
        assert_eq!(r["Apps"][0]["Status"], "RECOVERED");
    }
}

#[test]
fn android_relabel_falls_back_to_chcon_with_the_fresh_context() {
    require_tools();
    let tmp = tempfile::tempdir().unwrap();
    let (a, _, _, _) = phone_with_notes(tmp.path());
    let ab = tmp.path().join("notes.ab");
    backup(&a, &ab, &[NOTES], &[], 0);
    let b = Phone::new(10250, 33, "arm64-v8a");
    b.fail("restorecon", "");
    let (r, _) = recover(&b, &ab, &[], 0);
    let app = &r["Apps"][0];
    assert_eq!(app["Status"], "RECOVERED");
    let ce = b.p("data/data/com.example.notes");
    // The fake pm labels fresh data dirs like installd: app_data_file with the uid's categories.
    if cpbackup_context(&ce).is_some() {
        let ctx = "u:object_r:app_data_file:s0:c250,c256,c512,c768";
        assert!(b.log().contains(&format!("chcon -R -h {ctx} {}", ce.display())), "{}", b.log());
        assert!(app["Relabel"].to_string().contains(&format!("r: chcon {ctx}")), "{app}");
        assert_eq!(cpbackup_context(&ce).as_deref(), Some(ctx));
    }
}

pub(crate) fn cpbackup_context(p: &Path) -> Option<String> {
    let out = Command::new("python3")
        .arg("-c")
        .arg("import os,sys; print(os.getxattr(sys.argv[1], 'security.selinux', follow_symlinks=False).rstrip(b'\\0').decode())")
        .arg(p)
        .output()
        .ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

#[test]
fn android_one_failing_package_does_not_stop_the_others() {
    require_tools();
    let tmp = tempfile::tempdir().unwrap();
    let (a, _, _, _) = phone_with_notes(tmp.path());
    let (other, _) = build_apk(tmp.path(), "org.example.maps", 3, "arm64-v8a");
    a.install(&[&other]);
    fs::write(a.p("data/data/org.example.maps/files.txt"), "maps\n").unwrap();
    let ab = tmp.path().join("two.ab");
    let m = backup(&a, &ab, &[NOTES, "org.example.maps"], &[], 0);
    assert_eq!(m["SourceAppInfoList"], serde_json::json!([NOTES, "org.example.maps"]));

    let b = Phone::new(10500, 33, "arm64-v8a");
    b.fail("pm-install-commit-com.example.notes", "Failure [INSTALL_FAILED_VERIFICATION_FAILURE]");
    let (r, err) = recover(&b, &ab, &[], 1);
    let apps = r["Apps"].as_array().unwrap();
    assert_eq!(apps.len(), 2);
    assert_eq!(apps[0]["Package"], NOTES);
    assert_eq!(apps[0]["Status"], "FAILED");
    assert_eq!(apps[0]["Step"], "install");
    assert!(apps[0]["Error"].as_str().unwrap().contains("Failure [INSTALL_FAILED_VERIFICATION_FAILURE]"), "{r}");
    assert_eq!(apps[1]["Status"], "RECOVERED");
    assert_eq!(fs::read_to_string(b.p("data/data/org.example.maps/files.txt")).unwrap(), "maps\n");
    assert!(err.contains("not recovered: com.example.notes"), "{err}");
    assert!(b.log().contains("pm install-abandon"), "the failed session is abandoned: {}", b.log());

    // --app picks one package out of the archive; a package it does not hold is a failure.
    let c = Phone::new(10600, 33, "arm64-v8a");
    let (r, _) = recover(&c, &ab, &["--app", "org.example.maps", "--app", "org.example.absent"], 1);
    let apps = r["Apps"].as_array().unwrap();
    assert_eq!(apps.len(), 2);
    assert_eq!(apps[0]["Package"], "org.example.maps");
    assert_eq!(apps[0]["Status"], "RECOVERED");
    assert_eq!(apps[1]["Package"], "org.example.absent");
    assert_eq!(apps[1]["Status"], "FAILED");
    assert!(!c.p("data/data/com.example.notes").exists());
}

#[test]
fn android_corrupt_archive_changes_nothing() {
    require_tools();
    let tmp = tempfile::tempdir().unwrap();
    let (a, _, _, _) = phone_with_notes(tmp.path());
    let ab = tmp.path().join("notes.ab");
    backup(&a, &ab, &[NOTES], &[], 0);
    // Same length, one byte changed deep in the stream: the SHA-256 no longer matches.
    let mut bytes = fs::read(&ab).unwrap();
    let n = bytes.len();
    bytes[n - 10] ^= 0x01;
    fs::write(&ab, &bytes).unwrap();
    let b = Phone::new(10250, 33, "arm64-v8a");
    let mut c = b.cpbackup();
    c.arg("recover-app").arg("--from").arg(&ab).arg("--root").arg(&b.root);
    let o = c.output().unwrap();
    assert_ne!(o.status.code(), Some(0));
    let log = b.log();
    assert!(!log.contains("pm install") && !log.contains("pm uninstall"), "{log}");
    assert!(!b.p("data/data/com.example.notes").exists());
    for e in fs::read_dir(b.p("data/local/tmp")).unwrap() {
        panic!("staging left behind: {:?}", e.unwrap().path());
    }
}

#[test]
fn android_recovers_independently_built_adb_backups() {
    crate::support::require(&["unzip"]);
    for (name, container) in
        [("adb-backup-v5.ab", "ab (version 5, compressed)"), ("adb-backup-v1-plain.ab", "ab (version 1, uncompressed)")]
    {
        let b = Phone::new(10700, 33, "arm64-v8a,armeabi-v7a");
        let (r, _) = recover(&b, &fixture(name), &[], 0);
        assert_eq!(r["Container"], container);
        assert_eq!(r["ChecksumVerified"], false, "a bare .ab has no manifest beside it");
        let app = &r["Apps"][0];
        assert_eq!(app["Package"], "org.fixture.app");
        assert_eq!(app["Status"], "RECOVERED", "{r}");
        let ce = b.p("data/data/org.fixture.app");
        assert_eq!(fs::read_to_string(ce.join("files/notes.txt")).unwrap(), "my notes\n");
        assert_eq!(fs::read_to_string(ce.join("files/sub/inner.txt")).unwrap(), "inner\n");
        let deep = ce.join(format!("files/{}/leaf.txt", ["deep-directory-name"; 6].join("/")));
        assert_eq!(fs::read_to_string(deep).unwrap(), "deep\n");
        assert!(fs::read(ce.join("databases/app.db")).unwrap().starts_with(b"SQLite format 3"));
        assert!(fs::read_to_string(ce.join("shared_prefs/prefs.xml")).unwrap().contains("<map>"));
        assert_eq!(fs::read_to_string(ce.join("cache/cached.bin")).unwrap(), "cache\n");
        assert_eq!(
            fs::read_to_string(b.p("data/user_de/0/org.fixture.app/files/de.txt")).unwrap(),
            "device protected\n"
        );
        assert_eq!(fs::read_to_string(b.p("data/media/0/Android/data/org.fixture.app/ext.txt")).unwrap(), "external\n");
        let warnings = r["Warnings"].to_string();
        assert!(warnings.contains("key-value") && warnings.contains("widget"), "{warnings}");
        if is_root() {
            assert_eq!(fs::metadata(ce.join("files/notes.txt")).unwrap().uid(), 10700);
            assert_eq!(fs::metadata(ce.join("cache/cached.bin")).unwrap().gid(), 20700);
        }
        assert!(b.log().contains("pm install-write -S "), "{}", b.log());
    }
}

/// Run the independent implementation of Android's encrypted `.ab` (tests/fixtures/ab_crypt.py,
/// Python's `cryptography`); its exit code.
fn ab_crypt(args: &[&str]) -> i32 {
    crate::support::require(&["python3"]);
    let out = Command::new("python3").arg(fixture("ab_crypt.py")).args(args).output().unwrap();
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("ModuleNotFoundError"),
        "the test needs Python's cryptography package (.ci/run installs it): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.status.code().unwrap_or(-1)
}

fn passphrase_file(dir: &Path, pass: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let p = dir.join(format!("pass-{}", pass.len()));
    fs::write(&p, format!("{pass}\n")).unwrap();
    fs::set_permissions(&p, fs::Permissions::from_mode(0o600)).unwrap();
    p
}

#[test]
fn android_encrypted_ab_is_what_adb_writes_both_ways() {
    require_tools();
    let tmp = tempfile::tempdir().unwrap();
    let (a, _, _, _) = phone_with_notes(tmp.path());
    let pass = passphrase_file(tmp.path(), "correct horse battery");
    let wrong = passphrase_file(tmp.path(), "incorrect horse");

    // cpbackup writes it; the independent implementation opens it (and refuses a wrong password);
    // Android's own recipe then lists the tar.
    let ab = tmp.path().join("notes.ab");
    let m = backup(&a, &ab, &[NOTES], &["--passphrase-file", pass.to_str().unwrap()], 0);
    assert_eq!(m["Encryption"], serde_json::json!({"Format": "android-aes-256", "Recipients": [], "Passphrase": true}));
    let head = fs::read(&ab).unwrap();
    assert!(head.starts_with(b"ANDROID BACKUP\n5\n1\nAES-256\n"), "{:?}", String::from_utf8_lossy(&head[..40]));
    let plain = tmp.path().join("notes-plain.ab");
    assert_eq!(ab_crypt(&["decrypt", ab.to_str().unwrap(), plain.to_str().unwrap(), "incorrect horse"]), 3);
    assert_eq!(ab_crypt(&["decrypt", ab.to_str().unwrap(), plain.to_str().unwrap(), "correct horse battery"]), 0);
    let names: Vec<String> = raw_headers(&ab_tar(&plain)).into_iter().map(|(_, n)| n).collect();
    assert!(names.contains(&format!("apps/{NOTES}/r/files/sub/note.txt")), "{names:?}");

    // A wrong passphrase fails the checksum: exit 2, nothing installed or staged.
    let b = Phone::new(10300, 33, "arm64-v8a");
    let (_, err) = recover(&b, &ab, &["--passphrase-file", wrong.to_str().unwrap()], 2);
    assert!(err.contains("does not open with this passphrase") && !err.contains("incorrect horse"), "{err}");
    let (_, err) = recover(&b, &ab, &[], 2);
    assert!(err.contains("--passphrase-file"), "{err}");
    assert!(!b.log().contains("pm install") && !b.p("data/data/com.example.notes").exists());
    assert_eq!(fs::read_dir(b.p("data/local/tmp")).unwrap().count(), 0, "staging left behind");
    // The right one recovers the app.
    let (r, _) = recover(&b, &ab, &["--passphrase-file", pass.to_str().unwrap()], 0);
    assert_eq!(r["Apps"][0]["Status"], "RECOVERED", "{r}");
    assert_eq!(r["Container"], "ab (version 5, compressed, encrypted)");
    assert_eq!(
        fs::read_to_string(b.p("data/data/com.example.notes/files/sub/note.txt")).unwrap(),
        "remember the milk\n"
    );

    // The independent implementation writes them, version 5 and version 1 (whose checksum
    // takes the key bytes as 8-bit chars); cpbackup reads both.
    for (fixture_name, version, container) in [
        ("adb-backup-v5.ab", "5", "ab (version 5, compressed, encrypted)"),
        ("adb-backup-v1-plain.ab", "1", "ab (version 1, uncompressed, encrypted)"),
    ] {
        let sealed = tmp.path().join(format!("sealed-v{version}.ab"));
        let src = fixture(fixture_name);
        assert_eq!(ab_crypt(&["encrypt", src.to_str().unwrap(), sealed.to_str().unwrap(), "correct horse battery"]), 0);
        let c = Phone::new(10700, 33, "arm64-v8a,armeabi-v7a");
        recover(&c, &sealed, &["--passphrase-file", wrong.to_str().unwrap()], 2);
        let (r, _) = recover(&c, &sealed, &["--passphrase-file", pass.to_str().unwrap()], 0);
        assert_eq!(r["Container"], container);
        assert_eq!(r["Apps"][0]["Status"], "RECOVERED", "{r}");
        assert_eq!(fs::read_to_string(c.p("data/data/org.fixture.app/files/notes.txt")).unwrap(), "my notes\n");
    }
}

#[test]
fn android_ab_with_recipients_is_age_over_the_ab() {
    require_tools();
    crate::support::require(&["age", "age-keygen"]);
    let tmp = tempfile::tempdir().unwrap();
    let (a, _, _, _) = phone_with_notes(tmp.path());
    let (key, public) = crate::encryption::keygen(tmp.path(), "owner");
    let out = tmp.path().join("out/");
    fs::create_dir_all(&out).unwrap();
    let m = backup(&a, &out, &[NOTES], &["--recipient", &public, "--name", "notes.ab.age"], 0);
    assert_eq!(m["Encryption"]["Format"], "age");
    let sealed = out.join("notes.ab.age");
    assert!(fs::read(&sealed).unwrap().starts_with(b"age-encryption.org/v1\n"));
    // The age CLI opens it into the plain .ab Android's recipe reads.
    let plain = tmp.path().join("opened.ab");
    let ok = Command::new("age").arg("-d").arg("-i").arg(&key).arg("-o").arg(&plain).arg(&sealed).status().unwrap();
    assert!(ok.success());
    assert!(fs::read(&plain).unwrap().starts_with(b"ANDROID BACKUP\n5\n1\nnone\n"));
    let b = Phone::new(10300, 33, "arm64-v8a");
    let (_, err) = recover(&b, &sealed, &[], 2);
    assert!(err.contains(&public) && err.contains("--identity"), "{err}");
    let (r, _) = recover(&b, &sealed, &["--identity", key.to_str().unwrap()], 0);
    assert_eq!(r["Apps"][0]["Status"], "RECOVERED", "{r}");
    assert_eq!(r["ChecksumVerified"], true);
}
