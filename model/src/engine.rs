//! One vCPU on Unicorn: the emulated hardware a PVM host would run the guest on, and the
//! run loop that plays the host around it.
//!
//! Hardware: 64-bit mode at CPL 3 on the host's selectors (a host GDT in a page only the
//! model maps), CR0.PE|PG|WP, CR4.PAE|FSGSBASE, EFER.LME|LMA|SCE|NXE; Unicorn's virtual TLB,
//! filled by [`crate::mmu::walk`]. Guest RAM is shared with the backend's mapping, the VM's
//! memslots are mapped before each run on (`sync_memslots`), and every other
//! guest-physical address above RAM, up to MAXPHYADDR, is MMIO, handed to the exit handler.
//!
//! The loop: deliver what is pending (#MC, NMI, timer, IPIs), run until Unicorn stops for an
//! exception (interrupt hook), a `syscall` (instruction hook), a failed translation (TLB
//! hook), an MMIO access the handler ends the run on, or the watchdog (at the timeout, when
//! an armed timer is due, or on cancellation; it looks every [`SLICE`]); then do what the host
//! does. Every stop is a kick that the block hook turns into a stop at the start of the next
//! block (`set_stop`). One of several vCPUs runs each iteration with the VM's turn
//! ([`crate::smp`]) and stops at least every [`crate::smp::SLICE`] to hand it on.

use std::cell::RefCell;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use runner::memory::MmapRam;
use runner::vm::{Action, ExitHandler, GuestRam, RunEnd, RunLimits};
use unicorn_engine::{Arch, MemType, Mode, Prot, RegisterX86, TlbEntry, TlbType, Unicorn, X86Insn};

use crate::emulate::{self, Op};
use crate::faults::Fault;
use crate::mmu::{self, Access, PageFault, WalkCtx};
use crate::pvm::{self, Event, Pvm, Regs, TripleFault, WrmsrError, canonical};
use crate::smp::Smp;
use abi::x86::msr;

/// How often the watchdog looks at the clock (it stops the emulator only when due).
pub const SLICE: Duration = Duration::from_millis(2);

/// Guest-virtual address of the host GDT (in the host's top 2 GiB, never legal for a guest).
const HOST_GDT_VA: u64 = 0xffff_ffff_ff5f_0000;
/// Where the model keeps the host GDT in Unicorn's physical space: at MAXPHYADDR, above every
/// address a guest paging entry can name.
const HOST_GDT_PA: u64 = 1 << crate::pvm::MAXPHYADDR;
/// The model's code page (right after the GDT): an `iretq` that loads CS and SS. Unicorn's
/// register writes in 64-bit mode set only the selectors (not the descriptors, nor the CPL),
/// so every change of the hardware CS/SS goes through a real IRETQ on this page, with the
/// frame at [`IRET_FRAME_OFFSET`].
const HOST_CODE_VA: u64 = HOST_GDT_VA + 0x1000;
/// Where an x86-64 Linux host keeps its IDT (`CPU_ENTRY_AREA_RO_IDT`): what SIDT shows. Not
/// mapped: nothing reads it.
const HOST_IDT_VA: u64 = 0xffff_fe00_0000_0000;
/// The host TSS's address (SDM: STR shows only the selector; the base is for completeness).
const HOST_TSS_VA: u64 = 0xffff_fe00_0000_3000;
/// Physical page of [`HOST_CODE_VA`].
const HOST_CODE_PA: u64 = HOST_GDT_PA + 0x1000;
/// Offset of the IRETQ frame in the code page.
const IRET_FRAME_OFFSET: u64 = 0x800;
/// End of the MMIO space (guest-physical addresses from the end of RAM to here are MMIO,
/// `KVM_EXIT_MMIO` on a host without memslots there).
const MMIO_END: u64 = 1 << crate::pvm::MAXPHYADDR;

/// Where the model's VMM puts extra memslots: the window cases use
/// (`abi::vmm::EXTRA_SLOT_GPA`), as large as one slot may be.
pub const SLOT_WINDOW: (u64, u64) = (
    abi::vmm::EXTRA_SLOT_GPA,
    abi::vmm::EXTRA_SLOT_GPA + abi::vmm::MAX_SLOT_SIZE,
);

/// The TSC of the machine the model runs on (Unicorn's RDTSC reads it too).
pub fn host_tsc() -> u64 {
    // SAFETY: RDTSC has no memory effects; x86-64 always has it.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// The state of one vCPU between runs.
#[derive(Clone, Debug)]
pub struct Vcpu {
    /// Registers.
    pub regs: Regs,
    /// The PVM side.
    pub pvm: Pvm,
    /// The VM's in-kernel devices (shared by its vCPUs).
    pub devices: crate::devices::Shared,
}

/// Why Unicorn stopped.
#[derive(Clone, Debug)]
enum Stop {
    /// An exception or `int n`.
    Intr(u32),
    /// `syscall`.
    Syscall,
    /// The exit handler asked for this on an MMIO or port access.
    Handler(Action),
    /// The run ends (an OUT to the report channel that could not be handled).
    End(RunEnd),
    /// Nothing to handle, but the loop must look at the vCPU again (a VMM request changed
    /// it).
    Resync,
    /// Port I/O in user mode: a #GP at `pc`.
    UserIo {
        /// The instruction.
        pc: u64,
    },
    /// The block at `block` holds an instruction at `at`, after its start, that the block
    /// hook must stop before (user-mode port I/O, a [`emulate::BlockScan::check_switch`]):
    /// run the block up to `at` (an exit there), where the hook stops again.
    Ahead {
        /// The block's start.
        block: u64,
        /// The instruction.
        at: u64,
    },
    /// The block starts with an instruction that may turn on the checks made one instruction
    /// at a time: the loop single-steps from here.
    Check,
}

/// The data the hooks share.
struct Hw {
    walk: WalkCtx,
    pf: Option<PageFault>,
    stop: Option<Stop>,
    /// The translations handed to Unicorn since the last flush, by page: what a real TLB
    /// may still hold.
    fills: std::collections::HashMap<u64, TlbEntry>,
    /// Stale translations a fault switch keeps past a flush (see `Pvm::keep_stale`): the TLB
    /// hook answers from here first, until a real flush.
    pinned: std::collections::HashMap<u64, TlbEntry>,
    /// A stop is wanted: the block hook stops the engine at the start of the next translation
    /// block (see [`set_stop`]).
    kick: Arc<AtomicBool>,
    /// The 8-byte MMIO access in progress, which Unicorn hands to the MMIO callbacks as two
    /// 4-byte halves (its MMIO regions have QEMU's default `impl.max_access_size` of 4).
    wide: Option<WideMmio>,
    /// What the block hook read in each block since the last flush.
    scans: BlockScans,
    /// Single-stepping: how many more blocks may start before the block hook stops the
    /// engine (the stepped instruction's own block is the one).
    step_blocks: Option<u8>,
}

/// The block hook's [`emulate::BlockScan`]s by block (start and size), so that a block's code
/// is read and decoded once per TLB flush, not each time it runs. Direct-mapped: a block
/// whose slot another took is scanned again; a flush starts a new epoch (entries of older
/// ones no longer count) instead of clearing the table. Guest code that changes in place
/// without a flush would keep its old scan (no guest of the suite writes code).
struct BlockScans {
    slots: Vec<ScanSlot>,
    epoch: u32,
}

/// One [`BlockScans`] entry: the block, the epoch it was scanned in, and the scan as offsets
/// from the block's start ([`ScanSlot::NONE`]: nothing found).
#[derive(Clone, Copy, Default)]
struct ScanSlot {
    addr: u64,
    epoch: u32,
    size: u16,
    port_io: u16,
    check_switch: u16,
}

impl ScanSlot {
    const NONE: u16 = u16::MAX;
}

impl BlockScans {
    const SLOTS: usize = 2048;

    fn new() -> Self {
        BlockScans {
            slots: vec![ScanSlot::default(); Self::SLOTS],
            epoch: 1,
        }
    }

    /// The scan of the block at `addr` (`size` bytes), from `scan` when not recorded.
    fn get(
        &mut self,
        addr: u64,
        size: u32,
        scan: impl FnOnce() -> emulate::BlockScan,
    ) -> emulate::BlockScan {
        let epoch = self.epoch;
        let slot = &mut self.slots[(addr ^ addr >> 11) as usize % Self::SLOTS];
        let at = |off: u16| (off != ScanSlot::NONE).then(|| addr + u64::from(off));
        // A translation block is at most a page and an instruction long, but a size that
        // does not fit is simply not recorded.
        let Ok(size16) = u16::try_from(size) else {
            return scan();
        };
        if slot.epoch == epoch && slot.addr == addr && slot.size == size16 {
            return emulate::BlockScan {
                port_io: at(slot.port_io),
                check_switch: at(slot.check_switch),
            };
        }
        let found = scan();
        let off = |a: Option<u64>| {
            a.and_then(|a| u16::try_from(a - addr).ok())
                .unwrap_or(ScanSlot::NONE)
        };
        *slot = ScanSlot {
            addr,
            epoch,
            size: size16,
            port_io: off(found.port_io),
            check_switch: off(found.check_switch),
        };
        found
    }

    /// Forgets every scan (a TLB flush: the code behind an address may have changed).
    fn clear(&mut self) {
        self.epoch = self.epoch.wrapping_add(1);
        if self.epoch == 0 {
            // Entries of the first epoch would count again: clear them once in 2^32 flushes.
            self.slots.fill(ScanSlot::default());
            self.epoch = 1;
        }
    }
}

/// An 8-byte MMIO access as the memory hook saw it (the whole access, before the split):
/// the callbacks give the device one access of 8 bytes for the two halves, as KVM's emulator
/// does (`KVM_EXIT_MMIO` of 8 bytes).
#[derive(Clone, Copy, Debug)]
struct WideMmio {
    /// Guest-physical address.
    gpa: u64,
    /// A write (with `value`), else a read.
    write: bool,
    /// The written value.
    value: u64,
    /// The upper half of a read, once the device answered the lower half's callback.
    high: Option<u32>,
}

/// At most this many recorded fills (a TLB is finite; older ones are forgotten).
const MAX_FILLS: usize = 4096;

type Uc<'a> = Unicorn<'a, Hw>;

/// Records why the engine must stop, unless a stop is already recorded, and asks the block
/// hook for the stop: it takes effect at the end of the translation block, and what a later
/// instruction of the block raised was not architecturally reached (the instruction runs
/// again when the guest resumes at the first stop's RIP). A [`Stop::Resync`] is no such stop
/// (the guest goes on where the engine stopped; the loop only looks at the vCPU), so a later
/// one replaces it: a `syscall` later in the block ran in hardware, and its hook's stop must
/// not be lost.
fn set_stop(uc: &mut Unicorn<'_, Hw>, stop: Stop) {
    let d = uc.get_data_mut();
    if d.stop.is_none() || matches!(d.stop, Some(Stop::Resync)) {
        d.stop = Some(stop);
    }
    d.kick.store(true, Ordering::Release);
}

fn uc_err(what: &str) -> impl Fn(unicorn_engine::uc_error) -> runner::RunnerError + '_ {
    move |e| runner::RunnerError::Setup(format!("unicorn: {what}: {e:?}"))
}

