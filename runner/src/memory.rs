//! Guest RAM of the KVM backend: one anonymous private mapping (memmap2), registered as
//! memslot 0 at GPA 0. Host code copies in and out through raw pointers, never through a Rust
//! reference into the mapping, because the guest's vCPUs write it concurrently.

use crate::vm::GuestRam;
use crate::{Result, RunnerError};

/// An owned anonymous mapping used as guest RAM (memmap2), unmapped on drop.
#[derive(Debug)]
pub struct MmapRam {
    map: memmap2::MmapMut,
    /// `map`'s start, exposed once for writes through `&self` (`MmapMut` only hands out a
    /// mutable pointer through `&mut`, but the guest and the host share the bytes anyway).
    base: usize,
    size: u64,
}

impl MmapRam {
    /// Maps `size` bytes of zeroed anonymous memory (not reserved in swap: guests touch little
    /// of it).
    pub fn new(size: u64) -> Result<Self> {
        let mmap_err = |error| RunnerError::Mmap { size, error };
        let len =
            usize::try_from(size).map_err(|_| mmap_err(std::io::Error::other("too large")))?;
        let mut map = memmap2::MmapOptions::new()
            .len(len)
            .no_reserve_swap()
            .map_anon()
            .map_err(mmap_err)?;
        let base = map.as_mut_ptr().expose_provenance();
        Ok(Self { map, base, size })
    }

    /// Host address of GPA 0 (for the memslot).
    pub fn host_addr(&self) -> u64 {
        self.map.as_ptr() as u64
    }

    fn check(&self, gpa: u64, len: usize) -> Result<usize> {
        match gpa.checked_add(len as u64) {
            Some(end) if end <= self.size => Ok(gpa as usize),
            _ => Err(RunnerError::OutOfRange {
                addr: gpa,
                len: len as u64,
            }),
        }
    }
}

impl GuestRam for MmapRam {
    fn size(&self) -> u64 {
        self.size
    }

    fn write(&self, gpa: u64, data: &[u8]) -> Result<()> {
        let off = self.check(gpa, data.len())?;
        // SAFETY: the range is inside the mapping (checked), which lives as long as `self` and
        // whose start `base` exposed; the source is a distinct host buffer. Host code writes
        // guest RAM before the run, or during it only into the report message of the vCPU
        // whose exit it is handling (a VMM request's reply), which that vCPU does not touch
        // until it resumes and no other vCPU uses; so nothing accesses the bytes concurrently.
        unsafe {
            std::ptr::copy_nonoverlapping(
                data.as_ptr(),
                std::ptr::with_exposed_provenance_mut::<u8>(self.base + off),
                data.len(),
            )
        }
        Ok(())
    }

    fn read(&self, gpa: u64, out: &mut [u8]) -> Result<()> {
        let off = self.check(gpa, out.len())?;
        // SAFETY: the range is inside the mapping (checked). vCPUs may run while the host reads
        // a report message; the guest does not change a message until the exit that hands it
        // over returns, so the bytes are stable, and a byte copy cannot create invalid values.
        unsafe {
            std::ptr::copy_nonoverlapping(self.map.as_ptr().add(off), out.as_mut_ptr(), out.len())
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_are_checked() {
        let m = MmapRam::new(0x2000).expect("mmap");
        let m: &dyn GuestRam = &m;
        m.write_u64(0x1ff8, 7).expect("in range");
        assert_eq!(m.read_u64(0x1ff8).expect("in range"), 7);
        assert!(m.write_u64(0x1ffc, 1).is_err());
        assert!(m.read_u64(u64::MAX - 2).is_err());
    }
}
