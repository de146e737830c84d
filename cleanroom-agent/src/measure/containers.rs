//! Containers started through Docker while a run goes, measured as part of the run.
//!
//! The engine's event stream is read on a thread of its own from before the command starts, so
//! every container the command creates is seen. When one starts, the thread asks the engine for
//! its main process and reads that process's v2 cgroup at once (a container that ends quickly
//! is still found); the run then counts that cgroup's subtree in its totals, marks it as the
//! run's in the kernel (its processes and connections are the run's), and measures it apart for
//! the report's `containers`. The kernel counts every cgroup from its making, so nothing the
//! container did before it was found is lost.

use std::{
    collections::BTreeMap,
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    time::{SystemTime, UNIX_EPOCH},
};

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::{
    Error,
    cgroupfs::cgroup::Target,
    docker::{
        client::{self, DockerError, Stream},
        events::{self, Action, ContainerEvent, ContainerId},
    },
    judge::verdict::{Event, EventKind},
    kernel::probe::{Drops, Probes},
    measure::{
        collect::Total,
        session::{End, Session, SessionOptions},
    },
    metric::AnyMetric,
};

/// One container the run started, in the report.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ContainerRecord {
    /// Its id (64 hexadecimal digits).
    pub id: String,
    /// Its name.
    pub name: String,
    /// Its image, as it was asked for.
    pub image: String,
    /// When it was created, ns since the run started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_ns: Option<u64>,
    /// When its main process started, ns since the run started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_ns: Option<u64>,
    /// From created to running, ns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub startup_ns: Option<u64>,
    /// When a TCP socket of it first listened, ns since the run started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listening_ns: Option<u64>,
    /// From created to its first listening socket, ns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub startup_to_listen_ns: Option<u64>,
    /// When its main process ended, ns since the run started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_ns: Option<u64>,
    /// Its main process's exit code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// Its cgroup, relative to the v2 hierarchy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<String>,
    /// What the kernel counted for it, by metric name as the run's totals.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub totals: BTreeMap<String, Total>,
    /// Why it has no figures, when it has none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unmeasured: Option<String>,
}

impl ContainerRecord {
    /// A value of its totals (a count, bytes or ns), if it was measured.
    pub fn value(&self, name: &str) -> Option<u64> {
        match self.totals.get(name)? {
            Total::Value(v) => Some(*v),
            Total::Latency(_) => None,
        }
    }

    /// Its start-up for people: created → running, and → listening when it listened.
    pub fn startup_text(&self) -> String {
        let human = crate::units::human_duration_ns;
        match (self.startup_ns, self.startup_to_listen_ns) {
            (Some(s), Some(l)) => format!("{} ({} to listen)", human(s), human(l)),
            (Some(s), None) => human(s),
            (None, _) => "-".into(),
        }
    }

    /// How long its main process ran, ns, when both ends were seen.
    pub fn lifetime_ns(&self) -> Option<u64> {
        Some(self.ended_ns?.saturating_sub(self.started_ns?))
    }
}

/// What the event thread hands over.
#[derive(Debug)]
pub enum Notice {
    /// A container event; for a start, the container's v2 cgroup as its main process had it
    /// (relative to the hierarchy), or why it could not be found.
    Event(ContainerEvent, Option<Result<String, String>>),
    /// The stream failed: nothing more will come.
    Failed(String),
}

/// A container being followed.
struct Followed {
    record: ContainerRecord,
    /// Measuring its cgroup, once found.
    session: Option<Session>,
}

/// Following the containers of one run.
pub struct ContainerWatch {
    notices: mpsc::UnboundedReceiver<Notice>,
    stopper: UnixStream,
    thread: Option<std::thread::JoinHandle<()>>,
    v2_mount: PathBuf,
    /// The run's start, ns since the epoch (the engine's clock).
    run_start_ns: u64,
    followed: BTreeMap<ContainerId, Followed>,
    notes: Vec<String>,
}

/// CLOCK_REALTIME minus CLOCK_MONOTONIC, ns: what turns the kernel's times into the engine's.
fn epoch_minus_monotonic_ns() -> u64 {
    epoch_ns().saturating_sub(crate::measure::processes::monotonic_ns())
}

/// ns since the epoch, now.
fn epoch_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

