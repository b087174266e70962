//! The repository's data paths as the command line and the daemon run them: `export --format
//! repo` (a snapshot and its record), `import` of a snapshot (into the same staging and commit
//! as an archive), `ls` and `verify` of a snapshot. Owns the record's `Snapshot` field and the
//! finding of a snapshot from `--from` / `--backup-file-id`.
//!
//! The record is the commit point: it says `AVAILABLE` (with the root tree) only after
//! `write::snapshot` has stored every pack and index object the tree names. A snapshot's record
//! is never rewritten by a restore (it may be forgotten meanwhile; a rewrite would bring back a
//! record whose data prune may delete).

use std::collections::HashSet;
use std::io;
use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::counted::Counted;
use super::id::Name;
use super::pack::{self, Located};
use super::read::{self, Blobs, Filter};
use super::tree::{self, Node, NodeKind};
use super::write::{self, Stats};
use super::Repo;
use crate::archive::unpack::{self, Unpacker};
use crate::archive::Format;
use crate::error::{Error, Result};
use crate::manifest::{self, Manifest, Status};
use crate::progress::Progress;
use crate::restore::Report;
use crate::select::Selection;
use crate::spec::{ExportSpec, ImportSpec, LsSpec, StoreOptions, VerifySpec};
use crate::store::pending::StateDir;
use crate::store::{self, Location, Store};

/// Warnings kept in a record; the rest are counted.
const MAX_WARNINGS: usize = 1000;

/// What a snapshot's record holds beyond an archive's: its root tree, and what it cost.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct SnapshotInfo {
    /// The root tree's blobs, each as the hex of its reference (id, pack, offset, lengths).
    pub tree: Vec<String>,
    #[serde(flatten)]
    pub stats: Stats,
}

impl SnapshotInfo {
    pub fn root(&self, what: &str) -> Result<Vec<Located>> {
        self.tree
            .iter()
            .map(|h| {
                let mut b = [0u8; tree::REF_LEN];
                hex::decode_to_slice(h, &mut b).map_err(|_| Error::Manifest {
                    what: what.to_string(),
                    reason: "names a broken root tree".into(),
                })?;
                Ok(tree::decode_ref(&b))
            })
            .collect()
    }
}

pub(crate) fn encode_root(root: &[Located]) -> Vec<String> {
    root.iter()
        .map(|l| {
            let mut b = Vec::new();
            tree::encode_ref(l, &mut b);
            hex::encode(b)
        })
        .collect()
}

