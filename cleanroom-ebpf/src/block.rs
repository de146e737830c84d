//! Block I/O hooks: bytes and ops per cgroup and device, and issue-to-completion latency.
//!
//! Owner of a bio: the submitting task's cgroup when a user task submits it (direct I/O, and
//! fsync, which writes back in the caller), else — a kernel thread writing back on someone's
//! behalf — the cgroup its `bi_blkg` names when that is on the v2 hierarchy (cgroup writeback),
//! else the kernel thread's own (the root). Completions run in interrupt context, so the owner is
//! carried from submission to the request (`BIO_OWNER`) and from issue to completion
//! (`RQ_START`); nothing is charged to whoever happens to be current at completion.

use aya_ebpf::{helpers::bpf_ktime_get_ns, macros::btf_tracepoint, programs::BtfTracePointContext};
use cleanroom_common::{BlockKey, BlockStats, BlockWay, HistKey, drop_reason, hist_kind};

use crate::{
    maps::{
        BIO_OWNER, BLOCK_PENDING, RQ_START, address, block_stats_of, claim, count_drop,
        existing_block_stats, in_flight_slot, keep_owner, record_latency_batched, release,
    },
    task::{
        OFF_BDEV_DEV, OFF_BIO_BDEV, OFF_BIO_BLKG, OFF_BIO_DISK, OFF_BIO_OPF, OFF_BIO_PARTNO,
        OFF_BIO_SIZE, OFF_BLKCG_CGROUP, OFF_BLKG_BLKCG, OFF_GENDISK_FIRST_MINOR, OFF_GENDISK_MAJOR,
        OFF_RQ_BIO, OFF_RQ_CMD_FLAGS, current_cgroup_id, current_user_cgroup_id, id_of_cgroup,
        on_default_hierarchy, read, read_ptr,
    },
};

/// `REQ_OP_READ` and `REQ_OP_WRITE`, the low 8 bits of `bi_opf` / `cmd_flags`.
const REQ_OP_MASK: u32 = 0xff;
const REQ_OP_READ: u32 = 0;
const REQ_OP_WRITE: u32 = 1;

/// The cgroup that owns `bio` (see the module doc).
#[inline(always)]
fn bio_owner(bio: *const u8) -> u64 {
    if let Some(id) = current_user_cgroup_id() {
        return id;
    }
    read_ptr(bio, &OFF_BIO_BLKG)
        .and_then(|blkg| read_ptr(blkg, &OFF_BLKG_BLKCG))
        .and_then(|blkcg| read_ptr(blkcg, &OFF_BLKCG_CGROUP))
        .filter(|cgroup| on_default_hierarchy(*cgroup))
        .and_then(id_of_cgroup)
        .unwrap_or_else(current_cgroup_id)
}

/// Where a bio says which device it goes to.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Layout {
    /// `bio->bi_bdev->bd_dev` (Linux 5.12 on).
    Bdev,
    /// `bio->bi_disk` and `bio->bi_partno` (before 5.12).
    Disk,
}

/// The device (`dev_t` as the kernel encodes it) `bio` goes to; 0 if it cannot be read.
#[inline(always)]
fn dev_of(bio: *const u8, layout: Layout) -> u32 {
    if layout == Layout::Bdev {
        return read_ptr(bio, &OFF_BIO_BDEV)
            .and_then(|bdev| read::<u32>(bdev, &OFF_BDEV_DEV))
            .unwrap_or(0);
    }
    let Some(disk) = read_ptr(bio, &OFF_BIO_DISK) else {
        return 0;
    };
    let major = read::<i32>(disk, &OFF_GENDISK_MAJOR).unwrap_or(0) as u32;
    let first_minor = read::<i32>(disk, &OFF_GENDISK_FIRST_MINOR).unwrap_or(0) as u32;
    let partno = u32::from(read::<u8>(bio, &OFF_BIO_PARTNO).unwrap_or(0));
    (major << 20) | (first_minor + partno)
}

/// `block_bio_queue(struct bio *bio)`: runs in the submitter.
#[btf_tracepoint(function = "block_bio_queue")]
pub fn block_bio_queue(ctx: BtfTracePointContext) -> u32 {
    on_bio_queue(ctx.arg(0), Layout::Bdev);
    0
}

