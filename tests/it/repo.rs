//! The repository format (issue 17) through the real binary: snapshots into a local folder
//! and into Garage, incremental runs that read nothing unchanged, partial restores and `ls`
//! for snapshots and archives, verify, forget and prune, a killed export resumed, and writers
//! racing a prune on a three-node cluster.

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::garage::{self, Garage};
use crate::support::tree::{self, Ignore};
use crate::support::{cpbackup, json, path_str, run, stderr};

const MIB: usize = 1 << 20;

fn export(mut c: Command, root: &Path, to: &str, extra: &[&str]) -> serde_json::Value {
    c.args(["export", "--root", path_str(root), "--to", to, "--format", "repo", "--json"]);
    c.args(["--include", "/data/data", "--include", "/data/media"]);
    c.args(extra);
    json(&run(&mut c, 0))
}

fn local(state: &Path) -> Command {
    let mut c = cpbackup();
    c.env("CPBACKUP_STATE_DIR", state);
    c
}

fn same(a: &Path, b: &Path, rel: &str) {
    tree::assert_same(&tree::snapshot(a, rel), &tree::snapshot(b, rel), Ignore { xattrs: true, ..Default::default() });
}

#[test]
fn repo_local_snapshots_round_trip_skip_unchanged_files_and_restore_parts() {
    let t = tempfile::tempdir().unwrap();
    let (src, state, repo) = (t.path().join("phone"), t.path().join("state"), t.path().join("repo"));
    tree::full_case_tree(&src);
    tree::random_files(&src.join("data/media/0/big"), 3, 2 * MIB, 7);
    let to = format!("{}/", path_str(&repo));

    let first = export(local(&state), &src, &to, &["--instance-id", "acp-1", "--name", "one"]);
    assert_eq!(first["Status"], "AVAILABLE");
    assert_eq!(first["Format"], "repo");
    let s = &first["Snapshot"];
    assert!(s["ChunksNew"].as_u64().unwrap() > 10 && s["BytesRead"].as_u64().unwrap() > 6 * MIB as u64, "{s}");
    assert!(repo.join("config.json").is_file() && repo.join("one.manifest.json").is_file());

    // Unchanged: a walk and a stat per file; nothing read, nothing new.
    let second = export(local(&state), &src, &to, &["--instance-id", "acp-1", "--name", "two"]);
    let s = &second["Snapshot"];
    assert_eq!(s["BytesRead"], 0, "{s}");
    assert_eq!(s["ChunksNew"], 0, "{s}");
    assert!(s["BytesUploaded"].as_u64().unwrap() < 64 * 1024, "{s}");
    assert_eq!(second["Snapshot"]["Tree"], first["Snapshot"]["Tree"]);
    // --rehash reads everything again, and still stores nothing new.
    let third = export(local(&state), &src, &to, &["--instance-id", "acp-1", "--name", "three", "--rehash"]);
    assert!(third["Snapshot"]["BytesRead"].as_u64().unwrap() > 6 * MIB as u64);
    assert_eq!(third["Snapshot"]["ChunksNew"], 0);

    // The snapshots are backup files like archives: list finds them.
    let mut c = cpbackup();
    c.args(["list", "--in", &to, "--max-results", "100"]);
    let l = json(&run(&mut c, 0));
    assert_eq!(l["TotalCount"], 3, "{l}");

    // Whole restore, by the folder and the id.
    let out = t.path().join("restored");
    fs::create_dir_all(&out).unwrap();
    let mut c = local(&state);
    c.args(["import", "--from", &to, "--backup-file-id", second["BackupFileId"].as_str().unwrap()]);
    c.args(["--root", path_str(&out), "--json"]);
    let r = json(&run(&mut c, 0));
    assert_eq!(r["Container"], "repo");
    same(&src, &out, "data/data");
    same(&src, &out, "data/media");

    // One file, by the record's key: only it, in a few requests.
    let part = t.path().join("part");
    fs::create_dir_all(&part).unwrap();
    let mut c = local(&state);
    c.args(["import", "--from", &format!("{to}two.manifest.json"), "--root", path_str(&part), "--json"]);
    c.args(["--include", "/data/data/com.example.app/databases/app.db"]);
    let r = json(&run(&mut c, 0));
    assert_eq!(
        fs::read(part.join("data/data/com.example.app/databases/app.db")).unwrap(),
        fs::read(src.join("data/data/com.example.app/databases/app.db")).unwrap()
    );
    assert!(!part.join("data/media").exists() && !part.join("data/data/com.example.app/files").exists());
    assert!(r["Snapshot"]["Requests"].as_u64().unwrap() <= 5, "{r}");
    // A path that is not there: an error, nothing restored.
    let mut c = local(&state);
    c.args(["import", "--from", &format!("{to}two.manifest.json"), "--root", path_str(&part)]);
    c.args(["--include", "/data/data/com.nothing"]);
    let e = stderr(&run(&mut c, 2));
    assert!(e.contains("/data/data/com.nothing"), "{e}");

    // ls: a part of the snapshot, as JSON lines.
    let mut c = local(&state);
    c.args(["ls", "--from", &format!("{to}two.manifest.json"), "--include", "/data/media/0/DCIM", "--json"]);
    let out = run(&mut c, 0);
    let lines: Vec<serde_json::Value> =
        String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let paths: Vec<&str> = lines.iter().map(|l| l["Path"].as_str().unwrap()).collect();
    assert_eq!(paths, ["/data/media/0/DCIM", "/data/media/0/DCIM/a.jpg"]);
    assert_eq!(lines[1]["Size"], 50_000);

    // verify, and verify --read-data; a damaged pack is found by the second.
    let mut c = local(&state);
    c.args(["verify", "--from", &format!("{to}one.manifest.json"), "--read-data", "--json"]);
    let v = json(&run(&mut c, 0));
    assert!(v["Bytes"].as_u64().unwrap() > 6 * MIB as u64, "{v}");
    let pack = fs::read_dir(repo.join("data"))
        .unwrap()
        .flat_map(|d| fs::read_dir(d.unwrap().path()).unwrap())
        .map(|e| e.unwrap().path())
        .max_by_key(|p| fs::metadata(p).unwrap().len())
        .unwrap();
    let mut bytes = fs::read(&pack).unwrap();
    bytes[100] ^= 0xff;
    fs::write(&pack, &bytes).unwrap();
    let mut c = local(&state);
    c.args(["verify", "--from", &format!("{to}one.manifest.json")]);
    run(&mut c, 0);
    let mut c = local(&state);
    c.args(["verify", "--from", &format!("{to}one.manifest.json"), "--read-data"]);
    let e = stderr(&run(&mut c, 2));
    assert!(e.contains("does not hash to its id") || e.contains("does not decode"), "{e}");
}

