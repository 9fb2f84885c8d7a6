//! Paging: #PF delivery (vector, error code, CR2), protection, invalidation, accessed/dirty
//! bits, NX, CR0.WP, and which page table CPL3 code runs on.

use guest_lib::abi::env::{Area, Env};
use guest_lib::abi::layout::pte;
use guest_lib::arch::instr;
use guest_lib::case::Spec;
use guest_lib::exception::{Exception, pfec};
use guest_lib::paging::{Frame, Pte, PteFlags, TestVa, alloc_frame, map, pte as read_pte, set_pte};
use guest_lib::user::{self, UserExit};
use guest_lib::{case, case_table, check, check_eq, log, rt, vmm};

use crate::common::{TEST_VA, UNMAPPED};

/// A VA in PML4 slot 1: mapped only in the table CR3 points at.
const HIGH_VA: TestVa = TestVa::must(0x80_0000_0000);
const RW_US: PteFlags = PteFlags::RW.union(PteFlags::US);

fn pf_not_present() {
    check_eq!(
        instr::read_u64_safe(UNMAPPED.get()),
        Err(Exception::pf(0, UNMAPPED.get())),
        "read"
    );
    check_eq!(
        instr::write_u64_safe(UNMAPPED, 1),
        Err(Exception::pf(pfec::W, UNMAPPED.get())),
        "write"
    );
    check_eq!(
        instr::read_u64_safe(0),
        Err(Exception::pf(0, 0)),
        "NULL read"
    );
}
case!(
    pf_not_present,
    Spec::new(
        "paging.pf_not_present",
        Area::Paging,
        "#PF with CR2 and error code for absent pages"
    )
    .smoke()
    .reqs("X86-PF-1,X86-PF-2")
);

fn pf_write_readonly() {
    let f = alloc_frame();
    map(TEST_VA, &f, PteFlags::US);
    instr::invlpg(TEST_VA.get());
    check_eq!(
        instr::read_u64_safe(TEST_VA.get()),
        Ok(0),
        "read of a read-only page"
    );
    check_eq!(
        instr::write_u64_safe(TEST_VA, 5),
        Err(Exception::pf(pfec::P | pfec::W, TEST_VA.get())),
        "write to a read-only page with CR0.WP=1"
    );
}
case!(
    pf_write_readonly,
    Spec::new(
        "paging.pf_write_readonly",
        Area::Paging,
        "write to a read-only page faults with P|W"
    )
    .reqs("X86-PF-3")
);

fn remap_invlpg() {
    let (_, b) = crate::common::remap_fixture();
    set_pte(TEST_VA, Pte::map(&b, RW_US));
    instr::invlpg(TEST_VA.get());
    check_eq!(
        instr::read_u64_safe(TEST_VA.get()),
        Ok(0xbbbb),
        "after remap + invlpg"
    );
    set_pte(TEST_VA, Pte::ABSENT);
    instr::invlpg(TEST_VA.get());
    check_eq!(
        instr::read_u64_safe(TEST_VA.get()),
        Err(Exception::pf(0, TEST_VA.get())),
        "after unmap + invlpg"
    );
}
case!(
    remap_invlpg,
    Spec::new(
        "paging.remap_invlpg",
        Area::Paging,
        "PTE changes take effect after INVLPG (shadow invalidation)"
    )
    .smoke()
    .reqs("X86-TLB-1,PVM-SPT-1")
);

fn accessed_dirty() {
    let f = alloc_frame();
    map(TEST_VA, &f, RW_US);
    instr::invlpg(TEST_VA.get());
    let ad = |what| {
        read_pte(TEST_VA)
            .map(|e| e & (pte::A | pte::D))
            .unwrap_or_else(|| guest_lib::error!("{what}: no PTE"))
    };
    check_eq!(ad("fresh"), 0u64, "A/D of a fresh PTE");
    let _ = instr::read_u64_safe(TEST_VA.get());
    check_eq!(ad("read"), pte::A, "A set, D clear after a read");
    let _ = instr::write_u64_safe(TEST_VA, 1);
    check_eq!(ad("write"), pte::A | pte::D, "A and D set after a write");
}
case!(
    accessed_dirty,
    Spec::new(
        "paging.accessed_dirty",
        Area::Paging,
        "the CPU sets PTE.A on access and PTE.D on write"
    )
    .smoke()
    .reqs("X86-PTE-AD-1,PVM-SPT-2")
);

fn nx_fetch() {
    let f = alloc_frame();
    f.write_u64(0, 0xc3);
    map(TEST_VA, &f, RW_US | PteFlags::NX);
    instr::invlpg(TEST_VA.get());
    check_eq!(
        instr::exec_ret_safe(TEST_VA.get()),
        Err(Exception::pf(pfec::P | pfec::I, TEST_VA.get())),
        "fetch from an NX page"
    );
    set_pte(TEST_VA, Pte::map(&f, RW_US));
    instr::invlpg(TEST_VA.get());
    check_eq!(
        instr::exec_ret_safe(TEST_VA.get()),
        Ok(()),
        "fetch once NX is cleared"
    );
}
case!(
    nx_fetch,
    Spec::new(
        "paging.nx_fetch",
        Area::Paging,
        "instruction fetch from an NX page faults with P|I"
    )
    .reqs("X86-NX-1")
);

