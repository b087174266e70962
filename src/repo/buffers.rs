//! Large buffers kept for reuse between the stages of a pipeline: chunks cut by a snapshot's
//! walk and given back by its compressors, chunks decoded by a restore and given back by its
//! writer. A new large buffer faults in every page it is written to (large allocations come
//! from the kernel and go back to it: `sys::large_allocations_from_the_kernel`); one kept costs
//! nothing more.
//!
//! It keeps only buffers of a file chunk's least size and more (`MIN`; smaller ones are small
//! files', which malloc recycles itself), and never more than its budget of bytes.

use std::sync::Mutex;

/// The least buffer kept: a file chunk's least size (`chunker::Params::FILES`).
const MIN: usize = 256 << 10;

/// Spare buffers, and the bytes of capacity they hold.
pub struct Buffers {
    held: Mutex<(Vec<Vec<u8>>, usize)>,
    budget: usize,
}

impl Buffers {
    /// A pool that keeps at most `budget` bytes of buffers.
    pub fn new(budget: usize) -> Buffers {
        Buffers { held: Mutex::new((Vec::new(), 0)), budget }
    }

    /// An empty buffer with room for `need` bytes: the smallest kept one that has it, else the
    /// largest kept one grown to exactly that (a large buffer grows in place, remapped: the
    /// pages it has stay, only the new ones fault in), else a new one of exactly that
    /// (rounding up made every buffer in flight resident at up to twice its chunk: 6 MiB more
    /// at a snapshot's peak).
    pub fn take(&self, need: usize) -> Vec<u8> {
        if need < MIN {
            return Vec::with_capacity(need);
        }
        let mut g = self.held.lock().unwrap_or_else(|p| p.into_inner());
        let fits = g.0.iter().enumerate().filter(|(_, b)| b.capacity() >= need).min_by_key(|(_, b)| b.capacity());
        let Some((i, _)) = fits.or_else(|| g.0.iter().enumerate().max_by_key(|(_, b)| b.capacity())) else {
            return Vec::with_capacity(need);
        };
        let mut b = g.0.swap_remove(i);
        g.1 -= b.capacity();
        b.clear();
        b.reserve_exact(need);
        b
    }

    /// A buffer done with: kept, in place of smaller ones when the budget is spent.
    pub fn give(&self, buf: Vec<u8>) {
        let cap = buf.capacity();
        if cap < MIN || cap > self.budget {
            return;
        }
        let mut g = self.held.lock().unwrap_or_else(|p| p.into_inner());
        while g.1 + cap > self.budget {
            let Some((i, _)) = g.0.iter().enumerate().min_by_key(|(_, b)| b.capacity()) else { return };
            if g.0[i].capacity() >= cap {
                return;
            }
            let b = g.0.swap_remove(i);
            g.1 -= b.capacity();
        }
        g.1 += cap;
        g.0.push(buf);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_reused_by_size_within_the_budget() {
        let pool = Buffers::new(6 << 20);
        // Small ones are malloc's: never kept.
        pool.give(Vec::with_capacity(1000));
        assert_eq!(pool.take(1000).capacity(), 1000);
        // A new large one is of the size asked, and comes back for a smaller need.
        let b = pool.take(2 << 20);
        assert_eq!(b.capacity(), 2 << 20);
        let at = b.as_ptr();
        pool.give(b);
        let again = pool.take(1_200_000);
        assert_eq!((again.as_ptr(), again.len()), (at, 0));
        // None fits: the largest kept one grows to the need.
        pool.give(again);
        let grown = pool.take(3 << 20);
        assert_eq!((grown.capacity(), grown.len(), pool.held.lock().unwrap().1), (3 << 20, 0, 0));
        // Over the budget, a larger one replaces smaller ones; a smaller one is dropped.
        pool.give(Vec::with_capacity(2 << 20));
        pool.give(Vec::with_capacity(4 << 20));
        let held = pool.held.lock().unwrap();
        let mut caps: Vec<usize> = held.0.iter().map(|b| b.capacity()).collect();
        caps.sort();
        assert_eq!((caps, held.1), (vec![2 << 20, 4 << 20], 6 << 20));
        drop(held);
        pool.give(Vec::with_capacity(1 << 20));
        assert_eq!(pool.held.lock().unwrap().1, 6 << 20);
    }
}
