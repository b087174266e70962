//! The restore data path, one straight function per kind:
//! store → hash → decompress → tar → staging → (verified) → into place.
//!
//! It must never change the existing tree before the whole archive has been read and its
//! SHA-256 checked against the manifest, and never leave its staging behind.

use std::io::{self, BufRead, Read};
use std::path::Path;

use serde::Serialize;

use crate::android::device::{Device, Shell};
use crate::android::pm;
use crate::apps::{self, AppOutcome, RecoverOptions, Stager};
use crate::archive::read::{self, Container};
use crate::archive::unpack::{self, Unpacker};
use crate::crypt::{self, Encryption, Opening};
use crate::digest::HashReader;
use crate::error::{self, Error, IoContext, Result};
use crate::manifest::{self, Manifest, Status};
use crate::pipe::{self, Background, PipeReader, PipeWriter};
use crate::progress::Progress;
use crate::spec::{ImportSpec, RecoverAppSpec, StoreOptions, VerifySpec};
use crate::store::{self, Location, Store};

/// What an import or verify did: the result object `--json` prints.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Report {
    pub source: String,
    pub container: String,
    pub entries: u64,
    /// File content bytes restored (or checked).
    pub bytes: u64,
    pub archive_size: u64,
    pub sha256: String,
    /// Whether the SHA-256 was compared with a manifest (false for stdin and bare archives).
    pub checksum_verified: bool,
    /// Whether the content was read through (false for a sealed archive verified without its key).
    pub content_checked: bool,
    /// A whole-instance (`BackupAll`) archive was restored: the phone must restart.
    pub restart_required: bool,
    pub warnings: Vec<String>,
    pub manifest: Option<Manifest>,
    /// A snapshot's costs: requests and bytes downloaded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<crate::repo::write::Stats>,
}

/// An archive to read, and its manifest when there is one.
struct Source {
    reader: Box<dyn Read + Send>,
    manifest: Option<Manifest>,
    store: Option<(Box<dyn Store>, String)>,
    shown: String,
}

impl Source {
    /// The recipients its manifest says the archive is sealed for.
    fn recipients(&self) -> Vec<String> {
        self.encryption().map(|e| e.recipients.clone()).unwrap_or_default()
    }

    fn encryption(&self) -> Option<&Encryption> {
        self.manifest.as_ref().and_then(|m| m.encryption.as_ref())
    }

    /// Whether the keys given could open what the manifest says the archive is sealed with;
    /// the error that names what to pass when not.
    fn check_keys(&self, keys: &Opening) -> Result<()> {
        let Some(enc) = self.encryption() else { return Ok(()) };
        let reason = if enc.passphrase {
            if keys.passphrase().is_some() {
                return Ok(());
            }
            "is sealed with a passphrase (its manifest says so): pass --passphrase-file FILE".to_string()
        } else {
            let ours = keys.recipients();
            if ours.iter().any(|r| enc.recipients.contains(r)) || (enc.recipients.is_empty() && !ours.is_empty()) {
                return Ok(());
            }
            let given = if ours.is_empty() {
                String::new()
            } else {
                format!("; the identities given are for {}, not among them", ours.join(", "))
            };
            format!(
                "is sealed for {} (its manifest says so): pass --identity FILE holding one of their secret keys{given}",
                enc.recipients.join(", ")
            )
        };
        Err(Error::Key { what: self.shown.clone(), reason })
    }
}

/// Open the archive `from` names. With `keys`, an archive whose manifest says it is sealed for
/// keys not given is refused before anything is read or changed.
fn open_source(from: &str, opts: &StoreOptions, keys: Option<&Opening>) -> Result<Source> {
    let loc = Location::parse(from)?;
    if loc == Location::Stdio {
        return Ok(Source { reader: Box::new(io::stdin()), manifest: None, store: None, shown: "stdin".into() });
    }
    let (store, key, folder) = store::open(&loc, opts)?;
    if folder || key.is_empty() || key.ends_with('/') {
        return Err(Error::usage(format!("{from} is a folder: name the archive itself, e.g. {from}/NAME.tar.zst")));
    }
    let shown = store.url(&key);
    let manifest = match store.get(&manifest::key_for(&key))? {
        Some(bytes) => Some(Manifest::from_json(&manifest::key_for(&key), &bytes)?),
        None => None,
    };
    if let Some(m) = &manifest {
        if !m.status.archive_complete() {
            let why = if m.failure_reason.is_empty() { String::new() } else { format!(" ({})", m.failure_reason) };
            return Err(Error::Manifest {
                what: manifest::key_for(&key),
                reason: format!(
                    "says {}{why}: the archive is not complete; refusing to restore from it",
                    m.status.as_str()
                ),
            });
        }
    }
    let mut src = Source { reader: Box::new(io::empty()), manifest, store: None, shown };
    if let Some(keys) = keys {
        src.check_keys(keys)?;
    }
    src.reader = store.download(&key)?;
    src.store = Some((store, key));
    Ok(src)
}

