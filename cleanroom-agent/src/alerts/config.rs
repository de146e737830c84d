//! `[alerts]` of the configuration: where alerts go (`[[alerts.channels]]`), which go where
//! (`[[alerts.routes]]`), and how hard delivery tries (`[alerts.retry]`, `flush_timeout`).
//!
//! Secrets are never written in the file: a channel names the environment variable that holds
//! its secret (`secret_env`), read when the run starts.

use std::{collections::BTreeSet, time::Duration};

use serde::Deserialize;

pub use crate::mail::SmtpSecurity;
use crate::units::{de_duration, de_opt_duration};

/// `[alerts]`.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlertsConfig {
    /// Where alerts go.
    pub channels: Vec<ChannelConfig>,
    /// Which alerts go where; with none, every alert goes to every channel.
    pub routes: Vec<RouteConfig>,
    /// How each delivery is tried.
    pub retry: RetryConfig,
    /// How long the end of a run waits at most for deliveries still under way (default 10 s);
    /// what is not delivered by then is listed in the report as undelivered.
    #[serde(deserialize_with = "de_duration")]
    pub flush_timeout: Duration,
    /// A page each alert links to (Slack's button, the email's and webhook's `link`): a CI
    /// job's page, a dashboard. The agent links its own page when it listens beyond loopback.
    pub link: Option<String>,
}

impl Default for AlertsConfig {
    fn default() -> Self {
        Self {
            channels: Vec::new(),
            routes: Vec::new(),
            retry: RetryConfig::default(),
            flush_timeout: Duration::from_secs(10),
            link: None,
        }
    }
}

/// `[[alerts.channels]]`: one receiver.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelConfig {
    /// Its name, for routes and the report.
    pub name: toml::Spanned<String>,
    /// What it is.
    pub kind: ChannelKind,
    /// Where to POST (`webhook`, `slack`, `sms`).
    #[serde(default)]
    pub url: Option<String>,
    /// The environment variable holding the channel's secret: the HMAC-SHA256 key of a
    /// `webhook` (its signature header), the token of an `sms` gateway.
    #[serde(default)]
    pub secret_env: Option<String>,
    /// The program an alert is given to as JSON on stdin (`command`), with its arguments.
    #[serde(default)]
    pub command: Vec<String>,
    /// `sms`: the account the gateway knows (sent as HTTP basic auth user with the token).
    #[serde(default)]
    pub account: Option<String>,
    /// `sms`: the number messages go to; `email`: the addresses, separated by commas.
    #[serde(default)]
    pub to: Option<String>,
    /// `sms`: the number messages come from; `email`: the sender's address.
    #[serde(default)]
    pub from: Option<String>,
    /// `email`: the SMTP server.
    #[serde(default)]
    pub host: Option<String>,
    /// `email`: its port (default 587 with `starttls`, 465 with `tls`, 25 with `plain`).
    #[serde(default)]
    pub port: Option<u16>,
    /// `email`: how the connection is protected.
    #[serde(default)]
    pub security: SmtpSecurity,
    /// `email`: the user to log in as (the password from `secret_env`); none: no login.
    #[serde(default)]
    pub username: Option<String>,
    /// The CA certificates (PEM) the receiver's TLS certificate must be signed by, instead of
    /// the public roots: for `https://` and SMTP receivers of a company's own PKI.
    #[serde(default)]
    pub ca_file: Option<std::path::PathBuf>,
    /// `sms`: the body is a form (`form`, as Twilio takes it: `To`, `From`, `Body`) or JSON
    /// (`json`: `to`, `from`, `body`).
    #[serde(default)]
    pub format: SmsFormat,
    /// Notifications this channel takes a minute at most (0: no limit); the rest are counted
    /// in the report as suppressed, never sent late.
    #[serde(default)]
    pub max_per_minute: u32,
}

/// The kinds of channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ChannelKind {
    /// A JSON POST, signed when a secret is named.
    Webhook,
    /// A Slack incoming webhook: readable blocks.
    Slack,
    /// An HTTP SMS gateway: a form or JSON POST with account and token.
    Sms,
    /// A program given the alert as JSON on stdin.
    Command,
    /// An email through an SMTP server.
    Email,
}

/// How an `sms` channel's body is written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SmsFormat {
    /// `application/x-www-form-urlencoded`.
    #[default]
    Form,
    /// `application/json`.
    Json,
}

