//! The `cleanroom` binary: parses arguments, calls the library, maps results to exit codes.
//!
//! Exit codes: the measured command's own code when it failed; 2 for Cleanroom's own errors;
//! 0 otherwise.

use std::{ffi::OsString, io::Write as _, path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use cleanroom::{demo, doctor, run};

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
    /// The summary goes to stderr (stdout stays the command's). Exit code: the command's own
    /// when it failed, 2 when Cleanroom itself failed, else 0.
    #[command(arg_required_else_help = true)]
    Run {
        /// Write the JSON report (schema version 1) to FILE.
        #[arg(long, value_name = "FILE")]
        report: Option<PathBuf>,
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
            cgroup_parent,
            quiet,
            command,
        } => measure(run::RunOptions {
            command,
            cgroup_parent,
            report,
            print_summary: !quiet,
        }),
        Command::Demo { report } => {
            let exe = std::env::current_exe()?;
            measure(run::RunOptions {
                command: vec![exe.into_os_string(), "demo-workload".into()],
                cgroup_parent: None,
                report,
                print_summary: true,
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
    Ok(ExitCode::from(u8::try_from(report.exit_code).unwrap_or(1)))
}
