//! The per-generation host rules: PVM MSRs and their validity checks, the PVCS and event
//! delivery, ERETU, hypercalls, the synthetic CPUID. Each rule cites its source
//! (shared/notes/pvm-abi-upstream.md sections, which cite virt-pvm/linux files and commits);
//! where spec and code disagree, the code wins and the choice is written down here and in
//! docs/model.md.
//!
//! Only `pv-v2` (the 6.12 line, notes §11 and §14) is implemented so far; the model refuses
//! the other generations with a reason the harness turns into SKIP.

use std::mem::offset_of;

use abi::x86::msr;

use abi::upstream::{
    self as up, HC_WRMSR_EIO as EIO, KVM_ENOSYS, PvcsV1, PvcsV2, event_flags, hc, range_of,
    range_value, vector_bits,
};
use runner::vm::GuestRam;

use crate::faults::{Fault, Faults};

/// The ABI generation the model plays.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Generation {
    /// RFC v1.
    V1,
    /// "mid".
    Mid,
    /// v2, the 6.12 line.
    V2,
}

impl Generation {
    /// The generation of an upstream environment (from the dialect it needs).
    pub fn of_env(env: abi::env::Env) -> Option<Generation> {
        match env.required_dialect()? {
            abi::env::Dialect::UpstreamV1 => Some(Generation::V1),
            abi::env::Dialect::UpstreamMid => Some(Generation::Mid),
            abi::env::Dialect::UpstreamV2 => Some(Generation::V2),
            abi::env::Dialect::Local | abi::env::Dialect::Upstream7x => None,
        }
    }

    /// The RFC-era generations (v1, mid): supervisor stack frames, ERETS, SUPERVISOR_RSP and
    /// SWITCH_CR3 (notes §3-§5, §11).
    pub const fn rfc(self) -> bool {
        matches!(self, Generation::V1 | Generation::Mid)
    }

    /// MSR_PVM_SUPERVISOR_RSP's index (RFC generations).
    pub const fn msr_supervisor_rsp(self) -> Option<u32> {
        match self {
            Generation::V1 => Some(up::v1::MSR_SUPERVISOR_RSP),
            Generation::Mid => Some(up::mid::MSR_SUPERVISOR_RSP),
            Generation::V2 => None,
        }
    }

    /// MSR_PVM_SWITCH_CR3's index (RFC generations).
    pub const fn msr_switch_cr3(self) -> Option<u32> {
        match self {
            Generation::V1 => Some(up::v1::MSR_SWITCH_CR3),
            Generation::Mid => Some(up::mid::MSR_SWITCH_CR3),
            Generation::V2 => None,
        }
    }
}

/// RFLAGS bits.
pub mod rflags {
    pub use abi::x86::rflags::{FIXED, IF};
    /// The flags a guest controls in hardware (`SWITCH_ENTER_EFLAGS_ALLOWED`, notes §6):
    /// CF PF AF ZF SF TF IF DF OF NT RF AC ID.
    pub const ALLOWED: u64 = 0x1
        | 0x4
        | 0x10
        | 0x40
        | 0x80
        | 0x100
        | 0x200
        | 0x400
        | 0x800
        | 0x4000
        | 0x1_0000
        | 0x4_0000
        | 0x20_0000;
}

/// The general registers, RIP, RFLAGS and the bases the rules touch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[allow(missing_docs, reason = "register names")]
pub struct Regs {
    pub rax: u64,
    pub rbx: u64,
    pub rcx: u64,
    pub rdx: u64,
    pub rsi: u64,
    pub rdi: u64,
    pub rbp: u64,
    pub rsp: u64,
    pub r8: u64,
    pub r9: u64,
    pub r10: u64,
    pub r11: u64,
    pub r12: u64,
    pub r13: u64,
    pub r14: u64,
    pub r15: u64,
    pub rip: u64,
    pub rflags: u64,
    pub fs_base: u64,
    pub gs_base: u64,
    /// Hardware CS.
    pub cs: u16,
    /// Hardware SS.
    pub ss: u16,
}

impl Regs {
    /// The register an MSR index names, for the two MSRs that are hardware registers here:
    /// FS_BASE and GS_BASE (the host loads them for the guest, notes §6).
    pub fn base_msr(&mut self, idx: u32) -> Option<&mut u64> {
        match idx {
            msr::FS_BASE => Some(&mut self.fs_base),
            msr::GS_BASE => Some(&mut self.gs_base),
            _ => None,
        }
    }
}

/// An event to deliver.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// An exception: vector, error code (if the vector has one), CR2 (for #PF).
    Exception {
        /// Vector (0..31).
        vector: u8,
        /// Error code.
        code: Option<u32>,
        /// Faulting address of a #PF.
        cr2: Option<u64>,
    },
    /// A software `int n` the host lets through (3, 4, 0x80) or an external interrupt.
    Vector(u8),
    /// `syscall` from user mode.
    UserSyscall,
    /// An NMI the VMM injected (`KVM_NMI`). v2: `event_vector` = the NMI bit alone (0x200),
    /// no error code; RFC: vector 2 like an exception (docs/research/pvm-nmi-mce-eretu-star.md
    /// §1).
    Nmi,
    /// A machine check the VMM injected (`KVM_X86_SET_MCE`). v2: `event_vector` = the MCE bit
    /// alone (0x400), merged and re-delivered like an NMI; RFC: vector 18 (research §2).
    Mce,
}

impl Event {
    /// The #PF of a failed translation.
    pub const fn page_fault(pf: crate::mmu::PageFault) -> Self {
        Event::Exception {
            vector: abi::x86::vector::PF,
            code: Some(pf.code),
            cr2: Some(pf.addr),
        }
    }

    /// Exception `vector` with error code `code`.
    pub const fn fault(vector: u8, code: u32) -> Self {
        Event::Exception {
            vector,
            code: Some(code),
            cr2: None,
        }
    }
}

/// Why the vCPU cannot go on: the host triple-faults it (`KVM_EXIT_SHUTDOWN`), with the rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TripleFault(pub String);

/// The model's state of one vCPU's PVM side.
#[derive(Clone, Debug)]
pub struct Pvm {
    /// Generation played.
    pub generation: Generation,
    /// Fault switches.
    pub faults: Faults,
    /// Supervisor mode (else user mode).
    pub smod: bool,
    /// Virtual control registers (stored, no hardware effect but CR3 and CR4.SMEP).
    pub cr0: u64,
    /// The guest's GDTR (base, limit) as LGDT stored it: the hardware runs on the host's GDT,
    /// the host's emulated LTR reads this one.
    pub gdtr: (u64, u16),
    /// CR2 as the guest reads it.
    pub cr2: u64,
    /// CR3 (the guest page table; v2 has one for both modes).
    pub cr3: u64,
    /// CR4.
    pub cr4: u64,
    /// CR8 / TPR.
    pub cr8: u64,
    /// EFER.
    pub efer: u64,
    /// MSR_PVM_LINEAR_ADDRESS_RANGE.
    pub range_msr: u64,
    /// MSR_PVM_VCPU_STRUCT.
    pub vcpu_struct: u64,
    /// MSR_PVM_EVENT_ENTRY.
    pub event_entry: u64,
    /// MSR_PVM_RETU_RIP.
    pub retu_rip: u64,
    /// MSR_PVM_RETS_RIP (RFC generations).
    pub rets_rip: u64,
    /// MSR_PVM_SUPERVISOR_RSP (RFC generations).
    pub supervisor_rsp: u64,
    /// MSR_PVM_SUPERVISOR_REDZONE (v1).
    pub redzone: u64,
    /// MSR_PVM_SWITCH_CR3: the other mode's CR3 (RFC generations).
    pub switch_cr3: u64,
    /// STAR.
    pub star: u64,
    /// LSTAR.
    pub lstar: u64,
    /// CSTAR.
    pub cstar: u64,
    /// SFMASK (stored, ignored: notes §2).
    pub fmask: u64,
    /// KERNEL_GS_BASE (soft; loaded into GS_BASE on user->supervisor).
    pub kernel_gs_base: u64,
    /// TSC_AUX.
    pub tsc_aux: u64,
    /// PAT.
    pub pat: u64,
    /// APIC base.
    pub apic_base: u64,
    /// NMI masked until ERETU or ERETS (RFC: `pvm_inject_nmi` sets KVM's NMI mask; v2 has
    /// none, docs/research/pvm-nmi-mce-eretu-star.md §1).
    pub nmi_masked: bool,
    /// An NMI the VMM injected and the host has not delivered yet.
    pub nmi_pending: bool,
    /// A machine check the VMM injected and the host has not delivered yet.
    pub mce_pending: bool,
    /// A triple fault a VMM request caused (an #MC with CR4.MCE clear), for the run loop.
    pub shutdown: Option<String>,
    /// The host GDT's TLS entries while this vCPU runs (`PVM_HC_LOAD_TLS`).
    pub tls: [u64; 3],
    /// `tls` changed: the engine writes it into the host GDT.
    pub tls_dirty: bool,
    /// DR0-DR3, DR6 and DR7 as the guest wrote them (KVM keeps them; breakpoints are not
    /// modelled).
    pub dr: [u64; 8],
    /// The VM has the in-kernel irqchip (`KVM_CREATE_IRQCHIP`): HLT blocks in the host, else
    /// it exits to the VMM.
    pub irqchip: bool,
    /// Vectors this vCPU's local APIC ended (EOI) that the I/O APIC has not heard of yet.
    pub eois: Vec<u8>,
    /// This vCPU's x2APIC ID (its index in the VM).
    pub apic_id: u32,
    /// The other vCPUs' interrupt mailboxes (a VM of several vCPUs).
    pub bus: Option<std::sync::Arc<crate::smp::IpiBus>>,
    /// The TLB must be flushed before the guest runs again.
    pub flush_tlb: bool,
    /// A fault switch skipped a flush the guest asked for: the engine keeps the translations
    /// the TLB held (`Some(va)`: that page's, `None`: all) past its own flushes.
    pub keep_stale: Option<Option<u64>>,
    /// Halted until an interrupt.
    pub halted: bool,
    /// Pending external interrupt vectors (IRR), as a bitmap.
    pub irr: [u64; 4],
    /// In-service vectors (ISR).
    pub isr: [u64; 4],
    /// x2APIC registers the model stores (SVR, LVTs, timer).
    pub apic: std::collections::BTreeMap<u32, u64>,
    /// TSC deadline (0 = disarmed).
    pub tsc_deadline: u64,
    /// The running one-shot/periodic LVT timer: (start in APIC-clock ns, initial count).
    pub lvt_timer: Option<(u64, u64)>,
    /// MSRs the model only stores (SYSENTER_*, DEBUGCTL, MTRRs, MCG_STATUS): KVM keeps them
    /// per vCPU and gives them no effect a case can see.
    pub stored_msrs: std::collections::BTreeMap<u32, u64>,
    /// The VMM wrote FS_BASE/GS_BASE into `Regs` while the engine ran: the port hook loads
    /// them into the emulated CPU.
    pub bases_dirty: bool,
    /// TSC_AUX changed: the engine loads it into the emulated CPU (RDTSCP reads it there).
    pub tsc_aux_dirty: bool,
    /// An interrupt the VMM injected (`KVM_INTERRUPT`: no APIC, no ISR), waiting for IF.
    pub ext_irq: Option<u8>,
    /// A VMM request changed this state while the engine ran: the run loop must look again.
    pub resync: bool,
}

