//! The guest's only `unsafe` code: x86 instructions, descriptor tables, entry stubs, the
//! exception-fixup table and raw access to guest-physical memory.
//!
//! Everything here exports safe functions (or `unsafe fn`s with a `# Safety` section when
//! the caller must uphold something, e.g. loading CR3). The rest of the library and every
//! case are written in safe Rust on top.
//!
//! Single-vCPU invariant: the guest runs on one vCPU, so module-level mutable state lives in
//! [`Global`] cells (volatile reads/writes of `Copy` values) instead of locks.

pub mod instr;
pub mod mem;
pub mod tables;

#[cfg(target_os = "none")]
mod entry;

use core::cell::UnsafeCell;

/// A mutable global for single-vCPU guest code. Reads and writes are volatile copies.
pub struct Global<T: Copy>(UnsafeCell<T>);

// SAFETY: the guest runs on a single vCPU. Values are only copied in and out (never borrowed),
// so an exception handler that interrupts an access sees either the old or the new value,
// never a dangling reference.
unsafe impl<T: Copy> Sync for Global<T> {}

impl<T: Copy> Global<T> {
    /// A global holding `v`.
    pub const fn new(v: T) -> Self {
        Self(UnsafeCell::new(v))
    }

    /// Copies the value out.
    pub fn get(&self) -> T {
        // SAFETY: the pointer comes from the UnsafeCell and is valid and aligned; no reference
        // to the inner value ever escapes, so there is no aliasing &mut.
        unsafe { core::ptr::read_volatile(self.0.get()) }
    }

    /// Replaces the value.
    pub fn set(&self, v: T) {
        // SAFETY: as in `get`; single vCPU, no outstanding references to the inner value.
        unsafe { core::ptr::write_volatile(self.0.get(), v) }
    }

    /// Address of the value (for handing to hardware, e.g. a descriptor table base).
    pub fn addr(&self) -> u64 {
        self.0.get() as u64
    }
}

impl<T: Copy, const N: usize> Global<[T; N]> {
    /// Writes element `i` in place (no copy of the whole array).
    pub fn set_at(&self, i: usize, v: T) {
        assert!(i < N, "Global array index {i} out of bounds {N}");
        // SAFETY: `i < N` (checked), so the element lies inside the cell; single vCPU and no
        // outstanding references, as for `set`.
        unsafe { self.0.get().cast::<T>().add(i).write_volatile(v) }
    }
}

/// Calls the case function at guest VA `entry` (taken from the case descriptor the host read
/// out of this very image).
pub fn call_case(entry: u64) {
    let valid = (abi::layout::IMAGE_BASE..abi::layout::IMAGE_END).contains(&entry);
    if !valid {
        crate::report::finish(
            abi::report::GuestStatus::Error,
            "case entry outside the image",
        );
    }
    // SAFETY: the host took `entry` from a `CaseDesc<fn()>` of this image (checked to lie
    // inside the image above), and `case!` only accepts `fn()` items there.
    let f: fn() = unsafe { core::mem::transmute::<usize, fn()>(entry as usize) };
    f();
}

/// Looks up a faulting RIP in the exception-fixup table.
pub fn fixup_for(rip: u64) -> Option<u64> {
    #[cfg(target_os = "none")]
    {
        entry::fixup_for(rip)
    }
    #[cfg(not(target_os = "none"))]
    {
        let _ = rip;
        None
    }
}

/// Runs `entry(arg)` at CPL3; see [`crate::user`].
pub fn user_enter(arg: u64, entry: u64, user_rsp: u64, pv_local: bool) {
    #[cfg(target_os = "none")]
    entry::user_enter(arg, entry, user_rsp, pv_local);
    #[cfg(not(target_os = "none"))]
    {
        let _ = (arg, entry, user_rsp, pv_local);
        panic!("user mode exists only in the guest");
    }
}

/// Address of the `ud2` that ends a user run after the user function returned.
pub fn user_exit_rip() -> u64 {
    #[cfg(target_os = "none")]
    {
        entry::user_exit_rip()
    }
    #[cfg(not(target_os = "none"))]
    {
        0
    }
}

/// Resumes the supervisor after user mode; see [`crate::user`].
pub fn user_resume() -> ! {
    #[cfg(target_os = "none")]
    {
        entry::user_resume()
    }
    #[cfg(not(target_os = "none"))]
    panic!("user mode exists only in the guest")
}

/// Address of the GPR probe (a CPL3 routine, see [`crate::user::gpr_pattern`]) and of the
/// `ud2` in it.
pub fn gpr_probe() -> (u64, u64) {
    #[cfg(target_os = "none")]
    {
        entry::gpr_probe()
    }
    #[cfg(not(target_os = "none"))]
    {
        (0, 0)
    }
}

/// Address of the kernel-CR3 load in the SYSCALL entry: a #GP there from CPL3 means a
/// `syscall` reached LSTAR without switching to CPL0.
pub fn syscall_cr3_rip() -> u64 {
    #[cfg(target_os = "none")]
    {
        entry::syscall_cr3_rip()
    }
    #[cfg(not(target_os = "none"))]
    {
        0
    }
}

/// Selects how the entry code returns to CPL3: `iretq`/`sysretq` (false) or the local
/// dialect's IRET_FRAME hypercall (true).
pub fn set_pv_local_return(on: bool) {
    #[cfg(target_os = "none")]
    entry::set_pv_local_return(on);
    #[cfg(not(target_os = "none"))]
    let _ = on;
}
