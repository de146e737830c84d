//! The history in a PostgreSQL database shared by a fleet's runners: the same rows as the
//! SQLite store (tags and the report as JSONB), its tables made and changed by versioned
//! migrations applied on first use, under an advisory lock so that runners starting together
//! do not race.
//!
//! Connecting is retried until [`CONNECT_DEADLINE`]. TLS when the URL asks for it
//! (`sslmode=require`; `prefer`, the default, uses it when the server offers it), the server's
//! certificate checked against the public roots or the CA file `sslrootcert=FILE` names. The
//! password comes from the URL or `$PGPASSWORD`, and no message ever holds it.
//!
//! The client is synchronous and drives a runtime of its own, which must not run inside
//! another: each call runs on a short-lived thread, so the agent's async loop can use it.
//!
//! A store stays open for as long as its user lives (the agent's, for days). A connection the
//! server closed (a restart, a failover, an idle timeout) is opened again by the next call: one
//! try, and after a failed one no other for [`RECONNECT_EVERY`], so that a database away
//! costs its user one connect timeout now and then rather than one on every call.

use std::{
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use postgres::{Client, Config};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::{RunQuery, RunRow, StoreError};
use crate::{output::report::Report, trust::Trust};

/// How long connecting may take in all, tries included.
pub const CONNECT_DEADLINE: Duration = Duration::from_secs(10);

/// How long after a failed try to connect again the next try may come.
pub const RECONNECT_EVERY: Duration = Duration::from_secs(10);

/// The key of the advisory lock migrations are applied under.
const MIGRATION_LOCK: i64 = 0x636c_6561_6e72_6f6f;

/// The schema, by version: migration N (1-based) takes a database from version N-1 to N. Never
/// edit one that has shipped; add the next.
const MIGRATIONS: &[&str] = &[
    // 1: the runs, as the SQLite store keeps them.
    "CREATE TABLE runs (
         id BIGSERIAL PRIMARY KEY,
         name TEXT,
         started_at TEXT NOT NULL,
         command TEXT NOT NULL,
         host TEXT NOT NULL,
         git_commit TEXT,
         git_branch TEXT,
         exit_code INTEGER NOT NULL,
         verdict TEXT NOT NULL,
         wall_time_ns BIGINT NOT NULL,
         tags JSONB NOT NULL,
         report JSONB NOT NULL
     );
     CREATE INDEX runs_by_name ON runs (name, id);",
    // 2: each run's own id, kept once: a run offered again (spooled, imported) is not doubled.
    "ALTER TABLE runs ADD COLUMN run_id TEXT;
     CREATE UNIQUE INDEX runs_by_run_id ON runs (run_id);",
];

/// Whether `s` is a PostgreSQL URL.
pub fn is_url(s: &str) -> bool {
    s.starts_with("postgres://") || s.starts_with("postgresql://")
}

