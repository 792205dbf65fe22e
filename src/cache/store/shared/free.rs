//! The shared memory's free pages: extents listed by length, each joined with the free extents
//! of its kind beside it as it comes free. Without that, extents would only ever be split: a
//! cache cycling through tiles of mixed sizes would be left with free pages in pieces too
//! short for its larger tiles, which would then stay out of shared memory.

use std::collections::BTreeSet;

use super::MAX_PAGES;

/// The longest extent a body takes.
const MAX: u32 = MAX_PAGES as u32;

/// The list of free extents of `pages`: one per length up to [`MAX`], then one for all those
/// longer (free extents side by side are joined however long the whole: two of 40 pages
/// hold a body of 64).
fn bucket(pages: u32) -> usize {
    pages.min(MAX + 1) as usize - 1
}

/// The free pages, and what the pages hold, counted in pages.
#[derive(Default)]
pub(super) struct Free {
    /// The first page never handed out (or given back as the file's free end): every page from
    /// it on is free, in no list.
    fresh: u32,
    /// Free extents by length (see [`bucket`]), by first page: those whose pages are still in
    /// the file (written before, reused first: no page to fault in) ...
    kept: Vec<BTreeSet<u32>>,
    /// ... and those cut out.
    cut: Vec<BTreeSet<u32>>,
    /// Per page, for a listed extent that starts there: its length and whether its pages are
    /// kept, as `pages << 1 | kept` (0: none starts there).
    starts: Vec<u32>,
    /// Per page, for a listed extent that ends right before it: its first page + 1 (0: none).
    ends: Vec<u32>,
    /// Extents cut out so far.
    pub cuts: u64,
    /// Extents asked for that found no room ...
    pub refused: u64,
    /// ... of which those the free pages together would have held (in pieces too short).
    pub fragmented: u64,
    /// Pages of extents holding a body (or being written).
    pub used: usize,
    /// Pages of extents that could be neither kept nor cut out (never free again).
    lost: usize,
    /// Pages of free extents still in the file.
    pub idle: usize,
    /// At most this many idle pages are kept.
    idle_max: usize,
}

impl Free {
    /// The free pages of a file of `total` pages, keeping at most `idle_max` of them idle.
    pub fn new(idle_max: usize, total: u32) -> Free {
        Free {
            kept: vec![BTreeSet::new(); MAX_PAGES + 1],
            cut: vec![BTreeSet::new(); MAX_PAGES + 1],
            starts: vec![0; total as usize + 1],
            ends: vec![0; total as usize + 1],
            idle_max,
            ..Free::default()
        }
    }

    /// An extent of `pages` in a file of `total` pages: pages still in the file first (of that
    /// length, else part of a longer extent), then a cut-out extent of that length, the
    /// unused end of the file, part of a longer cut-out extent.
    pub fn take(&mut self, pages: u32, total: u32) -> Option<u32> {
        let first = if let Some(first) = self.split(true, pages) {
            self.idle -= pages as usize;
            first
        } else if let Some(&first) = self.cut[bucket(pages)].first() {
            self.unlist(first);
            first
        } else if self.fresh + pages <= total {
            self.fresh += pages;
            self.fresh - pages
        } else if let Some(first) = self.split(false, pages) {
            first
        } else {
            self.refused += 1;
            if (total as usize).saturating_sub(self.used + self.lost) >= pages as usize {
                self.fragmented += 1;
            }
            return None;
        };
        self.used += pages as usize;
        Some(first)
    }

    /// Lists the extent of a body gone that never went to a socket with its pages kept (joined
    /// with the kept extents beside it); false when that would keep more idle pages than
    /// allowed: it is to be cut out.
    pub fn keep(&mut self, first: u32, pages: u32) -> bool {
        if self.idle + pages as usize > self.idle_max {
            return false;
        }
        self.used -= pages as usize;
        self.idle += pages as usize;
        let (first, pages) = self.join(first, pages, true);
        self.list(first, pages, true);
        true
    }

    /// Lists the extent of a body gone whose pages were cut out (joined with the cut-out
    /// extents beside it); one that ends where the unused end of the file begins becomes part
    /// of it.
    pub fn cut(&mut self, first: u32, pages: u32) {
        self.used -= pages as usize;
        self.cuts += 1;
        let (first, pages) = self.join(first, pages, false);
        if first + pages == self.fresh {
            self.fresh = first;
        } else {
            self.list(first, pages, false);
        }
    }

