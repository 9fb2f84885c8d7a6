//! The one boot path: a guest image into a fresh [`Vm`], ready to run a case. The suite, the
//! benchmarks, the raw-loop baseline and the examples all boot through [`boot`].

use abi::env::Env;

use crate::Result;
use crate::image::GuestImage;
use crate::setup;
use crate::vm::{Vm, VmOptions};

/// What a boot needs besides the image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BootParams {
    /// The environment the guest sets up.
    pub env: Env,
    /// Guest VA of the case function (from the case table).
    pub case_entry: u64,
    /// The case's parameter (from the case table).
    pub case_param: u64,
    /// vCPUs (the VM must have been created with as many).
    pub vcpus: u32,
}

impl BootParams {
    /// The options of a VM for these parameters and a case's `abi::case::FLAG_*` bits
    /// (`FLAG_IRQCHIP`, `FLAG_HIGH_VCPU_ID`).
    pub fn vm_options(&self, case_flags: u32) -> VmOptions {
        VmOptions {
            irqchip: case_flags & abi::case::FLAG_IRQCHIP != 0,
            vcpus: self.vcpus.max(1),
            high_vcpu_ids: case_flags & abi::case::FLAG_HIGH_VCPU_ID != 0,
            ..VmOptions::default()
        }
    }
}

/// Writes the page tables, loads the image, writes the boot info and sets every vCPU's start
/// state (see [`setup`]).
pub fn boot(vm: &mut dyn Vm, image: &GuestImage, p: &BootParams) -> Result<()> {
    let code: Vec<std::ops::Range<u64>> = image
        .segments
        .iter()
        .filter(|s| s.executable)
        .map(|s| s.gpa..s.gpa + s.mem_size)
        .collect();
    setup::write_page_tables(vm.memory(), p.env, &code)?;
    image.load_into(vm.memory())?;
    let tsc_khz = vm.tsc_khz()?;
    setup::write_boot_info(vm.memory(), p, tsc_khz, vm.report_channel())?;
    vm.set_initial_state(&setup::initial_state(image.entry, p.vcpus))
}