/// Why a WRMSR failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WrmsrError {
    /// A #GP, with the rule.
    Gp(String),
    /// The host shuts the vCPU down, with the rule.
    TripleFault(String),
}

/// MSRs the model stores without effect ([`Pvm::stored_msrs`]).
fn stored(idx: u32) -> bool {
    matches!(
        idx,
        msr::SYSENTER_CS
            | msr::SYSENTER_ESP
            | msr::SYSENTER_EIP
            | msr::DEBUGCTL
            | msr::MCG_STATUS
            | msr::MTRR_DEF_TYPE
            | msr::MTRR_FIX64K
            | 0x258
            | 0x259
            | 0x268..=0x26f
    ) || (msr::MTRR_PHYSBASE0..msr::MTRR_PHYSBASE0 + 16).contains(&idx)
}

/// Host default of the range MSR: upper-half PML4 indexes 0x1e0..0x1f0 (16 slots, 8 TiB), a
/// value of the RFC format (filler bits set, PML5 fields 0x1ff). Real hosts choose theirs at
/// module load (notes §7).
pub const DEFAULT_RANGE: (u64, u64) = (0x1e0, 0x1f0);

/// The fault of an ERETU to a non-canonical user RIP. The 6.12 host checks neither RIP nor
/// RSP (`handle_synthetic_instruction_return_user` copies `pvcs->rip` as it is); its switcher
/// returns with IRETQ when RIP is not canonical, the IRETQ's #GP(0) is handled "as if it
/// happened immediately after IRET" (`pvm_idtentry .L_from_switcher`), and the guest gets
/// #GP(0) as a user event with the bad RIP in the PVCS (docs/research/pvm-nmi-mce-eretu-star.md
/// §3). The RFC hosts copy RIP unchecked too; the model gives them the same fault (their
/// fault path is inferred, not traced). A non-canonical RSP is not checked either: the user's
/// first stack reference is #SS(0), which the engine raises.
fn noncanonical_return(r: &Regs) -> Option<Event> {
    (!canonical(r.rip)).then_some(GP0)
}

/// #GP(0).
const GP0: Event = Event::fault(abi::x86::vector::GP, 0);

/// Where a generation's PVCS keeps the context an event saves and ERETU loads
/// (`Pvm::save_context`, `Pvm::enter_from_user`, `Pvm::load_user_context`).
struct UserContextAt {
    cr2: usize,
    pkru: usize,
    user_cs: usize,
    user_ss: usize,
    eflags: usize,
    rip: usize,
    /// The RFC PVCS holds the user RSP; v2 returns with RSP as it is.
    rsp: Option<usize>,
    rcx: usize,
    r11: usize,
    user_gsbase: usize,
}

/// The RFC generations' PVCS (v1 and mid share it).
const RFC_USER_CONTEXT: UserContextAt = UserContextAt {
    cr2: offset_of!(PvcsV1, cr2),
    pkru: offset_of!(PvcsV1, pkru),
    user_cs: offset_of!(PvcsV1, user_cs),
    user_ss: offset_of!(PvcsV1, user_ss),
    eflags: offset_of!(PvcsV1, eflags),
    rip: offset_of!(PvcsV1, rip),
    rsp: Some(offset_of!(PvcsV1, rsp)),
    rcx: offset_of!(PvcsV1, rcx),
    r11: offset_of!(PvcsV1, r11),
    user_gsbase: offset_of!(PvcsV1, user_gsbase),
};

/// The v2 PVCS.
const V2_USER_CONTEXT: UserContextAt = UserContextAt {
    cr2: offset_of!(PvcsV2, cr2),
    pkru: offset_of!(PvcsV2, pkru),
    user_cs: offset_of!(PvcsV2, user_cs),
    user_ss: offset_of!(PvcsV2, user_ss),
    eflags: offset_of!(PvcsV2, eflags),
    rip: offset_of!(PvcsV2, rip),
    rsp: None,
    rcx: offset_of!(PvcsV2, rcx),
    r11: offset_of!(PvcsV2, r11),
    user_gsbase: offset_of!(PvcsV2, user_gsbase),
};

/// The host's GDT as an x86-64 Linux host lays it out (arch/x86/include/asm/segment.h,
/// `GDT_ENTRY_*`; 16 entries): kernel CS/DS, user CS32/DS/CS (the guest runs on these), the
/// host's busy TSS at 8-9, LDT 10-11 and TLS 12-14 empty, and the CPUNODE entry at 15 that
/// vDSO getcpu reads with LSL (arch/x86/kernel/cpu/common.c:setup_getcpu: type 5, DPL 3,
/// D=1, CPU and node number in the limit; vCPU 0 on node 0 here).
pub const HOST_GDT: [u64; abi::upstream::HOST_GDT_ENTRIES] = [
    0,
    0x00cf_9b00_0000_ffff,
    0x00af_9b00_0000_ffff,
    0x00cf_9300_0000_ffff,
    0x00cf_fb00_0000_ffff,
    0x00cf_f300_0000_ffff,
    0x00af_fb00_0000_ffff,
    0,
    0x0000_8b00_0000_0067,
    0,
    0,
    0,
    0,
    0,
    0,
    0x0040_f500_0000_0000,
];

/// The MSRs the model's VMM saves and restores (its `KVM_GET_MSR_INDEX_LIST`): the
/// architectural ones KVM lists that the model keeps, and the PVM MSRs of every generation
/// (those a generation does not have read as absent and are skipped).
pub const SAVED_MSRS: &[u32] = &[
    msr::EFER,
    msr::STAR,
    msr::LSTAR,
    msr::CSTAR,
    msr::SFMASK,
    msr::KERNEL_GS_BASE,
    msr::TSC_AUX,
    msr::PAT,
    msr::APIC_BASE,
    msr::SYSENTER_CS,
    msr::SYSENTER_ESP,
    msr::SYSENTER_EIP,
    msr::DEBUGCTL,
    msr::MCG_STATUS,
    msr::MTRR_DEF_TYPE,
    msr::MTRR_FIX64K,
    msr::TSC_DEADLINE,
    up::MSR_LINEAR_ADDRESS_RANGE,
    up::MSR_VCPU_STRUCT,
    up::MSR_EVENT_ENTRY,
    up::MSR_RETU_RIP,
    up::MSR_RETS_RIP,
    // (The mid generation's SWITCH_CR3 and SUPERVISOR_RSP reuse v1's first two numbers.)
    up::v1::MSR_SUPERVISOR_RSP,
    up::v1::MSR_SUPERVISOR_REDZONE,
    up::v1::MSR_SWITCH_CR3,
];

/// DR6 bits that read as 1, and the ones a write can change (arch/x86/include/asm/debugreg.h,
/// `DR6_FIXED_1`, `DR6_VOLATILE` as KVM uses them).
const DR6_FIXED_1: u64 = 0xfffe_0ff0;
const DR6_VOLATILE: u64 = 0x0001_e80f;
/// DR7 likewise (`DR7_FIXED_1`, `DR7_VOLATILE`).
const DR7_FIXED_1: u64 = 0x400;
const DR7_VOLATILE: u64 = 0xffff_2bff;
/// DR6.BS: the #DB was a single step.
pub const DR6_BS: u64 = 1 << 14;

/// The host GDT's first TLS entry (`GDT_ENTRY_TLS_MIN`).
pub const GDT_ENTRY_TLS_MIN: usize = 12;

