//! The cache's records beside the disk tier, each written whole or not at all: the forwarding
//! headers' combinations (so that a purge after a restart finds the disk copies each keyed)
//! and, through [`write_whole`], the api endpoints' generations.

use std::collections::HashMap;
use std::time::Duration;

/// The record of the forwarding headers' combinations, in the disk tier's directory.
pub(super) const FORWARDING_FILE: &str = "forwarding.json";
/// How often the combinations are written when one came or went.
const FORWARDING_SAVE: Duration = Duration::from_secs(10);
/// How often the purge records are looked at for another process's purges.
const FOLLOW_RECORDS: Duration = Duration::from_secs(1);

/// The combinations a record kept; none when there is no record or it cannot be read (a purge
/// then misses the disk copies of the combinations no request has sent since).
pub(super) fn read_forwardings(f: &std::path::Path) -> HashMap<Box<str>, u64> {
    let read = match std::fs::read(f) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return HashMap::new(),
        Err(e) => {
            log::warn!("tile cache: cannot read {}: {e}", f.display());
            return HashMap::new();
        }
    };
    serde_json::from_slice(&read).unwrap_or_else(|e| {
        log::warn!(
            "tile cache: {} is damaged ({e}): a purge finds only the disk copies of forwarding headers sent from now on",
            f.display()
        );
        HashMap::new()
    })
}

/// Writes the forwarding headers' combinations beside the disk tier when one came or went
/// (the purge of a URL after a restart finds the disk copies each of them keyed). One write
/// at a time (the timer's and the exit's), each to a file of this process's own before its
/// rename; merged with what the record holds, so that two processes (a graceful upgrade) each
/// keep the other's. A write that fails is tried again at the next save.
pub fn save_forwardings() {
    static WRITING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let Some(c) = super::get() else { return };
    let Some(f) = &c.forwarding_file else { return };
    let _one = WRITING.lock().unwrap_or_else(|p| p.into_inner());
    let Some(mine) = c.forwarding.changed() else {
        return;
    };
    let all = super::forwarding::merged(read_forwardings(f), mine);
    let tmp = f.with_extension(format!("{}.tmp", std::process::id()));
    let written = serde_json::to_vec(&all)
        .map_err(std::io::Error::other)
        .and_then(|bytes| write_whole_via(f, &tmp, &bytes));
    if let Err(e) = written {
        c.forwarding.unsaved();
        let _ = std::fs::remove_file(&tmp);
        log::warn!("tile cache: cannot write {}: {e}", f.display());
    }
}

/// Keeps the records beside the disk tier, on `background`: writes the forwarding headers'
/// combinations every [`FORWARDING_SAVE`] when one came or went (the process's exit writes
/// them too: [`save_forwardings`]), and takes in each second the purges another process
/// recorded (see [`super::generations::Generations::follow_record`]).
pub fn keep_records(background: &tokio::runtime::Handle) {
    if super::get().is_none_or(|c| c.forwarding_file.is_none()) {
        return;
    }
    background.spawn(async {
        let mut every = tokio::time::interval(FOLLOW_RECORDS);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let saves = (FORWARDING_SAVE.as_secs() / FOLLOW_RECORDS.as_secs()).max(1);
        for tick in 1u64.. {
            every.tick().await;
            let save = tick % saves == 0;
            let _ = tokio::task::spawn_blocking(move || {
                if let Some(c) = super::get() {
                    let remade = c.store.disk.as_ref().is_some_and(|d| d.made_again());
                    if let Some((dir, _)) = &c.options.disk {
                        // The purge records themselves removed while running (the directory
                        // emptied by hand: its secret, made again at once, escaped the removal,
                        // the records written after it did not), written again from what this
                        // process knows: the next start took the tier's tiles for ones of
                        // unknown purges, or, without the marker, for an earlier version's.
                        // (A process that handed its sockets over leaves the directory to the
                        // new one, as `made_again` does.)
                        let gone = !crate::listener::handed_over() && records_gone(dir);
                        if remade || gone {
                            c.endpoints.record_again();
                            c.prefixes.record_again();
                            mark_kept(dir);
                        }
                        if gone && !remade && !records_gone(dir) {
                            log::warn!(
                                "tile cache directory {}: its purge records were removed while \
                                 running; written again",
                                dir.display()
                            );
                        }
                    }
                    if remade {
                        c.forwarding.unsaved();
                    }
                    c.endpoints.follow_record();
                    c.prefixes.follow_record();
                }
                if save {
                    save_forwardings();
                }
            })
            .await;
        }
    });
}

/// Whether a purge record or the marker that says both are kept is missing from `dir`.
fn records_gone(dir: &std::path::Path) -> bool {
    ["generations.json", "prefixes.json", super::RECORDS_KEPT]
        .iter()
        .any(|f| {
            matches!(std::fs::symlink_metadata(dir.join(f)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound)
        })
}

/// Writes the marker that says both purge records are kept in `dir` (after them).
pub(super) fn mark_kept(dir: &std::path::Path) {
    let marker = dir.join(super::RECORDS_KEPT);
    if let Err(e) = write_whole(&marker, b"generations.json prefixes.json\n") {
        log::warn!("tile cache: cannot write {}: {e}", marker.display());
    }
}

/// Writes a file whole or not at all (a crash midway leaves the one before): a file beside it,
/// of this process's own (two processes of a graceful upgrade writing at once through one
/// such file could rename a mix of both), synced, then renamed into its place.
pub(super) fn write_whole(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension(format!("{}.tmp", std::process::id()));
    let written = write_whole_via(path, &tmp, bytes);
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// [`write_whole`] through the file `tmp`.
fn write_whole_via(
    path: &std::path::Path,
    tmp: &std::path::Path,
    bytes: &[u8],
) -> std::io::Result<()> {
    use std::io::Write;
    let mut f = std::fs::File::create(tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(tmp, path)?;
    // The rename itself survives a power loss once the directory is synced.
    match path.parent() {
        Some(dir) => std::fs::File::open(dir)?.sync_all(),
        None => Ok(()),
    }
}