fn check_digest(src: &Source, sha256: &str, size: u64) -> Result<bool> {
    let Some(m) = &src.manifest else { return Ok(false) };
    if m.sha256.is_empty() {
        return Ok(false);
    }
    if m.sha256 != sha256 || m.archive_size != size {
        return Err(Error::Checksum {
            what: src.shown.clone(),
            expected: format!("{} ({} bytes)", m.sha256, m.archive_size),
            actual: format!("{sha256} ({size} bytes)"),
        });
    }
    Ok(true)
}

fn set_status(src: &Source, status: Status, reason: &str) {
    let (Some((store, key)), Some(m)) = (&src.store, &src.manifest) else { return };
    let mut m = m.clone();
    m.status = status;
    m.gmt_modified = manifest::format_time(time::OffsetDateTime::now_utc());
    if !reason.is_empty() {
        m.failure_reason = reason.to_string();
    }
    if let Err(e) = store.put(&manifest::key_for(key), &m.to_json()) {
        tracing::warn!("could not mark {} {}: {e}", src.shown, status.as_str());
    }
}

/// Import an archive into `--root` (CPH batch-restore, ECP RecoveryFile).
pub fn import(spec: &ImportSpec, progress: &Progress) -> Result<Report> {
    let root = spec.root();
    if let Some(found) = crate::repo::ops::find(&spec.from, spec.backup_file_id.as_deref(), &spec.store)? {
        return crate::repo::ops::import(found, spec, progress);
    }
    let filter = crate::repo::read::Filter::new(&spec.includes)?;
    let mut seen = vec![false; spec.includes.len()];
    let mut unpacker = Unpacker::new(root, unpack::Options { restore_xattrs: spec.restore_xattrs })?;
    let mut src = open_source(&spec.from, &spec.store, Some(&spec.opening))?;
    let mut report = Report { source: src.shown.clone(), content_checked: true, ..Default::default() };
    if let Some(m) = src.manifest.as_ref().filter(|_| filter.is_all()) {
        let tops: Vec<Vec<u8>> = m
            .source_file_path_list
            .iter()
            .filter_map(|p| p.trim_start_matches('/').split('/').next().map(|s| s.as_bytes().to_vec()))
            .collect();
        let tops: Vec<&[u8]> = tops.iter().map(Vec::as_slice).collect();
        unpacker.check_space(&tops, m.uncompressed_size)?;
        progress.set_total(m.file_size);
        report.restart_required = m.backup_all;
    }
    set_status(&src, Status::Recovering, "");
    // With --include, the archive is read through (its checksum too) and the rest skipped.
    let result =
        read_through(&mut src, &spec.opening, progress, &mut |item, data| match filter.place(&item.meta.path) {
            crate::repo::read::Place::In => {
                filter.mark_seen(&item.meta.path, &mut seen);
                unpacker.entry(item, data)
            }
            _ => Ok(()),
        })
        .and_then(|done| {
            let missing = filter.unmatched(&seen);
            if !missing.is_empty() && !filter.is_all() {
                return Err(Error::usage(format!(
                    "--include {}: not in {}; nothing was restored",
                    missing.join(", "),
                    src.shown
                )));
            }
            done.fill(&mut report);
            // Only now, with the whole archive read and verified, does anything existing change.
            unpacker.commit()
        });
    progress.finish();
    match result {
        Ok(outcome) => {
            set_status(&src, Status::Available, "");
            report.entries = outcome.entries;
            report.bytes = outcome.bytes;
            report.warnings = outcome.warnings;
            if src.manifest.is_none() {
                report.warnings.push(format!(
                    "{} has no manifest beside it: its SHA-256 could not be checked, only its structure",
                    src.shown
                ));
            }
            if report.restart_required {
                let w = "this archive is a whole-instance backup (BackupAll): restart the phone to finish the restore"
                    .to_string();
                tracing::warn!("{w}");
                report.warnings.push(w);
            }
            report.manifest = src.manifest.clone();
            Ok(report)
        }
        Err(e) => {
            set_status(&src, Status::RecoveryFailed, &e.to_string());
            Err(e)
        }
    }
}