/// A TLS descriptor as `PVM_HC_LOAD_TLS` installs it: one that is not present, is a code
/// segment or has D=0 becomes zero; the others are made accessed (type |= 1), S=1, DPL 3,
/// L=0 (research §4 table, LOAD_TLS).
pub fn tls_descriptor(d: u64) -> u64 {
    let (present, code, big) = (d >> 47 & 1 == 1, d >> 43 & 1 == 1, d >> 54 & 1 == 1);
    if !present || code || !big {
        return 0;
    }
    (d | 1 << 40 | 1 << 44 | 3 << 45) & !(1 << 53)
}

/// The GS base `load_gs_index(sel)` gives at CPL 3 on `gdt`: a null or invalid selector (past
/// the table, an LDT one, not a present DPL-3 data or readable code segment) gives the null
/// selector and base 0 (research table, LOAD_GS).
pub fn gs_base_of(gdt: &[u64], sel: u16) -> u64 {
    let sel = if sel != 0 && sel & 3 != 3 { 0 } else { sel };
    let Some(&d) = gdt.get(usize::from(sel >> 3)) else {
        return 0;
    };
    let (present, system, dpl) = (d >> 47 & 1 == 1, d >> 44 & 1 == 0, d >> 45 & 3);
    let (code, readable) = (d >> 43 & 1 == 1, d >> 41 & 1 == 1);
    if sel == 0 || sel & 4 != 0 || !present || system || dpl != 3 || (code && !readable) {
        return 0;
    }
    (d >> 16 & 0xff_ffff) | (d >> 56 & 0xff) << 24
}

/// The physical-address width the model's CPUID reports (leaf 0x80000008 EAX bits 7:0); a paging
/// entry with an address bit at or above it is a reserved-bit #PF (SDM Vol. 3A 4.5.4), and
/// every guest-physical address from the end of RAM up to it is MMIO.
pub const MAXPHYADDR: u32 = 40;

/// Whether `v` is a canonical 48-bit address.
pub fn canonical(v: u64) -> bool {
    let top = (v as i64) >> 47;
    top == 0 || top == -1
}

/// Which way a `syscall` in supervisor mode went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SupervisorSyscall {
    /// ERETU: now in user mode.
    Eretu,
    /// A hypercall was served.
    Hypercall,
    /// ERETS (RFC generations): back in supervisor code.
    Erets,
}

impl Pvm {
    /// A vCPU after reset in `generation`, entering PVM mode in supervisor mode with the
    /// boot state's control registers (notes §8.2).
    pub fn new(
        generation: Generation,
        faults: Faults,
        cr0: u64,
        cr3: u64,
        cr4: u64,
        efer: u64,
    ) -> Self {
        Self {
            generation,
            faults,
            smod: true,
            // The host forces NE|AM|WP|PG|PE and clears NW|CD on conversion (notes §8.2).
            cr0: (cr0 & !((1 << 29) | (1 << 30)))
                | (1 << 5)
                | (1 << 18)
                | (1 << 16)
                | (1 << 31)
                | 1,
            // `pvm_vcpu_reset`: base 0, limit 0xffff (docs/research/pvm-cr0-wp-ltr.md §2).
            gdtr: (0, 0xffff),
            cr2: 0,
            cr3,
            cr4,
            cr8: 0,
            // EFER.SCE is set on conversion.
            efer: efer | 1,
            range_msr: range_value(DEFAULT_RANGE.0, DEFAULT_RANGE.1),
            vcpu_struct: 0,
            event_entry: 0,
            retu_rip: 0,
            rets_rip: 0,
            supervisor_rsp: 0,
            redzone: 0,
            switch_cr3: 0,
            // STAR kernel CS 0 at conversion: the host sets it from CS (notes §8.2).
            star: (u64::from(abi::layout::sel::KERNEL_CS) << 32)
                | (u64::from(up::HOST_USER32_CS) << 48),
            lstar: 0,
            cstar: 0,
            fmask: 0,
            kernel_gs_base: 0,
            tsc_aux: 0,
            pat: 0x0007_0406_0007_0406,
            apic_base: 0xfee0_0000 | (1 << 11) | (1 << 10) | (1 << 8),
            nmi_masked: false,
            nmi_pending: false,
            mce_pending: false,
            shutdown: None,
            tls: [0; 3],
            dr: [0, 0, 0, 0, 0, 0, DR6_FIXED_1, DR7_FIXED_1],
            irqchip: true,
            tls_dirty: false,
            eois: Vec::new(),
            apic_id: 0,
            bus: None,
            flush_tlb: true,
            keep_stale: None,
            halted: false,
            irr: [0; 4],
            isr: [0; 4],
            apic: std::collections::BTreeMap::new(),
            tsc_deadline: 0,
            lvt_timer: None,
            stored_msrs: std::collections::BTreeMap::new(),
            tsc_aux_dirty: true,
            bases_dirty: false,
            ext_irq: None,
            resync: false,
        }
    }

    /// The legal upper-half PML4 indexes.
    pub fn range(&self) -> (u64, u64) {
        range_of(self.range_msr)
    }

    /// Supervisor interrupt flag: PVCS.event_flags.IF (0 while no PVCS is registered, notes
    /// §3).
    pub fn interrupts_enabled(&self, mem: &dyn GuestRam) -> bool {
        if !self.smod {
            return true;
        }
        self.vcpu_struct != 0
            && mem
                .read_u64(self.vcpu_struct + offset_of!(PvcsV2, event_flags) as u64)
                .is_ok_and(|f| f & event_flags::IF != 0)
    }

    fn pvcs(&self, field: usize) -> u64 {
        self.vcpu_struct + field as u64
    }

    fn write16(&self, mem: &dyn GuestRam, field: usize, v: u16) -> Result<(), TripleFault> {
        mem.write(self.pvcs(field), &v.to_le_bytes())
            .map_err(|e| TripleFault(format!("PVCS write: {e}")))
    }

    fn write32(&self, mem: &dyn GuestRam, field: usize, v: u32) -> Result<(), TripleFault> {
        mem.write(self.pvcs(field), &v.to_le_bytes())
            .map_err(|e| TripleFault(format!("PVCS write: {e}")))
    }

    fn write64(&self, mem: &dyn GuestRam, field: usize, v: u64) -> Result<(), TripleFault> {
        mem.write_u64(self.pvcs(field), v)
            .map_err(|e| TripleFault(format!("PVCS write: {e}")))
    }

    fn read16(&self, mem: &dyn GuestRam, field: usize) -> Result<u16, TripleFault> {
        let mut b = [0u8; 2];
        mem.read(self.pvcs(field), &mut b)
            .map_err(|e| TripleFault(format!("PVCS read: {e}")))?;
        Ok(u16::from_le_bytes(b))
    }

    fn read32(&self, mem: &dyn GuestRam, field: usize) -> Result<u32, TripleFault> {
        let mut b = [0u8; 4];
        mem.read(self.pvcs(field), &mut b)
            .map_err(|e| TripleFault(format!("PVCS read: {e}")))?;
        Ok(u32::from_le_bytes(b))
    }

    fn read64(&self, mem: &dyn GuestRam, field: usize) -> Result<u64, TripleFault> {
        mem.read_u64(self.pvcs(field))
            .map_err(|e| TripleFault(format!("PVCS read: {e}")))
    }

    fn set_if(&self, mem: &dyn GuestRam, on: bool) -> Result<(), TripleFault> {
        let f = self.read64(mem, offset_of!(PvcsV2, event_flags))?;
        let f = if on {
            (f | event_flags::IF) & !event_flags::IP
        } else {
            f & !event_flags::IF
        };
        self.write64(mem, offset_of!(PvcsV2, event_flags), f)
    }

    /// MOV to DRn, as KVM's `kvm_set_dr` stores it (DR4/DR5 are DR6/DR7: CR4.DE is clear; the
    /// fixed and reserved bits of DR6/DR7 forced).
    pub fn write_dr(&mut self, dr: u8, v: u64) {
        match dr {
            0..=3 => self.dr[usize::from(dr)] = v,
            4 | 6 => self.dr[6] = (v & DR6_VOLATILE) | DR6_FIXED_1,
            _ => self.dr[7] = (v & DR7_VOLATILE) | DR7_FIXED_1,
        }
    }

    /// MOV from DRn.
    pub fn read_dr(&self, dr: u8) -> u64 {
        match dr {
            0..=3 => self.dr[usize::from(dr)],
            4 | 6 => self.dr[6],
            _ => self.dr[7],
        }
    }

    /// Marks an interrupt pending for a guest whose IF is clear (notes §5.6).
    pub fn mark_pending(&self, mem: &dyn GuestRam) {
        if self.vcpu_struct == 0 {
            return;
        }
        let at = offset_of!(PvcsV2, event_flags);
        if let Ok(f) = self.read64(mem, at) {
            let _ = self.write64(mem, at, f | event_flags::IP);
        }
    }

