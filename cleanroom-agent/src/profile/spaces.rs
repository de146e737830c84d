//! Processes' executable mappings followed as they change — each `exec`, `fork`, `mmap` and
//! exit the kernel reports ([`SpaceEvent`], from [`super::sideband`]) — so a sample is unwound
//! with the mappings its process had, even when the process ended before the sample was read
//! or was still in its loader when first sampled.
//!
//! Only processes seen from their `exec` (or forked from one so seen) are followed: their
//! tables are whole. Any other is read from `/proc` when sampled ([`super::mappings::read`]).

use std::collections::HashMap;

use crate::profile::mappings::Mapping;

/// Processes followed at most; an `exec` beyond is not followed (read from `/proc` instead).
const MAX_SPACES: usize = 32_768;

/// Mappings one process may have at most; one that maps more is no longer followed.
const MAX_MAPPINGS: usize = 4_096;

/// What the kernel reported of a process's address space.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SpaceEvent {
    /// Process `tgid` ran a new program: its old mappings are gone.
    Exec {
        /// The process.
        tgid: u32,
    },
    /// Process `parent` forked `tgid`, a copy of its address space.
    Fork {
        /// The new process.
        tgid: u32,
        /// The process it was forked from.
        parent: u32,
    },
    /// Process `tgid` mapped a file executable.
    Map {
        /// The process.
        tgid: u32,
        /// The mapping.
        mapping: Mapping,
    },
    /// Process `tgid`'s leader ended.
    Exit {
        /// The process.
        tgid: u32,
    },
    /// Reports were lost: no table can be trusted to be whole.
    Lost,
}

/// One followed process's mappings, in address order, and their version.
#[derive(Debug)]
struct Space {
    mappings: Vec<Mapping>,
    version: u64,
}

/// The followed processes' mappings.
#[derive(Debug, Default)]
pub struct AddressSpaces {
    spaces: HashMap<u32, Space>,
    /// The last version given; each change takes the next.
    last_version: u64,
    /// Processes that ended since [`Self::take_exited`] was last called.
    exited: Vec<u32>,
}

impl AddressSpaces {
    /// Follows one event.
    pub fn apply(&mut self, event: SpaceEvent) {
        match event {
            SpaceEvent::Exec { tgid } => {
                if self.spaces.len() < MAX_SPACES || self.spaces.contains_key(&tgid) {
                    let version = self.next_version();
                    self.spaces.insert(
                        tgid,
                        Space {
                            mappings: Vec::new(),
                            version,
                        },
                    );
                }
            }
            SpaceEvent::Fork { tgid, parent } => {
                // Never over a table already there: reports of several CPUs can be read out of
                // order, and the child's own exec may have come first.
                if self.spaces.contains_key(&tgid) || self.spaces.len() >= MAX_SPACES {
                    return;
                }
                if let Some(mappings) = self.spaces.get(&parent).map(|s| s.mappings.clone()) {
                    let version = self.next_version();
                    self.spaces.insert(tgid, Space { mappings, version });
                }
            }
            SpaceEvent::Map { tgid, mapping } => {
                let Some(space) = self.spaces.get_mut(&tgid) else {
                    return;
                };
                if space.mappings.len() >= MAX_MAPPINGS {
                    self.spaces.remove(&tgid);
                    return;
                }
                insert(&mut space.mappings, mapping);
                self.last_version += 1;
                space.version = self.last_version;
            }
            SpaceEvent::Exit { tgid } => {
                if self.spaces.contains_key(&tgid) {
                    self.exited.push(tgid);
                }
            }
            SpaceEvent::Lost => self.spaces.clear(),
        }
    }

    /// Process `tgid`'s mappings and their version, if it is followed.
    pub fn get(&self, tgid: u32) -> Option<(u64, &[Mapping])> {
        self.spaces
            .get(&tgid)
            .map(|s| (s.version, s.mappings.as_slice()))
    }

    /// The processes that ended since the last call.
    pub fn take_exited(&mut self) -> Vec<u32> {
        std::mem::take(&mut self.exited)
    }

    /// Stops following `tgids` (ended processes whose samples have all been read).
    pub fn forget(&mut self, tgids: &[u32]) {
        for tgid in tgids {
            self.spaces.remove(tgid);
        }
    }

    fn next_version(&mut self) -> u64 {
        self.last_version += 1;
        self.last_version
    }
}

