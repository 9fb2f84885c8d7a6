//! VMM requests (`abi::vmm`) on the KVM backend: each [`Op`] as the ioctls a VMM would issue,
//! performed on the vCPU that asked, between two `KVM_RUN`s. What the guest then observes is
//! the host's answer to the VMM touching its state, which is what the VMM-facing cases check.

use std::sync::Mutex;

use abi::vmm::{self, Op, Status};
use kvm_bindings::{CpuId, KVM_CPUID_FLAG_SIGNIFCANT_INDEX, Msrs, kvm_msr_entry};
use kvm_ioctls::{IoEventAddress, NoDatamatch, VcpuFd, VmFd};
use vmm_sys_util::eventfd::EventFd;

use crate::memory::MmapRam;
use crate::vm::{GuestRam, VmmRequest};
use crate::{Result, RunnerError};

/// What requests act on: the VM and what the machine was configured with.
pub(super) struct Ctx<'a> {
    pub vm: &'a VmFd,
    pub mem: &'a MmapRam,
    pub cpuid: &'a CpuId,
    pub msr_list: &'a [u32],
    pub irqchip: bool,
    pub extras: &'a Mutex<Extras>,
}

/// Memslots and eventfds that requests added; owned by the machine, so the memory of a slot
/// outlives the slot (the machine closes the VM before dropping this).
#[derive(Debug, Default)]
pub(super) struct Extras {
    slots: Vec<(u32, MmapRam)>,
    eventfds: Vec<EventFd>,
}

/// Per-vCPU request state, kept by the vCPU's run loop.
pub(super) struct VcpuLocal {
    id: u64,
    /// An interrupt vector waiting for the vCPU to be able to take it ([`Op::Interrupt`]).
    pending_irq: Option<u8>,
    /// `KVM_X86_SETUP_MCE` was done ([`Op::Mce`]).
    mce_ready: bool,
}

/// A reply: status and results.
type Reply = [u64; 4];

fn ok(r: [u64; 3]) -> Reply {
    [Status::Ok as u64, r[0], r[1], r[2]]
}

fn status(s: Status) -> Reply {
    [s as u64, 0, 0, 0]
}

fn failed(e: &kvm_ioctls::Error) -> Reply {
    [Status::Failed as u64, e.errno() as u64, 0, 0]
}

vmm_sys_util::ioctl_iow_nr!(
    KVM_INTERRUPT,
    kvm_bindings::KVMIO,
    0x86,
    kvm_bindings::kvm_interrupt
);

vmm_sys_util::ioctl_iow_nr!(KVM_X86_SETUP_MCE, kvm_bindings::KVMIO, 0x9c, u64);
vmm_sys_util::ioctl_iow_nr!(
    KVM_X86_SET_MCE,
    kvm_bindings::KVMIO,
    0x9e,
    kvm_bindings::kvm_x86_mce
);

/// MCG_CAP for `KVM_X86_SETUP_MCE`: one bank, MCG_CTL present (KVM then starts MCG_CTL and
/// MC0_CTL all ones, so uncorrected errors are reported).
const MCG_CAP: u64 = 1 | (1 << 8);

/// `KVM_X86_SETUP_MCE` then `KVM_X86_SET_MCE` (kvm-ioctls has no wrappers for them).
fn inject_mce(vcpu: &VcpuFd, setup: bool) -> std::result::Result<(), kvm_ioctls::Error> {
    if setup {
        // SAFETY: KVM_X86_SETUP_MCE reads one u64 from the pointer, which refers to a live
        // constant; `vcpu` is an open vCPU fd. The return value is checked.
        let ret =
            unsafe { vmm_sys_util::ioctl::ioctl_with_ref(vcpu, KVM_X86_SETUP_MCE(), &MCG_CAP) };
        if ret != 0 {
            return Err(kvm_ioctls::Error::last());
        }
    }
    let mce = kvm_bindings::kvm_x86_mce {
        status: vmm::MCE_STATUS,
        mcg_status: vmm::MCE_MCG_STATUS,
        bank: 0,
        ..Default::default()
    };
    // SAFETY: KVM_X86_SET_MCE reads one `kvm_x86_mce` from the pointer, which refers to a live
    // local of that type; `vcpu` is an open vCPU fd. The return value is checked.
    let ret = unsafe { vmm_sys_util::ioctl::ioctl_with_ref(vcpu, KVM_X86_SET_MCE(), &mce) };
    if ret == 0 {
        Ok(())
    } else {
        Err(kvm_ioctls::Error::last())
    }
}

