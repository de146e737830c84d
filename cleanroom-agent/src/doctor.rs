//! `cleanroom doctor`: what this host offers (privileges, BTF, cgroup layout, mounts, hooks) and
//! therefore which metrics Cleanroom can measure here.

use std::{fmt::Write as _, fs::File, path::Path};

use crate::{
    cgroupfs::cgroup::{Hierarchy, Layout},
    host,
    kernel::btf::{Offsets, VMLINUX_BTF},
    kernel::probe::Probes,
    metric::{AnyMetric, Metric},
};

/// How a check came out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// Fine.
    Ok,
    /// Works, with a limitation worth knowing.
    Note,
    /// Cleanroom cannot run (or cannot measure something) because of this.
    Fail,
}

/// One line of the diagnosis.
#[derive(Clone, Debug)]
pub struct Check {
    /// What was checked.
    pub name: &'static str,
    /// Result.
    pub status: Status,
    /// What was found, and what to do about it.
    pub detail: String,
}

/// Everything `doctor` found.
#[derive(Clone, Debug, Default)]
pub struct Diagnosis {
    /// Host checks.
    pub checks: Vec<Check>,
    /// Each metric with `None` if measurable, or why not.
    pub metrics: Vec<(AnyMetric, Option<String>)>,
}

impl Diagnosis {
    /// Whether Cleanroom can run at all on this host.
    pub fn can_run(&self) -> bool {
        self.checks.iter().all(|c| c.status != Status::Fail)
    }

    /// The text `doctor` prints.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let mark = |s: Status| match s {
            Status::Ok => "ok  ",
            Status::Note => "note",
            Status::Fail => "FAIL",
        };
        for c in &self.checks {
            let _ = writeln!(out, "[{}] {:<14} {}", mark(c.status), c.name, c.detail);
        }
        let _ = writeln!(out, "\nmetrics:");
        for (metric, why) in &self.metrics {
            match why {
                None => {
                    let _ = writeln!(out, "  {:<30} available", metric.name());
                }
                Some(why) => {
                    let _ = writeln!(out, "  {:<30} UNAVAILABLE: {why}", metric.name());
                }
            }
        }
        let _ = writeln!(
            out,
            "\n{}",
            if self.can_run() {
                "cleanroom can run on this host."
            } else {
                "cleanroom cannot run on this host: fix the FAIL lines above."
            }
        );
        out
    }
}

