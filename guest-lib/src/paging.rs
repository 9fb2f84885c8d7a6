//! A small 4-level page-table builder on the identity-mapped RAM.
//!
//! The host loader maps RAM (with page 0 absent) and the MMIO window; cases build extra 4 KiB
//! mappings at test addresses with [`map`], inspect and edit their entries with [`pte`] and
//! [`set_pte`], and take fresh frames from the free range with [`alloc_frame`]. Changing an
//! entry of a live mapping needs a TLB flush ([`crate::arch::instr::invlpg`]) as on hardware.

use abi::layout::{PAGE_SIZE, pte};

use crate::arch::{self, Global, mem};

static NEXT_FREE: Global<u64> = Global::new(0);
static FREE_END: Global<u64> = Global::new(0);

/// Sets the range [`alloc_frame`] hands out.
pub fn init(free_start: u64, free_end: u64) {
    NEXT_FREE.set(free_start);
    FREE_END.set(free_end);
}

/// A zeroed 4 KiB frame from the free range.
pub fn alloc_frame() -> u64 {
    let pa = NEXT_FREE.get();
    if pa + PAGE_SIZE > FREE_END.get() {
        crate::error!("out of free guest frames");
    }
    NEXT_FREE.set(pa + PAGE_SIZE);
    mem::zero_page(pa);
    pa
}

fn index(va: u64, level: u32) -> u64 {
    (va >> (12 + 9 * level)) & 0x1ff
}

/// Physical address of the PTE mapping `va` (level 0), creating intermediate tables with
/// P|RW|US when `create`; `None` if a level is absent (and not created) or a large page.
fn walk(va: u64, create: bool) -> Option<u64> {
    let mut table = arch::instr::read_cr3() & pte::ADDR_MASK;
    for level in (1..=3).rev() {
        let slot = table + 8 * index(va, level);
        let mut e = mem::read_u64(slot);
        if e & pte::P == 0 {
            if !create {
                return None;
            }
            e = alloc_frame() | pte::P | pte::RW | pte::US;
            mem::write_u64(slot, e);
        } else if e & pte::PS != 0 {
            return None;
        }
        table = e & pte::ADDR_MASK;
    }
    Some(table + 8 * index(va, 0))
}

/// Maps the 4 KiB page at `va` to frame `pa` with `flags` (P is added). Returns the
/// physical address of the PTE. Does not flush the TLB.
pub fn map(va: u64, pa: u64, flags: u64) -> u64 {
    match walk(va, true) {
        Some(slot) => {
            mem::write_u64(slot, (pa & pte::ADDR_MASK) | flags | pte::P);
            slot
        }
        None => crate::error!("cannot map {va:#x}: covered by a large page"),
    }
}

/// The PTE mapping `va`, if its tables exist.
pub fn pte(va: u64) -> Option<u64> {
    walk(va, false).map(mem::read_u64)
}

/// Replaces the PTE mapping `va` (tables must exist). Does not flush the TLB.
pub fn set_pte(va: u64, value: u64) {
    match walk(va, false) {
        Some(slot) => mem::write_u64(slot, value),
        None => crate::error!("no page table for {va:#x}"),
    }
}
