//! Backups only their owner can read: age over every archive format, locally and through
//! Garage; the age CLI reads what cpbackup writes and cpbackup reads what the CLI writes;
//! tampering, truncation, a wrong key, a garbage stanza and a killed import change nothing;
//! `verify` without a key checks the stored bytes; no key, identity or passphrase reaches a log,
//! a manifest or a record. (Android's own encrypted `.ab` is in `android.rs`.)

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::support::tree::{self, Ignore};
use crate::support::{cpbackup, garage, json, path_str, run, stderr};

/// A key pair made by `age-keygen`: the identity file (0600) and its public key.
pub(crate) fn keygen(dir: &Path, name: &str) -> (PathBuf, String) {
    crate::support::require(&["age-keygen"]);
    let key = dir.join(format!("{name}.key"));
    let out = Command::new("age-keygen").arg("-o").arg(&key).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    fs::set_permissions(&key, fs::Permissions::from_mode(0o600)).unwrap();
    let public = fs::read_to_string(&key)
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("# public key: ").map(str::to_string))
        .expect("age-keygen writes the public key as a comment");
    (key, public)
}

/// A phone root with every kind of entry the archive must carry; the tests take /data/media/0.
fn phone() -> tempfile::TempDir {
    let src = tempfile::tempdir().unwrap();
    tree::full_case_tree(src.path());
    src
}

fn export(root: &Path, to: &str, extra: &[&str]) -> serde_json::Value {
    let mut c = cpbackup();
    c.args(["export", "--root", path_str(root), "--include", "/data/media/0", "--to", to, "--json"]).args(extra);
    json(&run(&mut c, 0))
}

fn import(root: &Path, from: &str, extra: &[&str], code: i32) -> std::process::Output {
    let mut c = cpbackup();
    c.args(["import", "--root", path_str(root), "--from", from, "--json"]).args(extra);
    run(&mut c, code)
}

fn same_media(a: &Path, b: &Path) {
    let ignore = Ignore { xattrs: true, ..Default::default() };
    tree::assert_same(&tree::snapshot(a, "data/media/0"), &tree::snapshot(b, "data/media/0"), ignore);
}

#[test]
fn encryption_age_round_trips_every_format_and_verify_needs_no_key() {
    let src = phone();
    let tmp = tempfile::tempdir().unwrap();
    let (key, public) = keygen(tmp.path(), "owner");
    let (other_key, other) = keygen(tmp.path(), "other");
    for format in ["tar", "tar.zst", "ab"] {
        let out = tmp.path().join(format!("out-{format}/"));
        fs::create_dir_all(&out).unwrap();
        let m =
            export(src.path(), path_str(&out), &["--format", format, "--recipient", &public, "--recipient", &other]);
        // The generated name says what it is; the manifest says for whom, never a key.
        let name = m["BackupFileName"].as_str().unwrap().to_string();
        assert!(name.ends_with(&format!(".{format}.age")), "{name}");
        assert_eq!(
            m["Encryption"],
            serde_json::json!({"Format": "age", "Recipients": [public, other], "Passphrase": false})
        );
        let archive = out.join(&name);
        let bytes = fs::read(&archive).unwrap();
        assert!(bytes.starts_with(b"age-encryption.org/v1\n"));
        assert_eq!(m["ArchiveSize"].as_u64().unwrap(), bytes.len() as u64, "the size is the stored bytes'");

        // Without a key: verify checks the stored bytes against the manifest and says so.
        let v = json(&run(cpbackup().args(["verify", "--from", path_str(&archive), "--json"]), 0));
        assert_eq!((v["ChecksumVerified"].clone(), v["ContentChecked"].clone()), (true.into(), false.into()), "{v}");
        assert!(v["Warnings"].to_string().contains("--identity"), "{v}");
        // With one: the content too.
        let v = json(&run(
            cpbackup().args(["verify", "--from", path_str(&archive), "--json", "--identity", path_str(&other_key)]),
            0,
        ));
        assert_eq!((v["ChecksumVerified"].clone(), v["ContentChecked"].clone()), (true.into(), true.into()), "{v}");
        assert_eq!(v["Entries"], m["EntryCount"]);

        // Import without a key: exit 2 naming the recipients and the flag; nothing created.
        let dst = tempfile::tempdir().unwrap();
        let e = stderr(&import(dst.path(), path_str(&archive), &[], 2));
        assert!(e.contains(&public) && e.contains("--identity"), "{e}");
        assert_eq!(fs::read_dir(dst.path()).unwrap().count(), 0, "an import without a key touched the root");
        // With the key: exactly the tree.
        let r = json(&import(dst.path(), path_str(&archive), &["--identity", path_str(&key)], 0));
        assert_eq!(r["ChecksumVerified"], true);
        same_media(src.path(), dst.path());
    }
}

