//! The report of a watched cgroup whose watch ended: the same JSON schema and verdict rules as
//! `cleanroom run`'s, named after its rule and tagged with its cgroup, its rule and why the
//! watch ended.

use super::watched::{Ended, Finished};
use crate::{
    judge::analyze,
    judge::verdict::{Event, EventKind},
    measure::collect,
    output::report::{CgroupRef, HostInfo, Interruption, Report},
};

/// The judged report of `finished`.
pub fn report(finished: Finished, host: &HostInfo) -> Report {
    let Finished {
        id,
        path,
        relative,
        rule,
        config,
        not_applicable,
        ended,
        mut figures,
        profile,
        profile_notes,
    } = finished;
    let cgroup = relative.display().to_string();
    figures.events.push(Event {
        t_ns: figures.wall_time_ns,
        kind: EventKind::WatchEnded,
        subject: ended.as_str().to_owned(),
        value: None,
        limit: None,
        message: match ended {
            Ended::Removed => format!("cgroup {cgroup} was removed"),
            Ended::AgentStopped => format!("the agent stopped while watching {cgroup}"),
            Ended::Unwatched => {
                format!("the reloaded configuration no longer watches {cgroup}")
            }
        },
    });
    let mut notes = vec![format!(
        "measured by `cleanroom agent`: cgroup {cgroup}, watched by rule `{}` from when it was \
         found (within one interval of its creation, or the agent's start) until it was {}",
        rule.glob,
        match ended {
            Ended::Removed => "removed",
            Ended::AgentStopped => "the agent stopped",
            Ended::Unwatched => "no longer matched by a rule",
        }
    )];
    if figures.kernel.is_empty() {
        notes.push(
            "the cgroup was gone when its report was made: the kernel's own figures (cpu.stat, \
             memory) could not be read, and `kernel` is empty"
                .to_owned(),
        );
    }
    notes.extend(collect::write_note(&figures.totals, figures.writeback));
    notes.extend(collect::fault_note(&figures.totals, &figures.kernel));
    notes.extend(profile_notes);
    let mut tags = rule.tags.clone();
    tags.insert("cgroup".into(), cgroup.clone());
    tags.insert("rule".into(), rule.run_name().to_owned());
    tags.insert("ended".into(), ended.as_str().to_owned());
    let cgroup_ref = CgroupRef {
        path: path.display().to_string(),
        id: id.0,
    };
    let report = Report {
        notes,
        interrupted: (ended == Ended::AgentStopped).then(|| Interruption {
            signal: Ended::AgentStopped.as_str().to_owned(),
            killed_leftovers: 0,
        }),
        name: Some(rule.run_name().to_owned()),
        tags,
        profile,
        ..Report::unjudged(figures, vec![cgroup], cgroup_ref, host.clone())
    };
    analyze::judge(&config, report, not_applicable)
}