/// `export --format repo`: a snapshot of the selection into the repository in the folder `to`.
pub fn export(spec: &ExportSpec, progress: &Progress) -> Result<Manifest> {
    let root = spec.root();
    let (sel, skipped) = if spec.all {
        Selection::all(root, &spec.excludes)?
    } else {
        Selection::new(root, &spec.includes, &spec.excludes)?
    };
    let loc = Location::parse(&spec.to)?;
    if loc == Location::Stdio {
        return Err(Error::usage("--format repo writes into a folder (a repository), not to stdout"));
    }
    if let Location::File { path, folder: true } = &loc {
        // A repository's folder is made on first use, like its config.
        std::fs::create_dir_all(path)
            .map_err(|e| Error::Io { context: format!("creating {}", path.display()), source: e })?;
    }
    if spec.store.sse.customer_key.is_some() {
        return Err(Error::usage(
            "--sse-c-key-file does not apply to --format repo (a repository is read by ranges without \
             the customer key): seal it with --recipient instead",
        ));
    }
    let (store, prefix, folder) = store::open(&loc, &spec.store)?;
    if !folder {
        return Err(Error::usage(format!(
            "--format repo needs a folder for the repository: end --to with / ({}/)",
            spec.to.trim_end_matches('/')
        )));
    }
    let seal = match (&spec.id_key, spec.sealing.is_some()) {
        (Some(id), true) => Some((id, &spec.sealing)),
        (None, false) => None,
        (None, true) => {
            return Err(Error::usage(
                "a sealed snapshot needs the fleet's repository id key too: --id-key-file FILE (or \
                 CPBACKUP_ID_KEY_FILE); its chunk ids are keyed by it",
            ))
        }
        (Some(_), false) => {
            return Err(Error::usage(
                "--id-key-file goes with --recipient / --recipients-file / --passphrase-file: a repository is \
                 sealed for someone",
            ))
        }
    };
    let counted = Counted::new(store.as_ref());
    let repo = Repo::open_or_init(&counted, &prefix, seal)?;
    let now = time::OffsetDateTime::now_utc();
    // Two snapshots of one phone within a second must not share a record: a random tail.
    let name = match &spec.name {
        Some(n) => n.clone(),
        None => store::name_in_folder(None, &spec.identity.android_instance_id, now, "snapshot")
            .replace(".snapshot", &format!("-{}.snapshot", manifest::random_id(4))),
    };
    let record_key = manifest::key_for(&format!("{}{name}", repo.prefix));
    let system = crate::android::SystemInfo::read();
    let mut m = Manifest {
        backup_file_name: name.clone(),
        source_file_path_list: sel.source_paths.clone(),
        backup_all: spec.all,
        format: Some(Format::Repo),
        upload_type: store.kind().to_string(),
        upload_endpoint: store.endpoint(),
        encryption: crate::crypt::Encryption::of(&spec.sealing, false),
        backup_file_path: store.url(&repo.prefix),
        ..Manifest::begin(spec.backup_file_id.as_deref(), &spec.identity, &spec.description, &system, now)
    };
    counted.put(&record_key, &m.to_json())?;

    let mut warnings = Vec::new();
    let mut count = 0u64;
    let mut unreadable = 0u64;
    let mut note = |w: String, bad: bool| {
        tracing::warn!("{w}");
        count += 1;
        unreadable += u64::from(bad);
        if warnings.len() < MAX_WARNINGS {
            warnings.push(w);
        }
    };
    for s in skipped {
        note(format!("{}: {}", s.path, s.reason), false);
    }
    let state = StateDir::resolve(spec.store.state_dir.as_deref());
    let opts = write::Options {
        cache_dir: super::cache_dir(state.path(), store.as_ref(), &repo.prefix),
        selection_key: selection_key(root, spec),
        rehash: spec.rehash,
        record_key: record_key.clone(),
        backup_file_id: m.backup_file_id.clone(),
    };
    let result = {
        let cell = std::cell::RefCell::new(&mut note);
        write::snapshot(
            &repo,
            &sel,
            &opts,
            progress,
            &mut |s| {
                let bad = !s.reason.starts_with("skipped:");
                (cell.borrow_mut())(format!("{}: {}", s.path, s.reason), bad)
            },
            &mut |w| (cell.borrow_mut())(w, true),
        )
    };
    progress.finish();
    m.gmt_modified = manifest::format_time(time::OffsetDateTime::now_utc());
    m.warnings = warnings;
    m.warning_count = count;
    match result {
        Ok(w) => {
            m.entry_count = w.entries;
            m.file_size = w.bytes;
            m.uncompressed_size = w.bytes;
            m.status = if unreadable > 0 { Status::PartBackupFinished } else { Status::Available };
            let mut stats = w.stats.clone();
            // The record itself is one more request.
            stats.requests = counted.requests() + 1;
            stats.bytes_uploaded = counted.uploaded();
            stats.bytes_downloaded = counted.downloaded();
            m.archive_size = stats.bytes_uploaded;
            m.snapshot = Some(SnapshotInfo { tree: encode_root(&w.root), stats });
            // The commit point: everything the tree names is stored.
            counted.put(&record_key, &m.to_json())?;
            w.commit_cache();
            Ok(m)
        }
        Err(e) => {
            m.status = Status::BackupFailed;
            m.error_code = e.code().to_string();
            m.failure_reason = e.to_string();
            if let Err(e2) = counted.put(&record_key, &m.to_json()) {
                tracing::error!("could not record the failure in the snapshot's record: {e2}");
            }
            Err(e)
        }
    }
}