/// `url` with its password (in the user part, or a `password=` parameter) left out.
pub fn redact(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let (authority, tail) = match rest.find(['/', '?']) {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let authority = match authority.rsplit_once('@') {
        Some((user, host)) => match user.split_once(':') {
            Some((name, _)) => format!("{name}:***@{host}"),
            None => format!("{user}@{host}"),
        },
        None => authority.to_owned(),
    };
    let tail = match tail.split_once('?') {
        Some((path, query)) => {
            let query: Vec<String> = query
                .split('&')
                .map(|kv| match kv.split_once('=') {
                    Some(("password", _)) => "password=***".to_owned(),
                    _ => kv.to_owned(),
                })
                .collect();
            format!("{path}?{}", query.join("&"))
        }
        None => tail.to_owned(),
    };
    format!("{scheme}://{authority}{tail}")
}

/// Splits `sslrootcert=FILE` (which the client does not take) from `url`.
fn split_root_cert(url: &str) -> (String, Option<PathBuf>) {
    let Some((base, query)) = url.split_once('?') else {
        return (url.to_owned(), None);
    };
    let mut root = None;
    let kept: Vec<&str> = query
        .split('&')
        .filter(|kv| match kv.strip_prefix("sslrootcert=") {
            Some(path) => {
                root = Some(PathBuf::from(path));
                false
            }
            None => true,
        })
        .collect();
    if kept.is_empty() {
        (base.to_owned(), root)
    } else {
        (format!("{base}?{}", kept.join("&")), root)
    }
}

/// An open PostgreSQL store.
pub struct Postgres {
    client: Client,
    /// The URL, its password left out.
    url: String,
    /// What it connected with, to connect again.
    config: Config,
    tls: MakeRustlsConnect,
    /// When a try to connect again last failed, and why.
    failed_reconnect: Option<(Instant, String)>,
}

impl Postgres {
    /// Connects (retrying until [`CONNECT_DEADLINE`]) and brings the schema up to date.
    pub fn open(url: &str) -> Result<Self, StoreError> {
        let shown = redact(url);
        let fail = |detail: String| StoreError::Postgres {
            url: shown.clone(),
            detail,
        };
        let (url_for_client, root_cert) = split_root_cert(url);
        let mut config: Config = url_for_client
            .parse()
            .map_err(|e: postgres::Error| fail(format!("not a PostgreSQL URL: {e}")))?;
        if config.get_password().is_none()
            && let Ok(password) = std::env::var("PGPASSWORD")
        {
            config.password(password);
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(5));
        }
        let tls = tls(root_cert).map_err(&fail)?;
        let client = on_own_thread(|| connect(&config, &tls)).map_err(&fail)?;
        let mut store = Self {
            client,
            url: shown,
            config,
            tls,
            failed_reconnect: None,
        };
        store.migrate()?;
        Ok(store)
    }

    /// Connects again if the server closed the connection (see the module doc).
    fn ensure_connected(&mut self) -> Result<(), StoreError> {
        if !self.client.is_closed() {
            return Ok(());
        }
        let fail = |detail: String| StoreError::Postgres {
            url: self.url.clone(),
            detail,
        };
        if let Some((at, why)) = &self.failed_reconnect
            && at.elapsed() < RECONNECT_EVERY
        {
            return Err(fail(format!(
                "the connection was closed and connecting again failed {:.0?} ago: {why}",
                at.elapsed()
            )));
        }
        let (config, tls) = (&self.config, &self.tls);
        match on_own_thread(|| config.connect(tls.clone())) {
            Ok(client) => {
                log::info!("connected again to {}", self.url);
                let closed = std::mem::replace(&mut self.client, client);
                // Dropping a client drives its runtime: off the caller's thread too.
                on_own_thread(move || drop(closed));
                self.failed_reconnect = None;
                Ok(())
            }
            Err(e) => {
                let why = detail(&e);
                self.failed_reconnect = Some((Instant::now(), why.clone()));
                Err(fail(format!(
                    "the connection was closed and connecting again failed: {why}"
                )))
            }
        }
    }

    /// Runs `f` with the client on a thread of its own, connected again first if the server
    /// closed the connection.
    fn call<T: Send>(
        &mut self,
        f: impl FnOnce(&mut Client) -> Result<T, postgres::Error> + Send,
    ) -> Result<T, StoreError> {
        self.ensure_connected()?;
        let client = &mut self.client;
        on_own_thread(move || f(client)).map_err(|e| StoreError::Postgres {
            url: self.url.clone(),
            detail: detail(&e),
        })
    }

    /// Applies the migrations this database has not had, in one transaction, under the lock.
    fn migrate(&mut self) -> Result<(), StoreError> {
        let found = self.call(|client| {
            let mut tx = client.transaction()?;
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])?;
            tx.batch_execute(
                "CREATE TABLE IF NOT EXISTS cleanroom_schema (
                     version INTEGER PRIMARY KEY,
                     applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
                 )",
            )?;
            let found: i32 = tx
                .query_one(
                    "SELECT COALESCE(MAX(version), 0) FROM cleanroom_schema",
                    &[],
                )?
                .get(0);
            for (i, sql) in MIGRATIONS.iter().enumerate().skip(found.max(0) as usize) {
                tx.batch_execute(sql)?;
                let version = i as i32 + 1;
                tx.execute(
                    "INSERT INTO cleanroom_schema (version) VALUES ($1)",
                    &[&version],
                )?;
            }
            tx.commit()?;
            Ok(found)
        })?;
        let known = MIGRATIONS.len() as i32;
        if found > known {
            return Err(StoreError::NewerSchema {
                url: self.url.clone(),
                found,
                known,
            });
        }
        Ok(())
    }

    /// Stores `reports` in one transaction (all or none); their ids, in order.
    pub fn insert_all(&mut self, reports: &[Report]) -> Result<Vec<i64>, StoreError> {
        let rows: Vec<[String; 2]> = reports
            .iter()
            .map(|r| {
                [
                    serde_json::to_string(&r.tags).expect("tags always serialize"),
                    serde_json::to_string(r).expect("a report always serializes"),
                ]
            })
            .collect();
        self.call(|client| {
            let mut tx = client.transaction()?;
            let mut ids = Vec::with_capacity(reports.len());
            for (report, [tags, json]) in reports.iter().zip(&rows) {
                // A run stored before (its run id known) keeps its row and id.
                if let Some(run_id) = &report.run_id
                    && let Some(row) =
                        tx.query_opt("SELECT id FROM runs WHERE run_id = $1", &[run_id])?
                {
                    ids.push(row.get(0));
                    continue;
                }
                let row = tx.query_one(
                    "INSERT INTO runs (name, started_at, command, host, git_commit, git_branch,
                                       exit_code, verdict, wall_time_ns, tags, report, run_id)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10::TEXT::JSONB,
                             $11::TEXT::JSONB, $12)
                     RETURNING id",
                    &[
                        &report.name,
                        &report.started_at,
                        &report.command_line(),
                        &report.host.hostname,
                        &report.host.git_commit,
                        &report.host.git_branch,
                        &report.exit_code,
                        &report.verdict.as_str(),
                        &i64::try_from(report.wall_time_ns).unwrap_or(i64::MAX),
                        tags,
                        json,
                        &report.run_id,
                    ],
                )?;
                ids.push(row.get(0));
            }
            tx.commit()?;
            Ok(ids)
        })
    }

    /// Replaces run `id`'s report; its verdict follows.
    pub fn replace_report(&mut self, id: i64, report: &Report) -> Result<(), StoreError> {
        let json = serde_json::to_string(report).expect("a report always serializes");
        let verdict = report.verdict.as_str();
        let changed = self.call(|client| {
            client.execute(
                "UPDATE runs SET report = $1::TEXT::JSONB, verdict = $2 WHERE id = $3",
                &[&json, &verdict, &id],
            )
        })?;
        if changed == 0 {
            return Err(StoreError::NotFound(id));
        }
        Ok(())
    }

    /// Past runs, newest first, optionally of one name, at most `last`.
    pub fn list(&mut self, query: &RunQuery<'_>) -> Result<Vec<RunRow>, StoreError> {
        let last = i64::try_from(query.last).unwrap_or(i64::MAX);
        let (name, branch, passing) = (query.name, query.branch, query.passing);
        let rows = self.call(|client| {
            client.query(
                "SELECT id, name, started_at, command, host, git_commit, git_branch, exit_code,
                        verdict, wall_time_ns
                 FROM runs
                 WHERE ($1::TEXT IS NULL OR name = $1) AND ($2::TEXT IS NULL OR git_branch = $2)
                   AND (NOT $3 OR (exit_code = 0 AND verdict <> 'fail'))
                 ORDER BY id DESC LIMIT $4",
                &[&name, &branch, &passing, &last],
            )
        })?;
        Ok(rows
            .iter()
            .map(|r| RunRow {
                id: r.get(0),
                name: r.get(1),
                started_at: r.get(2),
                command: r.get(3),
                host: r.get(4),
                git_commit: r.get(5),
                git_branch: r.get(6),
                exit_code: r.get(7),
                verdict: r.get(8),
                wall_time_ns: r.get(9),
            })
            .collect())
    }

    /// The full report of run `id`.
    pub fn report(&mut self, id: i64) -> Result<Report, StoreError> {
        let text: Option<String> = self
            .call(|client| client.query_opt("SELECT report::TEXT FROM runs WHERE id = $1", &[&id]))?
            .map(|row| row.get(0));
        let text = text.ok_or(StoreError::NotFound(id))?;
        serde_json::from_str(&text).map_err(|source| StoreError::Corrupt { id, source })
    }
}