impl ContainerWatch {
    /// Starts following the engine at `socket`: containers with every label of `labels`, from
    /// now on. `v2_mount` is where the v2 hierarchy is mounted.
    pub fn start(socket: &Path, labels: &[String], v2_mount: &Path) -> Result<Self, DockerError> {
        let mut stream = Stream::open(socket, &events::events_path(labels))?;
        let stopper = stream.stopper().map_err(|e| DockerError::Io {
            socket: socket.display().to_string(),
            source: e,
        })?;
        let (tx, notices) = mpsc::unbounded_channel();
        let socket = socket.to_owned();
        let thread = std::thread::Builder::new()
            .name("containers".into())
            .spawn(move || {
                while let Some(value) = stream.next_value() {
                    let notice = match value {
                        Ok(v) => match events::parse_event(&v) {
                            Some(event) => {
                                let cgroup = (event.action == Action::Start)
                                    .then(|| cgroup_of(&socket, &event.id));
                                Notice::Event(event, cgroup)
                            }
                            None => continue,
                        },
                        Err(e) => Notice::Failed(e.to_string()),
                    };
                    let failed = matches!(notice, Notice::Failed(_));
                    if tx.send(notice).is_err() || failed {
                        return;
                    }
                }
            })
            .map_err(|e| DockerError::Protocol(format!("starting the events thread: {e}")))?;
        Ok(Self {
            notices,
            stopper,
            thread: Some(thread),
            v2_mount: v2_mount.to_owned(),
            run_start_ns: epoch_ns(),
            followed: BTreeMap::new(),
            notes: Vec::new(),
        })
    }

    /// The next notice from the engine (for a `select!`); pending forever once the stream has
    /// ended.
    pub async fn next(&mut self) -> Notice {
        match self.notices.recv().await {
            Some(notice) => notice,
            None => std::future::pending().await,
        }
    }

    /// Takes in a notice: a started container's cgroup becomes part of `session` (the run's)
    /// and of run `run_id` in the kernel, and is measured apart with `options`. Returns the
    /// event worth recording and telling the user, if any.
    pub fn handle(
        &mut self,
        notice: Notice,
        probes: &mut Probes,
        run_id: u64,
        session: &mut Session,
        options: SessionOptions,
    ) -> Result<Option<Event>, Error> {
        let t_ns = session.elapsed_ns();
        let event_of = |subject: &str, message: String| Event {
            t_ns,
            kind: EventKind::Container,
            subject: subject.to_owned(),
            value: None,
            limit: None,
            message,
        };
        let (event, cgroup) = match notice {
            Notice::Event(event, cgroup) => (event, cgroup),
            Notice::Failed(why) => {
                let note =
                    format!("containers were followed until the engine's events failed: {why}");
                self.notes.push(note.clone());
                return Ok(Some(event_of("docker", note)));
            }
        };
        let since_run = event.time_ns.saturating_sub(self.run_start_ns);
        let followed = self
            .followed
            .entry(event.id.clone())
            .or_insert_with(|| Followed {
                record: ContainerRecord {
                    id: event.id.0.clone(),
                    name: event.name.clone(),
                    image: event.image.clone(),
                    created_ns: None,
                    started_ns: None,
                    startup_ns: None,
                    listening_ns: None,
                    startup_to_listen_ns: None,
                    ended_ns: None,
                    exit_code: None,
                    cgroup: None,
                    totals: BTreeMap::new(),
                    unmeasured: None,
                },
                session: None,
            });
        let record = &mut followed.record;
        match event.action {
            Action::Create => record.created_ns = Some(since_run),
            Action::Start => {
                record.started_ns = Some(since_run);
                record.startup_ns = record.created_ns.map(|c| since_run.saturating_sub(c));
                match cgroup {
                    Some(Ok(relative)) => {
                        let path = self.v2_mount.join(relative.trim_start_matches('/'));
                        match Target::at(&path) {
                            Ok(target) => {
                                probes.watch_in_run(target.id, run_id)?;
                                session.include(target.id);
                                record.cgroup = Some(relative);
                                followed.session =
                                    Some(Session::start(target, Vec::new(), options));
                                return Ok(Some(event_of(
                                    &event.name,
                                    format!(
                                        "container {} ({}) started: followed as part of the run",
                                        event.name, event.image
                                    ),
                                )));
                            }
                            Err(e) => {
                                record.unmeasured =
                                    Some(format!("its cgroup was gone when it was found: {e}"));
                            }
                        }
                    }
                    Some(Err(why)) => record.unmeasured = Some(why),
                    None => {}
                }
                if let Some(why) = &record.unmeasured {
                    return Ok(Some(event_of(
                        &event.name,
                        format!(
                            "container {} started but is not measured: {why}",
                            event.name
                        ),
                    )));
                }
            }
            Action::Die => {
                record.ended_ns = Some(since_run);
                record.exit_code = event.exit_code;
            }
            Action::Destroy => {}
        }
        Ok(None)
    }

