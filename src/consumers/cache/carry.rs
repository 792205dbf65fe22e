//! What refreshes changed while a full load read the store, carried into what it read when
//! it swaps its tables in (it may have read an entity before it changed).

use std::collections::HashSet;
use std::hash::{BuildHasher, Hash};

use super::{Table, Tables};
use crate::consumers::layout::CredentialType;

/// What a refresh changed in the tables: carried over a full load that ran meanwhile.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub(super) enum Changed {
    User(Box<str>),
    App(Box<str>),
    Credential(CredentialType, Box<str>),
}

/// Bytes of credential ids kept whole while a full load reads. A lookup of an unknown key
/// (up to a header's 32 KiB) is a refresh, and a flood of them during a long read (lookups
/// run up to 10,000 a second) would otherwise keep every key sent: past this, a credential
/// changed is kept as a hash of its id (8 bytes) and found at the swap by a pass over the
/// credentials.
const WHOLE_BYTES: usize = 8 << 20;

/// What refreshes changed while a full load reads.
#[derive(Default)]
pub(super) struct Changes {
    whole: HashSet<Changed>,
    /// Bytes of the credential ids in `whole`.
    bytes: usize,
    /// Credentials changed past [`WHOLE_BYTES`], by [`Changes::hash`] of their type and id.
    hashed: HashSet<u64>,
    keys: std::hash::RandomState,
}

impl Changes {
    pub(super) fn note(&mut self, changed: Changed) {
        if let Changed::Credential(ty, id) = &changed {
            if self.bytes + id.len() > WHOLE_BYTES {
                if !self.whole.contains(&changed) {
                    self.hashed.insert(self.hash(*ty, id));
                }
                return;
            }
            if !self.whole.contains(&changed) {
                self.bytes += id.len();
            }
        }
        self.whole.insert(changed);
    }

    fn hash(&self, ty: CredentialType, id: &str) -> u64 {
        self.keys.hash_one((ty, id))
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
        if !self.hashed.is_empty() {
            let hashed = |ty| move |id: &str| self.hashed.contains(&self.hash(ty, id));
            entries(
                &old.key_auth,
                &mut new.key_auth,
                hashed(CredentialType::KeyAuth),
            );
            entries(&old.jwt, &mut new.jwt, hashed(CredentialType::Jwt));
            entries(
                &old.basic,
                &mut new.basic,
                hashed(CredentialType::BasicAuth),
            );
        }
    }

    /// How many changes are kept, whole and hashed.
    #[cfg(test)]
    fn counts(&self) -> (usize, usize) {
        (self.whole.len(), self.hashed.len())
    }
}

/// `id`'s entry in `new` made as it is in `old`.
fn entry<V: Clone>(old: &Table<V>, new: &mut Table<V>, id: &str) {
    match old.get(id) {
        Some(v) => new.insert(id.into(), v.clone()),
        None => new.remove(id),
    };
}

/// [`entry`] for every id of `old` or `new` that `changed` says (a hash may name an id that
/// did not change: its entry is made as the live tables have it, as recent as the read's).
fn entries<V: Clone>(old: &Table<V>, new: &mut Table<V>, changed: impl Fn(&str) -> bool) {
    let ids: Vec<Box<str>> = old
        .keys()
        .chain(new.keys())
        .filter(|id| changed(id))
        .cloned()
        .collect();
    for id in ids {
        entry(old, new, &id);
    }
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

    /// Past the budget, changes are kept as hashes, and carried all the same: a credential
    /// revoked while the read passed it, one created after the read passed its place, and a
    /// made-up key looked up, each as the live tables have it; the others as the read found
    /// them.
    #[test]
    fn changes_past_the_budget_are_hashed_and_carried_all_the_same() {
        let mut changes = Changes::default();
        // A flood of made-up keys of 32 KiB fills the budget ...
        let long = |i: usize| format!("{i:0>32768}");
        for i in 0..(WHOLE_BYTES / 32768 + 50) {
            changes.note(Changed::Credential(CredentialType::KeyAuth, long(i).into()));
        }
        // ... and the same again is not counted twice.
        changes.note(Changed::Credential(CredentialType::KeyAuth, long(0).into()));
        let (whole, hashed) = changes.counts();
        assert_eq!(whole, WHOLE_BYTES / 32768);
        assert_eq!(hashed, 50);
        // Changes past it are hashed, whatever their size.
        for id in ["revoked", "created", "made-up"] {
            changes.note(Changed::Credential(CredentialType::KeyAuth, id.into()));
        }
        changes.note(Changed::Credential(
            CredentialType::Jwt,
            "jwt-revoked".into(),
        ));
        // A user's change is always kept whole.
        changes.note(Changed::User("u1".into()));
        assert_eq!(changes.counts(), (WHOLE_BYTES / 32768 + 1, 54));

        let mut old = Tables::default();
        old.key_auth.insert("created".into(), keyed("c"));
        old.key_auth.insert("kept".into(), keyed("live"));
        let mut new = Tables::default();
        new.key_auth.insert("revoked".into(), keyed("r"));
        new.key_auth.insert("kept".into(), keyed("read"));
        new.key_auth.insert("other".into(), keyed("o"));
        new.jwt.insert("jwt-revoked".into(), keyed("j"));
        changes.carry(&old, &mut new);

        let mut ids: Vec<&str> = new.key_auth.keys().map(|k| &**k).collect();
        ids.sort_unstable();
        assert_eq!(ids, ["created", "kept", "other"]);
        assert!(new.jwt.is_empty());
        // Not changed: as the read found it.
        assert_eq!(&*new.key_auth["kept"].secret, "read");
        assert_eq!(&*new.key_auth["created"].secret, "c");
    }

    /// Within the budget, nothing is hashed (no pass over the credentials at the swap).
    #[test]
    fn a_few_changes_are_kept_whole() {
        let mut changes = Changes::default();
        for i in 0..1000 {
            changes.note(Changed::Credential(
                CredentialType::KeyAuth,
                format!("k{i}").into(),
            ));
        }
        assert_eq!(changes.counts(), (1000, 0));
    }
}
