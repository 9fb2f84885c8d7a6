//! A small 4-level page-table builder on the identity-mapped RAM, with typed handles.
//!
//! The host loader maps RAM (with page 0 absent) and the MMIO window in the first GiB, and
//! aliases that GiB at `abi::layout::HIGH_ALIAS`. Cases build their own 4 KiB mappings at a
//! [`TestVa`] (an address outside both), to a [`Frame`] (a page of the free range that holds no
//! Rust object), with [`map`] and [`set_pte`]; they inspect entries with [`pte()`]. Because a
//! mapping can only ever point a test address at a scratch frame, none of these functions can
//! overwrite the image, the stacks or the loader's tables, and they are safe. Changing an entry
//! of a live mapping needs a TLB flush ([`crate::arch::instr::invlpg`]) as on hardware.

use core::sync::atomic::{AtomicU64, Ordering};

use abi::layout::{HIGH_ALIAS, LARGE_PAGE_SIZE, LARGE_TEST_GPA, PAGE_SIZE, pte};

use crate::arch::{self, mem};

static NEXT_FREE: AtomicU64 = AtomicU64::new(0);
static FREE_END: AtomicU64 = AtomicU64::new(0);

/// Bytes from 0 (and from [`HIGH_ALIAS`]) that the loader maps: the first GiB.
const LOADER_MAPPED: u64 = 1 << 30;

/// A page of the free range, handed out once by [`alloc_frame`]; it holds no Rust object, so
/// writing it (or mapping it and writing through the mapping) is harmless to the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Frame {
    pa: u64,
}

impl Frame {
    /// Guest-physical address.
    pub fn pa(&self) -> u64 {
        self.pa
    }

    /// Writes the u64 at byte `offset` (0..4096, 8-aligned).
    pub fn write_u64(&self, offset: u64, v: u64) {
        mem::write_frame_u64(self, offset, v);
    }

    /// Reads the u64 at byte `offset`.
    pub fn read_u64(&self, offset: u64) -> u64 {
        mem::read_u64(self.pa + offset.min(PAGE_SIZE - 8))
    }
}

/// A guest-physical page outside RAM (a device, the MMIO window, a memslot the VMM adds, or
/// no memory at all): mapping it and accessing it cannot touch any Rust object of the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DevicePage {
    pa: u64,
}

impl DevicePage {
    /// The page at `pa`, or `None` if `pa` is in RAM, not page aligned or wider than a paging
    /// entry's address field.
    pub const fn new(pa: u64) -> Option<Self> {
        let ok = pa >= abi::layout::RAM_SIZE
            && pa.is_multiple_of(PAGE_SIZE)
            && pa & !pte::ADDR_MASK == 0;
        if ok { Some(Self { pa }) } else { None }
    }

    /// Guest-physical address.
    pub const fn pa(&self) -> u64 {
        self.pa
    }
}

/// Maps the 4 KiB page at `va` to the device page `page` with `flags` (P is added), creating
/// the tables on the way. Does not flush the TLB.
pub fn map_device(va: TestVa, page: &DevicePage, flags: PteFlags) {
    match walk(va, true) {
        Some((table, i)) => {
            mem::write_table_entry(table, i, page.pa | pte::P | flags.bits());
        }
        None => crate::error!("cannot map {:#x}: covered by a large page", va.get()),
    }
}

/// A virtual address for test mappings: outside the first GiB and its upper-half alias (all
/// the loader maps), so nothing but a case's own [`map`] puts memory behind it. Any other
/// address qualifies, canonical or not (a non-canonical one faults, which a case may want).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TestVa(u64);

impl TestVa {
    /// `va` as a test address, or `None` if the loader maps it.
    pub const fn new(va: u64) -> Option<Self> {
        let low = va < LOADER_MAPPED;
        let alias = va >= HIGH_ALIAS && va - HIGH_ALIAS < LOADER_MAPPED;
        if low || alias { None } else { Some(Self(va)) }
    }

    /// `va` as a test address; fails the build when used in a `const` with a mapped address.
    pub const fn must(va: u64) -> Self {
        match Self::new(va) {
            Some(t) => t,
            None => panic!("not a test address: the loader maps it"),
        }
    }