fn user_cr3_is_cr3() {
    let f = alloc_frame();
    f.write_u64(0, 0x1234_5678);
    map(HIGH_VA, &f, RW_US);
    instr::invlpg(HIGH_VA.get());
    check_eq!(
        instr::read_u64_safe(HIGH_VA.get()),
        Ok(0x1234_5678),
        "CPL0 read"
    );
    check_eq!(
        user::run(user::read_probe, HIGH_VA.get()),
        UserExit::Returned(0x1234_5678),
        "CPL3 read of a U/S=1 page"
    );
}
case!(
    user_cr3_is_cr3,
    Spec::new(
        "paging.user_cr3_is_cr3",
        Area::Paging,
        "CPL3 code translates through the page table in CR3"
    )
    .envs(Env::Hvm64.bit())
    .reqs("X86-PG-1")
);

fn wp0_supervisor_write() {
    let f = alloc_frame();
    map(TEST_VA, &f, PteFlags::US);
    instr::invlpg(TEST_VA.get());
    instr::set_cr0_wp(false);
    let r = instr::write_u64_safe(TEST_VA, 0x77);
    instr::set_cr0_wp(true);
    check_eq!(r, Ok(()), "CPL0 write to a read-only page with CR0.WP=0");
    check_eq!(f.read_u64(0), 0x77u64, "the write landed");
    check!(
        read_pte(TEST_VA).is_some_and(|e| e & pte::RW == 0),
        "the PTE stays read-only"
    );
}
case!(
    wp0_supervisor_write,
    Spec::new(
        "paging.wp0_supervisor_write",
        Area::Paging,
        "CR0.WP=0 lets CPL0 write read-only pages"
    )
    .reqs("X86-WP-1,PVM-SPT-3")
);

/// #PF raised at CPL3 carries the U bit: a read of an absent page (U), a write to a
/// read-only page (P|W|U).
fn user_pf_error_code() {
    check_eq!(
        user::run(user::read_probe, UNMAPPED.get()),
        UserExit::Exception(Exception::pf(pfec::U, UNMAPPED.get())),
        "CPL3 read of an absent page"
    );
    let f = alloc_frame();
    map(TEST_VA, &f, PteFlags::US);
    instr::invlpg(TEST_VA.get());
    check_eq!(
        user::probe_write(TEST_VA),
        UserExit::Exception(Exception::pf(pfec::P | pfec::W | pfec::U, TEST_VA.get())),
        "CPL3 write to a read-only page"
    );
}
case!(
    user_pf_error_code,
    Spec::new(
        "paging.user_pf_error_code",
        Area::Paging,
        "#PF from CPL3 has the U bit (absent: U; read-only write: P|W|U)"
    )
    .reqs("X86-PF-4,PVM-SWITCH-2")
);

// --- The access matrix (kvm-unit-tests access.c style) -------------------------------------------

/// Bits of a matrix cell's parameter: the entry's U/S, R/W and NX, and the access.
mod cell {
    pub const US: u64 = 1;
    pub const RW: u64 = 2;
    pub const NX: u64 = 4;
    pub const CPL3: u64 = 8;
    pub const WRITE: u64 = 16;
    pub const FETCH: u64 = 32;
}

/// The byte the test page holds: `ret`, so a fetch returns (and a read sees it).
const RET: u64 = 0xc3;

/// One cell: map `TEST_VA` with the cell's flags, access it at the cell's CPL, and check the
/// architectural result (with CR0.WP=1, EFER.NXE=1, no SMEP/SMAP): either success with the
/// accessed (and for writes dirty) bit set in the entry, or #PF with the error code and CR2.
fn access_cell() {
    use cell::*;
    let p = rt::case_param();
    let (us, rw, nx, cpl3) = (p & US != 0, p & RW != 0, p & NX != 0, p & CPL3 != 0);
    let (write, fetch) = (p & WRITE != 0, p & FETCH != 0);
    if !us
        && let Err(guest_lib::env::EnvError::Unsupported(why)) =
            guest_lib::env::current().supervisor_only_pages()
    {
        guest_lib::skip!("{}", why);
    }
    let mut flags = PteFlags::NONE;
    if us {
        flags = flags | PteFlags::US;
    }
    if rw {
        flags = flags | PteFlags::RW;
    }
    if nx {
        flags = flags | PteFlags::NX;
    }
    let f = alloc_frame();
    f.write_u64(0, RET);
    map(TEST_VA, &f, flags);
    instr::invlpg(TEST_VA.get());
    let va = TEST_VA.get();
    let user = |exit: UserExit| match exit {
        UserExit::Returned(_) => Ok(()),
        UserExit::Exception(e) => Err(e),
        other => guest_lib::error!("user run ended with {:?}", other),
    };
    let got = match (cpl3, write, fetch) {
        (false, false, false) => instr::read_u64_safe(va).map(drop),
        (false, true, _) => instr::write_u64_safe(TEST_VA, RET),
        (false, false, true) => instr::exec_ret_safe(va),
        (true, false, false) => user(user::run(user::read_probe, va)),
        (true, true, _) => user(user::probe_write(TEST_VA)),
        (true, false, true) => user(user::run_raw(va, 0)),
    };
    let allowed = (!cpl3 || us) && (!write || rw) && (!fetch || !nx);
    let want = if allowed {
        Ok(())
    } else {
        let mut ec = pfec::P;
        if write {
            ec |= pfec::W;
        }
        if cpl3 {
            ec |= pfec::U;
        }
        if fetch {
            ec |= pfec::I;
        }
        Err(Exception::pf(ec, va))
    };
    check_eq!(got, want, "the access");
    if allowed {
        let ad = read_pte(TEST_VA).map(|e| e & (pte::A | pte::D));
        let want_ad = if write { pte::A | pte::D } else { pte::A };
        check_eq!(ad, Some(want_ad), "A/D bits of the entry after the access");
    }
}