/// What recover-app did: the result object `--json` prints, one outcome per package.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct AppReport {
    pub source: String,
    pub container: String,
    pub archive_size: u64,
    pub sha256: String,
    pub checksum_verified: bool,
    pub apps: Vec<AppOutcome>,
    pub warnings: Vec<String>,
}

impl AppReport {
    pub fn all_recovered(&self) -> bool {
        self.apps.iter().all(AppOutcome::ok)
    }
}

/// Recover apps from an `.ab` (ECP RecoverApp): one pass stages every package's APKs and data
/// beside their targets while the SHA-256 is computed; only once the archive is verified is
/// each package stopped, uninstalled, reinstalled and given its data (see `apps`). A package
/// that fails does not stop the others.
pub fn recover_app(spec: &RecoverAppSpec, progress: &Progress) -> Result<AppReport> {
    let root = spec.root();
    for pkg in &spec.apps {
        pm::check_package_name(pkg)?;
    }
    let shell = Shell;
    let device = Device::for_user(&shell, spec.user);
    // What a killed earlier run left is settled first: its swaps finished, its staging removed.
    apps::finish_interrupted(root, &device);
    let mut stager = Stager::new(root, &spec.apps, spec.user)?;
    let mut src = open_source(&spec.from, &spec.store, Some(&spec.opening))?;
    let mut report = AppReport { source: src.shown.clone(), ..Default::default() };
    if let Some(m) = &src.manifest {
        if spec.apps.is_empty() {
            stager.check_space(m.uncompressed_size)?;
        }
        progress.set_total(m.file_size);
    }
    set_status(&src, Status::Recovering, "");
    let read =
        read_through(&mut src, &spec.opening, progress, &mut |item, data| stager.entry(item, data)).map(|done| {
            report.container = container_name(done.container);
            report.checksum_verified = done.checksum_verified;
            report.sha256 = done.sha256;
            report.archive_size = done.size;
        });
    progress.finish();
    if let Err(e) = read {
        set_status(&src, Status::RecoveryFailed, &e.to_string());
        return Err(e);
    }
    if stager.packages().is_empty() && spec.apps.is_empty() {
        let e = Error::archive(src.shown.clone(), "holds no app backup (no apps/PKG/ entries)");
        set_status(&src, Status::RecoveryFailed, &e.to_string());
        return Err(e);
    }

    // Only now, with the whole archive read and verified, does anything on the phone change.
    report.apps = apps::recover(&mut stager, &device, RecoverOptions { force: spec.force });
    for pkg in &spec.apps {
        if !report.apps.iter().any(|a| &a.package == pkg) {
            report.apps.push(apps::not_in_archive(pkg));
        }
    }
    report.warnings = stager.warnings().to_vec();
    if src.manifest.is_none() {
        report.warnings.push(format!("{} has no manifest beside it: its SHA-256 could not be checked", src.shown));
    }
    let failed: Vec<String> =
        report.apps.iter().filter(|a| !a.ok()).map(|a| format!("{}: {}", a.package, a.error)).collect();
    if failed.is_empty() {
        set_status(&src, Status::Available, "");
    } else {
        set_status(&src, Status::RecoveryFailed, &failed.join("; "));
    }
    Ok(report)
}

/// The source's bytes, hashed on a thread of their own, opened on another when sealed with age
/// (the cipher is a third of an import's CPU), and decoded on a third (while large files are
/// written, the decompressor is the slowest stage, and the SHA-256 would add half as much again
/// to it); the decoded tar stream comes back as a reader, the container and digest from `join`.
fn decode_in_background(
    src: &mut Source,
    keys: &Opening,
    progress: &Progress,
) -> Result<(PipeReader, Background<(Container, String, u64)>)> {
    let (stored, hashing) = hash_in_background(src, progress)?;
    let mut stored = io::BufReader::with_capacity(64 * 1024, stored);
    let sealed = peek(&mut stored, &src.shown)?.starts_with(crypt::stream::MAGIC);
    let (shown, made_for) = (src.shown.clone(), src.recipients());
    let keys = keys.clone();
    // The stream the decoder reads, and the stage that opens it, when there is one.
    let (mut plain, opening): (Box<dyn Read + Send>, Option<Background<()>>) = if sealed {
        let (shown, keys) = (shown.clone(), keys.clone());
        let (plain, bg) = pipe::produce_in_background("open", move |out| {
            let mut opened = crypt::stream::open(&mut stored, &keys, &shown, &made_for)?;
            copy_decoded(&mut opened, out)?;
            drain(&mut stored)
        })?;
        (Box::new(plain), Some(bg))
    } else {
        (Box::new(stored), None)
    };
    pipe::produce_in_background("decode", move |out| {
        let decoded = read::open(&mut plain, &keys, &shown).and_then(|(container, mut tar)| {
            copy_decoded(&mut tar, out)?;
            Ok(container)
        });
        // Whatever follows the compressed stream is hashed too: the digest covers the object.
        let drained = decoded.and_then(|c| drain(&mut plain).map(|()| c));
        drop(plain);
        let opened = opening.map_or(Ok(()), Background::join);
        let hashed = hashing.join();
        let container = match (drained, opened) {
            (Ok(c), Ok(())) => c,
            (Err(e), opened) => return Err(pipe::root_cause(pipe::root_cause(e, opened), hashed)),
            (Ok(_), Err(e)) => return Err(pipe::root_cause(e, hashed)),
        };
        let (sha256, size) = hashed?;
        Ok((container, sha256, size))
    })
}

