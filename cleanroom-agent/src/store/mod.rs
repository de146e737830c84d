//! The history of runs: one row per run with its whole JSON report, in an embedded SQLite
//! file ([`sqlite`]) or a shared PostgreSQL database ([`postgres`]), the same to every caller.
//!
//! Where: `--store PATH|URL`, else `$CLEANROOM_STORE`, else
//! `$XDG_DATA_HOME/cleanroom/history.db`, else `~/.local/share/cleanroom/history.db`. A
//! `postgres://` (or `postgresql://`) URL names a PostgreSQL database, shared by every runner
//! of a fleet.

mod postgres;
pub mod spool;
mod sqlite;

use std::{
    ffi::OsStr,
    fmt,
    path::{Path, PathBuf},
    str::FromStr,
};

use crate::output::report::Report;

/// Errors of the history store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// PostgreSQL failed (the URL's password left out).
    #[error("history store {url}: {detail}")]
    Postgres {
        /// The database, its password left out.
        url: String,
        /// Why.
        detail: String,
    },
    /// A database written by a newer Cleanroom, whose schema this build does not know.
    #[error(
        "history store {url} has schema version {found}, newer than this build's {known}: \
         use a newer cleanroom with it"
    )]
    NewerSchema {
        /// The database.
        url: String,
        /// Its version.
        found: i32,
        /// This build's.
        known: i32,
    },
    /// SQLite failed.
    #[error("history store {}: {source}", path.display())]
    Sqlite {
        /// The database.
        path: PathBuf,
        /// Why.
        source: rusqlite::Error,
    },
    /// The directory could not be made.
    #[error("creating {}: {source}", path.display())]
    Io {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A stored report does not parse.
    #[error("run {id} in the history store has an unreadable report: {source}")]
    Corrupt {
        /// The run.
        id: i64,
        /// Why.
        source: serde_json::Error,
    },
    /// No such run.
    #[error("no run {0} in the history store (see `cleanroom history`)")]
    NotFound(i64),
    /// The database file is damaged: nothing is written to it.
    #[error(
        "history store {p} is damaged ({detail}); nothing was written to it. Move it aside \
         (e.g. `mv {p} {p}.damaged`) to start a new history, or try to rescue it with \
         `sqlite3 {p} .recover`",
        p = path.display()
    )]
    Damaged {
        /// The database.
        path: PathBuf,
        /// What SQLite's integrity check said (first lines).
        detail: String,
    },
}

/// The default store: `$CLEANROOM_STORE` (a path or a `postgres://` URL), else
/// `$XDG_DATA_HOME/cleanroom/history.db`, else `~/.local/share/cleanroom/history.db`.
pub fn default_location() -> StoreLocation {
    if let Some(p) = std::env::var_os("CLEANROOM_STORE") {
        return StoreLocation::from_os(&p);
    }
    let data = std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".local/share")))
        .unwrap_or_else(|| PathBuf::from("/var/lib"));
    StoreLocation::Sqlite(data.join("cleanroom/history.db"))
}

/// One past run, as `history` lists it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct RunRow {
    /// Its id in the store.
    pub id: i64,
    /// `--name`.
    pub name: Option<String>,
    /// Start time.
    pub started_at: String,
    /// The command.
    pub command: String,
    /// Host name.
    pub host: String,
    /// Git commit, when run in a repository.
    pub git_commit: Option<String>,
    /// Git branch.
    pub git_branch: Option<String>,
    /// The command's exit code.
    pub exit_code: i32,
    /// `pass`, `fail` or `none`.
    pub verdict: String,
    /// Wall time, ns.
    pub wall_time_ns: i64,
}

/// The `history` table: a header and one line per run.
pub fn history_table(rows: &[RunRow]) -> String {
    use std::fmt::Write as _;
    let mut out = format!(
        "{:>5}  {:<20}  {:<16}  {:>10}  {:>4}  {:<7}  command\n",
        "id", "started", "name", "wall", "exit", "verdict"
    );
    for r in rows {
        let _ = writeln!(
            out,
            "{:>5}  {:<20}  {:<16}  {:>10}  {:>4}  {:<7}  {}",
            r.id,
            r.started_at,
            r.name.as_deref().unwrap_or_default(),
            crate::units::human_duration_ns(r.wall_time_ns.max(0) as u64),
            r.exit_code,
            r.verdict,
            r.command
        );
    }
    out
}

/// Where the history is kept.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreLocation {
    /// A SQLite file.
    Sqlite(PathBuf),
    /// A PostgreSQL database, by URL (`postgres://user@host:port/db?sslmode=require`).
    Postgres(String),
}

impl StoreLocation {
    /// A path, or a URL when it starts with `postgres://` or `postgresql://`.
    pub fn from_os(s: &OsStr) -> Self {
        match s.to_str() {
            Some(url) if postgres::is_url(url) => Self::Postgres(url.to_owned()),
            _ => Self::Sqlite(PathBuf::from(s)),
        }
    }

    /// The SQLite file, if it is one.
    pub fn sqlite_path(&self) -> Option<&Path> {
        match self {
            Self::Sqlite(path) => Some(path),
            Self::Postgres(_) => None,
        }
    }

