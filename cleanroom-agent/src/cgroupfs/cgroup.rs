//! The cgroup tree: finding the v2 mount (pure or hybrid), creating and removing run cgroups,
//! ids, and the kernel's own figures in cgroupfs.
//!
//! Knows nothing of BPF. Readers take paths, so tests can point them at a fake tree.

use std::{
    fs, io,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    thread,
    time::{Duration, Instant},
};

use procfs::process::MountInfo;

/// Errors of the cgroup layer; each names the file it was about.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// No cgroup2 file system is mounted.
    #[error(
        "no cgroup v2 hierarchy is mounted; mount one with \
         `mount -t cgroup2 none /sys/fs/cgroup/unified` (or boot with the unified hierarchy)"
    )]
    NoUnifiedHierarchy,
    /// Reading the mount table failed.
    #[error("cannot read the mount table (/proc/self/mountinfo): {0}")]
    MountTable(String),
    /// A file or directory of the tree could not be read, written, made or removed.
    #[error("{action} {}: {source}", path.display())]
    Io {
        /// What was being done ("creating", "reading", ...).
        action: &'static str,
        /// The path it was done to.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// A cgroupfs file did not have the expected form.
    #[error("{}: unexpected content: {detail}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        detail: String,
    },
    /// `--cgroup-parent` names no directory of the cgroup v2 hierarchy.
    #[error(
        "--cgroup-parent {}: {why}; give a directory of the cgroup v2 hierarchy at {} \
         (an absolute path without `..`, e.g. {}/ci)",
        path.display(),
        mount.display(),
        mount.display()
    )]
    BadParent {
        /// As given.
        path: PathBuf,
        /// Where the v2 hierarchy is mounted.
        mount: PathBuf,
        /// What is wrong with it.
        why: &'static str,
    },
    /// The processes of a cgroup did not go away after SIGKILL.
    #[error("{} still holds processes {waited:?} after SIGKILL", path.display())]
    StillPopulated {
        /// The cgroup.
        path: PathBuf,
        /// How long we waited.
        waited: Duration,
    },
}

fn io_err<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> CgroupError + 'a {
    move |source| CgroupError::Io {
        action,
        path: path.to_owned(),
        source,
    }
}

/// How the host mounts its cgroups.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Layout {
    /// Pure v2: one hierarchy at `/sys/fs/cgroup` with every controller.
    Unified,
    /// v1 controllers, plus a v2 hierarchy (usually `/sys/fs/cgroup/unified`) with few or none.
    Hybrid,
}

/// The host's cgroup hierarchies as seen from this process's mount table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hierarchy {
    /// Where the v2 hierarchy is mounted.
    pub v2_mount: PathBuf,
    /// Pure v2 or hybrid.
    pub layout: Layout,
    /// v1 controllers and where each is mounted (empty on a pure v2 host).
    pub v1_controllers: Vec<(String, PathBuf)>,
}

/// v1 controller names we may find in a v1 mount's super options.
const V1_CONTROLLERS: &[&str] = &[
    "cpu",
    "cpuacct",
    "cpuset",
    "memory",
    "blkio",
    "pids",
    "devices",
    "freezer",
    "net_cls",
    "net_prio",
    "hugetlb",
    "perf_event",
    "rdma",
    "misc",
];

impl Hierarchy {
    /// Reads the mount table of this process.
    pub fn detect() -> Result<Self, CgroupError> {
        let mounts = procfs::process::Process::myself()
            .and_then(|me| me.mountinfo())
            .map_err(|e| CgroupError::MountTable(e.to_string()))?;
        Self::from_mounts(&mounts.0)
    }

    /// Pure: picks the v2 mount and lists the v1 controllers from mount table entries.
    pub fn from_mounts(mounts: &[MountInfo]) -> Result<Self, CgroupError> {
        let v2_mounts: Vec<&MountInfo> = mounts.iter().filter(|m| m.fs_type == "cgroup2").collect();
        // Prefer the conventional places, then whatever comes first.
        let v2 = ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"]
            .iter()
            .find_map(|p| v2_mounts.iter().find(|m| m.mount_point == Path::new(p)))
            .or_else(|| v2_mounts.first())
            .ok_or(CgroupError::NoUnifiedHierarchy)?;
        let v1_controllers: Vec<(String, PathBuf)> = mounts
            .iter()
            .filter(|m| m.fs_type == "cgroup")
            .flat_map(|m| {
                V1_CONTROLLERS
                    .iter()
                    .filter(|c| m.super_options.contains_key(**c))
                    .map(|c| ((*c).to_owned(), m.mount_point.clone()))
            })
            .collect();
        let layout = if v1_controllers.is_empty() {
            Layout::Unified
        } else {
            Layout::Hybrid
        };
        Ok(Self {
            v2_mount: v2.mount_point.clone(),
            layout,
            v1_controllers,
        })
    }