    /// The address.
    pub const fn get(self) -> u64 {
        self.0
    }

    /// The test address `i` pages above this one (ERROR if that leaves the test range).
    pub fn page(self, i: u64) -> Self {
        match self.0.checked_add(i * PAGE_SIZE).and_then(Self::new) {
            Some(t) => t,
            None => crate::error!("{:#x} + {i} pages is not a test address", self.0),
        }
    }
}

/// Flags of a 4 KiB mapping (P is implied by [`Pte::map`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PteFlags(u64);

impl PteFlags {
    /// Read-only, supervisor-only, executable.
    pub const NONE: Self = Self(0);
    /// Writable.
    pub const RW: Self = Self(pte::RW);
    /// User-accessible.
    pub const US: Self = Self(pte::US);
    /// Accessed (preset).
    pub const A: Self = Self(pte::A);
    /// Dirty (preset).
    pub const D: Self = Self(pte::D);
    /// No-execute.
    pub const NX: Self = Self(pte::NX);

    /// The entry bits.
    pub const fn bits(self) -> u64 {
        self.0
    }

    /// Both sets of flags (`|` in `const` context).
    pub const fn union(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }
}

impl core::ops::BitOr for PteFlags {
    type Output = Self;
    fn bitor(self, rhs: Self) -> Self {
        self.union(rhs)
    }
}

/// A leaf entry a case may install: absent, or a [`Frame`] with flags.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pte(u64);

impl Pte {
    /// Not present.
    pub const ABSENT: Self = Self(0);

    /// Present, mapping `frame` with `flags`.
    pub fn map(frame: &Frame, flags: PteFlags) -> Self {
        Self((frame.pa & pte::ADDR_MASK) | flags.bits() | pte::P)
    }

    /// Like [`Pte::map`] with physical-address bit `bit` (40..52) also set: reserved when it is
    /// at or above MAXPHYADDR, so an access raises #PF with RSVD; if it is not reserved the entry
    /// points beyond RAM (an MMIO exit), never at guest memory.
    pub fn map_with_high_bit(frame: &Frame, flags: PteFlags, bit: u32) -> Self {
        if !(40..52).contains(&bit) {
            crate::error!("physical-address bit {bit} is not in 40..52");
        }
        Self(Self::map(frame, flags).0 | (1 << bit))
    }

    /// The same entry with protection key `key` (bits 62:59; only the low 4 bits of `key`),
    /// which CR4.PKE makes PKRU govern for user pages.
    pub fn with_protection_key(self, key: u8) -> Self {
        Self((self.0 & !(0xf << 59)) | (u64::from(key & 0xf) << 59))
    }

    /// The raw entry.
    pub fn bits(self) -> u64 {
        self.0
    }
}

/// A page-table page: the root in CR3 or a table reached from it (loader-built, or a
/// [`Frame`] this module turned into a table).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct PageTable(u64);

impl PageTable {
    fn root() -> Self {
        Self(arch::instr::read_cr3() & pte::ADDR_MASK)
    }

    /// Guest-physical address.
    pub(crate) fn pa(self) -> u64 {
        self.0
    }
}

/// The 2 MiB block for large-page test mappings (`abi::layout::LARGE_TEST_GPA`): like a
/// [`Frame`], it holds no Rust object. There is one; [`large_frame`] hands it out once.
#[derive(Debug, PartialEq, Eq)]
pub struct LargeFrame {
    pa: u64,
}

impl LargeFrame {
    /// Guest-physical address.
    pub fn pa(&self) -> u64 {
        self.pa
    }

    /// The 4 KiB frame at `offset` (a multiple of 4 KiB) inside it, for writing test data.
    pub fn frame_at(&self, offset: u64) -> Frame {
        if !offset.is_multiple_of(PAGE_SIZE) || offset >= LARGE_PAGE_SIZE {
            crate::error!("offset {offset:#x} is not a page inside the large frame");
        }
        Frame {
            pa: self.pa + offset,
        }
    }
}

static LARGE_TAKEN: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);

