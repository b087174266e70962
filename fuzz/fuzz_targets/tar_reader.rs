//! Fuzz target: reading archives, the path every import and verify takes. The bytes go to
//! `archive::read::each_entry` as a tar stream, then through `archive::read::open` (container
//! sniffing: zstd, gzip, `.ab` compressed or not, plain tar) and `each_entry` again, so the
//! decompressors are fuzzed too. Every entry's content is read to its end; the tar stream is
//! also read a second time leaving all content unread, and both readings must agree (what the
//! tar reader skips counts against the budget of header bytes between entries, which is 4 KiB
//! under the fuzzer instead of 32 MiB, so that inputs reach it).
//!
//! A tar header carries a checksum that mutations almost always break, so the tar stream is
//! also read with every block's checksum recomputed.
//!
//! Reads stream: the decoded stream is capped (a few bytes of zstd stand for gigabytes) and so
//! is each entry's content (a sparse entry may claim exabytes of holes), so that a claimed size
//! can only show up as an allocation, which libFuzzer's `-malloc_limit_mb` catches. What the
//! reader hands out must already be checked: relative, no `..`, no NUL, a clean link target.

#![no_main]

use std::io::{self, Read};

use cpbackup::archive::read::{self, Item, Kind};
use libfuzzer_sys::fuzz_target;

/// At most this much of the decoded tar stream.
const STREAM_CAP: u64 = 8 << 20;
/// At most this much of one entry's content.
const ENTRY_CAP: u64 = 4 << 20;

fn clean(path: &[u8]) {
    assert!(!path.is_empty(), "empty path");
    assert!(!path.starts_with(b"/"), "absolute: {path:?}");
    assert!(!path.contains(&0), "NUL in {path:?}");
    for comp in path.split(|b| *b == b'/') {
        assert!(!comp.is_empty() && comp != b"." && comp != b"..", "component {comp:?} in {path:?}");
    }
}

/// What one pass saw: each entry's name, kind and size, then whether the archive read cleanly.
type Seen = (Vec<(Vec<u8>, Kind, u64)>, bool);

/// Read `src` as a tar stream, checking each entry; `read_content` says whether to read every
/// entry's content (up to `ENTRY_CAP`) or to leave it all to be skipped.
fn pass(src: &mut dyn Read, read_content: bool) -> Seen {
    let mut seen = Vec::new();
    let result = read::each_entry(src, &mut |item: Item, data: &mut dyn Read| {
        check(&item);
        seen.push((item.meta.path.clone(), item.kind.clone(), item.size));
        if read_content {
            let n = io::copy(&mut data.take(ENTRY_CAP), &mut io::sink())
                .map_err(|e| cpbackup::Error::archive(item.meta.display(), e.to_string()))?;
            if let Kind::File { .. } = item.kind {
                assert!(n <= item.size, "read {n} bytes of a {}-byte entry", item.size);
            }
        }
        Ok(())
    });
    if let Ok(count) = result {
        assert_eq!(count, seen.len() as u64);
    }
    (seen, result.is_ok())
}

fn check(item: &Item) {
    clean(&item.meta.path);
    assert!(item.meta.mode <= 0o7777);
    assert!(item.meta.mtime_nsec < 1_000_000_000);
    match &item.kind {
        Kind::Hardlink(target) => clean(target),
        Kind::Symlink(target) => assert!(!target.is_empty() && !target.contains(&0)),
        Kind::Dir | Kind::File { .. } => {}
    }
}

/// Read a tar stream twice: reading every entry's content, and reading none (the tar reader
/// skips it). The reader must see the same entries and come to the same end either way.
fn both_ways(tar: &[u8]) {
    let full = pass(&mut &tar[..], true);
    let skipped = pass(&mut &tar[..], false);
    assert_eq!(full, skipped, "reading the content or not changed what was read");
}

/// Make a block's header checksum right (all-zero blocks, the end marker, stay as they are).
fn set_checksum(block: &mut [u8]) {
    if block.iter().all(|b| *b == 0) {
        return;
    }
    block[148..156].fill(b' ');
    let sum: u32 = block.iter().map(|b| u32::from(*b)).sum();
    block[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
}

fuzz_target!(|data: &[u8]| {
    both_ways(data);
    // Again with every block's checksum made right, so that mutated header fields get past the
    // checksum to the parsers behind it (data blocks get 8 bytes changed, which is as good).
    let mut fixed = data.to_vec();
    fixed.chunks_exact_mut(512).for_each(set_checksum);
    if fixed != data {
        both_ways(&fixed);
    }
    if let Ok((_, decoded)) = read::open(data, &cpbackup::crypt::Opening::default(), "fuzz") {
        pass(&mut decoded.take(STREAM_CAP), true);
    }
});