/// `block_bio_queue(struct request_queue *q, struct bio *bio)`, before 5.11.
#[btf_tracepoint(function = "block_bio_queue")]
pub fn block_bio_queue_q(ctx: BtfTracePointContext) -> u32 {
    on_bio_queue(ctx.arg(1), Layout::Disk);
    0
}

/// A bio submitted: its bytes and op to its owner and device, and its owner kept for its
/// request.
#[inline(always)]
fn on_bio_queue(bio: *const u8, layout: Layout) {
    let Some(opf) = read::<u32>(bio, &OFF_BIO_OPF) else {
        count_drop(drop_reason::READ_FAILED);
        return;
    };
    let Some(size) = read::<u32>(bio, &OFF_BIO_SIZE) else {
        count_drop(drop_reason::READ_FAILED);
        return;
    };
    let op = opf & REQ_OP_MASK;
    // Empty bios (a cache flush is an empty write with REQ_PREFLUSH) move no data.
    if (op != REQ_OP_READ && op != REQ_OP_WRITE) || size == 0 {
        return;
    }
    let dev = dev_of(bio, layout);
    let owner = bio_owner(bio);
    let key = BlockKey {
        cgroup_id: owner,
        dev,
        _pad: 0,
    };
    count_bio(key, op == REQ_OP_READ, u64::from(size));
    keep_owner(address(bio), owner);
}

/// Counts a bio of `size` bytes to `key`: in one of this CPU's two pending copies
/// ([`BLOCK_PENDING`]) when it is this key's, else in the copy used least recently once it is
/// added to its entry (made when the copy is taken, as the scheduler's: see
/// `maps::current_stats`). A bio submitted while another program updates the copies (from an
/// interrupt) is counted straight into its entry.
#[inline(always)]
fn count_bio(key: BlockKey, read: bool, size: u64) {
    let Some(set) = BLOCK_PENDING.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's element of a per-CPU array; a program interrupting this one on this
    // CPU sees `busy` and leaves the set alone.
    let set = unsafe { &mut *set };
    if !claim(&mut set.busy) {
        if let Some(stats) = block_stats_of(key) {
            add_bio(stats, read, size);
        }
        return;
    }
    let same = |k: &BlockKey| k.cgroup_id == key.cgroup_id && k.dev == key.dev;
    let index = if same(&set.ways[0].key) {
        0
    } else if same(&set.ways[1].key) {
        1
    } else {
        let victim = if set.last_used == 0 { 1 } else { 0 };
        if let Some(way) = set.ways.get_mut(victim) {
            if way.key.cgroup_id != 0
                && let Some(entry) = existing_block_stats(&way.key)
            {
                *entry = entry.wrapping_add(way.stats);
            }
            let _ = block_stats_of(key);
            *way = BlockWay {
                key,
                stats: BlockStats::default(),
            };
        }
        victim
    };
    set.last_used = index as u64;
    if let Some(way) = set.ways.get_mut(index) {
        add_bio(&mut way.stats, read, size);
    }
    release(&mut set.busy);
}

/// Adds a bio of `size` bytes, read or written, to `stats`.
#[inline(always)]
fn add_bio(stats: &mut BlockStats, read: bool, size: u64) {
    if read {
        stats.read_bytes += size;
        stats.read_ops += 1;
    } else {
        stats.write_bytes += size;
        stats.write_ops += 1;
    }
}

/// `block_split(struct bio *split, unsigned int new_sector)`: runs in the submitter when a bio
/// is cut to the device's limits. The front part is a new bio that becomes a request of its
/// own; it belongs to whoever owns the original (bytes were counted once, at queue time).
#[btf_tracepoint(function = "block_split")]
pub fn block_split(ctx: BtfTracePointContext) -> u32 {
    on_split(ctx.arg(0));
    0
}

/// `block_split(struct request_queue *q, struct bio *split, unsigned int new_sector)`, before
/// 5.11.
#[btf_tracepoint(function = "block_split")]
pub fn block_split_q(ctx: BtfTracePointContext) -> u32 {
    on_split(ctx.arg(1));
    0
}

/// A bio split off: it belongs to whoever owns the original.
#[inline(always)]
fn on_split(split: *const u8) {
    keep_owner(address(split), bio_owner(split));
}

