//! The history in an embedded SQLite database, one row per run with its whole JSON report.
//!
//! Safe for concurrent runs and crashes: WAL journal, a busy timeout, one transaction per run.

use std::{
    os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _},
    path::{Path, PathBuf},
    time::Duration,
};

use rusqlite::{Connection, OpenFlags, OptionalExtension, params};

use super::{RunQuery, RunRow, StoreError};
use crate::output::report::Report;

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
pub struct Sqlite {
    conn: Connection,
    path: PathBuf,
}

impl Sqlite {
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
    pub fn list(&self, query: &RunQuery<'_>) -> Result<Vec<RunRow>, StoreError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT id, name, started_at, command, host, git_commit, git_branch, exit_code,
                        verdict, wall_time_ns
                 FROM runs
                 WHERE (?1 IS NULL OR name = ?1) AND (?2 IS NULL OR git_branch = ?2)
                   AND (?3 = 0 OR (exit_code = 0 AND verdict <> 'fail'))
                 ORDER BY id DESC LIMIT ?4",
            )
            .map_err(self.err())?;
        let rows = stmt
            .query_map(
                params![
                    query.name,
                    query.branch,
                    query.passing,
                    i64::try_from(query.last).unwrap_or(i64::MAX)
                ],
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
        let opened =
            Sqlite::open(&path).map(|mut s| s.insert_all(&[Report::example()]).map(|ids| ids[0]));
        // SAFETY: as above.
        unsafe { libc::umask(old) };
        opened.unwrap().unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir.path().join("sub")), 0o700);
        assert_eq!(mode(&path), 0o600);

        let link = dir.path().join("link.db");
        std::os::unix::fs::symlink(&path, &link).unwrap();
        assert!(Sqlite::open(&link).is_err(), "a symlinked store was opened");
    }

    #[test]
    fn a_report_replaced_is_read_back_and_an_unknown_run_is_not_found() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Sqlite::open(&dir.path().join("history.db")).unwrap();
        let id = s
            .insert_all(&[Report::example()])
            .map(|ids| ids[0])
            .unwrap();
        let mut later = Report::example();
        later.verdict = crate::judge::verdict::Verdict::Fail;
        later.notes.push("distributed".into());
        s.replace_report(id, &later).unwrap();
        assert_eq!(s.report(id).unwrap().notes, later.notes);
        assert_eq!(
            s.list(&crate::store::RunQuery {
                last: 1,
                ..Default::default()
            })
            .unwrap()[0]
                .verdict,
            "fail"
        );
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
            let mut s = Sqlite::open(&path).unwrap();
            for _ in 0..20 {
                s.insert_all(&[Report::example()])
                    .map(|ids| ids[0])
                    .unwrap();
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
        let e = Sqlite::open(&path)
            .and_then(|mut s| s.insert_all(&[Report::example()]).map(|ids| ids[0]))
            .unwrap_err();
        assert!(matches!(e, StoreError::Damaged { .. }), "{e}");
        assert!(e.to_string().contains("is damaged"), "{e}");
    }
}
