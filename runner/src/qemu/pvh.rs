//! The boot file QEMU loads for one instance: an ELF with a PVH entry note whose one segment
//! holds a trampoline and a copy of the guest RAM that [`crate::boot`] prepared.
//!
//! QEMU's PVH boot (`-kernel` with an `XEN_ELFNOTE_PHYS32_ENTRY` note, Xen's
//! `arch-x86/hvm/start_info.h` and QEMU `hw/i386/x86-common.c:load_elfboot`) enters the
//! trampoline in 32-bit protected mode, paging off, after the firmware ran. The trampoline:
//!
//! 1. zeroes guest RAM (below the legacy VGA/ROM hole and from 1 MiB up to
//!    `abi::layout::RAM_SIZE`: the firmware used low memory) and copies the non-zero pages of
//!    the prepared RAM into place, so the guest sees exactly what the KVM backend would have;
//! 2. loads a GDT of its own with the boot selectors (`abi::layout::sel`), CR4, EFER and CR0 of
//!    the [`VcpuState`], on temporary page tables that identity-map the trampoline;
//! 3. far-jumps to 64-bit code, loads the data selectors, RFLAGS, RSP, RDI and RSI, clears the
//!    other GPRs, and jumps to `entry - 4`, which the temporary tables map to a page holding
//!    `mov cr3, r15` (R15 = the guest's CR3) at its last four bytes: the next fetch, `entry`,
//!    goes through the guest's own page tables. Nothing of the trampoline is in guest RAM.
//!
//! One register differs from the KVM start: R15 holds CR3 instead of 0 (no case reads R15 at
//! entry; `_start` reads only RDI, RSI and RSP). Every other register, the memory and the
//! control state match [`crate::setup::initial_state`].
//!
//! The trampoline is assembled with iced-x86's code assembler and the file written with the
//! `object` crate's ELF writer; the PVH note and the copy plan are this module's own, since
//! no crate builds PVH boot files.

use abi::layout::{LARGE_PAGE_SIZE, PAGE_SIZE, RAM_SIZE, pte};
use iced_x86::code_asm::{
    CodeAssembler, ax, cr0, cr3, cr4, ds, eax, ecx, edi, edx, es, esi, fs, gs, ptr, qword_ptr, r8,
    r9, r10, r11, r12, r13, r14, r15, rax, rbp, rbx, rcx, rdi, rdx, rsi, rsp, ss,
};

use crate::vm::VcpuState;
use crate::{Result, RunnerError};

/// Physical address of the trampoline (and the file's one segment): right above guest RAM.
pub const TRAMPOLINE_GPA: u64 = RAM_SIZE;
/// Start of the legacy VGA/ROM hole, which the trampoline leaves alone (nothing of the guest
/// lives there: `abi::layout`).
const HOLE_START: u64 = 0xa_0000;
/// End of that hole.
const HOLE_END: u64 = 0x10_0000;

// Offsets in the segment.
const CODE64: u64 = 0x800;
const GDT: u64 = 0xf00;
const GDTR: u64 = 0xfe0;
const JUMP_SLOT: u64 = 0xff0;
const PML4: u64 = 0x1000;
const PDPT: u64 = 0x2000;
const PD: u64 = 0x3000;
const PT: u64 = 0x4000;
const CRAFTED: u64 = 0x5000;
const STACK_TOP: u64 = 0x8000;
const BLOB: u64 = 0x8000;

/// A run of guest pages to copy: `len` bytes from the blob at `src` (segment offset) to `gpa`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Run {
    gpa: u64,
    src: u64,
    len: u64,
}

