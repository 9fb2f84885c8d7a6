//! Paging: #PF delivery (vector, error code, CR2), protection, invalidation, accessed/dirty
//! bits, NX, CR0.WP, and which page table CPL3 code runs on.

use guest_lib::abi::env::{Area, Env};
use guest_lib::abi::layout::pte;
use guest_lib::arch::instr;
use guest_lib::case::Spec;
use guest_lib::exception::{Exception, pfec};
use guest_lib::paging::{Pte, PteFlags, TestVa, alloc_frame, map, pte as read_pte, set_pte};
use guest_lib::user::{self, UserExit};
use guest_lib::{case, check, check_eq};

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