const fn access_spec(name: &'static str, summary: &'static str) -> Spec {
    Spec::new(name, Area::Paging, summary).reqs("X86-PG-ACCESS-1,X86-PTE-AD-1,PVM-SPT-4")
}

case_table!(
    access_cell,
    access_spec,
    [
        (
            "paging.access.uwx.cpl0_read",
            3,
            "CPL0 read of a user writable executable page: allowed, A set"
        ),
        (
            "paging.access.uwx.cpl0_write",
            19,
            "CPL0 write of a user writable executable page: allowed, A/D set"
        ),
        (
            "paging.access.uwx.cpl0_fetch",
            35,
            "CPL0 fetch of a user writable executable page: allowed, A set"
        ),
        (
            "paging.access.uwx.cpl3_read",
            11,
            "CPL3 read of a user writable executable page: allowed, A set"
        ),
        (
            "paging.access.uwx.cpl3_write",
            27,
            "CPL3 write of a user writable executable page: allowed, A/D set"
        ),
        (
            "paging.access.uwx.cpl3_fetch",
            43,
            "CPL3 fetch of a user writable executable page: allowed, A set"
        ),
        (
            "paging.access.uwn.cpl0_read",
            7,
            "CPL0 read of a user writable NX page: allowed, A set"
        ),
        (
            "paging.access.uwn.cpl0_write",
            23,
            "CPL0 write of a user writable NX page: allowed, A/D set"
        ),
        (
            "paging.access.uwn.cpl0_fetch",
            39,
            "CPL0 fetch of a user writable NX page: #PF(P|I)"
        ),
        (
            "paging.access.uwn.cpl3_read",
            15,
            "CPL3 read of a user writable NX page: allowed, A set"
        ),
        (
            "paging.access.uwn.cpl3_write",
            31,
            "CPL3 write of a user writable NX page: allowed, A/D set"
        ),
        (
            "paging.access.uwn.cpl3_fetch",
            47,
            "CPL3 fetch of a user writable NX page: #PF(P|U|I)"
        ),
        (
            "paging.access.urx.cpl0_read",
            1,
            "CPL0 read of a user read-only executable page: allowed, A set"
        ),
        (
            "paging.access.urx.cpl0_write",
            17,
            "CPL0 write of a user read-only executable page: #PF(P|W)"
        ),
        (
            "paging.access.urx.cpl0_fetch",
            33,
            "CPL0 fetch of a user read-only executable page: allowed, A set"
        ),
        (
            "paging.access.urx.cpl3_read",
            9,
            "CPL3 read of a user read-only executable page: allowed, A set"
        ),
        (
            "paging.access.urx.cpl3_write",
            25,
            "CPL3 write of a user read-only executable page: #PF(P|W|U)"
        ),
        (
            "paging.access.urx.cpl3_fetch",
            41,
            "CPL3 fetch of a user read-only executable page: allowed, A set"
        ),
        (
            "paging.access.urn.cpl0_read",
            5,
            "CPL0 read of a user read-only NX page: allowed, A set"
        ),
        (
            "paging.access.urn.cpl0_write",
            21,
            "CPL0 write of a user read-only NX page: #PF(P|W)"
        ),
        (
            "paging.access.urn.cpl0_fetch",
            37,
            "CPL0 fetch of a user read-only NX page: #PF(P|I)"
        ),
        (
            "paging.access.urn.cpl3_read",
            13,
            "CPL3 read of a user read-only NX page: allowed, A set"
        ),
        (
            "paging.access.urn.cpl3_write",
            29,
            "CPL3 write of a user read-only NX page: #PF(P|W|U)"
        ),
        (
            "paging.access.urn.cpl3_fetch",
            45,
            "CPL3 fetch of a user read-only NX page: #PF(P|U|I)"
        ),
        (
            "paging.access.swx.cpl0_read",
            2,
            "CPL0 read of a supervisor writable executable page: allowed, A set"
        ),
        (
            "paging.access.swx.cpl0_write",
            18,
            "CPL0 write of a supervisor writable executable page: allowed, A/D set"
        ),
        (
            "paging.access.swx.cpl0_fetch",
            34,
            "CPL0 fetch of a supervisor writable executable page: allowed, A set"
        ),
        (
            "paging.access.swx.cpl3_read",
            10,
            "CPL3 read of a supervisor writable executable page: #PF(P|U)"
        ),
        (
            "paging.access.swx.cpl3_write",
            26,
            "CPL3 write of a supervisor writable executable page: #PF(P|W|U)"
        ),
        (
            "paging.access.swx.cpl3_fetch",
            42,
            "CPL3 fetch of a supervisor writable executable page: #PF(P|U|I)"
        ),
        (
            "paging.access.swn.cpl0_read",
            6,
            "CPL0 read of a supervisor writable NX page: allowed, A set"
        ),
        (
            "paging.access.swn.cpl0_write",
            22,
            "CPL0 write of a supervisor writable NX page: allowed, A/D set"
        ),
        (
            "paging.access.swn.cpl0_fetch",
            38,
            "CPL0 fetch of a supervisor writable NX page: #PF(P|I)"
        ),
        (
            "paging.access.swn.cpl3_read",
            14,
            "CPL3 read of a supervisor writable NX page: #PF(P|U)"
        ),
        (
            "paging.access.swn.cpl3_write",
            30,
            "CPL3 write of a supervisor writable NX page: #PF(P|W|U)"
        ),
        (
            "paging.access.swn.cpl3_fetch",
            46,
            "CPL3 fetch of a supervisor writable NX page: #PF(P|U|I)"
        ),
        (
            "paging.access.srx.cpl0_read",
            0,
            "CPL0 read of a supervisor read-only executable page: allowed, A set"
        ),
        (
            "paging.access.srx.cpl0_write",
            16,
            "CPL0 write of a supervisor read-only executable page: #PF(P|W)"
        ),
        (
            "paging.access.srx.cpl0_fetch",
            32,
            "CPL0 fetch of a supervisor read-only executable page: allowed, A set"
        ),
        (
            "paging.access.srx.cpl3_read",
            8,
            "CPL3 read of a supervisor read-only executable page: #PF(P|U)"
        ),
        (
            "paging.access.srx.cpl3_write",
            24,
            "CPL3 write of a supervisor read-only executable page: #PF(P|W|U)"
        ),
        (
            "paging.access.srx.cpl3_fetch",
            40,
            "CPL3 fetch of a supervisor read-only executable page: #PF(P|U|I)"
        ),
        (
            "paging.access.srn.cpl0_read",
            4,
            "CPL0 read of a supervisor read-only NX page: allowed, A set"
        ),
        (
            "paging.access.srn.cpl0_write",
            20,
            "CPL0 write of a supervisor read-only NX page: #PF(P|W)"
        ),
        (
            "paging.access.srn.cpl0_fetch",
            36,
            "CPL0 fetch of a supervisor read-only NX page: #PF(P|I)"
        ),
        (
            "paging.access.srn.cpl3_read",
            12,
            "CPL3 read of a supervisor read-only NX page: #PF(P|U)"
        ),
        (
            "paging.access.srn.cpl3_write",
            28,
            "CPL3 write of a supervisor read-only NX page: #PF(P|W|U)"
        ),
        (
            "paging.access.srn.cpl3_fetch",
            44,
            "CPL3 fetch of a supervisor read-only NX page: #PF(P|U|I)"
        ),
    ]
);