/// A descriptor-table register value for Unicorn (`uc_x86_mmr`: selector, base, limit,
/// flags).
fn mmr(base: u64, limit: u32) -> [u8; 24] {
    let mut b = [0u8; 24];
    b[8..16].copy_from_slice(&base.to_le_bytes());
    b[16..20].copy_from_slice(&limit.to_le_bytes());
    b
}

fn msr_bytes(rid: u32, value: u64) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[0..4].copy_from_slice(&rid.to_le_bytes());
    b[8..16].copy_from_slice(&value.to_le_bytes());
    b
}

const GPRS: [RegisterX86; 16] = [
    RegisterX86::RAX,
    RegisterX86::RBX,
    RegisterX86::RCX,
    RegisterX86::RDX,
    RegisterX86::RSI,
    RegisterX86::RDI,
    RegisterX86::RBP,
    RegisterX86::RSP,
    RegisterX86::R8,
    RegisterX86::R9,
    RegisterX86::R10,
    RegisterX86::R11,
    RegisterX86::R12,
    RegisterX86::R13,
    RegisterX86::R14,
    RegisterX86::R15,
];

fn gpr_slots(r: &mut Regs) -> [&mut u64; 16] {
    [
        &mut r.rax, &mut r.rbx, &mut r.rcx, &mut r.rdx, &mut r.rsi, &mut r.rdi, &mut r.rbp,
        &mut r.rsp, &mut r.r8, &mut r.r9, &mut r.r10, &mut r.r11, &mut r.r12, &mut r.r13,
        &mut r.r14, &mut r.r15,
    ]
}

fn read_regs(uc: &Uc<'_>, r: &mut Regs) {
    for (slot, reg) in gpr_slots(r).into_iter().zip(GPRS) {
        *slot = uc.reg_read(reg).unwrap_or(0);
    }
    r.rip = uc.reg_read(RegisterX86::RIP).unwrap_or(0);
    r.rflags = uc.reg_read(RegisterX86::RFLAGS).unwrap_or(0);
    r.fs_base = uc.reg_read(RegisterX86::FS_BASE).unwrap_or(0);
    r.gs_base = uc.reg_read(RegisterX86::GS_BASE).unwrap_or(0);
    r.cs = uc.reg_read(RegisterX86::CS).unwrap_or(0) as u16;
    r.ss = uc.reg_read(RegisterX86::SS).unwrap_or(0) as u16;
}

fn write_regs(uc: &mut Uc<'_>, r: &Regs, segments: bool) -> runner::Result<()> {
    let mut r = *r;
    let values: Vec<u64> = gpr_slots(&mut r).into_iter().map(|v| *v).collect();
    for (reg, v) in GPRS.into_iter().zip(values) {
        uc.reg_write(reg, v).map_err(uc_err("write a register"))?;
    }
    uc.reg_write(RegisterX86::FS_BASE, r.fs_base)
        .map_err(uc_err("FS base"))?;
    uc.reg_write(RegisterX86::GS_BASE, r.gs_base)
        .map_err(uc_err("GS base"))?;
    // A load through the stub that has not run yet (the engine has not started since) must
    // not be skipped by writing RIP directly: the CPU would stay at CPL0 in guest code.
    let stub_pending = uc.pc_read().is_ok_and(|pc| pc == HOST_CODE_VA);
    if segments || stub_pending {
        // Through the IRETQ stub (see HOST_CODE_VA): RIP, CS, RFLAGS, RSP, SS.
        let frame: Vec<u8> = [r.rip, u64::from(r.cs), r.rflags, r.rsp, u64::from(r.ss)]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        uc.mem_write(HOST_CODE_PA + IRET_FRAME_OFFSET, &frame)
            .map_err(uc_err("IRETQ frame"))?;
        uc.reg_write(RegisterX86::RSP, HOST_CODE_VA + IRET_FRAME_OFFSET)
            .map_err(uc_err("RSP"))?;
        uc.reg_write(RegisterX86::RIP, HOST_CODE_VA)
            .map_err(uc_err("RIP"))?;
        return Ok(());
    }
    uc.reg_write(RegisterX86::RIP, r.rip)
        .map_err(uc_err("RIP"))?;
    uc.reg_write(RegisterX86::RFLAGS, r.rflags)
        .map_err(uc_err("RFLAGS"))?;
    Ok(())
}

/// The walk context of the vCPU's current mode.
pub(crate) fn walk_ctx(p: &Pvm) -> WalkCtx {
    WalkCtx {
        cr3: p.cr3,
        user: !p.smod,
        nxe: p.efer & (1 << 11) != 0,
        // The 6.12 host forces SMEP when the host has NX (host MMU `__link_shadow_page`):
        // supervisor mode cannot execute user pages. The RFC hosts switch CR3 between the
        // modes instead and do not (notes §7).
        smep: p.generation == crate::pvm::Generation::V2,
        wp: p.cr0 & abi::x86::cr0::WP != 0,
        range: p.range(),
        us_split: true,
        faults: p.faults,
    }
}

/// Translates `va` for `access` without side effects on the guest beyond A/D bits.
fn translate(
    mem: &dyn GuestRam,
    walk: &WalkCtx,
    va: u64,
    access: Access,
) -> Result<u64, PageFault> {
    mmu::walk(mem, walk, va, access).map(|t| t.page + (va & 0xfff))
}

/// Reads `out.len()` bytes of guest-virtual memory.
fn read_virt(
    mem: &dyn GuestRam,
    p: &Pvm,
    va: u64,
    out: &mut [u8],
    access: Access,
) -> Result<(), PageFault> {
    read_walked(mem, &walk_ctx(p), va, out, access)
}

/// [`read_virt`] through the walk context `walk` (a hook has that, not the vCPU).
fn read_walked(
    mem: &dyn GuestRam,
    walk: &WalkCtx,
    va: u64,
    out: &mut [u8],
    access: Access,
) -> Result<(), PageFault> {
    let mut done = 0;
    while done < out.len() {
        let a = va + done as u64;
        let n = (0x1000 - (a & 0xfff) as usize).min(out.len() - done);
        let pa = translate(mem, walk, a, access)?;
        if mem.read(pa, &mut out[done..done + n]).is_err() {
            return Err(PageFault { addr: a, code: 0 });
        }
        done += n;
    }
    Ok(())
}

/// The scan of the block at `addr` (`size` bytes, as Unicorn translated it), read through the
/// guest's page tables as the fetch did (nothing found where it cannot be read).
fn scan_block(mem: &dyn GuestRam, walk: &WalkCtx, addr: u64, size: usize) -> emulate::BlockScan {
    let mut code = vec![0u8; size];
    match read_walked(mem, walk, addr, &mut code, Access::Fetch) {
        Ok(()) => emulate::scan_block(&code, addr),
        Err(_) => emulate::BlockScan::default(),
    }
}

/// Whether port I/O in the mode `walk` describes is a #GP (user mode: hardware IOPL 0, no
/// I/O bitmap, notes §9) rather than an exit to the VMM.
fn user_io_faults(walk: &WalkCtx) -> bool {
    walk.user && !walk.faults.on(Fault::UserIoAllowed)
}

fn write_virt(mem: &dyn GuestRam, p: &Pvm, va: u64, data: &[u8]) -> Result<(), PageFault> {
    let mut done = 0;
    while done < data.len() {
        let a = va + done as u64;
        let n = (0x1000 - (a & 0xfff) as usize).min(data.len() - done);
        let pa = translate(mem, &walk_ctx(p), a, Access::Write)?;
        if mem.write(pa, &data[done..done + n]).is_err() {
            return Err(PageFault { addr: a, code: 2 });
        }
        done += n;
    }
    Ok(())
}

/// What handling a stop decided.
enum Next {
    /// Keep running.
    Go,
    /// The run ends.
    End(RunEnd),
}

