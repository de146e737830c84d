//! A sampled process's user stack, unwound from the registers and the copy of the top of its
//! stack that the kernel sent, with each mapped file's `.eh_frame` (framehop), and frame
//! pointers where a file has no unwind table for an address.

use std::sync::Arc;

use framehop::{
    ExplicitModuleSectionInfo, FrameAddress, Module, Unwinder as _,
    x86_64::{CacheX86_64, UnwindRegsX86_64, UnwinderX86_64},
};

use crate::profile::{
    mappings::{FileId, Mapping, MappingSource},
    modules::{ModuleFile, ModuleFiles},
};

/// One frame of a user stack: in a file, at a stated address (what symbols are looked up
/// by), or at an address no mapped file holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum UserFrame {
    /// In `file`, at stated address `svma` (for a return address, the call before it).
    InFile {
        /// The file.
        file: FileId,
        /// Its stated address.
        svma: u64,
    },
    /// Outside every mapped file (JIT code, the vDSO), by address.
    Unknown(u64),
}

/// How far a user stack was unwound.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unwound {
    /// To its outermost frame.
    Complete,
    /// Part of it: the copy of the stack ended, or an address had no unwind rule.
    Truncated,
    /// Not at all: the process's mappings could not be read (it had ended).
    NoMappings,
    /// There was none: the process was in the middle of an `exec`, its old program unmapped
    /// and nothing of the new one mapped yet (its followed mappings were empty then).
    InExec,
}

/// One process's mapped files and unwinder.
pub struct ProcessUnwinder {
    tgid: u32,
    mappings: Vec<Mapping>,
    /// Their version, when followed as they change (see [`MappingSource`]).
    version: Option<u64>,
    /// For each mapping, its file if readable, and the file's bias there.
    files: Vec<Option<(Arc<ModuleFile>, u64)>>,
    unwinder: UnwinderX86_64<Arc<[u8]>>,
    /// Re-reads from `/proc` for an address no mapping held (`dlopen`, a process first sampled
    /// in its loader), bounded.
    rereads: u32,
}

impl std::fmt::Debug for ProcessUnwinder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcessUnwinder")
            .field("tgid", &self.tgid)
            .field("mappings", &self.mappings.len())
            .finish_non_exhaustive()
    }
}

/// Re-reads of an unfollowed process's mappings allowed, for code it mapped after it was
/// first sampled.
const MAX_REREADS: u32 = 8;

impl ProcessUnwinder {
    /// Process `tgid`'s mappings, from `source`; `None` if they cannot be had.
    pub fn new(tgid: u32, files: &mut ModuleFiles, source: &mut dyn MappingSource) -> Option<Self> {
        let mut p = Self {
            tgid,
            mappings: Vec::new(),
            version: None,
            files: Vec::new(),
            unwinder: UnwinderX86_64::new(),
            rereads: 0,
        };
        p.load(files, source).then_some(p)
    }

    /// (Re-)reads the mappings and builds the unwinder from them; false if they cannot be read.
    fn load(&mut self, files: &mut ModuleFiles, source: &mut dyn MappingSource) -> bool {
        let Some((version, mappings)) = source.mappings(self.tgid) else {
            return false;
        };
        let mut unwinder = UnwinderX86_64::new();
        let mut found = Vec::with_capacity(mappings.len());
        for m in &mappings {
            let file = files
                .get(self.tgid, m)
                .and_then(|f| Some((f.clone(), f.bias(m)?)));
            if let Some((f, bias)) = &file {
                unwinder.add_module(module(f, m, *bias));
            }
            found.push(file);
        }
        self.mappings = mappings;
        self.version = version;
        self.files = found;
        self.unwinder = unwinder;
        true
    }

    /// Reads the mappings again if they may have changed: a followed process's when their
    /// version moved, another's a bounded number of times. Whether they were read.
    fn refresh(&mut self, files: &mut ModuleFiles, source: &mut dyn MappingSource) -> bool {
        match source.version(self.tgid) {
            Some(v) if Some(v) == self.version => false,
            Some(_) => self.load(files, source),
            None if self.rereads < MAX_REREADS => {
                self.rereads += 1;
                self.load(files, source)
            }
            None => false,
        }
    }

