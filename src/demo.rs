//! The built-in demo: a small Android-like root (an app's data dirs, its external files,
//! photos, `/data/user/0 -> /data/data`) made in a directory of the user's choice, so that
//! `cpbackup demo` can run the whole export → verify → import path with no phone and no
//! object store.
//!
//! It only ever writes under the directory it is given.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::Path;

use crate::error::{IoContext, Result};

/// The package the demo root holds.
pub const PACKAGE: &str = "com.example.notes";

/// Create the demo phone root under `root` (which must not exist yet or be empty).
pub fn make_root(root: &Path) -> Result<()> {
    let w = |rel: &str, data: &[u8]| -> Result<()> {
        let p = root.join(rel);
        if let Some(parent) = p.parent() {
            fs::create_dir_all(parent).ctx(|| format!("creating {}", parent.display()))?;
        }
        fs::write(&p, data).ctx(|| format!("writing {}", p.display()))
    };
    let app = format!("data/data/{PACKAGE}");
    w(&format!("{app}/shared_prefs/settings.xml"), b"<map><boolean name=\"dark\" value=\"true\" /></map>\n")?;
    let mut db = Vec::with_capacity(1 << 20);
    for i in 0..20_000u32 {
        db.extend_from_slice(
            format!("INSERT INTO notes VALUES({i},'note number {i}','body of note {i}');\n").as_bytes(),
        );
    }
    w(&format!("{app}/databases/notes.db"), &db)?;
    for i in 0..200 {
        w(&format!("{app}/files/attachments/note-{i:03}.txt"), format!("attachment {i}\n").as_bytes())?;
    }
    w(&format!("{app}/cache/thumbnails/t0.bin"), &[0u8; 4096])?;
    w(&format!("data/user_de/0/{PACKAGE}/files/boot_state"), b"ready\n")?;
    w(&format!("data/media/0/Android/data/{PACKAGE}/files/export.json"), b"{\"notes\":20000}\n")?;
    // Photos: incompressible bytes.
    for i in 0..8u64 {
        w(&format!("data/media/0/DCIM/Camera/IMG_{i:04}.jpg"), &noise(256 * 1024, i + 1))?;
    }
    let user = root.join("data/user");
    fs::create_dir_all(&user).ctx(|| format!("creating {}", user.display()))?;
    let link = user.join("0");
    if fs::symlink_metadata(&link).is_err() {
        symlink("/data/data", &link).ctx(|| format!("creating {}", link.display()))?;
    }
    Ok(())
}

/// `len` incompressible bytes, the same for the same `seed` (xorshift64: no RNG dependency,
/// reproducible trees for demos and tests).
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}