/// Examines this host. Loads and attaches the probes when it has the privileges to.
pub fn diagnose() -> Diagnosis {
    let mut d = Diagnosis::default();
    let mut check = |name, status, detail: String| {
        d.checks.push(Check {
            name,
            status,
            detail,
        })
    };

    let missing = host::missing_caps();
    let privileged = missing.is_empty();
    if privileged {
        check(
            "privileges",
            Status::Ok,
            "root or CAP_SYS_ADMIN+CAP_BPF+CAP_PERFMON".into(),
        );
    } else {
        let socket = crate::agent::protocol::socket_path();
        match crate::agent::protocol::hello(&socket) {
            Ok(peer) => {
                check(
                    "privileges",
                    Status::Note,
                    format!(
                        "missing {}: `cleanroom run` measures through the agent",
                        missing.join(", ")
                    ),
                );
                check(
                    "agent",
                    Status::Ok,
                    format!(
                        "{} answers (you are uid {}): unprivileged runs go through it",
                        socket.display(),
                        peer.uid
                    ),
                );
            }
            Err(why) => {
                check(
                    "privileges",
                    Status::Fail,
                    format!(
                        "missing {}; run as root, or start `cleanroom agent` and use its socket",
                        missing.join(", ")
                    ),
                );
                check("agent", Status::Fail, format!("not reachable: {why}"));
            }
        }
    }
    check("kernel", Status::Ok, host::kernel_release());

    match Offsets::from_file(Path::new(VMLINUX_BTF)) {
        Ok(o) => {
            // A member of the other kernel generation's layout is expected to be absent.
            let missing: Vec<&str> = o
                .entries
                .iter()
                .filter(|(g, _)| !cleanroom_common::LAYOUT_ALTERNATIVES.contains(g))
                .filter_map(|(_, r)| r.as_ref().err().map(String::as_str))
                .collect();
            let resolved = o.entries.iter().filter(|(_, r)| r.is_ok()).count();
            check(
                "BTF",
                if missing.is_empty() {
                    Status::Ok
                } else {
                    Status::Note
                },
                format!(
                    "{VMLINUX_BTF}: {} of {} struct offsets resolved{}",
                    resolved,
                    resolved + missing.len(),
                    if missing.is_empty() {
                        String::new()
                    } else {
                        format!(" (missing: {})", missing.join("; "))
                    }
                ),
            );
        }
        Err(e) => check("BTF", Status::Fail, e.to_string()),
    }

    let hierarchy = Hierarchy::detect();
    let mut memory_note: Option<String> = None;
    let mut no_peak = false;
    match &hierarchy {
        Ok(h) => {
            let controllers = h.v2_controllers();
            let detail = match h.layout {
                Layout::Unified => format!(
                    "pure v2 at {} (controllers: {})",
                    h.v2_mount.display(),
                    controllers.join(" ")
                ),
                Layout::Hybrid => format!(
                    "hybrid: v2 at {} (controllers: {}), v1: {}",
                    h.v2_mount.display(),
                    if controllers.is_empty() {
                        "none".into()
                    } else {
                        controllers.join(" ")
                    },
                    h.v1_controllers
                        .iter()
                        .map(|(c, _)| c.as_str())
                        .collect::<Vec<_>>()
                        .join(" ")
                ),
            };
            check("cgroups", Status::Ok, detail);
            let v2_memory = controllers.iter().any(|c| c == "memory");
            let memory = if v2_memory && host::release_at_least(&host::kernel_release(), (5, 19)) {
                (
                    Status::Ok,
                    "v2 memory controller: memory.peak / memory.current".to_owned(),
                )
            } else if v2_memory {
                no_peak = true;
                (
                    Status::Note,
                    "v2 memory controller without memory.peak (before 5.19): memory_peak_bytes is \
                     unavailable; process_peak_rss_bytes and the sampled memory_current_bytes are \
                     measured"
                        .to_owned(),
                )
            } else if let Some(mount) = h.v1_mount("memory") {
                (
                    Status::Ok,
                    format!(
                        "v1 memory controller at {}: runs get a v1 twin",
                        mount.display()
                    ),
                )
            } else {
                memory_note = Some("no memory controller; peak falls back to getrusage".into());
                (
                    Status::Note,
                    "no memory controller: peak RSS of the largest process only".into(),
                )
            };
            check("memory", memory.0, memory.1);
            let stale = crate::cgroupfs::cgroup::stale_runs(&h.v2_mount.join("cleanroom"), h);
            if stale.is_empty() {
                check(
                    "stale runs",
                    Status::Ok,
                    "no run cgroups left by cleanroom processes that are gone".into(),
                );
            } else {
                check(
                    "stale runs",
                    Status::Note,
                    format!(
                        "{} run cgroup(s) left by cleanroom processes that are gone (the next \
                         `cleanroom run` removes them): {}",
                        stale.len(),
                        stale
                            .iter()
                            .map(|p| p.display().to_string())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                );
            }
        }
        Err(e) => check("cgroups", Status::Fail, e.to_string()),
    }

    let tracefs = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"]
        .iter()
        .any(|p| host::mounted(Path::new(p), "tracefs"));
    check(
        "tracefs",
        Status::Ok,
        format!(
            "{}; not needed (every hook is a BTF tracepoint)",
            if tracefs { "mounted" } else { "not mounted" }
        ),
    );
    let bpffs = host::mounted(Path::new("/sys/fs/bpf"), "bpf");
    check(
        "bpffs",
        Status::Ok,
        format!(
            "{}; not needed (nothing is pinned)",
            if bpffs {
                "mounted at /sys/fs/bpf"
            } else {
                "not mounted"
            }
        ),
    );

    let mut hook_errors: Vec<(AnyMetric, String)> = Vec::new();
    if no_peak {
        hook_errors.push((
            AnyMetric::Value(Metric::MemoryPeakBytes),
            "this kernel keeps no memory.peak for a cgroup (cgroup v2 before Linux 5.19)".into(),
        ));
    }
    if memory_note.is_some() {
        hook_errors.push((
            AnyMetric::Value(Metric::MemoryCurrentBytes),
            "no memory controller on this host".into(),
        ));
    }
    if !Probes::object_embedded() {
        check(
            "BPF object",
            Status::Fail,
            "not embedded in this binary; build it with `cargo xtask build`".into(),
        );
    } else if !privileged {
        check(
            "BPF object",
            Status::Note,
            "embedded; not loaded (needs root)".into(),
        );
        hook_errors.extend(AnyMetric::all().map(|m| (m, "not checked without root".into())));
    } else {
        let root = hierarchy
            .as_ref()
            .ok()
            .and_then(|h| File::open(&h.v2_mount).ok());
        match Probes::load(root.as_ref()) {
            Ok(probes) => {
                let attached = probes.status().iter().filter(|s| s.error.is_none()).count();
                let wanted = probes.status().len();
                check(
                    "BPF object",
                    if attached == wanted {
                        Status::Ok
                    } else {
                        Status::Note
                    },
                    format!(
                        "loaded; {attached} of {wanted} hooks attached{}",
                        if probes.runq_from_sched_info() {
                            " (run-queue latency from the kernel's sched_info: the wakeup \
                             hooks are not needed)"
                        } else {
                            ""
                        }
                    ),
                );
                for s in probes.status() {
                    let (status, detail) = match &s.error {
                        None => match s.fallback {
                            Some(f) => (
                                Status::Ok,
                                format!("{} attached ({})", s.hook.attach, f.why),
                            ),
                            None => (Status::Ok, format!("{} attached", s.hook.attach)),
                        },
                        Some(e) => (Status::Note, format!("{}: {e}", s.hook.attach)),
                    };
                    check("hook", status, detail);
                    if let Some(e) = &s.error {
                        hook_errors.extend(
                            s.hook
                                .metrics
                                .iter()
                                // The verifier's log once, on the hook's line above.
                                .map(|m| {
                                    let e = crate::kernel::probe::without_verifier_log(e);
                                    (*m, format!("{}: {e}", s.hook.attach))
                                }),
                        );
                    }
                }
                match probes.escapes_unavailable() {
                    None => check(
                        "escapes",
                        Status::Ok,
                        "processes leaving a run's cgroup are detected".into(),
                    ),
                    Some(why) => check(
                        "escapes",
                        Status::Note,
                        format!("processes leaving a run's cgroup cannot be detected: {why}"),
                    ),
                }
            }
            Err(e) => {
                check("BPF object", Status::Fail, e.to_string());
                hook_errors.extend(AnyMetric::all().map(|m| (m, "the object did not load".into())));
            }
        }
    }
    d.metrics = AnyMetric::all()
        .map(|m| {
            let why = hook_errors
                .iter()
                .find(|(h, _)| *h == m)
                .map(|(_, e)| e.clone());
            (m, why)
        })
        .collect();
    d
}
