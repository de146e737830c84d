//! Profiling the watched cgroups whose rule asks for it (`profile = true`, or `--profile`):
//! the sampler starts when the first such cgroup is picked (a reloaded configuration may ask
//! for it later); each cgroup's tasks, its sub-cgroups' included, are sampled from its pick to
//! the end of its watch, when its profile is taken out for its report.

use std::collections::HashMap;

use super::watched::CgroupId;
use crate::{
    kernel::probe::{Probes, STACK_SAMPLES_LOST, SamplingRates},
    profile::{Profile, Sampler},
};

/// The agent's profiling, started on first use.
#[derive(Debug)]
pub struct Profiling {
    rates: SamplingRates,
    state: State,
    /// Samples the kernel had lost (all profiles') when each profiled cgroup began.
    lost_before: HashMap<CgroupId, u64>,
}

#[derive(Debug)]
enum State {
    /// No rule asked for a profile yet.
    Idle,
    /// Sampling; with what the kernel could not take (notes for every profiled report).
    Running(Sampler, Vec<String>),
    /// This host cannot profile: why.
    Failed(String),
}

impl Profiling {
    /// Nothing sampled yet; when something is, at `rates`.
    pub fn new(rates: SamplingRates) -> Self {
        Self {
            rates,
            state: State::Idle,
            lost_before: HashMap::new(),
        }
    }

    /// The samples a second it takes (or would, once started).
    pub fn frequency_hz(&self) -> u64 {
        self.rates.frequency_hz
    }

    /// Takes the rates of a reloaded configuration; they apply only if sampling has not
    /// started (the sampling events, once open, keep theirs).
    pub fn set_rates(&mut self, rates: SamplingRates) {
        if rates == self.rates {
            return;
        }
        match self.state {
            State::Idle => self.rates = rates,
            _ => log::warn!(
                "SIGHUP: profiles keep sampling at {} Hz until the agent restarts",
                self.rates.frequency_hz
            ),
        }
    }

    /// Starts sampling cgroup `id` and its sub-cgroups `subtree` (those made later join by
    /// themselves), starting the sampler if it is not running. Gives the notes its report
    /// will carry: what of the profiles this host cannot take.
    pub fn begin(&mut self, probes: &mut Probes, id: CgroupId, subtree: &[u64]) -> Vec<String> {
        if let State::Idle = self.state {
            let (sampler, notes) = Sampler::attach(probes, self.rates);
            self.state = match sampler {
                Some(s) => State::Running(s, notes),
                None => State::Failed(notes.join("; ")),
            };
        }
        match &self.state {
            State::Running(_, notes) => match probes.profile_cgroups(id.0, subtree) {
                Ok(()) => {
                    self.lost_before.insert(id, lost(probes));
                    notes.clone()
                }
                Err(e) => vec![format!("no profile was taken: {e}")],
            },
            State::Failed(why) => vec![why.clone()],
            State::Idle => Vec::new(),
        }
    }

    /// Stops sampling cgroup `id` and takes out its profile (`None` if there is none: the
    /// host cannot profile, or the sampler is gone); a note says why when there is none.
    pub fn end(&mut self, probes: &mut Probes, id: CgroupId) -> (Option<Profile>, Option<String>) {
        let State::Running(sampler, _) = &self.state else {
            return (None, None);
        };
        // Its samples stop first, so that none arrives after its profile is taken.
        if let Err(e) = probes.unprofile(id.0) {
            log::warn!("could not stop profiling cgroup {}: {e}", id.0);
        }
        let before = self.lost_before.remove(&id).unwrap_or(0);
        match sampler.take(id.0, lost(probes).saturating_sub(before)) {
            Some(profile) => (Some(profile), None),
            None => (
                None,
                Some("no profile: the sampling thread did not answer".to_owned()),
            ),
        }
    }
}

/// Stack samples the kernel had no room for since the probes loaded, every profile's.
fn lost(probes: &Probes) -> u64 {
    probes
        .drops()
        .ok()
        .and_then(|d| d.get(STACK_SAMPLES_LOST).copied())
        .unwrap_or(0)
}
