//! The backup data path, one straight function per kind:
//! select → tar → compress → hash → store, manifest first as `BACKUPING`, last as
//! `AVAILABLE` (or `BACKUP_FAILED` with the reason).
//!
//! It must never leave a manifest saying `AVAILABLE` for an archive that is not complete, and
//! never stage the archive on the phone's disk: bytes stream from the files to the store.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use crate::android::device::{Device, Shell};
use crate::android::{pm, SystemInfo};
use crate::apps;
use crate::archive::disk::{self, HardLinks, Put};
use crate::archive::write::TarWriter;
use crate::archive::{ab, Flavor, Format, Meta};
use crate::compress::{Codec, Encoder};
use crate::crypt::{self, Encryption, Sealing};
use crate::digest::{Counter, HashWriter};
use crate::error::{Error, IoContext, Result};
use crate::manifest::{self, Manifest, Status};
use crate::pipe::{self, Background, PipeReader, PipeWriter};
use crate::progress::Progress;
use crate::select::{Entry, Selection, Skipped, Walked};
use crate::spec::{BackupAppSpec, ExportSpec};
use crate::store::{self, Location, Store, Upload};
use crate::sys::Stat;

/// Warnings kept in a manifest; the rest are counted.
const MAX_WARNINGS: usize = 1000;

/// Export data paths into one archive (CPH batch-storage, ECP BackupFile).
pub fn export(spec: &ExportSpec, progress: &Progress) -> Result<Manifest> {
    if spec.format == Some(Format::Repo) {
        return crate::repo::ops::export(spec, progress);
    }
    let root = spec.root();
    let (mut selection, skipped) = if spec.all {
        Selection::all(root, &spec.excludes)?
    } else {
        Selection::new(root, &spec.includes, &spec.excludes)?
    };
    let mut warnings = Warnings::default();
    skipped.into_iter().for_each(|s| warnings.skip(s));

    let location = Location::parse(&spec.to)?;
    let now = time::OffsetDateTime::now_utc();
    let system = SystemInfo::read();
    let mut m = Manifest {
        source_file_path_list: selection.source_paths.clone(),
        backup_all: spec.all,
        ..Manifest::begin(spec.backup_file_id.as_deref(), &spec.identity, &spec.description, &system, now)
    };

    // Where the archive goes, and under which name.
    let (dest, format) = match &location {
        Location::Stdio => (None, spec.format.unwrap_or(Format::TarZst)),
        loc => {
            let ext = sealed_extension(spec.format.unwrap_or(Format::TarZst), &spec.sealing);
            let (store, key) =
                store_key(loc, &spec.store, spec.name.as_deref(), &spec.identity.android_instance_id, now, &ext)?;
            let format = spec.format.or_else(|| Format::from_name(&key)).unwrap_or(Format::TarZst);
            if let Location::File { .. } = loc {
                // Never archive the archive: its partial file and manifest may be inside the selection.
                let fin = Path::new(&store.url(&key)).to_path_buf();
                for suffix in ["", ".partial", manifest::SUFFIX] {
                    let mut p = fin.clone().into_os_string();
                    p.push(suffix);
                    selection.ignore_host.push(p.into());
                }
            }
            (Some((store, key)), format)
        }
    };
    m.format = Some(format);
    m.encryption = Encryption::of(&spec.sealing, format == Format::Ab);
    let seal = Seal::new(&spec.sealing, format)?;
    announce(&dest, &mut m)?;

    // A pre-scan sizes the upload's parts and the progress bar.
    let totals = selection.scan();
    progress.set_total(totals.bytes);
    m.file_size = totals.bytes;

    let result = match &dest {
        None => Ok(Sink::Stdout(io::stdout())),
        Some((store, key)) => store.upload(key, totals.bytes).map(Sink::Upload),
    }
    .and_then(|sink| write_archive(&selection, sink, format, seal, progress, &mut warnings));
    progress.finish();
    m.gmt_modified = manifest::format_time(time::OffsetDateTime::now_utc());
    m.warnings = warnings.list.clone();
    m.warning_count = warnings.count;
    record(&dest, m, result, warnings.unreadable > 0)
}

