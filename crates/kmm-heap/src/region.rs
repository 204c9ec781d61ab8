//! The host memory behind a heap: one anonymous `MAP_NORESERVE` mapping.
//!
//! The mapping reserves address space only; the host commits a page when kmm
//! first touches it (its `mem_map` at boot, then the slabs and pages it hands
//! out). It is never unmapped: a heap is meant to be a `static`, and memory
//! it handed out must stay valid for as long as anyone may hold it.

/// A mapped region: its page-aligned host base and its length in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Region {
    /// Host address of byte 0 (physical address 0 of the heap's machine).
    pub(crate) base: usize,
    /// Bytes usable from `base`.
    pub(crate) len: usize,
}

/// Maps `len` bytes whose base is aligned to `align` (a power of two, at
/// least the host page size), so that a buddy block naturally aligned in
/// physical addresses is naturally aligned in host addresses too. Returns the
/// `errno` of a failed `mmap`.
pub(crate) fn map(len: usize, align: usize) -> Result<Region, i32> {
    let Some(total) = len.checked_add(align) else {
        return Err(libc::ENOMEM);
    };
    // SAFETY: an anonymous private mapping at an address of the kernel's
    // choosing (`addr` null, `fd` -1) creates fresh memory and cannot alias or
    // change any existing Rust object; the result is checked for MAP_FAILED.
    let p = unsafe {
        libc::mmap(
            core::ptr::null_mut(),
            total,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(std::io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::ENOMEM));
    }
    // The slack before the aligned base and after its end stays mapped and is
    // never touched, so it costs address space only.
    let base = (p as usize).next_multiple_of(align);
    Ok(Region { base, len })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_is_aligned() {
        let r = map(64 << 20, 64 << 20).unwrap();
        assert_eq!(r.base % (64 << 20), 0);
        assert_eq!(r.len, 64 << 20);
    }
}
