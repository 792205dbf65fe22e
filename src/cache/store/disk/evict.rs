//! Which objects the disk tier evicts when over budget: the least recently used, down to the
//! low water. The index is read a few times to find the time of last use before which the
//! oldest objects hold the bytes to free — from histograms of their bytes by time of last use,
//! each narrowing the range to look in — never sorted or copied: with millions of tiles
//! indexed, sorting them held the index (and every lookup on the request path waiting for it)
//! for about a second, and took memory in proportion to the index.

/// Histogram buckets per reading of the index.
const BUCKETS: usize = 4096;

/// The time of last use before which the objects whose `(last_used, size)` each reading of
/// `objects` gives hold at least `excess` bytes, as few of the oldest as do (all of them: one
/// past the latest). `objects` reads the index once per call (taking its lock for as long);
/// the index may change between readings, as objects are used and written.
pub(super) fn cutoff(mut objects: impl FnMut(&mut dyn FnMut(u64, u64)), excess: u64) -> u64 {
    let (mut lo, mut hi) = (u64::MAX, 0);
    objects(&mut |t, _| {
        lo = lo.min(t);
        hi = hi.max(t);
    });
    if lo > hi || excess == 0 {
        return 0;
    }
    let mut need = excess;
    loop {
        // Each bucket covers `width` times; the first holds `lo`.
        let width = (hi - lo) / BUCKETS as u64 + 1;
        let mut bytes = vec![0u64; BUCKETS];
        objects(&mut |t, size| {
            if (lo..=hi).contains(&t) {
                bytes[((t - lo) / width) as usize] += size;
            }
        });
        let mut before = 0;
        let Some(b) = bytes.iter().position(|&n| {
            let reached = before + n >= need;
            before += if reached { 0 } else { n };
            reached
        }) else {
            // Not enough in the range (objects used since left it): all of it goes.
            return hi.saturating_add(1);
        };
        let first = lo + b as u64 * width;
        if width == 1 {
            return first + 1;
        }
        need -= before;
        (lo, hi) = (first, first.saturating_add(width - 1).min(hi));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The cutoff found by sorting the objects.
    fn sorted_cutoff(objects: &[(u64, u64)], excess: u64) -> u64 {
        let mut by_age = objects.to_vec();
        by_age.sort();
        let mut freed = 0;
        for (t, size) in by_age {
            freed += size;
            if freed >= excess {
                return t + 1;
            }
        }
        objects.iter().map(|o| o.0).max().map_or(0, |t| t + 1)
    }

    #[test]
    fn the_cutoff_is_the_one_sorting_the_objects_by_last_use_gives() {
        let mut next = crate::cache::store::xorshift(0x9e37_79b9_7f4a_7c15_u64);
        for case in 0..60 {
            let n = 1 + next() % 20_000;
            // Times spread wide or packed close, distinct as the tier's clock makes them.
            let spread = [1, 3, 1000, 1 << 40][case % 4];
            let mut t = next() % 1000;
            let objects: Vec<(u64, u64)> = (0..n)
                .map(|_| {
                    t += 1 + next() % spread;
                    (t, 4096 + next() % (64 << 10))
                })
                .collect();
            let total: u64 = objects.iter().map(|o| o.1).sum();
            for excess in [1, total / 10, total / 2, total - 1, total, total + 1] {
                let read = |f: &mut dyn FnMut(u64, u64)| {
                    for &(t, size) in objects.iter().rev() {
                        f(t, size);
                    }
                };
                assert_eq!(
                    cutoff(read, excess),
                    sorted_cutoff(&objects, excess),
                    "case {case}: {n} objects, excess {excess} of {total}"
                );
            }
        }
        assert_eq!(cutoff(|_| {}, 100), 0, "nothing indexed");
    }

    /// Objects used between two readings of the index leave the range looked in: the cutoff
    /// is then later, never earlier, than the bytes asked for.
    #[test]
    fn objects_used_meanwhile_make_the_cutoff_later() {
        let mut readings = 0;
        let read = |f: &mut dyn FnMut(u64, u64)| {
            readings += 1;
            for t in 0..1000u64 {
                // From the second reading on, the oldest hundred were used again.
                let t = if readings > 1 && t < 100 { 5000 + t } else { t };
                f(t, 10);
            }
        };
        assert_eq!(cutoff(read, 500), 150);
    }
}