/// Names the metadata cache of one selection: same root, paths and phone, same cache.
fn selection_key(root: &Path, spec: &ExportSpec) -> String {
    let mut h = Sha256::new();
    h.update(root.as_os_str().as_encoded_bytes());
    for p in spec.includes.iter().chain(std::iter::once(&"\0".to_string())).chain(&spec.excludes) {
        h.update(p.as_bytes());
        h.update(b"\0");
    }
    h.update([u8::from(spec.all)]);
    h.update(spec.identity.android_instance_id.as_bytes());
    hex::encode(&h.finalize()[..12])
}

/// A snapshot found from `--from` (a folder with `--backup-file-id`, a record's key, or a
/// snapshot's name) with its store, repository prefix, record key and record.
pub struct Found {
    pub store: Box<dyn Store>,
    pub prefix: String,
    pub record_key: String,
    pub record: Manifest,
}

impl Found {
    /// The recipients the record says the snapshot is sealed for.
    pub fn made_for(&self) -> Vec<String> {
        self.record.encryption.as_ref().map(|e| e.recipients.clone()).unwrap_or_default()
    }
}

/// The snapshot `from` names, `None` when it names an archive (or nothing a snapshot could be).
pub fn find(from: &str, backup_file_id: Option<&str>, opts: &StoreOptions) -> Result<Option<Found>> {
    let loc = Location::parse(from)?;
    if loc == Location::Stdio {
        return Ok(None);
    }
    let (store, key, folder) = store::open(&loc, opts)?;
    let (record_key, record) = if folder || key.is_empty() || key.ends_with('/') {
        let Some(id) = backup_file_id.filter(|s| !s.is_empty()) else { return Ok(None) };
        let found = crate::catalog::records(store.as_ref(), &super::folder(&key))?
            .into_iter()
            .find(|(_, m)| m.backup_file_id == id)
            .ok_or_else(|| Error::usage(format!("no backup file {id:?} under {}", store.url(&key))))?;
        found
    } else {
        let mk = if key.ends_with(manifest::SUFFIX) { key.clone() } else { manifest::key_for(&key) };
        match store.get(&mk)? {
            Some(b) => (mk.clone(), Manifest::from_json(&mk, &b)?),
            None => return Ok(None),
        }
    };
    if record.format != Some(Format::Repo) {
        return Ok(None);
    }
    let prefix = match record_key.rsplit_once('/') {
        Some((dir, _)) => format!("{dir}/"),
        None => String::new(),
    };
    if !record.status.archive_complete() {
        let why =
            if record.failure_reason.is_empty() { String::new() } else { format!(" ({})", record.failure_reason) };
        return Err(Error::Manifest {
            what: store.url(&record_key),
            reason: format!(
                "says {}{why}: the snapshot is not complete; refusing to restore from it",
                record.status.as_str()
            ),
        });
    }
    Ok(Some(Found { store, prefix, record_key, record }))
}

impl Found {
    fn root(&self) -> Result<Vec<Located>> {
        let info = self.record.snapshot.as_ref().ok_or_else(|| Error::Manifest {
            what: self.store.url(&self.record_key),
            reason: "says Format repo but names no tree".into(),
        })?;
        info.root(&self.store.url(&self.record_key))
    }
}

fn unmatched(filter: &Filter, seen: &[bool], what: &str) -> Result<()> {
    let missing = filter.unmatched(seen);
    if missing.is_empty() {
        return Ok(());
    }
    Err(Error::usage(format!("--include {}: not in {what}; nothing was restored", missing.join(", "))))
}

