//! Purges of many tiles at once: everything cached for an api endpoint, or for the URLs under
//! a path prefix (a layer, a style, a zoom level). Each starts a new generation of what it
//! names, and the generation is part of the keys of its tiles: what was stored before is never
//! found again (not served, not revalidated), and goes as the tiers' budgets push it out.
//!
//! With a disk tier, each kind of purge is recorded beside it (`generations.json`,
//! `prefixes.json`), written whole and synced: a restart keeps purged tiles purged.

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;

/// How many path prefixes may be under a purge at once: each is remembered for good (its
/// tiles' keys hold its generation), and a request's path is looked up at each of their
/// lengths.
pub const MAX_PREFIXES: usize = 1024;
/// How long a purged prefix may be, in bytes.
pub const MAX_PREFIX_LEN: usize = 512;

/// The generations of one kind of purge (api endpoints, or path prefixes).
pub struct Generations {
    table: ArcSwap<Table>,
    /// Whether the table has any: a request under no purge looks no further.
    any: AtomicBool,
    /// The record beside the disk tier.
    file: Option<PathBuf>,
    /// Whether the names are path prefixes (compared in their [`canonical`] form; one purged
    /// takes the place of those it holds).
    paths: bool,
    /// One purge at a time: two at once would each start from the same table and the later
    /// would undo the earlier's.
    one_at_a_time: Mutex<()>,
    /// The record's modification time and length when [`Self::follow_record`] last looked.
    record_seen: Mutex<Option<(std::time::SystemTime, u64)>>,
}

#[derive(Default)]
struct Table {
    by_name: HashMap<String, u64>,
    /// The names' distinct lengths, shortest first (for prefixes: where a path is cut to look
    /// them up).
    lengths: Vec<usize>,
}

impl Table {
    fn new(by_name: HashMap<String, u64>) -> Table {
        let mut lengths: Vec<usize> = by_name.keys().map(String::len).collect();
        lengths.sort_unstable();
        lengths.dedup();
        Table { by_name, lengths }
    }
}

/// What a purge did.
#[derive(Debug, PartialEq, Eq)]
pub enum Advanced {
    /// A new generation, recorded.
    Recorded(u64),
    /// A new generation, in effect until a restart only: its record could not be written (a
    /// restart would bring the tiles back).
    Unrecorded(u64, String),
    /// None: as many prefixes as may be are under a purge already.
    Full,
}

/// The names of a record as a table holds them: for prefixes, each in its [`canonical`] form
/// (the latest generation of those that become one: a record written by hand, or before a
/// change of the form), and a name that is no prefix left out, with a warning.
fn admitted(by_name: HashMap<String, u64>, paths: bool) -> HashMap<String, u64> {
    if !paths {
        return by_name;
    }
    let mut all = HashMap::new();
    for (name, g) in by_name {
        if let Some(e) = prefix_error(&name) {
            log::warn!("tile cache: {name:?} in the purge record is left out: {e}");
            continue;
        }
        let mine: &mut u64 = all.entry(canonical(&name).into_owned()).or_default();
        *mine = (*mine).max(g);
    }
    all
}

