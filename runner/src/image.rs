//! The guest image: an ELF executable linked at its load addresses. Parsed and validated
//! once per run of the suite and shared by every case instance; a file that is not a loadable
//! test guest is refused with an [`ImageError`] naming what is wrong.

use std::path::Path;

use abi::layout::{IMAGE_BASE, IMAGE_END};
use goblin::elf::program_header::{PF_X, PT_LOAD};
use goblin::elf::{Elf, header};
use sha2::{Digest, Sha256};

use crate::vm::GuestRam;
use crate::{Result, RunnerError};

/// What makes a file unusable as a guest image.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ImageError {
    /// Not parseable as ELF.
    #[error("not an ELF file: {0}")]
    NotElf(String),
    /// ELF, but not a 64-bit x86-64 executable.
    #[error("not an x86-64 ELF64 executable")]
    WrongKind,
    /// A segment's file size exceeds its memory size.
    #[error("segment {index} has p_filesz {filesz:#x} > p_memsz {memsz:#x}")]
    FileSizeExceedsMemSize {
        /// Program-header index.
        index: usize,
        /// `p_filesz`.
        filesz: u64,
        /// `p_memsz`.
        memsz: u64,
    },
    /// A segment lies outside the image area of the guest layout.
    #[error(
        "segment {index} at {start:#x}..{end:#x} is outside the image area {IMAGE_BASE:#x}..{IMAGE_END:#x}"
    )]
    OutsideImageArea {
        /// Program-header index.
        index: usize,
        /// Start GPA.
        start: u64,
        /// End GPA.
        end: u64,
    },
    /// A segment is not loaded at its virtual address (the guest is identity mapped).
    #[error("segment {index} has p_vaddr {vaddr:#x} != p_paddr {paddr:#x}")]
    NotIdentity {
        /// Program-header index.
        index: usize,
        /// `p_vaddr`.
        vaddr: u64,
        /// `p_paddr`.
        paddr: u64,
    },
    /// Two segments overlap.
    #[error("segments {a} and {b} overlap")]
    Overlap {
        /// First index.
        a: usize,
        /// Second index.
        b: usize,
    },
    /// A segment's bytes are not in the file (truncated file).
    #[error(
        "segment {index} data at file offset {offset:#x}+{len:#x} beyond the end of the file ({file_len:#x} bytes)"
    )]
    Truncated {
        /// Program-header index.
        index: usize,
        /// `p_offset`.
        offset: u64,
        /// `p_filesz`.
        len: u64,
        /// File size.
        file_len: usize,
    },
    /// No loadable segment.
    #[error("no loadable segments")]
    NoSegments,
    /// The entry point is not in an executable segment.
    #[error("entry point {0:#x} is not inside an executable segment")]
    EntryNotExecutable(u64),
    /// A section's bytes are not in the file.
    #[error("section {0} lies beyond the end of the file")]
    SectionTruncated(String),
}

/// One loadable segment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Segment {
    /// Guest-physical (== virtual) load address.
    pub gpa: u64,
    /// Bytes from the file; the rest of the segment, up to `mem_size`, is zero (a fresh VM's
    /// RAM is zeroed).
    pub data: Vec<u8>,
    /// Size in memory.
    pub mem_size: u64,
    /// Has the execute permission (PF_X).
    pub executable: bool,
}

/// A parsed, validated guest image.
#[derive(Clone, Debug)]
pub struct GuestImage {
    /// Loadable segments, in address order.
    pub segments: Vec<Segment>,
    /// ELF entry point (`_start`).
    pub entry: u64,
    /// Named sections with their bytes, in file order.
    pub sections: Vec<(String, Vec<u8>)>,
    /// SHA-256 of the file, lower-case hex.
    pub sha256: String,
}