// --- 2 MiB pages --------------------------------------------------------------------------

/// A 2 MiB-aligned test VA (PML4 slot 0, past the first GiB).
const LARGE_VA: TestVa = TestVa::must(0x4020_0000);

/// One access through a 2 MiB page: a read of a value deep inside it, a write to a read-only
/// one (P|W), a fetch from an NX one (P|I), and the PDE's A/D bits.
fn large_page() {
    let Some(big) = guest_lib::paging::large_frame() else {
        guest_lib::error!("the large test block is taken");
    };
    let inner = 0x12_3000;
    let f = big.frame_at(inner);
    f.write_u64(0x458, 0x1a26_e000);
    f.write_u64(0x800, RET);
    let va = LARGE_VA.get();
    match rt::case_param() {
        0 => {
            guest_lib::paging::map_large(LARGE_VA, &big, RW_US);
            instr::invlpg(va + inner);
            check_eq!(
                instr::read_u64_safe(va + inner + 0x458),
                Ok(0x1a26_e000),
                "read inside the 2 MiB page"
            );
            check_eq!(
                instr::exec_ret_safe(va + inner + 0x800),
                Ok(()),
                "fetch inside it"
            );
        }
        1 => {
            guest_lib::paging::map_large(LARGE_VA, &big, PteFlags::US);
            instr::invlpg(va + inner);
            let Some(t) = TestVa::new(va + inner + 0x458) else {
                guest_lib::error!("not a test VA");
            };
            check_eq!(
                instr::write_u64_safe(t, 1),
                Err(Exception::pf(pfec::P | pfec::W, t.get())),
                "write to a read-only 2 MiB page"
            );
            check_eq!(
                f.read_u64(0x458),
                0x1a26_e000,
                "the page's contents afterwards"
            );
        }
        2 => {
            guest_lib::paging::map_large(LARGE_VA, &big, RW_US | PteFlags::NX);
            instr::invlpg(va + inner);
            check_eq!(
                instr::exec_ret_safe(va + inner + 0x800),
                Err(Exception::pf(pfec::P | pfec::I, va + inner + 0x800)),
                "fetch from an NX 2 MiB page"
            );
        }
        _ => {
            guest_lib::paging::map_large(LARGE_VA, &big, RW_US);
            instr::invlpg(va + inner);
            let ad = || guest_lib::paging::pde(LARGE_VA).map(|e| e & (pte::A | pte::D));
            check_eq!(ad(), Some(0), "A/D of the fresh PDE");
            let _ = instr::read_u64_safe(va + inner + 0x458);
            check_eq!(ad(), Some(pte::A), "A set, D clear after a read");
            let Some(t) = TestVa::new(va + inner + 0x460) else {
                guest_lib::error!("not a test VA");
            };
            let _ = instr::write_u64_safe(t, 1);
            check_eq!(ad(), Some(pte::A | pte::D), "A and D set after a write");
        }
    }
}

