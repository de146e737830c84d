//! Files at the edge of the process: untrusted inputs read with a size cap, and outputs written
//! so that nothing can be made to write through a planted link or leave half a file behind.
//!
//! Cleanroom runs as root in directories other users may write to (a CI workspace, `/tmp`), so:
//! - an input must be a regular file of at most a documented size: a FIFO, a device such as
//!   `/dev/zero`, or a directory is refused at once, and reading stops at the cap;
//! - an output is written to a fresh file with a random name in the same directory, created
//!   exclusively (`O_CREAT|O_EXCL`, so an existing name or link is never opened), flushed to
//!   disk, then renamed over the target. A link planted at the target's name is replaced, never
//!   followed; a failure leaves the target as it was and no temporary file behind.

use std::{
    fs::{File, Permissions},
    io::{self, Read as _, Write as _},
    os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
};

/// Largest configuration or SLO file read (`--config`, `--slo`).
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;
/// Largest JSON report read (`cleanroom report`, `compare`, `--baseline`).
pub const MAX_REPORT_BYTES: u64 = 16 << 20;
/// Mode of the reports Cleanroom writes, before the umask.
pub const REPORT_MODE: u32 = 0o644;

/// A file that could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// Opening, reading or writing failed.
    #[error("{action} {}: {source}", path.display())]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// Not a regular file (a FIFO, a device, a directory, a socket).
    #[error("{}: not a regular file ({kind}); give a path to a file", path.display())]
    NotRegular {
        /// The file.
        path: PathBuf,
        /// What it is instead.
        kind: &'static str,
    },
    /// Larger than the cap for its kind.
    #[error(
        "{}: larger than the {} accepted for {what}",
        path.display(),
        crate::units::human_bytes(*limit)
    )]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// What kind of input it is ("a configuration", "a report").
        what: &'static str,
        /// The cap, in bytes.
        limit: u64,
    },
}

fn io_err<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> FileError + 'a {
    move |source| FileError::Io {
        action,
        path: path.to_owned(),
        source,
    }
}

fn kind_of(file_type: std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt as _;
    if file_type.is_dir() {
        "a directory"
    } else if file_type.is_fifo() {
        "a FIFO"
    } else if file_type.is_char_device() {
        "a character device"
    } else if file_type.is_block_device() {
        "a block device"
    } else if file_type.is_socket() {
        "a socket"
    } else {
        "not a file"
    }
}

