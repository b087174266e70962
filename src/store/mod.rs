//! Where archives and manifests live. Owns parsing of destinations (`-`, a path, `file://`,
//! `oss://`, `obs://`, `s3://`), the naming of objects under a folder key, and the `Store`
//! trait: the one edge between the synchronous data path and remote or local storage.
//!
//! A store must never expose an archive under its final key before the upload is complete:
//! uploads are written aside and published by `Upload::finish`, or thrown away by `abort`.

pub mod file;
pub mod pending;
pub mod rate;
pub mod retry;
pub mod s3;
pub mod sse;

use std::io::{Read, Write};
use std::path::PathBuf;

use crate::error::{Error, Result};

/// An archive being written. Bytes go in through `Write`; nothing is visible under the key
/// until `finish` returns. Dropping an upload without `finish` aborts it (removes what was
/// written, aborts the multipart upload), so every error path cleans up by itself.
pub trait Upload: Write + Send {
    fn finish(self: Box<Self>) -> Result<()>;
    /// Throw away what was written, now. Never fails loudly: it runs on the way out of errors.
    fn abort(self: Box<Self>);
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    pub key: String,
    pub size: u64,
}

pub trait Store: Send + Sync {
    /// A human- and manifest-friendly address of `key` (never with credentials).
    fn url(&self, key: &str) -> String;
    /// "FILE", "OSS", "OBS" or "S3": the manifest's UploadType.
    fn kind(&self) -> &'static str;
    /// The endpoint to record in manifests.
    fn endpoint(&self) -> String;
    /// Start writing an archive. `size_hint` is the expected size, used to size parts.
    fn upload(&self, key: &str, size_hint: u64) -> Result<Box<dyn Upload>>;
    /// Stream an object.
    fn download(&self, key: &str) -> Result<Box<dyn Read + Send>>;
    /// Write a small object (a manifest) atomically.
    fn put(&self, key: &str, body: &[u8]) -> Result<()>;
    /// `put` of a buffer the caller gives up for the request and gets back after it (a
    /// repository's 16 MiB packs): a store that needs its own copy of the body (S3's) takes
    /// this one instead.
    fn put_owned(&self, key: &str, body: Vec<u8>) -> Result<Vec<u8>> {
        self.put(key, &body)?;
        Ok(body)
    }
    /// Read a small object; `None` when it does not exist.
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>>;
    /// Objects whose key starts with `prefix`, sorted by key.
    fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>>;
    /// Remove an object; removing a missing one is not an error.
    fn delete(&self, key: &str) -> Result<()>;
    /// Up to `len` bytes of an object from `offset` (a repository's blobs, a pack's trailer):
    /// fewer only where the object ends. A store without ranged reads of its own reads through
    /// to the range.
    fn get_range(&self, key: &str, offset: u64, len: u64) -> Result<Vec<u8>> {
        self.get_range_into(key, offset, len, Vec::new())
    }
    /// `get_range` into a buffer the caller gives up (its bytes are replaced) and gets back
    /// filled: a restore reads a 4 MiB range after another, and a new buffer for each cost a
    /// page fault per page.
    fn get_range_into(&self, key: &str, offset: u64, len: u64, mut buf: Vec<u8>) -> Result<Vec<u8>> {
        let mut r = self.download(key)?;
        std::io::copy(&mut (&mut r).take(offset), &mut std::io::sink())
            .map_err(|e| Error::Io { context: format!("reading {}", self.url(key)), source: e })?;
        buf.clear();
        r.take(len)
            .read_to_end(&mut buf)
            .map_err(|e| Error::Io { context: format!("reading {}", self.url(key)), source: e })?;
        Ok(buf)
    }
    /// `get_range` as a stream: up to `len` bytes of an object from `offset`, as they come (a
    /// restore decodes a pack's first blobs while the rest is on its way, and holds only what
    /// it has not decoded). A store without streamed ranged reads reads the range whole.
    fn read_range(&self, key: &str, offset: u64, len: u64) -> Result<Box<dyn Read + Send + '_>> {
        Ok(Box::new(std::io::Cursor::new(self.get_range(key, offset, len)?)))
    }
    /// The objects under `prefix` in its folder itself, not in folders below it (the records
    /// of a repository's folder, never its `data/`): a listing with the delimiter `/`.
    fn list_top(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        let depth = prefix.matches('/').count();
        Ok(self.list(prefix)?.into_iter().filter(|o| o.key.matches('/').count() == depth).collect())
    }
    /// An object's size; `None` when it does not exist.
    fn size(&self, key: &str) -> Result<Option<u64>> {
        Ok(self.list(key)?.into_iter().find(|o| o.key == key).map(|o| o.size))
    }
    /// How the store encrypts archives at rest, for the manifest (`None`: as the bucket says).
    fn server_side_encryption(&self) -> Option<sse::ServerSideEncryption> {
        None
    }
}

