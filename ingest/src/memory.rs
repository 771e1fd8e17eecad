//! How ingest wants freed memory treated: kept for the next commit's buffers.
//!
//! Ingest frees a commit's buffers on the committer thread while the loop grows the next
//! ones; handed back to the OS at once (mimalloc's default, after 1 s), every page of them
//! was faulted in again (ingest's CPU per 2M flows in `bench ingest`: 8.0 s, 6.7 s kept).
//! The allocator is the binary's choice; these calls only take effect under mimalloc.

use std::time::Duration;

/// How long ingest keeps freed memory for its next buffers: longer than a commit
/// interval of the defaults, so that each commit's buffers are reused by the next.
pub const KEEP_FREED_MEMORY: Duration = Duration::from_secs(60);

/// mimalloc's `mi_option_purge_delay` (its option enum, v3 as libmimalloc-sys bundles it;
/// a test checks that this option has the documented default, 1,000 ms).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Keeps freed memory for `delay` before handing it back to the OS (mimalloc: 1 s).
pub fn keep_freed_memory_for(delay: Duration) {
    let ms = std::os::raw::c_long::try_from(delay.as_millis()).unwrap_or(std::os::raw::c_long::MAX);
    // SAFETY: sets a plain integer option of the allocator; any value is valid.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, ms) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_purge_delay_option_is_the_one_mimalloc_documents() {
        // SAFETY: reads an integer option of the allocator.
        let default = unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) };
        assert_eq!(default, 1_000, "mimalloc's purge delay defaults to 1 s");
        keep_freed_memory_for(Duration::from_secs(60));
        // SAFETY: as above.
        let set = unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) };
        assert_eq!(set, 60_000);
    }
}
