//! The consumer cache handed from a process being upgraded to the new one, so that the new
//! one authenticates from its first request whatever its store answers: before, an upgrade
//! while Redis was down left the new process knowing no credential (every authenticated
//! request `503` until Redis came back), where the old one served them from memory.
//!
//! The old process offers its tables on a unix socket beside the upgrade socket
//! ([`offer_path`]) as it hands the listening sockets over; the new process reads them once
//! it holds those sockets and has subscribed to the store's changes, then loads from its
//! store as it always does (the store's answer replaces them). Asked, the old process first
//! follows what its store told of until then ([`ConsumerCache::caught_up_blocking`]): a
//! change is in the tables, or among what the new process hears — unless a WARN line of
//! either says otherwise (a subscription down, changes missed, subscriptions not made in
//! time), and the new process's read of the store brings what the tables miss. Both ends
//! take only a peer of their own user: the tables hold the credentials' secrets.

use std::collections::HashSet;
use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::follow::CatchUp;
use super::{ConsumerCache, ConsumerEntry, KeyedCredential, PasswordCredential, Table, Tables};
use crate::pipeline::context::Consumer;

/// Where the tables are offered: the upgrade socket's path with `.consumers` after it.
pub fn offer_path(upgrade_sock: &Path) -> PathBuf {
    let mut p = upgrade_sock.as_os_str().to_owned();
    p.push(".consumers");
    PathBuf::from(p)
}

/// Whether the process being upgraded offers its tables: it makes the offer's socket before
/// it sends the listening sockets, so a new process that has them finds it there or not at all
/// (the old process had no tables: its first read of the store had not ended; or it is a
/// version that offers none).
fn offered(upgrade_sock: &Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    std::fs::symlink_metadata(offer_path(upgrade_sock)).is_ok_and(|m| m.file_type().is_socket())
}

/// How long the tables are offered (the new process asks as soon as it has the sockets).
const OFFERED_FOR: Duration = Duration::from_secs(60);

/// How long the tables wait for the changes the store told of before the new process asked
/// to be followed.
const CATCH_UP_WITHIN: Duration = Duration::from_secs(3);

/// How long the new process looks for the offer, and then waits for the tables.
const LOOK_FOR: Duration = Duration::from_millis(500);
const READ_WITHIN: Duration = Duration::from_secs(30);

#[derive(Serialize, Deserialize)]
struct Keyed {
    id: String,
    secret: String,
    consumer_id: String,
    active: bool,
    scopes: Option<Vec<String>>,
}

#[derive(Serialize, Deserialize)]
struct Password {
    id: String,
    hash: String,
    active: bool,
    scopes: Option<Vec<String>>,
}

#[derive(Serialize, Deserialize)]
struct Entry {
    id: String,
    active: bool,
    scopes: Vec<String>,
}

#[derive(Serialize, Deserialize)]
struct Snapshot {
    key_auth: Vec<Keyed>,
    jwt: Vec<Keyed>,
    basic: Vec<Password>,
    apps: Vec<Entry>,
    users: Vec<Entry>,
    usernames: Vec<(String, String)>,
}

impl ConsumerCache {
    /// Offers the tables at [`offer_path`] on a thread of its own, to the first peer of this
    /// process's user that asks, for [`OFFERED_FOR`] at most. Nothing is offered before a load
    /// from the store succeeded (or tables came from a process before this one).
    pub fn offer_to_upgrade(self: &Arc<Self>, upgrade_sock: &Path) {
        if !self.is_loaded() {
            log::warn!(
                "consumer cache: its first read of the store has not ended: no tables for the upgrading process, which reads the store itself (and looks each credential up until then)"
            );
            return;
        }
        let path = offer_path(upgrade_sock);
        // A socket left by a process that ended before it was taken.
        let _ = std::fs::remove_file(&path);
        let listener = match UnixListener::bind(&path) {
            Ok(l) => l,
            Err(e) => {
                log::warn!(
                    "cannot offer the consumer cache to the upgraded process at {}: {e}",
                    path.display()
                );
                return;
            }
        };
        if let Err(e) = restrict(&path) {
            log::warn!("cannot restrict {} to this user: {e}", path.display());
            let _ = std::fs::remove_file(&path);
            return;
        }
        let cache = self.clone();
        let spawned = std::thread::Builder::new()
            .name("tollgate-offer".into())
            .spawn(move || cache.serve_offer(listener, &path));
        if let Err(e) = spawned {
            log::warn!("cannot offer the consumer cache to the upgraded process: {e}");
        }
    }

