//! The `cleanroom` binary: parses arguments, calls the library, maps results to exit codes.
//!
//! Exit codes: the measured command's own code when it failed; 2 for Cleanroom's own errors;
//! 3 when an SLO, threshold or baseline comparison failed; 0 otherwise.

use std::{collections::BTreeMap, ffi::OsString, io::Write as _, path::PathBuf, process::ExitCode};

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use cleanroom::{
    config::CleanroomConfig,
    demo, doctor,
    judge::compare,
    judge::verdict::Verdict,
    output::deliver::{self, Outputs},
    output::render::{self, Format},
    run, store,
};

/// Measures what a command costs the machine (CPU time, faults, memory, block I/O, network,
/// latencies) with eBPF, in a cgroup of its own; checks it against thresholds and SLOs; keeps
/// a history to compare runs.
#[derive(Debug, Parser)]
#[command(version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Where a finished run goes.
#[derive(Debug, Args)]
struct OutputArgs {
    /// Write a report; the format comes from the name: .json, .csv (time series), .totals.csv,
    /// .md, .xml (JUnit), .html, .pdf. Repeatable.
    #[arg(long, value_name = "FILE")]
    report: Vec<PathBuf>,
    #[command(flatten)]
    store: StoreArg,
    /// Do not store this run in the history.
    #[arg(long)]
    no_store: bool,
}

/// `--store`: where the history is.
#[derive(Debug, clap::Args)]
struct StoreArg {
    /// History store: a SQLite file, or a postgres:// URL shared by a fleet (default:
    /// $CLEANROOM_STORE, else ~/.local/share/cleanroom/history.db).
    #[arg(
        id = "store",
        long = "store",
        value_name = "PATH|URL",
        env = "CLEANROOM_STORE",
        hide_env_values = true
    )]
    location: Option<store::StoreLocation>,
}

impl StoreArg {
    /// The store named, else the default one.
    fn or_default(self) -> store::StoreLocation {
        self.location.unwrap_or_else(store::default_location)
    }
}