    /// Delivers `ev` (v2 rules, notes §11: every event saves its context in the PVCS and
    /// leaves RSP alone; user events enter at EVENT_ENTRY, supervisor events at
    /// EVENT_ENTRY+512, user `syscall` at LSTAR; RCX = RIP = entry, R11 = 0x202, virtual
    /// RFLAGS = 0x2 with IF cleared; a synchronous event while the vector's high byte is not
    /// zero in supervisor mode is a triple fault).
    pub fn deliver(
        &mut self,
        mem: &dyn GuestRam,
        r: &mut Regs,
        ev: Event,
    ) -> Result<(), TripleFault> {
        let f = self.faults;
        if self.vcpu_struct == 0 {
            return Err(TripleFault(format!(
                "event {ev:?} with no PVCS registered (MSR_PVM_VCPU_STRUCT = 0)"
            )));
        }
        if self.event_entry == 0 && ev != Event::UserSyscall {
            return Err(TripleFault(format!(
                "event {ev:?} with MSR_PVM_EVENT_ENTRY = 0"
            )));
        }
        if matches!(ev, Event::Exception { vector: 8, .. } | Event::Vector(8)) {
            return Err(TripleFault(
                "#DF is a triple fault in PVM (no IDT, notes §5)".into(),
            ));
        }
        if self.generation.rfc() {
            return self.deliver_rfc(mem, r, ev);
        }
        let (vector, code, cr2) = match ev {
            Event::Exception { vector, code, cr2 } => (vector, code, cr2),
            Event::Vector(v) => (v, None, None),
            Event::UserSyscall | Event::Nmi | Event::Mce => (0, None, None),
        };
        let from_user = !self.smod;
        let vec_at = offset_of!(PvcsV2, event_vector);
        // NMI and #MC are named by a bit of the vector word alone (research §1-2).
        let bit = match ev {
            Event::Nmi => vector_bits::NMI,
            Event::Mce => vector_bits::MCE,
            _ => 0,
        };
        if ev == Event::Nmi && f.on(Fault::V2NmiMasked) {
            self.nmi_masked = true;
        }
        if !from_user {
            let word = self.read16(mem, vec_at)?;
            let busy = word & 0xff00;
            // An NMI or #MC while the previous event is not consumed only sets its bit; the
            // guest finds it there, and ERETU delivers it (6.12 `__do_pvm_event`).
            if bit != 0 && busy != 0 && !f.on(Fault::NmiNotHeldOff) {
                return self.write16(mem, vec_at, word | bit);
            }
            if busy != 0 && bit == 0 {
                return Err(TripleFault(format!(
                    "event {ev:?} in supervisor mode while PVCS.event_vector's high byte is {:#x} \
                     (the previous event not consumed, [SPEC-v2])",
                    busy >> 8
                )));
            }
        }
        let (eflags, rip) = self.saved_flags_rip(mem, r);
        self.save_context(mem, r, &V2_USER_CONTEXT, eflags, rip)?;
        // The vector is left alone for SYSCALL, and the error code written only when the
        // event has one (6.12 host `__do_pvm_event`).
        if bit != 0 {
            self.write16(mem, vec_at, bit)?;
        } else if ev != Event::UserSyscall {
            let std = if f.on(Fault::NoStdBit) {
                0
            } else {
                vector_bits::STD
            };
            self.write16(mem, vec_at, u16::from(vector) | std)?;
        }
        if let Some(code) = code {
            self.write16(mem, offset_of!(PvcsV2, event_errcode), code as u16)?;
        }
        self.save_cr2(mem, &V2_USER_CONTEXT, cr2)?;
        let mut entry_offset = if from_user { 0 } else { 512 };
        if from_user {
            self.enter_from_user(mem, r, &V2_USER_CONTEXT)?;
            if f.on(Fault::UserEventAtSupervisorEntry) {
                entry_offset = 512;
            }
        } else if f.on(Fault::SupervisorEventAtUserEntry) {
            entry_offset = 0;
        }
        self.standard_entry(mem, r, ev, entry_offset)
    }

    /// The standard entry every generation ends a delivery with (notes §5.2): RCX = RIP =
    /// the entry (LSTAR for a user SYSCALL, else EVENT_ENTRY + `entry_offset`), R11 = 0x202,
    /// hardware RFLAGS 0x202, the virtual IF cleared.
    fn standard_entry(
        &mut self,
        mem: &dyn GuestRam,
        r: &mut Regs,
        ev: Event,
        entry_offset: u64,
    ) -> Result<(), TripleFault> {
        let entry = if ev == Event::UserSyscall {
            self.lstar
        } else {
            self.event_entry + entry_offset
        };
        r.rip = entry;
        r.rcx = entry;
        r.r11 = rflags::FIXED | rflags::IF;
        r.rflags = rflags::FIXED | rflags::IF;
        if !self.faults.on(Fault::IfNotClearedOnDelivery) {
            self.set_if(mem, false)?;
        }
        self.halted = false;
        Ok(())
    }

    /// Writes `v` at guest-virtual `va` in supervisor mode (the supervisor event frame); a
    /// fault is a triple fault (RFC host `do_pvm_supervisor_exception`).
    fn write_virt64(&self, mem: &dyn GuestRam, va: u64, v: u64) -> Result<(), TripleFault> {
        let ctx = crate::engine::walk_ctx(self);
        let t = crate::mmu::walk(mem, &ctx, va, crate::mmu::Access::Write).map_err(|pf| {
            TripleFault(format!(
                "the supervisor event frame at {va:#x} is not writable (#PF {:#x})",
                pf.code
            ))
        })?;
        mem.write_u64(t.page | (va & 0xfff), v)
            .map_err(|e| TripleFault(format!("supervisor event frame at {va:#x}: {e}")))
    }

    /// Reads guest-virtual `va` in supervisor mode (ERETS's frame); a fault is a triple fault
    /// (RFC host `handle_synthetic_instruction_return_supervisor`).
    fn read_virt64(&self, mem: &dyn GuestRam, va: u64) -> Result<u64, TripleFault> {
        let ctx = crate::engine::walk_ctx(self);
        let t = crate::mmu::walk(mem, &ctx, va, crate::mmu::Access::Read).map_err(|pf| {
            TripleFault(format!(
                "ERETS: the frame at {va:#x} is not readable (#PF {:#x})",
                pf.code
            ))
        })?;
        mem.read_u64(t.page | (va & 0xfff))
            .map_err(|e| TripleFault(format!("ERETS frame at {va:#x}: {e}")))
    }

    /// Delivers `ev` the RFC v1 / "mid" way (notes §5): from user mode the user context goes
    /// into the PVCS, CR3 swaps with SWITCH_CR3, RSP = SUPERVISOR_RSP, entry +0 (LSTAR for
    /// SYSCALL); a supervisor exception (vector < 32) writes a `SupervisorEvent` below the red
    /// zone and enters at +256; a supervisor interrupt saves its context in the PVCS, aligns
    /// RSP below the red zone and enters at +512. Then RCX = RIP = entry, R11 = 0x202, IF
    /// cleared. "mid": a non-NMI event while `event_flags.EF` is clear is a triple fault.
    fn deliver_rfc(
        &mut self,
        mem: &dyn GuestRam,
        r: &mut Regs,
        ev: Event,
    ) -> Result<(), TripleFault> {
        let f = self.faults;
        let (vector, code, cr2) = match ev {
            Event::Exception { vector, code, cr2 } => (vector, code, cr2),
            Event::Vector(v) => (v, None, None),
            Event::UserSyscall => (0, None, None),
            // Vector 2 through the exception paths; KVM's NMI mask is set until ERETU/ERETS
            // (RFC `pvm_inject_nmi`, research §1).
            Event::Nmi => {
                if !f.on(Fault::NmiNotHeldOff) {
                    self.nmi_masked = true;
                }
                (2, None, None)
            }
            Event::Mce => (18, None, None),
        };
        if self.generation == Generation::Mid && vector != 2 {
            let flags = self.read64(mem, offset_of!(PvcsV1, event_flags))?;
            if flags & event_flags::EF == 0 {
                return Err(TripleFault(format!(
                    "event {ev:?} while PVCS.event_flags.EF is clear (mid)"
                )));
            }
        }
        let from_user = !self.smod;
        let (eflags, rip) = self.saved_flags_rip(mem, r);
        self.save_cr2(mem, &RFC_USER_CONTEXT, cr2)?;
        let pvcs_context = |p: &Self, mem: &dyn GuestRam, r: &Regs| -> Result<(), TripleFault> {
            p.save_context(mem, r, &RFC_USER_CONTEXT, eflags, rip)?;
            if ev != Event::UserSyscall {
                p.write32(mem, offset_of!(PvcsV1, event_vector), u32::from(vector))?;
                if let Some(code) = code {
                    p.write32(mem, offset_of!(PvcsV1, event_errcode), code)?;
                }
            }
            Ok(())
        };
        let mut entry_offset;
        if from_user {
            pvcs_context(self, mem, r)?;
            self.enter_from_user(mem, r, &RFC_USER_CONTEXT)?;
            r.rsp = self.supervisor_rsp;
            if self.switch_cr3 != 0 {
                core::mem::swap(&mut self.cr3, &mut self.switch_cr3);
            }
            entry_offset = up::V1_USER_ENTRY_OFFSET;
            if f.on(Fault::UserEventAtSupervisorEntry) {
                entry_offset = up::V1_INTERRUPT_ENTRY_OFFSET;
            }
        } else if vector < 32 {
            let redzone = if self.generation == Generation::V1 && !f.on(Fault::FrameWithoutRedzone)
            {
                self.redzone
            } else {
                0
            };
            let frame = (r.rsp.wrapping_sub(redzone) & !15).wrapping_sub(64);
            let kernel_cs = (self.star >> 32) & 0xfffc;
            let errcode = (u64::from(vector) << 32) | u64::from(code.unwrap_or(0));
            let words = [
                errcode,
                rip,
                kernel_cs,
                eflags,
                r.rsp,
                kernel_cs + 8,
                r.rcx,
                r.r11,
            ];
            for (i, w) in words.into_iter().enumerate() {
                self.write_virt64(mem, frame + 8 * i as u64, w)?;
            }
            r.rsp = frame;
            entry_offset = up::V1_EXCEPTION_ENTRY_OFFSET;
            if f.on(Fault::SupervisorEventAtUserEntry) {
                entry_offset = up::V1_USER_ENTRY_OFFSET;
            }
        } else {
            pvcs_context(self, mem, r)?;
            let redzone = if self.generation == Generation::V1 {
                self.redzone
            } else {
                0
            };
            r.rsp = r.rsp.wrapping_sub(redzone) & !15;
            entry_offset = up::V1_INTERRUPT_ENTRY_OFFSET;
            if f.on(Fault::SupervisorEventAtUserEntry) {
                entry_offset = up::V1_USER_ENTRY_OFFSET;
            }
        }
        self.standard_entry(mem, r, ev, entry_offset)
    }