    /// Where the v1 hierarchy of `controller` is mounted, on a hybrid host.
    pub fn v1_mount(&self, controller: &str) -> Option<&Path> {
        self.v1_controllers
            .iter()
            .find(|(c, _)| c == controller)
            .map(|(_, p)| p.as_path())
    }

    /// Controllers enabled at the v2 root (`cgroup.controllers`).
    pub fn v2_controllers(&self) -> Vec<String> {
        fs::read_to_string(self.v2_mount.join("cgroup.controllers"))
            .map(|s| s.split_whitespace().map(str::to_owned).collect())
            .unwrap_or_default()
    }
}

/// Checks a requested parent for run cgroups before anything is made: an absolute path
/// without `..`, inside the v2 mount, whose nearest existing directory is on a cgroup2 file
/// system (not a v1 hierarchy, not `/etc`) even after symbolic links are resolved. Missing
/// directories below that one are made later, as cgroups.
pub fn check_parent(requested: &Path, hierarchy: &Hierarchy) -> Result<PathBuf, CgroupError> {
    let bad = |why| CgroupError::BadParent {
        path: requested.to_owned(),
        mount: hierarchy.v2_mount.clone(),
        why,
    };
    if !requested.is_absolute() {
        return Err(bad("not an absolute path"));
    }
    if requested
        .components()
        .any(|c| matches!(c, std::path::Component::ParentDir))
    {
        return Err(bad("`..` is not accepted"));
    }
    if !requested.starts_with(&hierarchy.v2_mount) {
        return Err(bad("not inside the cgroup v2 hierarchy"));
    }
    let existing = requested
        .ancestors()
        .find(|p| p.exists())
        .ok_or_else(|| bad("does not exist"))?;
    let real = existing
        .canonicalize()
        .map_err(|_| bad("cannot be resolved"))?;
    if !real.starts_with(&hierarchy.v2_mount) {
        return Err(bad("leads out of the cgroup v2 hierarchy"));
    }
    if !real.is_dir() {
        return Err(bad("not a directory"));
    }
    let on_cgroup2 = nix::sys::statfs::statfs(&real)
        .is_ok_and(|fs| fs.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC);
    if !on_cgroup2 {
        return Err(bad("not on a cgroup v2 file system"));
    }
    Ok(real.join(requested.strip_prefix(existing).unwrap_or(Path::new(""))))
}

/// The id of a v2 cgroup: the inode number of its directory, as `bpf_get_current_cgroup_id()`
/// reports it.
pub fn cgroup_id(path: &Path) -> Result<u64, CgroupError> {
    fs::metadata(path)
        .map(|m| m.ino())
        .map_err(io_err("reading", path))
}

/// Ids of `path` and of every cgroup below it, so that a run's totals include sub-cgroups its
/// command made.
pub fn subtree_ids(path: &Path) -> Result<Vec<u64>, CgroupError> {
    let mut ids = vec![cgroup_id(path)?];
    let mut pending = vec![path.to_owned()];
    while let Some(dir) = pending.pop() {
        for entry in fs::read_dir(&dir).map_err(io_err("listing", &dir))? {
            let entry = entry.map_err(io_err("listing", &dir))?;
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                let child = entry.path();
                ids.push(cgroup_id(&child)?);
                pending.push(child);
            }
        }
    }
    Ok(ids)
}

/// The kernel's CPU accounting of a v2 cgroup (`cpu.stat`), in microseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuStat {
    /// `usage_usec`: all CPU time of the cgroup's tasks.
    pub usage_usec: u64,
    /// `user_usec`.
    pub user_usec: u64,
    /// `system_usec`.
    pub system_usec: u64,
}

impl CpuStat {
    /// Reads `cpu.stat` of the cgroup at `path`.
    pub fn read(path: &Path) -> Result<Self, CgroupError> {
        let file = path.join("cpu.stat");
        let text = fs::read_to_string(&file).map_err(io_err("reading", &file))?;
        Self::parse(&text).map_err(|detail| CgroupError::Parse { path: file, detail })
    }

    /// Pure: parses the flat-keyed `cpu.stat` text.
    pub fn parse(text: &str) -> Result<Self, String> {
        let value = |key: &str| -> Result<u64, String> {
            flat_keyed(text, key).ok_or_else(|| format!("no numeric `{key}` line"))
        };
        Ok(Self {
            usage_usec: value("usage_usec")?,
            user_usec: value("user_usec")?,
            system_usec: value("system_usec")?,
        })
    }
}