/// `KVM_INTERRUPT` (kvm-ioctls has no wrapper for it).
fn kvm_interrupt(vcpu: &VcpuFd, vector: u8) -> std::result::Result<(), kvm_ioctls::Error> {
    let irq = kvm_bindings::kvm_interrupt {
        irq: u32::from(vector),
    };
    // SAFETY: KVM_INTERRUPT reads one `kvm_interrupt` from the pointer, which refers to a live
    // local of that type; `vcpu` is an open vCPU fd. The return value is checked.
    let ret = unsafe { vmm_sys_util::ioctl::ioctl_with_ref(vcpu, KVM_INTERRUPT(), &irq) };
    if ret == 0 {
        Ok(())
    } else {
        Err(kvm_ioctls::Error::last())
    }
}

fn one_msr(index: u32, data: u64) -> Result<Msrs> {
    Msrs::from_entries(&[kvm_msr_entry {
        index,
        data,
        ..Default::default()
    }])
    .map_err(|_| RunnerError::Kvm {
        what: "Msrs",
        error: kvm_ioctls::Error::new(libc::E2BIG),
    })
}

fn get_msr(vcpu: &VcpuFd, index: u32) -> std::result::Result<Option<u64>, Reply> {
    let mut m = one_msr(index, 0).map_err(|_| status(Status::BadArgs))?;
    match vcpu.get_msrs(&mut m) {
        Ok(1) => Ok(Some(m.as_slice()[0].data)),
        Ok(_) => Ok(None),
        Err(e) => Err(failed(&e)),
    }
}

fn set_msr(vcpu: &VcpuFd, index: u32, value: u64) -> std::result::Result<bool, Reply> {
    let m = one_msr(index, value).map_err(|_| status(Status::BadArgs))?;
    match vcpu.set_msrs(&m) {
        Ok(n) => Ok(n == 1),
        Err(e) => Err(failed(&e)),
    }
}

macro_rules! try_reply {
    ($e:expr) => {
        match $e {
            Ok(v) => v,
            Err(e) => return failed(&e),
        }
    };
}

impl VcpuLocal {
    pub(super) fn new(id: u64) -> Self {
        Self {
            id,
            pending_irq: None,
            mce_ready: false,
        }
    }

    /// Before each `KVM_RUN`: injects a pending [`Op::Interrupt`] when `kvm_run` says the vCPU
    /// can take it, else asks KVM to exit once it can.
    pub(super) fn before_run(&mut self, vcpu: &mut VcpuFd) -> Result<()> {
        let Some(vector) = self.pending_irq else {
            return Ok(());
        };
        let run = vcpu.get_kvm_run();
        // `ready_for_interrupt_injection` alone says whether KVM_INTERRUPT may inject now (it
        // accounts for the interrupt flag); `if_flag` is checked by its own case
        // (`interrupts.kvm_run_if_flag`), not relied on here.
        let ready = run.ready_for_interrupt_injection != 0;
        if ready {
            run.request_interrupt_window = 0;
            kvm_interrupt(vcpu, vector).map_err(|error| RunnerError::Kvm {
                what: "KVM_INTERRUPT",
                error,
            })?;
            self.pending_irq = None;
        } else {
            run.request_interrupt_window = 1;
        }
        Ok(())
    }

