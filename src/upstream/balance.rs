//! Choosing a url of a service endpoint among the available ones: round-robin by weight (EG's
//! order when weights are equal), least requests in flight per unit of weight, or consistent
//! (rendezvous) hashing on the path, which moves only the share of a url that goes away.

use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering};

use super::settings::Balance;

/// The order weighted round-robin walks: each index as often as its weight, spread out
/// (smooth weighted round-robin, as nginx does).
pub fn wheel(weights: &[u32]) -> Vec<usize> {
    let total: i64 = weights.iter().map(|w| i64::from(*w)).sum();
    if total == 0 {
        return Vec::new();
    }
    let mut current = vec![0i64; weights.len()];
    let mut order = Vec::with_capacity(total as usize);
    for _ in 0..total {
        for (c, w) in current.iter_mut().zip(weights) {
            *c += i64::from(*w);
        }
        let best = current
            .iter()
            .enumerate()
            .max_by_key(|(i, c)| (**c, std::cmp::Reverse(*i)))
            .map_or(0, |(i, _)| i);
        current[best] -= total;
        order.push(best);
    }
    order
}

fn hash64(path: &str, url: &str) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    path.hash(&mut h);
    url.hash(&mut h);
    h.finish()
}

/// What the chooser needs of each url.
pub struct Candidate<'a> {
    pub url: &'a str,
    pub weight: u32,
    pub in_flight: usize,
}