/// The runs of non-zero pages of `ram` (guest RAM from GPA 0) and the blob holding them.
fn plan(ram: &[u8]) -> Result<(Vec<Run>, Vec<u8>)> {
    let mut runs: Vec<Run> = Vec::new();
    let mut blob = Vec::new();
    for (i, page) in ram.chunks(PAGE_SIZE as usize).enumerate() {
        if page.iter().all(|&b| b == 0) {
            continue;
        }
        let gpa = i as u64 * PAGE_SIZE;
        if (HOLE_START..HOLE_END).contains(&gpa) {
            return Err(RunnerError::Setup(format!(
                "guest RAM at {gpa:#x} is in the legacy VGA/ROM hole, which QEMU's pc machine \
                 does not back with RAM"
            )));
        }
        let src = BLOB + blob.len() as u64;
        blob.extend_from_slice(page);
        match runs.last_mut() {
            Some(r) if r.gpa + r.len == gpa => r.len += page.len() as u64,
            _ => runs.push(Run {
                gpa,
                src,
                len: page.len() as u64,
            }),
        }
    }
    Ok((runs, blob))
}

fn asm_err(e: iced_x86::IcedError) -> RunnerError {
    RunnerError::Setup(format!("assembling the QEMU boot trampoline: {e}"))
}

/// A flat GDT descriptor: 64-bit code (L=1) or data, DPL 0.
fn descriptor(code: bool) -> u64 {
    if code {
        0x00af_9a00_0000_ffff
    } else {
        0x00cf_9200_0000_ffff
    }
}

/// The 32-bit half: RAM, then long mode on the temporary tables, then the far jump.
fn code32(runs: &[Run], s: &VcpuState) -> Result<Vec<u8>> {
    let t = TRAMPOLINE_GPA;
    let mut a = CodeAssembler::new(32).map_err(asm_err)?;
    let lo = |v: u64| v as u32;
    let r = (|| {
        a.cli()?;
        a.cld()?;
        a.xor(eax, eax)?;
        for (start, end) in [(0, HOLE_START), (HOLE_END, RAM_SIZE)] {
            a.mov(edi, lo(start))?;
            a.mov(ecx, lo((end - start) / 4))?;
            a.rep().stosd()?;
        }
        for run in runs {
            a.mov(esi, lo(t + run.src))?;
            a.mov(edi, lo(run.gpa))?;
            a.mov(ecx, lo(run.len / 4))?;
            a.rep().movsd()?;
        }
        a.lgdt(ptr(lo(t + GDTR)))?;
        a.mov(eax, lo(s.cr4 & !abi::x86::cr4::PCIDE))?;
        a.mov(cr4, eax)?;
        a.mov(eax, lo(t + PML4))?;
        a.mov(cr3, eax)?;
        a.mov(ecx, abi::x86::msr::EFER)?;
        let efer = s.efer & !abi::x86::efer::LMA;
        a.mov(eax, lo(efer))?;
        a.mov(edx, lo(efer >> 32))?;
        a.wrmsr()?;
        a.mov(eax, lo(s.cr0))?;
        a.mov(cr0, eax)?;
        a.jmp_far(s.cs.selector, lo(t + CODE64))
    })();
    r.map_err(asm_err)?;
    a.assemble(t).map_err(asm_err)
}

/// The 64-bit half: segments, CR4, RFLAGS, GPRs, then the jump to `entry - 4`.
fn code64(s: &VcpuState) -> Result<Vec<u8>> {
    let t = TRAMPOLINE_GPA;
    let mut a = CodeAssembler::new(64).map_err(asm_err)?;
    let r = (|| {
        a.mov(ax, u32::from(s.data.selector))?;
        for seg in [ds, es, ss, fs, gs] {
            a.mov(seg, ax)?;
        }
        a.mov(rax, s.cr4)?;
        a.mov(cr4, rax)?;
        a.mov(rsp, t + STACK_TOP)?;
        for reg in [rax, rbx, rcx, rdx, rbp, r8, r9, r10, r11, r12, r13, r14] {
            a.xor(reg, reg)?;
        }
        // RFLAGS last of the flag-writing instructions: MOV does not change them.
        a.push(s.rflags as i32)?;
        a.popfq()?;
        a.mov(rsp, s.rsp)?;
        a.mov(rdi, s.rdi)?;
        a.mov(rsi, s.rsi)?;
        a.mov(r15, s.cr3)?;
        a.jmp(qword_ptr(t + JUMP_SLOT))
    })();
    r.map_err(asm_err)?;
    a.assemble(t + CODE64).map_err(asm_err)
}