/// The generations a record `file` holds (none when there is no record yet, unless one is
/// `expected`: the directory holds tiles, and its record was removed).
fn read(file: &PathBuf, expected: bool) -> Result<HashMap<String, u64>, String> {
    match std::fs::read(file) {
        Ok(b) => serde_json::from_slice(&b).map_err(|e| e.to_string()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !expected => Ok(HashMap::new()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err("missing".into()),
        Err(e) => Err(e.to_string()),
    }
}

impl Generations {
    /// The generations recorded in `file` (none without a disk tier). A record that cannot be
    /// read, or is `expected` (the disk tier holds tiles) and missing, says nothing of the
    /// purges its tiles went through: `damaged` is then true, and the caller empties the disk
    /// tier before [`Self::record_afresh`]. (A missing one was read as no purge at all: the
    /// tiles purged before came back.)
    pub fn open(file: Option<PathBuf>, paths: bool, expected: bool) -> (Generations, bool) {
        let mut damaged = false;
        let by_name = match file.as_ref().map(|f| (f, read(f, expected))) {
            None => HashMap::new(),
            Some((f, parsed)) => parsed.unwrap_or_else(|e| {
                log::warn!(
                    "tile cache: the purge record {} is damaged ({e}): the disk tier's tiles are removed",
                    f.display()
                );
                damaged = true;
                HashMap::new()
            }),
        };
        let by_name = admitted(by_name, paths);
        let generations = Generations {
            any: AtomicBool::new(!by_name.is_empty()),
            paths,
            table: ArcSwap::from_pointee(Table::new(by_name)),
            file,
            one_at_a_time: Mutex::new(()),
            record_seen: Mutex::new(None),
        };
        (generations, damaged)
    }

    /// Writes an empty record where there is none (a new directory's first start), so that a
    /// later start that finds none knows it was removed.
    pub fn record_if_missing(&self) {
        if self.file.as_ref().is_some_and(|f| {
            matches!(std::fs::symlink_metadata(f), Err(e) if e.kind() == std::io::ErrorKind::NotFound)
        }) {
            self.record_afresh();
        }
    }

    /// Writes an empty record in place of a damaged one: the next start finds a record again
    /// (and keeps the tiles stored from now on).
    pub fn record_afresh(&self) {
        if let Some(f) = &self.file {
            if let Err(e) = super::records::write_whole(f, b"{}") {
                log::warn!("tile cache: cannot rewrite {}: {e}", f.display());
            }
        }
    }

    /// Writes the table as the record again, where the record is gone (the directory was
    /// removed while running, see [`super::store::disk::DiskTier::made_again`]): the tiles
    /// written from now on carry the generations, and the next start must know them.
    pub fn record_again(&self) {
        let Some(f) = &self.file else { return };
        let _one = self.one_at_a_time.lock().unwrap_or_else(|p| p.into_inner());
        if f.exists() {
            return;
        }
        let table = serde_json::to_vec(&self.table.load().by_name).unwrap_or_default();
        if let Err(e) = super::records::write_whole(f, &table) {
            log::warn!("tile cache: cannot write {} again: {e}", f.display());
        }
    }

    /// Takes in the purges the record holds that the table has not: those the process before
    /// a graceful upgrade made after this one had read the record (its keep-alive Admin API
    /// connections are served until it leaves); else this process went on serving the tiles
    /// they purged until its own next purge of the kind, or its restart. Looked at every
    /// second (see [`super::records::keep_records`]), read when it changed.
    pub fn follow_record(&self) {
        let Some(f) = &self.file else {
            return;
        };
        let stamp = std::fs::metadata(f)
            .ok()
            .and_then(|m| Some((m.modified().ok()?, m.len())));
        {
            let mut seen = self.record_seen.lock().unwrap_or_else(|p| p.into_inner());
            if stamp.is_none() || *seen == stamp {
                return;
            }
            *seen = stamp;
        }
        let _one = self.one_at_a_time.lock().unwrap_or_else(|p| p.into_inner());
        let Ok(recorded) = read(f, false) else {
            return;
        };
        let mut next = self.table.load().by_name.clone();
        let mut taken = 0;
        for (name, g) in admitted(recorded, self.paths) {
            let mine = next.entry(name).or_insert(0);
            if g > *mine {
                *mine = g;
                taken += 1;
            }
        }
        if taken > 0 {
            self.table.store(Arc::new(Table::new(next)));
            self.any.store(true, Ordering::Release);
            log::info!(
                "tile cache: {taken} purge(s) recorded in {} by another process taken in",
                f.display()
            );
        }
    }

    /// The generation of `name` (0: never purged).
    pub fn of(&self, name: &str) -> u64 {
        if !self.any.load(Ordering::Acquire) {
            return 0;
        }
        self.table.load().by_name.get(name).copied().unwrap_or(0)
    }

    /// Every name's generation.
    pub fn all(&self) -> HashMap<String, u64> {
        self.table.load().by_name.clone()
    }

    /// Appends the key line (`\n^<generation>`) of the purged prefixes `path` begins with in
    /// its [`canonical`] form, if any: the latest of their generations, which a purge of any of
    /// them changes, each being past every one taken before (prefixes end with `/`: a path is
    /// looked up where it has one).
    pub fn prefixes_of(&self, path: &str, out: &mut String) {
        if !self.any.load(Ordering::Acquire) {
            return;
        }
        let table = self.table.load();
        let path = canonical(path);
        let mut latest = 0;
        for &len in &table.lengths {
            if len > path.len() {
                break;
            }
            if len == 0 || path.as_bytes()[len - 1] != b'/' {
                continue;
            }
            // (A `/` ends a character: `len` is a boundary.)
            if let Some(&g) = table.by_name.get(&path[..len]) {
                latest = latest.max(g);
            }
        }
        if latest > 0 {
            out.push_str("\n^");
            out.push_str(itoa::Buffer::new().format(latest));
        }
    }

    /// Starts a new generation of `name`: everything cached under it is gone. A new name is
    /// refused once `most` are recorded.
    pub fn advance(&self, name: &str, most: usize) -> Advanced {
        let _one = self.one_at_a_time.lock().unwrap_or_else(|p| p.into_inner());
        let mut next = self.table.load().by_name.clone();
        // What the record holds beside: a purge the process before an upgrade made as this
        // one started.
        if let Some(Ok(recorded)) = self.file.as_ref().map(|f| read(f, false)) {
            for (name, g) in admitted(recorded, self.paths) {
                let mine = next.entry(name).or_insert(0);
                *mine = (*mine).max(g);
            }
        }
        // Never a generation taken before: one taken by a purge whose record could not be
        // written is lost at a restart, and taking it again would bring its tiles back. The
        // clock's microseconds are past any taken before (the count, if the clock went back).
        // A prefix's is past every prefix's (those it is about to take the place of too): a
        // path's key holds the latest generation of the prefixes it begins with (see
        // [`Self::prefixes_of`]), which a purge of any of them must change.
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
        let past = match self.paths {
            true => next.values().copied().max(),
            false => next.get(name).copied(),
        };
        // A prefix takes the place of those it holds: their tiles' keys hold its generation
        // too, so every one of them is purged with it.
        if self.paths {
            next.retain(|held, _| !(held.len() > name.len() && held.starts_with(name)));
        }
        if !next.contains_key(name) && next.len() >= most {
            return Advanced::Full;
        }
        let generation = past.unwrap_or(0).saturating_add(1).max(now);
        next.insert(name.to_string(), generation);
        let recorded = match &self.file {
            Some(f) => {
                super::records::write_whole(f, &serde_json::to_vec(&next).unwrap_or_default())
                    .map_err(|e| format!("cannot record the purge in {}: {e}", f.display()))
            }
            None => Ok(()),
        };
        // In effect now either way: the purged tiles are not served again by this process.
        self.table.store(Arc::new(Table::new(next)));
        self.any.store(true, Ordering::Release);
        match recorded {
            Ok(()) => Advanced::Recorded(generation),
            Err(e) => {
                log::warn!("tile cache: {e}: a restart would bring the purged tiles back");
                Advanced::Unrecorded(generation, e)
            }
        }
    }
}

/// A path as prefixes are compared with it: ASCII letters in lowercase, the `%XX` escapes of
/// unreserved characters decoded (`%72` is `r`), repeated `/` made one, `.` and `..` segments
/// resolved. The spellings of one path that routing and the proxy step take as one (routing
/// compares paths without case, the proxy step joins an upstream path's `//`) have one form:
/// a purged prefix covers them all (a few tiles more than it names at worst, never fewer).
pub fn canonical(path: &str) -> Cow<'_, str> {
    let b = path.as_bytes();
    let plain = !b.iter().any(|c| c.is_ascii_uppercase() || *c == b'%')
        && memchr::memmem::find(b, b"//").is_none()
        && memchr::memmem::find(b, b"/.").is_none();
    if plain {
        return Cow::Borrowed(path);
    }
    // Escapes decoded, letters lowered.
    let mut flat = Vec::with_capacity(b.len());
    let mut i = 0;
    let hex = |at: usize| b.get(at).and_then(|c| (*c as char).to_digit(16));
    while i < b.len() {
        match (b[i], hex(i + 1), hex(i + 2)) {
            // An escape: an unreserved character's is decoded, any other's kept (lowercase).
            (b'%', Some(h), Some(l)) => {
                let c = (h * 16 + l) as u8;
                if c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~') {
                    flat.push(c.to_ascii_lowercase());
                } else {
                    flat.extend(b[i..i + 3].iter().map(u8::to_ascii_lowercase));
                }
                i += 3;
            }
            // A `%` that begins no escape is written as one, so that the form is its own form
            // (`%%37%32` would be `%72` once, `r` the next time).
            (b'%', ..) => {
                flat.extend_from_slice(b"%25");
                i += 1;
            }
            (c, ..) => {
                flat.push(c.to_ascii_lowercase());
                i += 1;
            }
        }
    }
    // Segments: empty ones and `.` dropped, `..` takes the one before away.
    let mut kept: Vec<&[u8]> = Vec::new();
    let segments: Vec<&[u8]> = flat.split(|c| *c == b'/').collect();
    for seg in &segments {
        match *seg {
            b"" | b"." => {}
            b".." => {
                kept.pop();
            }
            _ => kept.push(seg),
        }
    }
    // A path whose last segment is empty, `.` or `..` names a directory (RFC 3986 §5.2.4).
    let trailing = matches!(segments.last().copied(), Some(b"" | b"." | b".."));
    let mut out = Vec::with_capacity(flat.len());
    for seg in &kept {
        out.push(b'/');
        out.extend_from_slice(seg);
    }
    if trailing || kept.is_empty() {
        out.push(b'/');
    }
    // Only ASCII bytes were changed or removed, whole: what is left is UTF-8 still.
    Cow::Owned(
        String::from_utf8(out)
            .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()),
    )
}