/// `[[alerts.routes]]`: alerts matching all of its filters go to its channels; still firing
/// after `escalate_after`, to its `escalate_to` channels too.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// The kinds of alert (`threshold`, `slo_failed`, `oom_kill`, `timeout`, `regression`,
    /// `anomaly`, `verdict`); empty: all but `anomaly` and `verdict`, which go only where a
    /// route names them.
    #[serde(default)]
    pub events: Vec<AlertKind>,
    /// The types of alert (`cpu`, `memory`, `time`, `network`, `disk`, `other`); empty: all.
    #[serde(default)]
    pub types: Vec<AlertType>,
    /// The severities (`info`, `warning`, `critical`); empty: all.
    #[serde(default)]
    pub severities: Vec<Severity>,
    /// The channels, by name.
    pub channels: Vec<toml::Spanned<String>>,
    /// How long an alert may fire before it goes to `escalate_to` too.
    #[serde(default, deserialize_with = "de_opt_duration")]
    pub escalate_after: Option<Duration>,
    /// The next tier, by name.
    #[serde(default)]
    pub escalate_to: Vec<toml::Spanned<String>>,
}

/// What an alert is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertKind {
    /// A threshold breached (and its resolve when it clears).
    Threshold,
    /// An SLO not met at the end of a run.
    SloFailed,
    /// The kernel's OOM killer killed processes of the run.
    OomKill,
    /// The run exceeded its time limit.
    Timeout,
    /// A figure regressed against the baseline.
    Regression,
    /// Intervals of the run far from its usual (the report's anomalies): one alert a run,
    /// with the strongest. Only to routes that name `anomaly`: most runs have some.
    Anomaly,
    /// A watched cgroup's verdict when its watch ends (the agent): `critical` when it
    /// failed, `info` otherwise. Only to routes that name `verdict`.
    Verdict,
}

impl AlertKind {
    /// Whether alerts of this kind go only to routes that name it (with no routes: nowhere),
    /// rather than to every channel: they come with most runs, not only with trouble.
    pub fn opt_in(self) -> bool {
        matches!(self, Self::Anomaly | Self::Verdict)
    }
}

/// Which resource an alert is about (the seed's alert types).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertType {
    /// CPU time or usage.
    Cpu,
    /// Memory.
    Memory,
    /// Wall time.
    Time,
    /// Network traffic.
    Network,
    /// Block I/O.
    Disk,
    /// Anything else.
    Other,
}

/// How urgent an alert is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// For the record: anomalies, a verdict that did not fail.
    Info,
    /// A threshold or regression: worth a look.
    Warning,
    /// An OOM kill, a timeout, a failed SLO.
    Critical,
}

/// `[alerts.retry]`: each delivery's attempts.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryConfig {
    /// Attempts in all, the first included (default 4).
    pub attempts: u32,
    /// The wait before the second attempt (default 1 s), doubled before each next one, each
    /// wait ±20% at random (jitter).
    #[serde(deserialize_with = "de_duration")]
    pub backoff: Duration,
    /// The longest wait between attempts (default 30 s).
    #[serde(deserialize_with = "de_duration")]
    pub max_backoff: Duration,
    /// How long one attempt may take (default 5 s).
    #[serde(deserialize_with = "de_duration")]
    pub timeout: Duration,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            attempts: 4,
            backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(30),
            timeout: Duration::from_secs(5),
        }
    }
}

/// A fault of `[alerts]`: the message, and where in the file (a byte span) when known.
#[derive(Debug, PartialEq, Eq)]
pub struct Invalid {
    /// The key at fault.
    pub key: String,
    /// Where it is written.
    pub span: Option<std::ops::Range<usize>>,
    /// What is wrong.
    pub message: String,
}

