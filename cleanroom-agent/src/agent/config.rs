//! The agent's configuration file (`cleanroom agent --config agent.toml`): where it listens,
//! its token, how often it samples, where reports are stored, and the `[[watch]]` rules with
//! their names, tags, thresholds, SLOs and whether their cgroups are profiled, where alerts
//! go and where reports are sent. A bad file is an error naming the file, line and key, as for `cleanroom run`'s
//! configuration.
//!
//! ```toml
//! listen = "127.0.0.1:9464"
//! socket = "/run/cleanroom/agent.sock"
//! socket_group = "cleanroom"
//! interval = "1s"
//! profile_frequency_hz = 99
//!
//! [[watch]]
//! glob = "ci/job-*"
//! name = "ci-jobs"
//! profile = true
//! tags = { team = "infra" }
//! thresholds = { max_memory_usage_bytes = "2GiB" }
//! slos = [{ name = "cpu", objective = "cpu_time <= 10m" }]
//!
//! [[alerts.channels]]            # as for `cleanroom run` (see `crate::alerts`)
//! name = "ops"
//! kind = "webhook"
//! url = "http://127.0.0.1:8080/hook"
//!
//! [[distribute]]                 # each finished watch's report, as for `cleanroom run`
//! kind = "directory"
//! path = "/srv/cleanroom/reports"
//! ```

use std::{net::SocketAddr, path::Path, path::PathBuf, time::Duration};

use serde::Deserialize;

use crate::{
    cgroupfs::watch::WatchRule,
    config::{
        ConfigError, MAX_PROFILING_FREQUENCY_HZ, PerformanceMonitoring, check_alerts,
        check_distribute, check_export, check_slos, parse, read_config,
    },
    kernel::probe::SamplingRates,
    output::serve::DEFAULT_LISTEN,
    units::de_opt_duration,
};

/// The shortest interval the agent samples at: every watched cgroup is read each time.
pub const MIN_INTERVAL: Duration = Duration::from_millis(100);

/// The whole file. Every key has a default; command-line flags override it.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// Address of the HTTP interface (default 127.0.0.1:9464). Anything but loopback needs a
    /// `token`.
    #[serde(default)]
    pub listen: Option<SocketAddr>,
    /// Bearer token every HTTP request must carry, when set. `$CLEANROOM_AGENT_TOKEN` overrides
    /// it (so it need not be written in the file).
    #[serde(default)]
    pub token: Option<String>,
    /// How often each watched cgroup is sampled and new cgroups are looked for (default 1s).
    #[serde(default, deserialize_with = "de_opt_duration")]
    pub interval: Option<Duration>,
    /// History store the reports of finished cgroups go to, a SQLite file or a `postgres://`
    /// URL (default: as `cleanroom run`'s).
    #[serde(default)]
    pub store: Option<crate::store::StoreLocation>,
    /// Samples a second on each CPU when profiling (rules with `profile = true`; default 99,
    /// 1 to 1000).
    #[serde(default)]
    pub profile_frequency_hz: Option<u64>,
    /// Which cgroups to watch; the first rule a cgroup matches is its rule.
    #[serde(default)]
    pub watch: Vec<WatchRule>,
    /// The Unix socket unprivileged `cleanroom run` reaches the agent on (default
    /// `/run/cleanroom/agent.sock`; `""` for none).
    #[serde(default)]
    pub socket: Option<PathBuf>,
    /// The socket's group, whose members may use it (default `cleanroom` when that group
    /// exists, else the socket is root's alone).
    #[serde(default)]
    pub socket_group: Option<String>,
    /// Where the clients' runs are made (default `<v2 mount>/cleanroom`).
    #[serde(default)]
    pub runs_cgroup: Option<PathBuf>,
    /// Where alerts about the watched cgroups go (`[alerts]`, as for `cleanroom run`).
    #[serde(default)]
    pub alerts: crate::alerts::AlertsConfig,
    /// Where each finished watch's report is sent (`[[distribute]]`, as for `cleanroom run`).
    #[serde(default)]
    pub distribute: Vec<crate::output::distribute::DistributeConfig>,
    /// `[export.otlp]`: the watched cgroups' figures every `interval`, and each finished
    /// watch's run, to an OpenTelemetry collector.
    #[serde(default)]
    pub export: crate::config::ExportConfig,
}

