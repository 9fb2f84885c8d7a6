//! The KVM backend: [`Kvm`] (a [`Backend`]) creates [`Machine`]s (a [`Vm`]), and the run loop
//! with its timeout.
//!
//! Every `KVM_RUN` is bounded: before running, each vCPU thread arms a per-thread POSIX timer
//! that delivers a real-time signal to it when the run's time is up. The signal handler sets
//! `kvm_run.immediate_exit`, so a vCPU stuck inside the kernel (some guest actions livelock
//! the local host's `KVM_RUN`) returns `EINTR`, and a signal that lands between two
//! `KVM_RUN`s makes the next one return at once. The loop then ends the run as
//! [`RunEnd::Timeout`]. The same signal, sent by [`Cancel`] kickers, ends a run early: when
//! another vCPU of the run ended it, or when the caller cancelled ([`RunEnd::Cancelled`]).
//! [`Machine::bounded_raw_run`] gives the raw-loop baseline the same bound.
//!
//! With several vCPUs, vCPU 0 runs on the calling thread and each other vCPU on a thread of
//! its own, all sharing the exit handler (behind a mutex). The first vCPU whose run ends
//! (normal stop, crash, timeout) decides the [`RunEnd`] and kicks the others out of `KVM_RUN`.
//!
//! VMM requests (`abi::vmm`) a handler passes on with [`Action::Serve`] are performed by
//! `requests` on the vCPU that made them, between two `KVM_RUN`s.

mod requests;

use std::cell::Cell;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use abi::report::REPORT_PORT;
use kvm_bindings::{
    CpuId, KVM_MAX_CPUID_ENTRIES, Msrs, kvm_msr_entry, kvm_segment, kvm_sregs,
    kvm_userspace_memory_region,
};
use kvm_ioctls::{VcpuExit, VcpuFd, VmFd};

use crate::memory::MmapRam;
use crate::vm::{
    Action, Backend, Cancel, CancelGuard, ExitHandler, FlatSegment, GuestRam, InitialState,
    PROGRESS_SAMPLE, RunEnd, RunLimits, Vm, VmOptions, VmmRequest,
};
use crate::{Result, RunnerError, kvm_err};

/// An open `/dev/kvm` plus what every VM needs from it (the supported CPUID).
#[derive(Debug)]
pub struct Kvm {
    kvm: kvm_ioctls::Kvm,
    cpuid: CpuId,
    msr_list: Vec<u32>,
    max_vcpu_id: u64,
}

/// Environment variable naming the KVM device to open instead of `/dev/kvm` (a device node
/// elsewhere in a container; tests point it at a missing file to see a host without KVM).
pub const KVM_PATH_VAR: &str = "PVMC_KVM_PATH";

impl Kvm {
    /// Opens `/dev/kvm` (or `$PVMC_KVM_PATH`).
    ///
    /// ```no_run
    /// use runner::vm::Vm;
    ///
    /// let kvm = runner::kvm::Kvm::open()?;
    /// let machine = kvm.create_machine(&runner::vm::VmOptions::default())?;
    /// println!("guest TSC: {} kHz", machine.tsc_khz()?);
    /// # Ok::<(), runner::RunnerError>(())
    /// ```
    pub fn open() -> Result<Self> {
        let kvm = match std::env::var_os(KVM_PATH_VAR) {
            Some(p) => {
                use std::os::unix::ffi::OsStrExt;
                let path = std::ffi::CString::new(p.as_bytes())
                    .map_err(|_| RunnerError::OpenKvm(kvm_ioctls::Error::new(libc::EINVAL)))?;
                kvm_ioctls::Kvm::new_with_path(path)
            }
            None => kvm_ioctls::Kvm::new(),
        }
        .map_err(RunnerError::OpenKvm)?;
        let cpuid = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(kvm_err("KVM_GET_SUPPORTED_CPUID"))?;
        let msr_list = kvm
            .get_msr_index_list()
            .map_err(kvm_err("KVM_GET_MSR_INDEX_LIST"))?
            .as_slice()
            .to_vec();
        // KVM_CAP_MAX_VCPU_ID is 0 on kernels that predate it: then ids go up to MAX_VCPUS.
        let max_vcpu_id = match kvm.check_extension_int(kvm_ioctls::Cap::MaxVcpuId) {
            n if n > 0 => n as u64,
            _ => kvm.get_max_vcpus() as u64,
        };
        Ok(Self {
            kvm,
            cpuid,
            msr_list,
            max_vcpu_id,
        })
    }

