//! Who owns an app's files after a restore: the uid and gid of the freshly installed app's own
//! data directory, and the app's cache gid (`uid - 10000 + 20000` within its Android user) for
//! `cache` and `code_cache` (Android 13 clears the data of an app whose cache dirs have another
//! group).
//!
//! It never takes an owner from an archive, and never follows a symlink while changing owners.

use std::fs;
use std::io;
use std::os::unix::fs::{lchown, MetadataExt};
use std::path::Path;

use rustix::fs::{AtFlags, Gid, Uid};

use crate::archive;
use crate::error::{IoContext, Result};
use crate::sys::walk::{Step, Walk};

/// Android's per-user uid range.
const PER_USER_RANGE: u32 = 100_000;
const FIRST_APPLICATION_UID: u32 = 10_000;
const LAST_APPLICATION_UID: u32 = 19_999;
const FIRST_APPLICATION_CACHE_GID: u32 = 20_000;

/// The dirs under a data dir that get the cache gid.
pub const CACHE_DIRS: [&str; 2] = ["cache", "code_cache"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner {
    pub uid: u32,
    pub gid: u32,
    pub cache_gid: u32,
}

/// The cache gid of an app uid (`UserHandle.getCacheAppGid`); the uid's own gid for a uid
/// outside the application range.
pub fn cache_gid(uid: u32, gid: u32) -> u32 {
    let app_id = uid % PER_USER_RANGE;
    if (FIRST_APPLICATION_UID..=LAST_APPLICATION_UID).contains(&app_id) {
        (uid / PER_USER_RANGE) * PER_USER_RANGE + app_id - FIRST_APPLICATION_UID + FIRST_APPLICATION_CACHE_GID
    } else {
        gid
    }
}

impl Owner {
    /// The owner of a freshly created data dir.
    pub fn of(dir: &Path) -> Result<Owner> {
        let m = fs::symlink_metadata(dir).ctx(|| format!("reading the owner of {}", dir.display()))?;
        Ok(Owner { uid: m.uid(), gid: m.gid(), cache_gid: cache_gid(m.uid(), m.gid()) })
    }
}

/// `chown -R uid:gid DIR`, with `DIR/cache` and `DIR/code_cache` (and what is under them) given
/// the cache gid, when `cache_dirs` is set. Symlinks get their own owner changed, never their
/// target's. Walks the tree without recursion and relative to each directory (`sys::walk`):
/// the staged tree may be deeper than a path can name.
pub fn chown_tree(dir: &Path, owner: Owner, cache_dirs: bool) -> Result<()> {
    lchown(dir, Some(owner.uid), Some(owner.gid)).ctx(|| format!("chown {}", dir.display()))?;
    let mut walk = Walk::new(dir).ctx(|| format!("listing {}", dir.display()))?;
    let shown = |walk: &Walk| format!("chown {}/{}", dir.display(), archive::shown(walk.rel()));
    while let Some(step) = walk.next() {
        if step.ctx(|| shown(&walk))? == Step::Left {
            continue;
        }
        let top = walk.rel().split(|b| *b == b'/').next().unwrap_or_default();
        let is_cache = cache_dirs && CACHE_DIRS.iter().any(|c| c.as_bytes() == top);
        let gid = if is_cache { owner.cache_gid } else { owner.gid };
        rustix::fs::chownat(
            walk.dir(),
            walk.name(),
            Some(Uid::from_raw(owner.uid)),
            Some(Gid::from_raw(gid)),
            AtFlags::SYMLINK_NOFOLLOW,
        )
        .map_err(io::Error::from)
        .ctx(|| shown(&walk))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_gids() {
        assert_eq!(cache_gid(10123, 10123), 20123);
        assert_eq!(cache_gid(1_010_123, 1_010_123), 1_020_123);
        assert_eq!(cache_gid(1000, 1000), 1000);
        assert_eq!(cache_gid(0, 0), 0);
    }
}
