//! Paging: #PF delivery (vector, error code, CR2), protection, invalidation, accessed/dirty
//! bits, NX, CR0.WP, and which page table CPL3 code runs on.

use guest_lib::abi::env::{Area, Env};
use guest_lib::abi::layout::pte;
use guest_lib::arch::instr;
use guest_lib::case::Spec;
use guest_lib::exception::{Exception, pfec};
use guest_lib::paging::{Pte, PteFlags, TestVa, alloc_frame, map, pte as read_pte, set_pte};
use guest_lib::user::{self, UserExit};
use guest_lib::{case, case_table, check, check_eq, rt};

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

case_table!(access_cell, access_spec, [
    ("paging.access.uwx.cpl0_read", 3, "CPL0 read of a user writable executable page: allowed, A set"),
    ("paging.access.uwx.cpl0_write", 19, "CPL0 write of a user writable executable page: allowed, A/D set"),
    ("paging.access.uwx.cpl0_fetch", 35, "CPL0 fetch of a user writable executable page: allowed, A set"),
    ("paging.access.uwx.cpl3_read", 11, "CPL3 read of a user writable executable page: allowed, A set"),
    ("paging.access.uwx.cpl3_write", 27, "CPL3 write of a user writable executable page: allowed, A/D set"),
    ("paging.access.uwx.cpl3_fetch", 43, "CPL3 fetch of a user writable executable page: allowed, A set"),
    ("paging.access.uwn.cpl0_read", 7, "CPL0 read of a user writable NX page: allowed, A set"),
    ("paging.access.uwn.cpl0_write", 23, "CPL0 write of a user writable NX page: allowed, A/D set"),
    ("paging.access.uwn.cpl0_fetch", 39, "CPL0 fetch of a user writable NX page: #PF(P|I)"),
    ("paging.access.uwn.cpl3_read", 15, "CPL3 read of a user writable NX page: allowed, A set"),
    ("paging.access.uwn.cpl3_write", 31, "CPL3 write of a user writable NX page: allowed, A/D set"),
    ("paging.access.uwn.cpl3_fetch", 47, "CPL3 fetch of a user writable NX page: #PF(P|U|I)"),
    ("paging.access.urx.cpl0_read", 1, "CPL0 read of a user read-only executable page: allowed, A set"),
    ("paging.access.urx.cpl0_write", 17, "CPL0 write of a user read-only executable page: #PF(P|W)"),
    ("paging.access.urx.cpl0_fetch", 33, "CPL0 fetch of a user read-only executable page: allowed, A set"),
    ("paging.access.urx.cpl3_read", 9, "CPL3 read of a user read-only executable page: allowed, A set"),
    ("paging.access.urx.cpl3_write", 25, "CPL3 write of a user read-only executable page: #PF(P|W|U)"),
    ("paging.access.urx.cpl3_fetch", 41, "CPL3 fetch of a user read-only executable page: allowed, A set"),
    ("paging.access.urn.cpl0_read", 5, "CPL0 read of a user read-only NX page: allowed, A set"),
    ("paging.access.urn.cpl0_write", 21, "CPL0 write of a user read-only NX page: #PF(P|W)"),
    ("paging.access.urn.cpl0_fetch", 37, "CPL0 fetch of a user read-only NX page: #PF(P|I)"),
    ("paging.access.urn.cpl3_read", 13, "CPL3 read of a user read-only NX page: allowed, A set"),
    ("paging.access.urn.cpl3_write", 29, "CPL3 write of a user read-only NX page: #PF(P|W|U)"),
    ("paging.access.urn.cpl3_fetch", 45, "CPL3 fetch of a user read-only NX page: #PF(P|U|I)"),
    ("paging.access.swx.cpl0_read", 2, "CPL0 read of a supervisor writable executable page: allowed, A set"),
    ("paging.access.swx.cpl0_write", 18, "CPL0 write of a supervisor writable executable page: allowed, A/D set"),
    ("paging.access.swx.cpl0_fetch", 34, "CPL0 fetch of a supervisor writable executable page: allowed, A set"),
    ("paging.access.swx.cpl3_read", 10, "CPL3 read of a supervisor writable executable page: #PF(P|U)"),
    ("paging.access.swx.cpl3_write", 26, "CPL3 write of a supervisor writable executable page: #PF(P|W|U)"),
    ("paging.access.swx.cpl3_fetch", 42, "CPL3 fetch of a supervisor writable executable page: #PF(P|U|I)"),
    ("paging.access.swn.cpl0_read", 6, "CPL0 read of a supervisor writable NX page: allowed, A set"),
    ("paging.access.swn.cpl0_write", 22, "CPL0 write of a supervisor writable NX page: allowed, A/D set"),
    ("paging.access.swn.cpl0_fetch", 38, "CPL0 fetch of a supervisor writable NX page: #PF(P|I)"),
    ("paging.access.swn.cpl3_read", 14, "CPL3 read of a supervisor writable NX page: #PF(P|U)"),
    ("paging.access.swn.cpl3_write", 30, "CPL3 write of a supervisor writable NX page: #PF(P|W|U)"),
    ("paging.access.swn.cpl3_fetch", 46, "CPL3 fetch of a supervisor writable NX page: #PF(P|U|I)"),
    ("paging.access.srx.cpl0_read", 0, "CPL0 read of a supervisor read-only executable page: allowed, A set"),
    ("paging.access.srx.cpl0_write", 16, "CPL0 write of a supervisor read-only executable page: #PF(P|W)"),
    ("paging.access.srx.cpl0_fetch", 32, "CPL0 fetch of a supervisor read-only executable page: allowed, A set"),
    ("paging.access.srx.cpl3_read", 8, "CPL3 read of a supervisor read-only executable page: #PF(P|U)"),
    ("paging.access.srx.cpl3_write", 24, "CPL3 write of a supervisor read-only executable page: #PF(P|W|U)"),
    ("paging.access.srx.cpl3_fetch", 40, "CPL3 fetch of a supervisor read-only executable page: #PF(P|U|I)"),
    ("paging.access.srn.cpl0_read", 4, "CPL0 read of a supervisor read-only NX page: allowed, A set"),
    ("paging.access.srn.cpl0_write", 20, "CPL0 write of a supervisor read-only NX page: #PF(P|W)"),
    ("paging.access.srn.cpl0_fetch", 36, "CPL0 fetch of a supervisor read-only NX page: #PF(P|I)"),
    ("paging.access.srn.cpl3_read", 12, "CPL3 read of a supervisor read-only NX page: #PF(P|U)"),
    ("paging.access.srn.cpl3_write", 28, "CPL3 write of a supervisor read-only NX page: #PF(P|W|U)"),
    ("paging.access.srn.cpl3_fetch", 44, "CPL3 fetch of a supervisor read-only NX page: #PF(P|U|I)"),
]);
