//! Processes that leave a run's cgroup, and what the report says about them.
//!
//! A run is measured by its cgroup: a process that moves itself elsewhere (`echo $$ >
//! /sys/fs/cgroup/cgroup.procs`) takes everything it does afterwards out of the totals. The
//! kernel programs record each such process (see `cleanroom-ebpf/src/escape.rs`); this module
//! starts and ends the watch around a run and turns what was recorded into the report's
//! `escaped` list and notes. It never fails a run: what could not be watched is said in a note.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use crate::kernel::probe::{self, Drops, Escape, Probes};

/// A process that left the run's cgroup, as the report lists it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct EscapedProcess {
    /// The process id.
    pub pid: u32,
    /// The thread that left, when only one thread of the process did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thread: Option<u32>,
    /// Its name (`comm`) when it left.
    pub comm: String,
    /// `moved` (written into another cgroup's `cgroup.procs`) or `forked_into` (started in
    /// another cgroup with `clone3(CLONE_INTO_CGROUP)`).
    pub via: String,
    /// The v2 id of the cgroup it went to.
    pub to_cgroup_id: u64,
    /// That cgroup's path, when it still existed at the end of the run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_cgroup_path: Option<String>,
}

/// Watching one run's cgroup for processes that leave it.
#[derive(Debug)]
pub struct EscapeWatch {
    run_id: u64,
    /// Why leaving cannot be seen, when it cannot.
    unavailable: Option<String>,
}

impl EscapeWatch {
    /// Starts watching the run cgroup `run_cgroup_id`; call it before the command starts.
    pub fn start(probes: &mut Probes, run_cgroup_id: u64) -> Self {
        let unavailable = match probes.escapes_unavailable() {
            Some(why) => Some(why),
            None => probes.watch_run(run_cgroup_id).err().map(|e| e.to_string()),
        };
        if let Some(why) = &unavailable {
            log::warn!("processes leaving the run cgroup cannot be detected: {why}");
        }
        Self {
            run_id: run_cgroup_id,
            unavailable,
        }
    }

    /// Ends the watch: the processes that left, with their destination's path looked up under
    /// `v2_mount`, and the report's notes about them (also when leaving could not be seen, or
    /// `drops` says some may have gone unseen).
    pub fn finish(
        self,
        probes: &mut Probes,
        v2_mount: &Path,
        drops: &Drops,
    ) -> (Vec<EscapedProcess>, Vec<String>) {
        let mut unavailable = self.unavailable;
        let mut escapes = Vec::new();
        if unavailable.is_none() {
            match probes.escapes(self.run_id) {
                Ok(found) => escapes = found,
                Err(e) => unavailable = Some(e.to_string()),
            }
        }
        if let Err(e) = probes.unwatch_run(self.run_id) {
            log::warn!("could not stop watching run cgroup {}: {e}", self.run_id);
        }
        let paths = cgroup_paths(v2_mount, escapes.iter().map(|e| e.to_cgroup_id).collect());
        let escaped: Vec<EscapedProcess> = escapes
            .iter()
            .map(|e| escaped_process(e, paths.get(&e.to_cgroup_id)))
            .collect();
        let running: BTreeSet<u32> = escaped
            .iter()
            .map(|e| e.pid)
            .filter(|pid| still_running(*pid))
            .collect();
        let notes = notes(&escaped, &running, drops, unavailable.as_deref());
        (escaped, notes)
    }
}

fn escaped_process(e: &Escape, path: Option<&PathBuf>) -> EscapedProcess {
    EscapedProcess {
        pid: e.pid,
        thread: e.thread,
        comm: e.comm.clone(),
        via: if e.forked_into {
            "forked_into"
        } else {
            "moved"
        }
        .to_owned(),
        to_cgroup_id: e.to_cgroup_id,
        to_cgroup_path: path.map(|p| p.display().to_string()),
    }
}

/// The report's notes: one per process that left (`running`: those still alive at the end),
/// and one per way some may have left unseen.
pub fn notes(
    escaped: &[EscapedProcess],
    running: &BTreeSet<u32>,
    drops: &Drops,
    unavailable: Option<&str>,
) -> Vec<String> {
    let mut notes = Vec::new();
    if let Some(why) = unavailable {
        notes.push(format!(
            "processes leaving the run cgroup cannot be detected on this kernel: {why}"
        ));
    }
    for e in escaped {
        let who = match e.thread {
            Some(tid) => format!("thread {tid} of process {} ({})", e.pid, e.comm),
            None => format!("process {} ({})", e.pid, e.comm),
        };
        let to = match &e.to_cgroup_path {
            Some(path) => format!("{path} (id {})", e.to_cgroup_id),
            None => format!("a cgroup removed since (id {})", e.to_cgroup_id),
        };
        let mut note = if e.via == "forked_into" {
            format!(
                "{who} was started by the run straight into {to} (clone3 CLONE_INTO_CGROUP): \
                 nothing it did is counted"
            )
        } else {
            format!(
                "{who} left the run's cgroup for {to}: what it did after leaving is not counted"
            )
        };
        if running.contains(&e.pid) {
            note.push_str("; it was still running when the run ended");
        }
        notes.push(note);
    }
    let dropped = |name: &str| drops.get(name).copied().unwrap_or(0);
    let n = dropped(probe::ESCAPES_MAP_FULL);
    if n > 0 {
        notes.push(format!(
            "{n} more processes left the run's cgroup but could not be recorded \
             (dropped: {})",
            probe::ESCAPES_MAP_FULL
        ));
    }
    let n = dropped(probe::RUN_PROCS_MAP_FULL);
    if n > 0 {
        notes.push(format!(
            "{n} processes of the run could not be tracked (dropped: {}): had they left the \
             run's cgroup, it would not have been seen",
            probe::RUN_PROCS_MAP_FULL
        ));
    }
    let n = dropped(probe::WATCHED_MAP_FULL);
    if n > 0 {
        notes.push(format!(
            "{n} sub-cgroups of the run could not be marked as part of it (dropped: {}): a \
             process moving into one is reported as leaving the run",
            probe::WATCHED_MAP_FULL
        ));
    }
    notes
}