#[test]
fn repo_include_reads_archives_through_and_ls_lists_them() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("phone");
    tree::full_case_tree(&src);
    let archive = t.path().join("a.tar.zst");
    let mut c = cpbackup();
    c.args(["export", "--root", path_str(&src), "--include", "/data/data", "--include", "/data/media"]);
    c.args(["--to", path_str(&archive)]);
    run(&mut c, 0);
    let out = t.path().join("out");
    fs::create_dir_all(&out).unwrap();
    let mut c = cpbackup();
    c.args(["import", "--from", path_str(&archive), "--root", path_str(&out)]);
    c.args(["--include", "/data/media/0/DCIM"]);
    run(&mut c, 0);
    assert_eq!(
        fs::read(out.join("data/media/0/DCIM/a.jpg")).unwrap(),
        fs::read(src.join("data/media/0/DCIM/a.jpg")).unwrap()
    );
    assert!(!out.join("data/data").exists() && !out.join("data/media/0/Android").exists());
    let mut c = cpbackup();
    c.args(["ls", "--from", path_str(&archive), "--include", "/data/media/0/DCIM"]);
    let o = run(&mut c, 0);
    let text = String::from_utf8_lossy(&o.stdout);
    assert_eq!(text.lines().count(), 2, "{text}");
    assert!(text.contains("/data/media/0/DCIM/a.jpg"), "{text}");
    // A reader that has gone (`ls … | head`) ends the listing quietly: no panic, exit 0.
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let mut c = cpbackup();
    c.args(["ls", "--from", path_str(&archive)]).stdout(writer);
    let o = c.stderr(std::process::Stdio::piped()).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success() && !err.contains("panicked"), "{:?} {err}", o.status);
}