/// Puts `new` into `mappings` (in address order), cutting away what it covers of older ones:
/// a new mapping replaces whatever was at its addresses.
fn insert(mappings: &mut Vec<Mapping>, new: Mapping) {
    let mut kept = Vec::with_capacity(mappings.len() + 2);
    for m in mappings.drain(..) {
        if m.end <= new.start || new.end <= m.start {
            kept.push(m);
            continue;
        }
        if m.start < new.start {
            kept.push(Mapping {
                end: new.start,
                ..m.clone()
            });
        }
        if new.end < m.end {
            kept.push(Mapping {
                start: new.end,
                offset: m.offset + (new.end - m.start),
                ..m
            });
        }
    }
    kept.push(new);
    kept.sort_by_key(|m| m.start);
    *mappings = kept;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::mappings::FileId;

    fn mapping(start: u64, end: u64, offset: u64, inode: u64) -> Mapping {
        Mapping {
            start,
            end,
            offset,
            file: FileId { dev: 1, inode },
            path: format!("/f{inode}"),
        }
    }

    fn map(tgid: u32, m: Mapping) -> SpaceEvent {
        SpaceEvent::Map { tgid, mapping: m }
    }

    #[test]
    fn a_process_is_followed_from_its_exec_and_its_children_from_their_fork() {
        let mut s = AddressSpaces::default();
        // Not seen from its exec: not followed.
        s.apply(map(10, mapping(0x1000, 0x2000, 0, 1)));
        assert!(s.get(10).is_none());
        s.apply(SpaceEvent::Exec { tgid: 10 });
        s.apply(map(10, mapping(0x1000, 0x2000, 0, 1)));
        s.apply(map(10, mapping(0x7000, 0x9000, 0x3000, 2)));
        let (v1, m) = s.get(10).map(|(v, m)| (v, m.to_vec())).unwrap();
        assert_eq!(m.len(), 2);
        s.apply(SpaceEvent::Fork {
            tgid: 11,
            parent: 10,
        });
        assert_eq!(s.get(11).unwrap().1, m.as_slice());
        // The child's exec replaces what it had; a late report of its fork changes nothing.
        s.apply(SpaceEvent::Exec { tgid: 11 });
        s.apply(SpaceEvent::Fork {
            tgid: 11,
            parent: 10,
        });
        assert!(s.get(11).unwrap().1.is_empty());
        s.apply(map(10, mapping(0xa000, 0xb000, 0, 3)));
        assert!(s.get(10).unwrap().0 > v1, "a change takes a new version");
        // A fork of a process not followed is not followed either.
        s.apply(SpaceEvent::Fork {
            tgid: 12,
            parent: 99,
        });
        assert!(s.get(12).is_none());
    }

    #[test]
    fn an_ended_process_is_kept_until_forgotten_and_a_loss_forgets_all() {
        let mut s = AddressSpaces::default();
        s.apply(SpaceEvent::Exec { tgid: 1 });
        s.apply(SpaceEvent::Exec { tgid: 2 });
        s.apply(SpaceEvent::Exit { tgid: 1 });
        s.apply(SpaceEvent::Exit { tgid: 77 });
        assert!(s.get(1).is_some());
        let ended = s.take_exited();
        assert_eq!(ended, vec![1]);
        assert!(s.take_exited().is_empty());
        s.forget(&ended);
        assert!(s.get(1).is_none() && s.get(2).is_some());
        s.apply(SpaceEvent::Lost);
        assert!(s.get(2).is_none());
    }

    #[test]
    fn a_new_mapping_replaces_what_it_covers() {
        let mut m = vec![mapping(0x1000, 0x5000, 0x100, 1)];
        insert(&mut m, mapping(0x2000, 0x3000, 0, 2));
        assert_eq!(
            m,
            vec![
                mapping(0x1000, 0x2000, 0x100, 1),
                mapping(0x2000, 0x3000, 0, 2),
                mapping(0x3000, 0x5000, 0x2100, 1),
            ]
        );
        insert(&mut m, mapping(0x0, 0x6000, 0, 3));
        assert_eq!(m, vec![mapping(0x0, 0x6000, 0, 3)]);
        insert(&mut m, mapping(0x6000, 0x7000, 0, 4));
        assert_eq!(m.len(), 2);
    }
}
