//! The local-directory store: archives and manifests as files in one directory. An upload is
//! written to `NAME.partial`, flushed to disk, and renamed to `NAME` by `finish`; a manifest is
//! written to a temporary name and renamed over the old one. So a reader sees a complete file
//! or none.
//!
//! Keys may name files in subdirectories (`data/ab/…`, as a repository lays out its packs):
//! each component is checked, and parents are made on the first write.
//!
//! It never writes outside its directory: empty components, `.` and `..` are refused.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use super::{ObjectInfo, Store, Upload};
use crate::error::{Error, IoContext, Result};
use crate::sys;

pub struct FileStore {
    dir: PathBuf,
}

impl FileStore {
    pub fn new(dir: &Path) -> FileStore {
        let dir = if dir.as_os_str().is_empty() { PathBuf::from(".") } else { dir.to_path_buf() };
        FileStore { dir }
    }

    pub fn path(&self, key: &str) -> Result<PathBuf> {
        if key.split('/').any(|c| c.is_empty() || c == "." || c == "..") {
            return Err(Error::usage(format!("bad file name {key:?} for the local store")));
        }
        Ok(self.dir.join(key))
    }

    /// The file for `key`, its directory made when the key has one.
    fn path_to_write(&self, key: &str) -> Result<PathBuf> {
        let p = self.path(key)?;
        if key.contains('/') {
            if let Some(parent) = p.parent() {
                fs::create_dir_all(parent).ctx(|| format!("creating {}", parent.display()))?;
            }
        }
        Ok(p)
    }

    pub fn partial_path(&self, key: &str) -> Result<PathBuf> {
        self.path(&format!("{key}.partial"))
    }
}

struct FileUpload {
    out: Option<BufWriter<File>>,
    partial: PathBuf,
    fin: PathBuf,
}

impl FileUpload {
    fn out(&mut self) -> io::Result<&mut BufWriter<File>> {
        self.out.as_mut().ok_or_else(|| io::Error::other("upload already finished"))
    }
}

impl Write for FileUpload {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.out()?.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.out()?.flush()
    }
}

/// Dropped without `finish`: the partial file goes.
impl Drop for FileUpload {
    fn drop(&mut self) {
        if self.out.take().is_some() {
            let _ = fs::remove_file(&self.partial);
        }
    }
}

impl Upload for FileUpload {
    fn finish(mut self: Box<Self>) -> Result<()> {
        let partial = self.partial.clone();
        let out = self.out().ctx(|| format!("writing {}", partial.display()))?;
        out.flush().ctx(|| format!("writing {}", partial.display()))?;
        out.get_ref().sync_all().ctx(|| format!("flushing {}", partial.display()))?;
        fs::rename(&partial, &self.fin).ctx(|| format!("renaming {} to {}", partial.display(), self.fin.display()))?;
        self.out = None;
        let _ = sys::sync_dir(sys::parent_of(&self.fin));
        Ok(())
    }

    fn abort(self: Box<Self>) {
        drop(self);
    }
}

impl Store for FileStore {
    fn url(&self, key: &str) -> String {
        self.dir.join(key).display().to_string()
    }