/// `mov cr3, r15`, the last instruction before the guest's first.
fn switch_cr3() -> Result<Vec<u8>> {
    let mut a = CodeAssembler::new(64).map_err(asm_err)?;
    a.mov(cr3, r15).map_err(asm_err)?;
    a.assemble(0).map_err(asm_err)
}

/// The segment: code, GDT, jump slot, temporary page tables, the crafted page(s), the blob.
fn segment(ram: &[u8], s: &VcpuState) -> Result<Vec<u8>> {
    let (runs, blob) = plan(ram)?;
    let c32 = code32(&runs, s)?;
    let c64 = code64(s)?;
    if c32.len() as u64 > CODE64 || CODE64 + c64.len() as u64 > GDT {
        return Err(RunnerError::Setup(format!(
            "the QEMU boot trampoline is too big ({} + {} bytes; {} runs of guest pages)",
            c32.len(),
            c64.len(),
            runs.len()
        )));
    }
    let switch = switch_cr3()?;
    let hop = s.rip.wrapping_sub(switch.len() as u64);
    if s.rip >= 1 << 30 || hop < LARGE_PAGE_SIZE / 2 || !s.cs.code || s.data.code {
        return Err(RunnerError::Setup(format!(
            "QEMU boot: entry {:#x} or the boot segments are not what the trampoline handles \
             (entry in the first GiB, above 1 MiB; a code and a data selector)",
            s.rip
        )));
    }
    let mut seg = vec![0u8; (BLOB as usize) + blob.len()];
    let put = |seg: &mut Vec<u8>, off: u64, data: &[u8]| {
        seg[off as usize..off as usize + data.len()].copy_from_slice(data);
    };
    put(&mut seg, 0, &c32);
    put(&mut seg, CODE64, &c64);
    let entries = usize::from(s.cs.selector.max(s.data.selector) / 8) + 1;
    let mut gdt = vec![0u64; entries];
    gdt[usize::from(s.cs.selector / 8)] = descriptor(true);
    gdt[usize::from(s.data.selector / 8)] = descriptor(false);
    let gdt: Vec<u8> = gdt.iter().flat_map(|d| d.to_le_bytes()).collect();
    put(&mut seg, GDT, &gdt);
    let limit = (gdt.len() - 1) as u16;
    put(&mut seg, GDTR, &limit.to_le_bytes());
    put(
        &mut seg,
        GDTR + 2,
        &((TRAMPOLINE_GPA + GDT) as u32).to_le_bytes(),
    );
    put(&mut seg, JUMP_SLOT, &hop.to_le_bytes());
    // Temporary tables: the trampoline identity mapped with 2 MiB pages, and the page(s)
    // holding `mov cr3, r15` at `hop` (a 4 KiB table under the entry's 2 MiB).
    let table = pte::P | pte::RW;
    let t = TRAMPOLINE_GPA;
    put(&mut seg, PML4, &((t + PDPT) | table).to_le_bytes());
    put(&mut seg, PDPT, &((t + PD) | table).to_le_bytes());
    let seg_end = t + seg.len() as u64;
    let mut big = t / LARGE_PAGE_SIZE;
    while big * LARGE_PAGE_SIZE < seg_end {
        let e = (big * LARGE_PAGE_SIZE) | table | pte::PS;
        put(&mut seg, PD + 8 * big, &e.to_le_bytes());
        big += 1;
    }
    let hop_pde = hop / LARGE_PAGE_SIZE;
    let end_pde = (s.rip - 1) / LARGE_PAGE_SIZE;
    if hop_pde != end_pde || hop_pde >= t / LARGE_PAGE_SIZE {
        return Err(RunnerError::Setup(format!(
            "QEMU boot: entry {:#x} straddles a 2 MiB boundary or the trampoline",
            s.rip
        )));
    }
    put(
        &mut seg,
        PD + 8 * hop_pde,
        &((t + PT) | table).to_le_bytes(),
    );
    let first = hop / PAGE_SIZE;
    for page in first..=(s.rip - 1) / PAGE_SIZE {
        let crafted = CRAFTED + (page - first) * PAGE_SIZE;
        put(
            &mut seg,
            PT + 8 * (page % 512),
            &((t + crafted) | table).to_le_bytes(),
        );
    }
    for (i, b) in switch.iter().enumerate() {
        let va = hop + i as u64;
        let crafted = CRAFTED + (va / PAGE_SIZE - first) * PAGE_SIZE;
        seg[(crafted + va % PAGE_SIZE) as usize] = *b;
    }
    put(&mut seg, BLOB, &blob);
    Ok(seg)
}