/// Pure: the value of `key` in a flat-keyed cgroupfs file (`key value` per line).
pub fn flat_keyed(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let mut parts = line.split_whitespace();
        (parts.next() == Some(key))
            .then(|| parts.next()?.parse().ok())
            .flatten()
    })
}

/// A cgroup this process made for one run, with its v1 memory twin on a hybrid host. Dropping it
/// kills what is left in it and removes it.
#[derive(Debug)]
pub struct RunCgroup {
    path: PathBuf,
    id: u64,
    /// v1 twins on a hybrid host: controller → directory.
    v1: Vec<(String, PathBuf)>,
    removed: bool,
    /// Removes the directories if this process dies first; dropped after they are removed.
    watchdog: Option<crate::cgroupfs::watchdog::Watchdog>,
}

/// A cgroup to measure, whoever made it: where its v2 directory is, its id, and on a hybrid host
/// the v1 memory cgroup that holds the same processes. It only reads; it never makes, changes
/// or removes anything.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// Its v2 directory.
    pub path: PathBuf,
    /// Its v2 id, as the probes key their counts.
    pub id: u64,
    /// The v1 memory cgroup that accounts its memory, on a hybrid host.
    pub v1_memory: Option<PathBuf>,
}

impl Target {
    /// The v2 cgroup at `path`, measured by its v2 files alone.
    pub fn at(path: &Path) -> Result<Self, CgroupError> {
        Ok(Self {
            path: path.to_owned(),
            id: cgroup_id(path)?,
            v1_memory: None,
        })
    }

    /// The kernel's memory figures: v2 files where the memory controller is on, else the v1
    /// memory cgroup's. `None` when neither exists.
    pub fn memory(&self) -> Option<MemoryStat> {
        MemoryStat::read_v2(&self.path)
            .or_else(|| self.v1_memory.as_deref().and_then(MemoryStat::read_v1))
    }

    /// How many times the kernel's OOM killer killed a process here (v2 `memory.events` or v1
    /// `memory.oom_control`).
    pub fn oom_kills(&self) -> Option<u64> {
        let v2 = fs::read_to_string(self.path.join("memory.events")).ok();
        let v1 = self
            .v1_memory
            .as_ref()
            .and_then(|p| fs::read_to_string(p.join("memory.oom_control")).ok());
        v2.or(v1).and_then(|text| flat_keyed(&text, "oom_kill"))
    }

    /// The memory limit set on it (`memory.max`, or the v1 `memory.limit_in_bytes` of its
    /// memory cgroup), when there is one.
    pub fn memory_limit(&self) -> Option<u64> {
        let v2 = fs::read_to_string(self.path.join("memory.max")).ok();
        let v1 = || {
            let dir = self.v1_memory.as_ref()?;
            fs::read_to_string(dir.join("memory.limit_in_bytes")).ok()
        };
        // v1 says "no limit" with a huge number rounded to pages.
        v2.or_else(v1)
            .and_then(|t| t.trim().parse::<u64>().ok())
            .filter(|l| *l < (1 << 62))
    }

    /// The kernel's CPU accounting of the subtree (`cpu.stat`).
    pub fn cpu(&self) -> Result<CpuStat, CgroupError> {
        CpuStat::read(&self.path)
    }

    /// Ids of the cgroup and of every cgroup below it now.
    pub fn subtree_ids(&self) -> Result<Vec<u64>, CgroupError> {
        subtree_ids(&self.path)
    }

    /// Whether the kernel can charge buffered writes made here to this cgroup when they are
    /// written back (cgroup writeback: the memory and io controllers both on v2 for it).
    pub fn writeback_attributed(&self) -> bool {
        let controllers =
            fs::read_to_string(self.path.join("cgroup.controllers")).unwrap_or_default();
        ["memory", "io"]
            .iter()
            .all(|c| controllers.split_whitespace().any(|w| w == *c))
    }

    /// Storage I/O of the subtree's live threads ([`crate::cgroupfs::taskio`]).
    pub fn live_io(&self) -> crate::cgroupfs::taskio::TaskIo {
        crate::cgroupfs::taskio::live_threads(&subtree_pids(&self.path))
    }
}

/// Controllers a run cgroup asks its parent to delegate on a pure v2 host: io beside memory lets
/// the kernel charge buffered writes to the run when they are written back (cgroup writeback).
const V2_CONTROLLERS: &[&str] = &["memory", "pids", "cpu", "io"];

