//! Which cgroups the agent watches: `[[watch]]` rules, each a glob over cgroup paths relative to
//! the v2 mount (`docker/*`, `system.slice/*.scope`, `ci/job-*`), with an optional name and
//! tags; and finding the cgroups that match, at start and as they appear.
//!
//! `*` and `?` stay within one path component (`docker/*` is not `docker/a/b`); `**` crosses
//! components. A cgroup matched by several rules belongs to the first.

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
};

use globset::{GlobBuilder, GlobMatcher};
use serde::Deserialize;

use crate::config::{SloSpec, Thresholds};

/// A bad rule.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    /// The glob does not parse.
    #[error("watch rule {index} (`{glob}`): not a glob: {reason}")]
    BadGlob {
        /// 1-based position among the rules.
        index: usize,
        /// The glob as written.
        glob: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The glob is absolute or climbs out of the mount.
    #[error(
        "watch rule {index} (`{glob}`): a glob is relative to the cgroup v2 mount, without a \
         leading `/` or `..` (e.g. `docker/*`, `system.slice/*.scope`)"
    )]
    NotRelative {
        /// 1-based position among the rules.
        index: usize,
        /// The glob as written.
        glob: String,
    },
}

/// One `[[watch]]` rule.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct WatchRule {
    /// Cgroup paths relative to the v2 mount.
    pub glob: String,
    /// The name runs of matching cgroups are stored under (default: the glob).
    #[serde(default)]
    pub name: Option<String>,
    /// Tags stored with each run.
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    /// Checked on every sample of each matching cgroup (`[watch.thresholds]`, the keys of
    /// `[performance_monitoring.thresholds]`).
    #[serde(default)]
    pub thresholds: Thresholds,
    /// Judged on each matching cgroup's report (`[[watch.slos]]`).
    #[serde(default)]
    pub slos: Vec<SloSpec>,
    /// Profile each matching cgroup (as `cleanroom run --profile` does a run): its report gets
    /// the profiles.
    #[serde(default)]
    pub profile: bool,
}

impl WatchRule {
    /// A rule from `--watch GLOB`: the glob alone.
    pub fn from_glob(glob: &str) -> Self {
        Self {
            glob: glob.to_owned(),
            ..Self::default()
        }
    }

    /// The name its runs are stored under.
    pub fn run_name(&self) -> &str {
        self.name.as_deref().unwrap_or(&self.glob)
    }
}

/// Index of a rule in the [`Watcher`]'s list.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RuleId(pub usize);

/// The rules, compiled.
#[derive(Debug)]
pub struct Watcher {
    rules: Vec<WatchRule>,
    matchers: Vec<GlobMatcher>,
    /// How deep below the mount a match can be; `None` when a `**` makes it unbounded.
    depth: Option<usize>,
}

impl Watcher {
    /// Compiles `rules`; the first bad one is the error.
    pub fn new(rules: Vec<WatchRule>) -> Result<Self, WatchError> {
        let mut matchers = Vec::with_capacity(rules.len());
        let mut depth = Some(0);
        for (i, rule) in rules.iter().enumerate() {
            let glob = rule.glob.trim_end_matches('/');
            if glob.starts_with('/') || glob.split('/').any(|c| c == "..") || glob.is_empty() {
                return Err(WatchError::NotRelative {
                    index: i + 1,
                    glob: rule.glob.clone(),
                });
            }
            let matcher = GlobBuilder::new(glob)
                .literal_separator(true)
                .build()
                .map_err(|e| WatchError::BadGlob {
                    index: i + 1,
                    glob: rule.glob.clone(),
                    reason: e.kind().to_string(),
                })?
                .compile_matcher();
            matchers.push(matcher);
            depth = match (depth, glob.contains("**")) {
                (_, true) | (None, _) => None,
                (Some(d), false) => Some(d.max(glob.split('/').count())),
            };
        }
        Ok(Self {
            rules,
            matchers,
            depth,
        })
    }

    /// The rules, in order.
    pub fn rules(&self) -> &[WatchRule] {
        &self.rules
    }

    /// The rule a cgroup at `relative` (to the v2 mount) falls under, if any.
    pub fn rule_for(&self, relative: &Path) -> Option<RuleId> {
        self.matchers
            .iter()
            .position(|m| m.is_match(relative))
            .map(RuleId)
    }

