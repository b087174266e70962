//! The local index cache, in the state directory: which pack holds which blob, for every index
//! object of the repository this phone has read, as a few sorted run files of fixed-size
//! records searched with `pread` (never read whole into memory). New index objects are merged
//! in as new runs; runs are compacted into one when there are too many.
//!
//! An optimisation only: a lost, corrupt or stale cache costs a rebuild from `index/`, never a
//! wrong answer that sticks. When an index object it has read is gone from the store (prune
//! rewrote it), the cache starts again. It must never claim a blob that no index object in the
//! store names: only published index objects go into it.

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use super::blob::Kind;
use super::id::{Id, Name};
use super::index;
use super::pack::{Entry, Located};
use crate::error::{Error, IoContext, Result};
use crate::store::Store;

const REC: usize = 64;
/// Records sorted in memory before they are written as a run (16 MiB).
const RUN_RECORDS: usize = 256 * 1024;
/// Published entries kept in memory, as sorted records, before they become a run (1.25 MiB;
/// plus one index object's, at most `pack::MAX_ENTRIES` a pack).
const PENDING_MAX: usize = 20_000;
/// More runs than this are merged into one.
const MAX_RUNS: usize = 8;
/// Index objects fetched at once.
const FETCH_WORKERS: usize = 8;

#[derive(Serialize, Deserialize, Default)]
struct State {
    version: u32,
    runs: Vec<String>,
    seen: Vec<String>,
}

struct Run {
    name: String,
    file: File,
    n: u64,
}

pub struct IndexCache {
    dir: PathBuf,
    runs: Vec<Run>,
    seen: BTreeSet<Name>,
    /// Records published by this process and not yet in a run, sorted.
    pending: Vec<[u8; REC]>,
    pending_names: Vec<Name>,
    _lock: Option<File>,
    /// A private cache (another run holds the shared one): removed on drop.
    private: bool,
}

fn encode(l: &Located) -> [u8; REC] {
    let mut r = [0u8; REC];
    r[..32].copy_from_slice(&l.entry.id.0);
    r[32..48].copy_from_slice(&l.pack.0);
    r[48..52].copy_from_slice(&l.entry.offset.to_le_bytes());
    r[52..56].copy_from_slice(&l.entry.stored.to_le_bytes());
    r[56..60].copy_from_slice(&l.entry.raw.to_le_bytes());
    r[60] = l.entry.kind as u8;
    r[61] = u8::from(l.entry.compressed);
    r
}

fn decode(r: &[u8]) -> Option<Located> {
    let u = |i: usize| u32::from_le_bytes([r[i], r[i + 1], r[i + 2], r[i + 3]]);
    let mut id = [0u8; 32];
    id.copy_from_slice(&r[..32]);
    let mut pack = [0u8; 16];
    pack.copy_from_slice(&r[32..48]);
    Some(Located {
        pack: Name(pack),
        entry: Entry {
            id: Id(id),
            kind: Kind::from_u8(r[60])?,
            compressed: r[61] == 1,
            offset: u(48),
            stored: u(52),
            raw: u(56),
        },
    })
}

impl Run {
    fn open(dir: &Path, name: &str) -> io::Result<Run> {
        let file = File::open(dir.join(name))?;
        let len = file.metadata()?.len();
        if len % REC as u64 != 0 {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "run file of a broken length"));
        }
        Ok(Run { name: name.to_string(), file, n: len / REC as u64 })
    }

    fn read(&self, from: u64, count: u64, buf: &mut Vec<u8>) -> io::Result<()> {
        buf.resize((count as usize) * REC, 0);
        self.file.read_exact_at(buf, from * REC as u64)
    }

    /// Every record of `id`, passed to `f` until it returns true.
    fn find(&self, id: &Id, f: &mut dyn FnMut(Located) -> bool) -> io::Result<bool> {
        if self.n == 0 {
            return Ok(false);
        }
        let mut buf = Vec::new();
        // Ids are uniform: the first guess lands near; a window around it usually holds it.
        const WINDOW: u64 = 64;
        let guess = ((id.prefix() as u128 * self.n as u128) >> 64) as u64;
        let (mut lo, mut hi) = (0u64, self.n);
        let ws = guess.saturating_sub(WINDOW / 2).min(self.n.saturating_sub(WINDOW));
        let we = (ws + WINDOW).min(self.n);
        self.read(ws, we - ws, &mut buf)?;
        let key = |b: &[u8], i: usize| -> [u8; 32] {
            let mut k = [0u8; 32];
            k.copy_from_slice(&b[i * REC..i * REC + 32]);
            k
        };
        if key(&buf, 0) > id.0 {
            hi = ws;
        } else if key(&buf, (we - ws - 1) as usize) < id.0 {
            lo = we;
        } else {
            lo = ws;
            hi = we;
        }
        // Lower bound by bisection.
        let mut one = Vec::new();
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            self.read(mid, 1, &mut one)?;
            if key(&one, 0) < id.0 {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        let mut i = lo;
        while i < self.n {
            self.read(i, 1, &mut one)?;
            if key(&one, 0) != id.0 {
                break;
            }
            if let Some(l) = decode(&one) {
                if f(l) {
                    return Ok(true);
                }
            }
            i += 1;
        }
        Ok(false)
    }
}