    /// The mapping holding `address`, if any.
    fn mapping_of(&self, address: u64) -> Option<usize> {
        let i = self.mappings.partition_point(|m| m.start <= address);
        (i > 0 && self.mappings[i - 1].contains(address)).then(|| i - 1)
    }

    /// The user stack from `ip`, `sp` and `bp` and `stack` (the bytes from `sp` up), innermost
    /// frame first. A stack through an address no mapping holds is unwound again once, with
    /// the mappings read again if they may have changed since (code mapped after they were
    /// read: the program's libraries, when they were read in its loader).
    pub fn unwind(
        &mut self,
        files: &mut ModuleFiles,
        source: &mut dyn MappingSource,
        cache: &mut CacheX86_64,
        regs: (u64, u64, u64),
        stack: &[u8],
    ) -> (Vec<UserFrame>, Unwound) {
        if self.mappings.is_empty() && !self.refresh(files, source) {
            let why = match self.version {
                Some(_) => Unwound::InExec,
                None => Unwound::NoMappings,
            };
            return (Vec::new(), why);
        }
        let (mut frames, mut outcome) = self.walk(cache, regs, stack);
        let unmapped = frames
            .iter()
            .any(|f| self.mapping_of(f.address_for_lookup()).is_none());
        if unmapped && self.refresh(files, source) {
            (frames, outcome) = self.walk(cache, regs, stack);
        }
        let frames = frames.into_iter().map(|f| self.frame(f)).collect();
        (frames, outcome)
    }

    /// The frames the unwinder finds, innermost first.
    fn walk(
        &self,
        cache: &mut CacheX86_64,
        (ip, sp, bp): (u64, u64, u64),
        stack: &[u8],
    ) -> (Vec<FrameAddress>, Unwound) {
        let mut read_stack = |address: u64| -> Result<u64, ()> {
            let at = address.checked_sub(sp).ok_or(())? as usize;
            let bytes = stack.get(at..at + 8).ok_or(())?;
            Ok(u64::from_le_bytes(bytes.try_into().map_err(|_| ())?))
        };
        let mut frames = Vec::new();
        let mut iter = self.unwinder.iter_frames(
            ip,
            UnwindRegsX86_64::new(ip, sp, bp),
            cache,
            &mut read_stack,
        );
        let outcome = loop {
            match iter.next() {
                Ok(Some(frame)) => {
                    frames.push(frame);
                    if frames.len() >= MAX_FRAMES {
                        break Unwound::Truncated;
                    }
                }
                Ok(None) => break Unwound::Complete,
                Err(_) => break Unwound::Truncated,
            }
        };
        (frames, outcome)
    }

    fn frame(&self, frame: FrameAddress) -> UserFrame {
        let address = frame.address_for_lookup();
        if let Some(i) = self.mapping_of(address)
            && let Some((_, bias)) = &self.files[i]
        {
            return UserFrame::InFile {
                file: self.mappings[i].file,
                svma: address.wrapping_sub(*bias),
            };
        }
        UserFrame::Unknown(address)
    }
}

/// Frames of one stack at most.
const MAX_FRAMES: usize = 256;

/// The framehop module for `file` mapped as `mapping` with `bias`.
fn module(file: &ModuleFile, mapping: &Mapping, bias: u64) -> Module<Arc<[u8]>> {
    Module::new(
        file.path.clone(),
        mapping.start..mapping.end,
        bias,
        ExplicitModuleSectionInfo {
            base_svma: 0,
            text_svma: file.text_svma.clone(),
            got_svma: file.got_svma.clone(),
            eh_frame_svma: file.eh_frame.as_ref().map(|s| s.svma.clone()),
            eh_frame: file.eh_frame.as_ref().map(|s| s.data.clone()),
            eh_frame_hdr_svma: file.eh_frame_hdr.as_ref().map(|s| s.svma.clone()),
            eh_frame_hdr: file.eh_frame_hdr.as_ref().map(|s| s.data.clone()),
            ..Default::default()
        },
    )
}
