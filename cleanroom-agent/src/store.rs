//! The history of runs: an embedded SQLite database, one row per run with its whole JSON report.
//!
//! Safe for concurrent runs and crashes: WAL journal, a busy timeout, one transaction per run.
//! Default place: `$CLEANROOM_STORE`, else `$XDG_DATA_HOME/cleanroom/history.db`, else
//! `~/.local/share/cleanroom/history.db`.

use std::{
    os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _},
    path::{Path, PathBuf},
    time::Duration,
};

use rusqlite::{Connection, OpenFlags, OptionalExtension, params};

use crate::output::report::Report;

/// Errors of the history store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
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

/// The default database path.
pub fn default_path() -> PathBuf {
    if let Some(p) = std::env::var_os("CLEANROOM_STORE") {
        return PathBuf::from(p);
    }
    let data = std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".local/share")))
        .unwrap_or_else(|| PathBuf::from("/var/lib"));
    data.join("cleanroom/history.db")
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

/// A SQLite error, told apart when it means the file is damaged.
fn sqlite_error(path: &Path, source: rusqlite::Error) -> StoreError {
    use rusqlite::ErrorCode::{DatabaseCorrupt, NotADatabase};
    match source.sqlite_error_code() {
        Some(DatabaseCorrupt | NotADatabase) => StoreError::Damaged {
            path: path.to_owned(),
            detail: source.to_string(),
        },
        _ => StoreError::Sqlite {
            path: path.to_owned(),
            source,
        },
    }
}

/// An open history store.
pub struct Store {
    conn: Connection,
    path: PathBuf,
}

