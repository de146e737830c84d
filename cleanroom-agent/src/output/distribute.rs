//! The finished report sent beyond this machine (`[[distribute]]`): by email with the report
//! attached, its JSON POSTed to a URL, or copied into a directory (atomically). Each is tried
//! once, bounded by its timeout; its outcome is listed in the local report, which a failed
//! distribution never keeps from being written.

use std::{path::PathBuf, time::Duration, time::Instant};

use serde::{Deserialize, Serialize};

use crate::{
    mail::{self, SmtpSecurity},
    output::{
        render::{self, Format},
        report::Report,
    },
    trust::Trust,
    units::de_duration,
};

/// `[[distribute]]`: one destination.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DistributeConfig {
    /// What kind of destination.
    pub kind: DistributeKind,
    /// `post`: where to.
    #[serde(default)]
    pub url: Option<String>,
    /// `directory`: which (made if missing).
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// The environment variable holding the secret: `post`'s HMAC-SHA256 key (the
    /// `X-Cleanroom-Signature` header), `email`'s password.
    #[serde(default)]
    pub secret_env: Option<String>,
    /// `email`: the report's format attached (`html`, the default; `pdf`, `json`, `md`).
    #[serde(default = "default_attach")]
    pub attach: String,
    /// `email`: the SMTP server.
    #[serde(default)]
    pub host: Option<String>,
    /// `email`: its port (default by `security`: 587, 465, 25).
    #[serde(default)]
    pub port: Option<u16>,
    /// `email`: `starttls` (default), `tls` or `plain`.
    #[serde(default)]
    pub security: SmtpSecurity,
    /// `email`: the user to log in as (the password from `secret_env`).
    #[serde(default)]
    pub username: Option<String>,
    /// `email`: the sender.
    #[serde(default)]
    pub from: Option<String>,
    /// `email`: the addresses, separated by commas.
    #[serde(default)]
    pub to: Option<String>,
    /// `post`, `email`: the CA certificates (PEM) the receiver's TLS certificate must be
    /// signed by, instead of the public roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// How long it may take (default 30 s).
    #[serde(default = "default_timeout", deserialize_with = "de_duration")]
    pub timeout: Duration,
}

fn default_attach() -> String {
    "html".into()
}

fn default_timeout() -> Duration {
    Duration::from_secs(30)
}

/// The kinds of destination.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DistributeKind {
    /// An email with the report attached.
    Email,
    /// The JSON report POSTed.
    Post,
    /// The JSON report copied into a directory.
    Directory,
}

impl DistributeKind {
    /// Its name in the configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            DistributeKind::Email => "email",
            DistributeKind::Post => "post",
            DistributeKind::Directory => "directory",
        }
    }
}

/// What became of one distribution, as the local report lists it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Distributed {
    /// The kind.
    pub kind: DistributeKind,
    /// Where: the URL, the directory's file, the addresses.
    pub to: String,
    /// Whether it got there.
    pub delivered: bool,
    /// `delivered`, or why not (never holding a secret).
    pub outcome: String,
    /// How long it took, ms.
    pub ms: f64,
}

impl DistributeConfig {
    /// Checks what serde cannot; the message names the field.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        match self.kind {
            DistributeKind::Post => match &self.url {
                Some(u) if u.starts_with("http://") || u.starts_with("https://") => Ok(()),
                Some(u) => Err(("url", format!("{u:?} is not an http:// or https:// URL"))),
                None => Err(("url", "a post needs a url".into())),
            },
            DistributeKind::Directory => match &self.path {
                Some(_) => Ok(()),
                None => Err(("path", "a directory needs a path".into())),
            },
            DistributeKind::Email => {
                let (Some(_), Some(from), Some(to)) = (&self.host, &self.from, &self.to) else {
                    return Err(("host", "an email needs `host`, `from` and `to`".into()));
                };
                mail::check_addresses(from).map_err(|m| ("from", m))?;
                mail::check_addresses(to).map_err(|m| ("to", m))?;
                match self.attach.as_str() {
                    "html" | "pdf" | "json" | "md" => Ok(()),
                    other => Err(("attach", format!("{other:?}: attach html, pdf, json or md"))),
                }
            }
        }
    }
}

/// A destination ready to use: its config and its secret, read from the environment.
#[derive(Clone)]
pub struct Destination {
    config: DistributeConfig,
    secret: Option<String>,
    trust: Trust,
}

impl std::fmt::Debug for Destination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Destination")
            .field("kind", &self.config.kind)
            .field("secret", &self.secret.as_ref().map(|_| "(set)"))
            .finish()
    }
}