#[derive(Debug, Subcommand)]
enum StoreCommand {
    /// Copy every run of another store into this one, oldest first, with new ids: a runner's
    /// local SQLite history into the fleet's PostgreSQL, or back. A PostgreSQL store keeps
    /// each run once (by its run id), so importing again adds only what is new; a SQLite
    /// file takes runs copied twice twice.
    Import {
        /// The store to copy from: a SQLite file or a postgres:// URL.
        #[arg(value_name = "FROM")]
        from: store::StoreLocation,
        #[command(flatten)]
        store: StoreArg,
    },
    /// Send the runs spooled while the store was out of reach (kept on this machine when a
    /// run could not reach its PostgreSQL), oldest first; each run is kept once. Exit 1 if
    /// the store still cannot be reached (the runs stay spooled).
    Flush {
        #[command(flatten)]
        store: StoreArg,
    },
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run CMD in a fresh cgroup with the probes attached, then report what it cost.
    ///
    /// Samples every `metrics_interval`, checks thresholds as it goes, enforces resource limits,
    /// and judges SLOs at the end. The summary goes to stderr (stdout stays the command's).
    /// Exit code: the command's own when it failed; 2 when Cleanroom itself failed; 3 when an
    /// SLO, threshold or baseline comparison failed; else 0.
    #[command(arg_required_else_help = true)]
    Run {
        #[command(flatten)]
        out: OutputArgs,
        /// Read settings, thresholds, limits and SLOs from this TOML file.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Add the `[[slos]]` of this TOML file (repeatable).
        #[arg(long, value_name = "FILE")]
        slo: Vec<PathBuf>,
        /// Sample every DURATION (e.g. 500ms), overriding the config's metrics_interval.
        #[arg(long, value_name = "DURATION", value_parser = parse_interval)]
        interval: Option<std::time::Duration>,
        /// Name the run, to find it in the history and follow its trend.
        #[arg(long)]
        name: Option<String>,
        /// Tag the run (repeatable), e.g. --tag ci=nightly.
        #[arg(long, value_name = "KEY=VALUE", value_parser = parse_tag)]
        tag: Vec<(String, String)>,
        /// Compare with a past run: an id in the history, a JSON report, or NAME@BRANCH, the
        /// latest passing run of that name on that git branch from any host of the store
        /// (e.g. unit-tests@main); regressions beyond tolerance fail the run (exit 3).
        #[arg(long, value_name = "RUN")]
        baseline: Option<String>,
        /// Compare with the medians of the latest N passing runs of --baseline NAME@BRANCH
        /// (steadier than one run); the comparison lists the runs it used.
        #[arg(long, value_name = "N", default_value_t = 1, requires = "baseline",
              value_parser = clap::value_parser!(u16).range(1..=100))]
        baseline_window: u16,
        /// Tolerance for a figure against --baseline, e.g. --tolerance cpu_time=25%
        /// (repeatable; overrides the config's [comparison] and the defaults; see
        /// `cleanroom compare --help`).
        #[arg(long, value_name = "METRIC=PERCENT", value_parser = compare::parse_tolerance, requires = "baseline")]
        tolerance: Vec<(String, f64)>,
        /// Make the run cgroup under DIR instead of `<cgroup v2 mount>/cleanroom` (for hosts
        /// that delegate a subtree, e.g. under systemd).
        #[arg(long, value_name = "DIR")]
        cgroup_parent: Option<PathBuf>,
        /// Follow the Docker containers the command starts, as part of the run (their figures
        /// in the totals and, apart, in the report's containers). On by default when the
        /// engine's socket ($DOCKER_HOST, else /var/run/docker.sock) exists.
        #[arg(long, overrides_with = "no_follow_containers")]
        follow_containers: bool,
        /// Do not follow Docker containers.
        #[arg(long)]
        no_follow_containers: bool,
        /// Take profiles: every CPU samples the run's stacks (99 times a second), and its
        /// waits (off CPU, by kind), page faults and block I/O are taken by stack too, each
        /// unwound with the binaries' .eh_frame so builds without frame pointers get whole
        /// stacks. The summary and report get the top functions; `--report cpu.folded`,
        /// `offcpu.folded`, `faults.svg`, `block.svg`... write folded stacks or flame graphs.
        #[arg(long)]
        profile: bool,
        /// Samples a second on each CPU when profiling (1 to 1000; implies --profile).
        #[arg(long, value_name = "HZ", value_parser = clap::value_parser!(u64).range(1..=1000))]
        profile_frequency: Option<u64>,
        /// Follow only containers with this label (KEY or KEY=VALUE; repeatable: all must
        /// match).
        #[arg(long, value_name = "LABEL")]
        container_label: Vec<String>,
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
        #[command(flatten)]
        out: OutputArgs,
        /// Add the `[[slos]]` of this TOML file (repeatable).
        #[arg(long, value_name = "FILE")]
        slo: Vec<PathBuf>,
        /// Sample every DURATION (default 1s).
        #[arg(long, value_name = "DURATION", value_parser = parse_interval)]
        interval: Option<std::time::Duration>,
    },
    /// Watch cgroups as a privileged sidecar: live figures for Prometheus (/metrics), a JSON
    /// API and a web page; a stored report for each watched cgroup when it is removed.
    ///
    /// Rules pick cgroups by glob, relative to the cgroup v2 mount (`docker/*`,
    /// `system.slice/*.scope`, `ci/job-*`; `*` stays within one path component, `**` crosses
    /// them): the cgroups there at start and those made later, found within one interval.
    /// Runs in the foreground; SIGTERM or SIGINT stores the report of every live watch and
    /// exits 0; SIGHUP re-reads --config. Exit code 2 when it cannot start.
    #[command(
        after_help = "Examples:\n  cleanroom agent --watch 'system.slice/docker-*.scope'\n  \
                            cleanroom agent --config /etc/cleanroom/agent.toml\n\n\
                            The bearer token for a non-loopback --listen comes from `token` in \
                            the config or $CLEANROOM_AGENT_TOKEN."
    )]
    Agent {
        /// Read listen, token, interval, store and [[watch]] rules from this TOML file.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Watch the cgroups matching GLOB (repeatable; after the config's rules).
        #[arg(long, value_name = "GLOB")]
        watch: Vec<String>,
        /// Serve HTTP on ADDR (default 127.0.0.1:9464; anything but loopback needs a token).
        #[arg(long, value_name = "ADDR")]
        listen: Option<std::net::SocketAddr>,
        /// Sample every DURATION (default 1s, at least 100ms).
        #[arg(long, value_name = "DURATION", value_parser = parse_agent_interval)]
        interval: Option<std::time::Duration>,
        #[command(flatten)]
        store: StoreArg,
        /// Do not store reports.
        #[arg(long, conflicts_with = "store")]
        no_store: bool,
        /// Profile every watched cgroup (as `profile = true` on each rule): each report gets
        /// its stacks on CPU, off CPU, at page faults and at block I/O, as `run --profile`'s.
        #[arg(long)]
        profile: bool,
        /// Samples a second on each CPU when profiling (1 to 1000; implies --profile).
        #[arg(long, value_name = "HZ", value_parser = clap::value_parser!(u64).range(1..=1000))]
        profile_frequency: Option<u64>,
        /// Serve unprivileged `cleanroom run` on this Unix socket (default
        /// /run/cleanroom/agent.sock).
        #[arg(long, value_name = "PATH")]
        socket: Option<PathBuf>,
        /// Members of GROUP may use the socket (default: `cleanroom` when it exists, else
        /// root alone).
        #[arg(long, value_name = "GROUP")]
        socket_group: Option<String>,
        /// Serve no socket: only watch.
        #[arg(long, conflicts_with_all = ["socket", "socket_group"])]
        no_socket: bool,
        /// Make the clients' runs under this cgroup directory (default <v2 mount>/cleanroom).
        #[arg(long, value_name = "DIR")]
        runs_cgroup: Option<PathBuf>,
    },
    /// Render a saved run (a JSON report, or a run id in the history) in another format.
    Report {
        /// The run: a JSON report file or a run id.
        run: String,
        /// json, csv, csv-totals, md, xml (JUnit), html or pdf (default: from -o, else md).
        #[arg(long, short)]
        format: Option<String>,
        /// Write here instead of stdout.
        #[arg(long, short, value_name = "FILE")]
        output: Option<PathBuf>,
        #[command(flatten)]
        store: StoreArg,
    },
    /// List past runs, newest first, with their verdicts.
    History {
        /// Only runs of this name.
        #[arg(long)]
        name: Option<String>,
        /// At most N runs.
        #[arg(long, default_value_t = 20)]
        last: usize,
        #[command(flatten)]
        store: StoreArg,
    },
    /// Compare two runs (ids in the history or JSON reports): every metric and percentile, with
    /// regressions beyond tolerance flagged (exit 3 if any).
    Compare {
        /// The base run.
        base: String,
        /// The new run.
        new: String,
        /// Tolerance for a figure, e.g. --tolerance wall_time=30% (repeatable): wall_time, a
        /// total (cpu_time_ns or cpu_time, ...) or a latency percentile (..._p99, ..._max).
        /// Overrides the config's [comparison] and the defaults.
        #[arg(long, value_name = "METRIC=PERCENT", value_parser = compare::parse_tolerance)]
        tolerance: Vec<(String, f64)>,
        /// Take tolerances from the [comparison] table of this TOML file.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Output format (default: from -o, else md).
        #[arg(long, short)]
        format: Option<String>,
        /// Write here instead of stdout.
        #[arg(long, short, value_name = "FILE")]
        output: Option<PathBuf>,
        #[command(flatten)]
        store: StoreArg,
    },
    /// Each metric across the last N runs of one name: series, slope, and where it moved most.
    Trend {
        /// The runs' name.
        #[arg(long)]
        name: String,
        /// How many runs.
        #[arg(long, default_value_t = 10)]
        last: usize,
        /// Output format (default: from -o, else md).
        #[arg(long, short)]
        format: Option<String>,
        /// Write here instead of stdout.
        #[arg(long, short, value_name = "FILE")]
        output: Option<PathBuf>,
        #[command(flatten)]
        store: StoreArg,
    },
    /// The history store itself.
    #[command(subcommand)]
    Store(StoreCommand),
    /// Start a named phase of the run this command is part of, ending the phase before: the
    /// report gets each phase's wall time and totals, and an SLO can judge one phase
    /// (`phase = "build"` in `[[slos]]`). For the scripts `cleanroom run` measures, which it
    /// tells where to reach it ($CLEANROOM_RUN_SOCKET). Exit code 2 when there is no run to
    /// mark or it refuses (a name must be 1 to 64 bytes without control characters).
    #[command(
        after_help = "Example (a CI script run as `cleanroom run --slo slo.toml -- ./ci.sh`):\n  \
                      cleanroom mark build && cargo build\n  \
                      cleanroom mark test && cargo test"
    )]
    Mark {
        /// The phase's name.
        name: String,
    },
    /// Show what this host offers (privileges, BTF, cgroups, mounts, hooks) and which metrics
    /// can be measured here. Exits non-zero when Cleanroom cannot run at all.
    Doctor,
    /// Removes a run's cgroups if the `cleanroom run` that started it dies (started by it).
    #[command(hide = true)]
    Watchdog {
        /// The run's cgroup directories.
        dirs: Vec<PathBuf>,
    },
    /// The demo's workload itself (run by `cleanroom demo`).
    #[command(hide = true)]
    DemoWorkload,
    /// Attach the probes (or, with --floor, empty programs on the same hooks) and hold them,
    /// printing their kernel ids; for `cargo xtask bench`.
    #[command(hide = true)]
    Attach {
        /// Attach the empty floor programs instead of Cleanroom's.
        #[arg(long)]
        floor: bool,
        /// Detach after this long at most.
        #[arg(long, default_value = "10m", value_parser = cleanroom::units::parse_duration)]
        limit: std::time::Duration,
    },
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn"))
        .format(|buf, record| {
            let level = match record.level() {
                log::Level::Error => "error",
                log::Level::Warn => "warning",
                log::Level::Info => "info",
                log::Level::Debug => "debug",
                log::Level::Trace => "trace",
            };
            writeln!(buf, "cleanroom: {level}: {}", record.args())
        })
        .init();
    let cli = Cli::parse();
    match dispatch(cli.command) {
        Ok(code) => code,
        Err(e) if interrupted(&e).is_some() => {
            eprintln!("cleanroom: {}", one_line(&e));
            ExitCode::from(interrupted(&e).map_or(2, |s| 128 + s as u8))
        }
        Err(e) => {
            eprintln!("cleanroom: error: {}", one_line(&e));
            ExitCode::from(2)
        }
    }
}

