//! The phone binary (issue 6): one static aarch64 ELF, small enough to push to a phone, that
//! knows what it was built for. Checks the binary `CPBACKUP_BIN` names when that is an aarch64
//! build (CI's qemu pass), else the aarch64 builds found under target/ (none: nothing to check,
//! said on stderr).

use std::path::{Path, PathBuf};

use crate::support::{cpbackup, run};

/// The size the shipped binary must stay under.
const MAX_SIZE: u64 = 20 << 20;

const EM_AARCH64: u16 = 183;
const PT_INTERP: u32 = 3;
const PT_DYNAMIC: u32 = 2;
const DT_NEEDED: u64 = 1;

struct Elf {
    machine: u16,
    interp: bool,
    needed: usize,
}

/// Just enough of a 64-bit little-endian ELF: machine, PT_INTERP, DT_NEEDED entries.
fn read_elf(path: &Path) -> Elf {
    let b = std::fs::read(path).unwrap();
    assert_eq!(&b[..4], b"\x7fELF", "{} is not ELF", path.display());
    assert_eq!((b[4], b[5]), (2, 1), "64-bit little-endian");
    let u16_at = |o: usize| u16::from_le_bytes(b[o..o + 2].try_into().unwrap());
    let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap());
    let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap());
    let (phoff, phentsize, phnum) = (u64_at(32) as usize, u16_at(54) as usize, u16_at(56) as usize);
    let mut elf = Elf { machine: u16_at(18), interp: false, needed: 0 };
    for i in 0..phnum {
        let ph = phoff + i * phentsize;
        match u32_at(ph) {
            PT_INTERP => elf.interp = true,
            PT_DYNAMIC => {
                let (off, size) = (u64_at(ph + 8) as usize, u64_at(ph + 32) as usize);
                elf.needed += (0..size / 16).filter(|k| u64_at(off + k * 16) == DT_NEEDED).count();
            }
            _ => {}
        }
    }
    elf
}

/// The aarch64 binaries to check: CPBACKUP_BIN's (its last word), else those under target/.
fn aarch64_binaries() -> Vec<PathBuf> {
    if let Ok(cmd) = std::env::var("CPBACKUP_BIN") {
        let p = PathBuf::from(cmd.split_whitespace().last().unwrap_or_default());
        if read_elf(&p).machine == EM_AARCH64 {
            return vec![p];
        }
        return Vec::new();
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/aarch64-unknown-linux-musl");
    let p = dir.join("release/cpbackup");
    if p.is_file() {
        vec![p]
    } else {
        Vec::new()
    }
}

#[test]
fn cross_aarch64_binary_is_static_small_and_knows_its_target() {
    let bins = aarch64_binaries();
    if bins.is_empty() {
        eprintln!("no aarch64 build to check (cargo build --release --target aarch64-unknown-linux-musl)");
        return;
    }
    for bin in bins {
        let elf = read_elf(&bin);
        assert_eq!(elf.machine, EM_AARCH64, "{}", bin.display());
        assert!(!elf.interp, "{}: has a program interpreter: not static", bin.display());
        assert_eq!(elf.needed, 0, "{}: needs shared libraries", bin.display());
        let size = std::fs::metadata(&bin).unwrap().len();
        assert!(size <= MAX_SIZE, "{}: {size} bytes, more than 20 MiB", bin.display());
        // Through the runner when it is CPBACKUP_BIN; qemu directly otherwise.
        let mut c = if std::env::var("CPBACKUP_BIN").is_ok() {
            cpbackup()
        } else {
            let mut c = std::process::Command::new("qemu-aarch64-static");
            c.arg(&bin);
            c
        };
        if std::env::var("CPBACKUP_BIN").is_err() && !crate::support::have("qemu-aarch64-static") {
            continue;
        }
        let out = run(c.arg("version"), 0);
        let v = String::from_utf8_lossy(&out.stdout);
        assert!(v.contains("aarch64-unknown-linux-musl"), "{v}");
        eprintln!("{}: {size} bytes, static; {}", bin.display(), v.trim());
    }
}