impl RunCgroup {
    /// Creates `parent/name` (and `parent` itself if needed). On a pure v2 host, enables the
    /// memory, pids and cpu controllers for it where the parent has them; on a hybrid host,
    /// also makes v1 twins (always memory, plus `v1_extra`) nested under this process's own v1
    /// cgroups, so that a supervisor's limits keep applying.
    pub fn create(
        parent: &Path,
        name: &str,
        hierarchy: &Hierarchy,
        v1_extra: &[&str],
    ) -> Result<Self, CgroupError> {
        fs::create_dir_all(parent).map_err(io_err("creating", parent))?;
        enable_controllers(parent);
        let path = parent.join(name);
        fs::create_dir(&path).map_err(io_err("creating", &path))?;
        let id = cgroup_id(&path)?;
        let mut run = Self {
            path,
            id,
            v1: Vec::new(),
            removed: false,
            watchdog: None,
        };
        for controller in std::iter::once("memory").chain(v1_extra.iter().copied()) {
            let Some(mount) = hierarchy.v1_mount(controller) else {
                continue;
            };
            if run.v1.iter().any(|(_, p)| p.starts_with(mount)) {
                continue; // co-mounted with one already made (cpu,cpuacct)
            }
            let own = own_v1_path(controller).unwrap_or_default();
            let twin = mount
                .join(own.trim_start_matches('/'))
                .join(format!("{V1_TWIN_PREFIX}{name}"));
            // On failure, Drop removes what was made so far.
            fs::create_dir(&twin).map_err(io_err("creating", &twin))?;
            run.v1.push((controller.to_owned(), twin));
        }
        Ok(run)
    }

    /// Every directory of the run: the v2 cgroup first, then any v1 twins.
    pub fn dirs(&self) -> Vec<PathBuf> {
        std::iter::once(self.path.clone())
            .chain(self.v1.iter().map(|(_, p)| p.clone()))
            .collect()
    }

    /// Hands the directories to a watchdog that removes them if this process dies first.
    pub fn guard(&mut self, watchdog: crate::cgroupfs::watchdog::Watchdog) {
        self.watchdog = Some(watchdog);
    }

    /// Every `cgroup.procs` the command must join before `exec`: the v2 cgroup and any v1 twin.
    pub fn procs_files(&self) -> Vec<PathBuf> {
        self.dirs()
            .into_iter()
            .map(|p| p.join("cgroup.procs"))
            .collect()
    }

    /// The v1 twin of `controller`, on a hybrid host.
    pub fn v1_twin(&self, controller: &str) -> Option<&Path> {
        self.v1
            .iter()
            .find(|(c, _)| c == controller)
            .map(|(_, p)| p.as_path())
    }

    /// The cgroup to measure: this one, read through its v1 memory twin where it has one.
    pub fn target(&self) -> Target {
        Target {
            path: self.path.clone(),
            id: self.id,
            v1_memory: self.v1_twin("memory").map(Path::to_owned),
        }
    }

    /// Where it is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Its v2 id.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Kills every process left in the subtree and waits until it is empty. Returns how many
    /// processes were found there.
    pub fn kill_all(&self, timeout: Duration) -> Result<usize, CgroupError> {
        kill_tree(&self.path, timeout)
    }

    /// The processes left in the subtree now: pid and command line (cut to 200 bytes).
    pub fn processes(&self) -> Vec<(i32, String)> {
        subtree_pids(&self.path)
            .into_iter()
            .map(|pid| (pid, command_line(pid)))
            .collect()
    }

    /// Sends `signal` to the processes of the subtree in process group `pgrp` — what a
    /// terminal would signal of the run: not daemons that made groups or sessions of their
    /// own. Returns how many were signalled.
    pub fn signal_group(&self, pgrp: i32, signal: i32) -> usize {
        let pids: Vec<i32> = subtree_pids(&self.path)
            .into_iter()
            .filter(|p| {
                nix::unistd::getpgid(Some(nix::unistd::Pid::from_raw(*p)))
                    .is_ok_and(|g| g.as_raw() == pgrp)
            })
            .collect();
        signal_each(&pids, signal)
    }

    /// Sends `signal` to every process of the subtree. Returns how many were signalled.
    pub fn signal_all(&self, signal: i32) -> usize {
        signal_each(&subtree_pids(&self.path), signal)
    }

    /// Kills what is left and removes the cgroup and any sub-cgroups, deepest first.
    pub fn remove(mut self) -> Result<(), CgroupError> {
        self.remove_inner()
    }

    fn remove_inner(&mut self) -> Result<(), CgroupError> {
        if self.removed {
            return Ok(());
        }
        kill_and_remove(&self.path, Duration::from_secs(10))?;
        for (_, twin) in &self.v1 {
            kill_and_remove(twin, Duration::from_secs(10))?;
        }
        self.removed = true;
        // Nothing left for the watchdog to do: let it go.
        self.watchdog = None;
        Ok(())
    }
}