impl Destination {
    /// Reads `config`'s secret and its `ca_file`; an unset variable or an unusable file is
    /// an error naming it.
    pub fn new(config: DistributeConfig) -> Result<Self, String> {
        let trust =
            Trust::load(config.ca_file.as_deref()).map_err(|e| format!("distribute: {e}"))?;
        let secret = match &config.secret_env {
            Some(var) => Some(std::env::var(var).map_err(|_| {
                format!("distribute: the environment variable {var} (secret_env) is not set")
            })?),
            None => None,
        };
        Ok(Self {
            config,
            secret,
            trust,
        })
    }

    /// How long one send may take.
    pub fn timeout(&self) -> Duration {
        self.config.timeout
    }

    /// Sends `report` there, once.
    pub fn send(&self, report: &Report) -> Distributed {
        let c = &self.config;
        let began = Instant::now();
        let (to, result) = match c.kind {
            DistributeKind::Directory => {
                let dir = c.path.clone().unwrap_or_default();
                let file = dir.join(file_name(report));
                let result = std::fs::create_dir_all(&dir)
                    .map_err(|e| format!("{}: {e}", dir.display()))
                    .and_then(|()| {
                        render::write(&file, &render::report_json(report))
                            .map_err(|e| e.to_string())
                    });
                (file.display().to_string(), result)
            }
            DistributeKind::Post => {
                let url = c.url.clone().unwrap_or_default();
                let body = String::from_utf8_lossy(&render::report_json(report)).into_owned();
                let mut headers = vec![("Content-Type", "application/json".to_owned())];
                if let Some(secret) = &self.secret {
                    headers.push((
                        crate::alerts::channels::SIGNATURE_HEADER,
                        crate::alerts::channels::sign(secret, &body),
                    ));
                }
                let result =
                    crate::alerts::channels::post(&url, &headers, body, c.timeout, &self.trust);
                (url, result)
            }
            DistributeKind::Email => {
                let to = c.to.clone().unwrap_or_default();
                (to, self.email(report))
            }
        };
        Distributed {
            kind: c.kind,
            to,
            delivered: result.is_ok(),
            outcome: result.err().unwrap_or_else(|| "delivered".into()),
            ms: began.elapsed().as_secs_f64() * 1e3,
        }
    }

    fn email(&self, report: &Report) -> Result<(), String> {
        let c = &self.config;
        let (format, extension, mime) = match c.attach.as_str() {
            "pdf" => (Format::Pdf, "pdf", "application/pdf"),
            "json" => (Format::Json, "json", "application/json"),
            "md" => (Format::Markdown, "md", "text/markdown; charset=utf-8"),
            _ => (Format::Html, "html", "text/html; charset=utf-8"),
        };
        let attachment = render::report(report, format).map_err(|e| e.to_string())?;
        let server = mail::Server {
            host: c.host.as_deref().unwrap_or(""),
            port: c.port,
            security: c.security,
            login: c
                .username
                .as_deref()
                .map(|user| (user, self.secret.as_deref().unwrap_or(""))),
            timeout: c.timeout,
            trust: &self.trust,
        };
        mail::send(
            &server,
            mail::Mail {
                from: c.from.as_deref().unwrap_or(""),
                to: c.to.as_deref().unwrap_or(""),
                subject: subject(report),
                body: report.summary(),
                attachment: Some((
                    format!("cleanroom-report.{extension}"),
                    mime.into(),
                    attachment,
                )),
            },
        )
    }
}

/// The subject of a report's email: its verdict and what ran.
pub fn subject(report: &Report) -> String {
    let what = report
        .name
        .clone()
        .unwrap_or_else(|| report.command.join(" "));
    let what: String = what.chars().take(100).collect();
    format!(
        "[Cleanroom] {}: {what}",
        report.verdict.as_str().to_uppercase()
    )
}

/// The file a report is copied to in a directory: its name (or `run`) and start, which do not
/// clash between runs.
fn file_name(report: &Report) -> String {
    let name: String = report
        .name
        .as_deref()
        .unwrap_or("run")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .take(64)
        .collect();
    let started: String = report
        .started_at
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .collect();
    format!("{name}-{started}.json")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_is_copied_under_its_name_and_start() {
        let mut r = Report::example();
        r.name = Some("unit tests/../x".into());
        r.started_at = "2026-12-06T19:10:12.5Z".into();
        assert_eq!(file_name(&r), "unit_tests____x-20261206T1910125Z.json");
        let dir = tempfile::tempdir().unwrap();
        let d = Destination::new(DistributeConfig {
            kind: DistributeKind::Directory,
            path: Some(dir.path().join("reports")),
            ..toml::from_str("kind = \"directory\"").unwrap()
        })
        .unwrap();
        let sent = d.send(&r);
        assert!(sent.delivered, "{sent:?}");
        let copied = std::fs::read(dir.path().join("reports").join(file_name(&r))).unwrap();
        assert_eq!(copied, render::report_json(&r));
    }
}
