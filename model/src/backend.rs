//! The model behind the suite's backend seam (`runner::vm::{Backend, Vm}`): a
//! [`ModelBackend`] plays one upstream generation; its VMs hold guest RAM and their vCPUs'
//! state between runs, and run on [`crate::engine`] (several vCPUs: one thread each, taking
//! turns, [`crate::smp`]).

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use abi::report::Message;
use runner::memory::MmapRam;
use runner::vm::{
    Action, Backend, ExitHandler, GuestRam, InitialState, RunEnd, RunLimits, Vm, VmOptions,
};

use crate::engine::{self, Vcpu};
use crate::faults::Faults;
use crate::pvm::{Generation, Pvm, Regs};
use crate::smp::{IpiBus, Smp, Turn};

/// Most vCPUs a model VM has (each is a thread with its own engine).
pub const MAX_VCPUS: u32 = 4;

/// The model host's `KVM_CAP_MAX_VCPU_ID` (KVM's default `KVM_MAX_VCPU_IDS` on x86): a VM
/// with high vCPU ids gets the highest ones below it.
pub const MAX_VCPU_ID: u32 = 1024;

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
        if opts.vcpus == 0 || opts.vcpus > MAX_VCPUS {
            return Err(unsupported(format!(
                "the reference model runs 1 to {MAX_VCPUS} vCPUs; the case asks for {}",
                opts.vcpus
            )));
        }
        Ok(Box::new(ModelVm {
            ram: MmapRam::new(opts.ram)?,
            irqchip: opts.irqchip,
            first_id: if opts.high_vcpu_ids {
                MAX_VCPU_ID - opts.vcpus
            } else {
                0
            },
            vcpus: Vec::new(),
            backend: *self,
            started: false,
        }))
    }
}

/// A VM on the model.
pub struct ModelVm {
    ram: MmapRam,
    irqchip: bool,
    /// The first vCPU's id (and x2APIC ID); the others follow.
    first_id: u32,
    vcpus: Vec<Vcpu>,
    backend: ModelBackend,
    started: bool,
}

impl Vm for ModelVm {
    fn memory(&self) -> &dyn GuestRam {
        &self.ram
    }

    fn set_initial_state(&mut self, state: &InitialState) -> runner::Result<()> {
        if state.vcpus.is_empty() {
            return Err(unsupported("an initial state without vCPUs".into()));
        }
        let n = state.vcpus.len();
        let bus = (n > 1).then(|| std::sync::Arc::new(IpiBus::new(self.first_id as usize, n)));
        let devices = crate::devices::Shared::default();
        self.vcpus = state
            .vcpus
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let regs = Regs {
                    rip: s.rip,
                    rsp: s.rsp,
                    rdi: s.rdi,
                    rsi: s.rsi,
                    rflags: s.rflags | (1 << 9),
                    ..Regs::default()
                };
                let mut pvm = Pvm::new(
                    self.backend.generation,
                    self.backend.faults,
                    s.cr0,
                    s.cr3,
                    s.cr4,
                    s.efer,
                );
                pvm.apic_id = self.first_id + i as u32;
                pvm.irqchip = self.irqchip;
                pvm.bus = bus.clone();
                Vcpu {
                    regs,
                    pvm,
                    devices: devices.clone(),
                }
            })
            .collect();
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
        if self.vcpus.is_empty() {
            return Err(unsupported("run before set_initial_state".into()));
        }
        let first = !self.started;
        self.started = true;
        if let [vcpu] = self.vcpus.as_mut_slice() {
            return engine::run(&self.ram, vcpu, handler, limits, first, None);
        }
        // Several vCPUs: one thread each; the first run to end ends them all.
        let turn = Turn::default();
        let stop = AtomicBool::new(false);
        let shared = Mutex::new(handler);
        let end: Mutex<Option<runner::Result<RunEnd>>> = Mutex::new(None);
        let ram = &self.ram;
        std::thread::scope(|s| {
            for vcpu in self.vcpus.iter_mut() {
                let (turn, stop, shared, end) = (&turn, &stop, &shared, &end);
                s.spawn(move || {
                    let smp = Smp { turn, stop };
                    let mut h = Locked(shared);
                    let r = engine::run(ram, vcpu, &mut h, limits, first, Some(&smp));
                    if let Ok(mut e) = end.lock()
                        && e.is_none()
                    {
                        *e = Some(r);
                    }
                    stop.store(true, Ordering::Release);
                });
            }
        });
        end.into_inner().ok().flatten().unwrap_or_else(|| {
            Ok(RunEnd::Unexpected(
                "no vCPU recorded how the run ended".into(),
            ))
        })
    }

    fn register_dump(&self) -> String {
        if self.vcpus.is_empty() {
            return "no vCPU state".into();
        }
        let dumps: Vec<String> = self
            .vcpus
            .iter()
            .enumerate()
            .map(|(i, v)| {
                format!(
                    "vcpu{i}: rip={:#x} rsp={:#x} rax={:#x} rcx={:#x} rflags={:#x} cs={:#x} {} \
                     cr3={:#x}",
                    v.regs.rip,
                    v.regs.rsp,
                    v.regs.rax,
                    v.regs.rcx,
                    v.regs.rflags,
                    v.regs.cs,
                    if v.pvm.smod { "smod" } else { "umod" },
                    v.pvm.cr3
                )
            })
            .collect();
        dumps.join(" | ")
    }
}

/// The run's exit handler as one vCPU thread reaches it: each exit under the lock (only the
/// vCPU holding the turn runs guest code, so the lock is rarely contended).
struct Locked<'a, 'h>(&'a Mutex<&'h mut (dyn ExitHandler + Send)>);

impl Locked<'_, '_> {
    fn with(&mut self, f: impl FnOnce(&mut (dyn ExitHandler + Send)) -> Action) -> Action {
        match self.0.lock() {
            Ok(mut h) => f(&mut **h),
            Err(_) => Action::Unexpected("another vCPU panicked in the exit handler".into()),
        }
    }
}

impl ExitHandler for Locked<'_, '_> {
    fn report(&mut self, msg: &Message) -> Action {
        self.with(|h| h.report(msg))
    }
    fn io_out(&mut self, port: u16, data: &[u8]) -> Action {
        self.with(|h| h.io_out(port, data))
    }
    fn io_in(&mut self, port: u16, data: &mut [u8]) -> Action {
        self.with(|h| h.io_in(port, data))
    }
    fn mmio_write(&mut self, gpa: u64, data: &[u8]) -> Action {
        self.with(|h| h.mmio_write(gpa, data))
    }
    fn mmio_read(&mut self, gpa: u64, data: &mut [u8]) -> Action {
        self.with(|h| h.mmio_read(gpa, data))
    }
    fn hlt(&mut self) -> Action {
        self.with(|h| h.hlt())
    }
}
