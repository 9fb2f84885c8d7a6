//! The guest side of every conformance case.
//!
//! One bare-metal image holds all cases; each is a function declared with `case!`, which
//! records its metadata (name, area, environments, requirement ids, host-side check) in the
//! image's `pvmc_cases` section. The host reads that table, and for each case instance boots a
//! fresh VM with the case's entry in the boot info. Modules follow the areas.
//!
//! The image only means something for `x86_64-unknown-none`; built for the host (by
//! `cargo clippy --workspace`, say) it is an empty program.
#![cfg_attr(target_os = "none", no_std, no_main)]

mod abi_local;
mod abi_rfc;
mod abi_v2;
mod bench;
mod common;
mod cpu;
mod interrupts;
mod io;
mod irq;
mod isolation;
mod optin;
mod paging;
mod privilege;
mod selftest;
mod vmm;

#[cfg(not(target_os = "none"))]
fn main() {}
