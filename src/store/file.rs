//! The local-directory store: archives and manifests as files in one directory. An upload is
//! written to `NAME.partial`, flushed to disk, and renamed to `NAME` by `finish`; a manifest is
//! written to a temporary name and renamed over the old one. So a reader sees a complete file
//! or none.
//!
//! It never writes outside its directory: keys with `/` or `..` are refused.

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
        if key.is_empty() || key.contains('/') || key == "." || key == ".." {
            return Err(Error::usage(format!("bad file name {key:?} for the local store")));
        }
        Ok(self.dir.join(key))
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
        let fin = self.path(key)?;
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
        let f = File::open(&p).map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                Error::usage(format!("{} does not exist", p.display()))
            } else {
                Error::Io { context: format!("opening {}", p.display()), source: e }
            }
        })?;
        Ok(Box::new(f))
    }

    fn put(&self, key: &str, body: &[u8]) -> Result<()> {
        sys::write_atomic(&self.path(key)?, body, 0o666)
    }

    fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        let p = self.path(key)?;
        match fs::read(&p) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::Io { context: format!("reading {}", p.display()), source: e }),
        }
    }

    fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        let mut out = Vec::new();
        for ent in fs::read_dir(&self.dir).ctx(|| format!("listing {}", self.dir.display()))? {
            let ent = ent.ctx(|| format!("listing {}", self.dir.display()))?;
            let Ok(name) = ent.file_name().into_string() else { continue };
            if name.starts_with(prefix) && ent.file_type().map(|t| t.is_file()).unwrap_or(false) {
                let size = ent.metadata().map(|m| m.len()).unwrap_or(0);
                out.push(ObjectInfo { key: name, size });
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
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