/// The large-page test block, zeroed; `None` if it was handed out already.
pub fn large_frame() -> Option<LargeFrame> {
    if LARGE_TAKEN.swap(true, Ordering::AcqRel) {
        return None;
    }
    let f = LargeFrame { pa: LARGE_TEST_GPA };
    for off in (0..LARGE_PAGE_SIZE).step_by(PAGE_SIZE as usize) {
        mem::zero_frame(&f.frame_at(off));
    }
    Some(f)
}

/// Sets the range [`alloc_frame`] hands out.
pub fn init(free_start: u64, free_end: u64) {
    NEXT_FREE.store(free_start, Ordering::Relaxed);
    FREE_END.store(free_end, Ordering::Relaxed);
}

/// A zeroed 4 KiB frame from the free range (any vCPU may call this).
pub fn alloc_frame() -> Frame {
    let pa = NEXT_FREE.fetch_add(PAGE_SIZE, Ordering::Relaxed);
    if pa == 0 || pa + PAGE_SIZE > FREE_END.load(Ordering::Relaxed) {
        crate::error!("out of free guest frames");
    }
    let f = Frame { pa };
    mem::zero_frame(&f);
    f
}

fn index(va: u64, level: u32) -> u64 {
    (va >> (12 + 9 * level)) & 0x1ff
}

/// The table holding the leaf entry for `va` and its index, creating intermediate tables with
/// P|RW|US when `create`; `None` if a level is absent (and not created) or a large page.
fn walk(va: TestVa, create: bool) -> Option<(PageTable, u64)> {
    let mut table = PageTable::root();
    for level in (1..=3).rev() {
        let i = index(va.get(), level);
        let mut e = mem::read_u64(table.pa() + 8 * i);
        if e & pte::P == 0 {
            if !create {
                return None;
            }
            e = alloc_frame().pa | pte::P | pte::RW | pte::US;
            mem::write_table_entry(table, i, e);
        } else if e & pte::PS != 0 {
            return None;
        }
        table = PageTable(e & pte::ADDR_MASK);
    }
    Some((table, index(va.get(), 0)))
}

/// Maps the 4 KiB page at `va` to `frame` with `flags` (P is added), creating the tables on
/// the way. Does not flush the TLB.
pub fn map(va: TestVa, frame: &Frame, flags: PteFlags) {
    match walk(va, true) {
        Some((table, i)) => mem::write_table_entry(table, i, Pte::map(frame, flags).bits()),
        None => crate::error!("cannot map {:#x}: covered by a large page", va.get()),
    }
}

/// Maps the 2 MiB page at `va` (2 MiB aligned) to the large test frame with `flags` (P and PS
/// are added), creating the tables above it. Does not flush the TLB.
pub fn map_large(va: TestVa, frame: &LargeFrame, flags: PteFlags) {
    if !va.get().is_multiple_of(LARGE_PAGE_SIZE) {
        crate::error!("{:#x} is not 2 MiB aligned", va.get());
    }
    let mut table = PageTable::root();
    for level in (2..=3).rev() {
        let i = index(va.get(), level);
        let mut e = mem::read_u64(table.pa() + 8 * i);
        if e & pte::P == 0 {
            e = alloc_frame().pa | pte::P | pte::RW | pte::US;
            mem::write_table_entry(table, i, e);
        } else if e & pte::PS != 0 {
            crate::error!("cannot map {:#x}: covered by a 1 GiB page", va.get());
        }
        table = PageTable(e & pte::ADDR_MASK);
    }
    let i = index(va.get(), 1);
    let old = mem::read_u64(table.pa() + 8 * i);
    if old & pte::P != 0 && old & pte::PS == 0 {
        crate::error!("{:#x} is already mapped with 4 KiB pages", va.get());
    }
    let e = (frame.pa & pte::ADDR_MASK) | flags.bits() | pte::P | pte::PS;
    mem::write_table_entry(table, i, e);
}

/// The raw PDE mapping the 2 MiB page at `va`, if its tables exist.
pub fn pde(va: TestVa) -> Option<u64> {
    let mut table = PageTable::root();
    for level in (2..=3).rev() {
        let e = mem::read_u64(table.pa() + 8 * index(va.get(), level));
        if e & pte::P == 0 || e & pte::PS != 0 {
            return None;
        }
        table = PageTable(e & pte::ADDR_MASK);
    }
    Some(mem::read_u64(table.pa() + 8 * index(va.get(), 1)))
}

