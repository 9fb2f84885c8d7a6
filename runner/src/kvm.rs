//! KVM VMs for test guests: creation, the run loop and its timeout.
//!
//! Every `KVM_RUN` is bounded: before running, [`Machine::run`] arms a per-thread POSIX timer
//! that delivers a real-time signal to this thread when the case's time is up. The signal
//! handler sets `kvm_run.immediate_exit`, so a vCPU stuck inside the kernel (some guest
//! actions livelock the local host's `KVM_RUN`) returns `EINTR`, and a signal that lands
//! between two `KVM_RUN`s makes the next one return at once. The loop then ends the run as
//! [`RunEnd::Timeout`].

use std::cell::Cell;
use std::sync::Once;
use std::time::{Duration, Instant};

use abi::report::{MESSAGE_MAGIC, MESSAGE_SIZE, Message, REPORT_PORT};
use kvm_bindings::{
    CpuId, KVM_MAX_CPUID_ENTRIES, Msrs, kvm_msr_entry, kvm_userspace_memory_region,
};
use kvm_ioctls::{VcpuExit, VcpuFd, VmFd};

use crate::memory::GuestMemory;
use crate::{Result, RunnerError, kvm_err, setup};

/// An open `/dev/kvm` plus what every VM needs from it (the supported CPUID).
#[derive(Debug)]
pub struct Kvm {
    kvm: kvm_ioctls::Kvm,
    cpuid: CpuId,
}

/// How to build a [`Machine`].
#[derive(Clone, Copy, Debug)]
pub struct MachineOptions {
    /// Bytes of RAM at GPA 0.
    pub ram: u64,
    /// Create the in-kernel irqchip (LAPIC, IOAPIC, PIC).
    pub irqchip: bool,
}

impl Default for MachineOptions {
    fn default() -> Self {
        Self {
            ram: abi::layout::RAM_SIZE,
            irqchip: false,
        }
    }
}

impl Kvm {
    /// Opens `/dev/kvm`.
    pub fn open() -> Result<Self> {
        let kvm = kvm_ioctls::Kvm::new().map_err(RunnerError::OpenKvm)?;
        let cpuid = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(kvm_err("KVM_GET_SUPPORTED_CPUID"))?;
        Ok(Self { kvm, cpuid })
    }

    /// `KVM_GET_API_VERSION`.
    pub fn api_version(&self) -> i32 {
        self.kvm.get_api_version()
    }

    /// The CPUID entries KVM supports (also what every vCPU gets).
    pub fn supported_cpuid(&self) -> &CpuId {
        &self.cpuid
    }

    /// `KVM_GET_MSR_INDEX_LIST`.
    pub fn msr_index_list(&self) -> Result<Vec<u32>> {
        let l = self
            .kvm
            .get_msr_index_list()
            .map_err(kvm_err("KVM_GET_MSR_INDEX_LIST"))?;
        Ok(l.as_slice().to_vec())
    }

    /// A fresh VM with one vCPU (CPUID set to the supported set) and zeroed RAM as memslot 0.
    pub fn create_machine(&self, opts: MachineOptions) -> Result<Machine> {
        let vm = self.kvm.create_vm().map_err(kvm_err("KVM_CREATE_VM"))?;
        let mem = GuestMemory::new(opts.ram)?;
        let region = kvm_userspace_memory_region {
            slot: 0,
            flags: 0,
            guest_phys_addr: 0,
            memory_size: mem.size(),
            userspace_addr: mem.host_addr(),
        };
        // SAFETY: the region is backed by `mem`, which `Machine` owns together with the VM and
        // drops after it (field order), so the mapping outlives the memslot; it is the only slot.
        unsafe { vm.set_user_memory_region(region) }
            .map_err(kvm_err("KVM_SET_USER_MEMORY_REGION"))?;
        if opts.irqchip {
            vm.create_irq_chip()
                .map_err(kvm_err("KVM_CREATE_IRQCHIP"))?;
        }
        let vcpu = vm.create_vcpu(0).map_err(kvm_err("KVM_CREATE_VCPU"))?;
        vcpu.set_cpuid2(&self.cpuid)
            .map_err(kvm_err("KVM_SET_CPUID2"))?;
        Ok(Machine { vcpu, _vm: vm, mem })
    }
}

/// What the exit handler wants after an exit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Resume the vCPU.
    Continue,
    /// End the run normally (e.g. the guest reported its final status).
    Stop,
    /// End the run: the exit was not one the case allows (reason).
    Unexpected(String),
}

/// The exits a case sees. The report channel is decoded before it reaches [`ExitHandler::report`].
pub trait ExitHandler {
    /// A message on the report channel.
    fn report(&mut self, msg: &Message) -> Action;
    /// `OUT` to a port other than the report port.
    fn io_out(&mut self, port: u16, data: &[u8]) -> Action;
    /// `IN`; fill `data`.
    fn io_in(&mut self, port: u16, data: &mut [u8]) -> Action;
    /// MMIO write.
    fn mmio_write(&mut self, gpa: u64, data: &[u8]) -> Action;
    /// MMIO read; fill `data`.
    fn mmio_read(&mut self, gpa: u64, data: &mut [u8]) -> Action;
    /// `KVM_EXIT_HLT`.
    fn hlt(&mut self) -> Action;
}