    /// ERETU, RFC way (notes §4.3): SUPERVISOR_RSP := RSP, CR3 swaps with SWITCH_CR3, IP
    /// cleared, user RIP/RSP/RFLAGS/RCX/R11/CS/SS/GS base from the PVCS; only the host's user
    /// selectors.
    fn eretu_rfc(
        &mut self,
        mem: &dyn GuestRam,
        r: &mut Regs,
    ) -> Result<Option<Event>, TripleFault> {
        let (cs, ss) = match self.user_selectors(mem, &RFC_USER_CONTEXT)? {
            Ok(sel) => sel,
            Err(gp) => return Ok(Some(gp)),
        };
        self.supervisor_rsp = r.rsp;
        if self.switch_cr3 != 0 {
            core::mem::swap(&mut self.cr3, &mut self.switch_cr3);
        }
        let at = offset_of!(PvcsV1, event_flags);
        let fl = self.read64(mem, at)?;
        self.write64(mem, at, fl & !event_flags::IP)?;
        self.load_user_context(mem, r, &RFC_USER_CONTEXT, (cs, ss))?;
        Ok(noncanonical_return(r))
    }

    /// ERETU's selector check, the same in every generation: the PVCS's user CS and SS (RPL
    /// forced to 3) must be the host's user selectors, else #GP(0) at the ERETU (notes §4.3,
    /// a software check before the VM entry).
    fn user_selectors(
        &self,
        mem: &dyn GuestRam,
        at: &UserContextAt,
    ) -> Result<Result<(u16, u16), Event>, TripleFault> {
        let cs = self.read16(mem, at.user_cs)? | 3;
        let ss = self.read16(mem, at.user_ss)? | 3;
        if !(cs == up::HOST_USER_CS || cs == up::HOST_USER32_CS) || ss != up::HOST_USER_DS {
            return Ok(Err(GP0));
        }
        Ok(Ok((cs, ss)))
    }

    /// The user context ERETU loads from the PVCS, the same in every generation but for the
    /// layout (and the RSP, which only the RFC PVCS holds): RFLAGS (the flags user code may
    /// hold, with IF), RIP, RCX, R11, the GS base, CS/SS; then user mode.
    fn load_user_context(
        &mut self,
        mem: &dyn GuestRam,
        r: &mut Regs,
        at: &UserContextAt,
        (cs, ss): (u16, u16),
    ) -> Result<(), TripleFault> {
        let eflags = u64::from(self.read32(mem, at.eflags)?);
        r.rflags = (eflags & rflags::ALLOWED) | rflags::FIXED | rflags::IF;
        r.rip = self.read64(mem, at.rip)?;
        if let Some(rsp) = at.rsp {
            r.rsp = self.read64(mem, rsp)?;
        }
        r.rcx = self.read64(mem, at.rcx)?;
        if !self.faults.on(Fault::EretuIgnoresR11) {
            r.r11 = self.read64(mem, at.r11)?;
        }
        if !self.faults.on(Fault::EretuIgnoresUserGsbase) {
            r.gs_base = self.read64(mem, at.user_gsbase)?;
        }
        r.cs = cs;
        r.ss = ss;
        self.smod = false;
        self.nmi_masked = false;
        self.flush_tlb = true;
        Ok(())
    }

    /// The RFLAGS and RIP an event saves: from supervisor mode with the virtual IF in place of
    /// the hardware's (which is always 1), from user mode as they are.
    fn saved_flags_rip(&self, mem: &dyn GuestRam, r: &Regs) -> (u64, u64) {
        let f = self.faults;
        let mut eflags = r.rflags;
        if self.smod {
            let virtual_if = if self.interrupts_enabled(mem) {
                rflags::IF
            } else {
                0
            };
            eflags = (eflags & !rflags::IF) | virtual_if;
        }
        if f.on(Fault::PvcsEflagsLost) {
            eflags &= !0x8d5;
        }
        let rip = if f.on(Fault::PvcsRipOffByOne) {
            r.rip + 1
        } else {
            r.rip
        };
        (eflags, rip)
    }

    /// The interrupted context into the PVCS: RFLAGS, RIP, RCX, R11 (and RSP where the layout
    /// holds it).
    fn save_context(
        &self,
        mem: &dyn GuestRam,
        r: &Regs,
        at: &UserContextAt,
        eflags: u64,
        rip: u64,
    ) -> Result<(), TripleFault> {
        self.write32(mem, at.eflags, eflags as u32)?;
        self.write64(mem, at.rip, rip)?;
        if let Some(rsp) = at.rsp {
            self.write64(mem, rsp, r.rsp)?;
        }
        self.write64(mem, at.rcx, r.rcx)?;
        self.write64(mem, at.r11, r.r11)
    }

    /// A #PF's CR2, into the PVCS and the vCPU.
    fn save_cr2(
        &mut self,
        mem: &dyn GuestRam,
        at: &UserContextAt,
        cr2: Option<u64>,
    ) -> Result<(), TripleFault> {
        if let Some(a) = cr2 {
            let a = if self.faults.on(Fault::WrongCr2) {
                a ^ 0x1000
            } else {
                a
            };
            self.write64(mem, at.cr2, a)?;
            self.cr2 = a;
        }
        Ok(())
    }

    /// An event from user mode, every generation: the user selectors and GS base into the
    /// PVCS (PKRU 0), the kernel's GS base, the host's user selectors in hardware, supervisor
    /// mode.
    fn enter_from_user(
        &mut self,
        mem: &dyn GuestRam,
        r: &mut Regs,
        at: &UserContextAt,
    ) -> Result<(), TripleFault> {
        self.write16(mem, at.user_cs, r.cs)?;
        self.write16(mem, at.user_ss, r.ss)?;
        self.write64(mem, at.user_gsbase, r.gs_base)?;
        self.write32(mem, at.pkru, 0)?;
        r.gs_base = self.kernel_gs_base;
        r.cs = up::HOST_USER_CS;
        r.ss = up::HOST_USER_DS;
        self.smod = true;
        self.flush_tlb = true;
        Ok(())
    }

    /// ERETS (RFC, notes §4.4): RIP, RFLAGS (its IF into the PVCS), RSP, RCX, R11 from the
    /// `SupervisorEvent` at RSP; CS/SS unchanged; NMIs unmasked. A fault reading it is a
    /// triple fault.
    fn erets(&mut self, mem: &dyn GuestRam, r: &mut Regs) -> Result<(), TripleFault> {
        let at = r.rsp;
        let word = |p: &Self, field: usize| p.read_virt64(mem, at + field as u64);
        let rip = word(self, offset_of!(up::SupervisorEvent, rip))?;
        let fl = word(self, offset_of!(up::SupervisorEvent, rflags))?;
        let rsp = word(self, offset_of!(up::SupervisorEvent, rsp))?;
        let rcx = word(self, offset_of!(up::SupervisorEvent, rcx))?;
        let r11 = word(self, offset_of!(up::SupervisorEvent, r11))?;
        self.set_if(mem, fl & rflags::IF != 0)?;
        r.rip = rip;
        r.rsp = rsp;
        r.rcx = rcx;
        r.r11 = r11;
        r.rflags = (fl & rflags::ALLOWED) | rflags::FIXED | rflags::IF;
        self.nmi_masked = false;
        Ok(())
    }

    /// ERETU (notes §11: loads CS, SS, GSBASE, PKRU, RFLAGS, RIP, RCX, R11 from the PVCS; RSP
    /// as is). Selectors other than the host's user ones are refused with #GP, as a failed VM
    /// entry is (notes §5.1, exit reason 1025).
    fn eretu(&mut self, mem: &dyn GuestRam, r: &mut Regs) -> Result<Option<Event>, TripleFault> {
        let (cs, ss) = match self.user_selectors(mem, &V2_USER_CONTEXT)? {
            Ok(sel) => sel,
            Err(gp) => return Ok(Some(gp)),
        };
        self.load_user_context(mem, r, &V2_USER_CONTEXT, (cs, ss))?;
        // The 6.12 slow path sets event_vector to STD and leaves event_flags alone (IP is not
        // cleared, contrary to the spec), docs/research/pvm-v2-host-semantics.md §2; an NMI
        // whose bit the vector word held is delivered now, as a user event (#MC would come
        // first; the model's VMM injects none), research §1.
        let pending = self.read16(mem, offset_of!(PvcsV2, event_vector))?;
        self.write16(mem, offset_of!(PvcsV2, event_vector), vector_bits::STD)?;
        // #MC first; an NMI pending too then meets the #MC's unconsumed vector word and only
        // sets its bit (research §1).
        if pending & vector_bits::MCE != 0 {
            self.nmi_pending |= pending & vector_bits::NMI != 0;
            return Ok(Some(Event::Mce));
        }
        if pending & vector_bits::NMI != 0 {
            return Ok(Some(Event::Nmi));
        }
        Ok(noncanonical_return(r))
    }

