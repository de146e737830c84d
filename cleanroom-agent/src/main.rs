//! The `cleanroom` binary: parses arguments, calls the library, maps results to exit codes.
//!
//! Exit codes: the measured command's own code when it failed; 2 for Cleanroom's own errors;
//! 3 when an SLO or threshold failed; 0 otherwise.

use std::{ffi::OsString, io::Write as _, path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use cleanroom::{config::CleanroomConfig, demo, doctor, run};

/// Measures what a command costs the machine (CPU time, context switches, ...) with eBPF, in a
/// cgroup of its own, and checks it against the kernel's own accounting.
#[derive(Debug, Parser)]
#[command(version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run CMD in a fresh cgroup with the probes attached, then print what it cost.
    ///
    /// Samples every `metrics_interval`, checks thresholds as it goes, enforces resource limits,
    /// and judges SLOs at the end. The summary goes to stderr (stdout stays the command's).
    /// Exit code: the command's own when it failed; 2 when Cleanroom itself failed; 3 when an
    /// SLO or threshold failed; else 0.
    #[command(arg_required_else_help = true)]
    Run {
        /// Write the JSON report (schema version 1) to FILE.
        #[arg(long, value_name = "FILE")]
        report: Option<PathBuf>,
        /// Read settings, thresholds, limits and SLOs from this TOML file.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Add the `[[slos]]` of this TOML file (repeatable).
        #[arg(long, value_name = "FILE")]
        slo: Vec<PathBuf>,
        /// Sample every DURATION (e.g. 500ms), overriding the config's metrics_interval.
        #[arg(long, value_name = "DURATION", value_parser = parse_interval)]
        interval: Option<std::time::Duration>,
        /// Make the run cgroup under DIR instead of `<cgroup v2 mount>/cleanroom` (for hosts
        /// that delegate a subtree, e.g. under systemd).
        #[arg(long, value_name = "DIR")]
        cgroup_parent: Option<PathBuf>,
        /// Do not print the summary table.
        #[arg(long, short)]
        quiet: bool,
        /// The command to measure, with its arguments.
        #[arg(required = true, last = true, value_name = "CMD")]
        command: Vec<OsString>,
    },
    /// Measure a built-in workload of known size (CPU spin, page touching, file I/O with
    /// fsync, loopback TCP) and show every metric beside the kernel's own figures.
    Demo {
        /// Write the JSON report to FILE.
        #[arg(long, value_name = "FILE")]
        report: Option<PathBuf>,
    },
    /// Show what this host offers (privileges, BTF, cgroups, mounts, hooks) and which metrics
    /// can be measured here. Exits non-zero when Cleanroom cannot run at all.
    Doctor,
    /// The demo's workload itself (run by `cleanroom demo`).
    #[command(hide = true)]
    DemoWorkload,
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn"))
        .format(|buf, record| {
            writeln!(
                buf,
                "cleanroom: {}: {}",
                record.level().as_str().to_lowercase(),
                record.args()
            )
        })
        .init();
    let cli = Cli::parse();
    match dispatch(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("cleanroom: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn dispatch(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Run {
            report,
            config,
            slo,
            interval,
            cgroup_parent,
            quiet,
            command,
        } => {
            let mut cfg = match &config {
                Some(path) => CleanroomConfig::from_file(path)?,
                None => CleanroomConfig::default(),
            };
            for path in &slo {
                cfg.add_slo_file(path)?;
            }
            if let Some(interval) = interval {
                cfg.performance_monitoring.metrics_interval = interval;
            }
            measure(run::RunOptions {
                command,
                cgroup_parent,
                report,
                print_summary: !quiet,
                config: cfg,
            })
        }
        Command::Demo { report } => {
            let exe = std::env::current_exe()?;
            measure(run::RunOptions {
                command: vec![exe.into_os_string(), "demo-workload".into()],
                cgroup_parent: None,
                report,
                print_summary: true,
                config: CleanroomConfig::default(),
            })
        }
        Command::Doctor => {
            let diagnosis = doctor::diagnose();
            print!("{}", diagnosis.render());
            Ok(if diagnosis.can_run() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Command::DemoWorkload => {
            demo::run_workload(&demo::Workload::default())?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn measure(opts: run::RunOptions) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let report = runtime.block_on(run::run(&opts))?;
    let code = match report.exit_code {
        0 if report.verdict == "fail" => 3,
        0 => 0,
        code => u8::try_from(code).unwrap_or(1),
    };
    Ok(ExitCode::from(code))
}

fn parse_interval(text: &str) -> Result<std::time::Duration, String> {
    let d = cleanroom::units::parse_duration(text)?;
    if d < std::time::Duration::from_millis(10) {
        return Err("the interval must be at least 10ms".into());
    }
    Ok(d)
}