/// How a run ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RunEnd {
    /// The handler stopped the run.
    Stopped,
    /// The timeout expired (the vCPU was interrupted).
    Timeout(Duration),
    /// `KVM_EXIT_SHUTDOWN` (triple fault).
    Shutdown,
    /// `KVM_EXIT_INTERNAL_ERROR` with its suberror.
    InternalError(u32),
    /// `KVM_EXIT_FAIL_ENTRY` with the hardware reason.
    FailEntry(u64),
    /// An exit the case does not allow, or an unhandled exit reason.
    Unexpected(String),
}

/// One VM with one vCPU and its RAM. Dropping it destroys the VM.
#[derive(Debug)]
pub struct Machine {
    vcpu: VcpuFd,
    _vm: VmFd,
    mem: GuestMemory,
}

impl Machine {
    /// Guest RAM.
    pub fn memory(&self) -> &GuestMemory {
        &self.mem
    }

    /// Sets the direct 64-bit start state with RIP = `entry` (see [`setup`]).
    pub fn set_long_mode_entry(&self, entry: u64) -> Result<()> {
        let sregs = self.vcpu.get_sregs().map_err(kvm_err("KVM_GET_SREGS"))?;
        self.vcpu
            .set_sregs(&setup::long_mode_sregs(sregs))
            .map_err(kvm_err("KVM_SET_SREGS"))?;
        self.vcpu
            .set_regs(&setup::entry_regs(entry))
            .map_err(kvm_err("KVM_SET_REGS"))
    }

    /// The guest TSC frequency in kHz (`KVM_GET_TSC_KHZ`).
    pub fn tsc_khz(&self) -> Result<u32> {
        self.vcpu.get_tsc_khz().map_err(kvm_err("KVM_GET_TSC_KHZ"))
    }

    /// Reads an MSR with `KVM_GET_MSRS`; `None` if KVM does not return it.
    pub fn get_msr(&self, index: u32) -> Result<Option<u64>> {
        let mut msrs = Msrs::from_entries(&[kvm_msr_entry {
            index,
            ..Default::default()
        }])
        .map_err(|_| RunnerError::Kvm {
            what: "Msrs",
            source: kvm_ioctls::Error::new(libc::E2BIG),
        })?;
        let n = self
            .vcpu
            .get_msrs(&mut msrs)
            .map_err(kvm_err("KVM_GET_MSRS"))?;
        Ok((n == 1).then(|| msrs.as_slice()[0].data))
    }

    /// A one-line dump of the architectural registers, for CRASH details.
    pub fn register_dump(&self) -> String {
        match (self.vcpu.get_regs(), self.vcpu.get_sregs()) {
            (Ok(r), Ok(s)) => format!(
                "rip={:#x} rsp={:#x} rflags={:#x} rax={:#x} rbx={:#x} rcx={:#x} rdx={:#x} \
                 rsi={:#x} rdi={:#x} cs={:#x} ss={:#x} cr0={:#x} cr2={:#x} cr3={:#x} cr4={:#x} \
                 efer={:#x}",
                r.rip,
                r.rsp,
                r.rflags,
                r.rax,
                r.rbx,
                r.rcx,
                r.rdx,
                r.rsi,
                r.rdi,
                s.cs.selector,
                s.ss.selector,
                s.cr0,
                s.cr2,
                s.cr3,
                s.cr4,
                s.efer
            ),
            (Err(e), _) | (_, Err(e)) => format!("registers unavailable: {e}"),
        }
    }

    /// Runs the vCPU until the handler stops it, the guest crashes, or `timeout` expires.
    pub fn run(&mut self, handler: &mut dyn ExitHandler, timeout: Duration) -> Result<RunEnd> {
        install_timer_handler();
        let start = Instant::now();
        let deadline = start + timeout;
        self.vcpu.set_kvm_immediate_exit(0);
        let run_ptr = std::ptr::addr_of_mut!(self.vcpu.get_kvm_run().immediate_exit);
        RUN_FLAG.with(|c| c.set(run_ptr));
        let timer = RunTimer::arm(timeout);
        let end = match timer {
            Ok(_t) => self.run_loop(handler, deadline, start),
            Err(e) => Err(e),
        };
        RUN_FLAG.with(|c| c.set(std::ptr::null_mut()));
        end
    }