/// Runs `v` on `ram` with `handler` until the run ends; with `smp`, as one of several vCPUs
/// that take turns ([`crate::smp`]).
pub fn run(
    ram: &MmapRam,
    v: &mut Vcpu,
    handler: &mut (dyn ExitHandler + Send),
    limits: &RunLimits,
    first: bool,
    smp: Option<&Smp<'_>>,
) -> runner::Result<RunEnd> {
    let handler = RefCell::new(handler);
    let mem: &dyn GuestRam = ram;
    let kick = Arc::new(AtomicBool::new(false));
    let ram_size = ram.size();
    // The port hooks serve VMM requests synchronously and need the vCPU; the run loop holds
    // it only while the engine is stopped, the hooks only while it runs.
    let vc = RefCell::new(v);
    let mut uc: Uc<'_> = Unicorn::new_with_data(
        Arch::X86,
        Mode::MODE_64,
        Hw {
            walk: walk_ctx(&vc.borrow().pvm),
            pf: None,
            stop: None,
            fills: std::collections::HashMap::new(),
            pinned: std::collections::HashMap::new(),
            wide: None,
            kick: kick.clone(),
            scans: BlockScans::new(),
            step_blocks: None,
        },
    )
    .map_err(uc_err("open"))?;
    uc.ctl_set_tlb_type(TlbType::VIRTUAL)
        .map_err(uc_err("virtual TLB"))?;
    // Run until a hook or the watchdog stops the engine: with exits enabled and none set,
    // `emu_start`'s `until` address is ignored (Unicorn would otherwise translate its page).
    uc.ctl_exits_enable().map_err(uc_err("exits"))?;
    // SAFETY: the mapping is `ram_size` bytes long and outlives `uc` (both live for this
    // call; `uc` is dropped first, at the end of it). The guest and the host share these bytes
    // by design; host code reaches them only through `GuestRam`'s raw-pointer copies.
    unsafe {
        uc.mem_map_ptr(
            0,
            ram_size,
            Prot::ALL,
            ram.host_addr() as *mut core::ffi::c_void,
        )
        .map_err(uc_err("map RAM"))?;
    }
    uc.mem_map(HOST_GDT_PA, 0x2000, Prot::READ | Prot::EXEC)
        .map_err(uc_err("map the host pages"))?;
    uc.mem_write(HOST_CODE_PA, &[0x48, 0xcf])
        .map_err(uc_err("write the IRETQ stub"))?;
    let gdt: Vec<u8> = pvm::HOST_GDT.iter().flat_map(|d| d.to_le_bytes()).collect();
    uc.mem_write(HOST_GDT_PA, &gdt)
        .map_err(uc_err("write the host GDT"))?;
    let h = &handler;
    // Three MMIO regions, so that a memslot splits only the small one in the middle (Unicorn
    // flushes its TLB page by page over the whole region it splits).
    let (slots_lo, slots_hi) = SLOT_WINDOW;
    map_mmio(&mut uc, ram_size, slots_lo - ram_size, None, h, &vc)?;
    map_mmio(&mut uc, slots_lo, slots_hi - slots_lo, None, h, &vc)?;
    map_mmio(&mut uc, slots_hi, MMIO_END - slots_hi, None, h, &vc)?;
    let split_wide = vc.borrow().pvm.faults.on(Fault::MmioSplitWide);
    // Sees each MMIO access whole (guest-physical address and size) before Unicorn splits an
    // 8-byte one for the callbacks below. (Any memory hook makes Unicorn take its slow path
    // for every access; bench-model shows no measurable cost.)
    uc.add_mem_hook(
        unicorn_engine::HookType::MEM_READ | unicorn_engine::HookType::MEM_WRITE,
        ram_size,
        MMIO_END - 1,
        move |uc, ty, gpa, size, value| {
            uc.get_data_mut().wide = (size == 8 && !split_wide).then_some(WideMmio {
                gpa,
                write: ty == MemType::WRITE,
                value: value as u64,
                high: None,
            });
            true
        },
    )
    .map_err(uc_err("MMIO access hook"))?;
    // Every stop (a hook's, the watchdog's) is requested by `kick` and done here, at the start
    // of a translation block, where Unicorn leaves the block before it runs any of it
    // (`gen_tb_start`'s exit check). A stop requested while a block runs would set Unicorn's
    // `stop_request` under its instruction helpers, and the SYSCALL and CPUID helpers leave
    // their hook walks early when it is set, while still completing the instruction: a lost
    // ERETS, or Unicorn's own CPUID values instead of the VMM's (seen with several vCPUs).
    //
    // Port I/O in user mode is a #GP before the instruction runs (hardware ring 3, IOPL 0, no
    // I/O bitmap: notes §9), but Unicorn runs it without the IOPL check and its port hooks
    // come from inside the instruction, with the rest of the block still to run. So each
    // block is looked at here first (`emulate::scan_block`): user-mode port I/O at its start
    // is stopped before it runs; further in, it stops the block, which then runs again up to
    // that instruction. An instruction that may turn on the checks Unicorn does not make
    // (#AC, #XM) is stopped before the same way, and the loop single-steps from it
    // (`needs_steps`); while it steps, the second block to start stops the engine.
    let kicked = kick.clone();
    uc.add_block_hook(1, 0, move |uc, addr, size| {
        if kicked.swap(false, Ordering::AcqRel) {
            let _ = uc.emu_stop();
            return;
        }
        let d = uc.get_data_mut();
        let stepping = d.step_blocks.is_some();
        if let Some(left) = d.step_blocks {
            if left == 0 {
                let _ = uc.emu_stop();
                return;
            }
            d.step_blocks = Some(left - 1);
        }
        let walk = d.walk;
        let scan = d
            .scans
            .get(addr, size, || scan_block(mem, &walk, addr, size as usize));
        let port_io = scan.port_io.filter(|_| user_io_faults(&walk));
        let check = scan.check_switch.filter(|_| !stepping);
        let Some(at) = port_io.into_iter().chain(check).min() else {
            return;
        };
        d.stop = Some(if at != addr {
            Stop::Ahead { block: addr, at }
        } else if port_io == Some(at) {
            Stop::UserIo { pc: at }
        } else {
            Stop::Check
        });
        let _ = uc.emu_stop();
    })
    .map_err(uc_err("block hook"))?;
    uc.add_intr_hook(|uc, n| {
        set_stop(uc, Stop::Intr(n));
    })
    .map_err(uc_err("interrupt hook"))?;
    // (The block hook above keeps `stop_request` clear while a block runs; the SYSCALL hook
    // also comes first of the instruction hooks, so no earlier hook can end its walk.)
    uc.add_insn_sys_hook(X86Insn::SYSCALL, 1, 0, |uc| {
        set_stop(uc, Stop::Syscall);
    })
    .map_err(uc_err("syscall hook"))?;
    // Unicorn runs IN and OUT without the IOPL check, calling these hooks: port I/O in user
    // mode is a #GP on a PVM host (IOPL 0, no I/O bitmap: notes §9).
    let vcr = &vc;
    // OUT is done here, inside the instruction, not after the engine stops: a stop requested
    // in a hook takes effect only at the end of the translation block, and a later IN of the
    // same block must see the OUT's effect (and a VMM request's reply must be in memory when
    // the guest reads it, maybe in the same block).
    uc.add_insn_out_hook(move |uc, port, size, value| {
        if user_io_faults(&uc.get_data().walk) {
            let pc = uc.pc_read().unwrap_or(0);
            set_stop(uc, Stop::UserIo { pc });
            return;
        }
        let mut data = value.to_le_bytes()[..size.min(4)].to_vec();
        let Ok(mut guard) = vcr.try_borrow_mut() else {
            set_stop(
                uc,
                Stop::Handler(Action::Unexpected("OUT while the vCPU is busy".into())),
            );
            return;
        };
        let v: &mut Vcpu = &mut guard;
        if v.pvm.faults.on(Fault::OutTruncated) {
            data[1..].fill(0);
        }
        match io_action(mem, v, h, port as u16, &data) {
            Ok(Action::Continue) => {}
            Ok(a) => {
                set_stop(uc, Stop::Handler(a));
            }
            Err(end) => {
                set_stop(uc, Stop::End(end));
            }
        }
        if v.pvm.bases_dirty {
            v.pvm.bases_dirty = false;
            let _ = uc.reg_write(RegisterX86::FS_BASE, v.regs.fs_base);
            let _ = uc.reg_write(RegisterX86::GS_BASE, v.regs.gs_base);
        }
        if v.pvm.resync {
            // A VMM request changed the vCPU (an interrupt to inject, an MSR): stop at the
            // end of the block so the loop looks at it.
            set_stop(uc, Stop::Resync);
        }
    })
    .map_err(uc_err("OUT hook"))?;
    uc.add_insn_in_hook(move |uc, port, size| {
        if user_io_faults(&uc.get_data().walk) {
            let pc = uc.pc_read().unwrap_or(0);
            set_stop(uc, Stop::UserIo { pc });
            return 0;
        }
        let mut b = [0u8; 4];
        let a = h.borrow_mut().io_in(port as u16, &mut b[..size.min(4)]);
        if a != Action::Continue {
            set_stop(uc, Stop::Handler(a));
        }
        u32::from_le_bytes(b)
    })
    .map_err(uc_err("IN hook"))?;
    // CPUID traps on the host (CPUID faulting) and is answered from the VMM's table. The
    // crate's instruction hook returns nothing, but Unicorn's CPUID hook must return whether
    // it handled the instruction, so this one is registered by hand.
    let cpuid_faults: Box<crate::faults::Faults> = Box::new(vc.borrow().pvm.faults);
    let mut cpuid_hook: unicorn_engine::uc_hook = 0;
    // SAFETY: `cpuid_proxy` has the signature Unicorn calls CPUID hooks with
    // (`uc_cb_insn_cpuid_t`); its user data points to `cpuid_faults`, a box that lives until
    // this function returns, and the engine runs (and calls hooks) only inside this function;
    // `cpuid_hook` is a live out-parameter. begin > end means every address.
    let added = unsafe {
        unicorn_engine::uc_hook_add(
            uc.get_handle(),
            &raw mut cpuid_hook,
            unicorn_engine::HookType::INSN.0 as i32,
            cpuid_proxy as *mut core::ffi::c_void,
            (&raw const *cpuid_faults).cast_mut().cast(),
            1,
            0,
            X86Insn::CPUID,
        )
    };
    added.and_then(|| Ok(())).map_err(uc_err("CPUID hook"))?;
    uc.add_tlb_hook(1, 0, move |uc, va, ty| {
        if va & !0xfff == HOST_GDT_VA {
            return Some(TlbEntry {
                paddr: HOST_GDT_PA,
                perms: Prot::READ,
            });
        }
        if va & !0xfff == HOST_CODE_VA {
            return Some(TlbEntry {
                paddr: HOST_CODE_PA,
                perms: Prot::READ | Prot::EXEC,
            });
        }
        if let Some(e) = uc.get_data().pinned.get(&(va & !0xfff)) {
            return Some(*e);
        }
        let access = match ty {
            MemType::WRITE => Access::Write,
            MemType::FETCH => Access::Fetch,
            _ => Access::Read,
        };
        let ctx = uc.get_data().walk;
        match mmu::walk(mem, &ctx, va, access) {
            Ok(t) => {
                let mut perms = Prot::NONE;
                if t.read {
                    perms |= Prot::READ;
                }
                if t.write {
                    perms |= Prot::WRITE;
                }
                if t.exec {
                    perms |= Prot::EXEC;
                }
                let e = TlbEntry {
                    paddr: t.page,
                    perms,
                };
                let d = uc.get_data_mut();
                if d.fills.len() >= MAX_FILLS {
                    d.fills.clear();
                }
                d.fills.insert(va & !0xfff, e);
                Some(e)
            }
            Err(pf) => {
                uc.get_data_mut().pf = Some(pf);
                None
            }
        }
    })
    .map_err(uc_err("TLB hook"))?;

    // Hardware state: long mode at CPL3 on the host's selectors.
    uc.reg_write_long(
        RegisterX86::GDTR,
        &mmr(HOST_GDT_VA, (pvm::HOST_GDT.len() * 8 - 1) as u32),
    )
    .map_err(uc_err("GDTR"))?;
    // The host's IDT and its busy TSS (GDT entry 8), which SIDT and STR in hardware ring 3
    // show the guest (notes §6, "Not trapping"). Unicorn hands every exception to the
    // interrupt hook, so it never reads either.
    uc.reg_write_long(
        RegisterX86::IDTR,
        &mmr(HOST_IDT_VA, u32::from(abi::upstream::HOST_IDT_LIMIT)),
    )
    .map_err(uc_err("IDTR"))?;
    let mut tr = mmr(HOST_TSS_VA, 0x67);
    tr[0..2].copy_from_slice(&abi::upstream::HOST_TSS_SELECTOR.to_le_bytes());
    // Present (P, bit 15) busy 64-bit TSS (type 0xb), in QEMU's descriptor-flags layout.
    tr[20..24].copy_from_slice(&0x8b00u32.to_le_bytes());
    uc.reg_write_long(RegisterX86::TR, &tr)
        .map_err(uc_err("TR"))?;
    uc.reg_write_long(
        RegisterX86::MSR,
        &msr_bytes(0xc000_0080, (1 << 0) | (1 << 8) | (1 << 10) | (1 << 11)),
    )
    .map_err(uc_err("EFER"))?;
    uc.reg_write(
        RegisterX86::CR4,
        (1 << 5) | (1 << 9) | (1 << 10) | (1 << 16),
    )
    .map_err(uc_err("CR4"))?;
    uc.reg_write(RegisterX86::CR0, 0x8005_0033)
        .map_err(uc_err("CR0"))?;
    if first {
        let mut v = vc.borrow_mut();
        v.regs.cs = abi::upstream::HOST_USER_CS;
        v.regs.ss = abi::upstream::HOST_USER_DS;
    }
    for seg in [
        RegisterX86::DS,
        RegisterX86::ES,
        RegisterX86::FS,
        RegisterX86::GS,
    ] {
        uc.reg_write(seg, 0).map_err(uc_err("data segments"))?;
    }
    if first {
        // A fresh KVM vCPU's x87/SSE state (`fpstate_init_fxstate`: FCW 0x37f, MXCSR 0x1f80,
        // every exception masked); Unicorn starts with both zero, every exception unmasked.
        uc.reg_write(RegisterX86::FPCW, u64::from(abi::x86::x87::FCW_DEFAULT))
            .map_err(uc_err("FCW"))?;
        uc.reg_write(RegisterX86::MXCSR, u64::from(abi::x86::mxcsr::DEFAULT))
            .map_err(uc_err("MXCSR"))?;
    }
    // A clean CPU state to go back to after each exception: Unicorn hands exceptions to the
    // hook without delivering them, so QEMU's record of the exception in progress
    // (`old_exception`) is never reset, and the next contributory one would become a #DF.
    // Restoring this context resets it; the registers are written again after it.
    let clean = uc.context_init().map_err(uc_err("save a context"))?;
    write_regs(&mut uc, &vc.borrow().regs, true)?;

    let running = AtomicBool::new(true);
    // When the watchdog must stop the engine next, in ns since `start` (the run loop sets it
    // before each start: the timeout, or an armed timer if sooner).
    let watch = Watch {
        start: Instant::now(),
        wake_at: AtomicU64::new(0),
    };
    std::thread::scope(|s| {
        let (running, watch) = (&running, &watch);
        let (start, wake_at) = (watch.start, &watch.wake_at);
        let cancel = limits.cancel.clone();
        let kick = &kick;
        s.spawn(move || {
            while running.load(Ordering::Acquire) {
                let now = start.elapsed().as_nanos() as u64;
                let due = wake_at.load(Ordering::Acquire);
                if now >= due || cancel.is_cancelled() {
                    kick.store(true, Ordering::Release);
                    // Until the run loop sets the next deadline (at most a SLICE): a new one
                    // may be close (a vCPU's turn, an armed timer), so look again soon.
                    let stopped = Instant::now();
                    while running.load(Ordering::Acquire)
                        && wake_at.load(Ordering::Acquire) == due
                        && stopped.elapsed() < SLICE
                    {
                        std::thread::sleep(Duration::from_micros(20));
                    }
                } else {
                    std::thread::sleep(SLICE.min(Duration::from_nanos(due - now)));
                }
            }
        });
        let ctl = Ctl { limits, watch, smp };
        let end = run_loop(&mut uc, &clean, mem, &vc, &handler, &ctl);
        running.store(false, Ordering::Release);
        end
    })
}

