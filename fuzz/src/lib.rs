//! Shared pieces of Cleanroom's fuzz targets.
//!
//! [`bounded_allocations!`] lets libFuzzer watch every allocation of a target without a
//! sanitizer: libFuzzer's `-malloc_limit_mb` and `-trace_malloc` rely on the malloc hooks a
//! sanitizer runtime offers, so the macro offers the same hook entry point and calls the hooks
//! from a global allocator. A single allocation above `-malloc_limit_mb` then stops the run with
//! libFuzzer's own `out-of-memory (malloc(N))` report and an `oom-` artifact, even when the
//! memory would never be touched (and so never show in `-rss_limit_mb`).
//!
//! The hooks are only offered in builds with `--cfg cleanroom_fuzz_hooks`, which `cargo xtask
//! fuzz` passes: a sanitizer runtime (cargo-fuzz's default ASan build) defines the same symbol
//! and watches allocations itself.

use std::{
    alloc::{GlobalAlloc, Layout, System},
    ffi::c_void,
    sync::atomic::{AtomicPtr, Ordering},
};

/// libFuzzer's malloc hook: the new block and its size.
pub type MallocHook = unsafe extern "C" fn(*const c_void, usize);
/// libFuzzer's free hook: the freed block.
pub type FreeHook = unsafe extern "C" fn(*const c_void);

/// The hooks libFuzzer installed (null until it does).
static MALLOC_HOOK: AtomicPtr<c_void> = AtomicPtr::new(std::ptr::null_mut());
static FREE_HOOK: AtomicPtr<c_void> = AtomicPtr::new(std::ptr::null_mut());

/// Stores the hooks; what the target's `__sanitizer_install_malloc_and_free_hooks` calls.
pub fn install_hooks(malloc: Option<MallocHook>, free: Option<FreeHook>) {
    let malloc = malloc.map_or(std::ptr::null_mut(), |f| f as *mut c_void);
    let free = free.map_or(std::ptr::null_mut(), |f| f as *mut c_void);
    MALLOC_HOOK.store(malloc, Ordering::Release);
    FREE_HOOK.store(free, Ordering::Release);
}

fn on_malloc(ptr: *const u8, size: usize) {
    let hook = MALLOC_HOOK.load(Ordering::Acquire);
    if !hook.is_null() {
        // SAFETY: only `install_hooks` stores here, and only a `MallocHook`.
        let hook: MallocHook = unsafe { std::mem::transmute(hook) };
        // SAFETY: libFuzzer's hook reads neither the block nor anything we own.
        unsafe { hook(ptr.cast(), size) };
    }
}

fn on_free(ptr: *const u8) {
    let hook = FREE_HOOK.load(Ordering::Acquire);
    if !hook.is_null() {
        // SAFETY: only `install_hooks` stores here, and only a `FreeHook`.
        let hook: FreeHook = unsafe { std::mem::transmute(hook) };
        // SAFETY: as in `on_malloc`.
        unsafe { hook(ptr.cast()) };
    }
}

/// The system allocator, telling libFuzzer's hooks about every allocation.
pub struct Hooked;

// SAFETY: every call is passed unchanged to `System`; the hooks only observe.
unsafe impl GlobalAlloc for Hooked {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // The hook runs even when the allocation fails, so that an absurd size is reported as
        // libFuzzer's out-of-memory rather than as an abort.
        // SAFETY: the caller's contract is `System`'s.
        let ptr = unsafe { System.alloc(layout) };
        on_malloc(ptr, layout.size());
        ptr
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as in `alloc`.
        let ptr = unsafe { System.alloc_zeroed(layout) };
        on_malloc(ptr, layout.size());
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        on_free(ptr);
        // SAFETY: as in `alloc`.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: as in `alloc`.
        let new = unsafe { System.realloc(ptr, layout, new_size) };
        if !new.is_null() {
            on_free(ptr);
        }
        on_malloc(new, new_size);
        new
    }
}

/// Makes the target's allocations visible to libFuzzer's `-malloc_limit_mb` (see the crate
/// docs). Invoke once at the top of every target: the symbol must live in the target's own
/// object code, since the linker does not pull a library member in for a weak reference.
#[macro_export]
macro_rules! bounded_allocations {
    () => {
        #[cfg(cleanroom_fuzz_hooks)]
        #[global_allocator]
        static ALLOCATOR: $crate::Hooked = $crate::Hooked;

        /// What a sanitizer runtime would offer; libFuzzer calls it once at start-up.
        #[cfg(cleanroom_fuzz_hooks)]
        #[unsafe(no_mangle)]
        pub extern "C" fn __sanitizer_install_malloc_and_free_hooks(
            malloc: Option<$crate::MallocHook>,
            free: Option<$crate::FreeHook>,
        ) -> i32 {
            $crate::install_hooks(malloc, free);
            1
        }
    };
}
