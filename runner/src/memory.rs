//! Guest RAM of the KVM backend: one anonymous private mapping, registered as memslot 0 at
//! GPA 0.

use std::ptr::NonNull;

use crate::vm::GuestRam;
use crate::{Result, RunnerError};

/// An owned anonymous mapping used as guest RAM. Unmapped on drop.
#[derive(Debug)]
pub struct MmapRam {
    ptr: NonNull<u8>,
    size: u64,
}

// SAFETY: the mapping is owned exclusively by this value; moving it to another thread moves
// that ownership.
unsafe impl Send for MmapRam {}

// SAFETY: the memory is shared with the guest's vCPUs anyway, so every access is a volatile
// byte copy through a raw pointer (never a Rust reference into the mapping); concurrent
// accesses from host threads are as well defined as the guest's own.
unsafe impl Sync for MmapRam {}

impl MmapRam {
    /// Maps `size` bytes of zeroed anonymous memory.
    pub fn new(size: u64) -> Result<Self> {
        // SAFETY: an anonymous private mapping with no address hint has no preconditions; the
        // result is checked against MAP_FAILED.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                size as usize,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(RunnerError::Mmap {
                size,
                error: std::io::Error::last_os_error(),
            });
        }
        let ptr = NonNull::new(p.cast::<u8>()).ok_or(RunnerError::Mmap {
            size,
            error: std::io::Error::other("null mapping"),
        })?;
        Ok(Self { ptr, size })
    }

    /// Host address of GPA 0 (for the memslot).
    pub fn host_addr(&self) -> u64 {
        self.ptr.as_ptr() as u64
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
        // SAFETY: the range is inside the mapping (checked); the source is a distinct host
        // buffer. Host code writes guest RAM only while no vCPU of this VM runs (before the
        // run), so nothing else accesses the bytes concurrently.
        unsafe {
            std::ptr::copy_nonoverlapping(data.as_ptr(), self.ptr.as_ptr().add(off), data.len())
        }
        Ok(())
    }

    fn read(&self, gpa: u64, out: &mut [u8]) -> Result<()> {
        let off = self.check(gpa, out.len())?;
        // SAFETY: the range is inside the mapping (checked). vCPUs may run while the host reads
        // a report message; the guest does not change a message until the exit that hands it
        // over returns, so the bytes are stable, and a byte copy cannot create invalid values.
        unsafe {
            std::ptr::copy_nonoverlapping(self.ptr.as_ptr().add(off), out.as_mut_ptr(), out.len())
        }
        Ok(())
    }
}

impl Drop for MmapRam {
    fn drop(&mut self) {
        // SAFETY: ptr/size describe the mapping created in `new`, unmapped exactly once here.
        unsafe {
            libc::munmap(self.ptr.as_ptr().cast(), self.size as usize);
        }
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