/// What bounds a run: its limits, its clock, and the other vCPUs (several-vCPU runs).
#[derive(Clone, Copy)]
struct Ctl<'a> {
    limits: &'a RunLimits,
    watch: &'a Watch,
    smp: Option<&'a Smp<'a>>,
}

/// Maps `[base, base + size)` as MMIO. Writes go to the VM's devices (ioeventfds, coalesced
/// zones) and then the exit handler; reads go to the exit handler, or, for a read-only
/// memslot (`slot`), come from its memory. An 8-byte access is one access of 8 bytes
/// ([`WideMmio`]).
fn map_mmio<'a, 'h: 'a, 'v: 'a>(
    uc: &mut Uc<'a>,
    base: u64,
    size: u64,
    slot: Option<Arc<MmapRam>>,
    h: &'a RefCell<&'h mut (dyn ExitHandler + Send)>,
    vcm: &'a RefCell<&'v mut Vcpu>,
) -> runner::Result<()> {
    uc.mmio_map(
        base,
        size,
        Some(move |uc: &mut Unicorn<'_, Hw>, off: u64, size: usize| {
            let gpa = base + off;
            let mut n = size.min(8);
            let mut b = [0u8; 8];
            if let Some(mem) = &slot {
                let _ = mem.read(off, &mut b[..n]);
                return u64::from_le_bytes(b);
            }
            if let Some(r) = ioapic_access(vcm, gpa, None) {
                return u64::from(r);
            }
            match uc.get_data().wide {
                Some(w) if !w.write && size == 4 && gpa == w.gpa + 4 && w.high.is_some() => {
                    uc.get_data_mut().wide = None;
                    return u64::from(w.high.unwrap_or(0));
                }
                Some(w) if !w.write && size == 4 && gpa == w.gpa && w.high.is_none() => n = 8,
                _ => {}
            }
            let a = h.borrow_mut().mmio_read(gpa, &mut b[..n]);
            if n == 8 {
                if let Some(w) = uc.get_data_mut().wide.as_mut() {
                    w.high = Some(u32::from_le_bytes([b[4], b[5], b[6], b[7]]));
                }
                b[4..].fill(0);
            }
            if a != Action::Continue {
                set_stop(uc, Stop::Handler(a));
            }
            u64::from_le_bytes(b)
        }),
        Some(
            move |uc: &mut Unicorn<'_, Hw>, off: u64, size: usize, value: u64| {
                let gpa = base + off;
                let mut b = value.to_le_bytes();
                let mut n = size.min(8);
                match uc.get_data().wide {
                    // The upper half of an 8-byte write the lower half's callback made.
                    Some(w) if w.write && size == 4 && gpa == w.gpa + 4 && w.high.is_some() => {
                        uc.get_data_mut().wide = None;
                        return;
                    }
                    Some(w) if w.write && size == 4 && gpa == w.gpa && w.high.is_none() => {
                        b = w.value.to_le_bytes();
                        n = 8;
                        if let Some(w) = uc.get_data_mut().wide.as_mut() {
                            w.high = Some((w.value >> 32) as u32);
                        }
                    }
                    _ => {}
                }
                if ioapic_access(vcm, gpa, Some(value as u32)).is_some() {
                    set_stop(uc, Stop::Resync);
                    return;
                }
                // An ioeventfd or a coalesced zone takes the write before the VMM sees it.
                if let Ok(v) = vcm.try_borrow_mut()
                    && v.devices
                        .lock()
                        .write(crate::devices::Space::Mmio, gpa, &b[..n])
                {
                    return;
                }
                let a = h.borrow_mut().mmio_write(gpa, &b[..n]);
                if a != Action::Continue {
                    set_stop(uc, Stop::Handler(a));
                }
            },
        ),
    )
    .map_err(uc_err("map MMIO"))
}

/// An access to the in-kernel I/O APIC's page (when the VM has the in-kernel irqchip): a read
/// (`write` None) gives the value, a write's deliveries go to their local APICs. `None` when
/// the access is not the I/O APIC's.
fn ioapic_access(vcm: &RefCell<&mut Vcpu>, gpa: u64, write: Option<u32>) -> Option<u32> {
    if gpa & !0xfff != abi::x86::ioapic::BASE {
        return None;
    }
    let mut guard = vcm.try_borrow_mut().ok()?;
    let v: &mut Vcpu = &mut guard;
    if !v.pvm.irqchip {
        return None;
    }
    let off = gpa & 0xfff;
    let mut devices = v.devices.lock();
    match write {
        None => Some(devices.ioapic.read(off)),
        Some(val) => {
            let out = devices.ioapic.write(off, val);
            drop(devices);
            v.pvm.post_interrupts(out);
            Some(0)
        }
    }
}

/// Brings this engine's guest-physical map up to the VM's memslots (`mapped`: what it maps
/// now, as of generation `seen`): a removed slot becomes MMIO again, a new one is mapped as
/// memory, or (read-only) as MMIO that reads its memory; then the TLB is flushed (its entries
/// cache the kind of memory behind each page).
fn sync_memslots<'a, 'h: 'a, 'v: 'a>(
    uc: &mut Uc<'a>,
    mapped: &mut (u64, Vec<crate::devices::Slot>),
    h: &'a RefCell<&'h mut (dyn ExitHandler + Send)>,
    vcm: &'a RefCell<&'v mut Vcpu>,
) -> runner::Result<()> {
    let Some((generation, slots)) = vcm.borrow().devices.lock().slots(mapped.0) else {
        return Ok(());
    };

    let keep = vcm.borrow().pvm.faults.on(Fault::MemslotKeptAfterRemove);
    for old in mapped.1.iter().filter(|o| !slots.contains(o) && !keep) {
        uc.mem_unmap(old.gpa, old.size())
            .map_err(uc_err("unmap a removed memslot"))?;
        map_mmio(uc, old.gpa, old.size(), None, h, vcm)?;
    }
    for new in slots.iter().filter(|n| !mapped.1.contains(n)) {
        uc.mem_unmap(new.gpa, new.size())
            .map_err(uc_err("unmap the MMIO under a memslot"))?;
        if new.readonly {
            map_mmio(uc, new.gpa, new.size(), Some(new.mem.clone()), h, vcm)?;
        } else {
            // SAFETY: the slot's memory is `new.size()` bytes long and lives in an `Arc` that
            // `mapped` holds until this engine unmaps it (above) or is dropped (the engine
            // goes first: `uc` lives inside `run`, which owns `mapped`).
            unsafe {
                uc.mem_map_ptr(
                    new.gpa,
                    new.size(),
                    Prot::ALL,
                    new.mem.host_addr() as *mut core::ffi::c_void,
                )
                .map_err(uc_err("map a memslot"))?;
            }
        }
    }
    // A fault switch keeps deleted slots mapped: their memory must stay alive with them.
    let kept: Vec<_> = if keep {
        mapped
            .1
            .iter()
            .filter(|o| !slots.contains(o))
            .cloned()
            .collect()
    } else {
        Vec::new()
    };
    *mapped = (generation, slots.into_iter().chain(kept).collect());
    flush_translations(uc)
}

/// Flushes Unicorn's TLB and forgets everything derived from the old translations: the
/// fills, the pinned entries and the block scans.
fn flush_translations(uc: &mut Uc<'_>) -> runner::Result<()> {
    uc.ctl_flush_tlb().map_err(uc_err("flush the TLB"))?;
    let d = uc.get_data_mut();
    d.fills.clear();
    d.pinned.clear();
    d.scans.clear();
    Ok(())
}

/// Delivers an event that comes between instructions (#MC, NMI, interrupt, or an exception
/// the loop raises before an instruction runs: `precheck`) and loads the registers the
/// delivery set; `Some` when the delivery shut the vCPU down.
fn deliver_async(
    uc: &mut Uc<'_>,
    mem: &dyn GuestRam,
    v: &mut Vcpu,
    ev: Event,
    segments_dirty: &mut bool,
) -> runner::Result<Option<RunEnd>> {
    let was_user = !v.pvm.smod;
    if let Err(TripleFault(why)) = v.pvm.deliver(mem, &mut v.regs, ev) {
        return Ok(Some(shutdown(why)));
    }
    *segments_dirty |= was_user;
    write_regs(uc, &v.regs, *segments_dirty)?;
    *segments_dirty = false;
    Ok(None)
}

/// Whether the loop must run one instruction per start and check it first (`precheck`):
/// with RFLAGS.AC set every data access of the guest is alignment-checked (hardware CPL 3,
/// the host's CR0.AM set: notes §6), and with an MXCSR exception unmasked SSE arithmetic may
/// raise #XM. Unicorn (QEMU's TCG) makes neither check.
fn needs_steps(v: &Vcpu, mxcsr: u32) -> bool {
    alignment_checked(v) || simd_checked(v, mxcsr)
}

/// Whether the guest's data accesses are alignment-checked now (RFLAGS.AC).
fn alignment_checked(v: &Vcpu) -> bool {
    v.regs.rflags & abi::x86::rflags::AC != 0 && !v.pvm.faults.on(Fault::AlignmentUnchecked)
}

/// Whether MXCSR (`mxcsr`) leaves some SIMD floating-point exception unmasked.
fn simd_checked(v: &Vcpu, mxcsr: u32) -> bool {
    abi::x86::mxcsr::unmasked(mxcsr, abi::x86::mxcsr::FLAGS) != 0
        && !v.pvm.faults.on(Fault::SimdExceptionLost)
}

/// Makes Unicorn translate the block at `block` again, ending before `at` (an exit there,
/// which the loop clears after the next start, whatever stops it: `exit_armed`).
fn end_block_at(uc: &mut Uc<'_>, block: u64, at: u64, exit_armed: &mut bool) -> runner::Result<()> {
    uc.ctl_remove_cache(block, at + 1)
        .map_err(uc_err("drop the block"))?;
    uc.ctl_set_exits(&[at])
        .map_err(uc_err("exit before the instruction"))?;
    *exit_armed = true;
    Ok(())
}

