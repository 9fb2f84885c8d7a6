//! Raw access to guest-physical memory through the identity map (page tables, scratch
//! pages). Addresses are checked against the RAM the host provides.

use abi::layout::{PAGE_SIZE, RAM_SIZE};

fn check(pa: u64, len: u64) {
    if !pa.is_multiple_of(8)
        || pa.checked_add(len).is_none_or(|end| end > RAM_SIZE)
        || pa < PAGE_SIZE
    {
        panic!("guest-physical access outside RAM or misaligned: {pa:#x}");
    }
}

/// Reads a u64 at guest-physical `pa`.
pub fn read_u64(pa: u64) -> u64 {
    check(pa, 8);
    // SAFETY: `pa` is 8-aligned, inside RAM and not page 0 (checked); RAM is identity mapped
    // by the host loader, so the address is valid for reads. The memory is not a Rust object
    // (page tables or scratch data), hence the volatile access.
    unsafe { core::ptr::read_volatile(pa as *const u64) }
}

/// Writes a u64 at guest-physical `pa`.
pub fn write_u64(pa: u64, v: u64) {
    check(pa, 8);
    // SAFETY: as in `read_u64`; callers only pass page-table or scratch pages they own
    // (allocated from the free range), never memory holding Rust objects.
    unsafe { core::ptr::write_volatile(pa as *mut u64, v) }
}

/// Zeroes the page at `pa`.
pub fn zero_page(pa: u64) {
    check(pa, PAGE_SIZE);
    for off in (0..PAGE_SIZE).step_by(8) {
        write_u64(pa + off, 0);
    }
}

/// Writes one byte at guest-physical `pa` (no alignment needed).
pub fn write_u8(pa: u64, v: u8) {
    if !(PAGE_SIZE..RAM_SIZE).contains(&pa) {
        panic!("guest-physical access outside RAM: {pa:#x}");
    }
    // SAFETY: inside RAM and not page 0 (checked), identity mapped; callers pass pages that
    // hold no Rust objects (the VIF page).
    unsafe { core::ptr::write_volatile(pa as *mut u8, v) }
}