    /// The CPUID entries KVM supports (also what every vCPU gets).
    pub fn supported_cpuid(&self) -> &CpuId {
        &self.cpuid
    }

    /// `KVM_GET_MSR_INDEX_LIST`.
    pub fn msr_index_list(&self) -> &[u32] {
        &self.msr_list
    }

    /// A fresh VM with `opts.vcpus` vCPUs (CPUID set to the supported set) and zeroed RAM as
    /// memslot 0.
    pub fn create_machine(&self, opts: &VmOptions) -> Result<Machine> {
        let vm = self.kvm.create_vm().map_err(kvm_err("KVM_CREATE_VM"))?;
        let mem = MmapRam::new(opts.ram)?;
        let region = kvm_userspace_memory_region {
            slot: 0,
            flags: 0,
            guest_phys_addr: 0,
            memory_size: mem.size(),
            userspace_addr: mem.host_addr(),
        };
        // SAFETY: the region is backed by `mem`, which `Machine` owns together with the VM;
        // `Machine::drop` closes the vCPUs and the VM before `mem` is dropped, so the mapping
        // outlives the memslot. It is the only slot.
        unsafe { vm.set_user_memory_region(region) }
            .map_err(kvm_err("KVM_SET_USER_MEMORY_REGION"))?;
        if opts.irqchip {
            vm.create_irq_chip()
                .map_err(kvm_err("KVM_CREATE_IRQCHIP"))?;
        }
        let n = opts.vcpus.clamp(1, abi::layout::MAX_VCPUS);
        let first_id = if opts.high_vcpu_ids {
            self.max_vcpu_id.saturating_sub(u64::from(n))
        } else {
            0
        };
        let ids: Vec<u64> = (0..u64::from(n)).map(|i| first_id + i).collect();
        let mut vcpus = Vec::with_capacity(n as usize);
        for &id in &ids {
            let vcpu = vm.create_vcpu(id).map_err(kvm_err("KVM_CREATE_VCPU"))?;
            vcpu.set_cpuid2(&self.cpuid)
                .map_err(kvm_err("KVM_SET_CPUID2"))?;
            vcpus.push(vcpu);
        }
        Ok(Machine {
            vcpus,
            vm: Some(vm),
            mem,
            cpuid: self.cpuid.clone(),
            msr_list: self.msr_list.clone(),
            irqchip: opts.irqchip,
            vcpu_ids: ids,
            extras: Mutex::new(requests::Extras::default()),
        })
    }
}

impl Backend for Kvm {
    fn name(&self) -> &'static str {
        "kvm"
    }

    fn create_vm(&self, opts: &VmOptions) -> Result<Box<dyn Vm>> {
        Ok(Box::new(self.create_machine(opts)?))
    }
}

/// One VM with its vCPUs and RAM. Dropping it destroys the VM, then unmaps the RAM.
#[derive(Debug)]
pub struct Machine {
    vcpus: Vec<VcpuFd>,
    vm: Option<VmFd>,
    mem: MmapRam,
    /// The CPUID every vCPU was given (`KVM_SET_CPUID2`).
    cpuid: CpuId,
    /// `KVM_GET_MSR_INDEX_LIST`, for [`abi::vmm::Op::RoundTrip`].
    msr_list: Vec<u32>,
    irqchip: bool,
    /// KVM vCPU id of each vCPU (index = vCPU).
    vcpu_ids: Vec<u64>,
    /// Memslots and eventfds VMM requests added.
    extras: Mutex<requests::Extras>,
}

impl Drop for Machine {
    fn drop(&mut self) {
        // The memslots refer to `mem` and to the extra slots' memory: close the vCPUs and the
        // VM first (the fields are dropped after this, `mem` and `extras` among them).
        self.vcpus.clear();
        drop(self.vm.take());
    }
}