/// `block_rq_issue(struct request *rq)`: the request goes to the device.
#[btf_tracepoint(function = "block_rq_issue")]
pub fn block_rq_issue(ctx: BtfTracePointContext) -> u32 {
    on_rq_issue(ctx.arg(0), Layout::Bdev);
    0
}

/// `block_rq_issue(struct request_queue *q, struct request *rq)`, before 5.11.
#[btf_tracepoint(function = "block_rq_issue")]
pub fn block_rq_issue_q(ctx: BtfTracePointContext) -> u32 {
    on_rq_issue(ctx.arg(1), Layout::Disk);
    0
}

/// `block_rq_issue(struct request *rq)` with the device in `bio->bi_disk`: 5.10 kernels that
/// took the one-argument tracepoint from a stable update (Debian 11's).
#[btf_tracepoint(function = "block_rq_issue")]
pub fn block_rq_issue_disk(ctx: BtfTracePointContext) -> u32 {
    on_rq_issue(ctx.arg(0), Layout::Disk);
    0
}

/// A request issued: its start, owner and device, until it completes.
#[inline(always)]
fn on_rq_issue(rq: *const u8, layout: Layout) {
    let Some(op) = read::<u32>(rq, &OFF_RQ_CMD_FLAGS).map(|f| f & REQ_OP_MASK) else {
        return;
    };
    if op != REQ_OP_READ && op != REQ_OP_WRITE {
        return;
    }
    let Some(bio) = read_ptr(rq, &OFF_RQ_BIO) else {
        return;
    };
    let bio_at = address(bio);
    let Some(slot) = BIO_OWNER.get_ptr_mut(in_flight_slot(bio_at)) else {
        return;
    };
    // SAFETY: an element of an array map, read and taken at once; a racing writer is told by
    // the check.
    let (tag, owner, check) = unsafe { ((*slot).bio, (*slot).owner, (*slot).check) };
    if bio_at == 0 || tag != bio_at || check != tag ^ owner {
        count_drop(drop_reason::LATENCY_UNMATCHED);
        return;
    }
    // SAFETY: as above.
    unsafe { (*slot).bio = 0 };
    let dev = dev_of(bio, layout);
    let rq_at = address(rq);
    let Some(slot) = RQ_START.get_ptr_mut(in_flight_slot(rq_at)) else {
        return;
    };
    // SAFETY: helper without preconditions.
    let issued_ns = unsafe { bpf_ktime_get_ns() };
    let kind = if op == REQ_OP_READ {
        hist_kind::BLOCK_READ
    } else {
        hist_kind::BLOCK_WRITE
    };
    // SAFETY: an element of an array map; a racing writer is told by the check.
    unsafe {
        (*slot).rq = rq_at;
        (*slot).issued_ns = issued_ns;
        (*slot).owner = owner;
        (*slot).kind = kind;
        (*slot).dev = dev;
        (*slot).check = rq_at ^ issued_ns ^ owner;
    }
}

/// `block_rq_complete(struct request *rq, blk_status_t error, unsigned int nr_bytes)`: runs in
/// interrupt context; the owner comes from the issue.
#[btf_tracepoint(function = "block_rq_complete")]
pub fn block_rq_complete(ctx: BtfTracePointContext) -> u32 {
    let rq = address(ctx.arg(0));
    let Some(slot) = RQ_START.get_ptr_mut(in_flight_slot(rq)) else {
        return 0;
    };
    // SAFETY: an element of an array map, read and taken at once.
    let (tag, issued_ns, owner, kind, dev, check) = unsafe {
        (
            (*slot).rq,
            (*slot).issued_ns,
            (*slot).owner,
            (*slot).kind,
            (*slot).dev,
            (*slot).check,
        )
    };
    // Requests never issued while the probes were attached (or whose slot another took) have
    // no start here.
    if rq == 0 || tag != rq || check != tag ^ issued_ns ^ owner {
        return 0;
    }
    // SAFETY: as above.
    unsafe { (*slot).rq = 0 };
    // SAFETY: helper without preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    let key = HistKey {
        cgroup_id: owner,
        kind,
        dev,
    };
    record_latency_batched(key, now.saturating_sub(issued_ns));
    0
}