const fn large_spec(name: &'static str, summary: &'static str) -> Spec {
    Spec::new(name, Area::Paging, summary)
}

case_table!(
    large_page,
    large_spec,
    [
        (
            "paging.large.read_fetch",
            0,
            "a 2 MiB page maps all of its 2 MiB for reads and fetches",
            "X86-PG-PS-1,PVM-SPT-5"
        ),
        (
            "paging.large.write_readonly",
            1,
            "a write to a read-only 2 MiB page faults with P|W",
            "X86-PG-PS-1,PVM-SPT-5"
        ),
        (
            "paging.large.nx",
            2,
            "a fetch from an NX 2 MiB page faults with P|I",
            "X86-PG-PS-1,X86-NX-1"
        ),
        (
            "paging.large.accessed_dirty",
            3,
            "the CPU sets A (and D on a write) in the PDE of a 2 MiB page",
            "X86-PG-PS-1,X86-PTE-AD-1"
        ),
    ]
);

/// With EFER.NXE clear, bit 63 of a paging entry is reserved: an access through it is a
/// reserved-bit #PF (P|RSVD), not an NX check.
fn nx_reserved_without_nxe() {
    let f = alloc_frame();
    map(TEST_VA, &f, RW_US | PteFlags::NX);
    instr::invlpg(TEST_VA.get());
    instr::set_efer_nxe(false);
    let r = instr::read_u64_safe(TEST_VA.get());
    instr::set_efer_nxe(true);
    check_eq!(
        r,
        Err(Exception::pf(pfec::P | pfec::RSVD, TEST_VA.get())),
        "read through an NX entry with EFER.NXE=0"
    );
}
case!(
    nx_reserved_without_nxe,
    Spec::new(
        "paging.nx_reserved_without_nxe",
        Area::Paging,
        "with EFER.NXE=0 the NX bit is reserved: #PF(P|RSVD)"
    )
    .reqs("X86-PF-RSVD-1,X86-NX-1")
);

// --- Every part of the address space ------------------------------------------------------

/// A VA in PML4 slot `slot` (sign-extended for the upper half).
const fn slot_va(slot: u64) -> u64 {
    let va = (slot << 39) | 0x1234_5000;
    if slot >= 256 {
        va | 0xffff_0000_0000_0000
    } else {
        va
    }
}

/// Data and code mapped in one PML4 slot: CPL0 writes, reads and fetches work there.
fn pml4_slot() {
    let slot = rt::case_param();
    if slot >= 256
        && let Some((first, end)) = guest_lib::env::current().linear_pml4_range()
        && !(first..end).contains(&slot)
    {
        guest_lib::skip!(
            "the host lets the guest map only PML4 slots {:#x}..{:#x} of the upper half \
             (linear-address range MSR); slot {:#x} is outside",
            first,
            end,
            slot
        );
    }
    let Some(va) = TestVa::new(slot_va(slot)) else {
        guest_lib::error!("slot {} is not a test slot", slot);
    };
    let f = alloc_frame();
    f.write_u64(0x100, RET);
    map(va, &f, RW_US);
    instr::invlpg(va.get());
    let Some(data) = TestVa::new(va.get() + 8) else {
        guest_lib::error!("not a test VA");
    };
    check_eq!(
        instr::write_u64_safe(data, 0x5107_0000 | slot),
        Ok(()),
        "write in slot {}",
        slot
    );
    check_eq!(
        instr::read_u64_safe(data.get()),
        Ok(0x5107_0000 | slot),
        "read back in slot {}",
        slot
    );
    check_eq!(
        f.read_u64(8),
        0x5107_0000 | slot,
        "the frame holds the write"
    );
    check_eq!(
        instr::exec_ret_safe(va.get() + 0x100),
        Ok(()),
        "fetch in slot {}",
        slot
    );
}

const fn slot_spec(name: &'static str, summary: &'static str) -> Spec {
    Spec::new(name, Area::Paging, summary).reqs("X86-PG-2,PVM-SPT-6")
}

case_table!(
    pml4_slot,
    slot_spec,
    [
        (
            "paging.pml4_slot.1",
            1,
            "PML4 slot 1 holds data and code for CPL0"
        ),
        (
            "paging.pml4_slot.2",
            2,
            "PML4 slot 2 holds data and code for CPL0"
        ),
        (
            "paging.pml4_slot.64",
            64,
            "PML4 slot 64 holds data and code for CPL0"
        ),
        (
            "paging.pml4_slot.128",
            128,
            "PML4 slot 128 holds data and code for CPL0"
        ),
        (
            "paging.pml4_slot.255",
            255,
            "PML4 slot 255 (top of the lower half) holds data and code"
        ),
        (
            "paging.pml4_slot.256",
            256,
            "PML4 slot 256 (bottom of the upper half) holds data and code"
        ),
        (
            "paging.pml4_slot.300",
            300,
            "PML4 slot 300 holds data and code for CPL0"
        ),
        (
            "paging.pml4_slot.384",
            384,
            "PML4 slot 384 holds data and code for CPL0"
        ),
        (
            "paging.pml4_slot.448",
            448,
            "PML4 slot 448 holds data and code for CPL0"
        ),
        (
            "paging.pml4_slot.480",
            480,
            "PML4 slot 480 (0x1e0, in the upstream hosts' default linear range) holds data and code"
        ),
        (
            "paging.pml4_slot.510",
            510,
            "PML4 slot 510 (below the kernel alias) holds data and code"
        ),
    ]
);