    fn serve_offer(&self, listener: UnixListener, path: &Path) {
        let until = Instant::now() + OFFERED_FOR;
        let _ = listener.set_nonblocking(true);
        let bound = identity(path);
        // Removed once taken, or when no longer offered — only while it is this offer's: the
        // path may hold a newer process's offer by then.
        let withdraw = || {
            if bound.is_some() && identity(path) == bound {
                let _ = std::fs::remove_file(path);
            }
        };
        while Instant::now() < until {
            let mut conn = match listener.accept() {
                Ok((conn, _)) => conn,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                }
                Err(e) => {
                    log::warn!("the consumer cache's offer: {e}");
                    break;
                }
            };
            if !same_user(&conn) {
                log::warn!(
                    "the consumer cache's offer at {}: a process of another user asked; refused",
                    path.display()
                );
                continue;
            }
            withdraw();
            // The process stays until the tables have gone (see [`handing_over`]).
            HANDING_OVER.store(true, Ordering::Relaxed);
            // What the store told of before the new process asked is in the tables: it asks
            // once its own subscriptions are made, so that a change is followed by one process
            // or the other (one published between the two was lost until the new process's
            // first read of the store ended).
            match self.caught_up_blocking(CATCH_UP_WITHIN) {
                CatchUp::Whole => {}
                CatchUp::MayMiss => log::warn!(
                    "consumer cache: the tables handed over may miss the store's last changes (a subscription was down, a refresh failed, changes came faster than they were followed, or the full read owed since has not ended); the new process's read of the store brings them"
                ),
                CatchUp::NotWithin => log::warn!(
                    "consumer cache: the store's last changes not followed within {CATCH_UP_WITHIN:?}; the tables go as they are (the new process's read of the store brings what they miss)"
                ),
                CatchUp::NotAsked => log::warn!(
                    "consumer cache: the store's changes are not followed; the tables go as they are (the new process's read of the store brings what they miss)"
                ),
            }
            let _ = conn.set_nonblocking(false);
            let _ = conn.set_write_timeout(Some(READ_WITHIN));
            let mut out = std::io::BufWriter::new(&mut conn);
            let sent = serde_json::to_writer(&mut out, &self.snapshot())
                .map_err(std::io::Error::from)
                .and_then(|()| out.flush());
            drop(out);
            HANDING_OVER.store(false, Ordering::Relaxed);
            match sent {
                Ok(()) => log::info!(
                    "consumer cache: {} credentials handed to the upgraded process",
                    self.len()
                ),
                Err(e) => log::warn!("cannot hand the consumer cache to the upgraded process: {e}"),
            }
            return;
        }
        withdraw();
    }

    fn snapshot(&self) -> Snapshot {
        let t = self.read();
        let keyed = |table: &Table<KeyedCredential>| {
            table
                .iter()
                .map(|(id, c)| Keyed {
                    id: id.to_string(),
                    secret: c.secret.to_string(),
                    consumer_id: c.consumer_id.to_string(),
                    active: c.active,
                    scopes: c.scopes.as_ref().map(|s| s.to_vec()),
                })
                .collect()
        };
        let entries = |table: &Table<ConsumerEntry>| {
            table
                .iter()
                .map(|(id, e)| Entry {
                    id: id.to_string(),
                    active: e.active,
                    scopes: e.consumer.scopes.to_vec(),
                })
                .collect()
        };
        Snapshot {
            key_auth: keyed(&t.key_auth),
            jwt: keyed(&t.jwt),
            basic: t
                .basic
                .iter()
                .map(|(id, c)| Password {
                    id: id.to_string(),
                    hash: c.hash.to_string(),
                    active: c.active,
                    scopes: c.scopes.as_ref().map(|s| s.to_vec()),
                })
                .collect(),
            apps: entries(&t.apps),
            users: entries(&t.users),
            usernames: t
                .usernames
                .iter()
                .map(|(name, id)| (name.to_string(), id.to_string()))
                .collect(),
        }
    }

    /// Whether the process being upgraded offers its tables (see [`offered`]).
    pub fn offered_by_upgraded(upgrade_sock: &Path) -> bool {
        offered(upgrade_sock)
    }

    /// Takes the tables the process being upgraded offers (at [`offer_path`]), when it offers
    /// them: the cache serves with them until its first load from the store. Whether it took
    /// them.
    pub fn take_from_upgraded(&self, upgrade_sock: &Path) -> bool {
        let path = offer_path(upgrade_sock);
        let since = Instant::now();
        let mut conn = loop {
            match UnixStream::connect(&path) {
                Ok(c) => break c,
                // Not offered (the old process had no tables, or is a version that offers
                // none): the store is asked, as at any start.
                Err(e) if since.elapsed() >= LOOK_FOR => {
                    log::warn!(
                        "consumer cache: cannot reach the tables the process upgraded offers at {}: {e}; reading the store",
                        path.display()
                    );
                    return false;
                }
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        };
        if !same_user(&conn) {
            log::warn!(
                "{} is offered by a process of another user: not read",
                path.display()
            );
            return false;
        }
        let _ = conn.set_read_timeout(Some(READ_WITHIN));
        let mut text = Vec::new();
        let read = conn
            .read_to_end(&mut text)
            .map_err(|e| e.to_string())
            .and_then(|_| serde_json::from_slice::<Snapshot>(&text).map_err(|e| e.to_string()));
        match read {
            Ok(snapshot) => {
                self.install(snapshot);
                log::info!(
                    "consumer cache: {} credentials taken from the process upgraded (the store's load replaces them)",
                    self.len()
                );
                true
            }
            Err(e) => {
                log::warn!("cannot read the consumer cache the upgraded process offered: {e}");
                false
            }
        }
    }

    fn install(&self, s: Snapshot) {
        let mut interned: HashSet<Arc<[String]>> = HashSet::new();
        let mut intern = |list: Vec<String>| -> Arc<[String]> {
            let arc: Arc<[String]> = Arc::from(list);
            match interned.get(&arc) {
                Some(known) => known.clone(),
                None => {
                    interned.insert(arc.clone());
                    arc
                }
            }
        };
        let mut t = Tables::default();
        for (table, list) in [(&mut t.key_auth, s.key_auth), (&mut t.jwt, s.jwt)] {
            for k in list {
                let credential = KeyedCredential {
                    secret: k.secret.into(),
                    consumer_id: Arc::from(k.consumer_id),
                    active: k.active,
                    scopes: k.scopes.map(&mut intern),
                };
                table.insert(k.id.into(), credential);
            }
        }
        for p in s.basic {
            let credential = PasswordCredential {
                hash: p.hash.into(),
                active: p.active,
                scopes: p.scopes.map(&mut intern),
            };
            t.basic.insert(p.id.into(), credential);
        }
        for (table, list) in [(&mut t.apps, s.apps), (&mut t.users, s.users)] {
            for e in list {
                let consumer = Consumer::new(Arc::from(e.id.as_str()), intern(e.scopes));
                let entry = ConsumerEntry {
                    active: e.active,
                    consumer,
                    username: None,
                };
                table.insert(e.id.into(), entry);
            }
        }
        for (name, id) in s.usernames {
            if let Some(user) = t.users.get_mut(id.as_str()) {
                user.username = Some(name.as_str().into());
            }
            t.usernames.insert(name.into(), Arc::from(id));
        }
        let mut live = self.write();
        // A load from the store that came first stands.
        if !self.from_store.load(std::sync::atomic::Ordering::Relaxed) {
            *live = t;
            self.loaded
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

/// Whether this process is writing its tables to the upgraded one: it does not exit before.
pub fn handing_over() -> bool {
    HANDING_OVER.load(Ordering::Relaxed)
}

static HANDING_OVER: AtomicBool = AtomicBool::new(false);

/// What file `path` is (device and inode), if there is one.
fn identity(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(path)
        .ok()
        .map(|m| (m.dev(), m.ino()))
}

/// Makes the socket at `path` this user's alone.
fn restrict(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
}

/// Whether the process at the other end of `conn` runs as this process's user.
#[cfg(not(target_os = "linux"))]
fn same_user(_conn: &UnixStream) -> bool {
    // (Without a way to ask here, nothing is handed over.)
    false
}

/// Whether the process at the other end of `conn` runs as this process's user.
#[cfg(target_os = "linux")]
fn same_user(conn: &UnixStream) -> bool {
    use std::os::fd::AsRawFd;
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` and `len` are valid for writes of the sizes given, and the descriptor is
    // `conn`'s, open for the call.
    let got = unsafe {
        libc::getsockopt(
            conn.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    // SAFETY: `geteuid` has no preconditions.
    got == 0 && cred.uid == unsafe { libc::geteuid() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tables_go_over_whole() {
        let store: Arc<dyn crate::store::Store> =
            Arc::new(crate::store::embedded::EmbeddedStore::in_memory());
        let from = Arc::new(ConsumerCache::new(
            store.clone(),
            crate::consumers::layout::Layout::new("EG"),
        ));
        {
            let mut t = from.write();
            let scopes: Arc<[String]> = Arc::from(vec!["wmts".to_string()]);
            t.key_auth.insert(
                "k".into(),
                KeyedCredential {
                    secret: "s".into(),
                    consumer_id: Arc::from("app"),
                    active: true,
                    scopes: Some(scopes.clone()),
                },
            );
            t.basic.insert(
                "app".into(),
                PasswordCredential {
                    hash: "$2b$04$x".into(),
                    active: false,
                    scopes: None,
                },
            );
            t.apps.insert(
                "app".into(),
                ConsumerEntry {
                    active: true,
                    consumer: Consumer::new(Arc::from("app"), scopes),
                    username: None,
                },
            );
            t.usernames.insert("kano".into(), Arc::from("user"));
        }
        from.loaded
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let text = serde_json::to_vec(&from.snapshot()).unwrap();
        let to = ConsumerCache::new(store, crate::consumers::layout::Layout::new("EG"));
        to.install(serde_json::from_slice(&text).unwrap());
        assert!(to.is_loaded());
        let t = to.read();
        let k = &t.key_auth["k"];
        assert_eq!((&*k.secret, &*k.consumer_id, k.active), ("s", "app", true));
        assert_eq!(k.scopes.as_deref(), Some(&["wmts".to_string()][..]));
        assert!(!t.basic["app"].active);
        assert_eq!(&*t.apps["app"].consumer.id, "app");
        assert!(
            Arc::ptr_eq(k.scopes.as_ref().unwrap(), &t.apps["app"].consumer.scopes),
            "one copy of a scope list"
        );
        assert_eq!(&*t.usernames["kano"], "user");
    }
}