#[test]
fn repo_s3_snapshots_are_incremental_and_one_file_costs_few_requests() {
    let g = garage::shared();
    let bucket = g.bucket("repo");
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("phone");
    tree::full_case_tree(&src);
    tree::random_files(&src.join("data/media/0/big"), 4, 8 * MIB, 11);
    tree::random_files(&src.join("data/media/0/one"), 1, MIB, 12);
    let to = format!("s3://{bucket}/fleet/");
    let first = export(g.cpbackup(), &src, &to, &["--instance-id", "acp-9"]);
    assert_eq!(first["Status"], "AVAILABLE", "{first}");
    assert_eq!(first["UploadType"], "S3");
    let uploaded = first["Snapshot"]["BytesUploaded"].as_u64().unwrap();
    assert!(uploaded > 32 * MIB as u64, "{first}");
    let second = export(g.cpbackup(), &src, &to, &["--instance-id", "acp-9"]);
    let s = &second["Snapshot"];
    assert_eq!(s["BytesRead"], 0, "{s}");
    assert!(s["BytesUploaded"].as_u64().unwrap() * 200 <= uploaded, "at most 0.5%: {s}");

    // One file out of the snapshot: a 1 MiB one in at most 5 requests and 16 MiB (the target);
    // an 8 MiB one in two reads of at most 4 MiB more (a restore's reads are 4 MiB at most).
    for (file, requests) in [("/data/media/0/one/blob0.bin", 5), ("/data/media/0/big/blob1.bin", 6)] {
        let out = t.path().join("one");
        let _ = fs::remove_dir_all(&out);
        fs::create_dir_all(&out).unwrap();
        let mut c = g.cpbackup();
        c.args(["import", "--from", &to, "--backup-file-id", second["BackupFileId"].as_str().unwrap()]);
        c.args(["--root", path_str(&out), "--json", "--include", file]);
        let r = json(&run(&mut c, 0));
        let rel = file.trim_start_matches('/');
        assert_eq!(fs::read(out.join(rel)).unwrap(), fs::read(src.join(rel)).unwrap());
        assert!(!out.join("data/media/0/big/blob0.bin").exists());
        // The folder lookup lists the records and reads each: count the snapshot's own requests.
        assert!(r["Snapshot"]["Requests"].as_u64().unwrap() <= requests, "{file}: {r}");
        assert!(r["Snapshot"]["BytesDownloaded"].as_u64().unwrap() <= 16 * MIB as u64, "{file}: {r}");
    }

    // The whole snapshot.
    let all = t.path().join("all");
    fs::create_dir_all(&all).unwrap();
    let mut c = g.cpbackup();
    c.args(["import", "--from", &format!("{to}{}.manifest.json", second["BackupFileName"].as_str().unwrap())]);
    c.args(["--root", path_str(&all)]);
    run(&mut c, 0);
    same(&src, &all, "data/media");
    same(&src, &all, "data/data");
}

