//! Guest state that is sound with several vCPUs.
//!
//! There are three kinds of mutable global state in the guest, and one type for each:
//! - [`PerCpu`]: one slot per vCPU; a vCPU only ever touches its own slot (found from its
//!   stack pointer, [`cpu_index`]), so vCPUs never share a location.
//! - [`BootCell`]: written by vCPU 0 while it sets up (descriptor tables, the boot info), read
//!   by everyone afterwards. Writes are only possible before [`release_aps`], which publishes
//!   them with a release store that the other vCPUs acquire before they read.
//! - [`AtomicHook`]: a function pointer shared by all vCPUs (a case's event hook runs on
//!   whichever vCPU takes the event), stored in an atomic.
//!
//! Everything else that vCPUs share is a `core::sync::atomic` type.
//!
//! Interrupts on one vCPU: a [`PerCpu`] value is copied in and out with volatile word
//! accesses. Synchronous exceptions cannot arrive in the middle of such a copy (the copy does
//! not fault), so an exception hook may write a slot its interrupted code reads later. An
//! asynchronous interrupt can, so what an *interrupt* handler hands to the interrupted code
//! must be an atomic.

use core::cell::UnsafeCell;
use core::marker::PhantomData;
use core::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use abi::layout::{AP_STACK_SIZE, HIGH_ALIAS, MAX_VCPUS, USER_STACK_TOP};

use super::instr;

const CPUS: usize = MAX_VCPUS as usize;

/// Index of the vCPU running this code: 0 for vCPU 0 (on its supervisor, user and trap
/// stacks, which all lie below [`USER_STACK_TOP`], also through the [`HIGH_ALIAS`]); `i` for
/// vCPU `i` on its own stack `abi::layout::stack_top(i)`. Costs no exit on any host.
#[inline(always)]
pub fn cpu_index() -> u32 {
    // Cheapest first (hosts that emulate CPL0 pay for every instruction): vCPU 0's stacks.
    let rsp = instr::read_rsp();
    if rsp <= USER_STACK_TOP {
        return 0;
    }
    let rsp = if rsp >= HIGH_ALIAS {
        rsp - HIGH_ALIAS
    } else {
        rsp
    };
    if rsp <= USER_STACK_TOP {
        return 0;
    }
    let cpu = (rsp - USER_STACK_TOP).div_ceil(AP_STACK_SIZE);
    if cpu < u64::from(MAX_VCPUS) {
        cpu as u32
    } else {
        no_vcpu(rsp)
    }
}

#[cold]
fn no_vcpu(rsp: u64) -> ! {
    crate::error!("stack pointer {rsp:#x} belongs to no vCPU")
}

/// A value per vCPU (see the module documentation).
pub struct PerCpu<T: Copy>(UnsafeCell<[T; CPUS]>);

// SAFETY: every access goes to the slot of the accessing vCPU (`cpu_index`, derived from its
// own stack pointer, which no other vCPU uses), so no two vCPUs ever access the same slot and
// there is no data race. No reference to a slot escapes: values are copied in and out.
unsafe impl<T: Copy + Send> Sync for PerCpu<T> {}

impl<T: Copy> PerCpu<T> {
    /// Every vCPU's slot holding `v`.
    pub const fn new(v: T) -> Self {
        Self(UnsafeCell::new([v; CPUS]))
    }

    #[inline(always)]
    fn slot(&self) -> *mut T {
        let cpu = cpu_index() as usize;
        // `cpu < CPUS` by construction of `cpu_index`; the pointer stays inside the array.
        self.0.get().cast::<T>().wrapping_add(cpu.min(CPUS - 1))
    }

    /// This vCPU's value. (Accessors are always inlined: on hosts that emulate CPL0 every
    /// instruction counts, and the `_safe` primitives use them twice.)
    #[inline(always)]
    pub fn get(&self) -> T {
        // SAFETY: the slot is inside the array and only this vCPU accesses it (see the `Sync`
        // impl); the read is a copy through a raw pointer, never a reference.
        unsafe { self.slot().read_volatile() }
    }

    /// Replaces this vCPU's value.
    #[inline(always)]
    pub fn set(&self, v: T) {
        // SAFETY: as in `get`.
        unsafe { self.slot().write_volatile(v) }
    }

