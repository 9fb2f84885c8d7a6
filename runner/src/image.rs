//! The guest image: an ELF executable linked at its load addresses, carrying its case
//! descriptors in the `pvmc_cases` section. Parsed once per run of the suite and shared by
//! every case instance.

use std::path::Path;

use abi::case::{CASE_DESC_SIZE, CASE_SECTION, CaseDesc, HostCheck};
use abi::env::Area;
use abi::fixed_str_read;
use abi::layout::{IMAGE_BASE, IMAGE_END};
use goblin::elf::{Elf, program_header::PT_LOAD};

use crate::memory::GuestMemory;
use crate::{Result, RunnerError};

/// One loadable segment.
#[derive(Clone, Debug)]
pub struct Segment {
    /// Guest-physical (== virtual) load address.
    pub gpa: u64,
    /// Bytes from the file (the rest of the segment, up to its memory size, is zero).
    pub data: Vec<u8>,
}

/// A case as declared in the guest image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GuestCase {
    /// `area.what`.
    pub name: String,
    /// Area.
    pub area: Area,
    /// Environment mask (`Env::bit`).
    pub envs: u32,
    /// `FLAG_*` bits.
    pub flags: u32,
    /// Host-side behaviour.
    pub host: HostCheck,
    /// Timeout override in ms (0 = default).
    pub timeout_ms: u32,
    /// vCPUs.
    pub vcpus: u32,
    /// Requirement ids.
    pub requirements: Vec<String>,
    /// One-line description.
    pub summary: String,
    /// Guest VA of the case function.
    pub entry: u64,
}

/// A parsed guest image.
#[derive(Clone, Debug)]
pub struct GuestImage {
    /// Loadable segments.
    pub segments: Vec<Segment>,
    /// ELF entry point (`_start`).
    pub entry: u64,
    /// The case table, in section order.
    pub cases: Vec<GuestCase>,
}

impl GuestImage {
    /// Reads and parses the ELF at `path`.
    pub fn load(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| RunnerError::Image {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        Self::parse(&bytes).map_err(|reason| RunnerError::Image {
            path: path.display().to_string(),
            reason,
        })
    }

    /// Parses an ELF image from memory.
    pub fn parse(bytes: &[u8]) -> std::result::Result<Self, String> {
        let elf = Elf::parse(bytes).map_err(|e| format!("not an ELF file: {e}"))?;
        if !elf.is_64 || elf.header.e_machine != goblin::elf::header::EM_X86_64 {
            return Err("not an x86-64 ELF64 image".into());
        }
        let mut segments = Vec::new();
        for ph in elf.program_headers.iter().filter(|p| p.p_type == PT_LOAD) {
            let (start, end) = (ph.p_paddr, ph.p_paddr.saturating_add(ph.p_memsz));
            if start < IMAGE_BASE || end > IMAGE_END {
                return Err(format!(
                    "segment {start:#x}..{end:#x} outside the image area {IMAGE_BASE:#x}..{IMAGE_END:#x}"
                ));
            }
            let data = bytes
                .get(ph.p_offset as usize..(ph.p_offset + ph.p_filesz) as usize)
                .ok_or("segment data beyond the end of the file")?;
            segments.push(Segment {
                gpa: start,
                data: data.to_vec(),
            });
        }
        if segments.is_empty() {
            return Err("no loadable segments".into());
        }
        let section = elf
            .section_headers
            .iter()
            .find(|s| elf.shdr_strtab.get_at(s.sh_name) == Some(CASE_SECTION))
            .ok_or(format!("no {CASE_SECTION} section: no cases declared"))?;
        let raw = bytes
            .get(section.sh_offset as usize..(section.sh_offset + section.sh_size) as usize)
            .ok_or("case section beyond the end of the file")?;
        if raw.len() % CASE_DESC_SIZE != 0 {
            return Err(format!(
                "case section size {} is not a multiple of {CASE_DESC_SIZE}",
                raw.len()
            ));
        }
        let cases = raw
            .chunks_exact(CASE_DESC_SIZE)
            .map(decode_case)
            .collect::<std::result::Result<Vec<_>, _>>()?;
        Ok(Self {
            segments,
            entry: elf.entry,
            cases,
        })
    }

    /// Copies the segments into guest memory.
    pub fn load_into(&self, mem: &GuestMemory) -> Result<()> {
        self.segments
            .iter()
            .try_for_each(|s| mem.write(s.gpa, &s.data))
    }
}

fn decode_case(raw: &[u8]) -> std::result::Result<GuestCase, String> {
    let d = CaseDesc::parse(raw).ok_or("case descriptor with bad magic or version")?;
    let name = fixed_str_read(&d.name).to_string();
    let area = Area::from_raw(d.area).ok_or(format!("case {name}: unknown area {}", d.area))?;
    let host =
        HostCheck::from_raw(d.host).ok_or(format!("case {name}: unknown host check {}", d.host))?;
    if !(IMAGE_BASE..IMAGE_END).contains(&d.entry) {
        return Err(format!(
            "case {name}: entry {:#x} outside the image",
            d.entry
        ));
    }
    Ok(GuestCase {
        area,
        host,
        envs: d.envs,
        flags: d.flags,
        timeout_ms: d.timeout_ms,
        vcpus: d.vcpus,
        requirements: fixed_str_read(&d.requirements)
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect(),
        summary: fixed_str_read(&d.summary).to_string(),
        entry: d.entry,
        name,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_garbage() {
        assert!(GuestImage::parse(b"not an elf").is_err());
        let e = GuestImage::load(Path::new("/nonexistent/guest")).expect_err("missing file");
        assert!(e.to_string().contains("/nonexistent/guest"));
    }
}