/// Killed when 80% of its packs are stored, the export run again stores at most a quarter
/// of its bytes again: every stored pack was published in an index object right after it.
#[test]
fn repo_killed_export_resumes_with_what_it_stored() {
    let t = tempfile::tempdir().unwrap();
    let (src, state, repo) = (t.path().join("phone"), t.path().join("state"), t.path().join("repo"));
    tree::random_files(&src.join("data/media/0/big"), 40, 10 * MIB, 3);
    fs::create_dir_all(src.join("data/data")).unwrap();
    let total = 400 * MIB as u64;
    let to = format!("{}/", path_str(&repo));
    let mut c = local(&state);
    c.args(["export", "--root", path_str(&src), "--to", &to, "--format", "repo"]);
    c.args(["--include", "/data/data", "--include", "/data/media"]);
    let mut child = c.spawn().unwrap();
    let stored = |repo: &Path| -> u64 {
        let Ok(rd) = fs::read_dir(repo.join("data")) else { return 0 };
        rd.flat_map(|d| fs::read_dir(d.unwrap().path()).unwrap())
            .filter_map(|e| e.ok())
            .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
            .map(|e| e.metadata().map(|m| m.len()).unwrap_or(0))
            .sum()
    };
    let deadline = Instant::now() + Duration::from_secs(300);
    while stored(&repo) < total * 8 / 10 {
        assert!(child.try_wait().unwrap().is_none(), "the export ended before it was killed");
        assert!(Instant::now() < deadline, "the export is too slow");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let again = export(local(&state), &src, &to, &[]);
    let up = again["Snapshot"]["BytesUploaded"].as_u64().unwrap();
    assert!(up <= total / 4, "uploaded {up} of {total} again");
    let out = t.path().join("out");
    fs::create_dir_all(&out).unwrap();
    let mut c = local(&state);
    c.args(["import", "--from", &format!("{to}{}.manifest.json", again["BackupFileName"].as_str().unwrap())]);
    c.args(["--root", path_str(&out)]);
    run(&mut c, 0);
    same(&src, &out, "data/media");
}

/// Writers and prune at the same time, on a three-node cluster: phones export over and over
/// while forget and prune (a short grace) run beside them; every snapshot that is left
/// restores and verifies with its data read.
#[test]
fn repo_writers_and_prune_at_the_same_time() {
    let g = Garage::start(3);
    let bucket = g.bucket("race");
    let to = format!("s3://{bucket}/fleet/");
    let t = tempfile::tempdir().unwrap();
    // Three phones from one image, each with data of its own that changes every round.
    let phones: Vec<_> = (0..3).map(|i| t.path().join(format!("phone{i}"))).collect();
    for (i, p) in phones.iter().enumerate() {
        tree::random_files(&p.join("data/media/0/image"), 4, MIB, 100);
        tree::random_files(&p.join("data/data/own"), 2, MIB / 2, i as u64);
    }
    // The repository is made by a first export: forget and prune refuse a folder without one
    // (on a loaded machine, the pruner could otherwise start before any phone made it).
    let mut c = g.cpbackup();
    c.env("CPBACKUP_STATE_DIR", phones[0].with_extension("state"));
    export(c, &phones[0], &to, &["--instance-id", "acp-0"]);
    let grace = 6u64;
    let stop = Instant::now() + Duration::from_secs(30);
    std::thread::scope(|s| {
        for (i, p) in phones.iter().enumerate() {
            let (g, to) = (&g, &to);
            s.spawn(move || {
                let mut round = 0u64;
                while Instant::now() < stop {
                    round += 1;
                    tree::random_files(&p.join("data/data/own"), 2, MIB / 2, 1000 * i as u64 + round);
                    let mut c = g.cpbackup();
                    c.env("CPBACKUP_STATE_DIR", p.with_extension("state"));
                    let m = export(c, p, to, &["--instance-id", &format!("acp-{i}")]);
                    assert_eq!(m["Status"], "AVAILABLE", "{m}");
                }
            });
        }
        let (g, to) = (&g, &to);
        let pruner = s.spawn(move || {
            let mut deleted = 0;
            while Instant::now() < stop {
                let mut c = g.cpbackup();
                c.args(["forget", "--in", to, "--keep-last", "1"]);
                run(&mut c, 0);
                let mut c = g.cpbackup();
                c.args(["prune", "--in", to, "--grace", &format!("{grace}s")]);
                deleted += json(&run(&mut c, 0))["Deleted"].as_u64().unwrap();
                std::thread::sleep(Duration::from_secs(2));
            }
            deleted
        });
        let deleted = pruner.join().unwrap();
        assert!(deleted > 0, "prune deleted packs while the phones wrote");
    });
    // Past the grace, forget and prune once more: they take what the race left.
    let mut c = g.cpbackup();
    c.args(["forget", "--in", &to, "--keep-last", "1"]);
    run(&mut c, 0);
    std::thread::sleep(Duration::from_secs(grace + 1));
    let mut c = g.cpbackup();
    c.args(["prune", "--in", &to, "--grace", &format!("{grace}s")]);
    run(&mut c, 0);
    let mut c = g.cpbackup();
    c.args(["list", "--in", &to, "--max-results", "100"]);
    let l = json(&run(&mut c, 0));
    let records = l["Data"].as_array().unwrap();
    assert_eq!(records.len(), 3, "one snapshot per phone is left: {l}");
    for r in records {
        let id = r["BackupFileId"].as_str().unwrap();
        let mut c = g.cpbackup();
        c.args(["verify", "--from", &to, "--backup-file-id", id, "--read-data"]);
        run(&mut c, 0);
        let out = t.path().join(format!("out-{id}"));
        fs::create_dir_all(&out).unwrap();
        let mut c = g.cpbackup();
        c.args(["import", "--from", &to, "--backup-file-id", id, "--root", path_str(&out)]);
        run(&mut c, 0);
    }
}

/// Every file under `dir`, whatever its depth: (path, bytes).
fn objects(dir: &Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                todo.push(p);
            } else {
                out.push((p.clone(), fs::read(&p).unwrap()));
            }
        }
    }
    out
}

