//! How archives travel to and from object storage, against a real Garage server: the records
//! of uploads in progress and their cleanup, server-side encryption with a customer key
//! (SSE-C, which Garage implements), and bandwidth caps measured on the wire.

use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cpbackup::spec::StoreOptions;
use cpbackup::store::s3::{S3Store, MIN_PART_SIZE};
use cpbackup::store::{Scheme, Store};

use crate::support::garage::{self, upload_records, Garage};
use crate::support::tree::{self, Ignore};
use crate::support::{json, path_str, run, stderr};

const MIB: usize = 1 << 20;

/// The library's store on `bucket`, with `opts` on top of the test server's address.
fn test_store(g: &Garage, bucket: &str, opts: StoreOptions) -> S3Store {
    g.store(bucket); // the test credentials, in this process's environment
    let opts = StoreOptions { endpoint: Some(g.endpoint()), region: Some(garage::REGION.into()), ..opts };
    S3Store::new(Scheme::S3, bucket, &opts).expect("open the test store")
}

/// `cpbackup export` of `root`'s /data/media/0 to `to`, printing the manifest.
fn export_cmd(g: &Garage, root: &Path, to: &str) -> Command {
    let mut c = g.cpbackup();
    c.args(["export", "--root", path_str(root), "--include", "/data/media/0", "--to", to, "--json"]);
    c
}

/// An agent killed between its two records of one upload (the one written before
/// CreateMultipartUpload, naming only the key, and the one written once the store answered
/// with the id) leaves both: `cleanup` aborts that upload and reports it once, whichever
/// record it reads first.
#[test]
fn transfer_cleanup_aborts_and_reports_each_upload_once() {
    let g = garage::shared();
    let bucket = g.bucket("twice");
    let probe = g.store(&bucket);
    for (round, intent_first) in [(0, true), (1, false)] {
        let key = format!("twice-{round}.tar");
        let live = tempfile::tempdir().unwrap();
        let opts =
            StoreOptions { state_dir: Some(live.path().to_path_buf()), parts_in_flight: 1, ..Default::default() };
        let store = test_store(g, &bucket, opts);
        let mut up = store.upload(&key, 0).unwrap();
        // A full part and one byte more: the multipart upload opens and its first part goes.
        up.write_all(&vec![7u8; MIN_PART_SIZE as usize + 1]).unwrap();
        let open = probe.open_uploads(&key).unwrap();
        assert_eq!(open.len(), 1, "{open:?}");
        let id = open[0].1.clone();
        let mine = upload_records(live.path());
        assert_eq!(mine.len(), 1, "one record while the upload runs: {mine:?}");
        let with_id: serde_json::Value = serde_json::from_slice(&fs::read(&mine[0]).unwrap()).unwrap();
        assert_eq!(with_id["upload_id"], id.as_str());
        let mut intent = with_id.clone();
        intent["upload_id"] = "".into();

        // What the kill left: both records, nobody holding them.
        let planted = tempfile::tempdir().unwrap();
        let (first, second) = if intent_first { (&intent, &with_id) } else { (&with_id, &intent) };
        fs::write(planted.path().join("upload-4242-a.json"), serde_json::to_vec(first).unwrap()).unwrap();
        fs::write(planted.path().join("upload-4242-b.json"), serde_json::to_vec(second).unwrap()).unwrap();
        let out = json(&run(g.cpbackup().env("CPBACKUP_STATE_DIR", planted.path()).arg("cleanup"), 0));
        assert_eq!(
            out["Aborted"],
            serde_json::json!([format!("s3://{bucket}/{key} (upload {id})")]),
            "intent record first: {intent_first}"
        );
        assert_eq!(out["Failed"], serde_json::json!([]));
        assert!(probe.open_uploads(&key).unwrap().is_empty(), "the upload is aborted");
        assert!(upload_records(planted.path()).is_empty(), "both records are gone");
        // The upload this process still holds finds it gone; nothing is left under the key.
        up.abort();
        assert!(probe.head(&key).unwrap().is_none());
        assert!(upload_records(live.path()).is_empty());
    }
}

/// A key file the test owns: 0600 unless `mode` says otherwise.
fn write_key(dir: &Path, name: &str, body: &[u8], mode: u32) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let p = dir.join(name);
    fs::write(&p, body).unwrap();
    fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
    p
}

