//! Facts about the host that decide what Cleanroom can do: privileges, kernel, mounts.

use std::{fs, path::Path};

/// Capabilities Cleanroom needs, with their numbers (linux/capability.h).
pub const NEEDED_CAPS: &[(&str, u32)] =
    &[("CAP_SYS_ADMIN", 21), ("CAP_PERFMON", 38), ("CAP_BPF", 39)];

/// Effective capability mask of this process (`CapEff` in /proc/self/status).
pub fn effective_caps() -> Option<u64> {
    parse_cap_eff(&fs::read_to_string("/proc/self/status").ok()?)
}

/// Pure: the `CapEff:` hex mask of a /proc status text.
pub fn parse_cap_eff(status: &str) -> Option<u64> {
    let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?;
    u64::from_str_radix(hex.trim(), 16).ok()
}

/// Needed capabilities this process lacks (empty when it has them all, as root does).
pub fn missing_caps() -> Vec<&'static str> {
    let mask = effective_caps().unwrap_or(0);
    NEEDED_CAPS
        .iter()
        .filter(|(_, bit)| mask & (1u64 << bit) == 0)
        .map(|(name, _)| *name)
        .collect()
}

/// This host's name.
pub fn hostname() -> String {
    fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

/// `(commit, branch)` of the git repository holding the working directory, if any.
pub fn git_revision() -> (Option<String>, Option<String>) {
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .stderr(std::process::Stdio::null())
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .filter(|s| !s.is_empty())
    };
    (
        git(&["rev-parse", "HEAD"]),
        branch(git(&["rev-parse", "--abbrev-ref", "HEAD"]), |var| {
            std::env::var(var).ok()
        }),
    )
}

/// Pure: the branch a run is on: `$CLEANROOM_GIT_BRANCH` if set, else git's, else, when git
/// has none (a detached checkout, as CI jobs make), the one the CI system names
/// (`GITHUB_HEAD_REF` of a pull request, `GITHUB_REF_NAME`, GitLab's `CI_COMMIT_REF_NAME`).
fn branch(git: Option<String>, env: impl Fn(&str) -> Option<String>) -> Option<String> {
    let set = |var: &str| env(var).filter(|v| !v.is_empty());
    set("CLEANROOM_GIT_BRANCH")
        .or(git.filter(|b| b != "HEAD"))
        .or_else(|| set("GITHUB_HEAD_REF"))
        .or_else(|| set("GITHUB_REF_NAME"))
        .or_else(|| set("CI_COMMIT_REF_NAME"))
}

/// CPUs this process may run on.
pub fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

/// The running kernel's release string.
pub fn kernel_release() -> String {
    fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown".into())
}

/// Pure: whether kernel release `release` (`uname -r`, e.g. `5.10.0-46-amd64`) is at least
/// `major.minor`. An unreadable release counts as new enough.
pub fn release_at_least(release: &str, (major, minor): (u32, u32)) -> bool {
    let mut parts = release
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse::<u32>().ok());
    match (parts.next().flatten(), parts.next().flatten()) {
        (Some(a), Some(b)) => (a, b) >= (major, minor),
        _ => true,
    }
}

/// Whether a file system of type `fs_type` is mounted at `path`.
pub fn mounted(path: &Path, fs_type: &str) -> bool {
    procfs::process::Process::myself()
        .and_then(|me| me.mountinfo())
        .map(|m| {
            m.0.iter()
                .any(|e| e.mount_point == path && e.fs_type == fs_type)
        })
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_detached_checkout_takes_the_branch_ci_names() {
        let env = |vars: &'static [(&'static str, &'static str)]| {
            move |var: &str| {
                vars.iter()
                    .find(|(k, _)| *k == var)
                    .map(|(_, v)| (*v).to_owned())
            }
        };
        let git = |b: &str| Some(b.to_owned());
        assert_eq!(branch(git("main"), env(&[])), git("main"));
        assert_eq!(
            branch(git("HEAD"), env(&[("GITHUB_REF_NAME", "main")])),
            git("main")
        );
        assert_eq!(
            branch(
                git("HEAD"),
                env(&[("GITHUB_HEAD_REF", ""), ("CI_COMMIT_REF_NAME", "dev")])
            ),
            git("dev")
        );
        assert_eq!(
            branch(git("topic"), env(&[("CLEANROOM_GIT_BRANCH", "main")])),
            git("main")
        );
        assert_eq!(branch(None, env(&[])), None);
    }

    #[test]
    fn cap_eff_parses() {
        let status = "Name:\tx\nCapInh:\t0000000000000000\nCapEff:\t000001ffffffffff\n";
        assert_eq!(parse_cap_eff(status), Some(0x1ff_ffff_ffff));
        assert_eq!(parse_cap_eff("Name: x\n"), None);
    }

    #[test]
    fn releases_compare_by_major_and_minor() {
        assert!(!release_at_least("5.10.0-46-amd64", (5, 19)));
        assert!(release_at_least("6.1.0-56-amd64", (5, 19)));
        assert!(release_at_least("5.19.0", (5, 19)));
        assert!(!release_at_least("4.19.304", (5, 4)));
        assert!(release_at_least("6.18.44-fc-v595", (6, 16)));
        assert!(release_at_least("weird", (5, 19)));
    }
}