    /// Whether there is a history there yet: a file that exists; a database is asked.
    pub fn exists(&self) -> bool {
        match self {
            Self::Sqlite(path) => path.exists(),
            Self::Postgres(_) => true,
        }
    }
}

impl FromStr for StoreLocation {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self::from_os(OsStr::new(s)))
    }
}

/// A path or a URL in a configuration file.
impl<'de> serde::Deserialize<'de> for StoreLocation {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Ok(Self::from_os(OsStr::new(&s)))
    }
}

/// The path, or the URL with its password left out: what messages and logs say.
impl fmt::Display for StoreLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Sqlite(path) => write!(f, "{}", path.display()),
            Self::Postgres(url) => f.write_str(&postgres::redact(url)),
        }
    }
}

/// Which past runs to list.
#[derive(Clone, Copy, Debug, Default)]
pub struct RunQuery<'a> {
    /// Only runs of this name.
    pub name: Option<&'a str>,
    /// Only runs on this git branch.
    pub branch: Option<&'a str>,
    /// Only runs that passed: the command exited 0 and the verdict is not `fail`.
    pub passing: bool,
    /// At most this many, the newest.
    pub last: usize,
}

/// Runs [`Store::import`] copies in one transaction.
pub const IMPORT_BATCH: usize = 100;

/// An open history store.
pub struct Store {
    location: StoreLocation,
    backend: Backend,
}

enum Backend {
    Sqlite(sqlite::Sqlite),
    Postgres(Box<postgres::Postgres>),
}

impl Store {
    /// Opens the store at `location`, making it (a file, or the tables of a database, by
    /// versioned migrations) if needed.
    pub fn open(location: &StoreLocation) -> Result<Self, StoreError> {
        let backend = match location {
            StoreLocation::Sqlite(path) => Backend::Sqlite(sqlite::Sqlite::open(path)?),
            StoreLocation::Postgres(url) => {
                Backend::Postgres(Box::new(postgres::Postgres::open(url)?))
            }
        };
        Ok(Self {
            location: location.clone(),
            backend,
        })
    }

    /// Where it is.
    pub fn location(&self) -> &StoreLocation {
        &self.location
    }

    /// Stores a run; returns its id.
    pub fn insert(&mut self, report: &Report) -> Result<i64, StoreError> {
        Ok(self.insert_all(std::slice::from_ref(report))?[0])
    }

    /// Stores `reports` in one transaction (all or none); their ids, in order.
    pub fn insert_all(&mut self, reports: &[Report]) -> Result<Vec<i64>, StoreError> {
        match &mut self.backend {
            Backend::Sqlite(s) => s.insert_all(reports),
            Backend::Postgres(p) => p.insert_all(reports),
        }
    }

    /// Replaces run `id`'s report with a later account of the same run (the agent's report
    /// once distributed); its verdict follows.
    pub fn replace_report(&mut self, id: i64, report: &Report) -> Result<(), StoreError> {
        match &mut self.backend {
            Backend::Sqlite(s) => s.replace_report(id, report),
            Backend::Postgres(p) => p.replace_report(id, report),
        }
    }

    /// Past runs, newest first, optionally of one name, at most `last`.
    pub fn list(&mut self, name: Option<&str>, last: usize) -> Result<Vec<RunRow>, StoreError> {
        self.query(&RunQuery {
            name,
            last,
            ..RunQuery::default()
        })
    }

    /// Past runs `query` picks, newest first.
    pub fn query(&mut self, query: &RunQuery<'_>) -> Result<Vec<RunRow>, StoreError> {
        match &mut self.backend {
            Backend::Sqlite(s) => s.list(query),
            Backend::Postgres(p) => p.list(query),
        }
    }

    /// The full report of run `id`.
    pub fn report(&mut self, id: i64) -> Result<Report, StoreError> {
        match &mut self.backend {
            Backend::Sqlite(s) => s.report(id),
            Backend::Postgres(p) => p.report(id),
        }
    }

    /// Copies every run of `from` into this store, oldest first, in transactions of
    /// [`IMPORT_BATCH`] runs; `progress(done, all)` after each. How many were copied.
    pub fn import(
        &mut self,
        from: &mut Store,
        mut progress: impl FnMut(usize, usize),
    ) -> Result<usize, StoreError> {
        let mut ids: Vec<i64> = from.list(None, usize::MAX)?.iter().map(|r| r.id).collect();
        ids.reverse();
        for (i, batch) in ids.chunks(IMPORT_BATCH).enumerate() {
            let reports = batch
                .iter()
                .map(|id| from.report(*id))
                .collect::<Result<Vec<_>, _>>()?;
            self.insert_all(&reports)?;
            progress(i * IMPORT_BATCH + batch.len(), ids.len());
        }
        Ok(ids.len())
    }

    /// Reports of the last `last` runs named `name`, oldest first, with their ids.
    pub fn reports_named(
        &mut self,
        name: &str,
        last: usize,
    ) -> Result<Vec<(i64, Report)>, StoreError> {
        let mut rows = self.list(Some(name), last)?;
        rows.reverse();
        rows.into_iter()
            .map(|r| Ok((r.id, self.report(r.id)?)))
            .collect()
    }
}