#[test]
fn repo_sealed_objects_hide_content_phones_sharing_an_id_key_dedupe_and_a_wrong_identity_is_refused() {
    let t = tempfile::tempdir().unwrap();
    let (owner_key, owner) = crate::encryption::keygen(t.path(), "owner");
    let (stranger_key, _) = crate::encryption::keygen(t.path(), "stranger");
    let id_key = t.path().join("fleet.idkey");
    fs::write(&id_key, format!("{}\n", "5a".repeat(32))).unwrap();
    let mut perm = fs::metadata(&id_key).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perm, 0o600);
    fs::set_permissions(&id_key, perm).unwrap();

    // Phone A: incompressible files (stored as they are when unsealed) and a recognisable name;
    // phone B: a clone of A with a little data of its own.
    let a = t.path().join("phone-a");
    tree::random_files(&a.join("data/media/0/photos"), 4, 2 * MIB, 11);
    let secret_name = "recognisable-ledger-name.txt";
    fs::create_dir_all(a.join("data/data/com.bank/files")).unwrap();
    fs::write(a.join("data/data/com.bank/files").join(secret_name), "balance: 1,000,000\n".repeat(2000)).unwrap();
    let b = t.path().join("phone-b");
    fs::create_dir_all(&b).unwrap();
    assert!(Command::new("cp").arg("-a").arg(a.join("data")).arg(&b).status().unwrap().success());
    tree::random_files(&b.join("data/media/0/own"), 1, 256 * 1024, 12);

    let repo = t.path().join("repo");
    let to = format!("{}/", path_str(&repo));
    let sealed = ["--recipient", owner.as_str(), "--id-key-file", path_str(&id_key)];
    let mut args = sealed.to_vec();
    args.extend(["--instance-id", "acp-a"]);
    let first = export(local(&t.path().join("state-a")), &a, &to, &args);
    assert_eq!(first["Status"], "AVAILABLE", "{first}");
    assert_eq!(first["Encryption"]["Recipients"][0], owner.as_str(), "{first}");

    // No object of the repository holds a recognisable piece of what it stores; the id key is
    // nowhere in it unwrapped.
    let photo = fs::read(a.join("data/media/0/photos/blob1.bin")).unwrap();
    let pieces: Vec<&[u8]> = vec![&photo[4096..4160], &photo[MIB..MIB + 64], secret_name.as_bytes(), b"balance: 1,0"];
    let stored = objects(&repo);
    assert!(stored.iter().any(|(p, _)| p.to_string_lossy().contains("/keys/id-")), "a wrapped id key");
    for (p, body) in &stored {
        if p.to_string_lossy().ends_with(".manifest.json") {
            continue;
        }
        for piece in &pieces {
            assert!(!body.windows(piece.len()).any(|w| w == *piece), "{} holds plaintext", p.display());
        }
        assert!(!body.windows(64).any(|w| w == "5a".repeat(32).as_bytes()), "{} holds the id key", p.display());
    }

    // Phone B, another state directory (no cache of A's): what A stored is found by id.
    let mut args = sealed.to_vec();
    args.extend(["--instance-id", "acp-b"]);
    let second = export(local(&t.path().join("state-b")), &b, &to, &args);
    let (s1, s2) = (&first["Snapshot"], &second["Snapshot"]);
    assert!(s2["ChunksReused"].as_u64().unwrap() > s2["ChunksNew"].as_u64().unwrap(), "{s1} {s2}");
    assert!(
        s2["BytesUploaded"].as_u64().unwrap() * 4 < s1["BytesUploaded"].as_u64().unwrap(),
        "phone B uploads only its own data: {s1} {s2}"
    );

    // A plain export into the sealed repository, or a sealed one with another id key: refused.
    let mut c = local(&t.path().join("state-a"));
    c.args(["export", "--root", path_str(&a), "--to", &to, "--format", "repo", "--include", "/data/media"]);
    let e = stderr(&run(&mut c, 2));
    assert!(e.contains("sealed repository"), "{e}");
    let other_key = t.path().join("other.idkey");
    fs::write(&other_key, "a5".repeat(32)).unwrap();
    let mut c = local(&t.path().join("state-a"));
    c.args(["export", "--root", path_str(&a), "--to", &to, "--format", "repo", "--include", "/data/media"]);
    c.args(["--recipient", owner.as_str(), "--id-key-file", path_str(&other_key)]);
    let e = stderr(&run(&mut c, 2));
    assert!(e.contains("not the id key"), "{e}");

    let id_b = second["BackupFileId"].as_str().unwrap();
    // Without a key, or with a stranger's: exit 2 naming the recipient, nothing made.
    for keys in [vec![], vec!["--identity", path_str(&stranger_key)]] {
        let out = t.path().join("refused");
        let mut c = local(&t.path().join("state-r"));
        c.args(["import", "--from", &to, "--backup-file-id", id_b, "--root", path_str(&out)]);
        c.args(&keys);
        let e = stderr(&run(&mut c, 2));
        assert!(e.contains(&owner), "the error names the recipient: {e}");
        assert!(!out.exists() || fs::read_dir(&out).unwrap().next().is_none(), "nothing touched");
    }

    // The owner's identity opens it: import, ls, verify --read-data, prune.
    let out = t.path().join("restored");
    fs::create_dir_all(&out).unwrap();
    let mut c = local(&t.path().join("state-r"));
    c.args(["import", "--from", &to, "--backup-file-id", id_b, "--root", path_str(&out), "--json"]);
    c.args(["--identity", path_str(&owner_key)]);
    run(&mut c, 0);
    same(&b, &out, "data/data");
    same(&b, &out, "data/media");
    let mut c = local(&t.path().join("state-r"));
    c.args(["ls", "--from", &to, "--backup-file-id", id_b, "--identity", path_str(&owner_key)]);
    let listed = String::from_utf8(run(&mut c, 0).stdout).unwrap();
    assert!(listed.contains(secret_name), "{listed}");
    let mut c = local(&t.path().join("state-r"));
    c.args(["verify", "--from", &to, "--backup-file-id", id_b, "--read-data", "--json"]);
    c.args(["--identity", path_str(&owner_key)]);
    let v = json(&run(&mut c, 0));
    assert_eq!(v["ChecksumVerified"], true, "{v}");
    let mut c = local(&t.path().join("state-r"));
    c.args(["prune", "--in", &to, "--identity", path_str(&owner_key)]);
    run(&mut c, 0);
    let mut c = local(&t.path().join("state-r"));
    c.args(["prune", "--in", &to, "--identity", path_str(&stranger_key)]);
    run(&mut c, 2);
}

