//! What refreshes changed while a full load read the store, carried into what it read when
//! it swaps its tables in (it may have read an entity before it changed).

use std::collections::HashSet;
use std::hash::BuildHasher;

use super::{Table, Tables};
use crate::consumers::layout::CredentialType;

/// What a refresh changed in the tables: carried over a full load that ran meanwhile.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub(super) enum Changed {
    User(Box<str>),
    App(Box<str>),
    Credential(CredentialType, Box<str>),
}

/// What kind of entity a change is of, for its hash.
#[derive(Clone, Copy, Hash)]
enum Kind {
    User,
    App,
    Credential(CredentialType),
}

impl Changed {
    fn kind_and_id(&self) -> (Kind, &str) {
        match self {
            Changed::User(id) => (Kind::User, id),
            Changed::App(id) => (Kind::App, id),
            Changed::Credential(ty, id) => (Kind::Credential(*ty), id),
        }
    }
}

/// Bytes of ids kept whole while a full load reads. A lookup of an unknown key (up to a
/// header's 32 KiB; a basic-auth user's, its user and application) is a refresh that finds
/// nothing, and a flood of them during a long read (lookups run up to 10,000 a second) would
/// otherwise keep every id sent: past this, an entity a refresh found gone is kept as a hash
/// of its id, and looked for among what the read found (see [`Changes::seal`]). One a refresh
/// found in the store is kept whole always (the store's own entities, not made-up ones).
const WHOLE_BYTES: usize = 8 << 20;

/// What refreshes changed while a full load reads.
#[derive(Default)]
pub(super) struct Changes {
    whole: HashSet<Changed>,
    /// Bytes of the ids in `whole`.
    bytes: usize,
    /// Entities found gone past [`WHOLE_BYTES`], by the hash of their kind and id.
    gone: HashSet<u64, foldhash::fast::RandomState>,
    keys: foldhash::fast::RandomState,
    /// Once [`Changes::seal`] ran, the longest id the read found: every change is kept whole
    /// from then on, but one found gone with a longer id, which the read cannot hold.
    sealed: Option<usize>,
}

impl Changes {
    /// Notes a change; `found`: the refresh found the entity in the store.
    pub(super) fn note(&mut self, changed: Changed, found: bool) {
        if self.whole.contains(&changed) {
            return;
        }
        let len = changed.kind_and_id().1.len();
        if !found {
            match self.sealed {
                Some(longest) if len > longest => return,
                None if self.bytes + len > WHOLE_BYTES => {
                    self.gone.insert(self.keys.hash_one(changed.kind_and_id()));
                    return;
                }
                _ => {}
            }
        }
        self.bytes += len;
        self.whole.insert(changed);
    }

    /// Seals the changes noted so far, those of a read whose longest id is `longest` (see
    /// [`longest_id`]): changes are kept whole from now on (but those [`Changes::note`] can
    /// leave out), and the hashes of those that were not are handed over, to be found with
    /// [`Hashed::found_in`] without the tables' lock.
    pub(super) fn seal(&mut self, longest: usize) -> Hashed {
        self.sealed = Some(longest);
        Hashed {
            gone: std::mem::take(&mut self.gone),
            keys: self.keys.clone(),
        }
    }

    /// Adds the entities [`Hashed::found_in`] found.
    pub(super) fn add_found(&mut self, found: Vec<Changed>) {
        self.whole.extend(found);
    }

