//! A reference model of the upstream PVM host: a software host that runs the suite's guest
//! images on the Unicorn CPU emulator and implements, per ABI generation, what a virt-pvm host
//! does (shared/notes/pvm-abi-upstream.md; the rules and their sources are listed in
//! docs/model.md).
//!
//! Bird's-eye view: the guest runs in emulated hardware ring 3 in both of its modes. Unicorn
//! hands every exception to the model instead of delivering it (an interrupt hook), every
//! `syscall` to the model (an instruction hook), and asks the model for every translation (its
//! virtual TLB mode, [`mmu`]): the model is the host's shadow MMU. The model then does what the
//! host does: emulates the privileged instruction ([`emulate`]), serves the hypercall, or
//! delivers the event to the guest the way the generation says ([`pvm`]).
//!
//! - [`backend`]: [`backend::ModelBackend`] and its VMs, behind `runner::vm::{Backend, Vm}`, so
//!   the suite's own boot path, exit handlers and host-side checks run unchanged;
//! - [`engine`]: one vCPU on Unicorn: setup, the run loop, the hooks;
//! - [`mmu`]: the guest page walk with the host's rules (allowed ranges, the U/S split);
//! - [`emulate`]: trapped privileged instructions, decoded with iced-x86;
//! - [`pvm`]: the per-generation rules (MSRs, PVCS, events, ERETU/ERETS, hypercalls);
//! - [`simd`]: SIMD floating-point exceptions (#XM), replayed on the model's own CPU;
//! - [`vmm`]: the VMM requests a case sends, answered from the model's vCPU state;
//! - [`smp`]: several vCPUs: one engine each, taking turns; IPIs between them;
//! - [`devices`]: the in-kernel devices the VMM registers (ioeventfds, coalesced zones);
//! - [`gaps`]: the cases the model cannot judge yet (they SKIP with the reason);
//! - [`faults`]: named fault switches that break one rule each (`--fault NAME`).
//!
//! Licence: Unicorn is GPL-2.0, so this crate is too; it is a separate binary that the
//! MIT/Apache harness runs as a target process and never links.

pub mod backend;
pub mod devices;
pub mod emulate;
pub mod engine;
pub mod faults;
pub mod gaps;
pub mod mmu;
pub mod pvm;
pub mod simd;
pub mod smp;
pub mod vmm;

pub use backend::ModelBackend;
pub use pvm::Generation;