#[test]
fn repo_sparse_files_come_back_sparse_and_list_reads_only_records() {
    use std::os::unix::fs::MetadataExt;
    let t = tempfile::tempdir().unwrap();
    let (src, state, repo) = (t.path().join("phone"), t.path().join("state"), t.path().join("repo"));
    let dir = src.join("data/data/com.sparse/files");
    fs::create_dir_all(&dir).unwrap();
    let f = fs::File::create(dir.join("disk.img")).unwrap();
    f.set_len(64 * MIB as u64).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &[7u8; 8192], 32 * MIB as u64).unwrap();
    drop(f);
    fs::create_dir_all(src.join("data/media")).unwrap();
    let to = format!("{}/", path_str(&repo));
    let m = export(local(&state), &src, &to, &["--name", "sparse"]);

    // list: the records at the folder's top; data/ and index/ hold no record, and are not
    // listed (a stray manifest-named object below the top is not a record).
    fs::copy(repo.join("sparse.manifest.json"), repo.join("data/stray.manifest.json")).unwrap();
    let mut c = cpbackup();
    c.args(["list", "--in", &to, "--max-results", "100"]);
    let l = json(&run(&mut c, 0));
    assert_eq!(l["TotalCount"], 1, "{l}");

    let out = t.path().join("restored");
    fs::create_dir_all(&out).unwrap();
    let mut c = local(&state);
    c.args(["import", "--from", &to, "--backup-file-id", m["BackupFileId"].as_str().unwrap()]);
    c.args(["--root", path_str(&out)]);
    run(&mut c, 0);
    let back = out.join("data/data/com.sparse/files/disk.img");
    let meta = fs::metadata(&back).unwrap();
    assert_eq!(meta.len(), 64 * MIB as u64);
    assert!(meta.blocks() * 512 < 4 * MIB as u64, "restored with holes: {} blocks", meta.blocks());
    assert_eq!(fs::read(&back).unwrap(), fs::read(dir.join("disk.img")).unwrap());
}