/// PCID (when the VMM offers it): CR4.PCIDE can be set, and a CR3 load with NOFLUSH keeps the
/// address space working.
fn pcid() {
    let offered = vmm::configured_cpuid(1, 0).is_some_and(|r| r[2] & (1 << 17) != 0);
    if !offered {
        guest_lib::skip!("the VMM does not offer PCID (CPUID.1:ECX bit 17)");
    }
    use guest_lib::abi::x86::cr4;
    let old = instr::read_cr4();
    check_eq!(
        instr::write_cr4_probe_safe(old | cr4::PCIDE),
        Ok(()),
        "setting CR4.PCIDE"
    );
    check_eq!(
        instr::read_cr4() & cr4::PCIDE,
        cr4::PCIDE,
        "CR4.PCIDE reads back"
    );
    check_eq!(
        instr::write_cr4_probe_safe(old),
        Ok(()),
        "clearing CR4.PCIDE"
    );
}
case!(
    pcid,
    Spec::new(
        "paging.pcid",
        Area::Paging,
        "PCID, when offered: CR4.PCIDE can be set and cleared"
    )
    .reqs("X86-PCID-1")
);

// --- Several vCPUs -------------------------------------------------------------------------

use core::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};

/// What vCPU 1 read at TEST_VA in its last shootdown.
static REMOTE_SEEN: AtomicU64 = AtomicU64::new(0);
static REMOTE_DONE: AtomicU64 = AtomicU64::new(0);

fn remote_flush_handler(_: &mut guest_lib::exception::Frame, ex: Exception) -> bool {
    if ex.vector != crate::common::PING_VECTOR {
        return false;
    }
    instr::invlpg(TEST_VA.get());
    REMOTE_SEEN.store(
        instr::read_u64_safe(TEST_VA.get()).unwrap_or(u64::MAX),
        SeqCst,
    );
    REMOTE_DONE.fetch_add(1, SeqCst);
    guest_lib::apic::eoi();
    true
}

/// A TLB shootdown: vCPU 1 reads a page (caching its translation), vCPU 0 remaps it and sends
/// an IPI, vCPU 1 invalidates and reads again: it sees the new frame.
fn remote_flush() {
    use guest_lib::{apic, smp};
    if let Err(e) = apic::enable_x2apic(apic::SPURIOUS_VECTOR) {
        guest_lib::skip!("no usable x2APIC: {:?}", e);
    }
    if !smp::wait_for_aps(1000 * rt::cycles_per_ms()) {
        guest_lib::error!("vCPU 1 did not come online");
    }
    let (_, b) = crate::common::remap_fixture();
    guest_lib::exception::set_hook(Some(remote_flush_handler));
    let shoot = |round: u64| {
        apic::send_ipi(1, crate::common::PING_VECTOR);
        let t0 = instr::rdtsc();
        while REMOTE_DONE.load(SeqCst) < round && instr::rdtsc() - t0 < 50 * rt::cycles_per_ms() {
            core::hint::spin_loop();
        }
        REMOTE_DONE.load(SeqCst) >= round
    };
    check!(shoot(1), "vCPU 1 did not answer the first IPI");
    check_eq!(
        REMOTE_SEEN.load(SeqCst),
        0xaaaa,
        "what vCPU 1 reads before the remap"
    );
    set_pte(TEST_VA, Pte::map(&b, RW_US));
    instr::invlpg(TEST_VA.get());
    check!(shoot(2), "vCPU 1 did not answer the shootdown IPI");
    check_eq!(
        REMOTE_SEEN.load(SeqCst),
        0xbbbb,
        "what vCPU 1 reads after the shootdown"
    );
    guest_lib::exception::set_hook(None);
}
case!(
    remote_flush,
    Spec::new(
        "paging.remote_flush",
        Area::Paging,
        "a remap on vCPU 0 plus a shootdown IPI reaches vCPU 1's translations"
    )
    .vcpus(2)
    .flags(guest_lib::abi::case::FLAG_IRQCHIP)
    .reqs("X86-TLB-2,PVM-SPT-1")
);

/// Pages of the stress case.
const STRESS_PAGES: u64 = 8;
const STRESS_VA: TestVa = TestVa::must(0x4100_0000);
const FINAL: u64 = 0xf1a1_0000_0000_0000;

static GEN: AtomicU64 = AtomicU64::new(0);
static ACK: AtomicU64 = AtomicU64::new(0);
static STOP: AtomicBool = AtomicBool::new(false);
static FINAL_DONE: AtomicBool = AtomicBool::new(false);
static WRITES_OK: AtomicU64 = AtomicU64::new(0);
static WRITES_FAULTED: AtomicU64 = AtomicU64::new(0);