/// SSE-C through Garage: an archive written with a customer key cannot be read without it (a
/// plain GET fails; import and verify fail as bad input naming the flag), can with it, and is
/// listed without it; the key shows in no output, manifest or upload record.
#[test]
fn transfer_sse_c_needs_its_key_to_read_and_never_shows_it() {
    use base64::Engine;
    let g = garage::shared();
    let bucket = g.bucket("ssec");
    let probe = g.store(&bucket);
    let src = tempfile::tempdir().unwrap();
    tree::random_files(&src.path().join("data/media/0/big"), 1, 7 * MIB, 21);
    tree::Builder::new(src.path()).file("data/media/0/note.txt", b"readable only with the key\n");
    let keys = tempfile::tempdir().unwrap();
    let raw: &[u8; 32] = b"SSEC-recognisable-key-0123456789";
    let b64 = base64::engine::general_purpose::STANDARD.encode(raw);
    // The same key in both accepted forms; another key for the wrong-key case.
    let key = write_key(keys.path(), "key.bin", raw, 0o600);
    let key_b64 = write_key(keys.path(), "key.b64", format!("{b64}\n").as_bytes(), 0o600);
    let wrong = write_key(keys.path(), "wrong.bin", b"SSEC-some-other-key-987654321098", 0o600);
    let state = tempfile::tempdir().unwrap();
    let url = format!("s3://{bucket}/enc/a.tar");

    let mut c = export_cmd(g, src.path(), &url);
    // Every log line there is, the SDK's traces included; the imports below run at -vv.
    c.env("CPBACKUP_STATE_DIR", state.path()).env("RUST_LOG", "trace");
    c.args(["-vv", "--sse-c-key-file", path_str(&key)]);
    let out = run(&mut c, 0);
    let m = json(&out);
    assert!(stderr(&out).contains("TRACE") && stderr(&out).contains("UploadPart"), "logging is on");
    assert_eq!(m["Status"], "AVAILABLE");
    assert_eq!(m["ServerSideEncryption"], serde_json::json!({"Mode": "SSE-C"}));
    let sse = cpbackup::store::sse::Sse::from_flags(None, None, Some(&key)).unwrap();
    let (size, _) = test_store(g, &bucket, StoreOptions { sse, ..Default::default() })
        .head("enc/a.tar")
        .unwrap()
        .expect("the archive exists");
    assert!(size > MIN_PART_SIZE, "multipart: every part carried the key");
    let manifest = probe.get("enc/a.tar.manifest.json").unwrap().expect("the manifest is readable without the key");
    let mut seen =
        vec![("export stdout+stderr", [out.stdout.clone(), out.stderr.clone()].concat()), ("manifest", manifest)];

    // Without the key: a plain GET is refused, and so are import and verify.
    let e = probe.get("enc/a.tar").unwrap_err().to_string();
    assert!(e.contains("400"), "{e}");
    let dst = tempfile::tempdir().unwrap();
    for cmd in [&["import", "--root", path_str(dst.path())][..], &["verify"]] {
        let out = run(g.cpbackup().arg("-vv").args(cmd).args(["--from", &url]), 2);
        let err = stderr(&out);
        assert!(err.contains("--sse-c-key-file") && err.contains("SSE-C"), "{cmd:?}: {err}");
        seen.push(("import/verify without the key", out.stderr));
    }
    assert_eq!(fs::read_dir(dst.path()).unwrap().count(), 0, "nothing restored");
    // The wrong key: refused the same way.
    let out = run(g.cpbackup().args(["verify", "--from", &url, "--sse-c-key-file", path_str(&wrong)]), 2);
    assert!(stderr(&out).contains("may not be the one"), "{}", stderr(&out));

    // With the key (either form): the archive comes back whole.
    for k in [&key, &key_b64] {
        let dst = tempfile::tempdir().unwrap();
        let mut c = g.cpbackup();
        c.args(["-vv", "import", "--root", path_str(dst.path()), "--from", &url, "--json"]);
        let out = run(c.args(["--sse-c-key-file", path_str(k)]), 0);
        assert_eq!(json(&out)["ChecksumVerified"], true);
        tree::assert_same(
            &tree::snapshot(src.path(), "data/media/0"),
            &tree::snapshot(dst.path(), "data/media/0"),
            Ignore { xattrs: true, ..Default::default() },
        );
        seen.push(("import stdout+stderr", [out.stdout, out.stderr].concat()));
    }
    let out = run(g.cpbackup().args(["verify", "--from", &url, "--json", "--sse-c-key-file", path_str(&key)]), 0);
    assert_eq!(json(&out)["Sha256"], m["Sha256"]);

    // `list` needs no key: manifests are written without it.
    let l = json(&run(g.cpbackup().args(["list", "--in", &format!("s3://{bucket}/enc/")]), 0));
    assert_eq!(l["TotalCount"], 1);
    assert_eq!(l["Data"][0]["ServerSideEncryption"]["Mode"], "SSE-C");

    for e in fs::read_dir(state.path()).into_iter().flatten().flatten() {
        seen.push(("a file of the state directory", fs::read(e.path()).unwrap_or_default()));
    }
    for (what, bytes) in &seen {
        let text = String::from_utf8_lossy(bytes);
        assert!(!text.contains("recognisable-key"), "the key appears in {what}");
        assert!(!text.contains(&b64[..16]), "the key in base64 appears in {what}");
    }
}

