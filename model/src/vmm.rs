//! The model's VMM side: the requests of `abi::vmm` a case sends over the report channel,
//! answered from the model's own vCPU state, the way the KVM backend answers them with ioctls
//! (`runner::kvm::requests`); ioeventfds and coalesced zones go to [`crate::devices`]. Ops the
//! model has no counterpart for answer `Unsupported`, which the guest turns into SKIP with the
//! op's name; the I/O APIC ops (IRQ lines, irqfds) need the in-kernel irqchip (`BadArgs`
//! without, as KVM refuses them).

use std::sync::OnceLock;
use std::time::Instant;

use abi::vmm::{Op, Status};
use runner::vm::{GuestRam, VmmRequest};

use crate::devices::Space;
use crate::engine::Vcpu;
use crate::pvm;

type Reply = [u64; 4];

fn ok(r: [u64; 3]) -> Reply {
    [Status::Ok as u64, r[0], r[1], r[2]]
}

fn status(s: Status) -> Reply {
    [s as u64, 0, 0, 0]
}

/// The host's monotonic clock: nanoseconds since the process first asked.
fn host_nanos() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// Hands the I/O APIC's deliveries to their local APICs and has the engine look at them.
fn deliver(v: &mut Vcpu, out: Vec<crate::devices::Delivery>) {
    v.pvm.post_interrupts(out);
    v.pvm.resync = true;
}