fn stress_va(i: u64) -> TestVa {
    STRESS_VA.page(i)
}

/// vCPU 1's side: write every page in turn, invalidating whenever vCPU 0 changed the tables
/// (and acknowledging), until told to stop; then write the final markers.
fn stress_worker(_: &mut guest_lib::exception::Frame, ex: Exception) -> bool {
    if ex.vector != crate::common::PING_VECTOR {
        return false;
    }
    let mut seen = u64::MAX;
    let mut seq = 0u64;
    loop {
        let g = GEN.load(SeqCst);
        if g != seen {
            for i in 0..STRESS_PAGES {
                instr::invlpg(stress_va(i).get());
            }
            seen = g;
            ACK.store(g, SeqCst);
        }
        if STOP.load(SeqCst) {
            break;
        }
        for i in 0..STRESS_PAGES {
            seq += 1;
            match instr::write_u64_safe(stress_va(i), seq) {
                Ok(()) => WRITES_OK.fetch_add(1, SeqCst),
                Err(_) => WRITES_FAULTED.fetch_add(1, SeqCst),
            };
        }
    }
    for i in 0..STRESS_PAGES {
        let _ = instr::write_u64_safe(stress_va(i), FINAL | i);
    }
    FINAL_DONE.store(true, SeqCst);
    guest_lib::apic::eoi();
    true
}

/// How long [`stress`] waits for vCPU 1 to acknowledge a change or to finish.
const ACK_WAIT_MS: u64 = 2000;

/// Two vCPUs on the same pages for 300 ms (at least one full cycle): vCPU 1 writes them without pause while vCPU 0
/// remaps each to one of two frames, write-protects it or zaps it, and waits until vCPU 1 has
/// invalidated. At the end every page maps its first frame again: vCPU 1's final writes must
/// be in the first frames and in none of the second (no write lost or sent to a stale frame),
/// and both successful and faulting writes must have happened.
fn stress() {
    use guest_lib::{apic, smp};
    if let Err(e) = apic::enable_x2apic(apic::SPURIOUS_VECTOR) {
        guest_lib::skip!("no usable x2APIC: {:?}", e);
    }
    if !smp::wait_for_aps(1000 * rt::cycles_per_ms()) {
        guest_lib::error!("vCPU 1 did not come online");
    }
    let first: [Frame; STRESS_PAGES as usize] = core::array::from_fn(|_| alloc_frame());
    let second: [Frame; STRESS_PAGES as usize] = core::array::from_fn(|_| alloc_frame());
    for i in 0..STRESS_PAGES {
        map(stress_va(i), &first[i as usize], RW_US);
    }
    let publish = |what: &str| {
        let g = GEN.fetch_add(1, SeqCst) + 1;
        let t0 = instr::rdtsc();
        // A hang guard, not a timing check: a vCPU thread the host deschedules (a loaded
        // machine, the model's vCPUs taking turns) may take well over 100 ms to come back.
        while ACK.load(SeqCst) < g {
            if instr::rdtsc() - t0 > ACK_WAIT_MS * rt::cycles_per_ms() {
                guest_lib::error!(
                    "vCPU 1 did not acknowledge {} within {} ms",
                    what,
                    ACK_WAIT_MS
                );
            }
            core::hint::spin_loop();
        }
    };
    guest_lib::exception::set_hook(Some(stress_worker));
    apic::send_ipi(1, crate::common::PING_VECTOR);
    publish("the start");
    let t0 = instr::rdtsc();
    let mut round = 0u64;
    // 300 ms, and at least every page through every state once (a busy host acknowledges
    // slowly), but no more than 2 s.
    let ms = || (instr::rdtsc() - t0) / rt::cycles_per_ms().max(1);
    let full_cycle = 4 * STRESS_PAGES;
    while (ms() < 300 || round < full_cycle) && ms() < 2_000 {
        let i = round % STRESS_PAGES;
        let va = stress_va(i);
        let e = match (round / STRESS_PAGES) % 4 {
            0 => Pte::map(&second[i as usize], RW_US),
            1 => Pte::map(&first[i as usize], PteFlags::US),
            2 => Pte::ABSENT,
            _ => Pte::map(&first[i as usize], RW_US),
        };
        set_pte(va, e);
        instr::invlpg(va.get());
        publish("a change");
        round += 1;
    }
    for i in 0..STRESS_PAGES {
        set_pte(stress_va(i), Pte::map(&first[i as usize], RW_US));
        instr::invlpg(stress_va(i).get());
    }
    publish("the final mapping");
    STOP.store(true, SeqCst);
    let t1 = instr::rdtsc();
    while !FINAL_DONE.load(SeqCst) && instr::rdtsc() - t1 < ACK_WAIT_MS * rt::cycles_per_ms() {
        core::hint::spin_loop();
    }
    guest_lib::exception::set_hook(None);
    check!(FINAL_DONE.load(SeqCst), "vCPU 1 did not finish");
    let (ok, faulted) = (WRITES_OK.load(SeqCst), WRITES_FAULTED.load(SeqCst));
    log!(
        "{} table changes; vCPU 1: {} writes went through, {} faulted",
        round,
        ok,
        faulted
    );
    check!(
        round >= full_cycle,
        "only {} table changes (every page through every state is {})",
        round,
        full_cycle
    );
    check!(
        ok > 0 && faulted > 0,
        "writes through: {}, faulted: {} (both must happen)",
        ok,
        faulted
    );
    for i in 0..STRESS_PAGES {
        check_eq!(
            first[i as usize].read_u64(0),
            FINAL | i,
            "page {}'s final write, in its frame",
            i
        );
        check!(
            second[i as usize].read_u64(0) != FINAL | i,
            "page {}'s final write reached the stale frame",
            i
        );
    }
}
case!(
    stress,
    Spec::new(
        "paging.stress",
        Area::Paging,
        "two vCPUs remap, write-protect and zap the pages they write for 300 ms; no write is lost"
    )
    .vcpus(2)
    .timeout_ms(5_000)
    .flags(guest_lib::abi::case::FLAG_IRQCHIP)
    .reqs("X86-TLB-2,PVM-SPT-1,PVM-SPT-7")
);