    fn kind(&self) -> &'static str {
        "FILE"
    }

    fn endpoint(&self) -> String {
        String::new()
    }

    fn upload(&self, key: &str, _size_hint: u64) -> Result<Box<dyn Upload>> {
        let fin = self.path_to_write(key)?;
        let partial = self.partial_path(key)?;
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&partial)
            .ctx(|| format!("creating {}", partial.display()))?;
        Ok(Box::new(FileUpload { out: Some(BufWriter::with_capacity(1 << 20, file)), partial, fin }))
    }

    fn download(&self, key: &str) -> Result<Box<dyn Read + Send>> {
        let p = self.path(key)?;
        let f = open_existing(&p)?;
        Ok(Box::new(f))
    }

    fn put(&self, key: &str, body: &[u8]) -> Result<()> {
        sys::write_atomic(&self.path_to_write(key)?, body, 0o666)
    }

    fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        let p = self.path(key)?;
        match fs::read(&p) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::Io { context: format!("reading {}", p.display()), source: e }),
        }
    }

    /// Like an object store's listing: every file whose key starts with `prefix`, in
    /// subdirectories too (only those the prefix reaches are read).
    /// One directory read: the files directly in the prefix's directory.
    fn list_top(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        let dir_key = match prefix.rsplit_once('/') {
            Some((dir, _)) => format!("{dir}/"),
            None => String::new(),
        };
        let dir = self.dir.join(&dir_key);
        let rd = match fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound && !dir_key.is_empty() => return Ok(Vec::new()),
            Err(e) => return Err(Error::Io { context: format!("listing {}", dir.display()), source: e }),
        };
        let mut out = Vec::new();
        for ent in rd {
            let ent = ent.ctx(|| format!("listing {}", dir.display()))?;
            let Ok(name) = ent.file_name().into_string() else { continue };
            let key = format!("{dir_key}{name}");
            if key.starts_with(prefix) && ent.file_type().map(|t| t.is_file()).unwrap_or(false) {
                let size = ent.metadata().map(|m| m.len()).unwrap_or(0);
                out.push(ObjectInfo { key, size });
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        let mut out = Vec::new();
        // Directories still to read, as key prefixes ("" or "a/b/").
        let start = match prefix.rsplit_once('/') {
            Some((dir, _)) => format!("{dir}/"),
            None => String::new(),
        };
        let mut todo = vec![start];
        while let Some(dir_key) = todo.pop() {
            let dir = self.dir.join(&dir_key);
            let rd = match fs::read_dir(&dir) {
                Ok(rd) => rd,
                Err(e) if e.kind() == io::ErrorKind::NotFound && !dir_key.is_empty() => continue,
                Err(e) => return Err(Error::Io { context: format!("listing {}", dir.display()), source: e }),
            };
            for ent in rd {
                let ent = ent.ctx(|| format!("listing {}", dir.display()))?;
                let Ok(name) = ent.file_name().into_string() else { continue };
                let key = format!("{dir_key}{name}");
                let Ok(ft) = ent.file_type() else { continue };
                if ft.is_dir() {
                    let sub = format!("{key}/");
                    // Only directories the prefix can reach.
                    if sub.starts_with(prefix) || prefix.starts_with(&sub) {
                        todo.push(sub);
                    }
                } else if ft.is_file() && key.starts_with(prefix) {
                    let size = ent.metadata().map(|m| m.len()).unwrap_or(0);
                    out.push(ObjectInfo { key, size });
                }
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    fn get_range_into(&self, key: &str, offset: u64, len: u64, mut buf: Vec<u8>) -> Result<Vec<u8>> {
        use std::os::unix::fs::FileExt;
        let p = self.path(key)?;
        let f = open_existing(&p)?;
        let size = f.metadata().ctx(|| format!("reading {}", p.display()))?.len();
        let len = len.min(size.saturating_sub(offset));
        buf.clear();
        buf.resize(usize::try_from(len).map_err(|_| Error::usage("range too large"))?, 0);
        f.read_exact_at(&mut buf, offset).ctx(|| format!("reading {} bytes at {offset} of {}", len, p.display()))?;
        Ok(buf)
    }

    fn read_range(&self, key: &str, offset: u64, len: u64) -> Result<Box<dyn Read + Send + '_>> {
        use std::io::Seek;
        let p = self.path(key)?;
        let mut f = open_existing(&p)?;
        f.seek(io::SeekFrom::Start(offset)).ctx(|| format!("reading {}", p.display()))?;
        Ok(Box::new(f.take(len)))
    }

    fn size(&self, key: &str) -> Result<Option<u64>> {
        let p = self.path(key)?;
        match fs::metadata(&p) {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::Io { context: format!("reading {}", p.display()), source: e }),
        }
    }

    fn delete(&self, key: &str) -> Result<()> {
        let p = self.path(key)?;
        match fs::remove_file(&p) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::Io { context: format!("removing {}", p.display()), source: e }),
        }
    }
}

/// An archive or object to read: one that is not there is the user's to fix (exit 2).
fn open_existing(p: &Path) -> Result<File> {
    File::open(p).map_err(|e| {
        if e.kind() == io::ErrorKind::NotFound {
            Error::usage(format!("{} does not exist", p.display()))
        } else {
            Error::Io { context: format!("opening {}", p.display()), source: e }
        }
    })
}
