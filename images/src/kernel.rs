//! The kernel QEMU boots directly: an uncompressed `vmlinux` taken out of a bzImage, which
//! QEMU loads through its PVH entry (skipping the kernel's own decompression, ~2.8 s under
//! TCG, shared/notes/qemu-and-images.md). The bzImage's setup header says where the payload
//! is (`setup_sects` at 0x1f1, `payload_offset`/`payload_length` at 0x248/0x24c of the
//! protected-mode part, Linux `Documentation/arch/x86/boot.rst`); xz and zstd payloads go
//! through the `xz`/`zstd` tools (fast, and on every Debian), gzip through flate2. A kernel
//! that is already an ELF is used as it is; one whose payload cannot be unpacked is booted as
//! a bzImage.

use std::io::Read;
use std::path::{Path, PathBuf};

use crate::{Error, Result, io_err};

const XZ: &[u8] = &[0xfd, b'7', b'z', b'X', b'Z', 0];
const GZIP: &[u8] = &[0x1f, 0x8b];
const ZSTD: &[u8] = &[0x28, 0xb5, 0x2f, 0xfd];

fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    b.get(off..off + 4)
        .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

/// Where the compressed payload of a bzImage is, or `None` when `b` is not one.
pub fn payload(b: &[u8]) -> Option<&[u8]> {
    if b.get(0x202..0x206) != Some(b"HdrS") {
        return None;
    }
    let setup_sects = match *b.get(0x1f1)? {
        0 => 4,
        n => usize::from(n),
    };
    let start = (setup_sects + 1) * 512 + usize::try_from(u32_at(b, 0x248)?).ok()?;
    let len = usize::try_from(u32_at(b, 0x24c)?).ok()?;
    b.get(start..start.checked_add(len)?)
}

/// The kernel for a direct boot, written into `out` as `vmlinux` when it could be unpacked;
/// else `kernel` itself (copied as `bzImage`).
pub fn for_direct_boot(kernel: &Path, out: &Path) -> Result<PathBuf> {
    let bytes = std::fs::read(kernel).map_err(io_err(kernel))?;
    let vmlinux = out.join("vmlinux");
    if bytes.starts_with(b"\x7fELF") {
        std::fs::write(&vmlinux, &bytes).map_err(io_err(&vmlinux))?;
        return Ok(vmlinux);
    }
    let Some(p) = payload(&bytes) else {
        return Err(Error::Invalid(format!(
            "{}: neither an ELF vmlinux nor a bzImage",
            kernel.display()
        )));
    };
    let unpacked = if p.starts_with(XZ) {
        Some(
            crate::tool(
                duct::cmd!("xz", "-dc", "--single-stream").stdin_bytes(p.to_vec()),
                "xz",
            )?
            .stdout,
        )
    } else if p.starts_with(ZSTD) {
        Some(crate::tool(duct::cmd!("zstd", "-dcq").stdin_bytes(p.to_vec()), "zstd")?.stdout)
    } else if p.starts_with(GZIP) {
        let mut v = Vec::new();
        flate2::read::GzDecoder::new(p)
            .read_to_end(&mut v)
            .map_err(io_err(kernel))?;
        Some(v)
    } else {
        None
    };
    match unpacked {
        Some(v) if v.starts_with(b"\x7fELF") => {
            std::fs::write(&vmlinux, &v).map_err(io_err(&vmlinux))?;
            Ok(vmlinux)
        }
        _ => {
            let bz = out.join("bzImage");
            std::fs::write(&bz, &bytes).map_err(io_err(&bz))?;
            Ok(bz)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_payload_is_found_from_the_setup_header() {
        let mut b = vec![0u8; 4096];
        b[0x1f1] = 1; // one setup sector: protected-mode code at 1024
        b[0x202..0x206].copy_from_slice(b"HdrS");
        b[0x248..0x24c].copy_from_slice(&100u32.to_le_bytes());
        b[0x24c..0x250].copy_from_slice(&6u32.to_le_bytes());
        b[1124..1130].copy_from_slice(XZ);
        assert_eq!(payload(&b), Some(XZ));
        b[0x202] = b'X';
        assert_eq!(payload(&b), None);
    }

    #[test]
    fn an_elf_kernel_is_used_as_it_is_and_garbage_is_refused() {
        let d = tempfile::tempdir().expect("tempdir");
        let k = d.path().join("k");
        std::fs::write(&k, b"\x7fELF rest").expect("write");
        let got = for_direct_boot(&k, d.path()).expect("elf");
        assert_eq!(std::fs::read(got).expect("read"), b"\x7fELF rest");
        std::fs::write(&k, b"garbage").expect("write");
        let e = for_direct_boot(&k, d.path()).expect_err("garbage");
        assert!(e.to_string().contains("neither"), "{e}");
    }
}