    /// The pages of an extent whose pages could be neither kept nor cut out: no longer used,
    /// and never listed free (they may not be written over).
    pub fn lose(&mut self, pages: u32) {
        self.used -= pages as usize;
        self.lost += pages as usize;
    }

    fn lists(&self, kept: bool) -> &[BTreeSet<u32>] {
        if kept {
            &self.kept
        } else {
            &self.cut
        }
    }

    fn list(&mut self, first: u32, pages: u32, kept: bool) {
        let lists = if kept { &mut self.kept } else { &mut self.cut };
        lists[bucket(pages)].insert(first);
        self.starts[first as usize] = pages << 1 | u32::from(kept);
        self.ends[(first + pages) as usize] = first + 1;
    }

    /// The length and kind of the listed extent starting at `first`, if one does.
    fn start(&self, first: u32) -> Option<(u32, bool)> {
        let v = *self.starts.get(first as usize)?;
        (v != 0).then_some((v >> 1, v & 1 == 1))
    }

    fn unlist(&mut self, first: u32) -> Option<(u32, bool)> {
        let (pages, kept) = self.start(first)?;
        self.starts[first as usize] = 0;
        self.ends[(first + pages) as usize] = 0;
        let lists = if kept { &mut self.kept } else { &mut self.cut };
        lists[bucket(pages)].remove(&first);
        Some((pages, kept))
    }

    /// The first page of a listed extent of `want` pages (at most [`MAX`]), of a kind: the
    /// lowest of that length, else of the shortest longer one, split (the rest stays listed).
    fn split(&mut self, kept: bool, want: u32) -> Option<u32> {
        let lists = self.lists(kept);
        let at = (bucket(want)..lists.len()).find(|b| !lists[*b].is_empty())?;
        let first = *lists[at].first()?;
        let (len, _) = self.unlist(first)?;
        if len > want {
            self.list(first + want, len - want, kept);
        }
        Some(first)
    }

