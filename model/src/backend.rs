//! The model behind the suite's backend seam (`runner::vm::{Backend, Vm}`): a
//! [`ModelBackend`] plays one upstream generation; its VMs hold guest RAM and one vCPU's
//! state between runs, and run on [`crate::engine`].

use runner::memory::MmapRam;
use runner::vm::{Backend, ExitHandler, GuestRam, InitialState, RunEnd, RunLimits, Vm, VmOptions};

use crate::engine::{self, Vcpu};
use crate::faults::Faults;
use crate::pvm::{Generation, Pvm, Regs};

/// A software PVM host of one generation, with some fault switches on.
#[derive(Clone, Copy, Debug)]
pub struct ModelBackend {
    generation: Generation,
    faults: Faults,
}

impl ModelBackend {
    /// A host of `generation`.
    pub fn new(generation: Generation, faults: Faults) -> Self {
        Self { generation, faults }
    }
}

/// Why a VM cannot be built on the model.
fn unsupported(what: String) -> runner::RunnerError {
    runner::RunnerError::Setup(what)
}

impl Backend for ModelBackend {
    fn name(&self) -> &'static str {
        "model"
    }

    fn create_vm(&self, opts: &VmOptions) -> runner::Result<Box<dyn Vm>> {
        if opts.vcpus != 1 {
            return Err(unsupported(format!(
                "the reference model runs one vCPU; the case asks for {}",
                opts.vcpus
            )));
        }
        Ok(Box::new(ModelVm {
            ram: MmapRam::new(opts.ram)?,
            vcpu: None,
            backend: *self,
            started: false,
        }))
    }
}

/// A VM on the model.
pub struct ModelVm {
    ram: MmapRam,
    vcpu: Option<Vcpu>,
    backend: ModelBackend,
    started: bool,
}

impl Vm for ModelVm {
    fn memory(&self) -> &dyn GuestRam {
        &self.ram
    }

    fn set_initial_state(&mut self, state: &InitialState) -> runner::Result<()> {
        let Some(s) = state.vcpus.first() else {
            return Err(unsupported("an initial state without vCPUs".into()));
        };
        let regs = Regs {
            rip: s.rip,
            rsp: s.rsp,
            rdi: s.rdi,
            rsi: s.rsi,
            rflags: s.rflags | (1 << 9),
            ..Regs::default()
        };
        let pvm = Pvm::new(
            self.backend.generation,
            self.backend.faults,
            s.cr0,
            s.cr3,
            s.cr4,
            s.efer,
        );
        self.vcpu = Some(Vcpu {
            regs,
            pvm,
            devices: crate::devices::Devices::default(),
        });
        self.started = false;
        Ok(())
    }

    fn tsc_khz(&self) -> runner::Result<u32> {
        Ok(crate::engine::tsc_khz())
    }

    fn run(
        &mut self,
        handler: &mut (dyn ExitHandler + Send),
        limits: &RunLimits,
    ) -> runner::Result<RunEnd> {
        let Some(vcpu) = self.vcpu.as_mut() else {
            return Err(unsupported("run before set_initial_state".into()));
        };
        let first = !self.started;
        self.started = true;
        engine::run(&self.ram, vcpu, handler, limits, first)
    }

    fn register_dump(&self) -> String {
        match &self.vcpu {
            Some(v) => format!(
                "vcpu0: rip={:#x} rsp={:#x} rax={:#x} rcx={:#x} rflags={:#x} cs={:#x} {} cr3={:#x}",
                v.regs.rip,
                v.regs.rsp,
                v.regs.rax,
                v.regs.rcx,
                v.regs.rflags,
                v.regs.cs,
                if v.pvm.smod { "smod" } else { "umod" },
                v.pvm.cr3
            ),
            None => "no vCPU state".into(),
        }
    }
}