impl Store {
    fn err(&self) -> impl FnOnce(rusqlite::Error) -> StoreError + '_ {
        |source| sqlite_error(&self.path, source)
    }

    /// Opens (creating if needed) the store at `path`. A directory it makes is private
    /// (0700) and so is a new database file (0600): the history holds whole command lines,
    /// whose arguments can carry secrets. A symbolic link at `path` is refused, never followed.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|source| StoreError::Io {
                    path: dir.to_owned(),
                    source,
                })?;
        }
        // Made here, exclusively and private, rather than by SQLite with the umask's mode.
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
        {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(source) => {
                return Err(StoreError::Io {
                    path: path.to_owned(),
                    source,
                });
            }
        }
        let sqlite = |source| sqlite_error(path, source);
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NOFOLLOW
                | OpenFlags::SQLITE_OPEN_NO_MUTEX
                | OpenFlags::SQLITE_OPEN_URI,
        )
        .map_err(sqlite)?;
        conn.busy_timeout(Duration::from_secs(30)).map_err(sqlite)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(sqlite)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(sqlite)?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS runs (
                id INTEGER PRIMARY KEY AUTOINCREMENT,
                name TEXT,
                started_at TEXT NOT NULL,
                command TEXT NOT NULL,
                host TEXT NOT NULL,
                git_commit TEXT,
                git_branch TEXT,
                exit_code INTEGER NOT NULL,
                verdict TEXT NOT NULL,
                wall_time_ns INTEGER NOT NULL,
                tags TEXT NOT NULL,
                report TEXT NOT NULL
             );
             CREATE INDEX IF NOT EXISTS runs_by_name ON runs (name, id);",
        )
        .map_err(sqlite)?;
        Ok(Self {
            conn,
            path: path.to_owned(),
        })
    }

    /// SQLite's quick integrity check: a damaged file is refused rather than written to.
    pub fn check(&self) -> Result<(), StoreError> {
        let mut stmt = self
            .conn
            .prepare("PRAGMA quick_check(5)")
            .map_err(self.err())?;
        let lines: Vec<String> = stmt
            .query_map([], |r| r.get(0))
            .and_then(|rows| rows.collect())
            .map_err(|e| StoreError::Damaged {
                path: self.path.clone(),
                detail: e.to_string(),
            })?;
        if lines.len() == 1 && lines[0] == "ok" {
            return Ok(());
        }
        Err(StoreError::Damaged {
            path: self.path.clone(),
            detail: crate::units::truncate_quote(&lines.join("; "), 200),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Stores a run, after checking the file is sound; returns its id.
    pub fn insert(&mut self, report: &Report) -> Result<i64, StoreError> {
        Ok(self.insert_all(std::slice::from_ref(report))?[0])
    }

    /// Stores `reports` in one transaction (all or none): what the agent stopping with many
    /// live watches needs to be quick. Their ids, in order.
    pub fn insert_all(&mut self, reports: &[Report]) -> Result<Vec<i64>, StoreError> {
        self.check()?;
        let path = self.path.clone();
        let sqlite = |source| sqlite_error(&path, source);
        let tx = self.conn.transaction().map_err(sqlite)?;
        let mut ids = Vec::with_capacity(reports.len());
        for report in reports {
            let json = serde_json::to_string(report).expect("a report always serializes");
            let tags = serde_json::to_string(&report.tags).expect("tags always serialize");
            tx.execute(
                "INSERT INTO runs (name, started_at, command, host, git_commit, git_branch, exit_code,
                                   verdict, wall_time_ns, tags, report)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
                params![
                    report.name,
                    report.started_at,
                    report.command_line(),
                    report.host.hostname,
                    report.host.git_commit,
                    report.host.git_branch,
                    report.exit_code,
                    report.verdict.as_str(),
                    i64::try_from(report.wall_time_ns).unwrap_or(i64::MAX),
                    tags,
                    json
                ],
            )
            .map_err(sqlite)?;
            ids.push(tx.last_insert_rowid());
        }
        tx.commit().map_err(sqlite)?;
        Ok(ids)
    }

    /// Replaces run `id`'s report with `report`, a later account of the same run (the agent's
    /// report once it has been distributed); its verdict follows.
    pub fn replace_report(&mut self, id: i64, report: &Report) -> Result<(), StoreError> {
        self.check()?;
        let json = serde_json::to_string(report).expect("a report always serializes");
        let changed = self
            .conn
            .execute(
                "UPDATE runs SET report = ?1, verdict = ?2 WHERE id = ?3",
                params![json, report.verdict.as_str(), id],
            )
            .map_err(self.err())?;
        if changed == 0 {
            return Err(StoreError::NotFound(id));
        }
        Ok(())
    }

    /// Past runs, newest first, optionally of one name, at most `last`.
    pub fn list(&self, name: Option<&str>, last: usize) -> Result<Vec<RunRow>, StoreError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT id, name, started_at, command, host, git_commit, git_branch, exit_code,
                        verdict, wall_time_ns
                 FROM runs WHERE (?1 IS NULL OR name = ?1) ORDER BY id DESC LIMIT ?2",
            )
            .map_err(self.err())?;
        let rows = stmt
            .query_map(
                params![name, i64::try_from(last).unwrap_or(i64::MAX)],
                |r| {
                    Ok(RunRow {
                        id: r.get(0)?,
                        name: r.get(1)?,
                        started_at: r.get(2)?,
                        command: r.get(3)?,
                        host: r.get(4)?,
                        git_commit: r.get(5)?,
                        git_branch: r.get(6)?,
                        exit_code: r.get(7)?,
                        verdict: r.get(8)?,
                        wall_time_ns: r.get(9)?,
                    })
                },
            )
            .map_err(self.err())?;
        rows.collect::<Result<_, _>>().map_err(self.err())
    }

    /// The full report of run `id`.
    pub fn report(&self, id: i64) -> Result<Report, StoreError> {
        let text: Option<String> = self
            .conn
            .query_row("SELECT report FROM runs WHERE id = ?1", params![id], |r| {
                r.get(0)
            })
            .optional()
            .map_err(self.err())?;
        let text = text.ok_or(StoreError::NotFound(id))?;
        serde_json::from_str(&text).map_err(|source| StoreError::Corrupt { id, source })
    }

    /// Reports of the last `last` runs named `name`, oldest first, with their ids.
    pub fn reports_named(&self, name: &str, last: usize) -> Result<Vec<(i64, Report)>, StoreError> {
        let mut rows = self.list(Some(name), last)?;
        rows.reverse();
        rows.into_iter()
            .map(|r| Ok((r.id, self.report(r.id)?)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::{
        io::{Seek as _, SeekFrom, Write as _},
        os::unix::fs::PermissionsExt as _,
    };

    use super::*;

    #[test]
    fn a_new_store_is_private_and_a_link_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        // SAFETY: umask(2) has no memory-safety preconditions; tests of this module do not
        // depend on the umask otherwise.
        let old = unsafe { libc::umask(0) };
        let path = dir.path().join("sub/history.db");
        let opened = Store::open(&path).map(|mut s| s.insert(&Report::example()));
        // SAFETY: as above.
        unsafe { libc::umask(old) };
        opened.unwrap().unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir.path().join("sub")), 0o700);
        assert_eq!(mode(&path), 0o600);

        let link = dir.path().join("link.db");
        std::os::unix::fs::symlink(&path, &link).unwrap();
        assert!(Store::open(&link).is_err(), "a symlinked store was opened");
    }

    #[test]
    fn a_report_replaced_is_read_back_and_an_unknown_run_is_not_found() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(&dir.path().join("history.db")).unwrap();
        let id = s.insert(&Report::example()).unwrap();
        let mut later = Report::example();
        later.verdict = crate::judge::verdict::Verdict::Fail;
        later.notes.push("distributed".into());
        s.replace_report(id, &later).unwrap();
        assert_eq!(s.report(id).unwrap().notes, later.notes);
        assert_eq!(s.list(None, 1).unwrap()[0].verdict, "fail");
        assert!(matches!(
            s.replace_report(id + 1, &later),
            Err(StoreError::NotFound(_))
        ));
    }

    #[test]
    fn a_damaged_store_is_not_written_to() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("history.db");
        {
            let mut s = Store::open(&path).unwrap();
            for _ in 0..20 {
                s.insert(&Report::example()).unwrap();
            }
            s.conn
                .pragma_update(None, "wal_checkpoint", "TRUNCATE")
                .unwrap();
        }
        let len = std::fs::metadata(&path).unwrap().len();
        assert!(len > 8192, "{len} bytes");
        let mut f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.seek(SeekFrom::Start(len / 2 / 4096 * 4096)).unwrap();
        f.write_all(&[0xA5; 4096]).unwrap();
        drop(f);
        let e = Store::open(&path)
            .and_then(|mut s| s.insert(&Report::example()))
            .unwrap_err();
        assert!(matches!(e, StoreError::Damaged { .. }), "{e}");
        assert!(e.to_string().contains("is damaged"), "{e}");
    }
}
