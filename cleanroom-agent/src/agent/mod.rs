//! `cleanroom agent`: the privileged sidecar. It loads the probes once, watches the cgroups its
//! rules pick (those there at start and those made later, found within one interval), keeps
//! live figures of each for Prometheus, a JSON API and a web page, and when a watched cgroup is
//! removed (or the agent stops) finishes its report — the same schema and verdict rules as
//! `cleanroom run` — and stores it in the history.
//!
//! [`agent`] is the composition of these steps: `prepare` (the configuration, privileges, the
//! hierarchy, the rules, the listening socket, the store, the probes), `serve` (the HTTP
//! interface, in the background), the watch loop (a [`Watched::tick`] every interval, the board
//! updated, finished watches reported; SIGHUP reloads the rules) and `stop` (every live watch
//! finished and stored).

pub mod board;
mod clients;
pub mod config;
mod outward;
pub mod profiling;
pub mod protocol;
mod report;
pub mod socket;
pub mod watched;

use std::{
    collections::BTreeMap,
    fs::File,
    net::SocketAddr,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::signal::unix::{SignalKind, signal};

use self::{
    board::Board,
    clients::Clients,
    config::AgentConfig,
    outward::Outward,
    socket::{Access, AgentSocket},
    watched::{Finished, Watched},
};
use crate::{
    Error,
    alerts::Alerting,
    cgroupfs::cgroup::{CgroupError, Hierarchy, check_parent},
    cgroupfs::watch::{WatchError, WatchRule, Watcher},
    kernel::probe::Probes,
    output::distribute::Destination,
    output::report::Report,
    output::serve::{self, ServeError},
    store::{Store, StoreLocation, spool},
};

/// The environment variable that holds the bearer token (rather than the config file).
pub const TOKEN_ENV: &str = "CLEANROOM_AGENT_TOKEN";

/// How the agent was started: a configuration file and the flags that override it.
#[derive(Clone, Debug, Default)]
pub struct AgentOptions {
    /// `--config FILE`, re-read on SIGHUP.
    pub config_path: Option<PathBuf>,
    /// `--watch GLOB`: rules after the file's.
    pub watch: Vec<String>,
    /// `--listen ADDR`.
    pub listen: Option<SocketAddr>,
    /// `--interval DURATION`.
    pub interval: Option<Duration>,
    /// `--store PATH|URL`.
    pub store: Option<crate::store::StoreLocation>,
    /// `--no-store`.
    pub no_store: bool,
    /// `--profile`: every rule profiles its cgroups.
    pub profile: bool,
    /// `--profile-frequency HZ` (implies `--profile`).
    pub profile_frequency: Option<u64>,
    /// `--socket PATH` (an empty path: `--no-socket`).
    pub socket: Option<PathBuf>,
    /// `--socket-group GROUP`.
    pub socket_group: Option<String>,
    /// `--runs-cgroup DIR`.
    pub runs_cgroup: Option<PathBuf>,
}

/// Why the agent cannot start.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// No rule at all, and no socket to serve.
    #[error(
        "nothing to do: give --watch GLOB (e.g. --watch 'system.slice/*.scope') or [[watch]] \
         rules in --config FILE, or serve unprivileged runs on a socket (drop --no-socket)"
    )]
    NoRules,
    /// The socket cannot be served.
    #[error(transparent)]
    Socket(#[from] socket::SocketError),
    /// A rule is wrong.
    #[error(transparent)]
    Watch(#[from] WatchError),
    /// The listen address and token do not go together.
    #[error(transparent)]
    Serve(#[from] ServeError),
    /// An alert channel cannot be made ready.
    #[error(transparent)]
    Alerts(#[from] crate::alerts::AlertsError),
    /// A `[[distribute]]` destination cannot be made ready.
    #[error("{0}")]
    Distribute(String),
    /// The address cannot be listened on.
    #[error(
        "cannot listen on {addr}: {source}; choose another with --listen ADDR (or `listen` in the config)"
    )]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

impl AgentOptions {
    /// The configuration: the file's, then the flags over it.
    fn config(&self) -> Result<AgentConfig, Error> {
        let mut config = match &self.config_path {
            Some(path) => AgentConfig::from_file(path)?,
            None => AgentConfig::default(),
        };
        config
            .watch
            .extend(self.watch.iter().map(|g| WatchRule::from_glob(g)));
        if let Some(listen) = self.listen {
            config.listen = Some(listen);
        }
        if let Some(interval) = self.interval {
            config.interval = Some(interval);
        }
        if let Ok(token) = std::env::var(TOKEN_ENV) {
            config.token = Some(token);
        }
        if let Some(hz) = self.profile_frequency {
            config.profile_frequency_hz = Some(hz);
        }
        if let Some(socket) = &self.socket {
            config.socket = Some(socket.clone());
        }
        if let Some(group) = &self.socket_group {
            config.socket_group = Some(group.clone());
        }
        if let Some(dir) = &self.runs_cgroup {
            config.runs_cgroup = Some(dir.clone());
        }
        if self.profile || self.profile_frequency.is_some() {
            for rule in &mut config.watch {
                rule.profile = true;
            }
        }
        Ok(config)
    }

    /// The rules compiled, refusing none at all when there is no socket either.
    fn watcher(config: &AgentConfig) -> Result<Watcher, Error> {
        if config.watch.is_empty() && config.socket().is_none() {
            return Err(AgentError::NoRules.into());
        }
        Ok(Watcher::new(config.watch.clone()).map_err(AgentError::from)?)
    }
}

/// What `prepare` puts in place.
struct Prepared {
    config: AgentConfig,
    v2_mount: PathBuf,
    watcher: Watcher,
    listener: std::net::TcpListener,
    store: Option<Store>,
    /// The clients' runs, when a socket is served.
    clients: Option<(AgentSocket, Clients)>,
    probes: Probes,
    /// Where the watched cgroups' alerts go.
    alerting: Option<Alerting>,
    /// Where their reports are sent, secrets read.
    destinations: Vec<Destination>,
}

/// Runs the agent until SIGTERM or SIGINT; then every live watch's report is stored.
pub async fn agent(opts: AgentOptions) -> Result<(), Error> {
    let mut signals = Signals::new().map_err(Error::Wait)?;
    let prepared = prepare(&opts)?;
    let Prepared {
        config,
        v2_mount,
        watcher,
        listener,
        store,
        clients,
        mut probes,
        alerting,
        destinations,
    } = prepared;
    let listen = config.listen();
    let (calls_in, mut calls) = tokio::sync::mpsc::channel(64);
    let mut clients = clients.map(|(socket, clients)| {
        socket.serve(calls_in);
        clients
    });
    let board = Arc::new(Board::new(store, config.interval(), listen.to_string()));
    let outward = Outward::new(alerting, destinations, config.export.otlp.clone(), &board);
    let mut exports = outward.export_interval().map(|every| {
        let mut ticker = tokio::time::interval(every);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker
    });
    serve(listener, Arc::clone(&board), config.token.clone())?;
    log::info!(
        "watching {} rule(s) below {} every {}; http://{listen}/ (metrics at /metrics)",
        watcher.rules().len(),
        v2_mount.display(),
        humantime::format_duration(config.interval()),
    );
    let mut watched = Watched::new(
        v2_mount,
        watcher,
        config.interval(),
        config.sampling_rates(),
    );
    let mut ticker = tokio::time::interval(config.interval());
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let client_tick = clients.as_ref().and_then(Clients::next_tick);
        tokio::select! {
            _ = ticker.tick() => {
                let keep = clients.as_ref().map(Clients::ids).unwrap_or_default();
                tick(&mut watched, &mut probes, &board, &keep, &outward);
            }
            () = next_tick(&mut exports) => outward.export_figures(&board),
            () = sleep_until(client_tick) => {
                if let Some(clients) = clients.as_mut() {
                    clients.tick(&mut probes);
                }
            }
            Some(incoming) = calls.recv() => {
                if let Some(clients) = clients.as_mut() {
                    clients.handle(incoming, &mut probes, watched.profiling()).await;
                }
            }
            signal = signals.next() => match signal {
                Signal::Reload => reload(&opts, &mut watched),
                Signal::Stop(name) => {
                    log::info!("{name}: finishing {} live watch(es)", watched.watches().len());
                    break;
                }
            },
        }
    }
    if let Some(clients) = clients.as_mut() {
        clients.stop(&mut probes, watched.profiling());
    }
    let stopped = stop(&mut watched, &mut probes, &board, &outward);
    outward.finish();
    stopped
}

/// The next tick of `ticker`; never without one.
async fn next_tick(ticker: &mut Option<tokio::time::Interval>) {
    match ticker {
        Some(ticker) => {
            ticker.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// Sleeps until `at`; forever when there is nothing to wait for.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// Reads the configuration and checks everything before anything is watched: privileges, the
/// v2 hierarchy, the rules, the address (bound now, so a port in use stops the start), the
/// store, then the probes.
fn prepare(opts: &AgentOptions) -> Result<Prepared, Error> {
    let config = opts.config()?;
    let watcher = AgentOptions::watcher(&config)?;
    let listen = config.listen();
    serve::check_listen(listen, config.token.as_deref()).map_err(AgentError::from)?;
    // Before anything is bound or loaded: a channel or destination that cannot work stops the
    // agent here.
    let alerts = config.alerts_linked(&crate::host::hostname());
    let alerting = Alerting::start(&alerts).map_err(AgentError::from)?;
    let destinations = config
        .distribute
        .iter()
        .cloned()
        .map(Destination::new)
        .collect::<Result<_, _>>()
        .map_err(AgentError::Distribute)?;
    crate::run::require_privileges("cleanroom agent")?;
    let hierarchy = Hierarchy::detect()?;
    let listener = std::net::TcpListener::bind(listen).map_err(|source| AgentError::Listen {
        addr: listen,
        source,
    })?;
    let store = match (opts.no_store, &opts.store, &config.store) {
        (true, _, _) => None,
        (false, Some(path), _) | (false, None, Some(path)) => Some(Store::open(path)?),
        (false, None, None) => Some(Store::open(&crate::store::default_location())?),
    };
    let v2_root = File::open(&hierarchy.v2_mount).map_err(|source| CgroupError::Io {
        action: "opening",
        path: hierarchy.v2_mount.clone(),
        source,
    })?;
    let clients = match config.socket() {
        None => None,
        Some(path) => {
            let access =
                Access::resolve(config.socket_group.as_deref()).map_err(AgentError::from)?;
            let parent = match &config.runs_cgroup {
                Some(dir) => check_parent(dir, &hierarchy)?,
                None => hierarchy.v2_mount.join("cleanroom"),
            };
            crate::run::remove_stale_runs(&parent, &hierarchy);
            let socket = AgentSocket::bind(&path, &access).map_err(AgentError::from)?;
            log::info!(
                "serving unprivileged runs on {} (for {}), made under {}",
                socket.path().display(),
                access.describe(),
                parent.display()
            );
            raise_open_files();
            Some((socket, Clients::new(parent, hierarchy.clone())))
        }
    };
    let probes = Probes::load(Some(&v2_root))?;
    Ok(Prepared {
        config,
        v2_mount: hierarchy.v2_mount,
        watcher,
        listener,
        store,
        clients,
        probes,
        alerting,
        destinations,
    })
}

/// Serves the HTTP interface on `listener` in the background.
fn serve(
    listener: std::net::TcpListener,
    board: Arc<Board>,
    token: Option<String>,
) -> Result<(), Error> {
    let addr = listener.local_addr().map_err(Error::Wait)?;
    let listen_err = |source| AgentError::Listen { addr, source };
    listener.set_nonblocking(true).map_err(listen_err)?;
    let listener = tokio::net::TcpListener::from_std(listener).map_err(listen_err)?;
    let router = serve::router(board, token);
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router).await {
            log::error!("the HTTP interface stopped: {e}");
        }
    });
    Ok(())
}

/// Raises the soft limit of open files to the hard one: each client holds a descriptor.
fn raise_open_files() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit read and write the one struct given.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

/// One tick: the watches sampled, the board updated, finished watches reported and stored. A
/// failure is logged and the next tick tries again: a sidecar keeps watching. The subtrees of
/// `keep` (the clients' runs) are left to their own sessions.
fn tick(
    watched: &mut Watched,
    probes: &mut Probes,
    board: &Board,
    keep: &[u64],
    outward: &Outward,
) {
    let began = Instant::now();
    let report = match watched.tick(probes, keep) {
        Ok(report) => report,
        Err(e) => {
            log::error!("sampling the watched cgroups failed: {e}");
            return;
        }
    };
    for id in &report.started {
        if let Some(w) = watched.watches().get(id) {
            log::info!(
                "watching {} (rule `{}`)",
                w.relative.display(),
                w.rule.run_name()
            );
        }
    }
    if let Some(alerting) = outward.alerting() {
        for (id, t) in &report.ticks {
            if let Some(w) = watched.watches().get(id) {
                let target = w.relative.display().to_string();
                for event in &t.events {
                    alerting.raise(&target, event);
                }
            }
        }
        alerting.tick();
    }
    let drops = probes.drops().unwrap_or_default();
    let took = began.elapsed();
    let map_entries = probes
        .map_entries()
        .map(|m| m.into_iter().map(|(k, v)| (k, v as u64)).collect())
        .unwrap_or_default();
    board.update(watched, drops, map_entries, took);
    conclude(report.finished, board, outward);
}

/// Reports and stores finished watches (in one transaction), saying where each went, and
/// queues them for their destinations. When the store fails, each report is spooled for a
/// shared store (stored with the next that it takes) or, for a file, written as JSON beside
/// it, so none is lost.
fn conclude(finished: Vec<Finished>, board: &Board, outward: &Outward) {
    if finished.is_empty() {
        return;
    }
    let names: Vec<String> = finished
        .iter()
        .map(|f| format!("{} ({})", f.relative.display(), f.ended.as_str()))
        .collect();
    let reports: Vec<Report> = finished
        .into_iter()
        .map(|f| {
            let target = f.relative.display().to_string();
            let mut report = report::report(f, board.host());
            if let Some(alerting) = outward.alerting() {
                for alert in crate::output::deliver::end_alerts(&report, &target) {
                    alerting.raise_end(alert);
                }
                report.alerts = Some(alerting.end_target(&target, report.wall_time_ns));
            }
            report
        })
        .collect();
    let ids: Vec<Option<i64>> = match board.store(&reports) {
        Ok(Some(ids)) => {
            for ((name, report), id) in names.iter().zip(&reports).zip(&ids) {
                log::info!(
                    "{name}: run {id} stored, verdict {}",
                    report.verdict.as_str()
                );
            }
            ids.into_iter().map(Some).collect()
        }
        Ok(None) => {
            for (name, report) in names.iter().zip(&reports) {
                log::info!(
                    "{name}: verdict {} (not stored: --no-store)",
                    report.verdict.as_str()
                );
            }
            vec![None; reports.len()]
        }
        Err(e) => {
            log::error!("{} report(s) could not be stored: {e}", reports.len());
            match board.spool_for() {
                Some(location) => spool_unstored(&reports, &names, &location, board),
                None => keep_unstored(&reports, &names, board),
            }
            vec![None; reports.len()]
        }
    };
    for ((name, report), id) in names.iter().zip(&reports).zip(ids) {
        outward.distribute(name, id, report);
    }
}

/// Spools reports the shared store at `location` did not take, for the next time it does
/// ([`Board::store`]); a report that cannot be spooled is written as JSON as
/// [`keep_unstored`] does.
fn spool_unstored(reports: &[Report], names: &[String], location: &StoreLocation, board: &Board) {
    for (report, name) in reports.iter().zip(names) {
        match spool::put(location, report) {
            Ok(path) => log::warn!(
                "{name}: report spooled in {}: it goes to {location} once that takes a run \
                 again, or with `cleanroom store flush`",
                path.display()
            ),
            Err(e) => {
                log::error!("{name}: the report could not be spooled: {e}");
                keep_unstored(
                    std::slice::from_ref(report),
                    std::slice::from_ref(name),
                    board,
                );
            }
        }
    }
}

/// Writes reports the store did not take as JSON files beside it, saying where.
fn keep_unstored(reports: &[Report], names: &[String], board: &Board) {
    let dir = board
        .unstored_dir()
        .unwrap_or_else(|| std::env::temp_dir().join("cleanroom-unstored"));
    if let Err(e) = std::fs::create_dir_all(&dir) {
        log::error!("cannot make {}: {e}; the reports are lost", dir.display());
        return;
    }
    for (report, name) in reports.iter().zip(names) {
        let path = dir.join(format!(
            "{}-{}.json",
            report.cgroup.id,
            report.started_at.replace(':', "")
        ));
        let written = serde_json::to_vec_pretty(report)
            .map_err(|e| e.to_string())
            .and_then(|json| crate::output::render::write(&path, &json).map_err(|e| e.to_string()));
        match written {
            Ok(()) => log::warn!(
                "{name}: report kept in {} (`cleanroom report FILE` reads it)",
                path.display()
            ),
            Err(e) => log::error!("{name}: the report could not be kept either: {e}"),
        }
    }
}

/// Re-reads the configuration (SIGHUP): new rules apply from the next tick; a bad file keeps
/// the rules in force.
fn reload(opts: &AgentOptions, watched: &mut Watched) {
    let reloaded = opts
        .config()
        .and_then(|c| Ok((AgentOptions::watcher(&c)?, c.sampling_rates())));
    match reloaded {
        Ok((w, rates)) => {
            log::info!(
                "SIGHUP: configuration reloaded, {} rule(s)",
                w.rules().len()
            );
            watched.set_watcher(w, rates);
        }
        Err(e) => log::warn!("SIGHUP: the configuration was not reloaded, the old one stays: {e}"),
    }
}

/// Finishes and stores every live watch.
fn stop(
    watched: &mut Watched,
    probes: &mut Probes,
    board: &Board,
    outward: &Outward,
) -> Result<(), Error> {
    let finished = watched.stop(probes)?;
    conclude(finished, board, outward);
    board.update(watched, BTreeMap::new(), BTreeMap::new(), Duration::ZERO);
    Ok(())
}

/// What a signal asks of the agent.
enum Signal {
    /// SIGHUP.
    Reload,
    /// SIGTERM or SIGINT, by name.
    Stop(&'static str),
}

/// The signals the agent handles instead of dying of them.
struct Signals {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> std::io::Result<Self> {
        Ok(Self {
            int: signal(SignalKind::interrupt())?,
            term: signal(SignalKind::terminate())?,
            hup: signal(SignalKind::hangup())?,
        })
    }

    async fn next(&mut self) -> Signal {
        tokio::select! {
            _ = self.int.recv() => Signal::Stop("SIGINT"),
            _ = self.term.recv() => Signal::Stop("SIGTERM"),
            _ = self.hup.recv() => Signal::Reload,
        }
    }
}
