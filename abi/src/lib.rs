//! Everything the guest and the host must agree on, defined once.
//!
//! This crate has no dependencies and is `no_std` (except for its own unit tests), so both
//! the bare-metal guest (`x86_64-unknown-none`) and the host harness link the very same
//! definitions. Every `#[repr(C)]` layout that crosses the guest/host boundary carries
//! compile-time `size_of`/`offset_of!` assertions next to its definition.
//!
//! - [`mod@bench`]: sample counts and the native baselines benchmarks are compared with.
//! - [`layout`]: guest-physical memory map the host loader builds and the guest relies on.
//! - [`report`]: the guest->host report channel (one port, one message format).
//! - [`case`]: case descriptors that the guest binary carries in an ELF section.
//! - [`mod@env`]: execution environments (hvm64, pv-local, upstream generations) and areas.
//! - [`local`]: the local host's PVM dialect (MSRs, `int $0x1b` hypercalls).
//! - [`upstream`]: the three upstream virt-pvm ABI generations (constants only).
//! - [`vmm`]: requests a case makes to the VMM (inject, save/restore, memslots, eventfds).
//! - [`x86`]: architectural constants (MSRs, control-register bits, vectors, error codes).
#![cfg_attr(not(test), no_std)]

pub mod bench;
pub mod case;
pub mod env;
pub mod layout;
pub mod local;
pub mod report;
pub mod upstream;
pub mod vmm;
pub mod x86;

/// Copies `s` into a NUL-padded fixed array at compile time; fails the build if it does not
/// fit (at least one NUL byte is always left so the host can find the end).
pub const fn fixed_str<const N: usize>(s: &str) -> [u8; N] {
    let bytes = s.as_bytes();
    assert!(bytes.len() < N, "string does not fit its fixed-size field");
    let mut out = [0u8; N];
    let mut i = 0;
    while i < bytes.len() {
        out[i] = bytes[i];
        i += 1;
    }
    out
}

/// Reads a NUL-padded fixed array back as text (lossy: invalid UTF-8 is cut at the first bad
/// byte). Used by the host when decoding guest data.
pub fn fixed_str_read(bytes: &[u8]) -> &str {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    match core::str::from_utf8(&bytes[..end]) {
        Ok(s) => s,
        Err(e) => core::str::from_utf8(&bytes[..e.valid_up_to()]).unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_str_round_trips() {
        let f: [u8; 8] = fixed_str("abc");
        assert_eq!(f, *b"abc\0\0\0\0\0");
        assert_eq!(fixed_str_read(&f), "abc");
        assert_eq!(fixed_str_read(b"ab\xffcd"), "ab");
    }
}