/// Answers `req` for vCPU `v` (the only one).
pub fn serve(mem: &dyn GuestRam, v: &mut Vcpu, req: VmmRequest) -> Reply {
    let Some(op) = Op::from_raw(u64::from(req.op)) else {
        return status(Status::UnknownOp);
    };
    let [a0, a1, _] = req.args;
    match op {
        // KVM_GET_MSRS returns no entry for an MSR the host does not know.
        // FS_BASE/GS_BASE: the hardware bases as of the last exit.
        Op::GetMsr => match v
            .regs
            .base_msr(a0 as u32)
            .map(|b| *b)
            .or_else(|| v.pvm.rdmsr(a0 as u32))
        {
            Some(val) => ok([1, val, 0]),
            None => ok([0; 3]),
        },
        Op::SetMsr => {
            let accepted = match v.regs.base_msr(a0 as u32) {
                Some(_) if !pvm::canonical(a1) => false,
                Some(base) => {
                    *base = a1;
                    v.pvm.bases_dirty = true;
                    true
                }
                None => v.pvm.wrmsr_host(a0 as u32, a1).is_ok(),
            };
            v.pvm.resync = true;
            ok([u64::from(accepted), 0, 0])
        }
        // KVM_INTERRUPT: a vector of 32 or more, delivered once IF allows.
        Op::Interrupt => match u8::try_from(a0) {
            Ok(vec) if vec >= 32 => {
                v.pvm.ext_irq = Some(vec);
                v.pvm.resync = true;
                ok([0; 3])
            }
            _ => status(Status::BadArgs),
        },
        Op::HostNanos => ok([host_nanos(), 0, 0]),
        Op::ConfiguredCpuid => match pvm::configured_cpuid(v.pvm.faults, a0 as u32, a1 as u32) {
            Some([a, b, c, d]) => ok([
                1,
                u64::from(a) | u64::from(b) << 32,
                u64::from(c) | u64::from(d) << 32,
            ]),
            None => ok([0; 3]),
        },
        Op::ConfiguredCpuidEntry => match usize::try_from(a0)
            .ok()
            .and_then(|i| pvm::CPUID_LEAVES.get(i))
        {
            Some(&(leaf, sub)) => {
                let [a, b, c, d] = pvm::cpuid(v.pvm.faults, leaf, sub);
                let significant = u64::from(pvm::subleaf_significant(leaf)) << 63;
                ok([
                    u64::from(leaf) | (u64::from(sub) << 32) | significant,
                    u64::from(a) | (u64::from(b) << 32),
                    u64::from(c) | (u64::from(d) << 32),
                ])
            }
            None => status(Status::BadArgs),
        },
        Op::VcpuId => ok([u64::from(v.pvm.apic_id), 0, 0]),
        // What the model's VMM would save: every MSR it knows.
        Op::MsrListed => ok([u64::from(v.pvm.rdmsr(a0 as u32).is_some()), 0, 0]),
        // kvm_run.if_flag and ready_for_interrupt_injection, as KVM computes them for a PVM
        // vCPU: the virtual IF, and nothing else pending.
        Op::RunFlags => {
            let on = v.pvm.interrupts_enabled(mem);
            let ready = on && v.pvm.ext_irq.is_none();
            ok([u64::from(on), u64::from(ready), 0])
        }
        // KVM_NMI: queued, delivered once the host allows (engine run loop).
        Op::Nmi => {
            v.pvm.nmi_pending = true;
            v.pvm.resync = true;
            ok([0; 3])
        }
        // KVM_X86_SET_MCE of an uncorrected error (kvm_vcpu_ioctl_x86_set_mce): a triple fault
        // when CR4.MCE is clear or MCG_STATUS.MCIP still set, else MCG_STATUS and #MC.
        Op::Mce => {
            let mcip = v.pvm.rdmsr(abi::x86::msr::MCG_STATUS).unwrap_or(0) & (1 << 2) != 0;
            if v.pvm.cr4 & abi::x86::cr4::MCE == 0 || mcip {
                v.pvm.shutdown = Some(format!(
                    "#MC with CR4 {:#x} and MCIP {mcip} (kvm_vcpu_ioctl_x86_set_mce)",
                    v.pvm.cr4
                ));
            } else {
                let _ = v
                    .pvm
                    .wrmsr(abi::x86::msr::MCG_STATUS, abi::vmm::MCE_MCG_STATUS);
                v.pvm.mce_pending = true;
            }
            v.pvm.resync = true;
            ok([0; 3])
        }
        // KVM_GET_VCPU_EVENTS: the NMI state as the host reports it; nothing else is queued
        // between runs in the model.
        Op::VcpuEvents => {
            let (pending, masked) = v.pvm.nmi_state();
            let bit = |on: bool, b: u64| if on { b } else { 0 };
            ok([
                bit(pending, abi::vmm::nmi::PENDING) | bit(masked, abi::vmm::nmi::MASKED),
                0,
                0,
            ])
        }
        // KVM_IOEVENTFD: a1 bits 0..8 the length, MMIO, DATAMATCH (abi::vmm).
        Op::RegisterIoEventfd => {
            let space = if a1 & abi::vmm::MMIO != 0 {
                Space::Mmio
            } else {
                Space::Pio
            };
            let datamatch = (a1 & abi::vmm::DATAMATCH != 0).then_some(req.args[2]);
            match v
                .devices
                .lock()
                .add_ioeventfd(space, a0, (a1 & 0xff) as usize, datamatch)
            {
                Ok(id) => ok([id, 0, 0]),
                Err(_) => status(Status::BadArgs),
            }
        }
        Op::EventfdCount => match v.devices.lock().take_count(a0) {
            Some(n) => ok([n, 0, 0]),
            None => status(Status::BadArgs),
        },
        // KVM_REGISTER_COALESCED_MMIO (a2 = 1: a PIO zone).
        Op::RegisterCoalesced => {
            let space = if req.args[2] == 1 {
                Space::Pio
            } else {
                Space::Mmio
            };
            match v.devices.lock().add_zone(space, a0, a1) {
                Ok(()) => ok([0; 3]),
                Err(_) => status(Status::BadArgs),
            }
        }
        Op::DrainCoalesced => {
            let (n, first, last) = v.devices.lock().drain();
            ok([n, first, last])
        }
        // KVM_SET_USER_MEMORY_REGION: the engines map it before they run on (`resync`).
        Op::AddMemslot => {
            let (size, readonly) = (
                req.args[2] & abi::vmm::SIZE_MASK,
                req.args[2] & abi::vmm::READONLY != 0,
            );
            let (lo, hi) = crate::engine::SLOT_WINDOW;
            match v.devices.lock().add_slot(a0, a1, size, readonly, lo, hi) {
                Ok(()) => {
                    v.pvm.resync = true;
                    ok([0; 3])
                }
                Err(_) => status(Status::BadArgs),
            }
        }
        Op::RemoveMemslot => match v.devices.lock().remove_slot(a0) {
            Ok(()) => {
                v.pvm.resync = true;
                ok([0; 3])
            }
            Err(_) => status(Status::BadArgs),
        },
        // Save and restore what the model's VMM saves: every MSR of its index list the vCPU has
        // (plus a0/a1), read with KVM_GET_MSRS and written back with host-initiated
        // KVM_SET_MSRS (registers, segments and the APIC are the vCPU's own state here and
        // stay as they are). A write the host refuses fails the request with its index.
        Op::RoundTrip => {
            let mut indices = pvm::SAVED_MSRS.to_vec();
            for extra in [a0 as u32, a1 as u32] {
                if extra != 0 && !indices.contains(&extra) {
                    indices.push(extra);
                }
            }
            let saved: Vec<(u32, u64)> = indices
                .iter()
                .filter_map(|&i| v.pvm.rdmsr(i).map(|val| (i, val)))
                .collect();
            for &(i, val) in &saved {
                if v.pvm.wrmsr_host(i, val).is_err() {
                    return [Status::Failed as u64, u64::from(i), 0, 0];
                }
            }
            v.pvm.resync = true;
            let read = |i: u32| saved.iter().find(|s| s.0 == i).map_or(0, |s| s.1);
            ok([saved.len() as u64, read(a0 as u32), read(a1 as u32)])
        }
        // KVM_IRQ_LINE (needs the in-kernel irqchip): the I/O APIC pin's level.
        Op::IrqLine if v.pvm.irqchip => {
            let out = v.devices.lock().ioapic.set_line(a0 as usize, a1 != 0);
            deliver(v, out);
            ok([0; 3])
        }
        // KVM_IRQFD for GSI a0.
        Op::RegisterIrqfd if v.pvm.irqchip => match v.devices.lock().add_irqfd(a0 as usize) {
            Ok(id) => ok([id, 0, 0]),
            Err(_) => status(Status::BadArgs),
        },
        Op::SignalEventfd => {
            let out = v.devices.lock().signal(a0);
            match out {
                Ok(out) => {
                    deliver(v, out);
                    ok([0; 3])
                }
                Err(_) => status(Status::BadArgs),
            }
        }
        Op::IrqLine | Op::RegisterIrqfd => status(Status::BadArgs),
        Op::DeviceLog | Op::DeviceLogLen | Op::DeviceLogClear => status(Status::Unsupported),
    }
}