fn segment(s: FlatSegment) -> kvm_segment {
    kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector: s.selector,
        type_: if s.code { 0xb } else { 0x3 },
        present: 1,
        dpl: 0,
        db: u8::from(!s.code),
        s: 1,
        l: u8::from(s.code),
        g: 1,
        avl: 0,
        unusable: 0,
        padding: 0,
    }
}

fn long_mode_sregs(mut s: kvm_sregs, v: &crate::vm::VcpuState) -> kvm_sregs {
    s.cr0 = v.cr0;
    s.cr3 = v.cr3;
    s.cr4 = v.cr4;
    s.efer = v.efer;
    s.cs = segment(v.cs);
    let data = segment(v.data);
    s.ds = data;
    s.es = data;
    s.fs = data;
    s.gs = data;
    s.ss = data;
    s
}

impl Machine {
    /// Reads an MSR of vCPU 0 with `KVM_GET_MSRS`; `None` if KVM does not return it.
    pub fn get_msr(&self, index: u32) -> Result<Option<u64>> {
        let mut msrs = Msrs::from_entries(&[kvm_msr_entry {
            index,
            ..Default::default()
        }])
        .map_err(|_| RunnerError::Kvm {
            what: "Msrs",
            error: kvm_ioctls::Error::new(libc::E2BIG),
        })?;
        let n = self.vcpus[0]
            .get_msrs(&mut msrs)
            .map_err(kvm_err("KVM_GET_MSRS"))?;
        Ok((n == 1).then(|| msrs.as_slice()[0].data))
    }

    /// Runs `f` on vCPU 0's fd under the same timer bound as [`Vm::run`]: a `KVM_RUN` inside
    /// `f` returns `EINTR` once `timeout` has passed. For the raw-loop baseline, which must
    /// not share the run loop it is the baseline for.
    pub fn bounded_raw_run<R>(
        &mut self,
        timeout: Duration,
        f: impl FnOnce(&mut VcpuFd) -> R,
    ) -> Result<R> {
        install_timer_handler()?;
        let vcpu = &mut self.vcpus[0];
        vcpu.set_kvm_immediate_exit(0);
        let _flag = RunFlag::set(vcpu);
        let _timer = RunTimer::arm(timeout)?;
        Ok(f(vcpu))
    }
}

impl Vm for Machine {
    fn memory(&self) -> &dyn GuestRam {
        &self.mem
    }