/// `--sse*` only where an object store can encrypt; a key file others can read is named.
#[test]
fn transfer_sse_flags_are_checked_where_they_apply() {
    let g = garage::shared();
    let bucket = g.bucket("sseflags");
    let src = tempfile::tempdir().unwrap();
    tree::Builder::new(src.path()).file("data/media/0/a.txt", b"x\n");
    let keys = tempfile::tempdir().unwrap();
    let open_key = write_key(keys.path(), "open.key", &[9u8; 32], 0o644);
    let root = path_str(src.path());
    let local = format!("{}/a.tar", path_str(keys.path()));
    for to in [local.as_str(), "-"] {
        let out = run(export_cmd(g, src.path(), to).args(["--sse", "AES256"]), 2);
        assert!(stderr(&out).contains("apply to oss://, obs:// and s3://"), "{to}: {}", stderr(&out));
        assert!(out.stdout.is_empty(), "nothing written to stdout");
    }
    assert!(!Path::new(&local).exists());
    let out =
        run(g.cpbackup().args(["import", "--root", root, "--from", &local, "--sse-c-key-file"]).arg(&open_key), 2);
    assert!(stderr(&out).contains("apply to oss://"), "{}", stderr(&out));
    let out = run(g.cpbackup().args(["verify", "--from", "s3://b-b-b/x.tar", "--sse", "DES"]), 2);
    assert!(stderr(&out).contains("--sse \"DES\"") && stderr(&out).contains("AES256"), "{}", stderr(&out));

    // A key file open to others: the export goes on, and the warning says which file and what to do.
    let url = format!("s3://{bucket}/open.tar");
    let out = run(export_cmd(g, src.path(), &url).arg("--sse-c-key-file").arg(&open_key), 0);
    assert!(stderr(&out).contains(&format!("chmod 600 {}", open_key.display())), "{}", stderr(&out));

    // The store's own keys: Garage takes the header and ignores it; the manifest records the
    // mode and key id (that the headers are sent is s3::sse's unit test).
    let url = format!("s3://{bucket}/kms.tar");
    let m = json(&run(export_cmd(g, src.path(), &url).args(["--sse-kms-key-id", "key-for-backups"]), 0));
    assert_eq!(m["ServerSideEncryption"], serde_json::json!({"Mode": "KMS", "KmsKeyId": "key-for-backups"}));
    let plain = json(&run(&mut export_cmd(g, src.path(), &format!("s3://{bucket}/plain.tar")), 0));
    assert!(plain.get("ServerSideEncryption").is_none(), "absent when not asked for: {plain}");
}

/// Bytes a `Meter` carried one way: when each write to the far side completed, and how many.
type Carried = Arc<Mutex<Vec<(Instant, usize)>>>;

/// A TCP proxy to Garage that logs, in time, the bytes it carries each way: the wire as the
/// agent sees it. Its socket towards the agent has a small send buffer, so a download it logs
/// is one the agent has taken (give or take that buffer and the agent's receive buffer).
struct Meter {
    port: u16,
    up: Carried,
    down: Carried,
}

impl Meter {
    fn start(upstream: u16) -> Meter {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let (up, down) = (Carried::default(), Carried::default());
        let (u, d) = (up.clone(), down.clone());
        std::thread::spawn(move || {
            for agent in listener.incoming().flatten() {
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else { continue };
                let size: libc::c_int = 32 * 1024;
                // SAFETY: setting an option of a socket this test owns, from a c_int it owns.
                unsafe {
                    libc::setsockopt(
                        agent.as_raw_fd(),
                        libc::SOL_SOCKET,
                        libc::SO_SNDBUF,
                        (&size as *const libc::c_int).cast(),
                        std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                    );
                }
                let (a2, s2) = (agent.try_clone().unwrap(), server.try_clone().unwrap());
                let (u, d) = (u.clone(), d.clone());
                std::thread::spawn(move || carry(agent, server, u));
                std::thread::spawn(move || carry(s2, a2, d));
            }
        });
        Meter { port, up, down }
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

fn carry(mut from: TcpStream, mut to: TcpStream, log: Carried) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
        log.lock().unwrap().push((Instant::now(), n));
    }
    let _ = to.shutdown(std::net::Shutdown::Write);
}