    /// Performs `req` on `vcpu`; returns the reply values.
    pub(super) fn serve(&mut self, vcpu: &mut VcpuFd, ctx: &Ctx<'_>, req: VmmRequest) -> Reply {
        let Some(op) = Op::from_raw(u64::from(req.op)) else {
            return status(Status::UnknownOp);
        };
        let [a0, a1, a2] = req.args;
        match op {
            Op::GetMsr => match get_msr(vcpu, a0 as u32) {
                Ok(Some(v)) => ok([1, v, 0]),
                Ok(None) => ok([0, 0, 0]),
                Err(r) => r,
            },
            Op::SetMsr => match set_msr(vcpu, a0 as u32, a1) {
                Ok(accepted) => ok([u64::from(accepted), 0, 0]),
                Err(r) => r,
            },
            Op::Nmi => {
                try_reply!(vcpu.nmi());
                ok([0; 3])
            }
            Op::Mce => {
                try_reply!(inject_mce(vcpu, !self.mce_ready));
                self.mce_ready = true;
                ok([0; 3])
            }
            Op::Interrupt => {
                if ctx.irqchip {
                    // KVM_INTERRUPT is for a userspace irqchip only.
                    return status(Status::BadArgs);
                }
                match u8::try_from(a0) {
                    Ok(v) if v >= 32 => {
                        self.pending_irq = Some(v);
                        ok([0; 3])
                    }
                    _ => status(Status::BadArgs),
                }
            }
            Op::IrqLine => {
                if !ctx.irqchip {
                    return status(Status::BadArgs);
                }
                try_reply!(ctx.vm.set_irq_line(a0 as u32, a1 != 0));
                ok([0; 3])
            }
            Op::RoundTrip => round_trip(vcpu, ctx, [a0 as u32, a1 as u32]),
            Op::AddMemslot => add_memslot(ctx, a0, a1, a2),
            Op::RemoveMemslot => remove_memslot(ctx, a0),
            Op::HostNanos => ok([host_nanos(), 0, 0]),
            Op::ConfiguredCpuid => configured_cpuid(ctx.cpuid, a0 as u32, a1 as u32),
            Op::VcpuEvents => {
                let e = try_reply!(vcpu.get_vcpu_events());
                let bit = |set: u8, mask: u64| if set != 0 { mask } else { 0 };
                let nmi = bit(e.nmi.injected, vmm::nmi::INJECTED)
                    | bit(e.nmi.pending, vmm::nmi::PENDING)
                    | bit(e.nmi.masked, vmm::nmi::MASKED);
                let irq = bit(e.interrupt.injected, vmm::irq::INJECTED)
                    | bit(e.interrupt.shadow, vmm::irq::SHADOW)
                    | (u64::from(e.interrupt.nr) << 8);
                let exc = bit(e.exception.injected, vmm::exc::INJECTED)
                    | bit(e.exception.pending, vmm::exc::PENDING)
                    | (u64::from(e.exception.nr) << 8);
                ok([nmi, irq, exc])
            }
            Op::RegisterIoEventfd => register_ioeventfd(ctx, a0, a1, a2),
            Op::EventfdCount => with_eventfd(ctx, a0, |fd| match fd.read() {
                Ok(n) => ok([n, 0, 0]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => ok([0; 3]),
                Err(e) => [
                    Status::Failed as u64,
                    e.raw_os_error().unwrap_or(0) as u64,
                    0,
                    0,
                ],
            }),
            Op::RegisterIrqfd => {
                if !ctx.irqchip {
                    return status(Status::BadArgs);
                }
                let Ok(fd) = EventFd::new(libc::EFD_NONBLOCK) else {
                    return status(Status::Failed);
                };
                try_reply!(ctx.vm.register_irqfd(&fd, a0 as u32));
                add_eventfd(ctx, fd)
            }
            Op::SignalEventfd => with_eventfd(ctx, a0, |fd| match fd.write(1) {
                Ok(()) => ok([0; 3]),
                Err(e) => [
                    Status::Failed as u64,
                    e.raw_os_error().unwrap_or(0) as u64,
                    0,
                    0,
                ],
            }),
            Op::RegisterCoalesced => {
                let addr = if a2 == 1 {
                    IoEventAddress::Pio(a0)
                } else {
                    IoEventAddress::Mmio(a0)
                };
                try_reply!(ctx.vm.register_coalesced_mmio(addr, a1 as u32));
                ok([0; 3])
            }
            Op::DrainCoalesced => {
                try_reply!(vcpu.map_coalesced_mmio_ring());
                let (mut n, mut first, mut last) = (0u64, 0u64, 0u64);
                while let Some(e) = try_reply!(vcpu.coalesced_mmio_read()) {
                    if n == 0 {
                        first = e.phys_addr;
                    }
                    last = u64::from_le_bytes(e.data);
                    n += 1;
                }
                ok([n, first, last])
            }
            Op::VcpuId => ok([self.id, 0, 0]),
            Op::ConfiguredCpuidEntry => {
                match usize::try_from(a0)
                    .ok()
                    .and_then(|i| ctx.cpuid.as_slice().get(i))
                {
                    Some(e) => {
                        let significant = e.flags & KVM_CPUID_FLAG_SIGNIFCANT_INDEX != 0;
                        ok([
                            u64::from(e.function)
                                | (u64::from(e.index) << 32)
                                | (u64::from(significant) << 63),
                            u64::from(e.eax) | (u64::from(e.ebx) << 32),
                            u64::from(e.ecx) | (u64::from(e.edx) << 32),
                        ])
                    }
                    None => status(Status::BadArgs),
                }
            }
            Op::RunFlags => {
                let run = vcpu.get_kvm_run();
                ok([
                    u64::from(run.if_flag),
                    u64::from(run.ready_for_interrupt_injection),
                    0,
                ])
            }
            // A case's host device answers these (the handler replies before they get here).
            Op::DeviceLog | Op::DeviceLogLen | Op::DeviceLogClear => status(Status::Unsupported),
            Op::MsrListed => ok([u64::from(ctx.msr_list.contains(&(a0 as u32))), 0, 0]),
        }
    }
}

fn host_nanos() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec to the valid pointer; the result is checked.
    if unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) } != 0 {
        return 0;
    }
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn configured_cpuid(cpuid: &CpuId, leaf: u32, subleaf: u32) -> Reply {
    let hit = cpuid.as_slice().iter().find(|e| {
        e.function == leaf && (e.flags & KVM_CPUID_FLAG_SIGNIFCANT_INDEX == 0 || e.index == subleaf)
    });
    match hit {
        Some(e) => ok([
            1,
            u64::from(e.eax) | u64::from(e.ebx) << 32,
            u64::from(e.ecx) | u64::from(e.edx) << 32,
        ]),
        None => ok([0; 3]),
    }
}

