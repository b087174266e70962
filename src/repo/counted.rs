//! A `Store` that counts what passes through it: requests, bytes up, bytes down. Every
//! repository operation goes through one, so the `--json` results report what the store was
//! really asked (OSS and OBS charge per request). Counting only: it changes nothing.

use std::io::Read;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::error::Result;
use crate::store::{ObjectInfo, Store, Upload};

#[derive(Default)]
pub struct Counts {
    pub requests: AtomicU64,
    pub up: AtomicU64,
    pub down: AtomicU64,
}

pub struct Counted<'a> {
    pub inner: &'a dyn Store,
    pub counts: Counts,
}

impl<'a> Counted<'a> {
    pub fn new(inner: &'a dyn Store) -> Counted<'a> {
        Counted { inner, counts: Counts::default() }
    }

    fn req(&self) {
        self.counts.requests.fetch_add(1, Relaxed);
    }

    pub fn requests(&self) -> u64 {
        self.counts.requests.load(Relaxed)
    }

    pub fn uploaded(&self) -> u64 {
        self.counts.up.load(Relaxed)
    }

    pub fn downloaded(&self) -> u64 {
        self.counts.down.load(Relaxed)
    }
}

impl Store for Counted<'_> {
    fn url(&self, key: &str) -> String {
        self.inner.url(key)
    }
    fn kind(&self) -> &'static str {
        self.inner.kind()
    }
    fn endpoint(&self) -> String {
        self.inner.endpoint()
    }
    fn upload(&self, key: &str, size_hint: u64) -> Result<Box<dyn Upload>> {
        self.req();
        self.inner.upload(key, size_hint)
    }
    fn download(&self, key: &str) -> Result<Box<dyn Read + Send>> {
        self.req();
        self.inner.download(key)
    }
    fn put(&self, key: &str, body: &[u8]) -> Result<()> {
        self.req();
        self.inner.put(key, body)?;
        self.counts.up.fetch_add(body.len() as u64, Relaxed);
        Ok(())
    }
    fn put_owned(&self, key: &str, body: Vec<u8>) -> Result<Vec<u8>> {
        self.req();
        let body = self.inner.put_owned(key, body)?;
        self.counts.up.fetch_add(body.len() as u64, Relaxed);
        Ok(body)
    }
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        self.req();
        let got = self.inner.get(key)?;
        self.counts.down.fetch_add(got.as_ref().map_or(0, |b| b.len() as u64), Relaxed);
        Ok(got)
    }
    fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        let l = self.inner.list(prefix)?;
        // One request per page of 1,000 keys, as the S3 API pages.
        self.counts.requests.fetch_add(1 + l.len() as u64 / 1000, Relaxed);
        Ok(l)
    }
    fn list_top(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        let l = self.inner.list_top(prefix)?;
        self.counts.requests.fetch_add(1 + l.len() as u64 / 1000, Relaxed);
        Ok(l)
    }
    fn delete(&self, key: &str) -> Result<()> {
        self.req();
        self.inner.delete(key)
    }
    fn get_range_into(&self, key: &str, offset: u64, len: u64, buf: Vec<u8>) -> Result<Vec<u8>> {
        self.req();
        let b = self.inner.get_range_into(key, offset, len, buf)?;
        self.counts.down.fetch_add(b.len() as u64, Relaxed);
        Ok(b)
    }
    fn read_range(&self, key: &str, offset: u64, len: u64) -> Result<Box<dyn Read + Send + '_>> {
        self.req();
        Ok(Box::new(CountedRead { inner: self.inner.read_range(key, offset, len)?, down: &self.counts.down }))
    }
    fn size(&self, key: &str) -> Result<Option<u64>> {
        self.req();
        self.inner.size(key)
    }
}

/// A stream whose bytes count as downloaded as they are read.
struct CountedRead<'a> {
    inner: Box<dyn Read + Send + 'a>,
    down: &'a AtomicU64,
}

impl Read for CountedRead<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.down.fetch_add(n as u64, Relaxed);
        Ok(n)
    }
}
