//! The host's shadow MMU as the guest sees it: a 4-level walk of the guest's page tables for
//! each translation Unicorn asks for, with the host's rules on top.
//!
//! Rules (shared/notes/pvm-abi-upstream.md §7):
//! - a virtual address is legal if bit 63 is clear, or if its PML4 index lies in the range
//!   `MSR_PVM_LINEAR_ADDRESS_RANGE` allows; a walk for any other address fails as not present
//!   (host_mmu.c of the RFC: "a guest page-table walk for an illegal VA fails");
//! - the walk sets accessed bits on every level and the dirty bit on a write (SDM 4.8);
//! - a supervisor write honours read-only entries while the guest's CR0.WP is set; with it
//!   clear the write succeeds and the entry stays read-only: the host keeps the guest's CR0
//!   (`pvm_set_cr0`), `kvm_post_set_cr0` resets the MMU role, and the shadow MMU's
//!   `FNAME(page_fault)` makes the shadow entry writable for a supervisor fault when
//!   `!is_cr0_wp` (its removal of the user bit has no effect: a PVM shadow entry always has it,
//!   `make_spte`); the shadow entry lives in the supervisor mode's tables only (the model
//!   flushes its TLB on every mode switch and every change of CR0.WP);
//! - NX is enforced when EFER.NXE is set;
//! - v2: the host keeps one shadow table per mode from the U/S bits, so user mode cannot
//!   touch a page that is supervisor-only at any level ([SPEC-v2] "Paging").
//!
//! The returned permissions are those of the whole page for the current mode; a read fill of a
//! clean page omits the write permission so that the first write comes back here and sets the
//! dirty bit.

use runner::vm::GuestRam;

use crate::faults::{Fault, Faults};

/// Page-table entry bits (`abi::layout::pte`; the frame mask is `pte::ADDR_MASK`).
pub use abi::layout::pte;

/// Error-code bits of a #PF.
pub mod pfec {
    /// The page was present (a protection violation).
    pub const P: u32 = 1;
    /// The access was a write.
    pub const W: u32 = 1 << 1;
    /// The access came from user mode.
    pub const U: u32 = 1 << 2;
    /// A reserved bit was set.
    pub const RSVD: u32 = 1 << 3;
    /// The access was an instruction fetch.
    pub const I: u32 = 1 << 4;
}

/// Kind of access.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Data read.
    Read,
    /// Data write.
    Write,
    /// Instruction fetch.
    Fetch,
}

/// What the walk needs to know of the vCPU.
#[derive(Clone, Copy, Debug)]
pub struct WalkCtx {
    /// The guest's CR3 of the current mode.
    pub cr3: u64,
    /// User mode (else supervisor).
    pub user: bool,
    /// EFER.NXE.
    pub nxe: bool,
    /// CR4.SMEP of the guest: supervisor fetches from user pages fault.
    pub smep: bool,
    /// CR0.WP of the guest: supervisor writes to read-only pages fault.
    pub wp: bool,
    /// The legal upper-half PML4 indexes, `start..end`.
    pub range: (u64, u64),
    /// Apply the U/S split for user mode (v2).
    pub us_split: bool,
    /// The fault switches on.
    pub faults: Faults,
}

/// A translation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Translation {
    /// Guest-physical address of the page.
    pub page: u64,
    /// Readable (always, once present).
    pub read: bool,
    /// Writable now (dirty bit set, or this is the write).
    pub write: bool,
    /// Executable.
    pub exec: bool,
}

/// A failed translation: the #PF to deliver.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageFault {
    /// Faulting linear address (CR2).
    pub addr: u64,
    /// Error code.
    pub code: u32,
}

/// Whether `va` lies in the legal range of a guest whose range MSR allows the upper-half PML4
/// indexes `range`.
pub fn legal(va: u64, range: (u64, u64)) -> bool {
    if va >> 63 == 0 {
        return true;
    }
    let idx = (va >> 39) & 0x1ff;
    (range.0..range.1).contains(&idx)
}

