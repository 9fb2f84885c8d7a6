//! Raw access to guest-physical memory through the identity map. Reads may go anywhere in
//! RAM; writes only through a typed handle to memory that holds no Rust object: a scratch
//! [`Frame`], a page-table page ([`PageTable`]) or a vCPU's VIF page.

use abi::layout::{PAGE_SIZE, RAM_SIZE, vif_gpa};

use crate::paging::{Frame, PageTable};

fn check(pa: u64, len: u64) {
    if !pa.is_multiple_of(len.min(8))
        || pa.checked_add(len).is_none_or(|end| end > RAM_SIZE)
        || pa < PAGE_SIZE
    {
        crate::error!("guest-physical access outside RAM or misaligned: {pa:#x}+{len}");
    }
}

/// Reads a u64 at guest-physical `pa`.
pub fn read_u64(pa: u64) -> u64 {
    check(pa, 8);
    // SAFETY: `pa` is 8-aligned, inside RAM and not page 0 (checked); RAM is identity mapped
    // by the host loader, so the address is valid for reads. It may be memory the hardware or
    // the host also writes (page tables, report messages), hence the volatile access.
    unsafe { core::ptr::read_volatile(pa as *const u64) }
}

fn write_u64(pa: u64, v: u64) {
    check(pa, 8);
    // SAFETY: inside RAM, aligned, not page 0 (checked) and identity mapped. Every caller below
    // passes an address inside a `Frame` or `PageTable`, whose pages come from the free range
    // or are the loader's page tables: they hold no Rust object.
    unsafe { core::ptr::write_volatile(pa as *mut u64, v) }
}

/// Writes the u64 at byte `offset` of a scratch frame.
pub fn write_frame_u64(frame: &Frame, offset: u64, v: u64) {
    if offset >= PAGE_SIZE {
        crate::error!("offset {offset:#x} outside the frame at {:#x}", frame.pa());
    }
    write_u64(frame.pa() + offset, v);
}

/// Zeroes a scratch frame.
pub fn zero_frame(frame: &Frame) {
    for off in (0..PAGE_SIZE).step_by(8) {
        write_u64(frame.pa() + off, 0);
    }
}

/// Writes entry `index` (0..512) of a page-table page.
pub fn write_table_entry(table: PageTable, index: u64, v: u64) {
    if index >= 512 {
        crate::error!("page-table index {index} out of range");
    }
    write_u64(table.pa() + 8 * index, v);
}

/// Reads byte `offset` (0..4096) of vCPU `cpu`'s VIF page (which the host writes).
pub fn read_vif_byte(cpu: u32, offset: u64) -> u8 {
    let pa = vif_gpa(cpu) + offset.min(PAGE_SIZE - 1);
    check(pa, 1);
    // SAFETY: inside RAM (checked) and identity mapped; a byte read cannot produce an invalid
    // value, and the host's concurrent writes are why it is volatile.
    unsafe { core::ptr::read_volatile(pa as *const u8) }
}

/// Writes byte 0 (the virtual interrupt flag) of vCPU `cpu`'s VIF page.
pub fn write_vif_byte(cpu: u32, v: u8) {
    let pa = vif_gpa(cpu);
    check(pa, 1);
    // SAFETY: the VIF page of `cpu` is reserved for the local dialect in the guest layout
    // (`abi::layout::vif_gpa`), inside RAM (checked) and identity mapped; no Rust object
    // lives there.
    unsafe { core::ptr::write_volatile(pa as *mut u8, v) }
}
