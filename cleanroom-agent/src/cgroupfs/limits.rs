//! `resource_limits` enforced through cgroup controllers, before the command starts: v2
//! `memory.max`, `cpu.max`, `pids.max`, or their v1 twins on a hybrid host. A limit the host
//! cannot enforce is an error, unless `monitor_only` says to watch it instead.

use std::{fs, path::Path};

use crate::{cgroupfs::cgroup::RunCgroup, config::ResourceLimits};

/// A limit that could not be put in place.
#[derive(Debug, thiserror::Error)]
pub enum LimitError {
    /// No controller on this host can enforce it.
    #[error(
        "resource_limits.{key} cannot be enforced on this host ({why}); remove it, or set \
         resource_limits.monitor_only = true to only watch it"
    )]
    CannotEnforce {
        /// The config key.
        key: &'static str,
        /// Why not.
        why: String,
    },
    /// Writing the controller file failed.
    #[error("setting resource_limits.{key} in {file}: {source}")]
    Write {
        /// The config key.
        key: &'static str,
        /// The file.
        file: String,
        /// Why.
        source: std::io::Error,
    },
}

/// v1 controllers a hybrid host needs twins in for these limits.
pub fn v1_controllers_needed(limits: &ResourceLimits) -> Vec<&'static str> {
    let mut out = Vec::new();
    if limits.max_cpu_usage_percent.is_some() {
        out.push("cpu");
    }
    out
}

/// CPU period used for quotas, µs.
const CPU_PERIOD_US: u64 = 100_000;

fn write(key: &'static str, file: &Path, value: &str) -> Result<(), LimitError> {
    fs::write(file, value).map_err(|source| LimitError::Write {
        key,
        file: file.display().to_string(),
        source,
    })
}

/// Puts every configured limit in place on `run`. Returns one line per limit saying how it is
/// enforced (or that it is only monitored).
pub fn apply(run: &RunCgroup, limits: &ResourceLimits) -> Result<Vec<String>, LimitError> {
    let mut applied = Vec::new();
    let mut unenforceable = |key: &'static str, why: String| -> Result<(), LimitError> {
        if limits.monitor_only {
            applied.push(format!("resource_limits.{key}: monitored only ({why})"));
            Ok(())
        } else {
            Err(LimitError::CannotEnforce { key, why })
        }
    };
    let v2 = run.path();
    let mut done = Vec::new();

    if let Some(bytes) = limits.max_memory_usage_bytes {
        let key = "max_memory_usage_bytes";
        if v2.join("memory.max").exists() {
            write(key, &v2.join("memory.max"), &bytes.to_string())?;
            done.push(format!("resource_limits.{key}: memory.max = {bytes}"));
        } else if let Some(twin) = run.v1_twin("memory") {
            write(key, &twin.join("memory.limit_in_bytes"), &bytes.to_string())?;
            done.push(format!(
                "resource_limits.{key}: v1 memory.limit_in_bytes = {bytes}"
            ));
        } else {
            unenforceable(key, "no memory controller".into())?;
        }
    }
    if let Some(percent) = limits.max_cpu_usage_percent {
        let key = "max_cpu_usage_percent";
        let quota = ((percent / 100.0) * CPU_PERIOD_US as f64)
            .round()
            .max(1000.0) as u64;
        if v2.join("cpu.max").exists() {
            write(
                key,
                &v2.join("cpu.max"),
                &format!("{quota} {CPU_PERIOD_US}"),
            )?;
            done.push(format!(
                "resource_limits.{key}: cpu.max = {quota} {CPU_PERIOD_US}"
            ));
        } else if let Some(twin) = run.v1_twin("cpu") {
            write(
                key,
                &twin.join("cpu.cfs_period_us"),
                &CPU_PERIOD_US.to_string(),
            )?;
            write(key, &twin.join("cpu.cfs_quota_us"), &quota.to_string())?;
            done.push(format!(
                "resource_limits.{key}: v1 cpu.cfs_quota_us = {quota} per {CPU_PERIOD_US}"
            ));
        } else {
            unenforceable(key, "no cpu controller".into())?;
        }
    }
    if limits.max_disk_usage_bytes.is_some() {
        unenforceable(
            "max_disk_usage_bytes",
            "no cgroup controller caps bytes written".into(),
        )?;
    }
    if limits.max_network_bandwidth_bytes_per_sec.is_some() {
        unenforceable(
            "max_network_bandwidth_bytes_per_sec",
            "no cgroup controller caps network bandwidth".into(),
        )?;
    }
    applied.extend(done);
    Ok(applied)
}