/// Picks among `candidates` (only the available ones, none excluded). `None` when there is
/// nothing to pick from.
pub fn pick(
    balance: Balance,
    wheel: &[usize],
    next: &AtomicUsize,
    candidates: &[Option<Candidate<'_>>],
    path: &str,
) -> Option<usize> {
    choose(balance, wheel, next, candidates, path, true)
}

/// Picks for a retry (the urls tried left out of `candidates`): where the rotation stands, not
/// moving it — a request's retry moving it too would start every next request on the url
/// this one failed on.
pub fn pick_again(
    balance: Balance,
    wheel: &[usize],
    next: &AtomicUsize,
    candidates: &[Option<Candidate<'_>>],
    path: &str,
) -> Option<usize> {
    choose(balance, wheel, next, candidates, path, false)
}

fn choose(
    balance: Balance,
    wheel: &[usize],
    next: &AtomicUsize,
    candidates: &[Option<Candidate<'_>>],
    path: &str,
    turn: bool,
) -> Option<usize> {
    let start = || {
        if turn {
            next.fetch_add(1, Ordering::Relaxed)
        } else {
            next.load(Ordering::Relaxed)
        }
    };
    let available = |i: usize| {
        candidates
            .get(i)
            .is_some_and(|c| c.as_ref().is_some_and(|c| c.weight > 0))
    };
    match balance {
        Balance::RoundRobin => {
            if wheel.is_empty() {
                return None;
            }
            let start = start();
            let turn = wheel[start % wheel.len()];
            if available(turn) {
                return Some(turn);
            }
            // A url's turn while it is out goes to the others by their weights, one after the
            // other at each of its turns (its next url in the wheel taking every one of them
            // carried twice its share with three urls).
            let weight = |i: usize| candidates[i].as_ref().map_or(0, |c| u64::from(c.weight));
            let total: u64 = (0..candidates.len()).map(weight).sum();
            if total == 0 {
                return None;
            }
            let mut at = (start / wheel.len()) as u64 % total;
            (0..candidates.len()).find(|&i| {
                let w = weight(i);
                if at < w {
                    return true;
                }
                at -= w;
                false
            })
        }
        Balance::LeastConnections => {
            let start = start();
            let n = candidates.len();
            (0..n)
                .map(|k| (start + k) % n)
                .filter(|i| available(*i))
                .filter_map(|i| {
                    let c = candidates[i].as_ref()?;
                    Some((i, (c.in_flight as f64 + 1.0) / f64::from(c.weight)))
                })
                .min_by(|a, b| a.1.total_cmp(&b.1))
                .map(|(i, _)| i)
        }
        Balance::ConsistentHash => candidates
            .iter()
            .enumerate()
            .filter_map(|(i, c)| c.as_ref().filter(|c| c.weight > 0).map(|c| (i, c)))
            .map(|(i, c)| {
                // Weighted rendezvous hashing: the highest -weight / ln(u) wins.
                let u = (hash64(path, c.url) >> 11) as f64 / (1u64 << 53) as f64;
                let u = u.clamp(f64::MIN_POSITIVE, 1.0 - f64::EPSILON);
                (i, -f64::from(c.weight) / u.ln())
            })
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .map(|(i, _)| i),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cands(n: usize, weights: &[u32]) -> Vec<(String, u32)> {
        (0..n)
            .map(|i| (format!("http://u{i}"), weights.get(i).copied().unwrap_or(1)))
            .collect()
    }

    fn view<'a>(
        c: &'a [(String, u32)],
        down: &[usize],
        flight: &[usize],
    ) -> Vec<Option<Candidate<'a>>> {
        c.iter()
            .enumerate()
            .map(|(i, (u, w))| {
                (!down.contains(&i)).then(|| Candidate {
                    url: u,
                    weight: *w,
                    in_flight: flight.get(i).copied().unwrap_or(0),
                })
            })
            .collect()
    }

    #[test]
    fn weighted_round_robin_skips_what_is_down() {
        assert_eq!(wheel(&[1, 1, 1]), vec![0, 1, 2]);
        let w = wheel(&[2, 1]);
        assert_eq!(w.iter().filter(|i| **i == 0).count(), 2);
        let c = cands(3, &[]);
        let next = AtomicUsize::new(0);
        let w = wheel(&[1, 1, 1]);
        let picks: Vec<_> = (0..6)
            .map(|_| pick(Balance::RoundRobin, &w, &next, &view(&c, &[1], &[]), "/"))
            .collect();
        assert!(
            picks.iter().all(|p| matches!(p, Some(0) | Some(2))),
            "{picks:?}"
        );
        // The turns of the url that is out are spread over the others by weight: three
        // urls of weights 1, 1, 2 with the first out share its quarter as 1:2.
        let c = cands(3, &[1, 1, 2]);
        let w = wheel(&[1, 1, 2]);
        let next = AtomicUsize::new(0);
        let mut count = [0; 3];
        for _ in 0..1200 {
            let p = pick(Balance::RoundRobin, &w, &next, &view(&c, &[0], &[]), "/");
            count[p.expect("a url")] += 1;
        }
        assert_eq!(count, [0, 400, 800]);
        assert_eq!(
            pick(
                Balance::RoundRobin,
                &w,
                &next,
                &view(&c, &[0, 1, 2], &[]),
                "/"
            ),
            None
        );
    }

    /// Two urls, the first failing every time: each request starts on the url after the
    /// last request's first, so the failing one gets every other first attempt, not all.
    #[test]
    fn a_retry_does_not_turn_the_rotation() {
        let c = cands(2, &[]);
        let next = AtomicUsize::new(0);
        let w = wheel(&[1, 1]);
        let mut firsts = Vec::new();
        for _ in 0..6 {
            let first = pick(Balance::RoundRobin, &w, &next, &view(&c, &[], &[]), "/");
            firsts.push(first);
            if first == Some(0) {
                let again = pick_again(Balance::RoundRobin, &w, &next, &view(&c, &[0], &[]), "/");
                assert_eq!(again, Some(1));
            }
        }
        assert_eq!(
            firsts,
            [Some(0), Some(1), Some(0), Some(1), Some(0), Some(1)]
        );
    }

    #[test]
    fn least_connections() {
        let c = cands(3, &[1, 1, 2]);
        let next = AtomicUsize::new(0);
        assert_eq!(
            pick(
                Balance::LeastConnections,
                &[],
                &next,
                &view(&c, &[], &[5, 1, 3]),
                "/"
            ),
            Some(1)
        );
        assert_eq!(
            pick(
                Balance::LeastConnections,
                &[],
                &next,
                &view(&c, &[], &[5, 3, 3]),
                "/"
            ),
            Some(2),
            "weight counts"
        );
    }

    #[test]
    fn consistent_hashing_moves_only_the_lost_share() {
        let c = cands(4, &[]);
        let next = AtomicUsize::new(0);
        let paths: Vec<String> = (0..400).map(|i| format!("/tiles/{i}.png")).collect();
        let before: Vec<_> = paths
            .iter()
            .map(|p| pick(Balance::ConsistentHash, &[], &next, &view(&c, &[], &[]), p))
            .collect();
        let again: Vec<_> = paths
            .iter()
            .map(|p| pick(Balance::ConsistentHash, &[], &next, &view(&c, &[], &[]), p))
            .collect();
        assert_eq!(before, again, "the same path goes to the same url");
        for i in 0..4 {
            let share = before.iter().filter(|p| **p == Some(i)).count();
            assert!((50..=150).contains(&share), "url {i} has {share} of 400");
        }
        let after: Vec<_> = paths
            .iter()
            .map(|p| pick(Balance::ConsistentHash, &[], &next, &view(&c, &[2], &[]), p))
            .collect();
        for (b, a) in before.iter().zip(&after) {
            if *b != Some(2) {
                assert_eq!(b, a, "only url 2's paths move");
            } else {
                assert_ne!(*a, Some(2));
            }
        }
    }
}
