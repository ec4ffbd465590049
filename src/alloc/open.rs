//! Open buckets and write points (bcache `bch_alloc_sectors` / `pick_data_bucket`).
//!
//! Model: an open bucket is a data bucket being filled sequentially. Each remembers where its
//! last allocation ended (`last_end`, a file position) and which write point (a PID) used it
//! last. A new allocation for key position K from write point W goes to, in order:
//! 1. the open bucket whose last write ends exactly at K (a sequential stream continues);
//! 2. else the one most recently used by W (data that dies together lives together);
//! 3. else a new open bucket, while fewer than the maximum are open;
//! 4. else the least recently used open bucket.
//!
//! Probation (issue 12): open buckets of streaming fills (`probation`) and of normal fills are
//! two classes that never share a bucket; every step above looks only at the caller's class, so
//! a stream's data never lands in a normal bucket (where a later hit on its neighbours would
//! keep it) and normal data never lands in a bucket that starts out first in line for eviction.
//! When the list is at its maximum and the caller's class has no open bucket, step 3 still
//! opens one, so the list may hold one bucket over the maximum.
//!
//! Invariants: an open bucket holds one pin on its bucket, so it is never invalidated; every
//! allocation handed out holds another pin until the caller inserts (or abandons) its key; a
//! bucket is closed (its open pin dropped) as soon as it is full. Everything here runs under the
//! allocator state mutex and never blocks.

use super::KeyPos;

/// Most open buckets (bcache `MAX_OPEN_BUCKETS`).
pub const MAX_OPEN_BUCKETS: usize = 128;

/// One partly filled data bucket.
#[derive(Debug, Clone)]
pub struct OpenBucket {
    pub bucket: u32,
    pub gen: u8,
    /// Next free sector in the bucket.
    pub next: u32,
    pub sectors_free: u32,
    /// Where the last allocation from this bucket ended.
    pub last_end: Option<KeyPos>,
    pub write_point: u64,
    /// Logical clock of the last use, for LRU.
    pub last_used: u64,
    /// Opened for streaming fills (probation class).
    pub probation: bool,
}

/// The set of open buckets.
#[derive(Debug)]
pub struct OpenBuckets {
    list: Vec<OpenBucket>,
    max: usize,
    clock: u64,
}

/// Which open bucket an allocation should use.
pub enum Pick {
    /// Index into the list.
    Existing(usize),
    /// Open a new bucket.
    New,
}

impl OpenBuckets {
    pub fn new(max: usize) -> Self {
        OpenBuckets {
            list: Vec::with_capacity(max),
            max,
            clock: 0,
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = &OpenBucket> {
        self.list.iter()
    }

    pub fn len(&self) -> usize {
        self.list.len()
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    pub fn max(&self) -> usize {
        self.max
    }

    /// bcache `pick_data_bucket`, with step 3 added (see the module header).
    /// Only open buckets of the caller's class (`probation`) are candidates.
    pub fn pick(&self, key: KeyPos, write_point: u64, probation: bool) -> Pick {
        let class = |i: &usize| self.list[*i].probation == probation;
        if let Some(i) = (0..self.list.len())
            .filter(class)
            .find(|&i| self.list[i].last_end == Some(key))
        {
            return Pick::Existing(i);
        }
        let by_wp = (0..self.list.len())
            .filter(class)
            .filter(|&i| self.list[i].write_point == write_point)
            .max_by_key(|&i| self.list[i].last_used);
        if let Some(i) = by_wp {
            return Pick::Existing(i);
        }
        if self.list.len() < self.max {
            return Pick::New;
        }
        match (0..self.list.len())
            .filter(class)
            .min_by_key(|&i| self.list[i].last_used)
        {
            Some(i) => Pick::Existing(i),
            None => Pick::New,
        }
    }

    /// Add a freshly allocated bucket; returns its index.
    pub fn push(
        &mut self,
        bucket: u32,
        gen: u8,
        sectors: u32,
        write_point: u64,
        probation: bool,
    ) -> usize {
        self.list.push(OpenBucket {
            bucket,
            gen,
            next: 0,
            sectors_free: sectors,
            last_end: None,
            write_point,
            last_used: 0,
            probation,
        });
        self.list.len() - 1
    }

    /// Take up to `sectors` from open bucket `i`. Returns (bucket, gen, offset, granted, full).
    pub fn take(
        &mut self,
        i: usize,
        key: KeyPos,
        sectors: u32,
        write_point: u64,
    ) -> (u32, u8, u32, u32, bool) {
        self.clock += 1;
        let o = &mut self.list[i];
        let granted = sectors.min(o.sectors_free);
        let off = o.next;
        o.next += granted;
        o.sectors_free -= granted;
        o.last_end = Some(KeyPos {
            file: key.file,
            offset: key.offset + u64::from(granted),
        });
        o.write_point = write_point;
        o.last_used = self.clock;
        let r = (o.bucket, o.gen, off, granted, o.sectors_free == 0);
        if o.sectors_free == 0 {
            self.list.swap_remove(i);
        }
        r
    }

    /// Remove every open bucket (on close); returns their buckets.
    pub fn drain(&mut self) -> Vec<u32> {
        self.list.drain(..).map(|o| o.bucket).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(file: u64, offset: u64) -> KeyPos {
        KeyPos { file, offset }
    }

    #[test]
    fn probation_and_normal_fills_never_share_an_open_bucket() {
        let mut ob = OpenBuckets::new(2);
        // a normal fill of write point 7 opens bucket 10 and ends at (1, 8)
        assert!(matches!(ob.pick(at(1, 0), 7, false), Pick::New));
        let i = ob.push(10, 0, 64, 7, false);
        ob.take(i, at(1, 0), 8, 7);
        // the same process streaming on: even a key that continues bucket 10 exactly, from
        // the same write point, opens a probation bucket of its own
        assert!(matches!(ob.pick(at(1, 8), 7, true), Pick::New));
        let j = ob.push(11, 0, 64, 7, true);
        ob.take(j, at(1, 8), 8, 7);
        // and normal data never lands in the probation bucket, even at its exact end
        match ob.pick(at(1, 16), 7, false) {
            Pick::Existing(k) => assert_eq!(ob.list[k].bucket, 10),
            Pick::New => panic!("bucket 10 is open for normal fills"),
        }
        match ob.pick(at(1, 16), 7, true) {
            Pick::Existing(k) => assert_eq!(ob.list[k].bucket, 11),
            Pick::New => panic!("bucket 11 is open for probation fills"),
        }
        // at the maximum, another process's probation fill takes the LRU probation bucket,
        // never a normal one
        match ob.pick(at(2, 0), 9, true) {
            Pick::Existing(k) => assert_eq!(ob.list[k].bucket, 11),
            Pick::New => panic!("at the maximum"),
        }
    }
}