/// Back up apps into one `.ab` (ECP BackupApp): for each package `_manifest`, APKs, data, in
/// Android's own order and tar flavour (see `apps`). Unknown packages are left out with a
/// warning (PART_BACKUP_FINISHED); when none is left the backup fails.
pub fn backup_app(spec: &BackupAppSpec, progress: &Progress) -> Result<Manifest> {
    let root = spec.root();
    for pkg in &spec.apps {
        pm::check_package_name(pkg)?;
    }
    if spec.apps.is_empty() {
        return Err(Error::usage("name at least one app with --app PKG"));
    }
    let location = Location::parse(&spec.to)?;
    let now = time::OffsetDateTime::now_utc();
    let system = SystemInfo::read();
    let shell = Shell;
    let device = Device::for_user(&shell, spec.user);
    let opts = apps::BackupOptions { stop: !spec.no_stop, cache: !spec.no_cache, user: spec.user };
    let mut warnings = Warnings::default();
    let mut sources = Vec::new();
    for pkg in &spec.apps {
        match apps::resolve(&device, root, pkg, opts) {
            Ok(app) => {
                app.warnings.iter().for_each(|w| warnings.push(w.clone()));
                sources.push(app);
            }
            Err(e) => warnings.push(format!("{pkg}: not backed up: {e}")),
        }
    }
    let mut m = Manifest {
        source_app_info_list: sources.iter().map(|a| a.package.clone()).collect(),
        app_details: sources.iter().map(|a| a.details.clone()).collect(),
        format: Some(Format::Ab),
        encryption: Encryption::of(&spec.sealing, true),
        file_size: sources.iter().map(|a| a.bytes).sum(),
        ..Manifest::begin(spec.backup_file_id.as_deref(), &spec.identity, &spec.description, &system, now)
    };
    let dest = match &location {
        Location::Stdio => None,
        loc => {
            let ext = sealed_extension(Format::Ab, &spec.sealing);
            Some(store_key(loc, &spec.store, spec.name.as_deref(), &spec.identity.android_instance_id, now, &ext)?)
        }
    };
    let seal = Seal::new(&spec.sealing, Format::Ab)?;
    announce(&dest, &mut m)?;
    progress.set_total(m.file_size);

    let result = if sources.is_empty() {
        Err(Error::Device {
            command: "pm list packages -U --show-versioncode".into(),
            output: warnings.list.join("; "),
        })
    } else {
        let sink = match &dest {
            None => Sink::Stdout(io::stdout()),
            Some((store, key)) => Sink::Upload(store.upload(key, m.file_size)?),
        };
        write_apps(&sources, &device, system.sdk, opts, sink, seal, progress, &mut warnings)
    };
    progress.finish();
    m.gmt_modified = manifest::format_time(time::OffsetDateTime::now_utc());
    m.warnings = warnings.list.clone();
    m.warning_count = warnings.count;
    record(&dest, m, result, sources.len() < spec.apps.len())
}

/// The `.ab` stream of app backups: header, zlib, Android-flavoured tar, one package after the
/// other (each stopped right before it is read).
fn write_apps(
    sources: &[apps::AppSource],
    device: &Device,
    sdk: u32,
    opts: apps::BackupOptions,
    sink: Sink,
    seal: Seal,
    progress: &Progress,
    warnings: &mut Warnings,
) -> Result<Written> {
    let mut stream = start_stream(sink, Codec::zlib_default(), true, Flavor::Android, seal, progress)?;
    for app in sources {
        let written = if opts.stop { device.force_stop(&app.package) } else { Ok(()) }.and_then(|()| {
            apps::write_app(&mut stream.tar, app, sdk, opts, &mut |w| warnings.push(w), &mut |n| progress.entry(n))
        });
        if let Err(e) = written {
            return Err(stream.abandon(e));
        }
    }
    finish_stream(stream)
}

/// The destination's store and the archive's key in it; a folder gets a generated name.
fn store_key(
    loc: &Location,
    opts: &crate::spec::StoreOptions,
    name: Option<&str>,
    instance_id: &str,
    now: time::OffsetDateTime,
    ext: &str,
) -> Result<(Box<dyn Store>, String)> {
    let (store, mut key, folder) = store::open(loc, opts)?;
    if folder || key.ends_with('/') || key.is_empty() {
        key.push_str(&store::name_in_folder(name, instance_id, now, ext));
    }
    Ok((store, key))
}