/// Which object storage an URL names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Oss,
    Obs,
    S3,
}

/// A parsed DEST or SRC. An object's bucket and key are valid by the CPH rules (`s3::check_bucket`,
/// `s3::check_key`): a location that parses names something a store can hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// `-`: stdout for an export, stdin for an import.
    Stdio,
    /// A local path (given plainly or as `file://`). `folder` when it names a directory.
    File {
        path: PathBuf,
        folder: bool,
    },
    Object {
        scheme: Scheme,
        bucket: String,
        key: String,
    },
}

impl Location {
    pub fn parse(s: &str) -> Result<Location> {
        if s == "-" {
            return Ok(Location::Stdio);
        }
        if s.is_empty() {
            return Err(Error::usage(
                "empty destination: give a path, file://PATH, -, or oss://, obs://, s3://BUCKET/KEY",
            ));
        }
        for (prefix, scheme) in [("oss://", Scheme::Oss), ("obs://", Scheme::Obs), ("s3://", Scheme::S3)] {
            if let Some(rest) = s.strip_prefix(prefix) {
                let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
                s3::check_bucket(bucket)?;
                s3::check_key(key)?;
                return Ok(Location::Object { scheme, bucket: bucket.to_string(), key: key.to_string() });
            }
        }
        let path = match s.strip_prefix("file://") {
            Some(p) if p.starts_with('/') => p,
            Some(p) => {
                return Err(Error::usage(format!("file URL {s:?} must be absolute (file:///path), got {p:?}")));
            }
            None if s.contains("://") => {
                return Err(Error::usage(format!(
                    "unsupported location {s:?}: use a path, file://PATH, -, or oss://, obs://, s3://BUCKET/KEY"
                )))
            }
            None => s,
        };
        let folder = path.ends_with('/') || std::path::Path::new(path).is_dir();
        Ok(Location::File { path: PathBuf::from(path), folder })
    }
}

/// The object name for a backup written into a folder: `--name` when given, otherwise the
/// instance id and the time (`acp-xxxx_20240520140000.tar.zst`). A second name for the same
/// phone in the same second (two requests to the daemon at once) gets `-2`, `-3`, … after the
/// time, so it never replaces the first backup's archive.
pub fn name_in_folder(name: Option<&str>, instance_id: &str, now: time::OffsetDateTime, ext: &str) -> String {
    static LAST: std::sync::Mutex<(String, u32)> = std::sync::Mutex::new((String::new(), 0));
    match name {
        Some(n) => n.to_string(),
        None => {
            let f = time::macros::format_description!("[year][month][day][hour][minute][second]");
            let stamp = now.format(&f).unwrap_or_default();
            let base = format!("{}_{stamp}", name_stem(instance_id));
            let mut last = LAST.lock().unwrap_or_else(|p| p.into_inner());
            if last.0 == base {
                last.1 += 1;
                format!("{base}-{}.{ext}", last.1)
            } else {
                *last = (base.clone(), 1);
                format!("{base}.{ext}")
            }
        }
    }
}