impl AgentConfig {
    /// Parses the file's text; `file` names it in errors.
    pub fn from_toml(text: &str, file: &str) -> Result<Self, ConfigError> {
        let config: Self = parse(text, file)?;
        for rule in &config.watch {
            check_slos(&rule.slos, text, file)?;
        }
        check_alerts(&config.alerts, text, file)?;
        check_distribute(&config.distribute, text, file)?;
        check_export(&config.export, text, file)?;
        if config.interval.is_some_and(|i| i < MIN_INTERVAL) {
            return Err(ConfigError {
                file: file.to_owned(),
                line: None,
                key: Some("interval".into()),
                message: format!(
                    "must be at least {}",
                    humantime::format_duration(MIN_INTERVAL)
                ),
            });
        }
        if let Some(hz) = config.profile_frequency_hz
            && !(1..=MAX_PROFILING_FREQUENCY_HZ).contains(&hz)
        {
            return Err(ConfigError {
                file: file.to_owned(),
                line: text
                    .lines()
                    .position(|l| l.trim_start().starts_with("profile_frequency_hz"))
                    .map(|i| i + 1),
                key: Some("profile_frequency_hz".into()),
                message: format!("must be 1 to {MAX_PROFILING_FREQUENCY_HZ} (samples a second)"),
            });
        }
        Ok(config)
    }

    /// How the profiles sample: as `cleanroom run`'s defaults, at the frequency set.
    pub fn sampling_rates(&self) -> SamplingRates {
        let mut pm = PerformanceMonitoring::default();
        if let Some(hz) = self.profile_frequency_hz {
            pm.profiling_frequency_hz = hz;
        }
        SamplingRates::of(&pm)
    }