/// The stored bytes, hashed (and counted for progress) on a thread of their own.
fn hash_in_background(src: &mut Source, progress: &Progress) -> Result<(PipeReader, Background<(String, u64)>)> {
    let reader = std::mem::replace(&mut src.reader, Box::new(io::empty()));
    let counter = progress.counters.transferred.clone();
    let shown = src.shown.clone();
    pipe::produce_in_background("hash", move |out| {
        let mut hashed = HashReader::new(reader, counter);
        out.fill_from(&mut hashed).map_err(|e| {
            error::extract_ours(e).unwrap_or_else(|e| Error::Io { context: format!("reading {shown}"), source: e })
        })?;
        hashed.finish().ctx(|| format!("reading {shown}"))
    })
}

/// The first bytes of a stream, without consuming them.
fn peek<'a>(r: &'a mut io::BufReader<PipeReader>, shown: &str) -> Result<&'a [u8]> {
    r.fill_buf().map_err(|e| {
        error::extract_ours(e).unwrap_or_else(|e| Error::Io { context: format!("reading {shown}"), source: e })
    })
}

/// Read what is left of a stream, so that the digest covers it all.
fn drain(r: &mut dyn Read) -> Result<()> {
    io::copy(r, &mut io::sink()).map(drop).map_err(|e| Error::archive("stream", e.to_string()))
}

fn copy_decoded(from: &mut dyn Read, to: &mut PipeWriter) -> Result<()> {
    to.fill_from(from).map(drop).map_err(|e| match e.kind() {
        io::ErrorKind::BrokenPipe => Error::Io { context: "unpacking".into(), source: e },
        _ => error::extract_ours(e).unwrap_or_else(|e| Error::archive("stream", format!("cannot be decoded: {e}"))),
    })
}

/// Settle what killed imports and app recoveries left under `root`: each ends as the old data
/// or the new, never a mix. Returns what was done, a line each.
pub fn finish_interrupted(root: &Path) -> Vec<String> {
    let mut done = crate::archive::unpack::finish_interrupted_imports(root);
    done.extend(apps::finish_interrupted(root, &Device::new(&Shell)));
    done
}

/// Read an archive through, check its structure and SHA-256, write nothing. A sealed archive
/// without a key that opens it has only its stored bytes checked against the manifest.
pub fn verify(spec: &VerifySpec, progress: &Progress) -> Result<Report> {
    if let Some(found) = crate::repo::ops::find(&spec.from, spec.backup_file_id.as_deref(), &spec.store)? {
        return crate::repo::ops::verify(found, spec, progress);
    }
    let mut src = open_source(&spec.from, &spec.store, None)?;
    let mut report = Report { source: src.shown.clone(), content_checked: true, ..Default::default() };
    if let Some(m) = &src.manifest {
        progress.set_total(m.file_size);
    }
    if src.check_keys(&spec.opening).is_err() {
        return verify_stored_bytes(src, progress, report);
    }
    let mut bytes = 0u64;
    let done = read_through(&mut src, &spec.opening, progress, &mut |item, data| {
        let n = io::copy(data, &mut io::sink())
            .map_err(|e| Error::archive(format!("entry {:?}", item.meta.display()), e.to_string()))?;
        if n != item.size {
            return Err(Error::archive(format!("entry {:?}", item.meta.display()), "is truncated"));
        }
        bytes += n;
        Ok(())
    });
    progress.finish();
    let done = done?;
    let entries = done.entries;
    done.fill(&mut report);
    if let Some(m) = &src.manifest {
        if m.entry_count != 0 && m.entry_count != entries {
            return Err(Error::archive(
                src.shown.clone(),
                format!("holds {entries} entries but its manifest says {}", m.entry_count),
            ));
        }
    } else {
        report.warnings.push(format!("{} has no manifest beside it: only its structure was checked", src.shown));
    }
    report.entries = entries;
    report.bytes = bytes;
    report.manifest = src.manifest;
    Ok(report)
}