    /// A `syscall` executed in supervisor mode; `r.rip` is the address after it. Returns an
    /// event to deliver when the instruction itself faulted.
    pub fn supervisor_syscall(
        &mut self,
        mem: &dyn GuestRam,
        r: &mut Regs,
    ) -> Result<(SupervisorSyscall, Option<Event>), TripleFault> {
        // What SYSCALL itself does to the registers (SDM: RCX = next RIP, R11 = RFLAGS);
        // ERETU and the hypercall path then put their values in.
        r.rcx = r.rip;
        r.r11 = r.rflags;
        if self.retu_rip != 0 && r.rip == self.retu_rip.wrapping_add(2) {
            let ev = if self.generation.rfc() {
                self.eretu_rfc(mem, r)?
            } else {
                self.eretu(mem, r)?
            };
            return Ok((SupervisorSyscall::Eretu, ev));
        }
        if self.generation.rfc() && self.rets_rip != 0 && r.rip == self.rets_rip.wrapping_add(2) {
            self.erets(mem, r)?;
            return Ok((SupervisorSyscall::Erets, None));
        }
        // The hypercall convention: RAX = number, RBX, R10 (the caller's RCX), RDX, RSI;
        // result in RAX; the host copies R10 into RCX and back (notes §4.1).
        let (nr, a0, a1, a2) = (r.rax, r.rbx, r.r10, r.rdx);
        let result = self.hypercall(mem, nr, a0, a1, a2);
        r.rax = result as u64;
        // SYSCALL left RCX = next RIP and R11 = RFLAGS in hardware; the guest's stub restores
        // its own copies.
        r.rcx = r.r10;
        r.r11 = r.rflags;
        Ok((SupervisorSyscall::Hypercall, None))
    }

    /// Hypercall `nr` with its three arguments, as the host serves it from supervisor mode:
    /// the value for RAX (notes §4).
    pub fn hypercall(&mut self, mem: &dyn GuestRam, nr: u64, a0: u64, a1: u64, a2: u64) -> i64 {
        let f = self.faults;
        match nr {
            hc::LOAD_PGTBL => {
                // v2: LOAD_PGTBL(flags, cr3); flags bit 0 flushes (notes §11). RFC: a third
                // argument, the user CR3, goes to SWITCH_CR3 (notes §4.2).
                self.cr3 = a1;
                if self.generation.rfc() {
                    self.switch_cr3 = a2;
                }
                // (Without the flag the model flushes too: a host may, and a guest must not
                // count on stale entries.)
                if a0 & 1 != 0 && f.on(Fault::Cr3KeepsStale) {
                    self.keep_stale = Some(None);
                } else {
                    self.flush_tlb = true;
                }
                0
            }
            hc::IRQ_WIN => {
                let at = offset_of!(PvcsV2, event_flags);
                if let Ok(fl) = self.read64(mem, at) {
                    let _ = self.write64(mem, at, fl & !event_flags::IP);
                }
                0
            }
            hc::IRQ_HALT => {
                let _ = self.set_if(mem, true);
                self.halted = !f.on(Fault::HltReturnsAtOnce);
                0
            }
            hc::TLB_FLUSH | hc::TLB_FLUSH_CURRENT => {
                if f.on(Fault::TlbFlushKeepsStale) {
                    self.keep_stale = Some(None);
                } else {
                    self.flush_tlb = true;
                }
                0
            }
            hc::TLB_INVLPG => {
                if f.on(Fault::InvlpgKeepsStale) {
                    self.keep_stale = Some(Some(a0));
                } else {
                    self.flush_tlb = true;
                }
                0
            }
            // The selector's base from the host GDT as it is now (research table: RAX = the
            // resulting GS base; the guest keeps it in PVCS.user_gsbase).
            hc::LOAD_GS => {
                let mut gdt = HOST_GDT;
                gdt[GDT_ENTRY_TLS_MIN..GDT_ENTRY_TLS_MIN + 3].copy_from_slice(&self.tls);
                gs_base_of(&gdt, a0 as u16) as i64
            }
            hc::RDMSR => match self.rdmsr(a0 as u32) {
                Some(v) if f.on(Fault::HcRdmsrWrong) => (v + 1) as i64,
                Some(v) => v as i64,
                None => 0,
            },
            hc::WRMSR => match self.wrmsr(a0 as u32, a1) {
                Ok(()) => 0,
                Err(_) if f.on(Fault::HcWrmsrAcceptsUnknown) => 0,
                Err(_) => EIO,
            },
            // RAX is not written: it keeps the hypercall number.
            hc::LOAD_TLS => {
                if !f.on(Fault::LoadTlsIgnored) {
                    self.tls = [a0, a1, a2].map(tls_descriptor);
                    self.tls_dirty = true;
                }
                nr as i64
            }
            _ if f.on(Fault::UnknownHypercallSucceeds) => 0,
            _ => KVM_ENOSYS,
        }
    }

    /// RDMSR: the value, or `None` (#GP).
    pub fn rdmsr(&self, idx: u32) -> Option<u64> {
        Some(match idx {
            up::MSR_LINEAR_ADDRESS_RANGE => self.range_msr,
            up::MSR_VCPU_STRUCT => self.vcpu_struct,
            up::MSR_EVENT_ENTRY => self.event_entry,
            up::MSR_RETU_RIP => self.retu_rip,
            up::MSR_RETS_RIP if self.generation.rfc() => self.rets_rip,
            i if Some(i) == self.generation.msr_supervisor_rsp() => self.supervisor_rsp,
            i if Some(i) == self.generation.msr_switch_cr3() => self.switch_cr3,
            up::v1::MSR_SUPERVISOR_REDZONE if self.generation == Generation::V1 => self.redzone,
            msr::EFER => self.efer,
            msr::STAR => self.star,
            msr::LSTAR => self.lstar,
            msr::CSTAR => self.cstar,
            msr::SFMASK => self.fmask,
            msr::KERNEL_GS_BASE => self.kernel_gs_base,
            msr::TSC_AUX => self.tsc_aux,
            msr::PAT => self.pat,
            msr::APIC_BASE => self.apic_base,
            msr::TSC => {
                if self.faults.on(Fault::TscMsrZero) {
                    0
                } else {
                    crate::engine::host_tsc()
                }
            }
            msr::TSC_DEADLINE => self.tsc_deadline,
            msr::MISC_ENABLE => 1,
            msr::X2APIC_FIRST..msr::X2APIC_END => return self.apic_read(idx),
            // Fixed-range MTRRs, WC, 8 variable ranges (KVM's `KVM_MTRR_CAP`).
            msr::MTRRCAP => 0x508,
            // No MCE banks beyond what KVM reports by default: MCG_CAP read-only.
            msr::MCG_CAP => 0,
            _ if stored(idx) => self.stored_msrs.get(&idx).copied().unwrap_or(0),
            _ => return None,
        })
    }

    /// WRMSR: `Err` is #GP or a triple fault, with the rule (v2 validity checks, notes §2 and
    /// §11).
    pub fn wrmsr(&mut self, idx: u32, v: u64) -> Result<(), WrmsrError> {
        self.wrmsr_gp(idx, v).map_err(WrmsrError::Gp)?;
        if idx == up::MSR_EVENT_ENTRY && !self.faults.on(Fault::EventEntryNonCanonical) {
            let ok = canonical(v) && canonical(v.wrapping_add(512));
            if !ok {
                // 6.12 host `pvm_set_msr`: a non-canonical EVENT_ENTRY is a triple fault.
                return Err(WrmsrError::TripleFault(format!(
                    "non-canonical MSR_PVM_EVENT_ENTRY {v:#x}"
                )));
            }
        }
        Ok(())
    }

    /// KVM_SET_MSRS from the VMM (`host_initiated`): as [`Pvm::wrmsr`], except that STAR is
    /// stored without the guest's checks (6.12 and RFC `pvm_set_msr`: `if
    /// (!msr_info->host_initiated)` guards them; docs/research/pvm-nmi-mce-eretu-star.md §4).
    pub fn wrmsr_host(&mut self, idx: u32, v: u64) -> Result<(), WrmsrError> {
        if idx == msr::STAR {
            self.star = v;
            return Ok(());
        }
        self.wrmsr(idx, v)
    }

