//! End to end through the library: a tree into a local repository and back, incremental
//! runs, partial reads.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::counted::Counted;
use super::read::{self, Filter};
use super::write::{self, Options, Written};
use super::Repo;
use crate::archive::unpack::{self, Unpacker};
use crate::demo::noise;
use crate::manifest::{Manifest, Status};
use crate::progress::Progress;
use crate::select::Selection;
use crate::store::file::FileStore;
use crate::store::Store;

fn make_tree(root: &Path) {
    let app = root.join("data/data/com.a");
    fs::create_dir_all(app.join("files/deep/er")).unwrap();
    fs::create_dir_all(app.join("empty")).unwrap();
    fs::write(app.join("files/random.bin"), noise(300_000, 1)).unwrap();
    fs::write(app.join("files/deep/er/note.txt"), b"hello").unwrap();
    fs::write(app.join("files/empty"), b"").unwrap();
    fs::hard_link(app.join("files/random.bin"), app.join("files/link.bin")).unwrap();
    std::os::unix::fs::symlink("/data/data/com.a/files", app.join("lnk")).unwrap();
    fs::set_permissions(app.join("files/deep/er/note.txt"), fs::Permissions::from_mode(0o640)).unwrap();
    let media = root.join("data/media/0");
    fs::create_dir_all(&media).unwrap();
    let mut big = noise(3 << 20, 2);
    big.extend(b"text ".iter().cycle().take(3 << 20));
    fs::write(media.join("big.bin"), &big).unwrap();
    // A copy: stored once.
    fs::write(media.join("copy.bin"), &big).unwrap();
    for i in 0..300 {
        fs::write(media.join(format!("small{i:03}.txt")), format!("file number {i}\n").repeat(i % 7 + 1)).unwrap();
    }
}

fn snapshot(store: &dyn Store, root: &Path, state: &Path, n: u32) -> Written {
    let repo = Repo::open_or_init(store, "fleet/", None).unwrap();
    let (sel, _) = Selection::new(root, &["/data/data".into(), "/data/media".into()], &[]).unwrap();
    let opts = Options {
        cache_dir: super::cache_dir(state, store, "fleet/"),
        selection_key: "sel".into(),
        rehash: false,
        record_key: format!("fleet/s{n}.manifest.json"),
        backup_file_id: format!("bf-{n}"),
    };
    let w = write::snapshot(&repo, &sel, &opts, &Progress::hidden(), &mut |s| panic!("{s:?}"), &mut |w| panic!("{w}"))
        .unwrap();
    let m = Manifest {
        backup_file_id: format!("bf-{n}"),
        status: Status::Available,
        format: Some(crate::archive::Format::Repo),
        snapshot: Some(super::ops::SnapshotInfo { tree: super::ops::encode_root(&w.root), ..Default::default() }),
        ..Default::default()
    };
    store.put(&opts.record_key, &m.to_json()).unwrap();
    w
}

fn restore(store: &dyn Store, root: &[super::pack::Located], to: &Path, includes: &[String]) -> Vec<bool> {
    try_restore(store, root, to, includes).unwrap()
}

/// A restore through the read-ahead, committed only when every entry came.
fn try_restore(
    store: &dyn Store,
    root: &[super::pack::Located],
    to: &Path,
    includes: &[String],
) -> crate::error::Result<Vec<bool>> {
    fs::create_dir_all(to).unwrap();
    let mut u = Unpacker::new(to, unpack::Options::default()).unwrap();
    let opener = read::Opener::new(store, "fleet/", super::id::Hasher::Sha256);
    let seen = super::ahead::entries(opener, root, &Filter::new(includes)?, &mut |item, data| u.entry(item, data))?;
    u.commit()?;
    Ok(seen)
}

fn same(a: &Path, b: &Path) {
    let ma = fs::symlink_metadata(a).unwrap();
    let mb = fs::symlink_metadata(b).unwrap();
    assert_eq!(ma.file_type(), mb.file_type(), "{}", a.display());
    if ma.is_dir() {
        let mut names: Vec<_> = fs::read_dir(a).unwrap().map(|e| e.unwrap().file_name()).collect();
        names.sort();
        let mut other: Vec<_> = fs::read_dir(b).unwrap().map(|e| e.unwrap().file_name()).collect();
        other.sort();
        assert_eq!(names, other, "{}", a.display());
        for n in names {
            same(&a.join(&n), &b.join(&n));
        }
    } else if ma.file_type().is_symlink() {
        assert_eq!(fs::read_link(a).unwrap(), fs::read_link(b).unwrap());
    } else {
        assert_eq!(fs::read(a).unwrap(), fs::read(b).unwrap(), "{}", a.display());
        assert_eq!(ma.mode(), mb.mode(), "{}", a.display());
        assert_eq!(ma.mtime(), mb.mtime(), "{}", a.display());
    }
}