impl IndexCache {
    /// Open the cache in `dir` (made when missing). When another run holds it, a private one
    /// beside it is used instead, and removed at the end.
    pub fn open(dir: &Path) -> Result<IndexCache> {
        make_dir(dir)?;
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join("lock"))
            .ctx(|| format!("opening {}", dir.join("lock").display()))?;
        if lock.try_lock().is_err() {
            let private = dir.join(format!("private-{}-{}", std::process::id(), rand::random::<u32>()));
            make_dir(&private)?;
            tracing::info!("the index cache {} is in use by another run: using a private one", dir.display());
            return Ok(IndexCache::empty(private, None, true));
        }
        let mut cache = IndexCache::empty(dir.to_path_buf(), Some(lock), false);
        match cache.load() {
            Ok(()) => {}
            Err(e) => {
                tracing::info!("the index cache {} is unusable ({e}): it will be rebuilt", dir.display());
                cache.reset();
            }
        }
        Ok(cache)
    }

    fn empty(dir: PathBuf, lock: Option<File>, private: bool) -> IndexCache {
        IndexCache {
            dir,
            runs: Vec::new(),
            seen: BTreeSet::new(),
            pending: Vec::new(),
            pending_names: Vec::new(),
            _lock: lock,
            private,
        }
    }

    fn load(&mut self) -> io::Result<()> {
        let bytes = match fs::read(self.dir.join("state.json")) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        let st: State = serde_json::from_slice(&bytes).map_err(io::Error::other)?;
        if st.version != 1 {
            return Err(io::Error::other("another version"));
        }
        for r in &st.runs {
            self.runs.push(Run::open(&self.dir, r)?);
        }
        for s in &st.seen {
            self.seen.insert(Name::parse(s).ok_or_else(|| io::Error::other("bad name"))?);
        }
        Ok(())
    }

    /// Forget everything (runs deleted).
    fn reset(&mut self) {
        for r in self.runs.drain(..) {
            let _ = fs::remove_file(self.dir.join(&r.name));
        }
        self.seen.clear();
        self.pending.clear();
        self.pending_names.clear();
        // Runs no state names (a crash between writing a run and the state).
        if let Ok(rd) = fs::read_dir(&self.dir) {
            for e in rd.flatten() {
                if e.file_name().to_string_lossy().ends_with(".run") {
                    let _ = fs::remove_file(e.path());
                }
            }
        }
        let _ = fs::remove_file(self.dir.join("state.json"));
    }

    fn save(&self) -> Result<()> {
        let mut seen: Vec<String> = self.seen.iter().map(Name::hex).collect();
        seen.extend(self.pending_names.iter().map(Name::hex));
        let st = State { version: 1, runs: self.runs.iter().map(|r| r.name.clone()).collect(), seen };
        let body = serde_json::to_vec(&st).map_err(|e| Error::internal(format!("index cache state: {e}")))?;
        write_atomic(&self.dir.join("state.json"), &body)
    }

    /// Bring the cache up to date with the index objects under `prefix`: start again if one
    /// it has read is gone, read those it has not. Returns how many it read.
    pub fn sync(&mut self, store: &dyn Store, prefix: &str, keys: Option<&super::seal::Keys>) -> Result<usize> {
        self.flush()?;
        let mut present = BTreeSet::new();
        for o in store.list(&format!("{prefix}index/"))? {
            if let Some(n) = index::name_of(&o.key) {
                present.insert(n);
            }
        }
        if !self.seen.is_subset(&present) {
            tracing::info!("an index object the cache had read is gone (prune rewrote it): rebuilding the index cache");
            self.reset();
        }
        let todo: Vec<Name> = present.difference(&self.seen).copied().collect();
        if todo.is_empty() {
            return Ok(0);
        }
        let batch_records: Mutex<Vec<[u8; REC]>> = Mutex::new(Vec::new());
        let mut done = 0usize;
        for batch in todo.chunks(64) {
            let next = std::sync::atomic::AtomicUsize::new(0);
            let failed: Mutex<Option<Error>> = Mutex::new(None);
            std::thread::scope(|s| {
                for _ in 0..FETCH_WORKERS.min(batch.len()) {
                    s.spawn(|| loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(name) = batch.get(i) else { break };
                        let key = index::key(prefix, name);
                        let got = store.get(&key).and_then(|b| {
                            let Some(b) = b else { return Ok(Vec::new()) };
                            let mut recs = Vec::new();
                            index::decode(&b, &store.url(&key), keys, &mut |l| recs.push(encode(&l)))?;
                            Ok(recs)
                        });
                        match got {
                            Ok(recs) => batch_records.lock().unwrap_or_else(|p| p.into_inner()).extend(recs),
                            Err(e) => {
                                *failed.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                                break;
                            }
                        }
                    });
                }
            });
            if let Some(e) = failed.into_inner().unwrap_or_else(|p| p.into_inner()) {
                return Err(e);
            }
            let mut recs = batch_records.lock().unwrap_or_else(|p| p.into_inner());
            if recs.len() >= RUN_RECORDS {
                self.write_run(&mut recs)?;
            }
            drop(recs);
            self.seen.extend(batch.iter().copied());
            done += batch.len();
        }
        let mut recs = batch_records.into_inner().unwrap_or_else(|p| p.into_inner());
        if !recs.is_empty() {
            self.write_run(&mut recs)?;
        }
        self.save()?;
        self.compact()?;
        Ok(done)
    }

    fn write_run(&mut self, recs: &mut Vec<[u8; REC]>) -> Result<()> {
        recs.sort_unstable();
        recs.dedup();
        let name = format!("{}.run", Name::random().hex());
        let path = self.dir.join(&name);
        let mut w = BufWriter::new(File::create(&path).ctx(|| format!("creating {}", path.display()))?);
        for r in recs.iter() {
            w.write_all(r).ctx(|| format!("writing {}", path.display()))?;
        }
        let f = w
            .into_inner()
            .map_err(|e| Error::Io { context: format!("writing {}", path.display()), source: e.into_error() })?;
        f.sync_all().ctx(|| format!("flushing {}", path.display()))?;
        drop(f);
        recs.clear();
        self.runs.push(Run::open(&self.dir, &name).ctx(|| format!("opening {}", path.display()))?);
        Ok(())
    }

    /// Merge every run into one when there are too many.
    fn compact(&mut self) -> Result<()> {
        if self.runs.len() <= MAX_RUNS {
            return Ok(());
        }
        let name = format!("{}.run", Name::random().hex());
        let path = self.dir.join(&name);
        let mut w = BufWriter::new(File::create(&path).ctx(|| format!("creating {}", path.display()))?);
        let mut readers: Vec<BufReader<File>> = Vec::new();
        for r in &self.runs {
            readers.push(BufReader::with_capacity(64 << 10, r.file.try_clone().ctx(|| "index cache run".into())?));
        }
        let mut heads: Vec<Option<[u8; REC]>> = readers.iter_mut().map(next_rec).collect();
        let mut last: Option<[u8; REC]> = None;
        while let Some((i, rec)) =
            heads.iter().enumerate().filter_map(|(i, h)| h.map(|h| (i, h))).min_by(|a, b| a.1.cmp(&b.1))
        {
            if last != Some(rec) {
                w.write_all(&rec).ctx(|| format!("writing {}", path.display()))?;
                last = Some(rec);
            }
            heads[i] = next_rec(&mut readers[i]);
        }
        let f = w
            .into_inner()
            .map_err(|e| Error::Io { context: format!("writing {}", path.display()), source: e.into_error() })?;
        f.sync_all().ctx(|| format!("flushing {}", path.display()))?;
        let old: Vec<String> = self.runs.drain(..).map(|r| r.name).collect();
        self.runs.push(Run::open(&self.dir, &name).ctx(|| format!("opening {}", path.display()))?);
        self.save()?;
        for o in old {
            let _ = fs::remove_file(self.dir.join(o));
        }
        Ok(())
    }

    /// Where a blob is, in a pack `usable` accepts (writers pass one that refuses marked packs).
    pub fn lookup(&self, id: &Id, usable: &dyn Fn(&Name) -> bool) -> Result<Option<Located>> {
        if let Some(l) = self.lookup_published(id, usable) {
            return Ok(Some(l));
        }
        let mut found = None;
        for r in self.runs.iter().rev() {
            let hit = r
                .find(id, &mut |l| {
                    if usable(&l.pack) {
                        found = Some(l);
                        true
                    } else {
                        false
                    }
                })
                .ctx(|| format!("reading the index cache {}", self.dir.display()))?;
            if hit {
                return Ok(found);
            }
        }
        Ok(None)
    }

    /// Where a blob is among what this process published and has not yet written as a run:
    /// memory only, never a read.
    pub fn lookup_published(&self, id: &Id, usable: &dyn Fn(&Name) -> bool) -> Option<Located> {
        let first = self.pending.partition_point(|r| r[..32] < id.0[..]);
        self.pending[first..]
            .iter()
            .take_while(|r| r[..32] == id.0[..])
            .filter_map(|r| decode(r))
            .find(|l| usable(&l.pack))
    }

    /// An index object this run published: its blobs are found from now on.
    pub fn published(&mut self, name: Name, packs: &[(Name, Vec<Entry>)]) -> Result<()> {
        let before = self.pending.len();
        for (pack, entries) in packs {
            for e in entries {
                self.pending.push(encode(&Located { pack: *pack, entry: *e }));
            }
        }
        // The new records sorted, then merged with those before: the stable sort finds the
        // two sorted runs and merges them in one pass.
        self.pending[before..].sort_unstable();
        self.pending.sort();
        self.pending_names.push(name);
        if self.pending.len() >= PENDING_MAX {
            self.flush()?;
        }
        Ok(())
    }

    /// Write what was published in memory as a run.
    pub fn flush(&mut self) -> Result<()> {
        if self.pending_names.is_empty() {
            return Ok(());
        }
        if !self.pending.is_empty() {
            let mut recs = std::mem::take(&mut self.pending);
            self.write_run(&mut recs)?;
        }
        self.seen.extend(self.pending_names.drain(..));
        self.save()?;
        self.compact()
    }

    /// Records in the cache (tests, reports).
    pub fn len(&self) -> u64 {
        self.runs.iter().map(|r| r.n).sum::<u64>() + self.pending.len() as u64
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn runs(&self) -> usize {
        self.runs.len()
    }
}

