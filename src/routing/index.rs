//! An index over the routes so that finding one does not grow with the number of endpoints.
//!
//! Every path matcher has a literal start a matching path must begin with (ASCII
//! case-insensitively): the whole path of a literal pattern, the text before the first `:` or
//! `*` of an Express pattern, nothing for `*` and for `pathRegex`. The routes are kept in byte
//! tries on those starts, one per exact host name (`host: tiles.example.com`) and one for every
//! other host group (`*`, globs with a `*` label, `hostRegex`). A lookup walks the request's
//! path down the trie of its host and the general trie, collects the route lists of the nodes it
//! passes (each sorted by route number), and merges them in route order: the candidates are a
//! superset of the matching routes, in EG's order, and each is still checked in full by the
//! caller. Nothing is allocated per request.

use std::collections::HashMap;

/// Node lists a lookup can merge without allocating; a path passing more nodes that hold routes
/// than this (a config with deeply nested overlapping prefixes) is answered by a plain scan.
const MAX_LISTS: usize = 16;
/// Longest Host name looked up in the exact-host map (DNS names are at most 253 bytes).
const MAX_HOST: usize = 255;

#[derive(Debug, Default, Clone)]
struct Node {
    /// The bytes (lower-cased) from the parent to this node: one while building, a run of them
    /// once `compact` has merged the nodes that hold no route and have one child.
    label: Vec<u8>,
    /// Children by the first byte of their label, sorted.
    children: Vec<(u8, u32)>,
    /// Routes whose literal start ends here, ascending.
    routes: Vec<u32>,
}

#[derive(Debug)]
struct Trie {
    nodes: Vec<Node>,
}

impl Trie {
    fn new() -> Trie {
        Trie {
            nodes: vec![Node::default()],
        }
    }

    fn insert(&mut self, prefix: &[u8], route: u32) {
        let mut at = 0usize;
        for &b in prefix {
            let b = b.to_ascii_lowercase();
            let next = match self.nodes[at].children.binary_search_by_key(&b, |c| c.0) {
                Ok(i) => self.nodes[at].children[i].1 as usize,
                Err(i) => {
                    let id = self.nodes.len();
                    self.nodes.push(Node {
                        label: vec![b],
                        ..Node::default()
                    });
                    self.nodes[at].children.insert(i, (b, id as u32));
                    id
                }
            };
            at = next;
        }
        self.nodes[at].routes.push(route);
    }

    /// Merges every node without routes into its only child, so a lookup compares runs of
    /// bytes instead of stepping node by node.
    fn compact(self) -> Trie {
        fn copy(old: &[Node], mut at: usize, out: &mut Vec<Node>) -> u32 {
            let mut label = old[at].label.clone();
            while old[at].routes.is_empty() && old[at].children.len() == 1 {
                at = old[at].children[0].1 as usize;
                label.extend_from_slice(&old[at].label);
            }
            let id = out.len();
            out.push(Node {
                label,
                children: Vec::with_capacity(old[at].children.len()),
                routes: old[at].routes.clone(),
            });
            for &(b, child) in &old[at].children {
                let c = copy(old, child as usize, out);
                out[id].children.push((b, c));
            }
            id as u32
        }
        let mut nodes = Vec::with_capacity(self.nodes.len());
        copy(&self.nodes, 0, &mut nodes);
        Trie { nodes }
    }

    /// Pushes the route lists of the nodes `path` passes through; false when they do not fit.
    fn collect<'a>(&'a self, path: &[u8], lists: &mut Lists<'a>) -> bool {
        let mut at = 0usize;
        let mut rest = path;
        loop {
            let node = &self.nodes[at];
            let n = node.label.len();
            if rest.len() < n || !rest[..n].eq_ignore_ascii_case(&node.label) {
                return true;
            }
            rest = &rest[n..];
            if !node.routes.is_empty() && !lists.push(&node.routes) {
                return false;
            }
            let Some(&b) = rest.first() else { return true };
            let b = b.to_ascii_lowercase();
            match node.children.binary_search_by_key(&b, |c| c.0) {
                Ok(c) => at = node.children[c].1 as usize,
                Err(_) => return true,
            }
        }
    }
}

/// Sorted route lists being merged, on the stack.
struct Lists<'a> {
    lists: [&'a [u32]; MAX_LISTS],
    len: usize,
}

impl<'a> Lists<'a> {
    fn push(&mut self, list: &'a [u32]) -> bool {
        if self.len == MAX_LISTS {
            return false;
        }
        self.lists[self.len] = list;
        self.len += 1;
        true
    }
}

/// The candidates for one request, in route order.
pub struct Candidates<'a> {
    lists: Lists<'a>,
}