impl Drop for RunCgroup {
    fn drop(&mut self) {
        if let Err(e) = self.remove_inner() {
            log::warn!("could not remove run cgroup: {e}");
        }
    }
}

/// Sends `signal` to each of `pids`; returns how many there were.
fn signal_each(pids: &[i32], signal: i32) -> usize {
    for pid in pids {
        // SAFETY: kill(2) has no memory-safety preconditions.
        unsafe { libc::kill(*pid, signal) };
    }
    pids.len()
}

/// Kills every process of the cgroup subtree at `dir` (v2 or v1) and waits until it is empty.
/// Returns how many processes were found there.
pub fn kill_tree(dir: &Path, timeout: Duration) -> Result<usize, CgroupError> {
    let started = Instant::now();
    let kill = dir.join("cgroup.kill");
    let mut found = 0;
    loop {
        let pids = subtree_pids(dir);
        if pids.is_empty() && !populated(dir)? {
            return Ok(found);
        }
        found = found.max(pids.len());
        if kill.exists() {
            fs::write(&kill, "1").map_err(io_err("writing", &kill))?;
        } else {
            // v1, or v2 before Linux 5.14: signal each process of the subtree ourselves.
            signal_each(&pids, libc::SIGKILL);
        }
        if started.elapsed() > timeout {
            return Err(CgroupError::StillPopulated {
                path: dir.to_owned(),
                waited: timeout,
            });
        }
        thread::sleep(Duration::from_millis(5));
    }
}

/// Whether a v2 cgroup still holds tasks (`cgroup.events`); a v1 cgroup, which has no such
/// file, is judged by its `cgroup.procs` alone.
fn populated(dir: &Path) -> Result<bool, CgroupError> {
    let file = dir.join("cgroup.events");
    match fs::read_to_string(&file) {
        Ok(text) => Ok(flat_keyed(&text, "populated").is_some_and(|v| v != 0)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(io_err("reading", &file)(e)),
    }
}

/// Kills what is left in the cgroup at `dir` and removes it and its sub-cgroups, deepest
/// first. A directory already gone is fine.
pub fn kill_and_remove(dir: &Path, timeout: Duration) -> Result<(), CgroupError> {
    if !dir.exists() {
        return Ok(());
    }
    kill_tree(dir, timeout)?;
    let mut dirs = vec![dir.to_owned()];
    let mut i = 0;
    while i < dirs.len() {
        if let Ok(entries) = fs::read_dir(&dirs[i]) {
            dirs.extend(
                entries
                    .flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.path()),
            );
        }
        i += 1;
    }
    for d in dirs.iter().rev() {
        remove_dir_retrying(d)?;
    }
    Ok(())
}

/// The command line of process `pid`, arguments joined by spaces and cut to 200 bytes; its
/// `comm` in brackets when the command line is empty or gone.
pub fn command_line(pid: i32) -> String {
    let raw = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let mut text: String = String::from_utf8_lossy(&raw)
        .trim_end_matches('\0')
        .replace('\0', " ");
    if text.is_empty() {
        let comm = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        text = format!("[{}]", comm.trim());
    }
    if text.len() > 200 {
        let mut cut = 200;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        text.push('…');
    }
    text
}

/// Prefix of a run's v1 twin directories (`cleanroom-run-<time>-<pid>`), so that they are told
/// apart from other tools' cgroups in a shared v1 hierarchy.
pub const V1_TWIN_PREFIX: &str = "cleanroom-";

/// Pure: the start time (Unix seconds) and owner pid in a run cgroup's name,
/// `run-<secs>-<pid>` (v2) or `cleanroom-run-<secs>-<pid>` (v1 twin), maybe followed by
/// `.<suffix>` (the agent's runs for its clients, `run-<secs>-<agent pid>.u<uid>.<n>`).
pub fn parse_run_name(name: &str) -> Option<(u64, i32)> {
    let rest = name.strip_prefix(V1_TWIN_PREFIX).unwrap_or(name);
    let (secs, pid) = rest.strip_prefix("run-")?.split_once('-')?;
    let pid = pid.split_once('.').map_or(pid, |(pid, _)| pid);
    Some((secs.parse().ok()?, pid.parse().ok()?))
}