/// The ELF note type of a PVH entry point (Xen `public/elfnote.h`).
const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;

/// The PVH note: name "Xen", the 32-bit entry as a 64-bit value.
fn pvh_note(entry: u64) -> Vec<u8> {
    let mut n = Vec::new();
    n.extend_from_slice(&4u32.to_le_bytes());
    n.extend_from_slice(&8u32.to_le_bytes());
    n.extend_from_slice(&XEN_ELFNOTE_PHYS32_ENTRY.to_le_bytes());
    n.extend_from_slice(b"Xen\0");
    n.extend_from_slice(&entry.to_le_bytes());
    n
}

/// The boot file for guest RAM `ram` (from GPA 0) and the start state `s` of its one vCPU;
/// `Err` when the trampoline's segment would reach past guest-physical `limit`.
pub fn boot_file(ram: &[u8], s: &VcpuState, limit: u64) -> Result<Vec<u8>> {
    use object::elf;
    use object::write::elf::{FileHeader, ProgramHeader, Writer};
    let seg = segment(ram, s)?;
    if TRAMPOLINE_GPA + seg.len() as u64 > limit {
        return Err(RunnerError::Setup(format!(
            "the guest's {} KiB of non-zero pages and the trampoline do not fit below {limit:#x}",
            seg.len() / 1024
        )));
    }
    let note = pvh_note(TRAMPOLINE_GPA);
    let mut out = Vec::new();
    let mut w = Writer::new(object::Endianness::Little, true, &mut out);
    w.reserve_file_header();
    w.reserve_program_headers(2);
    let note_off = w.reserve(note.len(), 4);
    let seg_off = w.reserve(seg.len(), PAGE_SIZE as usize);
    w.write_file_header(&FileHeader {
        os_abi: elf::ELFOSABI_NONE,
        abi_version: 0,
        e_type: elf::ET_EXEC,
        e_machine: elf::EM_X86_64,
        e_entry: TRAMPOLINE_GPA,
        e_flags: 0,
    })
    .map_err(|e| RunnerError::Setup(format!("writing the QEMU boot file: {e}")))?;
    w.write_align_program_headers();
    w.write_program_header(&ProgramHeader {
        p_type: elf::PT_NOTE,
        p_flags: elf::PF_R,
        p_offset: note_off as u64,
        p_vaddr: 0,
        p_paddr: 0,
        p_filesz: note.len() as u64,
        p_memsz: 0,
        p_align: 4,
    });
    w.write_program_header(&ProgramHeader {
        p_type: elf::PT_LOAD,
        p_flags: elf::PF_R | elf::PF_W | elf::PF_X,
        p_offset: seg_off as u64,
        p_vaddr: TRAMPOLINE_GPA,
        p_paddr: TRAMPOLINE_GPA,
        p_filesz: seg.len() as u64,
        p_memsz: seg.len() as u64,
        p_align: PAGE_SIZE,
    });
    w.pad_until(note_off);
    w.write(&note);
    w.pad_until(seg_off);
    w.write(&seg);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vm::FlatSegment;

    fn state() -> VcpuState {
        crate::setup::initial_state(abi::layout::IMAGE_BASE, 1)
            .vcpus
            .remove(0)
    }

    #[test]
    fn runs_cover_exactly_the_non_zero_pages() {
        let mut ram = vec![0u8; 8 * PAGE_SIZE as usize];
        ram[PAGE_SIZE as usize + 5] = 1;
        ram[2 * PAGE_SIZE as usize] = 2;
        ram[6 * PAGE_SIZE as usize + 4095] = 3;
        let (runs, blob) = plan(&ram).expect("plan");
        assert_eq!(
            runs,
            vec![
                Run {
                    gpa: 0x1000,
                    src: BLOB,
                    len: 0x2000
                },
                Run {
                    gpa: 0x6000,
                    src: BLOB + 0x2000,
                    len: 0x1000
                },
            ]
        );
        assert_eq!(blob.len(), 0x3000);
        assert_eq!(blob[0x2fff], 3);
    }

    #[test]
    fn memory_in_the_legacy_hole_is_refused() {
        let mut ram = vec![0u8; HOLE_END as usize];
        ram[0xb_8000] = 1;
        let e = plan(&ram).expect_err("hole");
        assert!(e.to_string().contains("0xb8000"), "{e}");
    }

    #[test]
    fn the_file_has_a_pvh_note_and_one_segment_above_ram() {
        let mut ram = vec![0u8; RAM_SIZE as usize];
        ram[0x2000] = 0x42;
        let f = boot_file(&ram, &state(), u64::MAX).expect("file");
        let elf = goblin::elf::Elf::parse(&f).expect("parses");
        assert!(elf.is_64);
        let loads: Vec<_> = elf
            .program_headers
            .iter()
            .filter(|p| p.p_type == 1)
            .collect();
        assert_eq!(loads.len(), 1);
        assert_eq!(loads[0].p_paddr, TRAMPOLINE_GPA);
        let notes: Vec<_> = elf
            .iter_note_headers(&f)
            .expect("notes")
            .collect::<std::result::Result<_, _>>()
            .expect("note parses");
        assert_eq!(notes.len(), 1);
        assert_eq!(
            (notes[0].name, notes[0].n_type),
            ("Xen", XEN_ELFNOTE_PHYS32_ENTRY)
        );
        assert_eq!(notes[0].desc, TRAMPOLINE_GPA.to_le_bytes());
        // The copied page is in the blob.
        let off = loads[0].p_offset as usize;
        assert_eq!(f[off + BLOB as usize], 0x42);
    }

    #[test]
    fn the_hop_page_ends_in_mov_cr3_r15_and_the_jump_slot_points_at_it() {
        let s = state();
        let seg = segment(&vec![0u8; RAM_SIZE as usize], &s).expect("seg");
        let switch = switch_cr3().expect("asm");
        let hop = s.rip - switch.len() as u64;
        let slot = u64::from_le_bytes(seg[JUMP_SLOT as usize..][..8].try_into().expect("8"));
        assert_eq!(slot, hop);
        // IMAGE_BASE is page aligned: the instruction is the crafted page's last bytes.
        let page = &seg[CRAFTED as usize..(CRAFTED + PAGE_SIZE) as usize];
        assert_eq!(&page[page.len() - switch.len()..], &switch[..]);
        let pte = u64::from_le_bytes(
            seg[(PT + 8 * ((hop / PAGE_SIZE) % 512)) as usize..][..8]
                .try_into()
                .expect("8"),
        );
        assert_eq!(pte & !0xfff, TRAMPOLINE_GPA + CRAFTED);
    }

    #[test]
    fn a_guest_that_does_not_fit_below_the_limit_is_refused() {
        let mut ram = vec![0u8; RAM_SIZE as usize];
        ram[0x2000] = 1;
        let e = boot_file(&ram, &state(), TRAMPOLINE_GPA + BLOB).expect_err("too big");
        assert!(e.to_string().contains("do not fit"), "{e}");
    }

    #[test]
    fn an_entry_the_trampoline_cannot_reach_is_refused() {
        let mut s = state();
        s.rip = 1 << 40;
        assert!(segment(&[], &s).is_err());
        let mut s = state();
        s.cs = FlatSegment {
            selector: 0x10,
            code: false,
        };
        assert!(segment(&[], &s).is_err());
    }
}