#[test]
fn snapshots_round_trip_dedup_and_skip_unchanged_files() {
    let t = tempfile::tempdir().unwrap();
    let (root, state) = (t.path().join("phone"), t.path().join("state"));
    make_tree(&root);
    let store = FileStore::new(&t.path().join("bucket"));

    let first = snapshot(&store, &root, &state, 1);
    assert_eq!(first.stats.files_unchanged, 0);
    assert!(first.stats.chunks_reused >= 2, "the copy's chunks are reused: {:?}", first.stats);
    let stored: u64 = store.list("fleet/data/").unwrap().iter().map(|o| o.size).sum();
    assert!(stored < (4 << 20), "the copy is stored once, the text compressed: {stored}");
    let root_tree = first.root.clone();
    first.commit_cache();

    let out = t.path().join("restored");
    let seen = restore(&store, &root_tree, &out, &[]);
    assert!(seen.is_empty());
    same(&root.join("data/data"), &out.join("data/data"));
    same(&root.join("data/media"), &out.join("data/media"));
    let l = fs::metadata(out.join("data/data/com.a/files/link.bin")).unwrap();
    assert_eq!(l.nlink(), 2, "the hard link is a hard link again");

    // Unchanged: nothing read, nothing new.
    let second = snapshot(&store, &root, &state, 2);
    assert_eq!(second.stats.bytes_read, 0, "{:?}", second.stats);
    assert_eq!(second.stats.chunks_new, 0, "{:?}", second.stats);
    assert_eq!(second.root, root_tree, "the same tree");
    second.commit_cache();

    // One file changed: only it is read.
    fs::write(root.join("data/media/0/small005.txt"), b"changed").unwrap();
    let third = snapshot(&store, &root, &state, 3);
    assert_eq!(third.stats.bytes_read, 7, "{:?}", third.stats);
    assert!(third.stats.chunks_new <= 6, "the file and the trees above it: {:?}", third.stats);
    third.commit_cache();

    // The record the cache came from is gone: every file is read again.
    store.delete("fleet/s3.manifest.json").unwrap();
    let fourth = snapshot(&store, &root, &state, 4);
    assert!(fourth.stats.bytes_read > 6 << 20, "{:?}", fourth.stats);
    assert_eq!(fourth.stats.chunks_new, 0, "{:?}", fourth.stats);

    // One file out of the snapshot: a few requests, little more than the file downloaded.
    let counted = Counted::new(&store);
    let out = t.path().join("partial");
    let seen = restore(&counted, &fourth.root, &out, &["/data/media/0/big.bin".into(), "/data/nothing".into()]);
    assert_eq!(seen, vec![true, false]);
    assert_eq!(
        fs::read(out.join("data/media/0/big.bin")).unwrap(),
        fs::read(root.join("data/media/0/big.bin")).unwrap()
    );
    assert!(!out.join("data/data").exists() && !out.join("data/media/0/copy.bin").exists());
    assert!(counted.requests() <= 4, "{} requests", counted.requests());
    assert!(counted.downloaded() < (4 << 20) + (2 << 20), "{} bytes", counted.downloaded());
}

/// Chunks are hashed on the compressors, several batches at once: a chunk two of them both
/// found new is stored once, and every copy names it.
#[test]
fn a_chunk_found_new_twice_in_one_run_is_stored_once() {
    let t = tempfile::tempdir().unwrap();
    let (root, state) = (t.path().join("phone"), t.path().join("state"));
    let dir = root.join("data/media/0");
    fs::create_dir_all(&dir).unwrap();
    fs::create_dir_all(root.join("data/data")).unwrap();
    let same_bytes = noise(20_000, 5);
    for i in 0..3000 {
        fs::write(dir.join(format!("copy{i:04}.bin")), &same_bytes).unwrap();
    }
    let store = FileStore::new(&t.path().join("bucket"));
    let w = snapshot(&store, &root, &state, 1);
    // One data chunk and the trees (3,000 entries: a few blobs).
    assert!(w.stats.chunks_new <= 12, "{:?}", w.stats);
    assert!(w.stats.chunks_reused >= 2999, "{:?}", w.stats);
    let stored: u64 = store.list("fleet/data/").unwrap().iter().map(|o| o.size).sum();
    assert!(stored < 2 * 20_000 + (64 << 10), "the content once, with the trees: {stored}");
    let out = t.path().join("restored");
    restore(&store, &w.root, &out, &[]);
    same(&dir, &out.join("data/media/0"));
}