/// Whether the Cleanroom process that made a run cgroup at `secs` with pid `pid` may still be
/// alive: a process `pid` exists and started no later than the cgroup was made (a later one
/// is an unrelated process that got the number again). When in doubt, alive.
pub fn owner_alive(pid: i32, secs: u64) -> bool {
    let Ok(process) = procfs::process::Process::new(pid) else {
        return false;
    };
    let Ok(stat) = process.stat() else {
        return !matches!(process.stat(), Err(procfs::ProcError::NotFound(_)));
    };
    let Ok(boot) = procfs::boot_time_secs() else {
        return true;
    };
    let started = boot + stat.starttime / procfs::ticks_per_second().max(1);
    started <= secs + 1
}

/// Run cgroups left behind by Cleanroom processes that are gone: `run-*` directories under
/// `parent` and `cleanroom-run-*` v1 twins beside where this process would make its own. Never
/// one whose owner may still be running.
pub fn stale_runs(parent: &Path, hierarchy: &Hierarchy) -> Vec<PathBuf> {
    let mut places = vec![parent.to_owned()];
    for controller in ["memory", "cpu", "pids"] {
        if let Some(mount) = hierarchy.v1_mount(controller) {
            let own = own_v1_path(controller).unwrap_or_default();
            let place = mount.join(own.trim_start_matches('/'));
            if !places.contains(&place) {
                places.push(place);
            }
        }
    }
    let mut stale = Vec::new();
    for place in places {
        let Ok(entries) = fs::read_dir(&place) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some((secs, pid)) = parse_run_name(&name.to_string_lossy()) else {
                continue;
            };
            if entry.file_type().is_ok_and(|t| t.is_dir()) && !owner_alive(pid, secs) {
                stale.push(entry.path());
            }
        }
    }
    stale
}

/// Memory of a cgroup as the kernel accounts it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemoryStat {
    /// Bytes charged now (`memory.current` / `memory.usage_in_bytes`).
    pub current_bytes: u64,
    /// Highest charge seen (`memory.peak` / `memory.max_usage_in_bytes`); `None` before 5.19 on v2.
    pub peak_bytes: Option<u64>,
    /// Page faults of the cgroup (`memory.stat` `pgfault` / v1 `total_pgfault`).
    pub pgfault: Option<u64>,
    /// Major page faults (`pgmajfault` / `total_pgmajfault`).
    pub pgmajfault: Option<u64>,
    /// Anonymous memory now (`anon` / v1 `total_rss`, which includes huge pages).
    pub anon_bytes: Option<u64>,
}

impl MemoryStat {
    /// v2 files of `path`, if the memory controller is enabled there.
    pub fn read_v2(path: &Path) -> Option<Self> {
        let current = read_u64(&path.join("memory.current"))?;
        let stat = fs::read_to_string(path.join("memory.stat")).unwrap_or_default();
        Some(Self {
            current_bytes: current,
            peak_bytes: read_u64(&path.join("memory.peak")),
            pgfault: flat_keyed(&stat, "pgfault"),
            pgmajfault: flat_keyed(&stat, "pgmajfault"),
            anon_bytes: flat_keyed(&stat, "anon"),
        })
    }

    /// v1 files of the memory cgroup at `path`.
    pub fn read_v1(path: &Path) -> Option<Self> {
        let stat = fs::read_to_string(path.join("memory.stat")).unwrap_or_default();
        Some(Self {
            current_bytes: read_u64(&path.join("memory.usage_in_bytes"))?,
            peak_bytes: read_u64(&path.join("memory.max_usage_in_bytes")),
            pgfault: flat_keyed(&stat, "total_pgfault"),
            pgmajfault: flat_keyed(&stat, "total_pgmajfault"),
            anon_bytes: flat_keyed(&stat, "total_rss"),
        })
    }
}

fn read_u64(path: &Path) -> Option<u64> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// On a pure v2 host, asks `parent` to delegate the controllers a run reads, where it has them.
/// Failure only costs those figures (they are then reported unavailable).
fn enable_controllers(parent: &Path) {
    let available = fs::read_to_string(parent.join("cgroup.controllers")).unwrap_or_default();
    let enabled = fs::read_to_string(parent.join("cgroup.subtree_control")).unwrap_or_default();
    for c in V2_CONTROLLERS {
        let has = |text: &str| text.split_whitespace().any(|w| w == *c);
        if has(&available)
            && !has(&enabled)
            && let Err(e) = fs::write(parent.join("cgroup.subtree_control"), format!("+{c}"))
        {
            log::warn!(
                "cannot enable the {c} controller in {}: {e}",
                parent.display()
            );
        }
    }
}

/// This process's cgroup path in the v1 hierarchy of `controller` (from /proc/self/cgroup).
pub fn own_v1_path(controller: &str) -> Option<String> {
    parse_own_v1_path(&fs::read_to_string("/proc/self/cgroup").ok()?, controller)
}