/// The exception the instruction `bytes` at RIP raises before it runs, of those Unicorn does
/// not raise: #AC(0) for a misaligned data access (unless the access faults in the page walk
/// first: #PF comes before #AC, SDM Vol. 3A 6.9), else #XM for an unmasked SIMD
/// floating-point exception (`simd`; the host's CR4.OSXMMEXCPT is set, so never #UD, notes
/// §6). A replayed SSE instruction's flags go into MXCSR, as the CPU sets them.
fn precheck(
    uc: &mut Uc<'_>,
    mem: &dyn GuestRam,
    v: &Vcpu,
    bytes: &[u8],
    mxcsr: u32,
) -> runner::Result<Option<Event>> {
    let rip = v.regs.rip;
    if alignment_checked(v)
        && let Some(m) = emulate::misaligned_access(bytes, rip, |r| reg_value(v, r))
    {
        let walk = walk_ctx(&v.pvm);
        let access = if m.write { Access::Write } else { Access::Read };
        let mapped = [m.addr, m.addr + m.size - 1]
            .iter()
            .all(|&a| translate(mem, &walk, a, access).is_ok());
        if mapped {
            return Ok(Some(Event::fault(abi::x86::vector::AC, 0)));
        }
    }
    if !simd_checked(v, mxcsr) {
        return Ok(None);
    }
    let Some(insn) = emulate::simd_insn(bytes, rip, |r| reg_value(v, r)) else {
        return Ok(None);
    };
    let xmm = |uc: &Uc<'_>, n: usize| -> runner::Result<u128> {
        let b = uc.reg_read_long(FPU_LONG[n]).map_err(uc_err("XMM"))?;
        let mut le = [0u8; 16];
        let k = b.len().min(16);
        le[..k].copy_from_slice(&b[..k]);
        Ok(u128::from_le_bytes(le))
    };
    let dst = xmm(uc, insn.dst)?;
    let src = match insn.src {
        emulate::SimdSource::Xmm(n) => xmm(uc, n)?,
        emulate::SimdSource::Memory(a) => {
            let mut le = [0u8; 16];
            // A source that cannot be read faults when the instruction runs (#PF first).
            if read_virt(mem, &v.pvm, a, &mut le[..insn.op.source_size], Access::Read).is_err() {
                return Ok(None);
            }
            u128::from_le_bytes(le)
        }
    };
    let raised = crate::simd::raised(insn.op, dst, src, mxcsr);
    uc.reg_write(RegisterX86::MXCSR, u64::from(mxcsr | raised))
        .map_err(uc_err("MXCSR"))?;
    if abi::x86::mxcsr::unmasked(mxcsr, raised) == 0 {
        return Ok(None);
    }
    let vector =
        if v.pvm.faults.on(Fault::XmAsUdByGuestCr4) && v.pvm.cr4 & abi::x86::cr4::OSXMMEXCPT == 0 {
            abi::x86::vector::UD
        } else {
            abi::x86::vector::XM
        };
    Ok(Some(Event::Exception {
        vector,
        code: None,
        cr2: None,
    }))
}

/// The run's clock, shared by the run loop and the watchdog.
struct Watch {
    /// When the run started.
    start: Instant,
    /// When the watchdog must stop the engine next, in ns since `start`.
    wake_at: AtomicU64,
}

fn must_stop(limits: &RunLimits, start: Instant) -> Option<RunEnd> {
    if limits.cancel.is_cancelled() {
        Some(RunEnd::Cancelled)
    } else if start.elapsed() >= limits.timeout {
        Some(RunEnd::Timeout(start.elapsed()))
    } else {
        None
    }
}

fn run_loop<'a, 'h: 'a, 'v: 'a>(
    uc: &mut Uc<'a>,
    clean: &unicorn_engine::Context,
    mem: &dyn GuestRam,
    vc: &'a RefCell<&'v mut Vcpu>,
    handler: &'a RefCell<&'h mut (dyn ExitHandler + Send)>,
    ctl: &Ctl<'_>,
) -> runner::Result<RunEnd> {
    let Ctl { limits, watch, smp } = *ctl;
    let (start, wake_at) = (watch.start, &watch.wake_at);
    let mut segments_dirty = false;
    // An exit set for `Stop::Ahead` or a single step, cleared after the next start.
    let mut exit_armed = false;
    // The next start runs one instruction (after a `Stop::Check`, or the IRETQ stub's start).
    let mut step_next = false;
    // The memslots this engine maps (a VMM request, maybe another vCPU's, changes them).
    let mut mapped = (0, Vec::new());
    loop {
        sync_memslots(uc, &mut mapped, handler, vc)?;
        let mut guard = vc.borrow_mut();
        let v: &mut Vcpu = &mut guard;
        if let Some(end) = must_stop(limits, start) {
            return Ok(end);
        }
        // One of several vCPUs: this iteration runs with the turn; another vCPU's end ends
        // this one's run too (the first end is the run's).
        let turn = match smp {
            Some(s) => match s.turn.hold(s.stop) {
                Some(t) => Some(t),
                None => return Ok(RunEnd::Cancelled),
            },
            None => None,
        };
        v.pvm.take_mail();
        // EOIs reach the I/O APIC (a level pin still high interrupts again).
        if !v.pvm.eois.is_empty() {
            let eois = std::mem::take(&mut v.pvm.eois);
            let out: Vec<_> = {
                let mut d = v.devices.lock();
                eois.into_iter().flat_map(|e| d.ioapic.eoi(e)).collect()
            };
            if !v.pvm.faults.on(Fault::IoapicLevelNotReasserted) {
                v.pvm.post_interrupts(out);
            }
        }
        if let Some(why) = v.pvm.shutdown.take() {
            return Ok(shutdown(why));
        }
        // A machine check, then an NMI the VMM injected, whatever IF says (research §1-2).
        if v.pvm.mce_pending && v.pvm.vcpu_struct != 0 {
            v.pvm.mce_pending = false;
            if let Some(end) = deliver_async(uc, mem, v, Event::Mce, &mut segments_dirty)? {
                return Ok(end);
            }
        }
        if v.pvm.nmi_pending && v.pvm.nmi_allowed() {
            v.pvm.nmi_pending = false;
            if let Some(end) = deliver_async(uc, mem, v, Event::Nmi, &mut segments_dirty)? {
                return Ok(end);
            }
        }
        // Pending interrupts (notes §5.6): delivered when IF allows, else marked pending.
        v.pvm.tick(host_tsc());
        if v.pvm.interrupt_waiting() {
            if std::env::var_os(TRACE_VAR).is_some() {
                eprintln!(
                    "pvmc-model: interrupt waiting: irr {:x?} isr {:x?} if {} tpr {}",
                    v.pvm.irr,
                    v.pvm.isr,
                    v.pvm.interrupts_enabled(mem),
                    v.pvm.cr8
                );
            }
            if v.pvm.interrupts_enabled(mem) {
                if let Some(vec) = v.pvm.next_interrupt()
                    && let Some(end) =
                        deliver_async(uc, mem, v, Event::Vector(vec), &mut segments_dirty)?
                {
                    return Ok(end);
                }
            } else {
                v.pvm.mark_pending(mem);
            }
        }
        if v.pvm.halted {
            drop(turn);
            // Woken at once by an IPI; the timer, the VMM's requests and the run's end are
            // looked at every 200 us.
            let idle = Duration::from_micros(200);
            match &v.pvm.bus {
                Some(bus) => bus.wait(v.pvm.apic_id as usize, idle),
                None => std::thread::sleep(idle),
            }
            continue;
        }
        if let Some(which) = v.pvm.keep_stale.take() {
            // A fault switch: the flush the guest asked for leaves these entries behind.
            let d = uc.get_data_mut();
            let kept: Vec<(u64, TlbEntry)> = match which {
                Some(va) => d
                    .fills
                    .get(&(va & !0xfff))
                    .map(|e| (va & !0xfff, *e))
                    .into_iter()
                    .collect(),
                None => d.fills.iter().map(|(k, e)| (*k, *e)).collect(),
            };
            d.pinned.extend(kept);
            d.scans.clear();
            uc.ctl_flush_tlb().map_err(uc_err("flush the TLB"))?;
        }
        if v.pvm.flush_tlb {
            flush_translations(uc)?;
            v.pvm.flush_tlb = false;
        }
        if v.pvm.tls_dirty {
            // PVM_HC_LOAD_TLS: the TLS entries of this vCPU's host GDT.
            let tls: Vec<u8> = v.pvm.tls.iter().flat_map(|d| d.to_le_bytes()).collect();
            uc.mem_write(HOST_GDT_PA + 8 * pvm::GDT_ENTRY_TLS_MIN as u64, &tls)
                .map_err(uc_err("write the TLS entries"))?;
            v.pvm.tls_dirty = false;
        }
        if v.pvm.tsc_aux_dirty {
            uc.reg_write_long(RegisterX86::MSR, &msr_bytes(msr::TSC_AUX, v.pvm.tsc_aux))
                .map_err(uc_err("TSC_AUX"))?;
            v.pvm.tsc_aux_dirty = false;
        }
        uc.get_data_mut().walk = walk_ctx(&v.pvm);
        uc.get_data_mut().stop = None;
        uc.get_data_mut().pf = None;
        let pc = uc.pc_read().map_err(uc_err("PC"))?;
        // The watchdog stops the engine at the timeout or when a timer is due, and not
        // otherwise: a stop in the middle of a REP INS made Unicorn repeat the iteration's IN.
        let until_timeout = limits.timeout.saturating_sub(start.elapsed());
        let mut wait = v
            .pvm
            .timer_due_in(host_tsc(), tsc_khz())
            .map_or(until_timeout, |t| t.min(until_timeout));
        if smp.is_some() {
            wait = wait.min(crate::smp::SLICE);
        }
        wake_at.store(
            (start.elapsed() + wait).as_nanos() as u64,
            Ordering::Release,
        );
        // Alignment checks and SIMD floating-point exceptions, which Unicorn does not raise:
        // while they can apply, each start runs one instruction, checked first.
        let mxcsr = uc.reg_read(RegisterX86::MXCSR).map_err(uc_err("MXCSR"))? as u32;
        let step = std::mem::take(&mut step_next) || needs_steps(v, mxcsr);
        if step && pc == HOST_CODE_VA {
            // The IRETQ stub loads the guest's state first: this start runs only the stub,
            // the next one the guest's instruction.
            step_next = true;
        } else if step {
            let (bytes, n) = insn_bytes(mem, v);
            if let Some(ev) = precheck(uc, mem, v, &bytes[..n], mxcsr)? {
                if let Some(end) = deliver_async(uc, mem, v, ev, &mut segments_dirty)? {
                    return Ok(end);
                }
                continue;
            }
            if let Some(len) = emulate::length(&bytes[..n], pc) {
                // The block is this instruction alone: the exit ends it (a branch ends it
                // anyway, and the block hook stops at the next block).
                end_block_at(uc, pc, pc + len as u64, &mut exit_armed)?;
            }
        }
        uc.get_data_mut().step_blocks = step.then_some(1);
        // The hooks may need the vCPU while the engine runs.
        drop(guard);
        // A kick left from before this start (the watchdog's for a deadline that passed while
        // the loop was handling another stop) would stop the engine at its first block; the
        // deadline for this start is set above, so its kick comes later.
        uc.get_data().kick.store(false, Ordering::Release);
        let res = uc.emu_start(pc, u64::MAX, 0, 0);
        uc.get_data_mut().step_blocks = None;
        if std::mem::take(&mut exit_armed) {
            uc.ctl_set_exits(&[]).map_err(uc_err("clear the exit"))?;
        }
        let mut guard = vc.borrow_mut();
        let v: &mut Vcpu = &mut guard;
        v.pvm.resync = false;
        // Stopped before the IRETQ stub ran (a stop request that was already pending): the
        // CPU holds the stub's state, not the guest's, and `v.regs` is still what the stub
        // is to load.
        if uc.pc_read().map_err(uc_err("PC"))? != HOST_CODE_VA {
            read_regs(uc, &mut v.regs);
        }
        let stop = uc.get_data_mut().stop.take();
        let pf = uc.get_data_mut().pf.take();
        let was_user = !v.pvm.smod;
        if std::env::var_os(TRACE_VAR).is_some() {
            eprintln!(
                "pvmc-model: stop {stop:?} pf {pf:?} res {res:?} at {:#x}",
                v.regs.rip
            );
        }
        let failed = res.is_err();
        let next = match (pf, stop.clone()) {
            // A non-canonical address is #GP(0), never a page fault (SDM Vol. 3A 6.15,
            // interrupt 13); the TLB hook saw it first because Unicorn translates every access.
            // A reference through SS is #SS(0) instead (interrupt 12).
            (Some(pf), _) if !canonical(pf.addr) => {
                let vector = match faulting(mem, v) {
                    emulate::Faulting::StackReference => 12,
                    _ => 13,
                };
                deliver(mem, v, Event::fault(vector, 0))
            }
            (Some(pf), _) => {
                // Unicorn asks for code translations by page: a fetch fault on RIP's own page
                // is at RIP (an instruction that crosses into the next page faults at that
                // page's start, which is what the hook saw).
                let fetch = pf.code & abi::x86::pfec::I != 0;
                let addr = if fetch && pf.addr & !0xfff == v.regs.rip & !0xfff {
                    v.regs.rip
                } else if fetch {
                    pf.addr
                } else {
                    fault_address(mem, v, &pf)
                };
                deliver(mem, v, Event::page_fault(PageFault { addr, ..pf }))
            }
            (None, Some(Stop::Intr(n))) => exception(mem, v, handler, n),
            (None, Some(Stop::Syscall)) => syscall(mem, v),
            (None, Some(Stop::Handler(a))) => action(a),
            (None, Some(Stop::End(end))) => Next::End(end),
            (None, Some(Stop::Resync)) => Next::Go,
            (None, Some(Stop::UserIo { pc })) => {
                v.regs.rip = pc;
                gp(mem, v)
            }
            (None, Some(Stop::Ahead { block, at })) => {
                end_block_at(uc, block, at, &mut exit_armed)?;
                Next::Go
            }
            (None, Some(Stop::Check)) => {
                step_next = true;
                Next::Go
            }
            (None, None) => match res {
                Ok(()) => Next::Go,
                // An opcode the CPU does not know: #UD at the instruction, as hardware raises.
                Err(unicorn_engine::uc_error::INSN_INVALID) => undefined(mem, v),
                Err(e) => Next::End(RunEnd::Unexpected(format!(
                    "emulator error {e:?} at RIP {:#x} ({} mode)",
                    v.regs.rip,
                    if v.pvm.smod { "supervisor" } else { "user" }
                ))),
            },
        };
        match next {
            Next::Go => {}
            Next::End(end) => return Ok(end),
        }
        segments_dirty |= was_user == v.pvm.smod;
        // (A stop the block hook made before a block ran left no exception in progress.)
        let before_block = matches!(stop, Some(Stop::Ahead { .. } | Stop::Check));
        if pf.is_some() || (stop.is_some() && !before_block) || failed {
            // The clean context would reset the FPU/SSE state too: keep the guest's.
            let fpu = FpuState::read(uc)?;
            uc.context_restore(clean)
                .map_err(uc_err("restore the clean context"))?;
            fpu.write(uc)?;
            segments_dirty = true;
            v.pvm.tsc_aux_dirty = true;
        }
        write_regs(uc, &v.regs, segments_dirty)?;
        segments_dirty = false;
    }
}