/// A phone's root under `dir` with an app's folder and `/data/media/0` (the third), and a state
/// folder beside it.
fn phone(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let (root, state) = (dir.join("phone"), dir.join("state"));
    let media = root.join("data/media/0");
    fs::create_dir_all(&media).unwrap();
    fs::create_dir_all(root.join("data/data/com.a")).unwrap();
    (root, state, media)
}

/// `pack` cut to its first `keep` bytes: restoring snapshot `w` into `out` stops, naming the
/// damage, with nothing committed.
fn restore_stops_at_a_pack_cut_short(store: &FileStore, w: &Written, pack: &Path, keep: usize, out: &Path) {
    let mut bytes = fs::read(pack).unwrap();
    bytes.truncate(keep);
    fs::write(pack, &bytes).unwrap();
    let e = try_restore(store, &w.root, out, &[]).unwrap_err().to_string();
    assert!(e.contains("ends before byte") && e.contains("damaged"), "{e}");
    assert!(!out.join("data/media").exists(), "nothing committed");
}

/// The pack files of the repository `fleet/` in a local store at `bucket`.
fn packs(bucket: &Path) -> Vec<PathBuf> {
    fs::read_dir(bucket.join("fleet/data"))
        .unwrap()
        .flat_map(|d| fs::read_dir(d.unwrap().path()).unwrap())
        .map(|e| e.unwrap().path())
        .collect()
}

fn largest(files: &[PathBuf]) -> PathBuf {
    files.iter().max_by_key(|p| fs::metadata(p).unwrap().len()).unwrap().clone()
}

/// A restore reads ahead on threads of its own: a file of more ranges than it holds at once,
/// between many small files, comes back whole and in order; a damaged chunk stops it before
/// anything is committed.
#[test]
fn restores_read_ahead_in_order_and_stop_at_a_damaged_chunk() {
    let t = tempfile::tempdir().unwrap();
    let (root, state, media) = phone(t.path());
    for i in 0..200 {
        fs::write(media.join(format!("a{i:03}")), noise(1000 + i * 37, i as u64)).unwrap();
        fs::write(media.join(format!("z{i:03}")), format!("{i}").repeat(i)).unwrap();
    }
    fs::write(media.join("big"), noise(40 << 20, 7)).unwrap();
    let store = FileStore::new(&t.path().join("bucket"));
    let w = snapshot(&store, &root, &state, 1);

    let counted = Counted::new(&store);
    let out = t.path().join("restored");
    restore(&counted, &w.root, &out, &[]);
    same(&root.join("data/media"), &out.join("data/media"));
    // About 41 MiB in reads of at most RANGE bytes; a few of trees, and a few ranges read
    // early, when the decoder caught up with the walk.
    let reads = (41 << 20) / super::ahead::RANGE + 1;
    assert!(counted.requests() <= reads + 5, "{} requests for {reads} reads", counted.requests());

    let pack = largest(&packs(&t.path().join("bucket")));
    let mut bytes = fs::read(&pack).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    fs::write(&pack, &bytes).unwrap();
    let out = t.path().join("damaged");
    let e = try_restore(&store, &w.root, &out, &[]).unwrap_err().to_string();
    assert!(e.contains("does not hash to its id") || e.contains("does not decode"), "{e}");
    assert!(!out.join("data/media").exists(), "nothing committed");

    // A pack cut short: its stream ends before the blobs a tree names in it.
    restore_stops_at_a_pack_cut_short(&store, &w, &pack, middle, &t.path().join("short"));
}

