//! The tier's files: an object's bytes (a header with its key, lengths and checksum, then its
//! metadata and body), the names they go by, and the directory's key hash secret.

use std::io::Write;
use std::path::Path;

use bytes::Bytes;
use pingora_cache::key::HashBinary;
use pingora_cache::CacheMeta;

use super::super::{Object, StoredMeta};
use super::SECRET_FILE;

pub(super) const MAGIC: &[u8; 4] = b"TGC1";
/// magic, key, three lengths, checksum.
pub(super) const HEAD: usize = 4 + 16 + 4 + 4 + 8 + 4;
/// What a file of `len` bytes takes of the budget: the blocks it fills (a file system gives
/// each file whole blocks, 4 KiB on most; a tile of 300 bytes takes one).
pub(super) fn on_disk(len: u64) -> u64 {
    len.max(1).next_multiple_of(4096)
}

pub(super) fn hex(key: &HashBinary) -> String {
    crate::wire::hex(key)
}

/// Whether `s` is two lowercase hex digits (a shard's name).
pub(super) fn is_shard_name(s: &str) -> bool {
    s.len() == 2 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

pub(super) fn unhex(name: &str) -> Option<HashBinary> {
    if name.len() != 32 {
        return None;
    }
    let mut out = [0u8; 16];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(name.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// The bytes of an object file.
pub(super) fn encode(obj: &Object) -> pingora_core::Result<Vec<u8>> {
    let (internal, header) = obj.meta.to_meta()?.serialize()?;
    let mut out = Vec::with_capacity(HEAD + internal.len() + header.len() + obj.body.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&obj.key);
    out.extend_from_slice(&(internal.len() as u32).to_le_bytes());
    out.extend_from_slice(&(header.len() as u32).to_le_bytes());
    out.extend_from_slice(&(obj.body.len() as u64).to_le_bytes());
    let mut crc = crc32fast::Hasher::new();
    crc.update(&internal);
    crc.update(&header);
    crc.update(&obj.body);
    out.extend_from_slice(&crc.finalize().to_le_bytes());
    out.extend_from_slice(&internal);
    out.extend_from_slice(&header);
    out.extend_from_slice(&obj.body);
    Ok(out)
}

/// An object from file bytes, when they are whole and for `key`.
pub(super) fn decode(key: &HashBinary, bytes: Vec<u8>) -> Option<Object> {
    if bytes.len() < HEAD || &bytes[..4] != MAGIC || bytes[4..20] != key[..] {
        return None;
    }
    let u32_at = |i: usize| {
        bytes
            .get(i..i + 4)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_le_bytes)
    };
    let internal_len = u32_at(20)? as usize;
    let header_len = u32_at(24)? as usize;
    let body_len = usize::try_from(u64::from_le_bytes(bytes.get(28..36)?.try_into().ok()?)).ok()?;
    let crc = u32_at(36)?;
    if bytes.len()
        != HEAD
            .checked_add(internal_len)?
            .checked_add(header_len)?
            .checked_add(body_len)?
    {
        return None;
    }
    let rest = &bytes[HEAD..];
    if crc32fast::hash(rest) != crc {
        return None;
    }
    let (internal, rest) = rest.split_at(internal_len);
    let (header, body) = rest.split_at(header_len);
    let meta = CacheMeta::deserialize(internal, header).ok()?;
    let body = Bytes::copy_from_slice(body);
    Some(Object::new(*key, StoredMeta::from_meta(&meta), body))
}

/// The bytes of the object file at `path`, or `None` when its head's lengths do not add up
/// to the file's size, or to more than `largest` (damaged, or grown by hand: read as damaged
/// without being read into memory — a file grown to a gigabyte was read whole, and the
/// gateway's memory grew by it and stayed). Anything else there (a FIFO, whose open would
/// wait for a writer and hold one of the tier's I/O slots for ever; a directory) cannot be
/// read.
pub(super) fn read_regular(path: &Path, largest: u64) -> std::io::Result<Option<Vec<u8>>> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    let meta = f.metadata()?;
    if !meta.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{} is not a regular file", path.display()),
        ));
    }
    // Its head first: the rest is read only when the lengths it gives are the file's.
    // (A file written meanwhile is a new one, renamed into place: this one stays as it was.)
    let size = meta.len();
    let mut head = [0u8; HEAD];
    let mut f = f;
    match f.read_exact(&mut head) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    if size > largest || written_length(&head) != Some(size) {
        return Ok(None);
    }
    let mut bytes = Vec::with_capacity(size as usize);
    bytes.extend_from_slice(&head);
    f.take(size - HEAD as u64).read_to_end(&mut bytes)?;
    Ok(Some(bytes).filter(|b| b.len() as u64 == size))
}