impl GuestImage {
    /// Reads, parses and validates the ELF at `path`.
    pub fn load(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| RunnerError::ImageFile {
            path: path.display().to_string(),
            error: e,
        })?;
        Self::parse(&bytes).map_err(|error| RunnerError::Image {
            path: path.display().to_string(),
            error,
        })
    }

    /// Parses and validates an ELF image from memory.
    pub fn parse(bytes: &[u8]) -> std::result::Result<Self, ImageError> {
        let elf = Elf::parse(bytes).map_err(|e| ImageError::NotElf(e.to_string()))?;
        if !elf.is_64
            || elf.header.e_machine != header::EM_X86_64
            || elf.header.e_type != header::ET_EXEC
        {
            return Err(ImageError::WrongKind);
        }
        let mut segments: Vec<(usize, Segment)> = Vec::new();
        for (index, ph) in elf.program_headers.iter().enumerate() {
            if ph.p_type != PT_LOAD {
                continue;
            }
            if ph.p_filesz > ph.p_memsz {
                return Err(ImageError::FileSizeExceedsMemSize {
                    index,
                    filesz: ph.p_filesz,
                    memsz: ph.p_memsz,
                });
            }
            if ph.p_vaddr != ph.p_paddr {
                return Err(ImageError::NotIdentity {
                    index,
                    vaddr: ph.p_vaddr,
                    paddr: ph.p_paddr,
                });
            }
            let (start, end) = (ph.p_paddr, ph.p_paddr.saturating_add(ph.p_memsz));
            if start < IMAGE_BASE || end > IMAGE_END {
                return Err(ImageError::OutsideImageArea { index, start, end });
            }
            let data = ph
                .p_offset
                .checked_add(ph.p_filesz)
                .and_then(|e| bytes.get(ph.p_offset as usize..e as usize))
                .ok_or(ImageError::Truncated {
                    index,
                    offset: ph.p_offset,
                    len: ph.p_filesz,
                    file_len: bytes.len(),
                })?;
            segments.push((
                index,
                Segment {
                    gpa: start,
                    data: data.to_vec(),
                    mem_size: ph.p_memsz,
                    executable: ph.p_flags & PF_X != 0,
                },
            ));
        }
        if segments.is_empty() {
            return Err(ImageError::NoSegments);
        }
        segments.sort_by_key(|(_, s)| s.gpa);
        for w in segments.windows(2) {
            if w[0].1.gpa + w[0].1.mem_size > w[1].1.gpa {
                return Err(ImageError::Overlap {
                    a: w[0].0,
                    b: w[1].0,
                });
            }
        }
        let segments: Vec<Segment> = segments.into_iter().map(|(_, s)| s).collect();
        let mut sections = Vec::new();
        for sh in &elf.section_headers {
            let Some(name) = elf.shdr_strtab.get_at(sh.sh_name) else {
                continue;
            };
            if name.is_empty() || sh.sh_type == goblin::elf::section_header::SHT_NOBITS {
                continue;
            }
            let data = sh
                .sh_offset
                .checked_add(sh.sh_size)
                .and_then(|e| bytes.get(sh.sh_offset as usize..e as usize))
                .ok_or_else(|| ImageError::SectionTruncated(name.to_string()))?;
            sections.push((name.to_string(), data.to_vec()));
        }
        let image = Self {
            segments,
            entry: elf.entry,
            sections,
            sha256: hex(&Sha256::digest(bytes)),
        };
        if !image.is_executable(image.entry) {
            return Err(ImageError::EntryNotExecutable(image.entry));
        }
        Ok(image)
    }

    /// Whether `addr` lies inside an executable segment.
    pub fn is_executable(&self, addr: u64) -> bool {
        self.segments
            .iter()
            .any(|s| s.executable && (s.gpa..s.gpa + s.mem_size).contains(&addr))
    }

    /// The bytes of section `name`.
    pub fn section(&self, name: &str) -> Option<&[u8]> {
        self.sections
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, d)| d.as_slice())
    }

    /// Copies the segments into (zeroed) guest memory.
    pub fn load_into(&self, mem: &dyn GuestRam) -> Result<()> {
        self.segments
            .iter()
            .try_for_each(|s| mem.write(s.gpa, &s.data))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_garbage_and_names_the_file() {
        assert!(matches!(
            GuestImage::parse(b"not an elf"),
            Err(ImageError::NotElf(_))
        ));
        let e = GuestImage::load(Path::new("/nonexistent/guest")).expect_err("missing file");
        assert!(e.to_string().contains("/nonexistent/guest"), "{e}");
    }

    #[test]
    fn hex_is_lower_case() {
        assert_eq!(hex(&[0x0a, 0xff]), "0aff");
    }
}