/// A range the walk still extends once it has planned half its lead (small files fill a pack
/// slowly) is read while it grows: a pack of 1,500 small files in one read; cut short, its read
/// stops at the cut and the restore with it, before anything is committed.
#[test]
fn a_growing_range_reads_its_pack_once_and_stops_where_the_pack_is_cut_short() {
    let t = tempfile::tempdir().unwrap();
    let (root, state, media) = phone(t.path());
    for i in 0..1500 {
        fs::write(media.join(format!("f{i:04}")), noise(1000 + i * 7 % 2000, i as u64)).unwrap();
    }
    let store = FileStore::new(&t.path().join("bucket"));
    let w = snapshot(&store, &root, &state, 1);
    let packs = packs(&t.path().join("bucket"));

    let counted = Counted::new(&store);
    let out = t.path().join("restored");
    restore(&counted, &w.root, &out, &[]);
    same(&root.join("data/media"), &out.join("data/media"));
    // Each pack read once at most: its trees' and its files' (4,500 steps of the walk; a range
    // read once the walk had gone half its lead was one read of a few hundred files).
    assert!(counted.requests() <= packs.len() as u64, "{} requests for {} packs", counted.requests(), packs.len());

    let data = largest(&packs);
    let keep = fs::metadata(&data).unwrap().len() as usize * 2 / 3;
    restore_stops_at_a_pack_cut_short(&store, &w, &data, keep, &t.path().join("short"));
}

/// The prune rule, step by step: a forgotten snapshot's packs are marked, wait out the grace,
/// and go; a writer after the mark stores what it needs again; a writer that reused a marked
/// pack before the mark (its record written after) keeps it.
#[test]
fn prune_marks_waits_then_deletes_and_never_what_a_record_reaches() {
    use super::prune::prune;
    let t = tempfile::tempdir().unwrap();
    let (root, state) = (t.path().join("phone"), t.path().join("state"));
    make_tree(&root);
    let store = FileStore::new(&t.path().join("bucket"));
    let a = snapshot(&store, &root, &state, 1);
    a.commit_cache();
    let repo = Repo::open(&store, "fleet/", &Default::default(), &[]).unwrap();
    let packs = |s: &FileStore| s.list("fleet/data/").unwrap().len();
    let before = packs(&store);
    assert!(before >= 2);
    let now = 1_000_000;
    // Referenced: nothing marked.
    let p = prune(&repo, 100, now).unwrap();
    assert_eq!((p.marked, p.deleted), (0, 0), "{p:?}");
    // A copy of the record, as a writer that started before the mark and commits after it.
    let rec = store.get("fleet/s1.manifest.json").unwrap().unwrap();
    store.delete("fleet/s1.manifest.json").unwrap();
    let p = prune(&repo, 100, now).unwrap();
    assert_eq!(p.marked, before, "{p:?}");
    store.put("fleet/late.manifest.json", &rec).unwrap();
    let p = prune(&repo, 100, now + 200).unwrap();
    assert_eq!((p.deleted, p.unmarked), (0, before), "reached again: kept and unmarked: {p:?}");
    assert!(store.list("fleet/marks/").unwrap().is_empty());
    store.delete("fleet/late.manifest.json").unwrap();

    // Marked again; a writer after the mark does not reuse the marked packs.
    let p = prune(&repo, 100, now + 300).unwrap();
    assert_eq!(p.marked, before);
    let b = snapshot(&store, &root, &state, 2);
    assert!(b.stats.chunks_new > 5 && b.stats.bytes_read > 6 << 20, "everything stored again: {:?}", b.stats);
    let b_root = b.root.clone();
    b.commit_cache();
    // Within the grace: nothing deleted.
    let p = prune(&repo, 100, now + 350).unwrap();
    assert_eq!((p.deleted, p.waiting), (0, before), "{p:?}");
    // Past it: the old packs go, the index objects naming them are rewritten.
    let p = prune(&repo, 100, now + 500).unwrap();
    assert_eq!(p.deleted, before, "{p:?}");
    assert!(p.indexes_rewritten >= 1);
    assert_eq!(packs(&store), before, "only b's packs are left");
    let out = t.path().join("restored");
    restore(&store, &b_root, &out, &[]);
    same(&root.join("data/media"), &out.join("data/media"));
    // And the next writer finds what it needs in the rewritten index.
    let c = snapshot(&store, &root, &state, 3);
    assert_eq!(c.stats.chunks_new, 0, "{:?}", c.stats);
}
