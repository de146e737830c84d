//! The cgroup file system and `/proc`: `cgroup` finds the hierarchy, makes and removes run
//! cgroups and reads a cgroup's CPU and memory files; `limits` writes resource limits to
//! controllers; `watchdog` removes a run's cgroups if Cleanroom is killed; `taskio` reads each
//! thread's storage I/O; `watch` picks the agent's cgroups by glob rules.

pub mod cgroup;
pub mod limits;
pub mod taskio;
pub mod watch;
pub mod watchdog;
