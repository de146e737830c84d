//! One attempt to hand a notification to a channel: the payload each kind of receiver takes
//! (pure, tested apart), and the HTTP POST or program run that delivers it, bounded by a
//! timeout.
//!
//! - `webhook`: the alert as JSON; with a secret, `X-Cleanroom-Signature: sha256=HEX`, the
//!   HMAC-SHA256 of the body under the secret (as GitHub signs its webhooks).
//! - `slack`: an incoming-webhook message: a `text` line and readable blocks.
//! - `sms`: a form (`To`, `From`, `Body`) or JSON POST, the account and token as HTTP basic
//!   auth, as Twilio-style gateways take it.
//! - `command`: the program, given the alert as JSON on stdin; exit status 0 is delivered.
//! - `email`: a plain-text message through an SMTP server (STARTTLS, TLS or plain, with a
//!   login when a user is named), the password from the environment.

use std::{
    io::Write as _,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use hmac::{Hmac, Mac as _};
use sha2::Sha256;

use crate::trust::Trust;

use super::{
    config::{ChannelConfig, ChannelKind, SmsFormat},
    policy::{Alert, AlertState},
};

/// The signature header of a signed webhook.
pub const SIGNATURE_HEADER: &str = "X-Cleanroom-Signature";

/// A channel ready to send: its config and its secret, read from the environment once.
pub struct Channel {
    /// Its config.
    pub config: ChannelConfig,
    /// Its secret (never printed: [`std::fmt::Debug`] leaves it out).
    secret: Option<String>,
    /// The authorities its TLS certificate may be signed by.
    trust: Trust,
}

impl std::fmt::Debug for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Channel")
            .field("name", self.config.name.get_ref())
            .field("kind", &self.config.kind)
            .field("secret", &self.secret.as_ref().map(|_| "(set)"))
            .finish()
    }
}

/// Why a channel could not be made ready.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    /// Its `secret_env` names a variable that is not set.
    #[error("alerts channel {channel:?}: the environment variable {var} (secret_env) is not set")]
    SecretMissing {
        /// The channel.
        channel: String,
        /// The variable.
        var: String,
    },
    /// Its `ca_file` cannot be used.
    #[error("alerts channel {channel:?}: {detail}")]
    Trust {
        /// The channel.
        channel: String,
        /// Why.
        detail: String,
    },
}

impl Channel {
    /// Reads `config`'s secret from the environment, and its `ca_file`.
    pub fn new(config: ChannelConfig) -> Result<Self, ChannelError> {
        let trust =
            Trust::load(config.ca_file.as_deref()).map_err(|detail| ChannelError::Trust {
                channel: config.name.get_ref().clone(),
                detail,
            })?;
        let secret = match &config.secret_env {
            Some(var) => Some(std::env::var(var).map_err(|_| ChannelError::SecretMissing {
                channel: config.name.get_ref().clone(),
                var: var.clone(),
            })?),
            None => None,
        };
        Ok(Self {
            config,
            secret,
            trust,
        })
    }

    /// One attempt to deliver `alert`, within `timeout`. `Err` says why it failed, in words
    /// that never hold the secret.
    pub fn send(&self, alert: &Alert, timeout: Duration) -> Result<(), String> {
        let c = &self.config;
        match c.kind {
            ChannelKind::Command => run_command(&c.command, &alert_json(alert), timeout),
            ChannelKind::Email => self.email(alert, timeout),
            ChannelKind::Webhook => {
                let body = alert_json(alert);
                let mut headers = vec![("Content-Type", "application/json".to_owned())];
                if let Some(secret) = &self.secret {
                    headers.push((SIGNATURE_HEADER, sign(secret, &body)));
                }
                post(self.url(), &headers, body, timeout, &self.trust)
            }
            ChannelKind::Slack => post(
                self.url(),
                &[("Content-Type", "application/json".to_owned())],
                slack_json(alert),
                timeout,
                &self.trust,
            ),
            ChannelKind::Sms => {
                let text = sms_text(alert);
                let (to, from) = (
                    c.to.as_deref().unwrap_or(""),
                    c.from.as_deref().unwrap_or(""),
                );
                let (content_type, body) = match c.format {
                    SmsFormat::Form => (
                        "application/x-www-form-urlencoded",
                        form(&[("To", to), ("From", from), ("Body", &text)]),
                    ),
                    SmsFormat::Json => (
                        "application/json",
                        serde_json::json!({"to": to, "from": from, "body": text}).to_string(),
                    ),
                };
                let mut headers = vec![("Content-Type", content_type.to_owned())];
                if let Some(account) = &c.account {
                    let token = self.secret.as_deref().unwrap_or("");
                    headers.push(("Authorization", basic_auth(account, token)));
                }
                post(self.url(), &headers, body, timeout, &self.trust)
            }
        }
    }