/// Paths of the cgroups `ids` that still exist under `v2_mount` (a cgroup v2 id is its
/// directory's inode number), found in one walk that stops once all are found.
pub fn cgroup_paths(v2_mount: &Path, mut ids: BTreeSet<u64>) -> BTreeMap<u64, PathBuf> {
    let mut found = BTreeMap::new();
    let mut pending = vec![v2_mount.to_path_buf()];
    while let Some(dir) = pending.pop() {
        if ids.is_empty() {
            break;
        }
        let Ok(meta) = fs::symlink_metadata(&dir) else {
            continue;
        };
        if ids.remove(&meta.ino()) {
            found.insert(meta.ino(), dir.clone());
        }
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        pending.extend(
            entries
                .flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .map(|e| e.path()),
        );
    }
    found
}

/// Whether process `pid` is alive (not gone, not a zombie).
fn still_running(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            // The state follows the command name, which is in parentheses and may hold any byte.
            let (_, rest) = stat.rsplit_once(')')?;
            rest.split_whitespace().next().map(|state| state != "Z")
        })
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shell(to_path: Option<&str>) -> EscapedProcess {
        EscapedProcess {
            pid: 1234,
            thread: None,
            comm: "sh".into(),
            via: "moved".into(),
            to_cgroup_id: 1,
            to_cgroup_path: to_path.map(str::to_owned),
        }
    }

    #[test]
    fn each_escape_gets_a_note_naming_pid_comm_and_destination() {
        let notes = notes(
            &[shell(Some("/sys/fs/cgroup"))],
            &BTreeSet::new(),
            &Drops::new(),
            None,
        );
        assert_eq!(
            notes,
            [
                "process 1234 (sh) left the run's cgroup for /sys/fs/cgroup (id 1): what it did \
              after leaving is not counted"
            ]
        );
        let notes = notes_of_one(shell(None), true);
        assert!(
            notes.contains("a cgroup removed since (id 1)") && notes.ends_with("ended"),
            "{notes}"
        );
        let mut forked = shell(Some("/x"));
        forked.via = "forked_into".into();
        assert!(notes_of_one(forked, false).contains("CLONE_INTO_CGROUP"));
        let mut thread = shell(Some("/x"));
        thread.thread = Some(1240);
        assert!(notes_of_one(thread, false).starts_with("thread 1240 of process 1234 (sh)"));
    }

    fn notes_of_one(e: EscapedProcess, running: bool) -> String {
        let running = if running {
            BTreeSet::from([e.pid])
        } else {
            BTreeSet::new()
        };
        let mut notes = notes(&[e], &running, &Drops::new(), None);
        assert_eq!(notes.len(), 1, "{notes:?}");
        notes.remove(0)
    }

    #[test]
    fn blind_spots_are_never_silent() {
        let notes = notes(
            &[],
            &BTreeSet::new(),
            &Drops::new(),
            Some("tp_btf/x: refused"),
        );
        assert_eq!(
            notes,
            [
                "processes leaving the run cgroup cannot be detected on this kernel: tp_btf/x: \
              refused"
            ]
        );
        let drops = Drops::from([
            (probe::ESCAPES_MAP_FULL, 2),
            (probe::RUN_PROCS_MAP_FULL, 3),
            (probe::WATCHED_MAP_FULL, 0),
            ("stats_map_full", 9),
        ]);
        let notes = notes_none(&drops);
        assert_eq!(notes.len(), 2, "{notes:?}");
        assert!(notes[0].starts_with("2 more processes left"), "{notes:?}");
        assert!(
            notes[1].starts_with("3 processes of the run could not"),
            "{notes:?}"
        );
        assert!(notes_none(&Drops::new()).is_empty());
    }

    fn notes_none(drops: &Drops) -> Vec<String> {
        notes(&[], &BTreeSet::new(), drops, None)
    }

    #[test]
    fn cgroup_paths_are_found_by_inode() {
        let root = tempfile::tempdir().unwrap();
        let deep = root.path().join("a/b/c");
        fs::create_dir_all(&deep).unwrap();
        let ino = |p: &Path| fs::metadata(p).unwrap().ino();
        let wanted = BTreeSet::from([ino(&deep), ino(root.path()), u64::MAX]);
        let found = cgroup_paths(root.path(), wanted);
        assert_eq!(
            found,
            BTreeMap::from([
                (ino(&deep), deep.clone()),
                (ino(root.path()), root.path().into())
            ])
        );
    }

    #[test]
    fn this_process_is_running() {
        assert!(still_running(std::process::id()));
        assert!(!still_running(u32::MAX));
    }
}