/// `import` of a snapshot: its entries (those `--include` names) through the same staging,
/// checks and commit as an archive's.
pub fn import(found: Found, spec: &ImportSpec, progress: &Progress) -> Result<Report> {
    let root = spec.root();
    let filter = Filter::new(&spec.includes)?;
    let shown = found.store.url(&found.record_key);
    let counted = Counted::new(found.store.as_ref());
    // Keys first: without one that fits, nothing is staged or touched.
    let repo = Repo::open(&counted, &found.prefix, &spec.opening, &found.made_for())?;
    let mut unpacker = Unpacker::new(root, unpack::Options { restore_xattrs: spec.restore_xattrs })?;
    let tree = found.root()?;
    if filter.is_all() {
        progress.set_total(found.record.file_size);
        let tops: Vec<Vec<u8>> = found
            .record
            .source_file_path_list
            .iter()
            .filter_map(|p| p.trim_start_matches('/').split('/').next().map(|s| s.as_bytes().to_vec()))
            .collect();
        let tops: Vec<&[u8]> = tops.iter().map(Vec::as_slice).collect();
        unpacker.check_space(&tops, found.record.file_size)?;
    }
    let seen = super::ahead::entries(read::Opener::of(&repo), &tree, &filter, &mut |item, data| {
        progress.check_cancel()?;
        progress.entry(item.size);
        unpacker.entry(item, data)
    })?;
    unmatched(&filter, &seen, &shown)?;
    let outcome = unpacker.commit()?;
    progress.finish();
    let mut report = Report {
        source: shown,
        container: "repo".into(),
        entries: outcome.entries,
        bytes: outcome.bytes,
        checksum_verified: true,
        restart_required: found.record.backup_all && filter.is_all(),
        warnings: outcome.warnings,
        ..Default::default()
    };
    // The record, read before, is one more request.
    report.snapshot =
        Some(Stats { requests: counted.requests() + 1, bytes_downloaded: counted.downloaded(), ..Stats::default() });
    report.manifest = Some(found.record);
    Ok(report)
}

/// One entry as `ls` shows it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Listed {
    pub path: String,
    #[serde(rename = "Type")]
    pub kind: &'static str,
    pub size: u64,
    pub mode: String,
    pub uid: u32,
    pub gid: u32,
    pub mtime: i64,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub target: String,
}

impl Listed {
    pub fn line(&self) -> String {
        let link = if self.target.is_empty() { String::new() } else { format!(" -> {}", self.target) };
        format!("{} {} {:>5} {:>5} {:>12} {}{link}", self.kind, self.mode, self.uid, self.gid, self.size, self.path)
    }
}

pub fn listed(item: &crate::archive::read::Item) -> Listed {
    use crate::archive::read::Kind;
    let (kind, target) = match &item.kind {
        Kind::Dir => ("d", Vec::new()),
        Kind::File { .. } => ("f", Vec::new()),
        Kind::Symlink(t) => ("l", t.clone()),
        Kind::Hardlink(t) => ("h", [b"/".as_slice(), t].concat()),
    };
    Listed {
        path: format!("/{}", item.meta.display()),
        kind,
        size: item.size,
        mode: format!("{:04o}", item.meta.mode),
        uid: item.meta.uid,
        gid: item.meta.gid,
        mtime: item.meta.mtime,
        target: String::from_utf8_lossy(&target).into_owned(),
    }
}

