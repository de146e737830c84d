//! Runs a shared store could not take, kept on this machine until it can: one JSON report a
//! file, in a private directory of each store (by a hash of its URL, the password left out),
//! written atomically. They are sent, oldest first, with the next run that reaches that
//! store, or by `cleanroom store flush`; a run sent twice is kept once (its `run_id`).
//!
//! Where: `$CLEANROOM_SPOOL`, else `$XDG_STATE_HOME/cleanroom/spool`, else
//! `~/.local/state/cleanroom/spool`.

use std::{
    hash::{Hash as _, Hasher as _},
    os::unix::fs::DirBuilderExt as _,
    path::{Path, PathBuf},
};

use super::{Store, StoreError, StoreLocation};
use crate::output::report::Report;

/// The largest spooled report read back.
const MAX_SPOOLED: u64 = 256 << 20;

/// The spool of `location`.
pub fn dir_for(location: &StoreLocation) -> PathBuf {
    let root = std::env::var_os("CLEANROOM_SPOOL")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("XDG_STATE_HOME").map(|d| Path::new(&d).join("cleanroom/spool"))
        })
        .or_else(|| {
            std::env::var_os("HOME").map(|h| Path::new(&h).join(".local/state/cleanroom/spool"))
        })
        .unwrap_or_else(|| PathBuf::from("/var/lib/cleanroom/spool"));
    // FNV-1a: stable across builds, unlike the standard library's hasher.
    let mut hash = Fnv(0xcbf2_9ce4_8422_2325);
    location.to_string().hash(&mut hash);
    root.join(format!("{:016x}", hash.finish()))
}

/// Keeps `report` for `location`; where it went.
pub fn put(location: &StoreLocation, report: &Report) -> Result<PathBuf, String> {
    let dir = dir_for(location);
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?;
    let run_id = report
        .run_id
        .clone()
        .unwrap_or_else(crate::output::report::new_run_id);
    // Named by start time first, so that a listing is oldest first.
    let path = dir.join(format!(
        "{}-{run_id}.json",
        report.started_at.replace([':', '-'], "")
    ));
    crate::output::render::write(&path, &crate::output::render::report_json(report))
        .map_err(|e| e.to_string())?;
    Ok(path)
}

/// The spooled runs of `location`, oldest first.
pub fn pending(location: &StoreLocation) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir_for(location))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    files
}

/// What a flush did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Flushed {
    /// Runs stored (or found stored already) and taken out of the spool.
    pub stored: usize,
    /// Files that are not reports, left where they are.
    pub unreadable: Vec<PathBuf>,
}

/// Sends the spooled runs of `store`'s location to it, oldest first, each taken out of the
/// spool once stored. A store error stops it (the rest stay for the next time).
pub fn flush(store: &mut Store) -> Result<Flushed, StoreError> {
    let mut flushed = Flushed::default();
    for path in pending(store.location()) {
        let report: Option<Report> =
            crate::files::read_bounded(&path, MAX_SPOOLED, "a spooled report")
                .ok()
                .and_then(|bytes| serde_json::from_slice(&bytes).ok());
        let Some(report) = report else {
            flushed.unreadable.push(path);
            continue;
        };
        store.insert(&report)?;
        let _ = std::fs::remove_file(&path);
        flushed.stored += 1;
    }
    Ok(flushed)
}

/// Says what a [`flush`] to `location` did, after a run was stored there: the runs it stored
/// too, or why the rest stay.
pub fn say_flushed(location: &StoreLocation, flushed: Result<Flushed, StoreError>) {
    match flushed {
        Ok(f) if f.stored > 0 => log::warn!(
            "{} spooled run(s) stored too, kept here while {location} was out of reach",
            f.stored
        ),
        Ok(_) => {}
        Err(e) => log::warn!("spooled runs stay spooled for the next time: {e}"),
    }
}

/// The 64-bit FNV-1a hash.
struct Fnv(u64);

impl std::hash::Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_store_has_its_own_spool_whatever_the_password() {
        let a = dir_for(&StoreLocation::Postgres("postgres://ci:one@db/x".into()));
        let b = dir_for(&StoreLocation::Postgres("postgres://ci:two@db/x".into()));
        let c = dir_for(&StoreLocation::Postgres("postgres://ci@db/y".into()));
        assert_eq!(a, b, "the password is not part of which store it is");
        assert_ne!(a, c);
    }
}