    fn run_loop(
        &mut self,
        handler: &mut dyn ExitHandler,
        deadline: Instant,
        start: Instant,
    ) -> Result<RunEnd> {
        loop {
            let action = match self.vcpu.run() {
                Ok(VcpuExit::IoOut(port, data)) if port == REPORT_PORT => {
                    let gpa = match <[u8; 4]>::try_from(data) {
                        Ok(b) => u64::from(u32::from_le_bytes(b)),
                        Err(_) => {
                            return Ok(RunEnd::Unexpected(format!(
                                "report port written with {} bytes (want a 4-byte GPA)",
                                data.len()
                            )));
                        }
                    };
                    let mut raw = [0u8; MESSAGE_SIZE];
                    match self.mem.read(gpa, &mut raw) {
                        Ok(()) => {
                            let msg = Message::from_bytes(&raw);
                            if msg.magic == MESSAGE_MAGIC {
                                handler.report(&msg)
                            } else {
                                Action::Unexpected(format!(
                                    "report message at {gpa:#x} has bad magic"
                                ))
                            }
                        }
                        Err(_) => {
                            Action::Unexpected(format!("report message at {gpa:#x} outside RAM"))
                        }
                    }
                }
                Ok(VcpuExit::IoOut(port, data)) => handler.io_out(port, data),
                Ok(VcpuExit::IoIn(port, data)) => handler.io_in(port, data),
                Ok(VcpuExit::MmioWrite(gpa, data)) => handler.mmio_write(gpa, data),
                Ok(VcpuExit::MmioRead(gpa, data)) => handler.mmio_read(gpa, data),
                Ok(VcpuExit::Hlt) => handler.hlt(),
                Ok(VcpuExit::Shutdown) => return Ok(RunEnd::Shutdown),
                Ok(VcpuExit::InternalError) => {
                    // SAFETY: the exit reason is KVM_EXIT_INTERNAL_ERROR, so the kernel filled
                    // the `internal` member of the union.
                    let sub = unsafe { self.vcpu.get_kvm_run().__bindgen_anon_1.internal.suberror };
                    return Ok(RunEnd::InternalError(sub));
                }
                Ok(VcpuExit::FailEntry(reason, _cpu)) => return Ok(RunEnd::FailEntry(reason)),
                Ok(VcpuExit::Intr) => Action::Continue,
                Ok(other) => return Ok(RunEnd::Unexpected(format!("unhandled exit {other:?}"))),
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                    if Instant::now() >= deadline {
                        return Ok(RunEnd::Timeout(start.elapsed()));
                    }
                    self.vcpu.set_kvm_immediate_exit(0);
                    Action::Continue
                }
                Err(e) => {
                    return Err(RunnerError::Kvm {
                        what: "KVM_RUN",
                        source: e,
                    });
                }
            };
            match action {
                Action::Continue => {}
                Action::Stop => return Ok(RunEnd::Stopped),
                Action::Unexpected(why) => return Ok(RunEnd::Unexpected(why)),
            }
        }
    }
}

thread_local! {
    /// `&kvm_run.immediate_exit` of the vCPU this thread is running, for the signal handler.
    static RUN_FLAG: Cell<*mut u8> = const { Cell::new(std::ptr::null_mut()) };
}

fn timer_signal() -> libc::c_int {
    libc::SIGRTMIN() + 2
}

extern "C" fn on_timer(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // A const-initialised thread-local is a plain TLS read: async-signal-safe.
    let p = RUN_FLAG.with(Cell::get);
    if !p.is_null() {
        // SAFETY: the pointer is set only while this thread's `Machine::run` is active and
        // cleared before the vCPU (and so its kvm_run mapping) can be dropped.
        unsafe { std::ptr::write_volatile(p, 1) }
    }
}

fn install_timer_handler() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // Installed without SA_RESTART, so KVM_RUN returns EINTR.
        let _ = vmm_sys_util::signal::register_signal_handler(timer_signal(), on_timer);
    });
}

/// A one-shot POSIX timer that signals the arming thread; deleted on drop.
struct RunTimer(libc::timer_t);

impl RunTimer {
    fn arm(after: Duration) -> Result<Self> {
        // SAFETY: sigevent is a plain C struct for which all-zero is a valid value.
        let mut sev: libc::sigevent = unsafe { std::mem::zeroed() };
        sev.sigev_notify = libc::SIGEV_THREAD_ID;
        sev.sigev_signo = timer_signal();
        // SAFETY: gettid has no preconditions.
        sev.sigev_notify_thread_id = unsafe { libc::gettid() };
        let mut id: libc::timer_t = std::ptr::null_mut();
        // SAFETY: valid pointers to initialised values; the result is checked.
        if unsafe { libc::timer_create(libc::CLOCK_MONOTONIC, &mut sev, &mut id) } != 0 {
            return Err(RunnerError::Timer(std::io::Error::last_os_error()));
        }
        let timer = RunTimer(id);
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: libc::timespec {
                tv_sec: after.as_secs() as libc::time_t,
                tv_nsec: libc::c_long::from(after.subsec_nanos()).max(1),
            },
        };
        // SAFETY: `id` is the timer just created; `spec` is initialised; the result is checked.
        if unsafe { libc::timer_settime(id, 0, &spec, std::ptr::null_mut()) } != 0 {
            return Err(RunnerError::Timer(std::io::Error::last_os_error()));
        }
        Ok(timer)
    }
}

impl Drop for RunTimer {
    fn drop(&mut self) {
        // SAFETY: the id came from timer_create and is deleted exactly once.
        unsafe {
            libc::timer_delete(self.0);
        }
    }
}
