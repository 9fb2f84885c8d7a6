//! KVM VMs for test guests: creation, the run loop and its timeout.
//!
//! Every `KVM_RUN` is bounded: before running, each vCPU thread arms a per-thread POSIX timer
//! that delivers a real-time signal to it when the case's time is up. The signal handler sets
//! `kvm_run.immediate_exit`, so a vCPU stuck inside the kernel (some guest actions livelock
//! the local host's `KVM_RUN`) returns `EINTR`, and a signal that lands between two
//! `KVM_RUN`s makes the next one return at once. The loop then ends the run as
//! [`RunEnd::Timeout`].
//!
//! With several vCPUs, vCPU 0 runs on the calling thread and each other vCPU on a thread of
//! its own, all sharing the exit handler (behind a mutex). The first vCPU whose run ends
//! (normal stop, crash, timeout) decides the [`RunEnd`] and kicks the others out of `KVM_RUN`
//! with the same signal.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, Once};
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
    /// Number of vCPUs (1 to `abi::layout::MAX_VCPUS`).
    pub vcpus: u32,
}

impl Default for MachineOptions {
    fn default() -> Self {
        Self {
            ram: abi::layout::RAM_SIZE,
            irqchip: false,
            vcpus: 1,
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

    /// A fresh VM with `opts.vcpus` vCPUs (CPUID set to the supported set) and zeroed RAM as
    /// memslot 0.
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
        let n = opts.vcpus.clamp(1, abi::layout::MAX_VCPUS);
        let mut vcpus = Vec::with_capacity(n as usize);
        for id in 0..n {
            let vcpu = vm
                .create_vcpu(u64::from(id))
                .map_err(kvm_err("KVM_CREATE_VCPU"))?;
            vcpu.set_cpuid2(&self.cpuid)
                .map_err(kvm_err("KVM_SET_CPUID2"))?;
            vcpus.push(vcpu);
        }
        Ok(Machine {
            vcpus,
            _vm: vm,
            mem,
        })
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

/// One VM with its vCPUs and RAM. Dropping it destroys the VM.
#[derive(Debug)]
pub struct Machine {
    vcpus: Vec<VcpuFd>,
    _vm: VmFd,
    mem: GuestMemory,
}

impl Machine {
    /// Guest RAM.
    pub fn memory(&self) -> &GuestMemory {
        &self.mem
    }

    /// Sets the direct 64-bit start state of every vCPU with RIP = `entry` (see [`setup`]);
    /// vCPU `i` gets its own stack and RSI = `i`, and vCPUs other than 0 are made runnable.
    pub fn set_long_mode_entry(&self, entry: u64) -> Result<()> {
        for (i, vcpu) in self.vcpus.iter().enumerate() {
            let sregs = vcpu.get_sregs().map_err(kvm_err("KVM_GET_SREGS"))?;
            vcpu.set_sregs(&setup::long_mode_sregs(sregs))
                .map_err(kvm_err("KVM_SET_SREGS"))?;
            vcpu.set_regs(&setup::entry_regs(entry, i as u32))
                .map_err(kvm_err("KVM_SET_REGS"))?;
            if i > 0 {
                // With an in-kernel irqchip KVM keeps vCPUs other than 0 waiting for INIT/SIPI.
                let runnable = kvm_bindings::kvm_mp_state {
                    mp_state: kvm_bindings::KVM_MP_STATE_RUNNABLE,
                };
                vcpu.set_mp_state(runnable)
                    .map_err(kvm_err("KVM_SET_MP_STATE"))?;
            }
        }
        Ok(())
    }

    /// The guest TSC frequency in kHz (`KVM_GET_TSC_KHZ`).
    pub fn tsc_khz(&self) -> Result<u32> {
        self.vcpus[0]
            .get_tsc_khz()
            .map_err(kvm_err("KVM_GET_TSC_KHZ"))
    }

    /// Reads an MSR of vCPU 0 with `KVM_GET_MSRS`; `None` if KVM does not return it.
    pub fn get_msr(&self, index: u32) -> Result<Option<u64>> {
        let mut msrs = Msrs::from_entries(&[kvm_msr_entry {
            index,
            ..Default::default()
        }])
        .map_err(|_| RunnerError::Kvm {
            what: "Msrs",
            source: kvm_ioctls::Error::new(libc::E2BIG),
        })?;
        let n = self.vcpus[0]
            .get_msrs(&mut msrs)
            .map_err(kvm_err("KVM_GET_MSRS"))?;
        Ok((n == 1).then(|| msrs.as_slice()[0].data))
    }

    /// A one-line dump of the architectural registers of every vCPU, for CRASH details.
    pub fn register_dump(&self) -> String {
        let dumps: Vec<String> = self.vcpus.iter().map(dump).collect();
        if dumps.len() == 1 {
            return dumps.concat();
        }
        dumps
            .iter()
            .enumerate()
            .map(|(i, d)| format!("vcpu{i}: {d}"))
            .collect::<Vec<_>>()
            .join(" | ")
    }

    /// Runs the vCPUs until the handler stops the run, a vCPU crashes, or `timeout` expires.
    pub fn run(
        &mut self,
        handler: &mut (dyn ExitHandler + Send),
        timeout: Duration,
    ) -> Result<RunEnd> {
        install_timer_handler();
        let start = Instant::now();
        let shared = Shared {
            handler: Mutex::new(handler),
            stop: AtomicBool::new(false),
            threads: Mutex::new(Vec::new()),
            end: Mutex::new(None),
            start,
            timeout,
        };
        let mem = &self.mem;
        let (first, rest) = self.vcpus.split_at_mut(1);
        std::thread::scope(|s| {
            for vcpu in rest.iter_mut() {
                let shared = &shared;
                s.spawn(move || run_vcpu(vcpu, mem, shared));
            }
            run_vcpu(&mut first[0], mem, &shared);
        });
        match shared.end.into_inner() {
            Ok(Some(end)) => end,
            _ => Ok(RunEnd::Unexpected(
                "no vCPU recorded how the run ended".into(),
            )),
        }
    }
}

fn dump(vcpu: &VcpuFd) -> String {
    match (vcpu.get_regs(), vcpu.get_sregs()) {
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

/// What the vCPU threads of one run share.
struct Shared<'h> {
    handler: Mutex<&'h mut (dyn ExitHandler + Send)>,
    stop: AtomicBool,
    threads: Mutex<Vec<libc::pthread_t>>,
    end: Mutex<Option<Result<RunEnd>>>,
    start: Instant,
    timeout: Duration,
}

impl Shared<'_> {
    /// Records the first end and kicks every other vCPU thread out of `KVM_RUN`.
    fn finish(&self, end: Result<RunEnd>) {
        if let Ok(mut slot) = self.end.lock()
            && slot.is_none()
        {
            *slot = Some(end);
        }
        self.stop.store(true, Ordering::SeqCst);
        if let Ok(threads) = self.threads.lock() {
            for &t in threads.iter() {
                // SAFETY: `t` is a thread of this run that is still registered, so it has not
                // returned from `run_vcpu` (it deregisters first, under the same lock); the
                // signal's handler only sets that thread's `immediate_exit`.
                unsafe {
                    libc::pthread_kill(t, timer_signal());
                }
            }
        }
    }
}

/// Runs one vCPU on the current thread until the run ends for it (see [`Machine::run`]).
fn run_vcpu(vcpu: &mut VcpuFd, mem: &GuestMemory, shared: &Shared<'_>) {
    vcpu.set_kvm_immediate_exit(0);
    let run_ptr = std::ptr::addr_of_mut!(vcpu.get_kvm_run().immediate_exit);
    RUN_FLAG.with(|c| c.set(run_ptr));
    // SAFETY: pthread_self has no preconditions.
    let me = unsafe { libc::pthread_self() };
    if let Ok(mut t) = shared.threads.lock() {
        t.push(me);
    }
    let end = match RunTimer::arm(shared.timeout) {
        Ok(_timer) => vcpu_loop(vcpu, mem, shared),
        Err(e) => Err(e),
    };
    if let Ok(mut t) = shared.threads.lock() {
        t.retain(|&x| x != me);
    }
    RUN_FLAG.with(|c| c.set(std::ptr::null_mut()));
    if !shared.stop.load(Ordering::SeqCst) {
        shared.finish(end);
    }
}

fn vcpu_loop(vcpu: &mut VcpuFd, mem: &GuestMemory, shared: &Shared<'_>) -> Result<RunEnd> {
    loop {
        if shared.stop.load(Ordering::SeqCst) {
            return Ok(RunEnd::Stopped);
        }
        let exit = vcpu.run();
        let Ok(mut guard) = shared.handler.lock() else {
            return Ok(RunEnd::Unexpected("exit handler poisoned".into()));
        };
        let handler: &mut (dyn ExitHandler + Send) = &mut **guard;
        let action = match exit {
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
                match mem.read(gpa, &mut raw) {
                    Ok(()) => {
                        let msg = Message::from_bytes(&raw);
                        if msg.magic == MESSAGE_MAGIC {
                            handler.report(&msg)
                        } else {
                            Action::Unexpected(format!("report message at {gpa:#x} has bad magic"))
                        }
                    }
                    Err(_) => Action::Unexpected(format!("report message at {gpa:#x} outside RAM")),
                }
            }
            Ok(VcpuExit::IoOut(port, data)) => handler.io_out(port, data),
            Ok(VcpuExit::IoIn(port, data)) => handler.io_in(port, data),
            Ok(VcpuExit::MmioWrite(gpa, data)) => handler.mmio_write(gpa, data),
            Ok(VcpuExit::MmioRead(gpa, data)) => handler.mmio_read(gpa, data),
            Ok(VcpuExit::Hlt) => handler.hlt(),
            Ok(VcpuExit::Shutdown) => return Ok(RunEnd::Shutdown),
            Ok(VcpuExit::InternalError) => {
                drop(guard);
                // SAFETY: the exit reason is KVM_EXIT_INTERNAL_ERROR, so the kernel filled the
                // `internal` member of the union.
                let sub = unsafe { vcpu.get_kvm_run().__bindgen_anon_1.internal.suberror };
                return Ok(RunEnd::InternalError(sub));
            }
            Ok(VcpuExit::FailEntry(reason, _cpu)) => return Ok(RunEnd::FailEntry(reason)),
            Ok(VcpuExit::Intr) => Action::Continue,
            Ok(other) => return Ok(RunEnd::Unexpected(format!("unhandled exit {other:?}"))),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                drop(guard);
                if shared.stop.load(Ordering::SeqCst) {
                    return Ok(RunEnd::Stopped);
                }
                if shared.start.elapsed() >= shared.timeout {
                    return Ok(RunEnd::Timeout(shared.start.elapsed()));
                }
                vcpu.set_kvm_immediate_exit(0);
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