/// The daemon writes snapshots (ECP `Format: repo`, CPH `format: repo`), sealed with the
/// config's recipients and the fleet's id key, and restores chosen paths of one by its id
/// (ECP `SourceFilePathList`, CPH `include_files`) with the identity the request hands over.
#[test]
fn repo_through_the_daemon_sealed_with_the_config_keys_and_restored_in_part() {
    use crate::support::daemon::{ControlPlane, Daemon, INSTANCE};
    use serde_json::json;

    let g = garage::shared();
    let bucket = g.bucket("repo-daemon");
    let t = tempfile::tempdir().unwrap();
    let (key, owner) = crate::encryption::keygen(t.path(), "owner");
    let id_key = t.path().join("fleet.idkey");
    fs::write(&id_key, format!("{}\n", "3c".repeat(32))).unwrap();
    fs::set_permissions(&id_key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let root = t.path().join("root");
    let b = tree::Builder::new(&root);
    b.file("data/media/0/notes/a.txt", b"note one, the plaintext");
    b.file("data/media/0/photos/p.jpg", &cpbackup::demo::noise(3 << 20, 11));
    let cp = ControlPlane::start(0);
    let extra = format!(
        "endpoint = \"{}\"\nregion = \"garage\"\nrecipients = [\"{owner}\"]\nid_key_file = \"{}\"\nformat = \"repo\"\n",
        g.endpoint(),
        id_key.display()
    );
    let d = Daemon::start(g, t.path(), &root, &cp.url, &extra);
    let folder = format!("oss://{bucket}/fleet/");

    // The config's format: a snapshot; a file name instead of a folder is refused.
    let (code, v) = d.post(
        "/ecp/BackupFile",
        json!({"AndroidInstanceIdList": [INSTANCE], "BackupFilePath": format!("oss://{bucket}/fleet/x.tar"),
               "SourceFilePathList": ["/data/media/0"], "Format": "repo"}),
    );
    assert_eq!(code, 400, "{v}");
    assert!(v["Message"].as_str().unwrap().contains("ending with /"), "{v}");
    let (code, v) = d.post(
        "/ecp/BackupFile",
        json!({"AndroidInstanceIdList": [INSTANCE], "BackupFilePath": folder, "SourceFilePathList": ["/data/media/0"]}),
    );
    assert_eq!(code, 200, "{v}");
    let bf = v["Data"][0]["BackupFileId"].as_str().unwrap().to_string();
    let task = d.wait(v["Data"][0]["TaskId"].as_str().unwrap(), &["Finished", "Failed"]);
    assert_eq!(task["TaskStatus"], "Finished", "{task}");
    let m: serde_json::Value = serde_json::from_str(task["Result"].as_str().unwrap()).unwrap();
    assert_eq!((m["Format"].as_str(), m["BackupFileId"].as_str()), (Some("repo"), Some(bf.as_str())), "{m}");
    assert_eq!(m["Encryption"]["Recipients"], json!([owner]), "{m}");
    assert!(m["BackupFileName"].as_str().unwrap().ends_with(".snapshot"), "{m}");

    // CPH's shape, a second snapshot into the same repository.
    let (code, v) = d.post(
        "/cph/batch-storage",
        json!({"storage_infos": [{"phone_id": INSTANCE, "include_files": ["/data/media/0"], "bucket_name": bucket,
               "object_path": "fleet/", "format": "repo"}]}),
    );
    assert_eq!(code, 200, "{v}");
    let job = d.wait(v["jobs"][0]["job_id"].as_str().unwrap(), &["Finished", "Failed"]);
    assert_eq!(job["TaskStatus"], "Finished", "{job}");

    // Restore only the notes, by id, with the identity in the request; the photo is not touched.
    fs::write(root.join("data/media/0/notes/a.txt"), b"changed").unwrap();
    fs::write(root.join("data/media/0/photos/p.jpg"), b"changed too").unwrap();
    let identity = fs::read_to_string(&key).unwrap();
    let (code, v) = d.post(
        "/ecp/RecoveryFile",
        json!({"AndroidInstanceIdList": [INSTANCE], "BackupFilePath": folder, "BackupFileId": bf,
               "SourceFilePathList": ["/data/media/0/notes"], "DecryptionIdentity": identity}),
    );
    assert_eq!(code, 200, "{v}");
    let r = d.wait(v["Data"][0]["TaskId"].as_str().unwrap(), &["Finished", "Failed"]);
    assert_eq!(r["TaskStatus"], "Finished", "{r}");
    assert_eq!(fs::read(root.join("data/media/0/notes/a.txt")).unwrap(), b"note one, the plaintext");
    assert_eq!(fs::read(root.join("data/media/0/photos/p.jpg")).unwrap(), b"changed too");

    // CPH: the photos alone, from the snapshot's record.
    let (code, v) = d.post(
        "/cph/batch-restore",
        json!({"restore_infos": [{"phone_id": INSTANCE, "bucket_name": bucket,
               "object_path": format!("fleet/{}", m["BackupFileName"].as_str().unwrap()),
               "include_files": ["/data/media/0/photos"], "decryption_identity": identity}]}),
    );
    assert_eq!(code, 200, "{v}");
    let r = d.wait(v["jobs"][0]["job_id"].as_str().unwrap(), &["Finished", "Failed"]);
    assert_eq!(r["TaskStatus"], "Finished", "{r}");
    assert_eq!(fs::read(root.join("data/media/0/photos/p.jpg")).unwrap().len(), 3 << 20);
    // The restore paths are checked with the request.
    let (code, v) = d.post(
        "/cph/batch-restore",
        json!({"restore_infos": [{"phone_id": INSTANCE, "bucket_name": bucket, "object_path": "fleet/",
               "include_files": ["/etc/passwd"]}]}),
    );
    assert_eq!(code, 400, "{v}");
    assert!(v["error_msg"].as_str().unwrap().contains("include_files[0]"), "{v}");
}

/// Many small files restore in a few large ranged reads, not one read each: a pack's read keeps
/// growing as the walk names more of it, while it streams.
#[test]
fn repo_restore_of_many_small_files_reads_packs_in_few_ranges() {
    let t = tempfile::tempdir().unwrap();
    let (src, state, repo) = (t.path().join("phone"), t.path().join("state"), t.path().join("repo"));
    let b = tree::Builder::new(&src);
    for i in 0..3000u32 {
        let body = cpbackup::demo::noise(1000 + (i as usize * 7919) % 2000, u64::from(i));
        b.file(&format!("data/data/com.many/files/f{i:04}"), &body);
    }
    b.file("data/media/0/a.txt", b"the export's paths: /data/data and /data/media");
    let to = format!("{}/", path_str(&repo));
    let first = export(local(&state), &src, &to, &["--instance-id", "acp-1", "--name", "many"]);
    assert_eq!(first["Status"], "AVAILABLE", "{first}");
    // Restores snapshot NAME whole next to the phone, checks it, and counts its requests.
    let restore = |name: &str| {
        let out = t.path().join(format!("restored-{name}"));
        fs::create_dir_all(&out).unwrap();
        let mut c = local(&state);
        c.args(["import", "--from", &format!("{to}{name}.manifest.json"), "--root", path_str(&out), "--json"]);
        let r = json(&run(&mut c, 0));
        same(&src, &out, "data/data");
        (r["Snapshot"]["Requests"].as_u64().unwrap(), r)
    };
    // About 6 MB in one pack: one read of it (it grows while it streams), and the trees'.
    let (requests, r) = restore("many");
    assert!(requests <= 6, "{requests} requests for 3,000 small files: {r}");

    // One file in a hundred changes: the next snapshot's files come from the old pack and,
    // every hundred files, from the new one. Each pack is one read across (the new pack's
    // read used to end whenever the walk had gone half its lead: 14 requests).
    for i in (0..3000u32).step_by(100) {
        b.file(&format!("data/data/com.many/files/f{i:04}"), &cpbackup::demo::noise(1500, u64::from(i) + 7));
    }
    let second = export(local(&state), &src, &to, &["--instance-id", "acp-1", "--name", "many2"]);
    assert_eq!(second["Snapshot"]["FilesUnchanged"], 2971, "{second}");
    let (requests, r) = restore("many2");
    assert!(requests <= 8, "{requests} requests for 3,000 small files in two packs: {r}");
}