/// Why a path prefix cannot be purged; `None` for one that can: a path (`/...`) of visible
/// ASCII that ends with `/`, without a query, of at most [`MAX_PREFIX_LEN`] bytes.
pub fn prefix_error(prefix: &str) -> Option<&'static str> {
    if !prefix.starts_with('/') || !prefix.ends_with('/') {
        Some("a prefix is a path that begins and ends with `/` (such as `/wmts/1.0.0/roads/`)")
    } else if prefix.len() > MAX_PREFIX_LEN {
        Some("a prefix is at most 512 bytes long")
    } else if prefix.split('/').any(|seg| {
        matches!(
            seg.to_ascii_lowercase().replace("%2e", ".").as_str(),
            "." | ".."
        )
    }) {
        Some("a prefix has no `.` or `..` segment")
    } else if !prefix.bytes().all(|b| b.is_ascii_graphic()) || prefix.contains(['?', '#']) {
        Some("a prefix holds no query, fragment, space or control character (write others as clients send them, %-escaped)")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn lines(g: &Generations, path: &str) -> String {
        let mut out = String::new();
        g.prefixes_of(path, &mut out);
        out
    }

    fn recorded(a: Advanced) -> u64 {
        match a {
            Advanced::Recorded(g) => g,
            other => panic!("not recorded: {other:?}"),
        }
    }

    #[test]
    fn a_path_gets_the_latest_generation_of_the_purged_prefixes_it_begins_with() {
        let (g, damaged) = Generations::open(None, true, false);
        assert!(!damaged);
        assert_eq!(lines(&g, "/wmts/roads/1/2/3.png"), "");
        let outer = recorded(g.advance("/wmts/", 8));
        let inner = recorded(g.advance("/wmts/roads/", 8));
        assert!(inner > outer);
        assert_eq!(lines(&g, "/wmts/roads/1/2/3.png"), format!("\n^{inner}"));
        // A prefix ends at a `/`: `/wmts/roads/` is not one of `/wmts/roadsigns/`.
        assert_eq!(lines(&g, "/wmts/roadsigns/1.png"), format!("\n^{outer}"));
        assert_eq!(lines(&g, "/wmts"), "");
        assert_eq!(lines(&g, "/tms/roads/1.png"), "");
        assert_eq!(g.of("/wmts/"), outer);
        // Another prefix's purge is past every generation: a purge of the outer one again
        // changes the inner one's paths' keys too.
        recorded(g.advance("/tms/", 8));
        let again = recorded(g.advance("/wmts/", 8));
        assert!(again > inner);
        assert_eq!(lines(&g, "/wmts/roads/1/2/3.png"), format!("\n^{again}"));
    }

    #[test]
    fn spellings_of_one_path_have_one_form() {
        for (path, form) in [
            ("/wmts/roads/1.png", "/wmts/roads/1.png"),
            ("/WMTS/Roads/1.png", "/wmts/roads/1.png"),
            ("/wmts//roads///1.png", "/wmts/roads/1.png"),
            ("/wmts/%72oads/%2e/1.png", "/wmts/roads/1.png"),
            ("/wmts/./roads/x/../1.png", "/wmts/roads/1.png"),
            ("/wmts/roads/.", "/wmts/roads/"),
            ("/wmts/roads/x/..", "/wmts/roads/"),
            ("/../..//", "/"),
            ("/", "/"),
            // Escapes of reserved characters stay escapes (their case aside); a `%` that
            // begins none is one.
            ("/a%2Fb/%20c", "/a%2fb/%20c"),
            ("/bad%zz%4", "/bad%25zz%254"),
            ("/%%37%32oads/", "/%2572oads/"),
            ("/caf\u{e9}/%C3%A9", "/caf\u{e9}/%c3%a9"),
        ] {
            assert_eq!(canonical(path), form, "{path}");
        }
    }

    proptest! {
        /// The form is its own form (a record's names are put in it again at each start), and
        /// making it never panics.
        #[test]
        fn the_form_of_a_form_is_itself(path in "/[a-zA-Z0-9%./_~-]{0,24}", raw in any::<Vec<u8>>()) {
            let once = canonical(&path).into_owned();
            prop_assert_eq!(canonical(&once), once.as_str());
            let raw = String::from_utf8_lossy(&raw).into_owned();
            let once = canonical(&raw).into_owned();
            prop_assert_eq!(canonical(&once), once.as_str());
            let (g, _) = Generations::open(None, true, false);
            recorded(g.advance("/a/", 8));
            let _ = lines(&g, &raw);
        }
    }

    #[test]
    fn a_prefix_is_matched_whatever_the_spelling_and_takes_the_place_of_those_it_holds() {
        let (g, _) = Generations::open(None, true, false);
        let inner = recorded(g.advance(&canonical("/wmts/Roads/"), 8));
        assert_eq!(lines(&g, "/WMTS//roads/%31.png"), format!("\n^{inner}"));
        let outer = recorded(g.advance("/wmts/", 8));
        assert_eq!(lines(&g, "/wmts/roads/1.png"), format!("\n^{outer}"));
        assert_eq!(g.all().len(), 1, "{:?}", g.all());
        // Everything, and the list made empty but for it.
        recorded(g.advance("/tms/", 8));
        let all = recorded(g.advance("/", 8));
        assert_eq!(lines(&g, "/tms/1.png"), format!("\n^{all}"));
        assert_eq!(g.all().len(), 1);
    }

    #[test]
    fn a_record_of_prefixes_keeps_only_prefixes_in_their_form() {
        let dir = std::env::temp_dir().join(format!("tollgate-prefixes-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let file = dir.join("prefixes.json");
        let written = br#"{"": 5, "nope": 3, "/a": 4, "/A/": 7, "/a/": 6, "/b/../": 9}"#;
        std::fs::write(&file, written).expect("write");
        let (g, damaged) = Generations::open(Some(file), true, false);
        assert!(!damaged);
        assert_eq!(g.all(), HashMap::from([("/a/".to_string(), 7)]));
        assert_eq!(lines(&g, ""), "");
        assert_eq!(lines(&g, "/a/1.png"), "\n^7");
        // What another process records is read the same way.
        let _ = recorded(g.advance("/c/", 8));
        assert_eq!(g.all().len(), 2, "{:?}", g.all());
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Two processes on one record (a graceful upgrade): a purge the old one makes after the
    /// new one read the record is taken in by the new one when it looks at the record.
    #[test]
    fn a_purge_another_process_recorded_is_taken_in() {
        let dir = std::env::temp_dir().join(format!("tollgate-follow-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        for (name, paths, path) in [
            ("generations.json", false, "wmts"),
            ("prefixes.json", true, "/a/"),
        ] {
            let file = dir.join(name);
            let (old, _) = Generations::open(Some(file.clone()), paths, false);
            let (new, _) = Generations::open(Some(file), paths, false);
            new.follow_record();
            let purged = recorded(old.advance(path, 8));
            assert_eq!(new.of(path), 0);
            new.follow_record();
            assert_eq!(new.of(path), purged, "{name}");
            // Its own purges stay the latest.
            let again = recorded(new.advance(path, 8));
            assert!(again > purged);
            new.follow_record();
            assert_eq!(new.of(path), again);
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_generation_is_past_every_one_recorded_whatever_the_clock() {
        let dir = std::env::temp_dir().join(format!("tollgate-future-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let file = dir.join("prefixes.json");
        // Generations taken by a clock far ahead of this one.
        let ahead = u64::MAX / 4;
        let written = format!(r#"{{"/a/": {ahead}, "/a/b/": {}}}"#, ahead + 5);
        std::fs::write(&file, written).expect("write");
        let (g, _) = Generations::open(Some(file), true, false);
        assert_eq!(lines(&g, "/a/b/1.png"), format!("\n^{}", ahead + 5));
        // The outer prefix takes the inner one's place, with a generation past both.
        let outer = recorded(g.advance("/a/", 8));
        assert_eq!(outer, ahead + 6);
        assert_eq!(lines(&g, "/a/b/1.png"), format!("\n^{outer}"));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn no_more_names_than_allowed() {
        let (g, _) = Generations::open(None, true, false);
        recorded(g.advance("/a/", 2));
        recorded(g.advance("/b/", 2));
        assert_eq!(g.advance("/c/", 2), Advanced::Full);
        // One already there may be purged again.
        recorded(g.advance("/a/", 2));
    }

    #[test]
    fn prefixes_are_paths_ending_with_a_slash() {
        assert_eq!(prefix_error("/wmts/roads/"), None);
        assert_eq!(prefix_error("/"), None);
        assert_eq!(prefix_error("/wmts/la%20yer/"), None);
        assert_eq!(prefix_error("/wmts/v1.0/"), None);
        for bad in [
            "",
            "wmts/",
            "/wmts/roads",
            "/wmts/?x=1/",
            "/a b/",
            "/a\u{e9}/",
            "/tiles/roads/../",
            "/a/%2E%2e/",
            "/a/./",
        ] {
            assert!(prefix_error(bad).is_some(), "{bad:?}");
        }
        assert!(prefix_error(&format!("/{}/", "a".repeat(600))).is_some());
    }
}