/// Fill the manifest's location fields and put it beside the archive-to-be (status BACKUPING).
fn announce(dest: &Option<(Box<dyn Store>, String)>, m: &mut Manifest) -> Result<()> {
    if let Some((store, key)) = dest {
        m.backup_file_name = key.rsplit('/').next().unwrap_or(key).to_string();
        m.backup_file_path = store.url(key);
        m.upload_type = store.kind().to_string();
        m.upload_endpoint = store.endpoint();
        m.server_side_encryption = store.server_side_encryption();
        put_manifest(store.as_ref(), key, m)?;
    }
    Ok(())
}

/// The manifest's last word: AVAILABLE (PART_BACKUP_FINISHED when `partial`) with the
/// archive's digest, or BACKUP_FAILED with the reason.
fn record(
    dest: &Option<(Box<dyn Store>, String)>,
    mut m: Manifest,
    result: Result<Written>,
    partial: bool,
) -> Result<Manifest> {
    match result {
        Ok(done) => {
            m.sha256 = done.sha256;
            m.archive_size = done.archive_size;
            m.entry_count = done.entries;
            m.uncompressed_size = done.tar_bytes;
            m.status = if partial { Status::PartBackupFinished } else { Status::Available };
            if let Some((store, key)) = dest {
                put_manifest(store.as_ref(), key, &m)?;
            }
            Ok(m)
        }
        Err(e) => {
            m.status = Status::BackupFailed;
            m.error_code = e.code().to_string();
            m.failure_reason = e.to_string();
            if let Some((store, key)) = dest {
                if let Err(e2) = put_manifest(store.as_ref(), key, &m) {
                    tracing::error!("could not record the failure in the manifest: {e2}");
                }
            }
            Err(e)
        }
    }
}

fn put_manifest(store: &dyn Store, key: &str, m: &Manifest) -> Result<()> {
    store.put(&manifest::key_for(key), &m.to_json())
}

/// Where the archive bytes go.
enum Sink {
    Stdout(io::Stdout),
    Upload(Box<dyn Upload>),
}

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Sink::Stdout(s) => s.write(buf),
            Sink::Upload(u) => u.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Sink::Stdout(s) => s.flush(),
            Sink::Upload(u) => u.flush(),
        }
    }
}

impl Sink {
    fn finish(self) -> Result<()> {
        match self {
            Sink::Stdout(mut s) => s.flush().ctx(|| "writing the archive to stdout".into()),
            Sink::Upload(u) => u.finish(),
        }
    }
}

struct Written {
    sha256: String,
    archive_size: u64,
    entries: u64,
    tar_bytes: u64,
}

#[derive(Default)]
struct Warnings {
    list: Vec<String>,
    count: u64,
    unreadable: u64,
}

impl Warnings {
    fn push(&mut self, w: String) {
        tracing::warn!("{w}");
        self.count += 1;
        if self.list.len() < MAX_WARNINGS {
            self.list.push(w);
        }
    }
    fn skip(&mut self, s: Skipped) {
        if !s.reason.starts_with("skipped:") {
            self.unreadable += 1;
        }
        self.push(format!("{}: {}", s.path, s.reason));
    }
}

/// Finish order, explicit: tar end → compressor end → sink complete. Any error aborts the sink.
fn write_archive(
    sel: &Selection,
    sink: Sink,
    format: Format,
    seal: Seal,
    progress: &Progress,
    warnings: &mut Warnings,
) -> Result<Written> {
    let (codec, flavor) = match format {
        Format::Tar => (Codec::None, Flavor::Full),
        Format::TarZst => (Codec::zstd_default(), Flavor::Full),
        Format::Ab => (Codec::zlib_default(), Flavor::Full),
        Format::Repo => return Err(Error::internal("a snapshot is not written as an archive")),
    };
    let mut stream = start_stream(sink, codec, format == Format::Ab, flavor, seal, progress)?;
    let mut links = HardLinks::default();
    for step in sel.walk() {
        let added = match step {
            Walked::Entry(e) => add_entry(&mut stream.tar, e, &mut links, progress, warnings),
            Walked::Skipped(s) => {
                warnings.skip(s);
                Ok(())
            }
        };
        if let Err(e) = added {
            return Err(stream.abandon(e));
        }
    }
    finish_stream(stream)
}

/// The archive stream: tar on the caller's thread; compressor, hash and sink on a thread of
/// their own behind a bounded pipe, so reading files and compressing overlap.
struct Stream {
    tar: TarWriter<PipeWriter>,
    compressing: Background<(String, u64)>,
}