impl AlertsConfig {
    /// Checks what serde cannot: names unique and known, each kind's fields present.
    pub fn check(&self) -> Result<(), Invalid> {
        let mut names = BTreeSet::new();
        for (i, c) in self.channels.iter().enumerate() {
            let key = |field: &str| format!("alerts.channels[{i}].{field}");
            let invalid = |field: &str, message: String| Invalid {
                key: key(field),
                span: Some(c.name.span()),
                message,
            };
            if c.name.get_ref().trim().is_empty() {
                return Err(invalid("name", "must not be empty".into()));
            }
            if !names.insert(c.name.get_ref().as_str()) {
                return Err(invalid(
                    "name",
                    format!("a second channel named {:?}", c.name.get_ref()),
                ));
            }
            match c.kind {
                ChannelKind::Webhook | ChannelKind::Slack | ChannelKind::Sms => {
                    let Some(url) = &c.url else {
                        return Err(invalid("url", "this kind of channel needs a url".into()));
                    };
                    if !(url.starts_with("http://") || url.starts_with("https://")) {
                        return Err(invalid(
                            "url",
                            format!("{url:?} is not an http:// or https:// URL"),
                        ));
                    }
                }
                ChannelKind::Email => {
                    if c.host.is_none() || c.to.is_none() || c.from.is_none() {
                        return Err(invalid(
                            "host",
                            "an email channel needs `host`, `from` and `to`".into(),
                        ));
                    }
                    for address in
                        c.to.iter()
                            .flat_map(|t| t.split(','))
                            .chain(c.from.as_deref())
                    {
                        if address.trim().parse::<lettre::Address>().is_err() {
                            return Err(invalid(
                                "to",
                                format!("{:?} is not an email address", address.trim()),
                            ));
                        }
                    }
                }
                ChannelKind::Command => {
                    if c.command.is_empty() {
                        return Err(invalid(
                            "command",
                            "a command channel needs the program to run, e.g. \
                             command = [\"notify-send\"]"
                                .into(),
                        ));
                    }
                }
            }
            if c.kind == ChannelKind::Sms && (c.to.is_none() || c.account.is_none()) {
                return Err(invalid(
                    "to",
                    "an sms channel needs `account` and `to` (and `secret_env` for its token)"
                        .into(),
                ));
            }
        }
        for (i, r) in self.routes.iter().enumerate() {
            if r.channels.is_empty() {
                return Err(Invalid {
                    key: format!("alerts.routes[{i}].channels"),
                    span: None,
                    message: "a route needs at least one channel".into(),
                });
            }
            for (field, list) in [("channels", &r.channels), ("escalate_to", &r.escalate_to)] {
                for name in list {
                    if !names.contains(name.get_ref().as_str()) {
                        return Err(Invalid {
                            key: format!("alerts.routes[{i}].{field}"),
                            span: Some(name.span()),
                            message: format!("no channel is named {:?}", name.get_ref()),
                        });
                    }
                }
            }
            if r.escalate_to.is_empty() != r.escalate_after.is_none() {
                return Err(Invalid {
                    key: format!("alerts.routes[{i}].escalate_after"),
                    span: None,
                    message: "`escalate_after` and `escalate_to` go together".into(),
                });
            }
        }
        let r = &self.retry;
        if r.attempts == 0 || r.attempts > 20 {
            return Err(Invalid {
                key: "alerts.retry.attempts".into(),
                span: None,
                message: "must be 1 to 20".into(),
            });
        }
        if r.timeout.is_zero() {
            return Err(Invalid {
                key: "alerts.retry.timeout".into(),
                span: None,
                message: "must be more than 0".into(),
            });
        }
        if let Some(link) = &self.link
            && !(link.starts_with("http://") || link.starts_with("https://"))
        {
            return Err(Invalid {
                key: "alerts.link".into(),
                span: None,
                message: format!("{link:?} is not an http:// or https:// URL"),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> AlertsConfig {
        #[derive(Deserialize)]
        struct File {
            alerts: AlertsConfig,
        }
        toml::from_str::<File>(text).unwrap().alerts
    }

    #[test]
    fn the_smallest_config_is_a_webhook_with_defaults() {
        let a = parse(
            "[[alerts.channels]]\nname = \"ops\"\nkind = \"webhook\"\nurl = \"http://127.0.0.1:8080/hook\"\n",
        );
        assert_eq!(a.check(), Ok(()));
        assert_eq!(a.channels[0].kind, ChannelKind::Webhook);
        assert_eq!(a.retry.attempts, 4);
        assert_eq!(a.flush_timeout, Duration::from_secs(10));
    }

    #[test]
    fn unknown_channels_and_missing_fields_are_named() {
        let a = parse(
            "[[alerts.channels]]\nname = \"ops\"\nkind = \"webhook\"\nurl = \"http://x\"\n\
             [[alerts.routes]]\nchannels = [\"opz\"]\n",
        );
        let e = a.check().unwrap_err();
        assert_eq!(e.key, "alerts.routes[0].channels");
        assert!(e.message.contains("opz"), "{e:?}");
        let a = parse("[[alerts.channels]]\nname = \"run\"\nkind = \"command\"\n");
        assert_eq!(a.check().unwrap_err().key, "alerts.channels[0].command");
        let a = parse("[[alerts.channels]]\nname = \"w\"\nkind = \"webhook\"\nurl = \"ftp://x\"\n");
        assert_eq!(a.check().unwrap_err().key, "alerts.channels[0].url");
        let a = parse(
            "[[alerts.channels]]\nname = \"w\"\nkind = \"slack\"\nurl = \"http://x\"\n\
             [[alerts.channels]]\nname = \"w\"\nkind = \"slack\"\nurl = \"http://y\"\n",
        );
        assert!(a.check().unwrap_err().message.contains("second channel"));
    }
}