    /// Sends `alert` as an email, within `timeout` for each step of the SMTP dialogue.
    fn email(&self, alert: &Alert, timeout: Duration) -> Result<(), String> {
        let c = &self.config;
        let (subject, body) = email_text(alert);
        let server = crate::mail::Server {
            host: c.host.as_deref().unwrap_or(""),
            port: c.port,
            security: c.security,
            login: c
                .username
                .as_deref()
                .map(|user| (user, self.secret.as_deref().unwrap_or(""))),
            timeout,
            trust: &self.trust,
        };
        crate::mail::send(
            &server,
            crate::mail::Mail {
                from: c.from.as_deref().unwrap_or(""),
                to: c.to.as_deref().unwrap_or(""),
                subject,
                body,
                attachment: None,
            },
        )
    }

    fn url(&self) -> &str {
        self.config.url.as_deref().unwrap_or("")
    }
}

/// The alert as the JSON webhooks and commands get.
pub fn alert_json(alert: &Alert) -> String {
    serde_json::to_string(alert).unwrap_or_else(|_| "{}".into())
}

/// `sha256=HEX` of the HMAC-SHA256 of `body` under `secret`.
pub fn sign(secret: &str, body: &str) -> String {
    let mut mac = <Hmac<Sha256>>::new_from_slice(secret.as_bytes())
        .unwrap_or_else(|_| <Hmac<Sha256>>::new_from_slice(b"").expect("an empty key"));
    mac.update(body.as_bytes());
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// A Slack incoming-webhook message: a `text` fallback and blocks a person reads.
pub fn slack_json(alert: &Alert) -> String {
    let (icon, what) = match alert.state {
        AlertState::Firing if alert.escalated => (":rotating_light:", "still firing"),
        AlertState::Firing => (":warning:", "firing"),
        AlertState::Resolved => (":white_check_mark:", "resolved"),
    };
    let title = format!(
        "{icon} Cleanroom alert #{} {what}: {}",
        alert.id.0, alert.rule
    );
    let mut fields = vec![
        format!("*Run*\n{}", alert.target),
        format!("*Severity*\n{:?}", alert.severity).to_lowercase(),
    ];
    if let Some(v) = alert.value {
        fields.push(format!("*Measured*\n{v}"));
    }
    if let Some(l) = alert.limit {
        fields.push(format!("*Limit*\n{l}"));
    }
    let mut blocks = vec![
        serde_json::json!({"type": "header", "text": {"type": "plain_text", "text": title}}),
        serde_json::json!({"type": "section", "text": {"type": "mrkdwn", "text": alert.summary}}),
        serde_json::json!({"type": "section", "fields": fields.iter()
            .map(|f| serde_json::json!({"type": "mrkdwn", "text": f}))
            .collect::<Vec<_>>()}),
    ];
    if let Some(link) = &alert.link {
        blocks.push(serde_json::json!({"type": "actions", "elements": [{
            "type": "button",
            "text": {"type": "plain_text", "text": "Open in Cleanroom"},
            "url": link,
        }]}));
    }
    serde_json::json!({
        "text": format!("{title} — {}", alert.summary),
        "blocks": blocks,
    })
    .to_string()
}

/// An email's subject and plain-text body.
pub fn email_text(alert: &Alert) -> (String, String) {
    let state = match alert.state {
        AlertState::Firing if alert.escalated => "STILL FIRING",
        AlertState::Firing => "FIRING",
        AlertState::Resolved => "RESOLVED",
    };
    let subject = format!(
        "[Cleanroom] {state}: {} on {} (#{})",
        alert.rule, alert.target, alert.id.0
    );
    let mut body = format!("{}\n\n", alert.summary);
    body += &format!("run:       {}\n", alert.target);
    body += &format!("rule:      {}\n", alert.rule);
    body += &format!("kind:      {:?}\n", alert.kind).to_lowercase();
    body += &format!("severity:  {:?}\n", alert.severity).to_lowercase();
    if let Some(v) = alert.value {
        body += &format!("measured:  {v}\n");
    }
    if let Some(l) = alert.limit {
        body += &format!("limit:     {l}\n");
    }
    body += &format!("at:        {:.1} s into the run\n", alert.t_ns as f64 / 1e9);
    if let Some(link) = &alert.link {
        body += &format!("more:      {link}\n");
    }
    (subject, body)
}

/// The one line an SMS carries.
pub fn sms_text(alert: &Alert) -> String {
    let state = match alert.state {
        AlertState::Firing => "FIRING",
        AlertState::Resolved => "RESOLVED",
    };
    let text = format!(
        "Cleanroom #{} {state} [{}]: {}",
        alert.id.0, alert.target, alert.summary
    );
    text.chars().take(320).collect()
}

/// `application/x-www-form-urlencoded` of `pairs`.
fn form(pairs: &[(&str, &str)]) -> String {
    form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish()
}

/// `Basic BASE64(user:password)`.
fn basic_auth(user: &str, password: &str) -> String {
    use base64::Engine as _;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

/// POSTs `body` to `url`; a 2xx answer within `timeout` is delivered.
pub fn post(
    url: &str,
    headers: &[(&str, String)],
    body: String,
    timeout: Duration,
    trust: &Trust,
) -> Result<(), String> {
    let agent = trust.http_agent(timeout);
    let mut request = agent.post(url);
    for (name, value) in headers {
        request = request.header(*name, value);
    }
    match request.send(body) {
        Ok(response) if response.status().is_success() => Ok(()),
        Ok(response) => Err(format!("HTTP {}", response.status())),
        Err(ureq::Error::Timeout(_)) => Err(format!("no answer within {timeout:?}")),
        Err(e) => Err(e.to_string()),
    }
}

/// Runs `argv` with `input` on its stdin; exit status 0 within `timeout` is delivered, else it
/// is killed.
fn run_command(argv: &[String], input: &str, timeout: Duration) -> Result<(), String> {
    let (program, args) = argv.split_first().ok_or("no program")?;
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("{program}: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        // A program that does not read its input is its own business: not an error here.
        let _ = stdin.write_all(input.as_bytes());
    }
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) if status.success() => return Ok(()),
            Ok(Some(status)) => return Err(format!("{program} exited with {status}")),
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "{program} did not finish within {timeout:?}: killed"
                ));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => return Err(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alerts::{
        config::{AlertKind, AlertType, Severity},
        policy::AlertId,
    };

    fn alert() -> Alert {
        Alert {
            id: AlertId(3),
            state: AlertState::Firing,
            kind: AlertKind::Threshold,
            alert_type: AlertType::Memory,
            severity: Severity::Warning,
            target: "unit-tests".into(),
            rule: "max_memory_usage_bytes".into(),
            summary: "memory is 150 MiB over the limit 100 MiB".into(),
            value: Some(157_286_400.0),
            limit: Some(104_857_600.0),
            t_ns: 2_000_000_000,
            escalated: false,
            link: None,
        }
    }

    #[test]
    fn a_signature_is_the_hmac_sha256_of_the_body() {
        // RFC 4231 test case 2.
        assert_eq!(
            sign("Jefe", "what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn payloads_carry_what_and_the_figures() {
        let a = alert();
        let json: serde_json::Value = serde_json::from_str(&alert_json(&a)).unwrap();
        assert_eq!(json["state"], "firing");
        assert_eq!(json["type"], "memory");
        assert_eq!(json["value"], 157_286_400.0);
        let slack: serde_json::Value = serde_json::from_str(&slack_json(&a)).unwrap();
        assert!(
            slack["text"]
                .as_str()
                .unwrap()
                .contains("max_memory_usage_bytes")
        );
        assert_eq!(slack["blocks"][2]["fields"][0]["text"], "*Run*\nunit-tests");
        assert!(sms_text(&a).starts_with("Cleanroom #3 FIRING [unit-tests]: memory is 150 MiB"));
        assert_eq!(form(&[("Body", "a b&c")]), "Body=a+b%26c");
        assert_eq!(
            basic_auth("Aladdin", "open sesame"),
            "Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ=="
        );
    }

    #[test]
    fn a_command_gets_the_alert_and_one_that_hangs_is_killed() {
        let ok = run_command(
            &[
                "sh".into(),
                "-c".into(),
                "grep -q '\"state\":\"firing\"'".into(),
            ],
            &alert_json(&alert()),
            Duration::from_secs(5),
        );
        assert_eq!(ok, Ok(()));
        let started = Instant::now();
        let hung = run_command(
            &["sleep".into(), "30".into()],
            "",
            Duration::from_millis(200),
        );
        assert!(hung.unwrap_err().contains("killed"));
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}