/// The x87 and SSE registers, kept across the clean-context restore.
struct FpuState {
    long: Vec<(RegisterX86, Vec<u8>)>,
    short: Vec<(RegisterX86, u64)>,
}

/// The registers of [`FpuState`].
const FPU_LONG: [RegisterX86; 24] = {
    use RegisterX86::*;
    [
        XMM0, XMM1, XMM2, XMM3, XMM4, XMM5, XMM6, XMM7, XMM8, XMM9, XMM10, XMM11, XMM12, XMM13,
        XMM14, XMM15, ST0, ST1, ST2, ST3, ST4, ST5, ST6, ST7,
    ]
};
const FPU_SHORT: [RegisterX86; 4] = [
    RegisterX86::FPCW,
    RegisterX86::FPSW,
    RegisterX86::FPTAG,
    RegisterX86::MXCSR,
];

impl FpuState {
    fn read(uc: &Uc<'_>) -> runner::Result<Self> {
        let mut long = Vec::with_capacity(FPU_LONG.len());
        for r in FPU_LONG {
            long.push((
                r,
                uc.reg_read_long(r)
                    .map_err(uc_err("read an FPU register"))?
                    .into(),
            ));
        }
        let mut short = Vec::with_capacity(FPU_SHORT.len());
        for r in FPU_SHORT {
            short.push((
                r,
                uc.reg_read(r)
                    .map_err(uc_err("read an FPU control register"))?,
            ));
        }
        Ok(Self { long, short })
    }

    fn write(&self, uc: &mut Uc<'_>) -> runner::Result<()> {
        for (r, v) in &self.long {
            uc.reg_write_long(*r, v)
                .map_err(uc_err("write an FPU register"))?;
        }
        for &(r, v) in &self.short {
            uc.reg_write(r, v)
                .map_err(uc_err("write an FPU control register"))?;
        }
        Ok(())
    }
}

/// Unicorn's CPUID hook: EAX/ECX in, EAX..EDX from the model's table (`pvm::cpuid`) out;
/// returns 1 (the instruction is done).
///
/// # Safety
///
/// `uc` is the engine calling the hook and `faults` the pointer registered with it.
unsafe extern "C" fn cpuid_proxy(
    uc: *mut unicorn_engine::uc_engine,
    faults: *mut core::ffi::c_void,
) -> i32 {
    use unicorn_engine::{uc_reg_read, uc_reg_write};
    // SAFETY: registered with a pointer to a live `Faults` (see the registration).
    let faults = unsafe { *faults.cast::<crate::faults::Faults>() };
    let (mut eax, mut ecx) = (0u64, 0u64);
    // SAFETY: `uc` is the live engine; each register is read into a live u64.
    unsafe {
        uc_reg_read(uc, RegisterX86::RAX as i32, (&raw mut eax).cast());
        uc_reg_read(uc, RegisterX86::RCX as i32, (&raw mut ecx).cast());
    }
    let out = crate::pvm::cpuid(faults, eax as u32, ecx as u32);
    for (reg, val) in [
        RegisterX86::RAX,
        RegisterX86::RBX,
        RegisterX86::RCX,
        RegisterX86::RDX,
    ]
    .into_iter()
    .zip(out)
    {
        let v = u64::from(val);
        // SAFETY: `uc` is the live engine; the value is a live u64.
        unsafe {
            uc_reg_write(uc, reg as i32, (&raw const v).cast());
        }
    }
    1
}

/// Instructions of the straight-line benchmark ([`straight_line_rate`]).
const STRAIGHT_LINE_INSNS: u64 = 1 << 20;

/// Unicorn's speed on straight-line code as the model runs it (64-bit mode, hardware ring 0
/// of a flat mapping, no hooks but the engine's own): `add rax, 1` repeated, executed once
/// after a warm-up that translates it. Returns instructions per second.
pub fn straight_line_rate() -> runner::Result<f64> {
    const BASE: u64 = 0x10_0000;
    let code: Vec<u8> =
        std::iter::repeat_n([0x48u8, 0x83, 0xc0, 0x01], STRAIGHT_LINE_INSNS as usize)
            .flatten()
            .collect();
    let size = (code.len() as u64 + 0xfff) & !0xfff;
    let mut uc = Unicorn::new(Arch::X86, Mode::MODE_64).map_err(uc_err("open"))?;
    uc.mem_map(BASE, size, Prot::ALL).map_err(uc_err("map"))?;
    uc.mem_write(BASE, &code).map_err(uc_err("write"))?;
    let end = BASE + code.len() as u64;
    uc.emu_start(BASE, end, 0, 0).map_err(uc_err("warm-up"))?;
    uc.reg_write(RegisterX86::RAX, 0).map_err(uc_err("RAX"))?;
    let t = Instant::now();
    uc.emu_start(BASE, end, 0, 0).map_err(uc_err("run"))?;
    let secs = t.elapsed().as_secs_f64();
    let rax = uc.reg_read(RegisterX86::RAX).map_err(uc_err("RAX"))?;
    if rax != STRAIGHT_LINE_INSNS {
        return Err(runner::RunnerError::Setup(format!(
            "straight-line benchmark ran {rax} of {STRAIGHT_LINE_INSNS} instructions"
        )));
    }
    Ok(STRAIGHT_LINE_INSNS as f64 / secs.max(1e-9))
}

/// Environment variable that makes the model print why it triple-faults a vCPU (stderr).
pub const TRACE_VAR: &str = "PVMC_MODEL_TRACE";

fn shutdown(why: String) -> RunEnd {
    if std::env::var_os(TRACE_VAR).is_some() {
        eprintln!("pvmc-model: triple fault: {why}");
    }
    RunEnd::Shutdown
}

fn deliver(mem: &dyn GuestRam, v: &mut Vcpu, ev: Event) -> Next {
    match v.pvm.deliver(mem, &mut v.regs, ev) {
        Ok(()) => Next::Go,
        Err(TripleFault(why)) => Next::End(shutdown(why)),
    }
}

fn action(a: Action) -> Next {
    match a {
        Action::Continue | Action::Serve(_) | Action::Reply(_) => Next::Go,
        Action::Stop => Next::End(RunEnd::Stopped),
        Action::Unexpected(why) => Next::End(RunEnd::Unexpected(why)),
    }
}