#[test]
fn encryption_passphrase_round_trip() {
    let src = phone();
    let tmp = tempfile::tempdir().unwrap();
    let pass = tmp.path().join("pass");
    fs::write(&pass, "a passphrase for manual runs\nsecond line ignored\n").unwrap();
    fs::set_permissions(&pass, fs::Permissions::from_mode(0o600)).unwrap();
    let archive = tmp.path().join("x.tar.zst.age");
    let m = export(src.path(), path_str(&archive), &["--passphrase-file", path_str(&pass)]);
    assert_eq!(m["Encryption"], serde_json::json!({"Format": "age", "Recipients": [], "Passphrase": true}));
    let dst = tempfile::tempdir().unwrap();
    let e = stderr(&import(dst.path(), path_str(&archive), &[], 2));
    assert!(e.contains("--passphrase-file"), "{e}");
    let wrong = tmp.path().join("wrong");
    fs::write(&wrong, "not it\n").unwrap();
    fs::set_permissions(&wrong, fs::Permissions::from_mode(0o600)).unwrap();
    // Without the manifest the archive itself must refuse the wrong passphrase.
    fs::remove_file(tmp.path().join("x.tar.zst.age.manifest.json")).unwrap();
    let e = stderr(&import(dst.path(), path_str(&archive), &["--passphrase-file", path_str(&wrong)], 2));
    assert!(e.contains("does not open with this passphrase"), "{e}");
    assert_eq!(fs::read_dir(dst.path()).unwrap().count(), 0);
    import(dst.path(), path_str(&archive), &["--passphrase-file", path_str(&pass)], 0);
    same_media(src.path(), dst.path());
}

#[test]
fn encryption_the_age_cli_reads_ours_and_we_read_its() {
    crate::support::require(&["age", "zstd", "tar"]);
    let src = phone();
    let tmp = tempfile::tempdir().unwrap();
    let (key, public) = keygen(tmp.path(), "owner");
    let archive = tmp.path().join("x.tar.zst.age");
    export(src.path(), path_str(&archive), &["--recipient", &public]);
    // age -d -i key.txt x.tar.zst.age | zstd -d | tar -x
    let by_cli = tempfile::tempdir().unwrap();
    let sh = format!(
        "age -d -i '{}' '{}' | zstd -d | tar --numeric-owner -xpf - -C '{}'",
        key.display(),
        archive.display(),
        by_cli.path().display()
    );
    let out = Command::new("sh").arg("-c").arg(&sh).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let f = "data/media/0/DCIM/photo.jpg";
    if src.path().join(f).exists() {
        assert_eq!(fs::read(src.path().join(f)).unwrap(), fs::read(by_cli.path().join(f)).unwrap());
    }
    let mine = tree::snapshot(src.path(), "data/media/0");
    let theirs = tree::snapshot(by_cli.path(), "data/media/0");
    assert_eq!(mine.len(), theirs.len(), "GNU tar extracted another set of entries");

    // tar | zstd | age -r age1… > y.tar.zst.age, imported by cpbackup (no manifest beside it).
    let made = tmp.path().join("y.tar.zst.age");
    let sh = format!(
        "tar --numeric-owner -C '{}' -cf - data/media/0 | zstd -q | age -r {public} > '{}'",
        src.path().display(),
        made.display()
    );
    let out = Command::new("sh").arg("-c").arg(&sh).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let dst = tempfile::tempdir().unwrap();
    let r = json(&import(dst.path(), path_str(&made), &["--identity", path_str(&key)], 0));
    assert_eq!(r["Container"], "tar.zst");
    assert_eq!(
        fs::read_dir(dst.path().join("data/media/0")).unwrap().count(),
        fs::read_dir(src.path().join("data/media/0")).unwrap().count()
    );
}