    fn wrmsr_gp(&mut self, idx: u32, v: u64) -> Result<(), String> {
        let f = self.faults;
        match idx {
            up::MSR_LINEAR_ADDRESS_RANGE => {
                let (s, e) = range_of(v);
                let (hs, he) = range_of(self.range_msr);
                if v & 0xff00_ff00_ff00_ff00 != 0xff00_ff00_ff00_ff00
                    || s < 256
                    || s >= e
                    || s < hs
                    || e > he
                {
                    return Err(format!(
                        "range MSR value {v:#x} is not a sub-range of the host's"
                    ));
                }
                self.range_msr = v;
                self.flush_tlb = true;
            }
            up::MSR_VCPU_STRUCT => {
                if v & 0xfff != 0 && !f.on(Fault::VcpuStructUnaligned) {
                    return Err(format!("MSR_PVM_VCPU_STRUCT {v:#x} not page aligned"));
                }
                self.vcpu_struct = v;
            }
            // Checked by `wrmsr` (a triple fault, not a #GP).
            up::MSR_EVENT_ENTRY => self.event_entry = v,
            up::MSR_RETU_RIP => self.retu_rip = v,
            up::MSR_RETS_RIP if self.generation.rfc() => self.rets_rip = v,
            i if Some(i) == self.generation.msr_supervisor_rsp() => self.supervisor_rsp = v,
            i if Some(i) == self.generation.msr_switch_cr3() => self.switch_cr3 = v,
            up::v1::MSR_SUPERVISOR_REDZONE if self.generation == Generation::V1 => self.redzone = v,
            msr::EFER => {
                if v & !(1 | (1 << 8) | (1 << 10) | (1 << 11)) != 0 {
                    return Err(format!("EFER {v:#x} sets reserved bits"));
                }
                self.efer = v | 1 | (1 << 8) | (1 << 10);
            }
            msr::STAR => {
                let kernel_cs = (v >> 32) & 0xfffc;
                let user_cs = ((v >> 48) | 3) + 16;
                if kernel_cs == 0 || user_cs != u64::from(up::HOST_USER_CS) {
                    return Err(format!("STAR {v:#x}: kernel CS 0 or user CS not __USER_CS"));
                }
                self.star = v;
            }
            msr::LSTAR => {
                if !canonical(v) {
                    return Err(format!("LSTAR {v:#x} not canonical"));
                }
                self.lstar = v;
            }
            msr::CSTAR => self.cstar = v,
            msr::SFMASK => self.fmask = v,
            msr::KERNEL_GS_BASE => {
                if !canonical(v) {
                    return Err(format!("KERNEL_GS_BASE {v:#x} not canonical"));
                }
                self.kernel_gs_base = v;
            }
            msr::TSC_AUX => {
                if v >> 32 != 0 {
                    return Err(format!("TSC_AUX {v:#x} has high bits"));
                }
                self.tsc_aux = v;
                self.tsc_aux_dirty = true;
            }
            msr::PAT => self.pat = v,
            msr::TSC_DEADLINE => self.tsc_deadline = v,
            msr::APIC_BASE => self.apic_base = v,
            msr::MISC_ENABLE => {}
            msr::X2APIC_FIRST..msr::X2APIC_END => return self.apic_write(idx, v),
            msr::MTRRCAP | msr::MCG_CAP => return Err(format!("MSR {idx:#x} is read-only")),
            msr::MTRR_DEF_TYPE if v & !0xcff != 0 => {
                return Err(format!("MTRR_DEF_TYPE {v:#x} sets reserved bits"));
            }
            msr::DEBUGCTL if v != 0 => {
                return Err(format!(
                    "DEBUGCTL {v:#x}: the model offers no debug-control bits"
                ));
            }
            _ if stored(idx) => {
                self.stored_msrs.insert(idx, v);
            }
            _ => return Err(format!("unknown MSR {idx:#x}")),
        }
        Ok(())
    }

    fn apic_read(&self, idx: u32) -> Option<u64> {
        match idx {
            0x802 => Some(u64::from(self.apic_id)),
            0x803 => Some(0x5_0014),
            0x808 => Some(self.cr8 << 4),
            0x80f => Some(*self.apic.get(&idx).unwrap_or(&0xff)),
            0x810..=0x817 => Some(
                self.isr[((idx - 0x810) / 2) as usize] >> (32 * ((idx - 0x810) % 2)) & 0xffff_ffff,
            ),
            0x820..=0x827 => Some(
                self.irr[((idx - 0x820) / 2) as usize] >> (32 * ((idx - 0x820) % 2)) & 0xffff_ffff,
            ),
            0x832 | 0x835..=0x838 | 0x83e | 0x830 => Some(*self.apic.get(&idx).unwrap_or(&0)),
            msr::X2APIC_TIMER_CUR => Some(self.timer_current(apic_clock_ns())),
            _ => None,
        }
    }

    fn apic_write(&mut self, idx: u32, v: u64) -> Result<(), String> {
        match idx {
            0x808 => self.cr8 = (v >> 4) & 0xf,
            0x80b => {
                // EOI: clear the highest in-service vector; the I/O APIC hears of it (the
                // engine passes it on before the vCPU runs again).
                if let Some(vec) = highest(&self.isr) {
                    self.isr[usize::from(vec / 64)] &= !(1 << (vec % 64));
                    self.eois.push(vec);
                }
            }
            msr::X2APIC_TIMER_INIT => {
                self.apic.insert(idx, v & 0xffff_ffff);
                // In TSC-deadline mode the initial count is ignored (SDM 11.5.4.1).
                let tsc_deadline_mode =
                    (self.apic.get(&msr::X2APIC_LVT_TIMER).unwrap_or(&0) >> 17) & 3 == 2;
                self.lvt_timer = (v & 0xffff_ffff != 0 && !tsc_deadline_mode)
                    .then(|| (apic_clock_ns(), v & 0xffff_ffff));
            }
            0x80f | 0x832 | 0x835..=0x837 | 0x83e => {
                self.apic.insert(idx, v);
            }
            0x83f => self.request_interrupt((v & 0xff) as u8),
            0x830 => {
                self.apic.insert(idx, v);
                self.send_ipi(v);
            }
            _ => return Err(format!("x2APIC MSR {idx:#x} is not writable")),
        }
        Ok(())
    }

    /// An ICR write (x2APIC: destination in bits 63:32, SDM Vol. 3A 11.6.1): fixed (mode 0)
    /// or NMI (mode 4) delivery to the destination, self, all, or all but self; other modes
    /// are ignored (the model's vCPUs all run from the start).
    fn send_ipi(&mut self, icr: u64) {
        let (mode, vector) = ((icr >> 8) & 7, (icr & 0xff) as u8);
        if mode != 0 && mode != 4 {
            return;
        }
        let me = self.apic_id as usize;
        let ids = self.bus.as_ref().map_or(me..me + 1, |b| b.ids());
        let targets: Vec<usize> = match (icr >> 18) & 3 {
            0 => vec![(icr >> 32) as usize],
            1 => vec![me],
            2 => ids.collect(),
            _ => ids.filter(|&t| t != me).collect(),
        };
        for t in targets {
            match (t == me, mode, self.bus.as_ref()) {
                (true, 4, _) => self.nmi_pending = true,
                (true, _, _) => self.request_interrupt(vector),
                (false, 4, Some(bus)) => bus.post_nmi(t),
                (false, _, Some(bus)) => bus.post(t, vector),
                (false, _, None) => {}
            }
        }
    }

    /// Interrupts for the local APICs with the given x2APIC IDs (an I/O APIC's deliveries):
    /// into this vCPU's IRR, or another vCPU's mailbox (lost when there is no such vCPU).
    pub fn post_interrupts(
        &mut self,
        deliveries: impl IntoIterator<Item = crate::devices::Delivery>,
    ) {
        for (dest, vector) in deliveries {
            if dest == self.apic_id {
                self.request_interrupt(vector);
            } else if let Some(bus) = &self.bus {
                bus.post(dest as usize, vector);
            }
        }
    }

    /// Moves the interrupts other vCPUs sent into the IRR (and an NMI into `nmi_pending`).
    pub fn take_mail(&mut self) {
        let Some(bus) = self.bus.clone() else {
            return;
        };
        let (irr, nmi) = bus.take(self.apic_id as usize);
        for (mine, new) in self.irr.iter_mut().zip(irr) {
            *mine |= new;
        }
        self.nmi_pending |= nmi;
    }

    /// Sets vector `v` in the IRR.
    pub fn request_interrupt(&mut self, v: u8) {
        if v >= 16 {
            self.irr[usize::from(v / 64)] |= 1 << (v % 64);
        }
    }

    /// The vector to deliver now, if any (highest IRR above the ISR's and the TPR's class),
    /// moved from the IRR to the ISR.
    pub fn take_interrupt(&mut self) -> Option<u8> {
        let v = highest(&self.irr)?;
        let class = u64::from(v >> 4);
        if highest(&self.isr).is_some_and(|s| u64::from(s >> 4) >= class) || self.cr8 >= class {
            return None;
        }
        self.irr[usize::from(v / 64)] &= !(1 << (v % 64));
        self.isr[usize::from(v / 64)] |= 1 << (v % 64);
        Some(v)
    }

    /// Whether an interrupt waits (in the IRR, or injected by the VMM).
    pub fn interrupt_waiting(&self) -> bool {
        self.ext_irq.is_some() || highest(&self.irr).is_some()
    }

    /// Whether an NMI the VMM injected can be delivered now: once a PVCS is registered, and
    /// (RFC) while KVM's NMI mask is clear; the virtual IF does not matter (research §1).
    pub fn nmi_allowed(&self) -> bool {
        self.vcpu_struct != 0 && !(self.keeps_nmi_mask() && self.nmi_masked)
    }

    /// Whether the host keeps KVM's NMI mask from an NMI's delivery to ERETU/ERETS: the RFC
    /// hosts do (`pvm_inject_nmi`), v2 does not (research §1).
    fn keeps_nmi_mask(&self) -> bool {
        self.generation.rfc() || self.faults.on(Fault::V2NmiMasked)
    }