/// Pure: the path of `controller`'s line in a /proc/PID/cgroup text.
pub fn parse_own_v1_path(text: &str, controller: &str) -> Option<String> {
    text.lines().find_map(|line| {
        let mut parts = line.splitn(3, ':');
        let _id = parts.next()?;
        let controllers = parts.next()?;
        let path = parts.next()?;
        controllers
            .split(',')
            .any(|c| c == controller)
            .then(|| path.to_owned())
    })
}

/// rmdir can fail with EBUSY for a moment after the last task left; retry briefly.
fn remove_dir_retrying(dir: &Path) -> Result<(), CgroupError> {
    let started = Instant::now();
    loop {
        match fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && started.elapsed().as_secs() < 5 => {
                thread::sleep(Duration::from_millis(10));
            }
            Err(e) => return Err(io_err("removing", dir)(e)),
        }
    }
}

fn subtree_pids(path: &Path) -> Vec<i32> {
    let mut pids = Vec::new();
    let mut pending = vec![path.to_owned()];
    while let Some(dir) = pending.pop() {
        if let Ok(text) = fs::read_to_string(dir.join("cgroup.procs")) {
            pids.extend(text.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
        }
        if let Ok(entries) = fs::read_dir(&dir) {
            pending.extend(
                entries
                    .flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.path()),
            );
        }
    }
    pids
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mount(line: &str) -> MountInfo {
        MountInfo::from_line(line).expect("valid mountinfo line")
    }

    #[test]
    fn hybrid_host_uses_unified_mount_and_lists_v1_controllers() {
        let mounts = [
            mount("30 25 0:26 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755"),
            mount("31 30 0:27 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw"),
            mount("32 30 0:28 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory"),
            mount("33 30 0:29 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct"),
        ];
        let h = Hierarchy::from_mounts(&mounts).unwrap();
        assert_eq!(h.v2_mount, Path::new("/sys/fs/cgroup/unified"));
        assert_eq!(h.layout, Layout::Hybrid);
        let names: Vec<&str> = h.v1_controllers.iter().map(|(c, _)| c.as_str()).collect();
        assert_eq!(names, ["memory", "cpu", "cpuacct"]);
    }

    #[test]
    fn pure_v2_host() {
        let mounts = [mount(
            "31 25 0:27 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate",
        )];
        let h = Hierarchy::from_mounts(&mounts).unwrap();
        assert_eq!(h.v2_mount, Path::new("/sys/fs/cgroup"));
        assert_eq!(h.layout, Layout::Unified);
    }

    #[test]
    fn no_cgroup2_is_an_error() {
        let mounts = [mount(
            "32 30 0:28 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory",
        )];
        assert!(matches!(
            Hierarchy::from_mounts(&mounts),
            Err(CgroupError::NoUnifiedHierarchy)
        ));
    }

    #[test]
    fn cpu_stat_parses_and_rejects_missing_keys() {
        let text = "usage_usec 1500\nuser_usec 1000\nsystem_usec 500\nnr_periods 0\n";
        assert_eq!(
            CpuStat::parse(text).unwrap(),
            CpuStat {
                usage_usec: 1500,
                user_usec: 1000,
                system_usec: 500
            }
        );
        assert!(CpuStat::parse("user_usec 1\nsystem_usec 2\n").is_err());
    }

    #[test]
    fn own_v1_path_finds_the_controller_line() {
        let text = "9:name=systemd:/\n4:memory:/ci/job-1\n2:cpu,cpuacct:/x\n0::/\n";
        assert_eq!(
            parse_own_v1_path(text, "memory").as_deref(),
            Some("/ci/job-1")
        );
        assert_eq!(parse_own_v1_path(text, "cpuacct").as_deref(), Some("/x"));
        assert_eq!(parse_own_v1_path(text, "blkio"), None);
    }

    #[test]
    fn a_target_reads_its_v2_files_else_its_v1_memory_cgroup() {
        let v2 = tempfile::tempdir().unwrap();
        let v1 = tempfile::tempdir().unwrap();
        fs::write(v1.path().join("memory.usage_in_bytes"), "100\n").unwrap();
        fs::write(
            v1.path().join("memory.oom_control"),
            "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n",
        )
        .unwrap();
        let mut target = Target::at(v2.path()).unwrap();
        assert_eq!(target.id, fs::metadata(v2.path()).unwrap().ino());
        assert_eq!(target.subtree_ids().unwrap(), [target.id]);
        assert_eq!(
            (target.memory(), target.oom_kills()),
            (None, None),
            "no memory files, no memory figures"
        );
        assert!(!target.writeback_attributed());

        target.v1_memory = Some(v1.path().to_owned());
        assert_eq!(target.memory().map(|m| m.current_bytes), Some(100));
        assert_eq!(target.oom_kills(), Some(2));

        fs::write(v2.path().join("memory.current"), "4096\n").unwrap();
        fs::write(v2.path().join("memory.events"), "oom 1\noom_kill 1\n").unwrap();
        fs::write(v2.path().join("cgroup.controllers"), "cpu io memory pids\n").unwrap();
        assert_eq!(
            (target.memory().map(|m| m.current_bytes), target.oom_kills()),
            (Some(4096), Some(1)),
            "v2 files win over the v1 memory cgroup"
        );
        assert!(target.writeback_attributed());
    }

    #[test]
    fn memory_reads_v1_and_v2_files() {
        let v2 = tempfile::tempdir().unwrap();
        fs::write(v2.path().join("memory.current"), "4096\n").unwrap();
        fs::write(v2.path().join("memory.peak"), "8192\n").unwrap();
        fs::write(
            v2.path().join("memory.stat"),
            "anon 2048\nfile 1024\npgfault 12\npgmajfault 1\n",
        )
        .unwrap();
        let m = MemoryStat::read_v2(v2.path()).unwrap();
        assert_eq!(
            (
                m.current_bytes,
                m.peak_bytes,
                m.pgfault,
                m.pgmajfault,
                m.anon_bytes
            ),
            (4096, Some(8192), Some(12), Some(1), Some(2048))
        );
        assert!(
            MemoryStat::read_v1(v2.path()).is_none(),
            "v2 files are not v1 files"
        );

        let v1 = tempfile::tempdir().unwrap();
        fs::write(v1.path().join("memory.usage_in_bytes"), "100\n").unwrap();
        fs::write(v1.path().join("memory.max_usage_in_bytes"), "300\n").unwrap();
        fs::write(
            v1.path().join("memory.stat"),
            "rss 1\npgfault 1\ntotal_rss 64\ntotal_pgfault 5\ntotal_pgmajfault 2\n",
        )
        .unwrap();
        let m = MemoryStat::read_v1(v1.path()).unwrap();
        assert_eq!(
            (
                m.current_bytes,
                m.peak_bytes,
                m.pgfault,
                m.pgmajfault,
                m.anon_bytes
            ),
            (100, Some(300), Some(5), Some(2), Some(64))
        );
    }

    #[test]
    fn parents_outside_the_v2_hierarchy_are_refused() {
        let h = Hierarchy::detect().unwrap();
        let m = h.v2_mount.display().to_string();
        let mut cases = vec![
            ("/etc".to_owned(), "not inside"),
            ("relative/dir".to_owned(), "absolute"),
            (format!("{m}/../.."), "`..`"),
            (format!("{m}/x/../../etc"), "`..`"),
        ];
        if let Some(v1) = h.v1_mount("memory") {
            cases.push((v1.display().to_string(), "cgroup v2"));
        }
        for (path, why) in cases {
            let e = check_parent(Path::new(&path), &h).unwrap_err();
            assert!(e.to_string().contains(why), "{path}: {e}");
            assert!(
                e.to_string()
                    .contains("give a directory of the cgroup v2 hierarchy"),
                "{e}"
            );
        }
        let ok = check_parent(&h.v2_mount.join("cleanroom/ci"), &h).unwrap();
        assert!(ok.starts_with(&h.v2_mount), "{}", ok.display());
        assert!(check_parent(&h.v2_mount, &h).is_ok());
    }

    #[test]
    fn run_names_carry_their_owner() {
        assert_eq!(
            parse_run_name("run-1795869871-19434"),
            Some((1795869871, 19434))
        );
        assert_eq!(
            parse_run_name("cleanroom-run-1795869871-19434"),
            Some((1795869871, 19434))
        );
        assert_eq!(parse_run_name("run-x-1"), None);
        assert_eq!(parse_run_name("docker"), None);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        assert!(
            owner_alive(std::process::id() as i32, now),
            "this process is alive"
        );
        assert!(
            !owner_alive(std::process::id() as i32, 1),
            "a process started after the cgroup was made is not its owner"
        );
        assert!(!owner_alive(i32::MAX, now), "no such process");
    }

    #[test]
    fn subtree_ids_walks_a_directory_tree() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("a/b")).unwrap();
        fs::create_dir_all(dir.path().join("c")).unwrap();
        let ids = subtree_ids(dir.path()).unwrap();
        assert_eq!(ids.len(), 4, "root, a, a/b and c: {ids:?}");
        assert_eq!(ids[0], cgroup_id(dir.path()).unwrap());
    }
}
