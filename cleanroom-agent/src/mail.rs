//! Sending one email through an SMTP server: what alerts (an `email` channel) and report
//! distribution (`[[distribute]]` by email) share. STARTTLS, TLS or plain, the server's
//! certificate checked against the public roots or a `ca_file` ([`Trust`]); a login when a
//! user is named, the password from the environment (read by the caller).

use std::time::Duration;

use lettre::{
    Message, SmtpTransport, Transport as _,
    message::{Attachment, MultiPart, SinglePart, header::ContentType},
    transport::smtp::{authentication::Credentials, client::Tls},
};
use serde::Deserialize;

use crate::trust::Trust;

/// How an SMTP connection is protected.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SmtpSecurity {
    /// Plain SMTP, upgraded with STARTTLS (refused if the server cannot).
    #[default]
    Starttls,
    /// TLS from the first byte (SMTPS).
    Tls,
    /// No encryption: for a relay on the same host or network only.
    Plain,
}

impl SmtpSecurity {
    /// The usual port.
    pub fn default_port(self) -> u16 {
        match self {
            SmtpSecurity::Starttls => 587,
            SmtpSecurity::Tls => 465,
            SmtpSecurity::Plain => 25,
        }
    }
}

/// Where and how to send.
#[derive(Clone, Copy, Debug)]
pub struct Server<'a> {
    /// The SMTP server.
    pub host: &'a str,
    /// Its port; `None`: the usual one for `security`.
    pub port: Option<u16>,
    /// How the connection is protected.
    pub security: SmtpSecurity,
    /// The user to log in as, and the password.
    pub login: Option<(&'a str, &'a str)>,
    /// How long each step of the dialogue may take.
    pub timeout: Duration,
    /// The authorities its certificate may be signed by.
    pub trust: &'a Trust,
}

/// One message.
#[derive(Clone, Debug)]
pub struct Mail<'a> {
    /// The sender's address.
    pub from: &'a str,
    /// The addresses, separated by commas.
    pub to: &'a str,
    /// Its subject.
    pub subject: String,
    /// Its plain-text body.
    pub body: String,
    /// A file attached: its name, MIME type and bytes.
    pub attachment: Option<(String, String, Vec<u8>)>,
}

/// Whether each of the comma-separated `addresses` is an email address; the first that is not.
pub fn check_addresses(addresses: &str) -> Result<(), String> {
    for a in addresses.split(',') {
        if a.trim().parse::<lettre::Address>().is_err() {
            return Err(format!("{:?} is not an email address", a.trim()));
        }
    }
    Ok(())
}

/// Sends `mail` through `server`. `Err` says why, never with the password.
pub fn send(server: &Server<'_>, mail: Mail<'_>) -> Result<(), String> {
    let mut message = Message::builder()
        .from(mail.from.parse().map_err(|e| format!("from: {e}"))?)
        .subject(mail.subject);
    for to in mail.to.split(',') {
        message = message.to(to.trim().parse().map_err(|e| format!("to: {e}"))?);
    }
    let text = SinglePart::builder()
        .header(ContentType::TEXT_PLAIN)
        .body(mail.body);
    let message = match mail.attachment {
        None => message.singlepart(text),
        Some((name, mime, bytes)) => {
            let mime = ContentType::parse(&mime).map_err(|e| format!("{mime}: {e}"))?;
            message.multipart(
                MultiPart::mixed()
                    .singlepart(text)
                    .singlepart(Attachment::new(name).body(bytes, mime)),
            )
        }
    }
    .map_err(|e| e.to_string())?;
    let host = server.host;
    let tls = match server.security {
        SmtpSecurity::Starttls => Tls::Required(server.trust.smtp_tls(host)?),
        SmtpSecurity::Tls => Tls::Wrapper(server.trust.smtp_tls(host)?),
        SmtpSecurity::Plain => Tls::None,
    };
    let builder = SmtpTransport::builder_dangerous(host).tls(tls);
    let mut builder = builder
        .port(server.port.unwrap_or(server.security.default_port()))
        .timeout(Some(server.timeout));
    if let Some((user, password)) = server.login {
        builder = builder.credentials(Credentials::new(user.to_owned(), password.to_owned()));
    }
    builder
        .build()
        .send(&message)
        .map(|_| ())
        .map_err(|e| format!("SMTP {host}: {e}"))
}