/// [`Op::RoundTrip`]: completes the pending exit (a `KVM_RUN` with `immediate_exit` set, as
/// the KVM API asks before saving state), then gets every piece of vCPU state and sets it
/// back, in the order QEMU restores it.
fn round_trip(vcpu: &mut VcpuFd, ctx: &Ctx<'_>, extra: [u32; 2]) -> Reply {
    vcpu.set_kvm_immediate_exit(1);
    let completed = vcpu.run().map(|_| ());
    vcpu.set_kvm_immediate_exit(0);
    match completed {
        Err(e) if e.errno() == libc::EINTR => {}
        Err(e) => return failed(&e),
        // An exit instead of EINTR: the state is still consistent, but say so.
        Ok(()) => return status(Status::Failed),
    }
    let regs = try_reply!(vcpu.get_regs());
    let sregs = try_reply!(vcpu.get_sregs());
    let fpu = try_reply!(vcpu.get_fpu());
    let xsave = try_reply!(vcpu.get_xsave());
    let xcrs = try_reply!(vcpu.get_xcrs());
    let debug = try_reply!(vcpu.get_debug_regs());
    let events = try_reply!(vcpu.get_vcpu_events());
    let mp = try_reply!(vcpu.get_mp_state());
    let lapic = if ctx.irqchip {
        Some(try_reply!(vcpu.get_lapic()))
    } else {
        None
    };
    let mut msrs = Vec::new();
    let mut extra_values = [0u64; 2];
    let indexes = ctx
        .msr_list
        .iter()
        .copied()
        .chain(extra.iter().copied().filter(|&i| i != 0));
    for index in indexes {
        match get_msr(vcpu, index) {
            Ok(Some(v)) => {
                for (slot, &e) in extra_values.iter_mut().zip(&extra) {
                    if e == index && e != 0 {
                        *slot = v;
                    }
                }
                msrs.push((index, v));
            }
            Ok(None) => {}
            Err(r) => return r,
        }
    }
    try_reply!(vcpu.set_regs(&regs));
    // SAFETY: `xsave` is what KVM_GET_XSAVE returned for this very vCPU, so its size matches
    // what KVM_SET_XSAVE reads (this host's XSAVE2 size, 4096, fits `kvm_xsave`).
    try_reply!(unsafe { vcpu.set_xsave(&xsave) });
    try_reply!(vcpu.set_xcrs(&xcrs));
    try_reply!(vcpu.set_sregs(&sregs));
    try_reply!(vcpu.set_fpu(&fpu));
    for &(index, v) in &msrs {
        match set_msr(vcpu, index, v) {
            Ok(true) => {}
            Ok(false) => return [Status::Failed as u64, 0, u64::from(index), v],
            Err(r) => return r,
        }
    }
    try_reply!(vcpu.set_mp_state(mp));
    if let Some(l) = &lapic {
        try_reply!(vcpu.set_lapic(l));
    }
    try_reply!(vcpu.set_vcpu_events(&events));
    try_reply!(vcpu.set_debug_regs(&debug));
    ok([msrs.len() as u64, extra_values[0], extra_values[1]])
}

