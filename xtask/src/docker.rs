//! The Docker engine the container tests talk to: started here when none answers (and stopped
//! again after the tests), and the test image built `FROM scratch` with Debian's static busybox
//! (no registry is reached, nothing is pulled).

use std::{
    io::{Read, Write},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::step;

/// The engine's socket.
const SOCKET: &str = "/var/run/docker.sock";
/// The image the tests run.
pub const IMAGE: &str = "cleanroom-test-busybox";

/// An engine for the tests: the one already running, or one started here (stopped on drop).
pub struct Engine {
    started: Option<Child>,
}

impl Engine {
    /// Makes sure an engine answers on [`SOCKET`] (starting `dockerd` if none does, its log in
    /// `log_dir`) and that [`IMAGE`] is built.
    pub fn ensure(log_dir: &Path) -> Result<Self> {
        let mut engine = Self { started: None };
        if !answers() {
            step("starting dockerd for the container tests");
            std::fs::create_dir_all(log_dir)?;
            let log = std::fs::File::create(log_dir.join("dockerd.log"))?;
            let child = Command::new("dockerd")
                .args(["--pidfile", "/run/cleanroom-test-dockerd.pid"])
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()
                .context("starting dockerd")?;
            engine.started = Some(child);
            let deadline = Instant::now() + Duration::from_secs(60);
            while !answers() {
                if Instant::now() > deadline {
                    bail!(
                        "dockerd did not answer within 60 s; see {}",
                        log_dir.join("dockerd.log").display()
                    );
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        }
        build_image(log_dir)?;
        Ok(engine)
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        if let Some(mut child) = self.started.take() {
            step("stopping the dockerd started for the tests");
            // SAFETY: kill(2) on our own child's pid.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Whether an engine answers `GET /_ping` on [`SOCKET`].
fn answers() -> bool {
    let Ok(mut s) = UnixStream::connect(SOCKET) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    answer.starts_with("HTTP/1.") && answer.contains(" 200 ")
}

/// Builds [`IMAGE`]: busybox alone, its applets linked in /bin.
fn build_image(work: &Path) -> Result<()> {
    let busybox = which("busybox").context("busybox is not installed (busybox-static)")?;
    let dir = work.join("image");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    std::fs::copy(&busybox, dir.join("busybox"))?;
    std::fs::write(
        dir.join("Dockerfile"),
        "FROM scratch\nCOPY busybox /bin/busybox\n\
         RUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\nCMD [\"/bin/sh\"]\n",
    )?;
    let out = Command::new("docker")
        .args(["build", "-q", "-t", IMAGE])
        .arg(&dir)
        .output()
        .context("running docker build")?;
    if !out.status.success() {
        bail!(
            "building the test image failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn which(cmd: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(cmd))
        .find(|p| p.is_file())
}
