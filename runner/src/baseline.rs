//! The raw `KVM_RUN` exit loop: the lower bound for the runner's own per-exit overhead.
//!
//! Written directly against kvm-ioctls, sharing no code with [`crate::kvm`]'s VM object, run
//! loop, exit handler or timers (only the initial state from [`crate::setup`], so the guest
//! sees the same memory map): it starts a tiny long-mode guest that does `out %al, (%dx)` in a
//! loop (after registering the local VIF page for pv-local) and times the gaps between
//! consecutive exits. [`exit_blob`] is the same guest code for the runner-side measurement,
//! so the two numbers differ only by the host loop.

use std::time::Instant;

use abi::env::Env;
use kvm_bindings::{KVM_MAX_CPUID_ENTRIES, kvm_userspace_memory_region};
use kvm_ioctls::{Kvm, VcpuExit};

use crate::memory::GuestMemory;
use crate::{Result, RunnerError, kvm_err};

/// Guest code: (pv-local: register the VIF page at `abi::layout::VIF_GPA`), then loop on
/// `out %al, (%dx)` with DX = `port`.
pub fn exit_blob(env: Env, port: u16) -> Vec<u8> {
    let mut code = Vec::new();
    if env == Env::PvLocal {
        let vif = (abi::layout::VIF_GPA | abi::local::VIF_ENABLE) as u32;
        code.push(0xb9); // mov $MSR_VIF, %ecx
        code.extend_from_slice(&abi::local::MSR_VIF.to_le_bytes());
        code.push(0xb8); // mov $vif, %eax
        code.extend_from_slice(&vif.to_le_bytes());
        code.extend_from_slice(&[0x31, 0xd2, 0x0f, 0x30]); // xor %edx,%edx; wrmsr
    }
    code.extend_from_slice(&[0x66, 0xba]); // mov $port, %dx
    code.extend_from_slice(&port.to_le_bytes());
    code.extend_from_slice(&[0xee, 0xeb, 0xfd]); // 1: out %al,(%dx); jmp 1b
    code
}

/// Runs the exit blob for `exits` port-I/O exits and returns the gaps between consecutive
/// exits in nanoseconds (the first `warmup` exits are not timed).
pub fn raw_exit_gaps(env: Env, port: u16, exits: usize, warmup: usize) -> Result<Vec<f64>> {
    let kvm = Kvm::new().map_err(RunnerError::OpenKvm)?;
    let vm = kvm.create_vm().map_err(kvm_err("KVM_CREATE_VM"))?;
    let mem = GuestMemory::new(abi::layout::RAM_SIZE)?;
    let region = kvm_userspace_memory_region {
        slot: 0,
        flags: 0,
        guest_phys_addr: 0,
        memory_size: mem.size(),
        userspace_addr: mem.host_addr(),
    };
    // SAFETY: `mem` outlives `vm` (declared before it, so dropped after it) and is the only slot.
    unsafe { vm.set_user_memory_region(region) }.map_err(kvm_err("KVM_SET_USER_MEMORY_REGION"))?;
    crate::setup::write_page_tables(&mem)?;
    mem.write(abi::layout::IMAGE_BASE, &exit_blob(env, port))?;
    let mut vcpu = vm.create_vcpu(0).map_err(kvm_err("KVM_CREATE_VCPU"))?;
    let cpuid = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(kvm_err("KVM_GET_SUPPORTED_CPUID"))?;
    vcpu.set_cpuid2(&cpuid).map_err(kvm_err("KVM_SET_CPUID2"))?;
    let sregs = vcpu.get_sregs().map_err(kvm_err("KVM_GET_SREGS"))?;
    vcpu.set_sregs(&crate::setup::long_mode_sregs(sregs))
        .map_err(kvm_err("KVM_SET_SREGS"))?;
    let regs = crate::setup::entry_regs(abi::layout::IMAGE_BASE, 0);
    vcpu.set_regs(&regs).map_err(kvm_err("KVM_SET_REGS"))?;
    let mut gaps = Vec::with_capacity(exits);
    let mut last: Option<Instant> = None;
    let mut seen = 0usize;
    while gaps.len() < exits {
        match vcpu.run().map_err(kvm_err("KVM_RUN"))? {
            VcpuExit::IoOut(p, _) if p == port => {
                let now = Instant::now();
                seen += 1;
                if seen > warmup
                    && let Some(prev) = last
                {
                    gaps.push((now - prev).as_secs_f64() * 1e9);
                }
                last = Some(now);
            }
            other => {
                return Err(RunnerError::Baseline(format!("unexpected exit {other:?}")));
            }
        }
    }
    Ok(gaps)
}