/// An exception or `int n` from Unicorn's interrupt hook.
fn exception(
    mem: &dyn GuestRam,
    v: &mut Vcpu,
    handler: &RefCell<&mut (dyn ExitHandler + Send)>,
    n: u32,
) -> Next {
    let vector = n as u8;
    // Unicorn leaves RIP after an `int n` and at the instruction for an exception; the bytes
    // before RIP tell them apart (`cd n`, `cc`, `ce`).
    let mut before = [0u8; 2];
    let soft = read_virt(
        mem,
        &v.pvm,
        v.regs.rip.wrapping_sub(2),
        &mut before,
        Access::Read,
    )
    .is_ok()
        && (before == [0xcd, vector]
            || (vector == 3 && before[1] == 0xcc)
            || (vector == 4 && before[1] == 0xce));
    if soft || n >= 32 {
        // Only vectors 3, 4 and 0x80 have DPL 3 in the host's IDT (notes §5.1); any other
        // `int n` is a #GP with the IDT error code, at the instruction.
        return match vector {
            3 | 4 => deliver(
                mem,
                v,
                Event::Exception {
                    vector,
                    code: None,
                    cr2: None,
                },
            ),
            0x80 => deliver(mem, v, Event::Vector(0x80)),
            _ if v.pvm.faults.on(Fault::IntNThroughGuestGate) => {
                deliver(mem, v, Event::Vector(vector))
            }
            _ => {
                v.regs.rip -= 2;
                let code = abi::x86::idt_error_code(vector);
                deliver(mem, v, Event::fault(abi::x86::vector::GP, code))
            }
        };
    }
    if vector == 13 {
        if v.pvm.smod {
            return privileged(mem, v, handler);
        }
        let vector = if v.pvm.faults.on(Fault::UserGpAsUd) {
            6
        } else {
            13
        };
        let code = (vector == 13).then(|| error_code(mem, v));
        return deliver(
            mem,
            v,
            Event::Exception {
                vector,
                code,
                cr2: None,
            },
        );
    }
    if vector == 6 {
        return undefined(mem, v);
    }
    // A #DB the model sees is a single step (no breakpoints are modelled): DR6.BS.
    if vector == 1 {
        v.pvm.dr[6] |= pvm::DR6_BS;
    }
    let code = match vector {
        10..=13 => Some(error_code(mem, v)),
        _ => abi::x86::vector::has_error_code(vector).then_some(0),
    };
    deliver(
        mem,
        v,
        Event::Exception {
            vector,
            code,
            cr2: None,
        },
    )
}

/// A #UD from Unicorn. RDPMC at CPL 3 with the host's CR4.PCE clear is #GP(0) on the host's
/// CPU; Unicorn does not implement RDPMC and raises #UD for it.
fn undefined(mem: &dyn GuestRam, v: &mut Vcpu) -> Next {
    let (bytes, n) = insn_bytes(mem, v);
    if emulate::is_rdpmc(&bytes[..n]) {
        return gp(mem, v);
    }
    deliver(
        mem,
        v,
        Event::Exception {
            vector: 6,
            code: None,
            cr2: None,
        },
    )
}

/// What the instruction at RIP tells about the exception it raised (read through the guest's
/// page tables; `Other` when its bytes cannot be read).
fn faulting(mem: &dyn GuestRam, v: &Vcpu) -> emulate::Faulting {
    let (bytes, n) = insn_bytes(mem, v);
    emulate::faulting(&bytes[..n], v.regs.rip, |r| reg_value(v, r))
}

/// A register's value for address computations: general registers, and the FS/GS bases.
fn reg_value(v: &Vcpu, r: iced_x86::Register) -> u64 {
    match r {
        iced_x86::Register::FS => v.regs.fs_base,
        iced_x86::Register::GS => v.regs.gs_base,
        r => reg_slot(&mut v.regs.clone(), r).map_or(0, |x| *x),
    }
}

/// Where a #PF the TLB hook reported at a page's start really was: Unicorn refills its TLB by
/// page, so a write to a page a read had filled read-only reaches the hook with the page's
/// address; the instruction's memory operand gives the byte (when it lies in that page; an
/// access that crosses into the page faults at its start, which is right).
fn fault_address(mem: &dyn GuestRam, v: &Vcpu, pf: &PageFault) -> u64 {
    if pf.addr & 0xfff != 0 {
        return pf.addr;
    }
    let (bytes, n) = insn_bytes(mem, v);
    match emulate::memory_address(&bytes[..n], v.regs.rip, |r| reg_value(v, r)) {
        Some(a) if a & !0xfff == pf.addr => a,
        _ => pf.addr,
    }
}

/// The instruction bytes at RIP: up to 15, fewer where the next page cannot be fetched.
fn insn_bytes(mem: &dyn GuestRam, v: &Vcpu) -> ([u8; 15], usize) {
    let mut bytes = [0u8; 15];
    let mut n = 15;
    while n > 0 && read_virt(mem, &v.pvm, v.regs.rip, &mut bytes[..n], Access::Fetch).is_err() {
        n -= 1;
    }
    (bytes, n)
}

/// The error code the CPU pushes with a #TS/#NP/#SS/#GP the instruction at RIP raised:
/// the selector (RPL cleared) for a segment-register load, else 0 (SDM Vol. 3A 6.13).
fn error_code(mem: &dyn GuestRam, v: &Vcpu) -> u32 {
    if v.pvm.faults.on(Fault::SelectorErrcodeZero) {
        return 0;
    }
    let selector = match faulting(mem, v) {
        emulate::Faulting::SegmentLoad(emulate::SelectorAt::Value(s)) => s,
        emulate::Faulting::SegmentLoad(emulate::SelectorAt::Memory(a)) => {
            let mut b = [0u8; 2];
            match read_virt(mem, &v.pvm, a, &mut b, Access::Read) {
                Ok(()) => u16::from_le_bytes(b),
                Err(_) => 0,
            }
        }
        _ => 0,
    };
    u32::from(selector & 0xfffc)
}

fn gp(mem: &dyn GuestRam, v: &mut Vcpu) -> Next {
    let code = if v.pvm.faults.on(Fault::GpErrcodeNonZero) {
        1
    } else {
        error_code(mem, v)
    };
    deliver(mem, v, Event::fault(abi::x86::vector::GP, code))
}

fn reg_slot(r: &mut Regs, reg: iced_x86::Register) -> Option<&mut u64> {
    use iced_x86::Register as R;
    Some(match reg.full_register() {
        R::RAX => &mut r.rax,
        R::RBX => &mut r.rbx,
        R::RCX => &mut r.rcx,
        R::RDX => &mut r.rdx,
        R::RSI => &mut r.rsi,
        R::RDI => &mut r.rdi,
        R::RBP => &mut r.rbp,
        R::RSP => &mut r.rsp,
        R::R8 => &mut r.r8,
        R::R9 => &mut r.r9,
        R::R10 => &mut r.r10,
        R::R11 => &mut r.r11,
        R::R12 => &mut r.r12,
        R::R13 => &mut r.r13,
        R::R14 => &mut r.r14,
        R::R15 => &mut r.r15,
        _ => return None,
    })
}

/// An OUT of `data` to `port`: the report channel (with the model's VMM serving requests on
/// `v`) or the case's exit handler.
fn io_action(
    mem: &dyn GuestRam,
    v: &mut Vcpu,
    handler: &RefCell<&mut (dyn ExitHandler + Send)>,
    port: u16,
    data: &[u8],
) -> Result<Action, RunEnd> {
    if port == abi::report::REPORT_PORT {
        let mut h = handler.borrow_mut();
        let (a, gpa) = runner::vm::report_exit(mem, &mut **h, data)?;
        return Ok(match a {
            Action::Serve(req) => {
                let reply = crate::vmm::serve(mem, v, req);
                runner::vm::write_reply(mem, Some(gpa), req, reply)
                    .map_err(|e| RunEnd::Unexpected(e.to_string()))?;
                Action::Continue
            }
            Action::Reply(values) => {
                let req = runner::vm::VmmRequest {
                    op: 0,
                    args: [0; 3],
                };
                runner::vm::write_reply(mem, Some(gpa), req, values)
                    .map_err(|e| RunEnd::Unexpected(e.to_string()))?;
                Action::Continue
            }
            other => other,
        });
    }
    if v.devices
        .lock()
        .write(crate::devices::Space::Pio, u64::from(port), data)
    {
        return Ok(Action::Continue);
    }
    Ok(handler.borrow_mut().io_out(port, data))
}