// --- SMEP, SMAP and protection keys, when the VMM offers them ------------------------------

fn offered(reg: usize, bit: u32) -> bool {
    vmm::configured_cpuid(7, 0).is_some_and(|r| r[reg] & (1 << bit) != 0)
}

/// With CR4 bit `bit` set, runs `f`; clears it again. `Err` if the bit cannot be set.
fn with_cr4<R>(bit: u64, f: impl FnOnce() -> R) -> Result<R, Exception> {
    let old = instr::read_cr4();
    instr::write_cr4_probe_safe(old | bit)?;
    let r = f();
    instr::write_cr4_probe_safe(old)?;
    Ok(r)
}

/// SMEP, SMAP and protection keys (each when the configured CPUID offers it): a CPL0 fetch
/// from a user page faults under SMEP (P|I); a CPL0 read of a user page faults under SMAP (P)
/// unless RFLAGS.AC is set; a CPL3 read of a page whose key PKRU denies faults (P|U|PK).
fn protection_features() {
    use guest_lib::abi::x86::cr4;
    let f = alloc_frame();
    f.write_u64(0, RET);
    map(TEST_VA, &f, RW_US);
    instr::invlpg(TEST_VA.get());
    let va = TEST_VA.get();
    match rt::case_param() {
        0 => {
            if !offered(1, 7) {
                guest_lib::skip!("the VMM does not offer SMEP (CPUID.7.0:EBX bit 7)");
            }
            let r = with_cr4(cr4::SMEP, || instr::exec_ret_safe(va));
            check_eq!(
                r,
                Ok(Err(Exception::pf(pfec::P | pfec::I, va))),
                "CPL0 fetch from a user page with SMEP"
            );
            check_eq!(
                instr::exec_ret_safe(va),
                Ok(()),
                "the same fetch without SMEP"
            );
        }
        1 => {
            if !offered(1, 20) {
                guest_lib::skip!("the VMM does not offer SMAP (CPUID.7.0:EBX bit 20)");
            }
            let r = with_cr4(cr4::SMAP, || {
                (instr::read_u64_safe(va), instr::read_u64_stac_safe(va))
            });
            check_eq!(
                r.map(|x| x.0),
                Ok(Err(Exception::pf(pfec::P, va))),
                "CPL0 read of a user page with SMAP"
            );
            check_eq!(
                r.map(|x| x.1),
                Ok(Ok(RET)),
                "the same read with RFLAGS.AC set"
            );
        }
        _ => {
            if !offered(2, 3) {
                guest_lib::skip!("the VMM does not offer protection keys (CPUID.7.0:ECX bit 3)");
            }
            set_pte(TEST_VA, Pte::map(&f, RW_US).with_protection_key(1));
            instr::invlpg(va);
            let r = with_cr4(cr4::PKE, || {
                // Access-disable for key 1 (PKRU bit 2).
                let set = instr::wrpkru_safe(1 << 2);
                let denied = user::run(user::read_probe, va);
                let _ = instr::wrpkru_safe(0);
                let allowed = user::run(user::read_probe, va);
                (set, denied, allowed)
            });
            check_eq!(r.map(|x| x.0), Ok(Ok(())), "WRPKRU");
            check_eq!(
                r.map(|x| x.1),
                Ok(UserExit::Exception(Exception::pf(
                    pfec::P | pfec::U | pfec::PK,
                    va
                ))),
                "CPL3 read of a key-1 page with access disabled"
            );
            check_eq!(
                r.map(|x| x.2),
                Ok(UserExit::Returned(RET)),
                "the same read with PKRU 0"
            );
        }
    }
}

const fn protection_spec(name: &'static str, summary: &'static str) -> Spec {
    Spec::new(name, Area::Paging, summary).reqs("X86-PG-PROT-1")
}

case_table!(
    protection_features,
    protection_spec,
    [
        (
            "paging.smep",
            0,
            "SMEP (when offered): CPL0 fetch from a user page faults with P|I"
        ),
        (
            "paging.smap",
            1,
            "SMAP (when offered): CPL0 read of a user page faults unless RFLAGS.AC"
        ),
        (
            "paging.pke",
            2,
            "protection keys (when offered): PKRU access-disable faults a CPL3 read with PK"
        ),
    ]
);