/// Connects, trying again (0.5 s, then twice as long each time) until [`CONNECT_DEADLINE`].
fn connect(config: &Config, tls: &MakeRustlsConnect) -> Result<Client, String> {
    let began = Instant::now();
    let deadline = began + CONNECT_DEADLINE;
    let mut wait = Duration::from_millis(500);
    let mut tries = 0;
    loop {
        tries += 1;
        match config.connect(tls.clone()) {
            Ok(client) => return Ok(client),
            Err(e) if Instant::now() + wait >= deadline => {
                return Err(format!(
                    "{} ({tries} tries in {:.1?})",
                    detail(&e),
                    began.elapsed()
                ));
            }
            Err(e) if e.as_db_error().is_some() => return Err(detail(&e)),
            Err(_) => {
                std::thread::sleep(wait);
                wait *= 2;
            }
        }
    }
}

/// An error in words: the server's own message when it sent one, else the client's with its
/// cause (a refused connection, a certificate not trusted).
fn detail(e: &postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return format!("{}: {}", db.severity(), db.message());
    }
    match std::error::Error::source(e) {
        Some(cause) => format!("{e}: {cause}"),
        None => e.to_string(),
    }
}

/// The TLS the client uses when the URL's `sslmode` asks for it: the public roots, or only
/// the CAs of `root_cert`.
fn tls(root_cert: Option<PathBuf>) -> Result<MakeRustlsConnect, String> {
    let roots = Trust::load(root_cert.as_deref())?.rustls_roots();
    // ring, as ureq and lettre use here: its lack of post-quantum key exchange (why it is
    // marked deprecated) costs nothing a history store needs.
    #[allow(deprecated)]
    let provider = rustls::crypto::ring::default_provider();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(MakeRustlsConnect::new(config))
}