    /// How many containers the run created (or started).
    pub fn count(&self) -> usize {
        self.followed.len()
    }

    /// Stops following and measures each container's subtree: call before the run's own
    /// session is finished (which forgets the subtrees in the probes' maps). `wall_time_ns` is
    /// the run's.
    pub fn finish(
        mut self,
        probes: &Probes,
        hook_unavailable: &std::collections::BTreeSet<AnyMetric>,
        drops: &Drops,
        wall_time_ns: u64,
    ) -> Result<(Vec<ContainerRecord>, Vec<String>), Error> {
        let _ = self.stopper.shutdown(std::net::Shutdown::Both);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        let mut records = Vec::new();
        for (_, followed) in std::mem::take(&mut self.followed) {
            let mut record = followed.record;
            if let Some(session) = followed.session {
                let target = session.target().clone();
                let mut ids: std::collections::BTreeSet<u64> = target
                    .subtree_ids()
                    .unwrap_or_default()
                    .into_iter()
                    .collect();
                ids.extend(probes.descendants(target.id)?);
                let counted = probes.counted(&ids)?;
                if let Some(listen) = probes.first_listen(&ids)? {
                    let since_run =
                        (listen + epoch_minus_monotonic_ns()).saturating_sub(self.run_start_ns);
                    record.listening_ns = Some(since_run);
                    record.startup_to_listen_ns = record
                        .created_ns
                        .map(|created| since_run.saturating_sub(created));
                }
                let lived = match (record.started_ns, record.ended_ns) {
                    (Some(s), Some(e)) => e.saturating_sub(s),
                    (Some(s), None) => wall_time_ns.saturating_sub(s),
                    _ => 0,
                };
                let figures = session.conclude(
                    counted,
                    hook_unavailable,
                    drops.clone(),
                    End {
                        wall_time_ns: lived,
                        max_rss_bytes: None,
                    },
                );
                record.totals = figures.totals;
            } else if record.unmeasured.is_none() {
                record.unmeasured = Some(if record.started_ns.is_none() {
                    "it was created but not started during the run".into()
                } else {
                    "its cgroup was not found".into()
                });
            }
            records.push(record);
        }
        records.sort_by_key(|r| (r.created_ns.or(r.started_ns), r.id.clone()));
        Ok((records, std::mem::take(&mut self.notes)))
    }
}

impl Drop for ContainerWatch {
    fn drop(&mut self) {
        let _ = self.stopper.shutdown(std::net::Shutdown::Both);
    }
}

/// A started container's v2 cgroup (relative to the hierarchy), from its main process's
/// `/proc/PID/cgroup`; or why it cannot be had.
fn cgroup_of(socket: &Path, id: &ContainerId) -> Result<String, String> {
    let inspection = client::get_json(socket, &format!("/containers/{}/json", id.0))
        .map_err(|e| format!("inspecting it failed: {e}"))?;
    let pid = events::main_pid(&inspection)
        .ok_or_else(|| "it had ended before it could be found".to_owned())?;
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .map_err(|e| format!("its process {pid} had ended before it could be found: {e}"))?;
    v2_line(&text).ok_or_else(|| format!("process {pid} is in no v2 cgroup"))
}

/// The v2 path of a `/proc/PID/cgroup` text (its `0::` line).
fn v2_line(text: &str) -> Option<String> {
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_v2_line_names_the_cgroup() {
        let text = "2:cpuacct:/docker/abc\n1:cpu:/docker/abc\n0::/docker/abc\n";
        assert_eq!(v2_line(text).as_deref(), Some("/docker/abc"));
        assert_eq!(v2_line("1:cpu:/x\n"), None);
    }
}
