//! `cleanroom attach`: load and attach the probes (or the empty floor programs) with no command
//! to run, say which programs they are, and hold them until a signal or a timeout. The
//! benchmark (`cargo xtask bench`) uses it to measure what the programs cost per event.

use std::{fs::File, time::Duration};

use tokio::signal::unix::{SignalKind, signal};

use crate::{Error, cgroupfs::cgroup::Hierarchy, kernel::probe::Probes, run::require_privileges};

/// Attaches, prints one JSON line (`{"programs": [{"name", "hook", "id"}]}`) on stdout, and
/// waits for SIGINT/SIGTERM or `limit`.
pub async fn attach(floor: bool, limit: Duration) -> Result<(), Error> {
    require_privileges("cleanroom attach")?;
    let hierarchy = Hierarchy::detect()?;
    let root = File::open(&hierarchy.v2_mount).ok();
    let probes = if floor {
        Probes::load_floor(root.as_ref())?
    } else {
        Probes::load(root.as_ref())?
    };
    let programs: Vec<serde_json::Value> = probes
        .program_ids()
        .into_iter()
        .map(|(name, hook, id)| serde_json::json!({"name": name, "hook": hook, "id": id}))
        .collect();
    println!(
        "{}",
        serde_json::json!({ "floor": floor, "programs": programs })
    );
    let mut int = signal(SignalKind::interrupt()).map_err(Error::Wait)?;
    let mut term = signal(SignalKind::terminate()).map_err(Error::Wait)?;
    tokio::select! {
        _ = int.recv() => {}
        _ = term.recv() => {}
        () = tokio::time::sleep(limit) => {}
    }
    drop(probes);
    Ok(())
}
