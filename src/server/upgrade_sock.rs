//! What is at the upgrade socket's path: nothing, a socket an upgrading process of this user
//! waits on, a socket nobody listens on (left by a process that ended), or a file that is not
//! this process's user's. The old process hands its listening sockets only to the second, and
//! an upgrading process starts only where no other one waits.

use std::path::Path;

/// What is at the upgrade socket's path.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum AtPath {
    Nothing,
    /// A socket of this user's that a process listens on: an upgrading process waits there.
    Waiting,
    /// A socket of this user's nobody listens on.
    Left,
    /// A file of another user's (its uid): the sockets must not go there, and this user's
    /// process cannot put its own socket in its place.
    OtherUser(u32),
    /// Something other than a socket.
    NotSocket,
    /// It cannot be looked at.
    Unreadable(String),
}

/// Looks at `path` (not following a link there: a link is no socket).
pub(super) fn at_path(path: &Path) -> AtPath {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return AtPath::Nothing,
        Err(e) => return AtPath::Unreadable(e.to_string()),
    };
    // SAFETY: geteuid cannot fail.
    let euid = unsafe { libc::geteuid() };
    if meta.uid() != euid {
        return AtPath::OtherUser(meta.uid());
    }
    if !meta.file_type().is_socket() {
        return AtPath::NotSocket;
    }
    match listened_on(path) {
        Some(false) => AtPath::Left,
        // (Without `/proc`, a socket there is taken to be waited on: the upgrading process
        // removes it when it is done, or gives up.)
        Some(true) | None => AtPath::Waiting,
    }
}

/// Whether a process listens on a unix socket bound to the name `path` (`/proc/net/unix`: its
/// bound name, and the flag of a listening socket), without connecting to it — the upgrading
/// process takes the first connection as the one the sockets come on. `None` without `/proc`.
///
/// The table names a socket by the name it was bound to, also after its file was removed: a
/// socket file there (looked at first) is what makes the name reachable. (An upgrading process
/// that had received the sockets removed the file when done, and with it the file of a later
/// upgrading process that had put its own socket there meanwhile: the table still listed the
/// later one as listening, the old process sent to a name that led nowhere, and ended.)
fn listened_on(path: &Path) -> Option<bool> {
    const ACCEPTING: u32 = 0x10000;
    let table = std::fs::read_to_string("/proc/net/unix").ok()?;
    let name = path.as_os_str().to_string_lossy();
    Some(table.lines().skip(1).any(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        fields.len() >= 8
            && fields[7..].join(" ") == name
            && u32::from_str_radix(fields[3], 16).is_ok_and(|f| f & ACCEPTING != 0)
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("tollgate-upsock-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        dir.join(name)
    }

    #[test]
    fn a_listening_socket_is_waited_on_until_its_file_is_removed() {
        let path = temp("listening.sock");
        let _ = std::fs::remove_file(&path);
        assert_eq!(at_path(&path), AtPath::Nothing);
        let listener = std::os::unix::net::UnixListener::bind(&path).expect("bind");
        assert_eq!(at_path(&path), AtPath::Waiting);
        // Its file removed (by another upgrading process done with the same path): the socket
        // still listens, under a name that leads nowhere.
        std::fs::remove_file(&path).expect("remove");
        assert_eq!(at_path(&path), AtPath::Nothing);
        drop(listener);
        // A socket file nobody listens on.
        let listener = std::os::unix::net::UnixListener::bind(&path).expect("bind");
        drop(listener);
        assert_eq!(at_path(&path), AtPath::Left);
        std::fs::remove_file(&path).expect("remove");
        std::fs::write(&path, "x").expect("file");
        assert_eq!(at_path(&path), AtPath::NotSocket);
        std::fs::remove_file(&path).expect("remove");
    }

    /// A socket another user put at the path (in a directory all may write in, as `/tmp`),
    /// listening: the sockets must not go to it. (Run as root, which can give the file to
    /// another user; as another user it says so and checks nothing.)
    #[test]
    fn another_users_socket_is_not_waited_on() {
        use std::os::unix::fs::MetadataExt;
        let path = temp("other.sock");
        let _ = std::fs::remove_file(&path);
        let _listener = std::os::unix::net::UnixListener::bind(&path).expect("bind");
        if std::os::unix::fs::lchown(&path, Some(65534), Some(65534)).is_err() {
            eprintln!("not root: a socket cannot be given to another user here; nothing checked");
            let _ = std::fs::remove_file(&path);
            return;
        }
        assert_eq!(std::fs::symlink_metadata(&path).expect("meta").uid(), 65534);
        assert_eq!(at_path(&path), AtPath::OtherUser(65534));
        let _ = std::fs::remove_file(&path);
    }
}