/// A second address space: its own top-level table (8 KiB aligned, with the user mirror the
/// local host expects at +4 KiB) holding the same entries as the current one, so the image,
/// the stacks and the loader's mappings stay as they are, plus mappings of its own in PML4
/// slots the current space leaves empty. Switching to it is therefore safe.
#[derive(Debug)]
pub struct AddressSpace {
    root: PageTable,
}

impl AddressSpace {
    /// A copy of the current top-level table.
    pub fn clone_current() -> Self {
        // 8 KiB aligned: take frames until one is, then its neighbour.
        let mut f = alloc_frame();
        while !f.pa.is_multiple_of(2 * PAGE_SIZE) {
            f = alloc_frame();
        }
        let mirror = alloc_frame();
        if mirror.pa != f.pa + PAGE_SIZE {
            crate::error!("frames for the new top-level table are not adjacent");
        }
        let cur = PageTable::root();
        let root = PageTable(f.pa);
        for i in 0..512 {
            let e = mem::read_u64(cur.pa() + 8 * i);
            mem::write_table_entry(root, i, e);
            mem::write_table_entry(PageTable(mirror.pa), i, e);
        }
        Self { root }
    }

    /// Maps `va` (whose PML4 slot must be empty in the space this was cloned from, so the
    /// mapping is this space's alone) to `frame`.
    pub fn map(&self, va: TestVa, frame: &Frame, flags: PteFlags) {
        let slot = index(va.get(), 3);
        let cur = mem::read_u64(PageTable::root().pa() + 8 * slot);
        let mine = mem::read_u64(self.root.pa() + 8 * slot);
        if cur & pte::P != 0 && cur == mine {
            crate::error!("PML4 slot {slot} is shared with the current space");
        }
        let mut table = self.root;
        for level in (1..=3).rev() {
            let i = index(va.get(), level);
            let mut e = mem::read_u64(table.pa() + 8 * i);
            if e & pte::P == 0 {
                e = alloc_frame().pa | pte::P | pte::RW | pte::US;
                mem::write_table_entry(table, i, e);
                if level == 3 {
                    mem::write_table_entry(PageTable(table.pa() + PAGE_SIZE), i, e);
                }
            }
            table = PageTable(e & pte::ADDR_MASK);
        }
        mem::write_table_entry(table, index(va.get(), 0), Pte::map(frame, flags).bits());
    }

    /// The value to load into CR3.
    pub fn cr3(&self) -> u64 {
        self.root.pa()
    }

    /// Loads CR3 with this space and runs `f`, then goes back to the previous CR3.
    pub fn with<R>(&self, f: impl FnOnce() -> R) -> R {
        arch::instr::with_cr3(self, f)
    }
}

/// The raw leaf entry mapping `va`, if its tables exist.
pub fn pte(va: TestVa) -> Option<u64> {
    walk(va, false).map(|(table, i)| mem::read_u64(table.pa() + 8 * i))
}

/// Replaces the leaf entry mapping `va` (its tables must exist). Does not flush the TLB.
pub fn set_pte(va: TestVa, e: Pte) {
    match walk(va, false) {
        Some((table, i)) => mem::write_table_entry(table, i, e.bits()),
        None => crate::error!("no page table for {:#x}", va.get()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_addresses_avoid_what_the_loader_maps() {
        assert!(TestVa::new(0).is_none());
        assert!(TestVa::new(abi::layout::MMIO_WINDOW).is_none());
        assert!(TestVa::new(HIGH_ALIAS + 0x1000).is_none());
        assert!(TestVa::new(0x4000_0000).is_some());
        assert!(TestVa::new(0x7fff_0000_0000).is_some());
        assert!(TestVa::new(u64::MAX).is_some());
        assert_eq!(
            Pte::map(&Frame { pa: 0x60_1000 }, PteFlags::RW | PteFlags::NX).bits(),
            0x60_1000 | pte::P | pte::RW | pte::NX
        );
    }
}