    /// Makes what a full load read (`new`) hold what refreshes changed while it read, as the
    /// live tables (`old`) hold it.
    pub(super) fn carry(&self, old: &Tables, new: &mut Tables) {
        // The names of the users changed, as the live tables have them: one pass over the
        // names however many users changed (a pass for each was a write storm's users times
        // every name, under the tables' lock).
        let users: HashSet<&str> = self
            .whole
            .iter()
            .filter_map(|c| match c {
                Changed::User(id) => Some(&**id),
                _ => None,
            })
            .collect();
        // (Names shared while it read stay known as such.)
        new.shared_names.extend(old.shared_names.iter().cloned());
        if !users.is_empty() {
            new.usernames.retain(|_, v| !users.contains(&**v));
            for (name, v) in old.usernames.iter().filter(|(_, v)| users.contains(&***v)) {
                new.usernames.insert(name.clone(), v.clone());
            }
        }
        for c in &self.whole {
            match c {
                Changed::User(id) => entry(&old.users, &mut new.users, id),
                Changed::App(id) => entry(&old.apps, &mut new.apps, id),
                Changed::Credential(ty, id) => match ty {
                    CredentialType::KeyAuth => entry(&old.key_auth, &mut new.key_auth, id),
                    CredentialType::Jwt => entry(&old.jwt, &mut new.jwt, id),
                    CredentialType::BasicAuth => entry(&old.basic, &mut new.basic, id),
                    CredentialType::Oauth2 => {}
                },
            }
        }
    }

    /// How many changes are kept, whole and hashed.
    #[cfg(test)]
    fn counts(&self) -> (usize, usize) {
        (self.whole.len(), self.gone.len())
    }
}

/// The hashes of entities found gone, sealed ([`Changes::seal`]).
pub(super) struct Hashed {
    gone: HashSet<u64, foldhash::fast::RandomState>,
    keys: foldhash::fast::RandomState,
}

impl Hashed {
    /// The entities of `read` (what a full load read, not yet the live tables: no lock) that
    /// the hashes name. Gone when a refresh found them, they are gone from the live tables
    /// unless changed since (then noted whole): what the read found of them is removed. A
    /// hash that names another entity makes it as the live tables have it, as a change would.
    pub(super) fn found_in(&self, read: &Tables) -> Vec<Changed> {
        let mut found = Vec::new();
        if self.gone.is_empty() {
            return found;
        }
        let mut look = |kind: Kind, ids: &mut dyn Iterator<Item = &Box<str>>| {
            for id in ids {
                if self.gone.contains(&self.keys.hash_one((kind, &**id))) {
                    found.push(match kind {
                        Kind::User => Changed::User(id.clone()),
                        Kind::App => Changed::App(id.clone()),
                        Kind::Credential(ty) => Changed::Credential(ty, id.clone()),
                    });
                }
            }
        };
        look(Kind::User, &mut read.users.keys());
        look(Kind::App, &mut read.apps.keys());
        look(
            Kind::Credential(CredentialType::KeyAuth),
            &mut read.key_auth.keys(),
        );
        look(Kind::Credential(CredentialType::Jwt), &mut read.jwt.keys());
        look(
            Kind::Credential(CredentialType::BasicAuth),
            &mut read.basic.keys(),
        );
        found
    }
}

/// The longest id `t` holds (a name's user's too).
pub(super) fn longest_id(t: &Tables) -> usize {
    let longest = |ids: &mut dyn Iterator<Item = &str>| ids.map(str::len).max().unwrap_or(0);
    [
        longest(&mut t.users.keys().map(|k| &**k)),
        longest(&mut t.apps.keys().map(|k| &**k)),
        longest(&mut t.key_auth.keys().map(|k| &**k)),
        longest(&mut t.jwt.keys().map(|k| &**k)),
        longest(&mut t.basic.keys().map(|k| &**k)),
        longest(&mut t.usernames.values().map(|v| &**v)),
    ]
    .into_iter()
    .max()
    .unwrap_or(0)
}