    /// Every cgroup below `mount` that a rule matches, with its rule, in path order. Looks only
    /// as deep as a rule can match; a directory that cannot be read (gone meanwhile) is passed
    /// over.
    pub fn scan(&self, mount: &Path) -> Vec<(PathBuf, RuleId)> {
        let mut found = Vec::new();
        let mut pending = vec![(PathBuf::new(), 0usize)];
        while let Some((relative, level)) = pending.pop() {
            if self.depth.is_some_and(|d| level >= d) {
                continue;
            }
            let Ok(entries) = fs::read_dir(mount.join(&relative)) else {
                continue;
            };
            for entry in entries.flatten() {
                if !entry.file_type().is_ok_and(|t| t.is_dir()) {
                    continue;
                }
                let child = relative.join(entry.file_name());
                if let Some(rule) = self.rule_for(&child) {
                    found.push((child.clone(), rule));
                }
                pending.push((child, level + 1));
            }
        }
        found.sort();
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn watcher(globs: &[&str]) -> Watcher {
        Watcher::new(globs.iter().map(|g| WatchRule::from_glob(g)).collect()).unwrap()
    }

    #[test]
    fn a_star_stays_in_its_component_and_the_first_rule_wins() {
        let w = watcher(&[
            "docker/*",
            "system.slice/*.scope",
            "ci/**",
            "docker/special",
        ]);
        let rule = |p: &str| w.rule_for(Path::new(p)).map(|r| r.0);
        assert_eq!(rule("docker/abc"), Some(0));
        assert_eq!(rule("docker/special"), Some(0));
        assert_eq!(rule("docker/abc/sub"), None);
        assert_eq!(rule("docker"), None);
        assert_eq!(rule("system.slice/session-1.scope"), Some(1));
        assert_eq!(rule("system.slice/cron.service"), None);
        assert_eq!(rule("ci/job-1/step-2"), Some(2));
        assert_eq!(rule("user.slice"), None);
    }

    #[test]
    fn bad_and_absolute_globs_are_refused_by_their_position() {
        let err = |globs: &[&str]| {
            Watcher::new(globs.iter().map(|g| WatchRule::from_glob(g)).collect())
                .unwrap_err()
                .to_string()
        };
        let e = err(&["docker/*", "ci/[job"]);
        assert!(e.starts_with("watch rule 2 (`ci/[job`): not a glob"), "{e}");
        let e = err(&["/sys/fs/cgroup/docker/*"]);
        assert!(e.contains("relative to the cgroup v2 mount"), "{e}");
        assert!(err(&["../x"]).contains("rule 1"));
        assert!(err(&[""]).contains("rule 1"));
    }

    #[test]
    fn scan_finds_matches_as_deep_as_a_rule_reaches() {
        let dir = tempfile::tempdir().unwrap();
        for d in [
            "docker/a",
            "docker/b/deeper",
            "system.slice/x.scope",
            "system.slice/y.service",
            "other/docker/c",
        ] {
            fs::create_dir_all(dir.path().join(d)).unwrap();
        }
        fs::write(dir.path().join("docker/file"), "not a cgroup").unwrap();
        let w = watcher(&["docker/*", "system.slice/*.scope"]);
        let found: Vec<(String, usize)> = w
            .scan(dir.path())
            .into_iter()
            .map(|(p, r)| (p.display().to_string(), r.0))
            .collect();
        assert_eq!(
            found,
            [
                ("docker/a".to_owned(), 0),
                ("docker/b".to_owned(), 0),
                ("system.slice/x.scope".to_owned(), 1)
            ]
        );
        let deep = watcher(&["**/c"]);
        assert_eq!(
            deep.scan(dir.path()),
            [(PathBuf::from("other/docker/c"), RuleId(0))]
        );
    }

    #[test]
    fn a_rule_is_stored_under_its_name_or_glob() {
        let mut rule = WatchRule::from_glob("ci/job-*");
        assert_eq!(rule.run_name(), "ci/job-*");
        rule.name = Some("ci-jobs".into());
        assert_eq!(rule.run_name(), "ci-jobs");
    }
}