impl Stream {
    /// Stop on an error: the pipe breaks without an end, the compressing side fails and drops
    /// the sink, which aborts the upload. Returns the error that explains what happened.
    fn abandon(self, e: Error) -> Error {
        drop(self.tar);
        pipe::root_cause(e, self.compressing.join())
    }
}

/// Start the stream: `.ab` header (when asked), compressor, the `.ab`'s own cipher (when
/// sealed so), then the stored bytes: sealed with age on a thread of their own (when sealed
/// so), hashed, and handed to the sink.
fn start_stream(
    sink: Sink,
    codec: Codec,
    ab_header: bool,
    flavor: Flavor,
    seal: Seal,
    progress: &Progress,
) -> Result<Stream> {
    let counter = progress.counters.transferred.clone();
    let (pipe, compressing) = pipe::consume_in_background("compress", move |tar_bytes| {
        let (age, android) = match seal {
            Seal::Plain => (None, None),
            Seal::Age(sealing) => (Some(sealing), None),
            Seal::Ab(params, key) => (None, Some((params, key))),
        };
        let mut stored = Stored::new(sink, counter, age)?;
        if ab_header {
            let params = android.as_ref().map(|(p, _)| p);
            ab::write_header(&mut stored, params).ctx(|| "writing the .ab header".into())?;
        }
        let body = match &android {
            Some((_, key)) => Body::Aes(crypt::ab::CbcWriter::new(key, stored)),
            None => Body::Plain(stored),
        };
        let mut encoder = Encoder::new(codec, body).ctx(|| "starting the compressor".into())?;
        copy(tar_bytes, &mut encoder)?;
        // Finish order, explicit: compressor end → cipher end → seal → hash → sink complete.
        let body = encoder.finish().ctx(|| "ending the compressed stream".into())?;
        let stored = body.finish().ctx(|| "ending the encrypted stream".into())?;
        stored.finish()
    })?;
    Ok(Stream { tar: TarWriter::new(pipe, flavor), compressing })
}

/// How the stored bytes are sealed.
enum Seal {
    Plain,
    /// age over the whole archive.
    Age(Sealing),
    /// Android's own encryption of an `.ab`: the header's key material and the payload key.
    Ab(crypt::ab::Params, crypt::ab::PayloadKey),
}

impl Seal {
    fn new(sealing: &Sealing, format: Format) -> Result<Seal> {
        match (Encryption::of(sealing, format == Format::Ab), &sealing.passphrase) {
            (None, _) => Ok(Seal::Plain),
            (Some(e), Some(passphrase)) if !e.is_age() => {
                let (params, key) = crypt::ab::new_key(passphrase)?;
                Ok(Seal::Ab(params, key))
            }
            (Some(_), _) => Ok(Seal::Age(sealing.clone())),
        }
    }
}

/// The extension of a generated archive name: the format's, and `.age` when sealed with age.
fn sealed_extension(format: Format, sealing: &Sealing) -> String {
    match Encryption::of(sealing, format == Format::Ab) {
        Some(e) if e.is_age() => format!("{}.age", format.extension()),
        _ => format.extension().to_string(),
    }
}

/// The compressed stream, through the `.ab`'s own cipher or not.
enum Body<W: Write> {
    Plain(W),
    Aes(crypt::ab::CbcWriter<W>),
}

impl<W: Write> Body<W> {
    fn finish(self) -> io::Result<W> {
        match self {
            Body::Plain(w) => Ok(w),
            Body::Aes(c) => c.finish(),
        }
    }
}

impl<W: Write> Write for Body<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Body::Plain(w) => w.write(buf),
            Body::Aes(c) => c.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Body::Plain(w) => w.flush(),
            Body::Aes(c) => c.flush(),
        }
    }
}

/// The stored bytes: hashed and handed to the sink, on this thread or, when sealed with age,
/// behind a pipe on a thread of their own (the cipher is a tenth of an export's CPU).
enum Stored {
    Hashed(HashWriter<Sink>),
    Sealing { pipe: PipeWriter, sealer: Background<(String, u64)> },
}