impl Iterator for Candidates<'_> {
    type Item = usize;

    fn next(&mut self) -> Option<usize> {
        let lists = &mut self.lists.lists[..self.lists.len];
        let (best, _) = lists
            .iter()
            .enumerate()
            .filter_map(|(i, l)| l.first().map(|r| (i, *r)))
            .min_by_key(|(_, r)| *r)?;
        let route = lists[best][0];
        lists[best] = &lists[best][1..];
        Some(route as usize)
    }
}

#[derive(Debug)]
pub struct RouteIndex {
    /// Routes of host groups named by one exact host, by that host lower-cased.
    exact: HashMap<Box<[u8]>, Trie>,
    /// Routes of every other host group.
    general: Trie,
}

/// What the index needs to know of a route.
pub struct Entry<'a> {
    /// The host group's exact name, lower-cased, when it has one.
    pub exact_host: Option<String>,
    /// The literal start every matching path has.
    pub prefix: &'a str,
}

impl RouteIndex {
    pub fn build<'a>(entries: impl IntoIterator<Item = Entry<'a>>) -> RouteIndex {
        let mut index = RouteIndex {
            exact: HashMap::new(),
            general: Trie::new(),
        };
        for (i, entry) in entries.into_iter().enumerate() {
            let trie = match entry.exact_host {
                Some(host) => index
                    .exact
                    .entry(host.into_bytes().into_boxed_slice())
                    .or_insert_with(Trie::new),
                None => &mut index.general,
            };
            trie.insert(entry.prefix.as_bytes(), i as u32);
        }
        index.general = index.general.compact();
        index.exact = index
            .exact
            .into_iter()
            .map(|(host, trie)| (host, trie.compact()))
            .collect();
        index
    }

    /// The routes that may match, from `from` on, in order; `None` when the index cannot answer
    /// without allocating (the caller then scans every route).
    #[inline]
    pub fn candidates<'a>(
        &'a self,
        from: usize,
        host: Option<&str>,
        path: &str,
    ) -> Option<Candidates<'a>> {
        let mut lists = Lists {
            lists: [&[]; MAX_LISTS],
            len: 0,
        };
        if !self.general.collect(path.as_bytes(), &mut lists) {
            return None;
        }
        if let Some(host) = host.filter(|_| !self.exact.is_empty()) {
            let name = crate::pipeline::context::strip_port(host).as_bytes();
            if name.len() > MAX_HOST {
                return None;
            }
            let mut buf = [0u8; MAX_HOST];
            let lower = &mut buf[..name.len()];
            lower.copy_from_slice(name);
            lower.make_ascii_lowercase();
            if let Some(trie) = self.exact.get(&*lower) {
                if !trie.collect(path.as_bytes(), &mut lists) {
                    return None;
                }
            }
        }
        let from = from as u32;
        for list in &mut lists.lists[..lists.len] {
            *list = &list[list.partition_point(|r| *r < from)..];
        }
        Some(Candidates { lists })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index(entries: &[(Option<&str>, &str)]) -> RouteIndex {
        RouteIndex::build(entries.iter().map(|(h, p)| Entry {
            exact_host: h.map(str::to_string),
            prefix: p,
        }))
    }

    fn all(ix: &RouteIndex, from: usize, host: Option<&str>, path: &str) -> Vec<usize> {
        ix.candidates(from, host, path).expect("fits").collect()
    }

    #[test]
    fn candidates_are_the_routes_whose_start_the_path_has_in_order() {
        let ix = index(&[
            (None, "/wmts"),
            (None, ""),
            (Some("a.example"), "/wmts/1"),
            (None, "/w"),
            (Some("b.example"), "/wmts"),
            (None, "/wmts"),
        ]);
        assert_eq!(all(&ix, 0, None, "/WMTS/1/2"), vec![0, 1, 3, 5]);
        assert_eq!(
            all(&ix, 0, Some("A.Example:8080"), "/wmts/1/2"),
            vec![0, 1, 2, 3, 5]
        );
        assert_eq!(all(&ix, 2, Some("a.example"), "/wmts/1/2"), vec![2, 3, 5]);
        assert_eq!(all(&ix, 0, Some("b.example"), "/other"), vec![1]);
        assert_eq!(all(&ix, 6, None, "/wmts"), Vec::<usize>::new());
    }

    #[test]
    fn too_many_nested_starts_fall_back_to_a_scan() {
        let prefixes: Vec<String> = (0..=MAX_LISTS).map(|n| "/a".repeat(n)).collect();
        let ix = index(
            &prefixes
                .iter()
                .map(|p| (None, p.as_str()))
                .collect::<Vec<_>>(),
        );
        assert!(ix.candidates(0, None, &"/a".repeat(MAX_LISTS)).is_none());
        assert!(ix.candidates(0, None, "/a/a").is_some());
        assert!(ix.candidates(0, Some(&"h".repeat(300)), "/").is_some());
    }
}