/// What every name `name_in_folder` makes for this phone starts with, before `_TIME`.
pub fn name_stem(instance_id: &str) -> &str {
    if instance_id.is_empty() {
        "cpbackup"
    } else {
        instance_id
    }
}

/// Refuse options that cannot apply where the archive goes: server-side encryption is the
/// object store's, and a local file or a pipe would be written in the clear.
pub fn check_options(loc: &Location, opts: &crate::spec::StoreOptions) -> Result<()> {
    match loc {
        Location::Object { .. } => Ok(()),
        Location::Stdio | Location::File { .. } if opts.sse.is_set() => Err(Error::usage(
            "--sse, --sse-kms-key-id and --sse-c-key-file ask the object store to encrypt: they apply to \
             oss://, obs:// and s3:// locations, not to a local path or stdin/stdout",
        )),
        Location::Stdio | Location::File { .. } => Ok(()),
    }
}

/// Open the store a location names, and the key within it (which may be a folder, ending in
/// `/`, or empty for a local directory).
pub fn open(loc: &Location, opts: &crate::spec::StoreOptions) -> Result<(Box<dyn Store>, String, bool)> {
    check_options(loc, opts)?;
    match loc {
        Location::Stdio => Err(Error::usage("internal: stdin/stdout is not a store")),
        Location::File { path, folder: true } => Ok((Box::new(file::FileStore::new(path)), String::new(), true)),
        Location::File { path, folder: false } => {
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .ok_or_else(|| Error::usage(format!("{} does not name a file", path.display())))?;
            let dir = path.parent().map(PathBuf::from).unwrap_or_default();
            Ok((Box::new(file::FileStore::new(&dir)), name.to_string(), false))
        }
        Location::Object { scheme, bucket, key } => {
            let store = s3::S3Store::new(*scheme, bucket, opts)?;
            // A key ending in `/` (or no key) is a folder: ECP's BackupFilePath.
            let folder = key.is_empty() || key.ends_with('/');
            Ok((Box::new(store), key.clone(), folder))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_in_one_second_never_collide() {
        let t = time::macros::datetime!(2031-05-20 14:00:00 UTC);
        let a = name_in_folder(None, "acp-n1", t, "tar.zst");
        let b = name_in_folder(None, "acp-n1", t, "tar.zst.age");
        let c = name_in_folder(None, "acp-n1", t + time::Duration::SECOND, "tar.zst");
        assert_eq!(a, "acp-n1_20310520140000.tar.zst");
        assert_eq!(b, "acp-n1_20310520140000-2.tar.zst.age");
        assert_eq!(c, "acp-n1_20310520140001.tar.zst");
        assert_eq!(name_in_folder(Some("mine.tar"), "acp-n1", t, "tar"), "mine.tar");
    }

    #[test]
    fn locations() {
        assert_eq!(Location::parse("-").unwrap(), Location::Stdio);
        assert_eq!(
            Location::parse("oss://bkt/backups/").unwrap(),
            Location::Object { scheme: Scheme::Oss, bucket: "bkt".into(), key: "backups/".into() }
        );
        // Bucket and object names are checked as they are read, before anything is started.
        assert!(Location::parse("oss:///x.tar").unwrap_err().to_string().contains("not a valid bucket name"));
        assert!(Location::parse("obs://Bkt/x.tar").unwrap_err().to_string().contains("not a valid bucket name"));
        assert!(Location::parse("s3://bkt/a b.tar").unwrap_err().to_string().contains("not a valid object path"));
        assert_eq!(
            Location::parse("file:///nonexistent/x.tar").unwrap(),
            Location::File { path: "/nonexistent/x.tar".into(), folder: false }
        );
        assert!(Location::parse("ftp://x/y").is_err());
        assert!(Location::parse("file://relative").is_err());
    }
}