    fn set_initial_state(&mut self, state: &InitialState) -> Result<()> {
        if state.vcpus.len() != self.vcpus.len() {
            return Err(RunnerError::Setup(format!(
                "initial state for {} vCPUs, the VM has {}",
                state.vcpus.len(),
                self.vcpus.len()
            )));
        }
        for (vcpu, v) in self.vcpus.iter().zip(&state.vcpus) {
            let sregs = vcpu.get_sregs().map_err(kvm_err("KVM_GET_SREGS"))?;
            vcpu.set_sregs(&long_mode_sregs(sregs, v))
                .map_err(kvm_err("KVM_SET_SREGS"))?;
            let regs = kvm_bindings::kvm_regs {
                rip: v.rip,
                rsp: v.rsp,
                rdi: v.rdi,
                rsi: v.rsi,
                rflags: v.rflags,
                ..Default::default()
            };
            vcpu.set_regs(&regs).map_err(kvm_err("KVM_SET_REGS"))?;
            if v.runnable {
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

    fn tsc_khz(&self) -> Result<u32> {
        self.vcpus[0]
            .get_tsc_khz()
            .map_err(kvm_err("KVM_GET_TSC_KHZ"))
    }

    fn run(
        &mut self,
        handler: &mut (dyn ExitHandler + Send),
        limits: &RunLimits,
    ) -> Result<RunEnd> {
        install_timer_handler()?;
        let Some(vm) = self.vm.as_ref() else {
            return Err(RunnerError::Setup("the VM is closed".into()));
        };
        let shared = Shared {
            handler: Mutex::new(handler),
            stop: Cancel::new(),
            end: Mutex::new(None),
            start: Instant::now(),
            limits,
            ctx: requests::Ctx {
                vm,
                mem: &self.mem,
                cpuid: &self.cpuid,
                msr_list: &self.msr_list,
                irqchip: self.irqchip,
                extras: &self.extras,
            },
        };
        let ids = &self.vcpu_ids;
        let (first, rest) = self.vcpus.split_at_mut(1);
        std::thread::scope(|s| {
            for (i, vcpu) in rest.iter_mut().enumerate() {
                let shared = &shared;
                let id = ids.get(i + 1).copied().unwrap_or_default();
                s.spawn(move || run_vcpu(vcpu, id, shared));
            }
            run_vcpu(
                &mut first[0],
                ids.first().copied().unwrap_or_default(),
                &shared,
            );
        });
        match shared.end.into_inner() {
            Ok(Some(end)) => end,
            _ => Ok(RunEnd::Unexpected(
                "no vCPU recorded how the run ended".into(),
            )),
        }
    }

    fn register_dump(&self) -> String {
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
struct Shared<'h, 'l> {
    handler: Mutex<&'h mut (dyn ExitHandler + Send)>,
    /// Cancelled by the first vCPU whose run ends, to kick the others.
    stop: Cancel,
    end: Mutex<Option<Result<RunEnd>>>,
    start: Instant,
    limits: &'l RunLimits,
    /// What VMM requests act on.
    ctx: requests::Ctx<'l>,
}

impl Shared<'_, '_> {
    /// Records the first end and kicks every other vCPU thread out of `KVM_RUN`.
    fn finish(&self, end: Result<RunEnd>) {
        if let Ok(mut slot) = self.end.lock()
            && slot.is_none()
        {
            *slot = Some(end);
        }
        self.stop.cancel();
    }
}

/// Registers the calling thread with `token`: cancelling it sends this thread the timer
/// signal, which kicks its vCPU out of `KVM_RUN`.
fn kick_me_on(token: &Cancel) -> CancelGuard {
    // SAFETY: pthread_self has no preconditions.
    let me = unsafe { libc::pthread_self() };
    token.on_cancel(move || {
        // SAFETY: the guard returned below deregisters this kicker (under the token's lock,
        // which `cancel` holds while kicking) before the thread leaves `run_vcpu`, so `me` is a
        // live thread whenever this runs; the signal's handler only sets that thread's
        // `immediate_exit`.
        unsafe {
            libc::pthread_kill(me, timer_signal());
        }
    })
}

/// Runs one vCPU on the current thread until the run ends for it (see [`Vm::run`]).
fn run_vcpu(vcpu: &mut VcpuFd, id: u64, shared: &Shared<'_, '_>) {
    vcpu.set_kvm_immediate_exit(0);
    let flag = RunFlag::set(vcpu);
    let end = {
        let _stop = kick_me_on(&shared.stop);
        let _cancel = kick_me_on(&shared.limits.cancel);
        let remaining = shared.limits.timeout.saturating_sub(shared.start.elapsed());
        let period = shared.limits.no_progress.map(|_| PROGRESS_SAMPLE);
        match RunTimer::arm_periodic(remaining, period) {
            Ok(_timer) => vcpu_loop(vcpu, id, shared),
            Err(e) => Err(e),
        }
    };
    drop(flag);
    if !shared.stop.is_cancelled() {
        shared.finish(end);
    }
}

/// Why the loop must stop now, if it must (checked before each `KVM_RUN` and after `EINTR`).
fn must_stop(shared: &Shared<'_, '_>) -> Option<RunEnd> {
    if shared.stop.is_cancelled() {
        Some(RunEnd::Stopped)
    } else if shared.limits.cancel.is_cancelled() {
        Some(RunEnd::Cancelled)
    } else if shared.start.elapsed() >= shared.limits.timeout {
        Some(RunEnd::Timeout(shared.start.elapsed()))
    } else {
        None
    }
}

/// Progress of one vCPU between samples (see [`RunLimits::no_progress`]).
#[derive(Default)]
struct Progress {
    last: Option<kvm_bindings::kvm_regs>,
    since: Option<Instant>,
}

impl Progress {
    /// Takes a sample; `Some` when the vCPU has made no progress for `bound`.
    fn sample(&mut self, vcpu: &VcpuFd, bound: Duration) -> Option<RunEnd> {
        let halted = vcpu
            .get_mp_state()
            .is_ok_and(|m| m.mp_state == kvm_bindings::KVM_MP_STATE_HALTED);
        let regs = vcpu.get_regs().ok()?;
        let same = !halted && self.last.as_ref().is_some_and(|l| same_regs(l, &regs));
        if !same {
            self.last = Some(regs);
            self.since = Some(Instant::now());
            return None;
        }
        let since = self.since?;
        (since.elapsed() >= bound).then(|| RunEnd::NoProgress {
            after: since.elapsed(),
            rip: regs.rip,
        })
    }
}

/// RFLAGS.RF: set and cleared around each attempt to run a faulting instruction again, so it
/// says nothing about progress.
const RFLAGS_RF: u64 = 1 << 16;

fn same_regs(a: &kvm_bindings::kvm_regs, b: &kvm_bindings::kvm_regs) -> bool {
    (
        a.rip,
        a.rsp,
        a.rflags & !RFLAGS_RF,
        a.rax,
        a.rbx,
        a.rcx,
        a.rdx,
        a.rsi,
        a.rdi,
        a.rbp,
    ) == (
        b.rip,
        b.rsp,
        b.rflags & !RFLAGS_RF,
        b.rax,
        b.rbx,
        b.rcx,
        b.rdx,
        b.rsi,
        b.rdi,
        b.rbp,
    ) && (a.r8, a.r9, a.r10, a.r11, a.r12, a.r13, a.r14, a.r15)
        == (b.r8, b.r9, b.r10, b.r11, b.r12, b.r13, b.r14, b.r15)
}

fn vcpu_loop(vcpu: &mut VcpuFd, id: u64, shared: &Shared<'_, '_>) -> Result<RunEnd> {
    let mem = shared.ctx.mem;
    let mut progress = Progress::default();
    let mut local = requests::VcpuLocal::new(id);
    // The kvm_run page stays mapped as long as the vCPU; the loop reads `io.size` through it
    // (kvm-ioctls' exit gives the data of all `count` items but not the item size).
    let run_page: *const kvm_bindings::kvm_run = vcpu.get_kvm_run();
    loop {
        if let Some(end) = must_stop(shared) {
            return Ok(end);
        }
        local.before_run(vcpu)?;
        let exit = vcpu.run();
        let Ok(mut guard) = shared.handler.lock() else {
            return Ok(RunEnd::Unexpected("exit handler poisoned".into()));
        };
        let handler: &mut (dyn ExitHandler + Send) = &mut **guard;
        let mut reply_at = None;
        let mut interrupted = false;
        let action = match exit {
            Ok(VcpuExit::IoOut(port, data)) if port == REPORT_PORT => {
                match crate::vm::report_exit(mem, handler, data) {
                    Ok((a, gpa)) => {
                        reply_at = Some(gpa);
                        a
                    }
                    Err(end) => return Ok(end),
                }
            }
            Ok(VcpuExit::IoOut(port, data)) => {
                let size = io_item_size(run_page, data.len());
                per_item(data.chunks(size), |item| handler.io_out(port, item))
            }
            Ok(VcpuExit::IoIn(port, data)) => {
                let size = io_item_size(run_page, data.len());
                per_item(data.chunks_mut(size), |item| handler.io_in(port, item))
            }
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
            Ok(VcpuExit::Intr | VcpuExit::IrqWindowOpen) => Action::Continue,
            Ok(other) => return Ok(RunEnd::Unexpected(format!("unhandled exit {other:?}"))),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                interrupted = true;
                Action::Continue
            }
            Err(e) => {
                return Err(RunnerError::Kvm {
                    what: "KVM_RUN",
                    error: e,
                });
            }
        };
        drop(guard);
        if interrupted {
            if let Some(end) = must_stop(shared) {
                return Ok(end);
            }
            if let Some(bound) = shared.limits.no_progress
                && let Some(end) = progress.sample(vcpu, bound)
            {
                return Ok(end);
            }
            vcpu.set_kvm_immediate_exit(0);
        }
        match action {
            Action::Continue => {}
            Action::Stop => return Ok(RunEnd::Stopped),
            Action::Unexpected(why) => return Ok(RunEnd::Unexpected(why)),
            Action::Serve(req) => {
                let reply = local.serve(vcpu, &shared.ctx, req);
                crate::vm::write_reply(mem, reply_at, req, reply)?;
            }
            Action::Reply(values) => {
                let req = VmmRequest {
                    op: 0,
                    args: [0; 3],
                };
                crate::vm::write_reply(mem, reply_at, req, values)?;
            }
        }
    }
}

/// The item size of the current `KVM_EXIT_IO` (a string instruction's exit carries `count`
/// items of this size), or `len` if it does not divide it.
fn io_item_size(run_page: *const kvm_bindings::kvm_run, len: usize) -> usize {
    // SAFETY: `run_page` points at this vCPU's kvm_run mapping, which outlives the loop; the
    // exit reason is KVM_EXIT_IO, so the kernel filled the `io` member of the union. Only
    // `io.size` is read, through a raw pointer, while the exit's data slice (a different part
    // of the page) is borrowed.
    let size =
        unsafe { usize::from(std::ptr::addr_of!((*run_page).__bindgen_anon_1.io.size).read()) };
    if size == 0 || !len.is_multiple_of(size) {
        len.max(1)
    } else {
        size
    }
}

/// Hands each item of a string I/O exit to `f`, in order (as a VMM loops over `io.count`),
/// stopping at the first that does not continue.
fn per_item<T>(items: impl Iterator<Item = T>, mut f: impl FnMut(T) -> Action) -> Action {
    for item in items {
        let a = f(item);
        if a != Action::Continue {
            return a;
        }
    }
    Action::Continue
}

thread_local! {
    /// `&kvm_run.immediate_exit` of the vCPU this thread is running, for the signal handler.
    static RUN_FLAG: Cell<*mut u8> = const { Cell::new(std::ptr::null_mut()) };
}

/// Points this thread's [`RUN_FLAG`] at a vCPU's `immediate_exit` while alive.
struct RunFlag;

impl RunFlag {
    fn set(vcpu: &mut VcpuFd) -> Self {
        let p = std::ptr::addr_of_mut!(vcpu.get_kvm_run().immediate_exit);
        RUN_FLAG.with(|c| c.set(p));
        RunFlag
    }
}

impl Drop for RunFlag {
    fn drop(&mut self) {
        RUN_FLAG.with(|c| c.set(std::ptr::null_mut()));
    }
}

fn timer_signal() -> libc::c_int {
    libc::SIGRTMIN() + 2
}

extern "C" fn on_timer(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // A const-initialised thread-local is a plain TLS read: async-signal-safe.
    let p = RUN_FLAG.with(Cell::get);
    if !p.is_null() {
        // SAFETY: the pointer is set only while a `RunFlag` of this thread is alive, which
        // ends before the vCPU (and so its kvm_run mapping) can be dropped.
        unsafe { std::ptr::write_volatile(p, 1) }
    }
}

/// Installs the timer signal's handler once; every later call returns the first result.
fn install_timer_handler() -> Result<()> {
    static INSTALLED: OnceLock<std::result::Result<(), String>> = OnceLock::new();
    INSTALLED
        .get_or_init(|| {
            // Installed without SA_RESTART, so KVM_RUN returns EINTR.
            vmm_sys_util::signal::register_signal_handler(timer_signal(), on_timer)
                .map_err(|e| e.to_string())
        })
        .clone()
        .map_err(|e| RunnerError::Timer(std::io::Error::other(e)))
}

/// A one-shot POSIX timer that signals the arming thread; deleted on drop.
struct RunTimer(libc::timer_t);

impl RunTimer {
    fn arm(after: Duration) -> Result<Self> {
        Self::arm_periodic(after, None)
    }

    /// Fires after `after` (at the latest; every `period` until then if given).
    fn arm_periodic(after: Duration, period: Option<Duration>) -> Result<Self> {
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
        let ts = |d: Duration| libc::timespec {
            tv_sec: d.as_secs() as libc::time_t,
            tv_nsec: libc::c_long::from(d.subsec_nanos()),
        };
        let first = period.map_or(after, |p| p.min(after));
        let mut value = ts(first);
        value.tv_nsec = value.tv_nsec.max(1);
        let spec = libc::itimerspec {
            it_interval: period.map_or(ts(Duration::ZERO), ts),
            it_value: value,
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