/// Reads a regular file of at most `limit` bytes. `what` names the kind of input in errors.
/// Never blocks on a FIFO and never reads more than `limit + 1` bytes.
pub fn read_bounded(path: &Path, limit: u64, what: &'static str) -> Result<Vec<u8>, FileError> {
    // O_NONBLOCK: opening a FIFO must not wait for a writer; it is refused just below.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(io_err("reading", path))?;
    let meta = file.metadata().map_err(io_err("reading", path))?;
    if !meta.file_type().is_file() {
        return Err(FileError::NotRegular {
            path: path.to_owned(),
            kind: kind_of(meta.file_type()),
        });
    }
    let too_large = || FileError::TooLarge {
        path: path.to_owned(),
        what,
        limit,
    };
    if meta.len() > limit {
        return Err(too_large());
    }
    let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    file.take(limit.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(io_err("reading", path))?;
    if bytes.len() as u64 > limit {
        return Err(too_large());
    }
    Ok(bytes)
}

/// Reads a UTF-8 text file of at most `limit` bytes.
pub fn read_text(path: &Path, limit: u64, what: &'static str) -> Result<String, FileError> {
    let bytes = read_bounded(path, limit, what)?;
    String::from_utf8(bytes).map_err(|_| FileError::Io {
        action: "reading",
        path: path.to_owned(),
        source: io::Error::new(io::ErrorKind::InvalidData, "not UTF-8 text"),
    })
}

/// The directory a file at `path` lives in (`.` for a bare name).
pub fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Checks, before any work is done, that a file can be written at `path`: its directory exists
/// and is writable, and the path is not a directory itself.
pub fn check_writable(path: &Path) -> Result<(), FileError> {
    let dir = parent_dir(path);
    let meta = std::fs::metadata(dir).map_err(io_err("cannot write into", dir))?;
    if !meta.is_dir() {
        return Err(FileError::Io {
            action: "cannot write into",
            path: dir.to_owned(),
            source: io::Error::from(io::ErrorKind::NotADirectory),
        });
    }
    if std::fs::symlink_metadata(path).is_ok_and(|m| m.is_dir()) {
        return Err(FileError::Io {
            action: "cannot write",
            path: path.to_owned(),
            source: io::Error::from(io::ErrorKind::IsADirectory),
        });
    }
    // Root passes every permission check, so try it: a file made and removed at once.
    tempfile::Builder::new()
        .prefix(".cleanroom-check.")
        .tempfile_in(dir)
        .map_err(io_err("cannot write into", dir))?;
    Ok(())
}

/// Writes `bytes` to `path` atomically with `mode` (less the umask): a fresh, exclusively
/// created file with a random name beside it, synced, then renamed over `path`. On failure the
/// temporary file is removed and `path` is untouched.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), FileError> {
    let dir = parent_dir(path);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut tmp = tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .suffix(".partial")
        .permissions(Permissions::from_mode(mode))
        .tempfile_in(dir)
        .map_err(io_err("writing", path))?;
    tmp.write_all(bytes).map_err(io_err("writing", path))?;
    tmp.as_file().sync_all().map_err(io_err("writing", path))?;
    // Dropping `tmp` on an error above removes it; `persist` renames it into place.
    tmp.persist(path)
        .map_err(|e| io_err("writing", path)(e.error))?;
    if let Ok(d) = File::open(dir) {
        // Durability of the rename; a failure here loses nothing already written.
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt as _;

    use super::*;

    #[test]
    fn bounded_reads_refuse_devices_fifos_directories_and_large_files() {
        let dir = tempfile::tempdir().unwrap();
        let small = dir.path().join("a.toml");
        std::fs::write(&small, "x = 1\n").unwrap();
        assert_eq!(
            read_text(&small, 100, "a configuration").unwrap(),
            "x = 1\n"
        );

        let e = read_bounded(Path::new("/dev/zero"), 100, "a configuration").unwrap_err();
        assert!(matches!(e, FileError::NotRegular { .. }), "{e}");
        let e = read_bounded(dir.path(), 100, "a configuration").unwrap_err();
        assert!(e.to_string().contains("a directory"), "{e}");

        let fifo = dir.path().join("fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: `c` is a valid path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let e = read_bounded(&fifo, 100, "a configuration").unwrap_err();
        assert!(e.to_string().contains("FIFO"), "{e}");

        let big = dir.path().join("big.toml");
        std::fs::write(&big, vec![b'#'; 101]).unwrap();
        let e = read_bounded(&big, 100, "a configuration").unwrap_err();
        assert!(
            e.to_string()
                .contains("larger than the 100 B accepted for a configuration"),
            "{e}"
        );
    }

    #[test]
    fn atomic_writes_replace_a_planted_link_instead_of_following_it() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "precious").unwrap();
        let report = dir.path().join("ci.json");
        std::os::unix::fs::symlink(&victim, &report).unwrap();
        std::os::unix::fs::symlink(&victim, dir.path().join("ci.json.partial")).unwrap();
        write_atomic(&report, b"{}", REPORT_MODE).unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
        assert_eq!(std::fs::read_to_string(&report).unwrap(), "{}");
        assert!(!std::fs::symlink_metadata(&report).unwrap().is_symlink());
        let mode = std::fs::metadata(&report).unwrap().mode() & 0o7777;
        assert_eq!(mode & !0o644, 0, "mode {mode:o} is more open than 0644");
        let leftovers: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .filter(|n| n.to_string_lossy().starts_with(".ci.json."))
            .collect();
        assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
    }

    #[test]
    fn writability_is_checked_up_front() {
        let dir = tempfile::tempdir().unwrap();
        assert!(check_writable(&dir.path().join("r.json")).is_ok());
        assert!(check_writable(&dir.path().join("missing/r.json")).is_err());
        assert!(
            check_writable(dir.path()).is_err(),
            "a directory is not a file"
        );
        assert!(check_writable(Path::new("/proc/x.json")).is_err());
    }
}