/// `id`'s entry in `new` made as it is in `old`.
fn entry<V: Clone>(old: &Table<V>, new: &mut Table<V>, id: &str) {
    match old.get(id) {
        Some(v) => new.insert(id.into(), v.clone()),
        None => new.remove(id),
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consumers::cache::KeyedCredential;

    fn keyed(secret: &str) -> KeyedCredential {
        KeyedCredential {
            secret: secret.into(),
            consumer_id: "c1".into(),
            active: true,
            scopes: None,
        }
    }

    fn key_auth(id: &str) -> Changed {
        Changed::Credential(CredentialType::KeyAuth, id.into())
    }

    /// Past the budget, entities found gone are kept as hashes, looked for among what the
    /// read found, and carried all the same: a credential and a user removed while the read
    /// passed them, each as the live tables have them; a made-up key costs 8 bytes. Entities
    /// found in the store, and every change once sealed, are kept whole.
    #[test]
    fn entities_gone_past_the_budget_are_hashed_and_carried_all_the_same() {
        let mut changes = Changes::default();
        // A flood of made-up keys of 32 KiB fills the budget ...
        let long = |i: usize| format!("{i:0>32768}");
        for i in 0..(WHOLE_BYTES / 32768 + 50) {
            changes.note(key_auth(&long(i)), false);
        }
        // ... and the same again is not counted twice.
        changes.note(key_auth(&long(0)), false);
        let full = WHOLE_BYTES / 32768;
        assert_eq!(changes.counts(), (full, 50));
        // Past it, what was found gone is hashed, whatever its size; what was found, whole.
        changes.note(key_auth("revoked"), false);
        changes.note(
            Changed::Credential(CredentialType::Jwt, "jwt-gone".into()),
            false,
        );
        changes.note(Changed::User("u-gone".into()), false);
        changes.note(key_auth("created"), true);
        assert_eq!(changes.counts(), (full + 1, 53));

        let mut old = Tables::default();
        old.key_auth.insert("created".into(), keyed("c"));
        old.key_auth.insert("kept".into(), keyed("live"));
        let mut new = Tables::default();
        new.key_auth.insert("revoked".into(), keyed("r"));
        new.key_auth.insert("kept".into(), keyed("read"));
        new.key_auth.insert("other".into(), keyed("o"));
        new.jwt.insert("jwt-gone".into(), keyed("j"));
        let gone_user = super::super::ConsumerEntry {
            active: true,
            consumer: crate::pipeline::context::Consumer::new("u-gone".into(), Vec::new().into()),
            username: Some("gone".into()),
        };
        new.users.insert("u-gone".into(), gone_user);
        new.usernames.insert("gone".into(), "u-gone".into());

        let hashed = changes.seal(longest_id(&new));
        // Sealed: a change noted now is kept whole, found or not, but one found gone whose id
        // is longer than any the read found (it cannot be in it).
        changes.note(key_auth("late"), false);
        changes.note(key_auth(&long(1_000_000)), false);
        changes.note(key_auth(&long(1_000_001)), true);
        assert_eq!(changes.counts(), (full + 3, 0));
        let found = hashed.found_in(&new);
        assert_eq!(found.len(), 3, "{found:?}");
        changes.add_found(found);
        changes.carry(&old, &mut new);

        let mut ids: Vec<&str> = new.key_auth.keys().map(|k| &**k).collect();
        ids.sort_unstable();
        assert_eq!(ids, ["created", "kept", "other"]);
        assert!(new.jwt.is_empty());
        assert!(new.users.is_empty());
        assert!(new.usernames.is_empty(), "the user's name goes with it");
        // Not changed: as the read found it.
        assert_eq!(&*new.key_auth["kept"].secret, "read");
        assert_eq!(&*new.key_auth["created"].secret, "c");
    }

    /// Within the budget, nothing is hashed (nothing to look for at the swap).
    #[test]
    fn a_few_changes_are_kept_whole() {
        let mut changes = Changes::default();
        for i in 0..1000 {
            changes.note(key_auth(&format!("k{i}")), i % 2 == 0);
        }
        assert_eq!(changes.counts(), (1000, 0));
        let hashed = changes.seal(0);
        assert!(hashed.found_in(&Tables::default()).is_empty());
    }
}