impl Drop for IndexCache {
    fn drop(&mut self) {
        if self.private {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

fn next_rec(r: &mut BufReader<File>) -> Option<[u8; REC]> {
    let mut b = [0u8; REC];
    r.read_exact(&mut b).ok().map(|()| b)
}

fn make_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).ctx(|| format!("creating {}", dir.display()))
}

/// Write a file whole under a temporary name, flush it, rename it into place.
pub fn write_atomic(path: &Path, body: &[u8]) -> Result<()> {
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    let mut f = File::create(&tmp).ctx(|| format!("creating {}", tmp.display()))?;
    f.write_all(body).ctx(|| format!("writing {}", tmp.display()))?;
    f.sync_all().ctx(|| format!("flushing {}", tmp.display()))?;
    fs::rename(&tmp, path).ctx(|| format!("renaming {}", tmp.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::file::FileStore;

    fn loc(i: u32, pack: u8) -> Located {
        let mut id = [0u8; 32];
        id[..4].copy_from_slice(&i.wrapping_mul(2654435761).to_be_bytes());
        id[4..8].copy_from_slice(&i.to_be_bytes());
        Located {
            pack: Name([pack; 16]),
            entry: Entry { id: Id(id), kind: Kind::Data, compressed: true, offset: i, stored: 10, raw: 20 },
        }
    }

    #[test]
    fn lookups_find_every_published_blob_across_runs_and_restarts() {
        let state = tempfile::tempdir().unwrap();
        let repo = tempfile::tempdir().unwrap();
        let store = FileStore::new(repo.path());
        // Twelve index objects of 2,000 blobs each, in the store.
        let mut names = Vec::new();
        for k in 0..12u32 {
            let entries: Vec<Entry> = (k * 2000..(k + 1) * 2000).map(|i| loc(i, k as u8).entry).collect();
            let n = Name::random();
            store.put(&index::key("", &n), &index::encode(&[(Name([k as u8; 16]), entries)], None).unwrap()).unwrap();
            names.push(n);
        }
        let dir = state.path().join("c");
        let mut c = IndexCache::open(&dir).unwrap();
        assert_eq!(c.sync(&store, "", None).unwrap(), 12);
        assert_eq!(c.len(), 24_000);
        let all = |_: &Name| true;
        for i in (0..24_000).step_by(7) {
            assert_eq!(c.lookup(&loc(i, 0).entry.id, &all).unwrap(), Some(loc(i, (i / 2000) as u8)), "{i}");
        }
        assert_eq!(c.lookup(&Id([0xee; 32]), &all).unwrap(), None);
        // A pack refused is not an answer.
        assert_eq!(c.lookup(&loc(5, 0).entry.id, &|p: &Name| p.0[0] != 0).unwrap(), None);
        // Our own publications, many of them: more runs, compacted.
        for k in 0..10u32 {
            let entries: Vec<Entry> = (100_000 + k * 10..100_000 + (k + 1) * 10).map(|i| loc(i, 50).entry).collect();
            let packs = [(Name([50; 16]), entries)];
            let n = Name::random();
            store.put(&index::key("", &n), &index::encode(&packs, None).unwrap()).unwrap();
            c.published(n, &packs).unwrap();
            c.flush().unwrap();
        }
        assert!(c.runs() <= MAX_RUNS, "{} runs", c.runs());
        assert_eq!(c.lookup(&loc(100_055, 0).entry.id, &all).unwrap(), Some(loc(100_055, 50)));
        // Published and not yet in a run: found in memory, in a pack the caller may use.
        let one = vec![loc(200_000, 0).entry];
        let packs = [(Name([60; 16]), one.clone()), (Name([61; 16]), one)];
        let n = Name::random();
        store.put(&index::key("", &n), &index::encode(&packs, None).unwrap()).unwrap();
        c.published(n, &packs).unwrap();
        let id = loc(200_000, 0).entry.id;
        assert_eq!(c.lookup(&id, &all).unwrap().map(|l| l.pack), Some(Name([60; 16])));
        assert_eq!(c.lookup(&id, &|p: &Name| p.0[0] == 61).unwrap().map(|l| l.pack), Some(Name([61; 16])));
        assert_eq!(c.lookup(&id, &|p: &Name| p.0[0] == 62).unwrap(), None);
        assert_eq!(c.lookup(&loc(200_001, 0).entry.id, &all).unwrap(), None);
        c.flush().unwrap();
        drop(c);
        // Reopened: nothing to read, everything found.
        let mut c = IndexCache::open(&dir).unwrap();
        assert_eq!(c.sync(&store, "", None).unwrap(), 0, "the published objects count as read");
        assert_eq!(c.lookup(&loc(23_999, 0).entry.id, &all).unwrap(), Some(loc(23_999, 11)));
        // A second user of the same cache gets a private one.
        let other = IndexCache::open(&dir).unwrap();
        assert!(other.private && other.is_empty());
        drop(other);
        // An index object gone from the store: the cache starts again.
        store.delete(&index::key("", &names[0])).unwrap();
        assert_eq!(c.sync(&store, "", None).unwrap(), 22, "11 left of the first twelve and our eleven");
        assert_eq!(c.lookup(&loc(5, 0).entry.id, &all).unwrap(), None);
        assert!(c.lookup(&loc(2005, 0).entry.id, &all).unwrap().is_some());
        drop(c);
        // A corrupt state: rebuilt.
        fs::write(dir.join("state.json"), b"{garbage").unwrap();
        let mut c = IndexCache::open(&dir).unwrap();
        assert_eq!(c.sync(&store, "", None).unwrap(), 22);
        assert!(c.lookup(&loc(2005, 0).entry.id, &all).unwrap().is_some());
    }
}