/// Walks the guest's tables for an access to `va`.
pub fn walk(
    mem: &dyn GuestRam,
    ctx: &WalkCtx,
    va: u64,
    access: Access,
) -> Result<Translation, PageFault> {
    let f = ctx.faults;
    let mut code = 0u32;
    if access == Access::Write {
        code |= pfec::W;
    }
    if ctx.user {
        code |= pfec::U;
    }
    if access == Access::Fetch && ctx.nxe {
        code |= pfec::I;
    }
    let fault = |mut code: u32| {
        if f.on(Fault::PfErrcodeNoWrite) {
            code &= !pfec::W;
        }
        if f.on(Fault::PfErrcodeNoUser) {
            code &= !pfec::U;
        }
        PageFault { addr: va, code }
    };
    if !legal(va, ctx.range) {
        return Err(fault(code));
    }
    let mut table = ctx.cr3 & pte::ADDR_MASK;
    let (mut rw, mut us, mut nx) = (true, true, false);
    let mut entries = [(0u64, 0u64); 4];
    let mut depth = 0;
    let mut page = 0;
    for level in (0..4).rev() {
        let idx = (va >> (12 + 9 * level)) & 0x1ff;
        let at = table + idx * 8;
        let e = mem.read_u64(at).map_err(|_| fault(code))?;
        if e & pte::P == 0 {
            return Err(fault(code));
        }
        // Reserved: NX without EFER.NXE, an address bit at or above MAXPHYADDR.
        let above_maxphyaddr = e & pte::ADDR_MASK & !((1u64 << crate::pvm::MAXPHYADDR) - 1);
        let above_maxphyaddr = above_maxphyaddr != 0 && !f.on(Fault::IgnoreMaxphyaddr);
        if (e & pte::NX != 0 && !ctx.nxe) || above_maxphyaddr {
            return Err(fault(code | pfec::P | pfec::RSVD));
        }
        rw &= e & pte::RW != 0;
        us &= e & pte::US != 0;
        nx |= e & pte::NX != 0;
        entries[depth] = (at, e);
        depth += 1;
        let large = level > 0 && level < 3 && e & pte::PS != 0;
        if level == 0 || large {
            let size_mask = (1u64 << (12 + 9 * level)) - 1;
            page = ((e & pte::ADDR_MASK) & !size_mask) + (va & size_mask & !0xfff);
            break;
        }
        table = e & pte::ADDR_MASK;
    }
    let present = code | pfec::P;
    if ctx.user && !us && ctx.us_split && !f.on(Fault::UserReadsSupervisor) {
        return Err(fault(present));
    }
    // A read-only entry is writable for this access and translation (the user never
    // sees this translation: the TLB is flushed when the mode changes).
    let writable = rw || (!ctx.user && !ctx.wp && !f.on(Fault::Cr0WpForced));
    if access == Access::Write && !writable && !f.on(Fault::IgnoreWriteProtect) {
        return Err(fault(present));
    }
    if access == Access::Fetch {
        if nx && ctx.nxe && !f.on(Fault::IgnoreNx) {
            return Err(fault(present));
        }
        if !ctx.user && us && ctx.smep {
            return Err(fault(present));
        }
    }
    let leaf = depth - 1;
    let dirty = entries[leaf].1 & pte::D != 0;
    for (i, &(at, e)) in entries[..depth].iter().enumerate() {
        let mut n = e;
        if !f.on(Fault::NoAccessedBit) {
            n |= pte::A;
        }
        if i == leaf && access == Access::Write && !f.on(Fault::NoDirtyBit) {
            n |= pte::D;
        }
        if n != e {
            let _ = mem.write_u64(at, n);
        }
    }
    Ok(Translation {
        page,
        read: true,
        write: writable && (dirty || access == Access::Write || f.on(Fault::NoDirtyBit)),
        exec: !(nx && ctx.nxe) || f.on(Fault::IgnoreNx),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use runner::memory::MmapRam;

    fn ctx(user: bool) -> WalkCtx {
        WalkCtx {
            cr3: 0x1000,
            user,
            nxe: true,
            smep: false,
            wp: true,
            range: (0x1f0, 0x1f8),
            us_split: true,
            faults: Faults::NONE,
        }
    }

    fn tables(leaf_flags: u64) -> MmapRam {
        let m = MmapRam::new(1 << 20).expect("ram");
        let r: &dyn GuestRam = &m;
        r.write_u64(0x1000, 0x2000 | pte::P | pte::RW | pte::US)
            .expect("w");
        r.write_u64(0x2000, 0x3000 | pte::P | pte::RW | pte::US)
            .expect("w");
        r.write_u64(0x3000, 0x4000 | pte::P | pte::RW | pte::US)
            .expect("w");
        r.write_u64(0x4000 + 8 * 5, 0x9000 | leaf_flags).expect("w");
        m
    }

    #[test]
    fn a_walk_sets_accessed_and_dirty_and_returns_the_page() {
        let m = tables(pte::P | pte::RW | pte::US);
        let r: &dyn GuestRam = &m;
        let t = walk(r, &ctx(false), 0x5123, Access::Read).expect("maps");
        assert_eq!(t.page, 0x9000);
        assert!(!t.write, "clean page: the first write must come back for D");
        let leaf = r.read_u64(0x4000 + 40).expect("r");
        assert_eq!(leaf & (pte::A | pte::D), pte::A);
        assert!(
            walk(r, &ctx(false), 0x5123, Access::Write)
                .expect("w")
                .write
        );
        assert_ne!(r.read_u64(0x4000 + 40).expect("r") & pte::D, 0);
    }

    #[test]
    fn user_mode_cannot_touch_supervisor_pages_and_errors_say_why() {
        let m = tables(pte::P | pte::RW);
        let r: &dyn GuestRam = &m;
        let e = walk(r, &ctx(true), 0x5000, Access::Write).expect_err("supervisor page");
        assert_eq!(e.code, pfec::P | pfec::W | pfec::U);
        assert!(walk(r, &ctx(false), 0x5000, Access::Write).is_ok());
        let e = walk(r, &ctx(false), 0x6000, Access::Read).expect_err("absent");
        assert_eq!((e.addr, e.code), (0x6000, 0));
    }

    #[test]
    fn cr0_wp_clear_lets_supervisor_writes_through_read_only_entries() {
        let m = tables(pte::P | pte::US);
        let r: &dyn GuestRam = &m;
        let e = walk(r, &ctx(false), 0x5000, Access::Write).expect_err("WP=1");
        assert_eq!(e.code, pfec::P | pfec::W);
        let wp0 = WalkCtx {
            wp: false,
            ..ctx(false)
        };
        let t = walk(r, &wp0, 0x5000, Access::Write).expect("WP=0: supervisor write");
        assert!(t.write);
        let leaf = r.read_u64(0x4000 + 40).expect("r");
        assert_eq!(
            leaf & (pte::RW | pte::D),
            pte::D,
            "still read-only, now dirty"
        );
        let user = WalkCtx { user: true, ..wp0 };
        let e = walk(r, &user, 0x5000, Access::Write).expect_err("user mode: WP irrelevant");
        assert_eq!(e.code, pfec::P | pfec::W | pfec::U);
        let forced = WalkCtx {
            faults: Faults::NONE.with(Fault::Cr0WpForced),
            ..wp0
        };
        assert!(walk(r, &forced, 0x5000, Access::Write).is_err());
    }

    #[test]
    fn upper_half_addresses_outside_the_range_are_not_present() {
        assert!(legal(0x7fff_ffff_f000, (0x1f0, 0x1f8)));
        assert!(legal(0xfffff8_0000000000 | (0x1f0 << 39), (0x1f0, 0x1f8)));
        assert!(!legal(0xffff_ffff_8000_0000, (0x1f0, 0x1f8)));
    }
}