/// `ls` of a snapshot: the trees the filter needs, no file content.
pub fn ls(found: Found, spec: &LsSpec, each: &mut dyn FnMut(Listed)) -> Result<Stats> {
    let filter = Filter::new(&spec.includes)?;
    let counted = Counted::new(found.store.as_ref());
    let repo = Repo::open(&counted, &found.prefix, &spec.opening, &found.made_for())?;
    let tree = found.root()?;
    let mut blobs = Blobs::of(&repo);
    let seen = read::walk(&mut blobs, &tree, &filter, &mut |path, node| {
        let (kind, target) = match node.kind {
            NodeKind::Dir | NodeKind::Implicit => ("d", String::new()),
            NodeKind::File => ("f", String::new()),
            NodeKind::Symlink => ("l", String::from_utf8_lossy(&node.target).into_owned()),
            NodeKind::Hardlink => ("h", format!("/{}", String::from_utf8_lossy(&node.target))),
        };
        each(Listed {
            path: format!("/{}", String::from_utf8_lossy(path)),
            kind,
            size: node.size,
            mode: format!("{:04o}", node.mode & tree::PERMS),
            uid: node.uid,
            gid: node.gid,
            mtime: node.mtime,
            target,
        });
        Ok(())
    })?;
    let missing = filter.unmatched(&seen);
    if !missing.is_empty() {
        return Err(Error::usage(format!(
            "--include {}: not in {}",
            missing.join(", "),
            counted.url(&found.record_key)
        )));
    }
    Ok(Stats { requests: counted.requests(), bytes_downloaded: counted.downloaded(), ..Stats::default() })
}

/// `verify` of a snapshot: every chunk its trees name is in an index object and its pack
/// exists; with `read_data`, every chunk is downloaded and hashed too.
pub fn verify(found: Found, spec: &VerifySpec, progress: &Progress) -> Result<Report> {
    let counted = Counted::new(found.store.as_ref());
    let repo = Repo::open(&counted, &found.prefix, &spec.opening, &found.made_for())?;
    let tree = found.root()?;
    let shown = counted.url(&found.record_key);
    let state = StateDir::resolve(spec.store.state_dir.as_deref());
    let mut cache = super::cache::IndexCache::open(
        &super::cache_dir(state.path(), found.store.as_ref(), &repo.prefix).join("index"),
    )?;
    cache.sync(&counted, &repo.prefix, repo.keys.as_ref())?;
    let packs: HashSet<Name> =
        counted.list(&format!("{}data/", repo.prefix))?.iter().filter_map(|o| pack::name_of(&o.key)).collect();
    let mut problems: Vec<String> = Vec::new();
    let check = |l: &Located, problems: &mut Vec<String>| -> Result<()> {
        if !packs.contains(&l.pack) {
            problems.push(format!("chunk {:?}: its pack {} is missing", l.entry.id, l.pack.hex()));
        } else if cache.lookup(&l.entry.id, &|p: &Name| *p == l.pack)?.is_none() {
            problems.push(format!("chunk {:?}: no index object names it in pack {}", l.entry.id, l.pack.hex()));
        }
        Ok(())
    };
    for l in &tree {
        check(l, &mut problems)?;
    }
    let mut entries = 0u64;
    let mut seen = |_: &[u8], node: &Node| {
        progress.check_cancel()?;
        entries += 1;
        node.chunks.iter().try_for_each(|l| check(l, &mut problems))
    };
    let mut bytes = 0u64;
    if spec.read_data {
        // One walk: each node's chunks checked against the index, then read, decoded and
        // hashed (the reading checks each against its id).
        let opener = read::Opener::of(&repo);
        super::ahead::entries_seen_by(opener, &tree, &Filter::default(), &mut seen, &mut |_, data| {
            let n = io::copy(data, &mut io::sink())
                .map_err(|e| Error::Io { context: format!("reading {shown}"), source: e })?;
            bytes += n;
            progress.entry(n);
            Ok(())
        })?;
    } else {
        read::walk(&mut Blobs::of(&repo), &tree, &Filter::default(), &mut seen)?;
    }
    progress.finish();
    if !problems.is_empty() {
        let n = problems.len();
        problems.truncate(20);
        return Err(Error::archive(shown, format!("{n} problems: {}", problems.join("; "))));
    }
    let mut report = Report {
        source: shown,
        container: "repo".into(),
        entries,
        bytes,
        checksum_verified: spec.read_data,
        ..Default::default()
    };
    report.snapshot =
        Some(Stats { requests: counted.requests(), bytes_downloaded: counted.downloaded(), ..Stats::default() });
    report.manifest = Some(found.record);
    Ok(report)
}
