//! `prune`: deletes the packs no snapshot reaches, safely while any number of phones write.
//!
//! Two phases over two runs, with a grace period longer than any backup runs:
//! 1. A pack no snapshot record reaches is *marked* (`marks/<random>`, with the time).
//!    Writers read the marks before the index and treat blobs in marked packs as absent, so a
//!    writer that starts after the mark never comes to depend on a marked pack.
//! 2. A later prune deletes a marked pack only when its mark is older than the grace period
//!    and no record reaches it then: a writer that started before the mark and reused a blob
//!    of it has finished by then, and its record now reaches the pack (which is unmarked and
//!    kept). Then index objects that name deleted packs are rewritten (the new one written
//!    before the old is deleted), and only then are the old marks removed.
//!
//! It must never delete a pack that a complete record reaches, nor one marked less than the
//! grace period ago, nor an index object before its replacement is stored.

use std::collections::HashSet;

use serde::Serialize;

use super::id::Name;
use super::pack::{self, Entry, Located};
use super::read::{self, Blobs, Filter};
use super::seal::Keys;
use super::{index, marks, Repo};
use crate::archive::Format;
use crate::error::{Error, Result};
use crate::store::Store;

#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Pruned {
    pub snapshots: usize,
    pub packs: usize,
    pub packs_referenced: usize,
    /// Packs marked by this run.
    pub marked: usize,
    /// Marked packs a record reaches again: unmarked.
    pub unmarked: usize,
    /// Marked packs still within the grace period.
    pub waiting: usize,
    pub deleted: usize,
    pub bytes_deleted: u64,
    pub indexes_rewritten: usize,
}

/// `--grace`: `24h`, `30m`, `90s`, `2d`, or seconds.
pub fn parse_grace(s: &str) -> Result<i64> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: i64 =
        num.parse().map_err(|_| Error::usage(format!("--grace {s:?}: use a number and s, m, h or d, e.g. 24h")))?;
    let mul = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(Error::usage(format!("--grace {s:?}: use a number and s, m, h or d, e.g. 24h"))),
    };
    Ok(n.saturating_mul(mul))
}

/// Every pack the complete snapshot records under the repository reach.
pub fn referenced(repo: &Repo<'_>) -> Result<(usize, HashSet<Name>)> {
    let mut packs = HashSet::new();
    let mut n = 0;
    let mut blobs = Blobs::of(repo);
    for (key, m) in crate::catalog::records(repo.store, &repo.prefix)? {
        if m.format != Some(Format::Repo) {
            continue;
        }
        let Some(info) = m.snapshot.as_ref().filter(|_| m.status.archive_complete()) else { continue };
        n += 1;
        let root = info.root(&repo.store.url(&key))?;
        packs.extend(root.iter().map(|l| l.pack));
        read::walk_nodes(&mut blobs, &root, &Filter::default(), true, &mut |_, node| {
            packs.extend(node.chunks.iter().map(|l: &Located| l.pack));
            Ok(())
        })?;
    }
    Ok((n, packs))
}

pub fn prune(repo: &Repo<'_>, grace_secs: i64, now: i64) -> Result<Pruned> {
    let store = repo.store;
    let prefix = &repo.prefix;
    let (snapshots, reached) = referenced(repo)?;
    let listed = store.list(&format!("{prefix}data/"))?;
    let all: Vec<(Name, u64)> = listed.iter().filter_map(|o| pack::name_of(&o.key).map(|n| (n, o.size))).collect();
    let mut out = Pruned { snapshots, packs: all.len(), packs_referenced: reached.len(), ..Pruned::default() };

    // Phase 2: marks older than the grace period.
    let existing = marks::read_all(store, prefix)?;
    let mut already: HashSet<Name> = HashSet::new();
    let mut deleted: HashSet<Name> = HashSet::new();
    let mut done_marks = Vec::new();
    for (key, m) in &existing {
        let packs: Vec<Name> = m.packs.iter().filter_map(|p| Name::parse(p)).collect();
        if m.time + grace_secs > now {
            out.waiting += packs.iter().filter(|p| !reached.contains(p)).count();
            already.extend(packs);
            continue;
        }
        for p in packs {
            if reached.contains(&p) {
                out.unmarked += 1;
                continue;
            }
            let size = all.iter().find(|(n, _)| *n == p).map(|(_, s)| *s);
            store.delete(&pack::key(prefix, &p))?;
            if let Some(s) = size {
                out.bytes_deleted += s;
                out.deleted += 1;
            }
            deleted.insert(p);
        }
        done_marks.push(key.clone());
    }
    if !deleted.is_empty() {
        out.indexes_rewritten = rewrite_indexes(store, prefix, repo.keys.as_ref(), &deleted)?;
    }
    // Only now: a writer listing the index after this sees none of the deleted packs.
    for key in done_marks {
        store.delete(&key)?;
    }

    // Phase 1: packs nobody reaches, not marked yet.
    let fresh: Vec<String> = all
        .iter()
        .map(|(n, _)| *n)
        .filter(|n| !reached.contains(n) && !already.contains(n) && !deleted.contains(n))
        .map(|n| n.hex())
        .collect();
    if !fresh.is_empty() {
        out.marked = fresh.len();
        marks::write(store, prefix, &marks::Mark { time: now, packs: fresh })?;
    }
    Ok(out)
}

/// Index objects naming a deleted pack: a new one without it, then the old one removed.
fn rewrite_indexes(store: &dyn Store, prefix: &str, keys: Option<&Keys>, deleted: &HashSet<Name>) -> Result<usize> {
    let mut n = 0;
    for o in store.list(&format!("{prefix}index/"))? {
        let Some(bytes) = store.get(&o.key)? else { continue };
        let mut packs: Vec<(Name, Vec<Entry>)> = Vec::new();
        let mut touched = false;
        index::decode(&bytes, &store.url(&o.key), keys, &mut |l| {
            if deleted.contains(&l.pack) {
                touched = true;
                return;
            }
            match packs.last_mut() {
                Some((p, es)) if *p == l.pack => es.push(l.entry),
                _ => packs.push((l.pack, vec![l.entry])),
            }
        })?;
        if !touched {
            continue;
        }
        if !packs.is_empty() {
            store.put(&index::key(prefix, &Name::random()), &index::encode(&packs, keys)?)?;
        }
        store.delete(&o.key)?;
        n += 1;
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grace_periods() {
        assert_eq!(parse_grace("24h").unwrap(), 86_400);
        assert_eq!(parse_grace("90").unwrap(), 90);
        assert_eq!(parse_grace("2d").unwrap(), 172_800);
        assert_eq!(parse_grace("0s").unwrap(), 0);
        assert!(parse_grace("1w").is_err());
        assert!(parse_grace("h").is_err());
    }
}