    /// Reads the file (a regular file of at most 1 MiB).
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let (file, text) = read_config(path)?;
        Self::from_toml(&text, &file)
    }

    /// The address to listen on.
    pub fn listen(&self) -> SocketAddr {
        self.listen.unwrap_or_else(|| {
            DEFAULT_LISTEN
                .parse()
                .expect("the default listen address parses")
        })
    }

    /// The alerts' configuration, linking the agent's page (when `alerts.link` is not set) if
    /// it listens beyond loopback, where the people alerted can reach it: the address it
    /// listens on, or `hostname` when that is any address.
    pub fn alerts_linked(&self, hostname: &str) -> crate::alerts::AlertsConfig {
        let mut alerts = self.alerts.clone();
        let listen = self.listen();
        if alerts.link.is_none() && !listen.ip().is_loopback() {
            let host = if listen.ip().is_unspecified() {
                hostname.to_owned()
            } else {
                match listen {
                    SocketAddr::V4(a) => a.ip().to_string(),
                    SocketAddr::V6(a) => format!("[{}]", a.ip()),
                }
            };
            alerts.link = Some(format!("http://{host}:{}/", listen.port()));
        }
        alerts
    }

    /// The sampling interval.
    pub fn interval(&self) -> Duration {
        self.interval.unwrap_or(Duration::from_secs(1))
    }

    /// The Unix socket to serve clients on, if any.
    pub fn socket(&self) -> Option<PathBuf> {
        match &self.socket {
            Some(path) if path.as_os_str().is_empty() => None,
            Some(path) => Some(path.clone()),
            None => Some(PathBuf::from(super::protocol::DEFAULT_SOCKET)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_file_parses_with_rules_thresholds_and_slos() {
        let c = AgentConfig::from_toml(
            r#"
listen = "0.0.0.0:9500"
token = "s3cret"
interval = "500ms"
store = "/var/lib/cleanroom/agent.db"

profile_frequency_hz = 49

[[watch]]
glob = "ci/job-*"
name = "ci-jobs"
profile = true
tags = { team = "infra" }
thresholds = { max_memory_usage_bytes = "1GiB" }
slos = [{ name = "cpu", objective = "cpu_time <= 10m" }]

[[watch]]
glob = "docker/*"
"#,
            "agent.toml",
        )
        .unwrap();
        assert_eq!(c.listen().to_string(), "0.0.0.0:9500");
        assert_eq!(c.interval(), Duration::from_millis(500));
        assert_eq!(c.watch.len(), 2);
        assert_eq!(c.watch[0].run_name(), "ci-jobs");
        assert_eq!(c.watch[0].tags["team"], "infra");
        assert_eq!(c.watch[0].thresholds.max_memory_usage_bytes, Some(1 << 30));
        assert!(c.watch[0].slos[0].parsed.is_ok());
        assert_eq!(c.watch[1].run_name(), "docker/*");
        assert!(c.watch[0].profile && !c.watch[1].profile);
        assert_eq!(c.sampling_rates().frequency_hz, 49);
        // Listening on any address: alerts link the page by the host's name.
        assert_eq!(
            c.alerts_linked("ci-7").link.as_deref(),
            Some("http://ci-7:9500/")
        );
    }

    #[test]
    fn alerts_link_the_page_only_where_people_can_reach_it() {
        let linked = |text: &str| {
            AgentConfig::from_toml(text, "agent.toml")
                .unwrap()
                .alerts_linked("ci-7")
                .link
        };
        assert_eq!(linked(""), None, "loopback: not reachable by those alerted");
        assert_eq!(
            linked("listen = \"10.0.0.5:9464\"\ntoken = \"t\""),
            Some("http://10.0.0.5:9464/".into())
        );
        assert_eq!(
            linked(
                "listen = \"[::]:9464\"\ntoken = \"t\"\n[alerts]\nlink = \"https://ci.example/\""
            ),
            Some("https://ci.example/".into()),
            "a link set is kept"
        );
    }

    #[test]
    fn defaults_without_a_file() {
        let c = AgentConfig::from_toml("", "agent.toml").unwrap();
        assert_eq!(c.listen().to_string(), DEFAULT_LISTEN);
        assert_eq!(c.interval(), Duration::from_secs(1));
        assert!(c.watch.is_empty() && c.token.is_none());
    }

    #[test]
    fn errors_name_the_line_and_key() {
        let e = AgentConfig::from_toml(
            "interval = \"1s\"\n[[watch]]\nglob = \"a/*\"\nnmae = \"x\"\n",
            "agent.toml",
        )
        .unwrap_err();
        assert_eq!((e.line, e.key.as_deref()), (Some(4), Some("nmae")), "{e}");
        let e = AgentConfig::from_toml(
            "[[watch]]\nglob = \"a/*\"\nslos = [{ name = \"x\", objective = \"cpu_time <= lots\" }]\n",
            "agent.toml",
        )
        .unwrap_err();
        assert_eq!(e.line, Some(3), "{e}");
        let e = AgentConfig::from_toml("listen = \"nowhere\"\n", "agent.toml").unwrap_err();
        assert_eq!(e.line, Some(1), "{e}");
        let e = AgentConfig::from_toml("interval = \"1ms\"\n", "agent.toml").unwrap_err();
        assert!(e.to_string().contains("at least 100ms"), "{e}");
        let e = AgentConfig::from_toml("\nprofile_frequency_hz = 0\n", "agent.toml").unwrap_err();
        assert_eq!(
            (e.line, e.key.as_deref()),
            (Some(2), Some("profile_frequency_hz")),
            "{e}"
        );
    }
}