impl Stored {
    fn new(sink: Sink, counter: Counter, age: Option<Sealing>) -> Result<Stored> {
        let Some(sealing) = age else { return Ok(Stored::Hashed(HashWriter::new(sink, counter))) };
        let (pipe, sealer) = pipe::consume_in_background("seal", move |plain| {
            let mut sealed = crypt::stream::seal(&sealing, HashWriter::new(sink, counter))?;
            copy(plain, &mut sealed)?;
            let hashed = sealed.finish().ctx(|| "ending the age stream".into())?;
            hand_over(hashed)
        })?;
        Ok(Stored::Sealing { pipe, sealer })
    }

    /// End the stored bytes: the sink completes; the archive's SHA-256 and size.
    fn finish(self) -> Result<(String, u64)> {
        match self {
            Stored::Hashed(hashed) => hand_over(hashed),
            Stored::Sealing { pipe, sealer } => {
                let ended = pipe.finish().ctx(|| "handing the archive to the age stage".into());
                let sealed = sealer.join();
                match ended {
                    Ok(()) => sealed,
                    Err(e) => Err(pipe::root_cause(e, sealed)),
                }
            }
        }
    }
}

/// The hash's last word, then the sink's.
fn hand_over(hashed: HashWriter<Sink>) -> Result<(String, u64)> {
    let (sink, sha256, archive_size) = hashed.finish();
    sink.finish()?;
    Ok((sha256, archive_size))
}

impl Write for Stored {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stored::Hashed(h) => h.write(buf),
            Stored::Sealing { pipe, .. } => pipe.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stored::Hashed(h) => h.flush(),
            // The pipe's flush hands a partial chunk on; the sealer batches by itself.
            Stored::Sealing { .. } => Ok(()),
        }
    }
}

/// Tar end (which ends the pipe cleanly) → the compressing side finishes and completes the sink.
fn finish_stream(stream: Stream) -> Result<Written> {
    let Stream { tar, compressing } = stream;
    let entries = tar.entries();
    let tar_bytes = tar.bytes() + 1024;
    let ended = tar.finish().and_then(PipeWriter::finish).ctx(|| "ending the tar stream".into());
    let compressed = compressing.join();
    let (sha256, archive_size) = match ended {
        Ok(()) => compressed?,
        Err(e) => return Err(pipe::root_cause(e, compressed)),
    };
    Ok(Written { sha256, archive_size, entries, tar_bytes })
}

/// A stream from a pipe into the next stage, in large reads.
fn copy(from: &mut PipeReader, to: &mut dyn Write) -> Result<()> {
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Error::Io { context: "reading the archive stream".into(), source: e }),
        };
        to.write_all(&buf[..n]).ctx(|| "writing the archive stream".into())?;
    }
}

fn add_entry<W: Write>(
    tar: &mut TarWriter<W>,
    e: Entry,
    links: &mut HardLinks,
    progress: &Progress,
    warnings: &mut Warnings,
) -> Result<()> {
    progress.check_cancel()?;
    let shown = e.path.display();
    let st = Stat::from(&e.meta);
    let meta = Meta { xattrs: disk::xattrs(&e.path.host), ..disk::meta(e.path.device.clone(), &st) };
    let sink_err = |err: io::Error| Error::Io { context: format!("writing the archive at {shown}"), source: err };
    if st.is_dir() {
        tar.append_dir(&meta).map_err(sink_err)?;
    } else if st.is_symlink() {
        match fs::read_link(&e.path.host) {
            Ok(target) => tar.append_symlink(&meta, target.as_os_str().as_bytes()).map_err(sink_err)?,
            Err(err) => {
                warnings.skip(Skipped { path: shown, reason: format!("cannot read symlink: {err}") });
                return Ok(());
            }
        }
    } else {
        match disk::put_file(tar, &meta, &st, || open_for_read(&e.path.host), links, &shown)? {
            Put::Stored { size, changed } => {
                if let Some(w) = changed {
                    warnings.push(w);
                }
                progress.entry(size);
                return Ok(());
            }
            Put::Linked => {}
            Put::Unreadable(reason) => {
                warnings.skip(Skipped { path: shown, reason });
                return Ok(());
            }
        }
    }
    progress.entry(0);
    Ok(())
}

/// Open without following links and without blocking (a FIFO swapped in after the walk's
/// lstat must not hang the backup).
pub(crate) fn open_for_read(path: &Path) -> io::Result<File> {
    OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY).open(path)
}
