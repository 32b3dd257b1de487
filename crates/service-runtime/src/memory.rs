//! Giving freed memory back to the system.
//!
//! glibc's allocator keeps inside the process the pages a burst freed (hundreds of
//! requests piled up behind a database stall, each with its connection's buffers): its
//! heaps shrink only from the top, so the resident set stays at the burst's high-water
//! mark for the life of the process. `malloc_trim` returns every whole free page wherever
//! it lies; the runtime calls it every [`RELEASE_INTERVAL`]. Elsewhere (musl, other
//! systems) there is nothing to call.

use std::time::Duration;

/// How often free memory is returned to the system.
pub const RELEASE_INTERVAL: Duration = Duration::from_secs(10);

/// Returns the pages the allocator holds free to the system.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
pub fn release_free() {
    // SAFETY: `malloc_trim` takes no pointer and releases only memory no allocation
    // holds; glibc allows it at any time, from any thread.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Returns the pages the allocator holds free to the system.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn release_free() {}