#[test]
fn encryption_tampered_truncated_wrong_key_or_garbage_changes_nothing() {
    let src = phone();
    let tmp = tempfile::tempdir().unwrap();
    let (key, public) = keygen(tmp.path(), "owner");
    let (wrong_key, _) = keygen(tmp.path(), "stranger");
    let archive = tmp.path().join("x.tar.zst.age");
    export(src.path(), path_str(&archive), &["--recipient", &public]);
    let good = fs::read(&archive).unwrap();
    let manifest = tmp.path().join("x.tar.zst.age.manifest.json");
    let manifest_bytes = fs::read(&manifest).unwrap();

    // A root that already holds the data, to prove none of it changes.
    let dst = tempfile::tempdir().unwrap();
    import(dst.path(), path_str(&archive), &["--identity", path_str(&key)], 0);
    let before = tree::snapshot(dst.path(), "data/media/0");
    let check_unchanged = |what: &str| {
        same_media(src.path(), dst.path());
        assert_eq!(tree::snapshot(dst.path(), "data/media/0").len(), before.len(), "{what}");
        let left: Vec<_> = fs::read_dir(dst.path().join("data"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(".cpbackup"))
            .collect();
        assert!(left.is_empty(), "{what}: staging left behind: {left:?}");
    };

    let n = good.len();
    let header_end = good.windows(4).position(|w| w == b"\n---").unwrap();
    let mut cases: Vec<(&str, Vec<u8>)> = Vec::new();
    let mut flipped = good.clone();
    flipped[n / 2] ^= 0x20;
    cases.push(("a flipped byte", flipped));
    cases.push(("cut at the last chunk", good[..n - 100].to_vec()));
    cases.push(("cut at a chunk boundary", good[..n - (n - header_end - 60) % 65_552].to_vec()));
    let mut garbage = good.clone();
    // The recipient stanza's body: garbage in the middle of its base64.
    let stanza = good.windows(3).position(|w| w == b"-> ").unwrap();
    let body = stanza + good[stanza..].iter().position(|b| *b == b'\n').unwrap() + 5;
    garbage[body] = if garbage[body] == b'A' { b'B' } else { b'A' };
    cases.push(("a garbage recipient stanza", garbage));
    for (what, bytes) in &cases {
        fs::write(&archive, bytes).unwrap();
        // With the manifest beside it and without (then the archive alone must refuse).
        for with_manifest in [true, false] {
            if with_manifest {
                fs::write(&manifest, &manifest_bytes).unwrap();
            } else {
                let _ = fs::remove_file(&manifest);
            }
            let o = import(dst.path(), path_str(&archive), &["--identity", path_str(&key)], 2);
            assert!(!stderr(&o).contains("AGE-SECRET-KEY"), "{what}: {}", stderr(&o));
            check_unchanged(what);
        }
    }
    // The wrong key, with and without the manifest.
    fs::write(&archive, &good).unwrap();
    for with_manifest in [true, false] {
        if with_manifest {
            fs::write(&manifest, &manifest_bytes).unwrap();
        } else {
            let _ = fs::remove_file(&manifest);
        }
        let e = stderr(&import(dst.path(), path_str(&archive), &["--identity", path_str(&wrong_key)], 2));
        assert!(e.contains("--identity"), "{e}");
        check_unchanged("the wrong key");
    }
}

#[test]
fn encryption_a_killed_import_leaves_old_or_new_and_runs_again() {
    let src = phone();
    let tmp = tempfile::tempdir().unwrap();
    let (key, public) = keygen(tmp.path(), "owner");
    let archive = tmp.path().join("x.tar.zst.age");
    export(src.path(), path_str(&archive), &["--recipient", &public]);
    let dst = tempfile::tempdir().unwrap();
    for delay_ms in [5u64, 40, 150] {
        let mut c = cpbackup();
        c.args(["import", "--root", path_str(dst.path()), "--from", path_str(&archive), "--identity", path_str(&key)]);
        c.stdout(Stdio::null()).stderr(Stdio::null());
        std::os::unix::process::CommandExt::process_group(&mut c, 0);
        let mut child = c.spawn().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(delay_ms));
        crate::support::kill_group(&mut child);
        // Whatever the kill left, the next run settles it and restores the whole tree.
        import(dst.path(), path_str(&archive), &["--identity", path_str(&key)], 0);
        same_media(src.path(), dst.path());
    }
}