    /// KVM_GET_VCPU_EVENTS' NMI state: (pending, masked). v2 reports NMIs masked only while
    /// no PVCS is registered (`pvm_get_nmi_mask`); RFC reports its mask.
    pub fn nmi_state(&self) -> (bool, bool) {
        let masked = if self.keeps_nmi_mask() {
            self.nmi_masked
        } else {
            self.vcpu_struct == 0
        };
        (self.nmi_pending, masked)
    }

    /// The interrupt to deliver now, if any: the VMM's injected one first (it sits in no
    /// APIC register), else [`Pvm::take_interrupt`].
    pub fn next_interrupt(&mut self) -> Option<u8> {
        self.ext_irq.take().or_else(|| self.take_interrupt())
    }

    /// The LVT timer's divisor (TDCR encoding, SDM vol. 3A 11.5.4).
    fn timer_divisor(&self) -> u64 {
        let d = *self.apic.get(&msr::X2APIC_TIMER_DIV).unwrap_or(&0);
        let code = (d & 3) | ((d >> 1) & 4);
        if code == 7 { 1 } else { 2 << code }
    }

    /// The LVT timer's current count at `now_ns` (0 when it is not running).
    fn timer_current(&self, now_ns: u64) -> u64 {
        let Some((start, count)) = self.lvt_timer else {
            return 0;
        };
        let ticks = now_ns.saturating_sub(start) / self.timer_divisor();
        count.saturating_sub(ticks)
    }

    /// How long until an armed timer fires (`None`: none is armed), for the engine's
    /// watchdog: the TSC deadline at `tsc_khz`, the LVT timer on the APIC clock.
    pub fn timer_due_in(&self, now_tsc: u64, tsc_khz: u32) -> Option<std::time::Duration> {
        let tsc = (self.tsc_deadline != 0).then(|| {
            let cycles = self.tsc_deadline.saturating_sub(now_tsc);
            cycles.saturating_mul(1_000_000) / u64::from(tsc_khz.max(1))
        });
        let lvt = self.lvt_timer.map(|(start, count)| {
            (start + count.saturating_mul(self.timer_divisor())).saturating_sub(apic_clock_ns())
        });
        [tsc, lvt]
            .into_iter()
            .flatten()
            .min()
            .map(std::time::Duration::from_nanos)
    }

    /// Fires the TSC-deadline timer if it expired, and the one-shot/periodic LVT timer (a
    /// 1 GHz APIC bus, as KVM's: one count per nanosecond before the divisor).
    pub fn tick(&mut self, now: u64) {
        let lvt = *self.apic.get(&msr::X2APIC_LVT_TIMER).unwrap_or(&(1 << 16));
        if let Some((start, count)) = self.lvt_timer {
            let now_ns = apic_clock_ns();
            let period = count.saturating_mul(self.timer_divisor());
            if now_ns.saturating_sub(start) >= period {
                self.lvt_timer = if lvt & (1 << 17) != 0 && count != 0 {
                    Some((start + period, count))
                } else {
                    None
                };
                if lvt & (1 << 16) == 0 {
                    self.request_interrupt((lvt & 0xff) as u8);
                }
            }
        }
        if self.tsc_deadline != 0 && now >= self.tsc_deadline {
            self.tsc_deadline = 0;
            let lvt = *self.apic.get(&0x832).unwrap_or(&(1 << 16));
            if lvt & (1 << 16) == 0 {
                self.request_interrupt((lvt & 0xff) as u8);
            }
        }
    }

    /// The CPUID the guest sees ([`cpuid`]).
    pub fn cpuid(&self, leaf: u32, sub: u32) -> [u32; 4] {
        cpuid(self.faults, leaf, sub)
    }
}

/// The leaves (and subleaves) the model's VMM configures, in table order: what
/// `KVM_SET_CPUID2` would have been given. Leaves 7 and 0xd have significant subleaves.
pub const CPUID_LEAVES: [(u32, u32); 11] = [
    (0, 0),
    (1, 0),
    (7, 0),
    (0xd, 0),
    (0xd, 1),
    (0x4000_0000, 0),
    (0x4000_0001, 0),
    (up::CPUID_VENDOR_FEATURES, 0),
    (0x8000_0000, 0),
    (0x8000_0001, 0),
    (0x8000_0008, 0),
];

/// Whether `leaf` has significant subleaves in [`CPUID_LEAVES`].
pub const fn subleaf_significant(leaf: u32) -> bool {
    matches!(leaf, 7 | 0xd)
}

/// The configured entry for `leaf`/`sub`, if the VMM configured one.
pub fn configured_cpuid(faults: Faults, leaf: u32, sub: u32) -> Option<[u32; 4]> {
    CPUID_LEAVES
        .iter()
        .any(|&(l, s)| l == leaf && (!subleaf_significant(l) || s == sub))
        .then(|| cpuid(faults, leaf, sub))
}

/// CPUID as the guest sees it, plain or synthetic (notes §1): the host traps CPUID (CPUID
/// faulting) and answers from the VMM's table, KVM leaves with the PVM signature, a modest
/// x86-64 CPU for the rest; zeros for a leaf the VMM did not configure.
pub fn cpuid(faults: Faults, leaf: u32, _sub: u32) -> [u32; 4] {
    let kvm = u32::from_le_bytes(*b"KVMK");
    let vmk = u32::from_le_bytes(*b"VMKV");
    let m = u32::from_le_bytes(*b"M\0\0\0");
    match leaf {
        0 => [
            0xd,
            u32::from_le_bytes(*b"Genu"),
            u32::from_le_bytes(*b"ntel"),
            u32::from_le_bytes(*b"ineI"),
        ],
        // SSE3, SSSE3, CX16, PCID, SSE4.1/4.2, x2APIC, TSC-deadline, RDRAND (it runs
        // unprivileged, in hardware, on a host CPU that has it), hypervisor; FPU..SSE2.
        1 => [
            0x000306a9,
            0x0000_0800,
            0x8198_2201 | (1 << 17) | (1 << 21) | (1 << 24) | (1 << 30),
            0x078b_fbff,
        ],
        0x4000_0000 => [up::CPUID_VENDOR_FEATURES, kvm, vmk, m],
        0x4000_0001 => [0; 4],
        up::CPUID_VENDOR_FEATURES => {
            let sig = if faults.on(Fault::WrongSignature) {
                0x6d7670
            } else {
                up::CPUID_SIGNATURE
            };
            [0, sig, 0, 0]
        }
        // Leaf 7 offers nothing: no SMEP/SMAP (the guest-visible CR4 has them 0, notes §6),
        // no PKU (KVM offers it only with TDP: "PKU is not yet implemented for shadow
        // paging", arch/x86/kvm/cpuid.c).
        7 => [0; 4],
        0x8000_0000 => [0x8000_0008, 0, 0, 0],
        // LAHF; SYSCALL, NX, 1 GiB pages, RDTSCP, long mode.
        0x8000_0001 => [
            0,
            0,
            1,
            (1 << 11) | (1 << 20) | (1 << 26) | (1 << 27) | (1 << 29),
        ],
        0x8000_0008 => [0x3000 | MAXPHYADDR, 0, 0, 0],
        _ => [0; 4],
    }
}

/// The APIC timer's clock: nanoseconds since the process first asked.
fn apic_clock_ns() -> u64 {
    static EPOCH: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    EPOCH
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_nanos() as u64
}

fn highest(bits: &[u64; 4]) -> Option<u8> {
    (0..4)
        .rev()
        .find(|&i| bits[i] != 0)
        .map(|i| (i * 64 + 63 - bits[i].leading_zeros() as usize) as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_descriptors_are_made_user_data_or_zeroed_and_give_their_base() {
        let data = 0x12cf_9345_6780_ffff_u64;
        let made = tls_descriptor(data);
        assert_eq!(made >> 45 & 3, 3, "DPL 3");
        assert_eq!(tls_descriptor(data | 1 << 43), 0, "a code segment");
        assert_eq!(tls_descriptor(data & !(1 << 47)), 0, "not present");
        assert_eq!(tls_descriptor(data & !(1 << 54)), 0, "D=0");
        let mut gdt = HOST_GDT;
        gdt[GDT_ENTRY_TLS_MIN] = made;
        assert_eq!(gs_base_of(&gdt, 0x63), 0x1245_6780);
        assert_eq!(gs_base_of(&gdt, 0x60), 0, "RPL 0: null");
        assert_eq!(gs_base_of(&gdt, 0x1b), 0, "kernel DS (DPL 0)");
        assert_eq!(gs_base_of(&gdt, 0x2b), 0, "__USER_DS: base 0");
        assert_eq!(gs_base_of(&gdt, 0x83), 0, "past the table");
    }

    #[test]
    fn interrupts_go_by_priority_class() {
        let mut p = Pvm::new(Generation::V2, Faults::NONE, 0, 0, 0, 0);
        p.request_interrupt(0x40);
        p.request_interrupt(0x80);
        assert_eq!(p.take_interrupt(), Some(0x80));
        assert_eq!(
            p.take_interrupt(),
            None,
            "0x40 is below the in-service class"
        );
        p.wrmsr(0x80b, 0).expect("eoi");
        assert_eq!(p.take_interrupt(), Some(0x40));
    }
}