    /// Replaces this vCPU's value and returns the old one.
    #[inline(always)]
    pub fn replace(&self, v: T) -> T {
        let slot = self.slot();
        // SAFETY: as in `get` and `set`, on the one slot of this vCPU.
        unsafe {
            let old = slot.read_volatile();
            slot.write_volatile(v);
            old
        }
    }
}

static RELEASED: AtomicBool = AtomicBool::new(false);

/// Publishes everything vCPU 0 wrote into [`BootCell`]s to the other vCPUs; afterwards no
/// `BootCell` can be written. Called once by vCPU 0 when its setup is complete.
pub fn release_aps() {
    RELEASED.store(true, Ordering::Release);
}

/// Whether [`release_aps`] happened (acquiring what it published).
pub fn aps_released() -> bool {
    RELEASED.load(Ordering::Acquire)
}

/// State written during vCPU 0's setup and read-only afterwards (see the module
/// documentation).
#[repr(transparent)]
pub struct BootCell<T>(UnsafeCell<T>);

// SAFETY: `init` is the only way to write, and it refuses to run anywhere but on vCPU 0
// before `release_aps`; reads on other vCPUs are refused before they observed `aps_released`
// (an acquire load pairing with the release store). So every write happens-before every read
// on another vCPU, and vCPU 0's own reads follow its writes in program order.
unsafe impl<T: Send> Sync for BootCell<T> {}

impl<T> BootCell<T> {
    /// A cell holding `v`.
    pub const fn new(v: T) -> Self {
        Self(UnsafeCell::new(v))
    }

    /// Lets vCPU 0 modify the value during its setup; ends the case as ERROR anywhere else.
    pub fn init(&self, f: impl FnOnce(&mut T)) {
        if cpu_index() != 0 || aps_released() {
            crate::error!("a boot-time table was written after setup or off vCPU 0");
        }
        // SAFETY: on vCPU 0 before `release_aps` (checked): no other vCPU reads the cell yet
        // (they wait for the release), and this is the only reference for the closure's run.
        f(unsafe { &mut *self.0.get() })
    }

    /// Guest address of the value (for handing to hardware: a descriptor-table base).
    pub fn addr(&self) -> u64 {
        self.0.get() as u64
    }
}

impl<T: Copy> BootCell<T> {
    /// A copy of the value; on a vCPU other than 0 only after [`release_aps`].
    pub fn get(&self) -> T {
        if cpu_index() != 0 && !aps_released() {
            crate::error!("a boot-time value was read before vCPU 0 published it");
        }
        // SAFETY: see the `Sync` impl: every write happened before this read.
        unsafe { self.0.get().read_volatile() }
    }
}

/// Function-pointer types an [`AtomicHook`] can hold.
///
/// # Safety
/// Implement only for function-pointer types (pointer-sized, never null). The library
/// implements it for its hook types.
pub unsafe trait FnPtr: Copy {}

// SAFETY: the library's hook types are function-pointer types (`FaultHook` is the same type
// as `exception::Hook`).
unsafe impl FnPtr for crate::exception::Hook {}
// SAFETY: as above.
unsafe impl FnPtr for crate::user::SyscallHook {}

/// An optional function pointer shared by every vCPU.
pub struct AtomicHook<H: FnPtr>(AtomicUsize, PhantomData<H>);

const _: () = assert!(core::mem::size_of::<fn()>() == core::mem::size_of::<usize>());

impl<H: FnPtr> AtomicHook<H> {
    /// No hook.
    pub const fn new() -> Self {
        Self(AtomicUsize::new(0), PhantomData)
    }

    /// Installs `h` (or removes the hook).
    pub fn set(&self, h: Option<H>) {
        let raw = match h {
            // SAFETY: `H: FnPtr` is a function-pointer type, pointer-sized like `usize`.
            Some(f) => unsafe { core::mem::transmute_copy::<H, usize>(&f) },
            None => 0,
        };
        self.0.store(raw, Ordering::Release);
    }

    /// The hook, if one is installed.
    pub fn get(&self) -> Option<H> {
        match self.0.load(Ordering::Acquire) {
            0 => None,
            // SAFETY: a nonzero value was stored by `set` from an `H` (function pointers are
            // never null), so it is a valid `H` again.
            raw => Some(unsafe { core::mem::transmute_copy::<usize, H>(&raw) }),
        }
    }
}

impl<H: FnPtr> Default for AtomicHook<H> {
    fn default() -> Self {
        Self::new()
    }
}