/// An error and its causes on one line, each cause once: library errors already quote their
/// source in their own message.
fn one_line(e: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in e.chain() {
        let part = cause.to_string();
        if !text.contains(&part) {
            if !text.is_empty() {
                text.push_str(": ");
            }
            text.push_str(&part);
        }
    }
    text
}

/// The signal that stopped a run before its command started.
fn interrupted(e: &anyhow::Error) -> Option<i32> {
    match e.downcast_ref::<cleanroom::Error>() {
        Some(cleanroom::Error::Interrupted { signal }) => Some(*signal),
        _ => None,
    }
}

fn outputs(out: OutputArgs, summary: bool) -> Outputs {
    Outputs {
        summary,
        reports: out.report,
        store: (!out.no_store).then(|| out.store.or_default()),
        baseline: None,
        tolerances: compare::Tolerances::default(),
        distribute: Vec::new(),
        otlp: None,
    }
}

fn dispatch(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Run {
            out,
            config,
            slo,
            interval,
            name,
            tag,
            baseline,
            baseline_window,
            tolerance,
            cgroup_parent,
            follow_containers,
            no_follow_containers,
            profile,
            profile_frequency,
            container_label,
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
            if profile || profile_frequency.is_some() {
                cfg.performance_monitoring.enable_profiling = true;
            }
            if let Some(hz) = profile_frequency {
                cfg.performance_monitoring.profiling_frequency_hz = hz;
            }
            let mut outputs = outputs(out, !quiet);
            // Secrets read before the command runs: a destination that cannot work must not
            // cost a run.
            outputs.distribute = cfg
                .distribute
                .iter()
                .cloned()
                .map(cleanroom::output::distribute::Destination::new)
                .collect::<Result<_, _>>()
                .map_err(anyhow::Error::msg)?;
            outputs.otlp = cfg.export.otlp.clone();
            // Checked before the command runs: a bad baseline must not cost a run.
            outputs.baseline = baseline
                .map(|b| {
                    let store = outputs
                        .store
                        .clone()
                        .unwrap_or_else(store::default_location);
                    deliver::Baseline::load(&b, &store, usize::from(baseline_window))
                })
                .transpose()?;
            outputs.tolerances = compare::Tolerances {
                flag: tolerance.into_iter().collect(),
                config: cfg.comparison.tolerance.clone(),
                history: BTreeMap::new(),
            };
            // Noise-aware defaults: how far apart earlier runs of this name have been.
            if let (Some(_), Some(name)) = (&outputs.baseline, &name) {
                let store = outputs
                    .store
                    .clone()
                    .unwrap_or_else(store::default_location);
                outputs.tolerances.history = deliver::history_spreads(&store, name);
            }
            measure(
                run::RunOptions {
                    command,
                    cgroup_parent,
                    print_summary: !quiet,
                    config: cfg,
                    name,
                    tags: tag.into_iter().collect(),
                    label: None,
                    containers: run::FollowContainers {
                        when: match (follow_containers, no_follow_containers) {
                            (_, true) => run::Follow::Never,
                            (true, _) => run::Follow::Always,
                            _ => run::Follow::IfEngine,
                        },
                        labels: container_label,
                    },
                    alerts: None,
                },
                &outputs,
            )
        }
        Command::Demo { out, slo, interval } => {
            let exe = std::env::current_exe()?;
            let mut cfg = CleanroomConfig::default();
            for path in &slo {
                cfg.add_slo_file(path)?;
            }
            if let Some(interval) = interval {
                cfg.performance_monitoring.metrics_interval = interval;
            }
            measure(
                run::RunOptions {
                    command: vec![exe.into_os_string(), "demo-workload".into()],
                    cgroup_parent: None,
                    print_summary: true,
                    config: cfg,
                    name: Some("demo".into()),
                    tags: BTreeMap::new(),
                    // The demo runs this very binary: name it, not where it happens to live.
                    label: Some(vec!["cleanroom".into(), "demo-workload".into()]),
                    containers: run::FollowContainers {
                        when: run::Follow::Never,
                        labels: Vec::new(),
                    },
                    alerts: None,
                },
                &outputs(out, true),
            )
        }
        Command::Agent {
            config,
            watch,
            listen,
            interval,
            store,
            no_store,
            profile,
            profile_frequency,
            socket,
            socket_group,
            no_socket,
            runs_cgroup,
        } => {
            let opts = cleanroom::agent::AgentOptions {
                config_path: config,
                watch,
                listen,
                interval,
                store: store.location,
                no_store,
                profile,
                profile_frequency,
                socket: if no_socket {
                    Some(PathBuf::new())
                } else {
                    socket
                },
                socket_group,
                runs_cgroup,
            };
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
                .block_on(cleanroom::agent::agent(opts))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Report {
            run,
            format,
            output,
            store,
        } => {
            let store = store.or_default();
            let (_, report) = deliver::load_run(&run, &store)?;
            let format = pick_format(format.as_deref(), output.as_deref())?;
            emit(&render::report(&report, format)?, output.as_deref())?;
            Ok(ExitCode::SUCCESS)
        }
        Command::History { name, last, store } => {
            let store = store.or_default();
            let rows = store::Store::open(&store)?.list(name.as_deref(), last)?;
            if rows.is_empty() {
                eprintln!("no runs in {}", store);
            } else {
                print!("{}", store::history_table(&rows));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Compare {
            base,
            new,
            tolerance,
            config,
            format,
            output,
            store,
        } => {
            let config = match &config {
                Some(path) => CleanroomConfig::from_file(path)?,
                None => CleanroomConfig::default(),
            };
            let store = store.or_default();
            let (bl, b) = deliver::load_run(&base, &store)?;
            let (nl, n) = deliver::load_run(&new, &store)?;
            let tolerances = compare::Tolerances {
                flag: tolerance.into_iter().collect(),
                config: config.comparison.tolerance,
                history: BTreeMap::new(),
            };
            let c = compare::compare((&bl, &b), (&nl, &n), &tolerances);
            let format = pick_format(format.as_deref(), output.as_deref())?;
            emit(&render::comparison(&c, format)?, output.as_deref())?;
            Ok(if c.regressions > 0 {
                ExitCode::from(3)
            } else {
                ExitCode::SUCCESS
            })
        }
        Command::Trend {
            name,
            last,
            format,
            output,
            store,
        } => {
            let store = store.or_default();
            let runs = store::Store::open(&store)?.reports_named(&name, last)?;
            anyhow::ensure!(!runs.is_empty(), "no runs named `{name}` in {}", store);
            let t = compare::trend(&name, &runs);
            let format = pick_format(format.as_deref(), output.as_deref())?;
            emit(&render::trend(&t, format)?, output.as_deref())?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Store(StoreCommand::Import { from, store }) => {
            let store = store.or_default();
            anyhow::ensure!(from != store, "{from} is the store to import into");
            let mut source = store::Store::open(&from)?;
            let mut target = store::Store::open(&store)?;
            let copied = target.import(&mut source, |done, all| {
                eprint!("\rcleanroom: {done} of {all} run(s) copied");
            })?;
            eprintln!("\rcleanroom: {copied} run(s) copied from {from} into {store}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Store(StoreCommand::Flush { store }) => {
            let store = store.or_default();
            let waiting = store::spool::pending(&store).len();
            if waiting == 0 {
                eprintln!("cleanroom: nothing spooled for {store}");
                return Ok(ExitCode::SUCCESS);
            }
            let flushed = store::Store::open(&store).and_then(|mut s| store::spool::flush(&mut s));
            match flushed {
                Ok(f) => {
                    eprintln!("cleanroom: {} spooled run(s) stored in {store}", f.stored);
                    for path in &f.unreadable {
                        eprintln!(
                            "cleanroom: {} is not a report; left where it is",
                            path.display()
                        );
                    }
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => {
                    eprintln!("cleanroom: {waiting} run(s) stay spooled: {e}");
                    Ok(ExitCode::from(1))
                }
            }
        }
        Command::Mark { name } => {
            cleanroom::run::marks::mark(&name)?;
            Ok(ExitCode::SUCCESS)
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
        Command::Attach { floor, limit } => {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
                .block_on(cleanroom::kernel::attach::attach(floor, limit))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Watchdog { dirs } => {
            cleanroom::cgroupfs::watchdog::serve(&dirs);
            Ok(ExitCode::SUCCESS)
        }
        Command::DemoWorkload => {
            demo::run_workload(&demo::Workload::default())?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn pick_format(name: Option<&str>, output: Option<&std::path::Path>) -> anyhow::Result<Format> {
    Ok(match (name, output) {
        (Some(name), _) => Format::from_name(name)?,
        (None, Some(path)) => Format::from_path(path)?,
        (None, None) => Format::Markdown,
    })
}

fn emit(bytes: &[u8], output: Option<&std::path::Path>) -> anyhow::Result<()> {
    match output {
        Some(path) => render::write(path, bytes)?,
        None => std::io::stdout()
            .write_all(bytes)
            .context("writing to stdout")?,
    }
    Ok(())
}

fn measure(mut opts: run::RunOptions, outputs: &Outputs) -> anyhow::Result<ExitCode> {
    deliver::check_outputs(outputs)?;
    // Before the command runs: a channel that cannot work must not cost a run.
    opts.alerts = cleanroom::alerts::Alerting::start(&opts.config.alerts)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut report = runtime.block_on(run::run(&opts))?;
    let target = run::alert_target(&opts);
    let delivered = deliver::deliver(
        &mut report,
        outputs,
        opts.alerts.as_ref().map(|a| (a, target.as_str())),
    );
    Ok(ExitCode::from(exit_code(
        report.exit_code,
        !delivered.failures.is_empty(),
        report.verdict == Verdict::Fail,
    )))
}

/// The exit code of a measured run: the command's own when it failed; else 2 when an output
/// (a report or the store) could not be written; else 3 when the verdict is `fail`; else 0.
fn exit_code(command: i32, output_failed: bool, verdict_failed: bool) -> u8 {
    match command {
        0 if output_failed => 2,
        0 if verdict_failed => 3,
        0 => 0,
        code => u8::try_from(code).unwrap_or(1),
    }
}

fn parse_interval(text: &str) -> Result<std::time::Duration, String> {
    let d = cleanroom::units::parse_duration(text)?;
    if d < std::time::Duration::from_millis(10) {
        return Err("the interval must be at least 10ms".into());
    }
    Ok(d)
}

fn parse_agent_interval(text: &str) -> Result<std::time::Duration, String> {
    let d = cleanroom::units::parse_duration(text)?;
    if d < cleanroom::agent::config::MIN_INTERVAL {
        return Err("the interval must be at least 100ms".into());
    }
    Ok(d)
}

fn parse_tag(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .filter(|(k, _)| !k.is_empty())
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("{text:?} is not KEY=VALUE"))
}

#[cfg(test)]
mod tests {
    use super::exit_code;

    #[test]
    fn the_command_failure_wins_then_outputs_then_the_verdict() {
        assert_eq!(exit_code(0, false, false), 0);
        assert_eq!(exit_code(0, false, true), 3);
        assert_eq!(exit_code(0, true, true), 2);
        assert_eq!(exit_code(7, true, true), 7);
        assert_eq!(exit_code(137, false, false), 137);
    }
}