/// The length the head of object file `bytes` says the file has.
fn written_length(bytes: &[u8]) -> Option<u64> {
    let u32_at = |i: usize| {
        bytes
            .get(i..i + 4)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_le_bytes)
    };
    let body = u64::from_le_bytes(bytes.get(28..36)?.try_into().ok()?);
    (HEAD as u64)
        .checked_add(u64::from(u32_at(20)?))?
        .checked_add(u64::from(u32_at(24)?))?
        .checked_add(body)
}

/// Puts `secret` in place as the directory's, whole or not at all: written aside under a name
/// of this process's own (two gateways starting on a new directory at once each write one),
/// then linked where there was none, so that when another process's secret got there first
/// this one is dropped (false) and that one used; `damaged`: the one there is moved away
/// first.
pub(super) fn place_secret(dir: &Path, secret: &[u8; 16], damaged: bool) -> std::io::Result<bool> {
    let path = dir.join(SECRET_FILE);
    let aside = dir.join(format!(
        "{SECRET_FILE}.{}.{}",
        std::process::id(),
        fastrand::u32(..)
    ));
    let placed = (|| -> std::io::Result<bool> {
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&aside)?;
        f.write_all(secret)?;
        f.sync_all()?;
        if damaged {
            // Out of the way, then linked as where there was none (a process starting beside
            // this one may have put its own in place meanwhile: then that one is used).
            match std::fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        match std::fs::hard_link(&aside, &path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
            // A file system without hard links: renamed (no other process's to keep).
            Err(e)
                if e.kind() == std::io::ErrorKind::Unsupported
                    || matches!(e.raw_os_error(), Some(libc::EPERM | libc::EOPNOTSUPP)) =>
            {
                std::fs::rename(&aside, &path).map(|()| true)
            }
            Err(e) => Err(e),
        }
    })();
    let _ = std::fs::remove_file(&aside);
    placed
}

/// The directory's secret, and whether it was made now (none was there, or none whole).
pub(super) fn secret_of(dir: &Path) -> std::io::Result<([u8; 16], bool)> {
    let path = dir.join(SECRET_FILE);
    let context =
        |e: std::io::Error| std::io::Error::new(e.kind(), format!("{}: {e}", path.display()));
    let damaged = match std::fs::read(&path) {
        Ok(bytes) => {
            if let Ok(secret) = <[u8; 16]>::try_from(&bytes[..]) {
                return Ok((secret, false));
            }
            log::warn!(
                "{}: not a key hash secret; a new one is made",
                path.display()
            );
            true
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) => return Err(context(e)),
    };
    let secret = crate::cache::key::new_secret()?;
    let placed = place_secret(dir, &secret, damaged);
    if placed.map_err(context)? {
        return Ok((secret, true));
    }
    let bytes = std::fs::read(&path).map_err(context)?;
    let secret = <[u8; 16]>::try_from(&bytes[..]).map_err(|_| {
        context(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "another process's key hash secret is not whole",
        ))
    })?;
    Ok((secret, false))
}
