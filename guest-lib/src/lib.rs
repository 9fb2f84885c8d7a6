//! `no_std` library for tiny bare-metal test guests.
//!
//! A guest binary links this library, declares its cases with [`case!`], and gets:
//! - [`rt`]: the entry point (`_start`), selecting the environment, running the case the host
//!   asked for, and the final status;
//! - [`mod@env`]: one module per guest environment (`hvm64`, `pv-local`) behind one interface;
//! - [`report`]: the report channel to the host and the check/skip/error macros;
//! - [`exception`]: exception frames, the fault-tolerant `_safe` primitives' result type;
//! - [`smp`]: several vCPUs (application processors idle and serve interrupts);
//! - [`user`]: running code at CPL3 and coming back (by `syscall` or by an exception);
//! - [`paging`]: typed handles ([`paging::Frame`], [`paging::TestVa`]) and a small page-table
//!   builder on the identity-mapped RAM;
//! - [`vmm`]: requests to the VMM (host-side MSR access, injection, save/restore, memslots);
//! - [`apic`]: x2APIC and the TSC-deadline timer;
//! - [`mod@bench`]: timing batches of operations for `cargo xtask bench`;
//! - [`arch`]: the only module with `unsafe` code (instructions, descriptor tables, entry
//!   stubs, SMP-safe global cells).
//!
//! The runtime parts only exist when building for `x86_64-unknown-none`; on the host the
//! crate still compiles (for unit tests and clippy) but has no entry point.
#![cfg_attr(not(test), no_std)]

pub use abi;

pub mod apic;
pub mod arch;
pub mod bench;
pub mod case;
pub mod env;
pub mod exception;
pub mod paging;
pub mod report;
pub mod rt;
pub mod smp;
pub mod user;
pub mod vmm;

pub use arch::{AtomicHook, PerCpu};
pub use exception::Exception;