#[test]
fn encryption_through_garage_and_no_secret_reaches_a_log() {
    let g = garage::shared();
    let bucket = g.bucket("encrypted");
    let src = phone();
    let tmp = tempfile::tempdir().unwrap();
    let (key, public) = keygen(tmp.path(), "owner");
    let state = tmp.path().join("state");
    let to = format!("s3://{bucket}/phones/");
    let mut c = g.cpbackup();
    c.args(["-vv", "export", "--root", path_str(src.path()), "--include", "/data/media/0", "--to", &to, "--json"]);
    c.args(["--recipient", &public, "--state-dir", path_str(&state), "--instance-id", "acp-enc"]);
    let o = run(&mut c, 0);
    let m = json(&o);
    let name = m["BackupFileName"].as_str().unwrap().to_string();
    assert!(name.ends_with(".tar.zst.age"), "{name}");
    let from = format!("s3://{bucket}/phones/{name}");

    // verify without a key through the store: the stored bytes against the manifest.
    let mut c = g.cpbackup();
    c.args(["verify", "--from", &from, "--json"]);
    let v = json(&run(&mut c, 0));
    assert_eq!((v["ChecksumVerified"].clone(), v["ContentChecked"].clone()), (true.into(), false.into()), "{v}");
    // list needs no key.
    let mut c = g.cpbackup();
    c.args(["list", "--in", &to]);
    let l = json(&run(&mut c, 0));
    assert_eq!(l["Data"][0]["Encryption"]["Recipients"][0], public.as_str());

    let dst = tempfile::tempdir().unwrap();
    let mut c = g.cpbackup();
    c.args(["-vv", "import", "--root", path_str(dst.path()), "--from", &from, "--json"]);
    c.args(["--identity", path_str(&key), "--state-dir", path_str(&state)]);
    let o2 = run(&mut c, 0);
    same_media(src.path(), dst.path());

    // The identity's secret never shows: not in either run's output at -vv, not in the state dir.
    let secret = fs::read_to_string(&key).unwrap();
    let secret = secret.lines().find(|l| l.starts_with("AGE-SECRET-KEY-")).unwrap();
    let tail = &secret[20..40];
    for (what, text) in [
        ("export stderr", stderr(&o)),
        ("import stderr", stderr(&o2)),
        ("import stdout", String::from_utf8_lossy(&o2.stdout).into_owned()),
    ] {
        assert!(!text.contains(tail), "{what} shows the identity");
    }
    for e in walk(&state) {
        let text = fs::read(&e).unwrap_or_default();
        assert!(!String::from_utf8_lossy(&text).contains(tail), "{} holds the identity", e.display());
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                todo.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// The daemon seals for the configured recipients (a request may name its own), encrypts on
/// the store's side with the configured SSE-C key, checks a request's keys before any task
/// exists, and opens a sealed archive with the identity a restore request hands over, which
/// never reaches the journal, the log or a callback, and which a restart forgets: the waiting
/// restore then ends `IdentityRequired`.
#[test]
fn encryption_through_the_daemon_with_the_identity_in_memory_only() {
    use crate::support::daemon::{ControlPlane, Daemon, INSTANCE};
    use serde_json::json;

    let g = garage::shared();
    let bucket = g.bucket("daemon-sealed");
    let tmp = tempfile::tempdir().unwrap();
    let (key, public) = keygen(tmp.path(), "owner");
    let (_, other) = keygen(tmp.path(), "other");
    let sse_key = tmp.path().join("sse-c.key");
    fs::write(&sse_key, [7u8; 32]).unwrap();
    fs::set_permissions(&sse_key, fs::Permissions::from_mode(0o600)).unwrap();
    let root = tmp.path().join("root");
    let b = tree::Builder::new(&root);
    b.file("data/media/0/notes/secret-diary.txt", b"dear diary, the plaintext that must not be in the bucket");
    b.file("data/media/0/big.bin", &cpbackup::demo::noise(6 << 20, 3));
    let cp = ControlPlane::start(0);
    let extra = format!(
        "endpoint = \"{}\"\nregion = \"garage\"\nrecipients = [\"{public}\"]\nsse_c_key_file = \"{}\"\n",
        g.endpoint(),
        sse_key.display()
    );
    let d = Daemon::start(g, tmp.path(), &root, &cp.url, &extra);
    drop(d);
    let d = Daemon::spawn_env(g, tmp.path().join("cpbackup.toml"), tmp.path(), &[("RUST_LOG", "trace".into())]);
    let folder = format!("oss://{bucket}/phones/");

    // A request's keys are checked before a task exists: 400 naming the field, no echo of a secret.
    let secret_text = fs::read_to_string(&key).unwrap();
    let secret = secret_text.lines().find(|l| l.starts_with("AGE-SECRET-KEY-")).unwrap().to_string();
    let tail = secret[20..40].to_string();
    let (_, before) = d.post("/ecp/DescribeTasks", json!({}));
    for (recipients, says) in [(json!(["age1nope"]), "EncryptionRecipients"), (json!([secret.clone()]), "secret key")] {
        let (code, v) = d.post(
            "/ecp/BackupFile",
            json!({"AndroidInstanceIdList": [INSTANCE], "BackupFilePath": folder, "SourceFilePathList": ["/data/media/0"],
                   "EncryptionRecipients": recipients}),
        );
        assert_eq!((code, v["Code"].as_str()), (400, Some("InvalidParameter")), "{v}");
        assert!(v["Message"].as_str().unwrap().contains(says), "{v}");
        assert!(!v.to_string().contains(&tail), "the answer echoes the secret: {v}");
    }
    let (code, v) = d.post(
        "/ecp/RecoveryFile",
        json!({"AndroidInstanceIdList": [INSTANCE], "BackupFilePath": format!("{folder}x.tar.zst.age"),
               "DecryptionIdentity": "AGE-SECRET-KEY-1NOTAKEYATALL"}),
    );
    assert_eq!(code, 400, "{v}");
    assert!(v["Message"].as_str().unwrap().contains("DecryptionIdentity line 1") && !v.to_string().contains("NOTAKEY"));
    let (_, after) = d.post("/ecp/DescribeTasks", json!({}));
    assert_eq!(before["TotalCount"], after["TotalCount"], "a refused request made a task");

    // Sealed for the configured recipient, encrypted by the store with the configured SSE-C key.
    let (code, v) = d.post(
        "/ecp/BackupFile",
        json!({"AndroidInstanceIdList": [INSTANCE], "BackupFilePath": folder, "SourceFilePathList": ["/data/media/0"]}),
    );
    assert_eq!(code, 200, "{v}");
    let name = v["Data"][0]["BackupFileName"].as_str().unwrap().to_string();
    assert!(name.ends_with(".tar.zst.age"), "{name}");
    let bf = v["Data"][0]["BackupFileId"].as_str().unwrap().to_string();
    let t = d.wait(v["Data"][0]["TaskId"].as_str().unwrap(), &["Finished", "Failed"]);
    assert_eq!(t["TaskStatus"], "Finished", "{t}");
    let m: serde_json::Value = serde_json::from_str(t["Result"].as_str().unwrap()).unwrap();
    assert_eq!(m["Encryption"]["Recipients"], json!([public]), "{m}");
    assert_eq!(m["ServerSideEncryption"]["Mode"], "SSE-C", "{m}");
    // Without the SSE-C key the store refuses the object, with it the bytes are age's.
    let from = format!("s3://{bucket}/phones/{name}");
    let out = run(g.cpbackup().args(["verify", "--from", &from]), 2);
    assert!(stderr(&out).contains("--sse-c-key-file"), "{}", stderr(&out));
    // A request's own recipient replaces the configured one.
    let (_, v) = d.post(
        "/ecp/BackupFile",
        json!({"AndroidInstanceIdList": [INSTANCE], "BackupFilePath": folder, "SourceFilePathList": ["/data/media/0/notes"],
               "EncryptionRecipients": [other], "ServerSideEncryption": "AES256"}),
    );
    let t = d.wait(v["Data"][0]["TaskId"].as_str().unwrap(), &["Finished", "Failed"]);
    let m2: serde_json::Value = serde_json::from_str(t["Result"].as_str().unwrap()).unwrap();
    assert_eq!(
        (m2["Encryption"]["Recipients"].clone(), m2["ServerSideEncryption"]["Mode"].clone()),
        (json!([other]), json!("AES256"))
    );

    // A restore without the identity: refused before the data is touched, naming the recipient.
    fs::write(root.join("data/media/0/notes/secret-diary.txt"), b"changed").unwrap();
    let recover = |identity: Option<&str>| {
        let mut body = json!({"AndroidInstanceIdList": [INSTANCE], "BackupFilePath": folder, "BackupFileId": bf});
        if let Some(i) = identity {
            body["DecryptionIdentity"] = i.into();
        }
        let (code, v) = d.post("/ecp/RecoveryFile", body);
        assert_eq!(code, 200, "{v}");
        v["Data"][0]["TaskId"].as_str().unwrap().to_string()
    };
    let t = d.wait(&recover(None), &["Finished", "Failed"]);
    assert_eq!(t["ErrorCode"], "DecryptionFailed", "{t}");
    assert!(t["ErrorMessage"].to_string().contains(&public) || t.to_string().contains(&public), "{t}");
    assert_eq!(fs::read(root.join("data/media/0/notes/secret-diary.txt")).unwrap(), b"changed");
    // With it (ECP, then CPH's shape), the data comes back.
    let t = d.wait(&recover(Some(&secret_text)), &["Finished", "Failed"]);
    assert_eq!(t["TaskStatus"], "Finished", "{t}");
    assert!(fs::read(root.join("data/media/0/notes/secret-diary.txt")).unwrap().starts_with(b"dear diary"));
    let (code, v) = d.post(
        "/cph/batch-restore",
        json!({"restore_infos": [{"phone_id": INSTANCE, "bucket_name": bucket, "object_path": format!("phones/{name}"),
               "decryption_identity": secret_text}]}),
    );
    assert_eq!(code, 200, "{v}");
    let t = d.wait(v["jobs"][0]["job_id"].as_str().unwrap(), &["Finished", "Failed"]);
    assert_eq!(t["TaskStatus"], "Finished", "{t}");

    // A restore waiting behind a slow export when the agent is killed: after the restart it
    // ends IdentityRequired, since the identity was in memory only.
    let (_, v) = d.post(
        "/ecp/BackupFile",
        json!({"AndroidInstanceIdList": [INSTANCE], "BackupFilePath": folder, "SourceFilePathList": ["/data/media/0"],
               "LimitRate": "256k"}),
    );
    let slow = v["Data"][0]["TaskId"].as_str().unwrap().to_string();
    d.wait(&slow, &["Processing"]);
    let waiting = recover(Some(&secret_text));
    assert_eq!(d.task(&waiting)["TaskStatus"], "Waiting");
    let (config, log) = d.kill();
    let mut logs = fs::read_to_string(&log).unwrap();
    let d = Daemon::spawn_env(g, config, tmp.path(), &[("RUST_LOG", "trace".into())]);
    let t = d.task(&waiting);
    assert_eq!((t["TaskStatus"].as_str(), t["ErrorCode"].as_str()), (Some("Failed"), Some("IdentityRequired")), "{t}");
    assert_eq!(d.task(&slow)["ErrorCode"], "AgentRestarted");
    let (_, log) = d.kill();
    logs.push_str(&fs::read_to_string(&log).unwrap());

    // Nowhere: not the journal, not the log at trace level, not a callback.
    assert!(logs.contains("TRACE"), "the log is not verbose");
    assert!(!logs.contains(&tail), "the log shows the identity");
    for e in walk(&tmp.path().join("state")) {
        let text = fs::read(&e).unwrap_or_default();
        assert!(!String::from_utf8_lossy(&text).contains(&tail), "{} holds the identity", e.display());
    }
    let events = cp.events();
    assert!(!events.is_empty());
    assert!(!format!("{events:?}").contains(&tail), "a callback carries the identity");
    // And no plaintext in the bucket.
    use cpbackup::store::Store;
    let store = g.store(&bucket);
    let mut archives = 0;
    for o in store.list("phones/").unwrap() {
        // The SSE-C objects cannot even be read without the key; the others are age's bytes.
        if let Ok(Some(body)) = store.get(&o.key) {
            archives += usize::from(o.key.ends_with(".age"));
            assert!(!String::from_utf8_lossy(&body).contains("dear diary"), "{} holds plaintext", o.key);
        }
    }
    assert!(archives >= 1, "no archive was readable to check");
}