fn add_memslot(ctx: &Ctx<'_>, slot: u64, gpa: u64, size_flags: u64) -> Reply {
    let size = size_flags & vmm::SIZE_MASK;
    let readonly = size_flags & vmm::READONLY != 0;
    if !vmm::memslot_request_valid(slot, gpa, size) {
        return status(Status::BadArgs);
    }
    let Ok(mut extras) = ctx.extras.lock() else {
        return status(Status::Failed);
    };
    if extras.slots.iter().any(|(s, _)| u64::from(*s) == slot) {
        return status(Status::BadArgs);
    }
    let Ok(mem) = MmapRam::new(size) else {
        return status(Status::Failed);
    };
    let mut bytes = vec![0u8; size as usize];
    vmm::fill_slot_pattern(&mut bytes, gpa);
    if mem.write(0, &bytes).is_err() {
        return status(Status::Failed);
    }
    let region = kvm_bindings::kvm_userspace_memory_region {
        slot: slot as u32,
        flags: if readonly {
            kvm_bindings::KVM_MEM_READONLY
        } else {
            0
        },
        guest_phys_addr: gpa,
        memory_size: size,
        userspace_addr: mem.host_addr(),
    };
    // SAFETY: the region is backed by `mem`, which is stored in `extras` (owned by the
    // machine, dropped only after the VM is closed, or after the slot is deleted again by
    // `remove_memslot`), so the mapping outlives the memslot.
    try_reply!(unsafe { ctx.vm.set_user_memory_region(region) });
    extras.slots.push((slot as u32, mem));
    ok([0; 3])
}

fn remove_memslot(ctx: &Ctx<'_>, slot: u64) -> Reply {
    let Ok(mut extras) = ctx.extras.lock() else {
        return status(Status::Failed);
    };
    let Some(i) = extras.slots.iter().position(|(s, _)| u64::from(*s) == slot) else {
        return status(Status::BadArgs);
    };
    let region = kvm_bindings::kvm_userspace_memory_region {
        slot: slot as u32,
        flags: 0,
        guest_phys_addr: 0,
        memory_size: 0,
        userspace_addr: 0,
    };
    // SAFETY: a zero-sized region deletes the slot; no memory is handed to KVM.
    try_reply!(unsafe { ctx.vm.set_user_memory_region(region) });
    // The slot is gone from KVM: its memory can go.
    extras.slots.remove(i);
    ok([0; 3])
}

fn register_ioeventfd(ctx: &Ctx<'_>, addr: u64, flags: u64, datamatch: u64) -> Reply {
    let Ok(fd) = EventFd::new(libc::EFD_NONBLOCK) else {
        return status(Status::Failed);
    };
    let at = if flags & vmm::MMIO != 0 {
        IoEventAddress::Mmio(addr)
    } else {
        IoEventAddress::Pio(addr)
    };
    let registered = if flags & vmm::DATAMATCH == 0 {
        ctx.vm.register_ioevent(&fd, &at, NoDatamatch)
    } else {
        match flags & 0xff {
            1 => ctx.vm.register_ioevent(&fd, &at, datamatch as u8),
            2 => ctx.vm.register_ioevent(&fd, &at, datamatch as u16),
            4 => ctx.vm.register_ioevent(&fd, &at, datamatch as u32),
            8 => ctx.vm.register_ioevent(&fd, &at, datamatch),
            _ => return status(Status::BadArgs),
        }
    };
    try_reply!(registered);
    add_eventfd(ctx, fd)
}

fn add_eventfd(ctx: &Ctx<'_>, fd: EventFd) -> Reply {
    let Ok(mut extras) = ctx.extras.lock() else {
        return status(Status::Failed);
    };
    extras.eventfds.push(fd);
    ok([extras.eventfds.len() as u64 - 1, 0, 0])
}

fn with_eventfd(ctx: &Ctx<'_>, id: u64, f: impl FnOnce(&EventFd) -> Reply) -> Reply {
    let Ok(extras) = ctx.extras.lock() else {
        return status(Status::Failed);
    };
    match usize::try_from(id)
        .ok()
        .and_then(|i| extras.eventfds.get(i))
    {
        Some(fd) => f(fd),
        None => status(Status::BadArgs),
    }
}