/// What a log of carried bytes says: the rate (the slope of bytes carried against time, over
/// the middle 90% of the bytes, so that the requests around the transfer are left out and a
/// download's bursts of one range each weigh as they should), the most bytes carried in any one
/// second, and the bytes in all.
fn pace_of(log: &Carried) -> (f64, usize, usize) {
    let events = log.lock().unwrap().clone();
    let total: usize = events.iter().map(|e| e.1).sum();
    let t0 = events[0].0;
    let mut sum = 0usize;
    let points: Vec<(f64, f64)> = events
        .iter()
        .filter_map(|(t, n)| {
            sum += n;
            let inside = sum as f64 >= 0.05 * total as f64 && sum as f64 <= 0.95 * total as f64;
            inside.then(|| ((*t - t0).as_secs_f64(), sum as f64))
        })
        .collect();
    let k = points.len() as f64;
    let (mt, mb) = (points.iter().map(|p| p.0).sum::<f64>() / k, points.iter().map(|p| p.1).sum::<f64>() / k);
    let cov: f64 = points.iter().map(|p| (p.0 - mt) * (p.1 - mb)).sum();
    let var: f64 = points.iter().map(|p| (p.0 - mt).powi(2)).sum();
    let mut worst = 0;
    for (i, (t, _)) in events.iter().enumerate() {
        let window: usize = events[i..].iter().take_while(|e| e.0 < *t + Duration::from_secs(1)).map(|e| e.1).sum();
        worst = worst.max(window);
    }
    (cov / var, worst, total)
}

/// `--limit-rate` measured on the wire, through Garage: an upload and a download of 8 MiB at
/// 2 MiB/s take as long as the cap says (average within 5%), all parts or ranges in flight
/// sharing it, and no second carries more than the cap and one part (range).
#[test]
fn transfer_limit_rate_holds_on_the_wire_both_ways() {
    let g = garage::shared();
    let bucket = g.bucket("rate");
    let src = tempfile::tempdir().unwrap();
    tree::random_files(&src.path().join("data/media/0/big"), 1, 8 * MIB, 22);
    let cap = 2 * MIB;
    let url = format!("s3://{bucket}/rate.tar");

    let up = Meter::start(g.nodes[0].s3_port);
    let mut c = export_cmd(g, src.path(), &url);
    let m = json(&run(c.env("CPBACKUP_ENDPOINT", up.endpoint()).args(["--limit-rate", "2M"]), 0));
    let (average, worst, total) = pace_of(&up.up);
    eprintln!("upload: {total} bytes at {average:.0} B/s, {worst} in the busiest second");
    assert!(total as u64 >= m["ArchiveSize"].as_u64().unwrap());
    assert!((average - cap as f64).abs() <= 0.05 * cap as f64, "upload at {average:.0} B/s, cap {cap}");
    assert!(worst <= cap + MIN_PART_SIZE as usize, "upload: {worst} bytes in one second");

    let down = Meter::start(g.nodes[0].s3_port);
    let mut c = g.cpbackup();
    c.env("CPBACKUP_ENDPOINT", down.endpoint());
    c.args(["verify", "--from", &url, "--json", "--limit-rate", "2M"]);
    assert_eq!(json(&run(&mut c, 0))["ChecksumVerified"], true);
    let (average, worst, total) = pace_of(&down.down);
    eprintln!("download: {total} bytes at {average:.0} B/s, {worst} in the busiest second");
    assert!((average - cap as f64).abs() <= 0.05 * cap as f64, "download at {average:.0} B/s, cap {cap}");
    assert!(worst <= cap + 2 * MIB, "download: {worst} bytes in one second (ranges are 2 MiB)");

    for bad in ["fast", "0", "2 M"] {
        let out = run(g.cpbackup().args(["verify", "--from", &url, "--limit-rate", bad]), 2);
        assert!(stderr(&out).contains(&format!("--limit-rate {bad:?}")), "{}", stderr(&out));
        assert!(stderr(&out).contains("20M, 500k, 1.5M"), "{}", stderr(&out));
    }
}
