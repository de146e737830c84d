//! `cleanroom doctor`: what this host offers (privileges, BTF, cgroup layout, mounts, hooks) and
//! therefore which metrics Cleanroom can measure here.

use std::{fmt::Write as _, path::Path};

use crate::{
    btf::{Offsets, VMLINUX_BTF},
    cgroup::{Hierarchy, Layout},
    host,
    metric::Metric,
    probe::{HOOKS, Probes},
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
    pub metrics: Vec<(Metric, Option<String>)>,
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
        check(
            "privileges",
            Status::Fail,
            format!("missing {}; run as root", missing.join(", ")),
        );
    }
    check("kernel", Status::Ok, host::kernel_release());

    match Offsets::from_file(Path::new(VMLINUX_BTF)) {
        Ok(o) => check(
            "BTF",
            Status::Ok,
            format!(
                "{VMLINUX_BTF}: task_struct.cgroups@{} css_set.dfl_cgrp@{} cgroup.kn@{} kernfs_node.id@{}",
                o.task_cgroups, o.css_set_dfl_cgrp, o.cgroup_kn, o.kernfs_node_id
            ),
        ),
        Err(e) => check("BTF", Status::Fail, e.to_string()),
    }

    match Hierarchy::detect() {
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

    let mut hook_errors: Vec<(Metric, String)> = Vec::new();
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
        hook_errors.extend(
            Metric::ALL
                .iter()
                .map(|m| (*m, "not checked without root".into())),
        );
    } else {
        match Probes::load() {
            Ok(probes) => {
                let attached = probes.status().iter().filter(|s| s.error.is_none()).count();
                check(
                    "BPF object",
                    if attached == HOOKS.len() {
                        Status::Ok
                    } else {
                        Status::Note
                    },
                    format!("loaded; {attached} of {} hooks attached", HOOKS.len()),
                );
                for s in probes.status() {
                    let (status, detail) = match &s.error {
                        None => (Status::Ok, format!("tp_btf/{} attached", s.hook.tracepoint)),
                        Some(e) => (Status::Note, format!("tp_btf/{}: {e}", s.hook.tracepoint)),
                    };
                    check("hook", status, detail);
                    if let Some(e) = &s.error {
                        hook_errors.extend(
                            s.hook
                                .metrics
                                .iter()
                                .map(|m| (*m, format!("tp_btf/{}: {e}", s.hook.tracepoint))),
                        );
                    }
                }
            }
            Err(e) => {
                check("BPF object", Status::Fail, e.to_string());
                hook_errors.extend(
                    Metric::ALL
                        .iter()
                        .map(|m| (*m, "the object did not load".into())),
                );
            }
        }
    }
    d.metrics = Metric::ALL
        .iter()
        .map(|m| {
            let why = hook_errors
                .iter()
                .find(|(h, _)| h == m)
                .map(|(_, e)| e.clone());
            (*m, why)
        })
        .collect();
    d
}