/// Runs `f` on a thread of its own and returns what it returns.
fn on_own_thread<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| match s.spawn(f).join() {
        Ok(value) => value,
        Err(panic) => std::panic::resume_unwind(panic),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_left_out_of_what_is_shown() {
        assert_eq!(
            redact("postgres://ci:s3cret@db.example:5432/cleanroom?sslmode=require"),
            "postgres://ci:***@db.example:5432/cleanroom?sslmode=require"
        );
        assert_eq!(
            redact("postgresql://db/cleanroom?user=ci&password=s3cret"),
            "postgresql://db/cleanroom?user=ci&password=***"
        );
        assert_eq!(
            redact("postgres://ci@127.0.0.1:5433/x"),
            "postgres://ci@127.0.0.1:5433/x"
        );
    }

    #[test]
    fn sslrootcert_is_taken_out_of_the_url() {
        assert_eq!(
            split_root_cert("postgres://db/x?sslmode=require&sslrootcert=/etc/ca.pem"),
            (
                "postgres://db/x?sslmode=require".to_owned(),
                Some(PathBuf::from("/etc/ca.pem"))
            )
        );
        assert_eq!(
            split_root_cert("postgres://db/x?sslrootcert=/ca.pem"),
            ("postgres://db/x".to_owned(), Some(PathBuf::from("/ca.pem")))
        );
        assert_eq!(
            split_root_cert("postgres://db/x"),
            ("postgres://db/x".to_owned(), None)
        );
    }
}