    /// `first..first + pages` joined with the listed extents of its kind right before and
    /// after it, however long the whole (those are taken off the lists; before, no longer
    /// than a body's longest, and bodies of 64 pages found no room in free pages side by side
    /// that were listed as two extents of 40). Kinds are not mixed: kept pages joined to an
    /// extent cut out would have to be cut out too, and cut-out ones joined to a kept extent
    /// would count as idle.
    fn join(&mut self, mut first: u32, mut pages: u32, kept: bool) -> (u32, u32) {
        let fits = |free: &Free, at: u32| free.start(at).is_some_and(|(_, k)| k == kept);
        if let Some(before) = self.ends[first as usize].checked_sub(1) {
            if fits(self, before) {
                let (n, _) = self.unlist(before).unwrap_or((0, kept));
                (first, pages) = (before, pages + n);
            }
        }
        if fits(self, first + pages) {
            pages += self.unlist(first + pages).map_or(0, |(n, _)| n);
        }
        (first, pages)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What is listed, by kind: (first, pages) in order.
    fn listed(free: &Free, kept: bool) -> Vec<(u32, u32)> {
        let mut all: Vec<(u32, u32)> = free
            .lists(kept)
            .iter()
            .flatten()
            .map(|f| (*f, free.start(*f).expect("listed").0))
            .collect();
        all.sort();
        all
    }

    #[test]
    fn extents_freed_side_by_side_are_joined_by_kind() {
        let mut free = Free::new(1000, 1000);
        let a: Vec<u32> = (0..6).map(|_| free.take(4, 1000).unwrap()).collect();
        assert_eq!(a, [0, 4, 8, 12, 16, 20]);
        // Kept between two kept ones: one extent of 12 pages.
        assert!(free.keep(a[1], 4) && free.keep(a[3], 4) && free.keep(a[2], 4));
        assert_eq!(listed(&free, true), [(4, 12)]);
        assert_eq!((free.used, free.idle), (12, 12));
        // Taking part of it leaves the rest listed.
        assert_eq!(free.take(5, 1000), Some(4));
        assert_eq!(listed(&free, true), [(9, 7)]);
        assert_eq!((free.used, free.idle), (17, 7));
        // One cut out beside a kept one stays apart from it.
        free.cut(a[0], 4);
        assert_eq!(listed(&free, false), [(0, 4)]);
        assert_eq!(listed(&free, true), [(9, 7)]);
        // The last ones handed out, cut out, give the end of the file back.
        free.cut(a[5], 4);
        free.cut(a[4], 4);
        assert_eq!(listed(&free, false), [(0, 4)]);
        assert_eq!((free.fresh, free.used, free.idle, free.cuts), (16, 5, 7, 3));
        // Cut-out extents side by side are joined.
        let mut free = Free::new(0, 1000);
        let c: Vec<u32> = (0..4).map(|_| free.take(3, 1000).unwrap()).collect();
        free.cut(c[0], 3);
        free.cut(c[2], 3);
        free.cut(c[1], 3);
        assert_eq!(listed(&free, false), [(0, 9)]);
        assert_eq!(free.take(9, 12), Some(0));
        // Joined past the longest a body takes: two extents of 40 pages hold one of 64 (and
        // what is left, one of 16).
        let total = 2 * 40 + 1;
        let mut free = Free::new(10_000, total);
        let b: Vec<u32> = (0..2).map(|_| free.take(40, total).unwrap()).collect();
        assert!(free.keep(b[0], 40) && free.keep(b[1], 40));
        assert_eq!(listed(&free, true), [(0, 80)]);
        assert_eq!(free.take(MAX, total), Some(0));
        assert_eq!(listed(&free, true), [(MAX, 80 - MAX)]);
        assert_eq!(free.take(80 - MAX, total), Some(MAX));
        assert_eq!((free.refused, free.fragmented), (0, 0));
        // Three kept, then cut out, side by side: one extent each way.
        let mut free = Free::new(10_000, 1000);
        let c: Vec<u32> = (0..4).map(|_| free.take(MAX - 1, 1000).unwrap()).collect();
        for f in &c[..3] {
            assert!(free.keep(*f, MAX - 1));
        }
        assert_eq!(listed(&free, true), [(0, 3 * (MAX - 1))]);
        let mut free = Free::new(0, 1000);
        let d: Vec<u32> = (0..4).map(|_| free.take(MAX, 1000).unwrap()).collect();
        for f in &d[..3] {
            free.cut(*f, MAX);
        }
        assert_eq!(listed(&free, false), [(0, 3 * MAX)]);
        assert_eq!(free.take(MAX, 4 * MAX), Some(0));
    }

    #[test]
    fn kept_pages_past_the_bound_are_to_be_cut_out_and_those_not_cut_out_are_lost() {
        let mut free = Free::new(6, 1000);
        let (a, b) = (free.take(4, 8).unwrap(), free.take(4, 8).unwrap());
        assert!(free.keep(a, 4));
        assert!(!free.keep(b, 4), "8 idle pages with 6 allowed");
        assert_eq!((free.used, free.idle), (4, 4));
        free.lose(4);
        assert_eq!((free.used, free.idle, free.cuts), (0, 4, 0));
        assert_eq!(free.take(4, 8), Some(a));
        assert_eq!(
            free.take(4, 8),
            None,
            "the lost extent is not handed out again"
        );
        assert_eq!(
            (free.refused, free.fragmented),
            (1, 0),
            "lost pages are not free"
        );
    }

    #[test]
    fn a_refusal_is_counted_fragmented_when_the_free_pages_together_would_hold_the_extent() {
        let mut free = Free::new(100, 12);
        let a: Vec<u32> = (0..6).map(|_| free.take(2, 12).unwrap()).collect();
        assert_eq!(free.take(2, 12), None, "full");
        assert_eq!((free.refused, free.fragmented), (1, 0));
        // Two free extents of two pages, apart: four pages free, none three long.
        assert!(free.keep(a[1], 2) && free.keep(a[3], 2));
        assert_eq!(free.take(3, 12), None);
        assert_eq!((free.refused, free.fragmented), (2, 1));
        assert_eq!(free.take(5, 12), None, "more than is free");
        assert_eq!((free.refused, free.fragmented), (3, 1));
        // Joined with the one between them: room again.
        assert!(free.keep(a[2], 2));
        assert_eq!(free.take(5, 12), Some(2));
    }
}