/// Verify of a sealed archive without its key: the stored bytes' SHA-256 and size against the
/// manifest (which says it is sealed), the content unchecked, and a warning that says so.
fn verify_stored_bytes(mut src: Source, progress: &Progress, mut report: Report) -> Result<Report> {
    let (mut stored, hashing) = hash_in_background(&mut src, progress)?;
    let drained = drain(&mut stored);
    drop(stored);
    progress.finish();
    let hashed = hashing.join();
    let (sha256, size) = match drained {
        Ok(()) => hashed?,
        Err(e) => return Err(pipe::root_cause(e, hashed)),
    };
    report.checksum_verified = check_digest(&src, &sha256, size)?;
    report.sha256 = sha256;
    report.archive_size = size;
    report.content_checked = false;
    let how = src.encryption().map(|e| e.format.clone()).unwrap_or_default();
    let flag = if src.encryption().is_some_and(|e| e.passphrase) { "--passphrase-file" } else { "--identity" };
    report.warnings.push(format!(
        "{} is sealed ({how}) and no key given opens it: its SHA-256 and size were checked against the manifest, \
         its content was not (pass {flag} to check that too)",
        src.shown
    ));
    report.manifest = src.manifest;
    Ok(report)
}

/// What reading an archive through found.
struct ReadThrough {
    container: Container,
    entries: u64,
    sha256: String,
    size: u64,
    checksum_verified: bool,
}

impl ReadThrough {
    fn fill(self, report: &mut Report) {
        report.container = container_name(self.container);
        report.checksum_verified = self.checksum_verified;
        report.sha256 = self.sha256;
        report.archive_size = self.size;
    }
}

/// The one way archives are read: download, hash and decompress on a thread of their own,
/// each checked entry handed to `entry` on this one (cancel checked between entries, progress
/// counted), then the SHA-256 compared with the manifest.
fn read_through(
    src: &mut Source,
    keys: &Opening,
    progress: &Progress,
    entry: &mut dyn FnMut(read::Item, &mut dyn Read) -> Result<()>,
) -> Result<ReadThrough> {
    let (mut tar, decoding) = decode_in_background(src, keys, progress)?;
    let parsed = read::each_entry(&mut tar, &mut |item, data| {
        progress.check_cancel()?;
        progress.entry(item.size);
        entry(item, data)
    });
    drop(tar);
    let decoded = decoding.join();
    // The decoder's own error says more than the parser's "stream ended" when both failed.
    let (entries, (container, sha256, size)) = match parsed {
        Ok(n) => (n, decoded?),
        Err(e) => return Err(pipe::root_cause(e, decoded)),
    };
    let checksum_verified = check_digest(src, &sha256, size)?;
    Ok(ReadThrough { container, entries, sha256, size, checksum_verified })
}

fn container_name(c: Container) -> String {
    match c {
        Container::Tar => "tar".into(),
        Container::Zstd => "tar.zst".into(),
        Container::Gzip => "tar.gz".into(),
        Container::Ab { version, compressed, encrypted } => format!(
            "ab (version {version}, {}{})",
            if compressed { "compressed" } else { "uncompressed" },
            if encrypted { ", encrypted" } else { "" }
        ),
    }
}

/// `ls`: the entries of a snapshot (only the trees it needs are read) or of an archive (read
/// through, its checksum checked), those under `--include` when given.
pub fn ls(spec: &crate::spec::LsSpec, each: &mut dyn FnMut(crate::repo::ops::Listed)) -> Result<()> {
    if let Some(found) = crate::repo::ops::find(&spec.from, spec.backup_file_id.as_deref(), &spec.store)? {
        return crate::repo::ops::ls(found, spec, each).map(drop);
    }
    let filter = crate::repo::read::Filter::new(&spec.includes)?;
    let mut seen = vec![false; spec.includes.len()];
    let mut src = open_source(&spec.from, &spec.store, Some(&spec.opening))?;
    read_through(&mut src, &spec.opening, &Progress::hidden(), &mut |item, _| {
        if filter.place(&item.meta.path) == crate::repo::read::Place::In {
            filter.mark_seen(&item.meta.path, &mut seen);
            each(crate::repo::ops::listed(&item));
        }
        Ok(())
    })?;
    let missing = filter.unmatched(&seen);
    if !missing.is_empty() && !filter.is_all() {
        return Err(Error::usage(format!("--include {}: not in {}", missing.join(", "), src.shown)));
    }
    Ok(())
}