/// A #GP in supervisor mode: the synthetic CPUID, or a privileged instruction the host
/// emulates with CPL0 semantics (notes §6), or the #GP goes to the guest.
fn privileged(
    mem: &dyn GuestRam,
    v: &mut Vcpu,
    handler: &RefCell<&mut (dyn ExitHandler + Send)>,
) -> Next {
    let (bytes, n) = insn_bytes(mem, v);
    let Some((op, len)) = emulate::decode(&bytes[..n], v.regs.rip) else {
        return gp(mem, v);
    };
    let next_rip = v.regs.rip + len as u64;
    let r = &mut v.regs;
    match op {
        Op::SyntheticCpuid => {
            let out = v.pvm.cpuid(r.rax as u32, r.rcx as u32);
            r.rax = u64::from(out[0]);
            r.rbx = u64::from(out[1]);
            r.rcx = u64::from(out[2]);
            r.rdx = u64::from(out[3]);
        }
        Op::Rdmsr => match r
            .base_msr(r.rcx as u32)
            .map(|b| *b)
            .or_else(|| v.pvm.rdmsr(r.rcx as u32))
        {
            Some(val) => {
                r.rax = val & 0xffff_ffff;
                r.rdx = val >> 32;
            }
            None => return gp(mem, v),
        },
        Op::Wrmsr => {
            let val = (r.rdx << 32) | (r.rax & 0xffff_ffff);
            let idx = r.rcx as u32;
            if std::env::var_os(TRACE_VAR).is_some() {
                eprintln!("pvmc-model: wrmsr {idx:#x} = {val:#x}");
            }
            if let Some(base) = r.base_msr(idx) {
                if !canonical(val) {
                    return gp(mem, v);
                }
                *base = val;
            } else {
                match v.pvm.wrmsr(idx, val) {
                    Ok(()) => {}
                    Err(WrmsrError::Gp(_)) => return gp(mem, v),
                    Err(WrmsrError::TripleFault(why)) => return Next::End(shutdown(why)),
                }
            }
        }
        // Unicorn runs IN and OUT itself and calls the port hooks (it skips the IOPL check),
        // so they never trap here.
        Op::Out { .. } | Op::In { .. } => return gp(mem, v),
        Op::Outs { size, rep } => {
            let count = if rep { r.rcx } else { 1 };
            let port = r.rdx as u16;
            for _ in 0..count {
                let mut item = [0u8; 4];
                if let Err(pf) = read_virt(mem, &v.pvm, v.regs.rsi, &mut item[..size], Access::Read)
                {
                    return deliver(mem, v, Event::page_fault(pf));
                }
                match io_action(mem, v, handler, port, &item[..size]) {
                    Ok(Action::Continue) => {}
                    Ok(a) => return action(a),
                    Err(end) => return Next::End(end),
                }
                v.regs.rsi = v.regs.rsi.wrapping_add(size as u64);
                if rep {
                    v.regs.rcx -= 1;
                }
            }
        }
        Op::Ins { size, rep } => {
            let count = if rep { r.rcx } else { 1 };
            let port = r.rdx as u16;
            for _ in 0..count {
                let mut item = [0u8; 4];
                let a = handler.borrow_mut().io_in(port, &mut item[..size]);
                if let Err(pf) = write_virt(mem, &v.pvm, v.regs.rdi, &item[..size]) {
                    return deliver(mem, v, Event::page_fault(pf));
                }
                if a != Action::Continue {
                    return action(a);
                }
                v.regs.rdi = v.regs.rdi.wrapping_add(size as u64);
                if rep {
                    v.regs.rcx -= 1;
                }
            }
        }
        // With the in-kernel irqchip the host blocks the vCPU until an interrupt; without one
        // KVM exits to the VMM (`KVM_EXIT_HLT`) and the guest resumes after the HLT.
        Op::Hlt if v.pvm.irqchip => {
            v.pvm.halted = !v.pvm.faults.on(Fault::HltReturnsAtOnce);
        }
        Op::Hlt => {
            let a = handler.borrow_mut().hlt();
            if a != Action::Continue {
                v.regs.rip = next_rip;
                return action(a);
            }
        }
        Op::Cli | Op::Sti => {
            let on = op == Op::Sti;
            let at = v.pvm.vcpu_struct;
            if at != 0
                && let Ok(f) = mem.read_u64(at)
            {
                let f = if on {
                    (f | 1 << 9) & !(1 << 8)
                } else {
                    f & !(1 << 9)
                };
                let _ = mem.write_u64(at, f);
            }
        }
        Op::MovToCr { cr, reg } => {
            let val = reg_slot(r, reg).map_or(0, |s| *s);
            match cr {
                0 => {
                    // `kvm_post_set_cr0` resets the MMU context when WP (or PG) changes.
                    if (v.pvm.cr0 ^ val) & (abi::x86::cr0::WP | abi::x86::cr0::PG) != 0 {
                        v.pvm.flush_tlb = true;
                    }
                    v.pvm.cr0 = val;
                }
                2 => v.pvm.cr2 = val,
                3 => {
                    v.pvm.cr3 = val & !(1 << 63);
                    if v.pvm.faults.on(Fault::Cr3KeepsStale) {
                        v.pvm.keep_stale = Some(None);
                    } else {
                        v.pvm.flush_tlb = true;
                    }
                }
                4 => {
                    // KVM's `kvm_set_cr4`: turning PCIDE on needs CR3's PCID field clear
                    // (SDM Vol. 3A 4.10.1); the host offers PCID (notes §6: PCID recommended).
                    let pcide = abi::x86::cr4::PCIDE;
                    if val & pcide != 0 && v.pvm.cr4 & pcide == 0 && v.pvm.cr3 & 0xfff != 0 {
                        return gp(mem, v);
                    }
                    v.pvm.cr4 = val;
                    v.pvm.flush_tlb = true;
                }
                _ => v.pvm.cr8 = val & 0xf,
            }
        }
        Op::MovFromCr { cr, reg } => {
            let val = match cr {
                0 => v.pvm.cr0,
                2 => v.pvm.cr2,
                3 => v.pvm.cr3,
                4 => v.pvm.cr4,
                _ => v.pvm.cr8,
            };
            if let Some(s) = reg_slot(r, reg) {
                *s = val;
            }
        }
        Op::MovToDr { dr, reg } => {
            if let Some(s) = reg_slot(r, reg) {
                let val = *s;
                v.pvm.write_dr(dr, val);
            }
        }
        Op::MovFromDr { dr, reg } => {
            let val = v.pvm.read_dr(dr);
            if let Some(s) = reg_slot(r, reg) {
                *s = val;
            }
        }
        Op::Invlpg => {
            if v.pvm.faults.on(Fault::InvlpgKeepsStale) {
                v.pvm.keep_stale = Some(None);
            } else {
                v.pvm.flush_tlb = true;
            }
        }
        Op::Swapgs => {
            std::mem::swap(&mut r.gs_base, &mut v.pvm.kernel_gs_base);
        }
        // KVM's emulator (`em_clts`): CR0 without TS, stored like every CR0 write.
        Op::Clts => v.pvm.cr0 &= !abi::x86::cr0::TS,
        Op::Lgdt => {
            let mut b = [0u8; 10];
            if let Err(e) = read_operand(mem, v, &mut b) {
                return deliver(mem, v, e);
            }
            let base = u64::from_le_bytes([b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9]]);
            v.pvm.gdtr = (base, u16::from_le_bytes([b[0], b[1]]));
        }
        Op::Ltr { reg } => {
            if let Err(e) = selector_operand(mem, v, reg).and_then(|sel| ltr(mem, &v.pvm, sel)) {
                return deliver(mem, v, e);
            }
        }
        Op::Lldt { reg } => {
            match selector_operand(mem, v, reg).and_then(|s| lldt(mem, &v.pvm, s)) {
                Err(e) => return deliver(mem, v, e),
                // `pvm_set_segment`: "pvm doesn't support LDT": a non-null LDTR is a triple fault.
                Ok(true) if !v.pvm.faults.on(Fault::LdtStored) => {
                    return Next::End(shutdown(
                        "LLDT of an LDT descriptor: the host has no LDT (pvm_set_segment)".into(),
                    ));
                }
                Ok(_) => {}
            }
        }
        Op::Ignored => {}
    }
    v.regs.rip = next_rip;
    Next::Go
}

/// Reads the memory operand of the instruction at RIP into `out`; the #PF if that fails (or
/// #GP(0) if the instruction has no memory operand, which the decoder does not produce).
fn read_operand(mem: &dyn GuestRam, v: &Vcpu, out: &mut [u8]) -> Result<(), Event> {
    let (bytes, n) = insn_bytes(mem, v);
    let at = emulate::memory_address(&bytes[..n], v.regs.rip, |r| reg_value(v, r))
        .ok_or(Event::fault(abi::x86::vector::GP, 0))?;
    read_virt(mem, &v.pvm, at, out, Access::Read).map_err(Event::page_fault)
}

/// The selector operand of the LTR or LLDT at RIP: the 16-bit register `reg`, or memory.
fn selector_operand(
    mem: &dyn GuestRam,
    v: &Vcpu,
    reg: Option<iced_x86::Register>,
) -> Result<u16, Event> {
    match reg {
        Some(reg) => Ok(reg_value(v, reg) as u16),
        None => {
            let mut b = [0u8; 2];
            read_operand(mem, v, &mut b)?;
            Ok(u16::from_le_bytes(b))
        }
    }
}

/// The system descriptor `sel` names in the guest's GDT, checked as KVM's emulator checks
/// one for LTR or LLDT (`__load_segment_descriptor` and `read_segment_descriptor` in
/// arch/x86/kvm/emulate.c of the 6.12 line; the callers handle the null selector): past the
/// GDTR's limit #GP(selector); S set or a type not in `kinds` #GP(selector); not present
/// #NP(selector); a non-canonical 64-bit base #GP(selector). Returns the descriptor's linear
/// address and its low half.
fn system_descriptor(
    mem: &dyn GuestRam,
    p: &Pvm,
    sel: u16,
    kinds: &[u64],
) -> Result<(u64, u64), Event> {
    use abi::x86::vector::{GP, NP};
    let code = u32::from(sel & 0xfffc);
    let (base, limit) = p.gdtr;
    let index = u64::from(sel >> 3);
    // A selector into the LDT reads the current LDT, which upstream is always null (not
    // present): #GP(selector).
    if sel & 4 != 0 || u64::from(limit) < index * 8 + 7 {
        return Err(Event::fault(GP, code));
    }
    let at = base.wrapping_add(index * 8);
    let mut d = [0u8; 8];
    read_virt(mem, p, at, &mut d, Access::Read).map_err(Event::page_fault)?;
    let desc = u64::from_le_bytes(d);
    let kind = desc >> abi::x86::desc::TYPE_SHIFT & 0xf;
    let (system, present) = (desc >> 44 & 1 == 0, desc >> 47 & 1 == 1);
    if !system || !kinds.contains(&kind) {
        return Err(Event::fault(GP, code));
    }
    if !present {
        return Err(Event::fault(NP, code));
    }
    read_virt(mem, p, at + 8, &mut d, Access::Read).map_err(Event::page_fault)?;
    let base = (desc >> 16 & 0xff_ffff) | (desc >> 56) << 24 | u64::from_le_bytes(d) << 32;
    if !canonical(base) {
        return Err(Event::fault(GP, code));
    }
    Ok((at, desc))
}

/// LTR of `sel` as KVM's emulator does it against the guest's GDT (`em_ltr`): the null
/// selector and a selector into the LDT are #GP(0) (checked before the error code is set);
/// then [`system_descriptor`] with an available TSS (type 1 or 9), and the descriptor is
/// written back with the busy bit (a supervisor write, so CR0.WP applies). The selector is
/// stored nowhere the guest can see: STR shows the host's TR.
fn ltr(mem: &dyn GuestRam, p: &Pvm, sel: u16) -> Result<(), Event> {
    if sel & !3 == 0 || sel & 4 != 0 {
        return Err(Event::fault(abi::x86::vector::GP, 0));
    }
    use abi::x86::desc::{TSS_AVAILABLE, TSS_BUSY, TSS_BUSY_FLAG};
    // Type 1, the 16-bit available TSS, loads too (the emulator accepts both).
    let kinds: &[u64] = if p.faults.on(Fault::LtrLoadsBusy) {
        &[1, TSS_AVAILABLE, TSS_BUSY]
    } else {
        &[1, TSS_AVAILABLE]
    };
    let (at, desc) = system_descriptor(mem, p, sel, kinds)?;
    let busy = desc | TSS_BUSY_FLAG;
    write_virt(mem, p, at, &busy.to_le_bytes()).map_err(Event::page_fault)
}

/// LLDT of `sel` as KVM's emulator does it (`em_lldt`): the null selector loads (nothing to
/// check), anything else goes through [`system_descriptor`] with an LDT (type 2) and is then
/// handed to the host's `pvm_set_segment`. Whether that selector is non-null (the caller
/// turns that into the host's triple fault).
fn lldt(mem: &dyn GuestRam, p: &Pvm, sel: u16) -> Result<bool, Event> {
    if sel & !3 == 0 {
        return Ok(false);
    }
    system_descriptor(mem, p, sel, &[abi::x86::desc::LDT])?;
    Ok(true)
}

/// A `syscall`: from user mode an event (LSTAR), from supervisor mode ERETU or a hypercall.
fn syscall(mem: &dyn GuestRam, v: &mut Vcpu) -> Next {
    if !v.pvm.smod {
        let hypercall_nr = (abi::upstream::HC_BASE..abi::upstream::hc::END).contains(&v.regs.rax);
        if hypercall_nr && v.pvm.faults.on(Fault::UserSyscallIsHypercall) {
            let r = &mut v.regs;
            r.rax = v.pvm.hypercall(mem, r.rax, r.rbx, r.r10, r.rdx) as u64;
            return Next::Go;
        }
        // Unicorn already advanced RIP past the instruction; SYSCALL leaves RCX = that RIP and
        // R11 = RFLAGS, which the host saves in the PVCS.
        v.regs.rcx = v.regs.rip;
        v.regs.r11 = v.regs.rflags;
        return deliver(mem, v, Event::UserSyscall);
    }
    match v.pvm.supervisor_syscall(mem, &mut v.regs) {
        Ok((_, Some(ev))) => deliver(mem, v, ev),
        Ok(_) => Next::Go,
        Err(TripleFault(why)) => Next::End(shutdown(why)),
    }
}

/// The host's TSC frequency in kHz, measured once against the monotonic clock.
pub fn tsc_khz() -> u32 {
    static KHZ: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *KHZ.get_or_init(|| {
        let (t0, c0) = (Instant::now(), host_tsc());
        std::thread::sleep(Duration::from_millis(10));
        let (dt, dc) = (t0.elapsed(), host_tsc() - c0);
        (dc as f64 / dt.as_secs_f64() / 1e3) as u32
    })
}
