//! Trapped privileged instructions: what the host does when the guest's supervisor code
//! executes one in hardware ring 3 and the CPU raises #GP (notes §6: the KVM emulator runs it
//! with CPL0 semantics). The instruction is decoded with iced-x86; [`decode`] says what it is
//! and the engine carries it out (it owns the registers, memory and the exit handler).
//! [`faulting`] classifies an instruction that raised an exception, for what Unicorn does not
//! report (error codes, #SS for stack references).

use iced_x86::{
    Code, Decoder, DecoderOptions, Instruction, InstructionInfoFactory, Mnemonic, OpAccess, OpKind,
    Register,
};

/// A trapped instruction the host emulates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// The synthetic CPUID (`invlpg 0xffffffffff4d5650; cpuid`, 10 bytes).
    SyntheticCpuid,
    /// RDMSR.
    Rdmsr,
    /// WRMSR.
    Wrmsr,
    /// OUT of `size` bytes from AL/AX/EAX to `port` (None: DX).
    Out {
        /// Immediate port, or DX.
        port: Option<u16>,
        /// Bytes.
        size: usize,
    },
    /// IN of `size` bytes.
    In {
        /// Immediate port, or DX.
        port: Option<u16>,
        /// Bytes.
        size: usize,
    },
    /// OUTS of `size`-byte items (with REP when `rep`).
    Outs {
        /// Item size.
        size: usize,
        /// REP prefix.
        rep: bool,
    },
    /// INS.
    Ins {
        /// Item size.
        size: usize,
        /// REP prefix.
        rep: bool,
    },
    /// HLT.
    Hlt,
    /// CLI.
    Cli,
    /// STI.
    Sti,
    /// MOV to CRn from a register.
    MovToCr {
        /// CR number.
        cr: u8,
        /// Source register.
        reg: Register,
    },
    /// MOV from CRn to a register.
    MovFromCr {
        /// CR number.
        cr: u8,
        /// Destination register.
        reg: Register,
    },
    /// MOV to DRn from a register (stored, no breakpoint effect).
    MovToDr {
        /// DR number.
        dr: u8,
        /// Source register.
        reg: Register,
    },
    /// MOV from DRn to a register.
    MovFromDr {
        /// DR number.
        dr: u8,
        /// Destination register.
        reg: Register,
    },
    /// INVLPG.
    Invlpg,
    /// SWAPGS.
    Swapgs,
    /// CLTS: clears the stored CR0.TS.
    Clts,
    /// LGDT: the memory operand becomes the guest's GDTR, which the hardware never loads
    /// (it runs on the host's GDT); emulated descriptor loads read it (`pvm_set_gdt`).
    Lgdt,
    /// LTR of the selector in this register, or in the memory operand when `None`.
    Ltr {
        /// The source register.
        reg: Option<Register>,
    },
    /// LLDT of the selector in this register, or in the memory operand when `None`.
    Lldt {
        /// The source register.
        reg: Option<Register>,
    },
    /// Instructions the host stores or ignores (LIDT, WBINVD, INVD).
    Ignored,
}

/// The first instruction of `bytes` (code at `rip`), if it decodes.
fn decode_one(bytes: &[u8], rip: u64) -> Option<Instruction> {
    let insn = Decoder::with_ip(64, bytes, rip, DecoderOptions::NONE).decode();
    (!insn.is_invalid()).then_some(insn)
}

/// The register of a one-operand instruction whose operand is a register or memory (LTR,
/// LLDT); `None` for memory.
fn register_operand(insn: &Instruction) -> Option<Register> {
    (insn.op0_kind() == OpKind::Register).then(|| insn.op0_register())
}

/// The synthetic CPUID's bytes.
pub const SYNTHETIC_CPUID: [u8; 10] = abi::upstream::SYNTHETIC_CPUID;

/// What the bytes at RIP are, and the instruction's length; `None` for an instruction the host
/// does not emulate (the #GP is delivered to the guest).
pub fn decode(bytes: &[u8], rip: u64) -> Option<(Op, usize)> {
    if bytes.starts_with(&SYNTHETIC_CPUID) {
        return Some((Op::SyntheticCpuid, SYNTHETIC_CPUID.len()));
    }
    let insn = decode_one(bytes, rip)?;
    let len = insn.len();
    let size_of = |r: Register| r.size();
    let port = |i: &Instruction, op: u32| match i.op_kind(op) {
        OpKind::Immediate8 => Some(u16::from(i.immediate8())),
        _ => None,
    };
    let op = match insn.mnemonic() {
        Mnemonic::Rdmsr => Op::Rdmsr,
        Mnemonic::Wrmsr => Op::Wrmsr,
        Mnemonic::Out => Op::Out {
            port: port(&insn, 0),
            size: size_of(insn.op1_register()),
        },
        Mnemonic::In => Op::In {
            port: port(&insn, 1),
            size: size_of(insn.op0_register()),
        },
        Mnemonic::Outsb | Mnemonic::Outsw | Mnemonic::Outsd => Op::Outs {
            size: string_size(insn.code()),
            rep: insn.has_rep_prefix(),
        },
        Mnemonic::Insb | Mnemonic::Insw | Mnemonic::Insd => Op::Ins {
            size: string_size(insn.code()),
            rep: insn.has_rep_prefix(),
        },
        Mnemonic::Hlt => Op::Hlt,
        Mnemonic::Cli => Op::Cli,
        Mnemonic::Sti => Op::Sti,
        Mnemonic::Mov if insn.op0_register().is_cr() => Op::MovToCr {
            cr: cr_number(insn.op0_register())?,
            reg: insn.op1_register(),
        },
        Mnemonic::Mov if insn.op1_register().is_cr() => Op::MovFromCr {
            cr: cr_number(insn.op1_register())?,
            reg: insn.op0_register(),
        },
        Mnemonic::Mov if insn.op0_register().is_dr() => Op::MovToDr {
            dr: (insn.op0_register() as u32 - Register::DR0 as u32) as u8,
            reg: insn.op1_register(),
        },
        Mnemonic::Mov if insn.op1_register().is_dr() => Op::MovFromDr {
            dr: (insn.op1_register() as u32 - Register::DR0 as u32) as u8,
            reg: insn.op0_register(),
        },
        Mnemonic::Invlpg => Op::Invlpg,
        Mnemonic::Swapgs => Op::Swapgs,
        Mnemonic::Lgdt => Op::Lgdt,
        Mnemonic::Ltr => Op::Ltr {
            reg: register_operand(&insn),
        },
        Mnemonic::Lldt => Op::Lldt {
            reg: register_operand(&insn),
        },
        Mnemonic::Lidt | Mnemonic::Wbinvd | Mnemonic::Invd => Op::Ignored,
        Mnemonic::Clts => Op::Clts,
        _ => return None,
    };
    Some((op, len))
}

/// Where the selector a segment-register load loads comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SelectorAt {
    /// In a register: the value.
    Value(u16),
    /// In memory at this linear address.
    Memory(u64),
}

/// What a faulting instruction tells about its exception, beyond the vector Unicorn reports
/// (Unicorn reports no error code and raises #GP for every non-canonical address).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Faulting {
    /// A segment-register load (MOV Sreg, POP Sreg, LSS/LFS/LGS): a descriptor fault's error
    /// code is the selector with the RPL cleared (SDM Vol. 3A 6.13, "Error Code").
    SegmentLoad(SelectorAt),
    /// A memory reference through SS (an RSP/RBP base or a stack instruction): a
    /// non-canonical address is #SS(0), not #GP(0) (SDM Vol. 3A 6.15, interrupt 12).
    StackReference,
    /// Anything else.
    Other,
}

/// Classifies the instruction at `bytes` (at `rip`), reading registers with `reg` (general
/// registers by their full name; FS and GS for their bases, the other segments base 0).
pub fn faulting(bytes: &[u8], rip: u64, reg: impl Fn(Register) -> u64) -> Faulting {
    let Some(insn) = decode_one(bytes, rip) else {
        return Faulting::Other;
    };
    let value = |r: Register| address_register(&reg, r);
    let address = |op: u32| insn.virtual_address(op, 0, |r, _, _| Some(value(r)));
    let memory_operand = (0..insn.op_count()).find(|&i| insn.op_kind(i) == OpKind::Memory);
    match insn.mnemonic() {
        Mnemonic::Mov if insn.op0_register().is_segment_register() => {
            return Faulting::SegmentLoad(match insn.op1_kind() {
                OpKind::Register => SelectorAt::Value(value(insn.op1_register()) as u16),
                _ => match address(1) {
                    Some(a) => SelectorAt::Memory(a),
                    None => return Faulting::Other,
                },
            });
        }
        Mnemonic::Pop if insn.op0_register().is_segment_register() => {
            return Faulting::SegmentLoad(SelectorAt::Memory(value(Register::RSP)));
        }
        // The far pointer: the offset (the destination register's size), then the selector.
        Mnemonic::Lss | Mnemonic::Lfs | Mnemonic::Lgs => {
            return match address(1) {
                Some(a) => Faulting::SegmentLoad(SelectorAt::Memory(
                    a.wrapping_add(insn.op0_register().size() as u64),
                )),
                None => Faulting::Other,
            };
        }
        _ => {}
    }
    let through_ss = memory_operand.is_some() && insn.memory_segment() == Register::SS;
    if through_ss || insn.is_stack_instruction() {
        Faulting::StackReference
    } else {
        Faulting::Other
    }
}

/// The linear address of the first explicit memory operand of the instruction at `bytes` (at
/// `rip`), with registers read as for [`faulting`].
pub fn memory_address(bytes: &[u8], rip: u64, reg: impl Fn(Register) -> u64) -> Option<u64> {
    let insn = decode_one(bytes, rip)?;
    let op = (0..insn.op_count()).find(|&i| insn.op_kind(i) == OpKind::Memory)?;
    insn.virtual_address(op, 0, |r, _, _| Some(address_register(&reg, r)))
}

/// A register as an address computation reads it: ES, CS, SS and DS have base 0 in 64-bit
/// mode; FS and GS (their bases) and general registers (by their full name) come from `reg`.
fn address_register(reg: &impl Fn(Register) -> u64, r: Register) -> u64 {
    match r {
        Register::ES | Register::CS | Register::SS | Register::DS => 0,
        _ => reg(r.full_register()),
    }
}

/// What the engine looks for in a translation block before it runs (`bytes`, code at `rip`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlockScan {
    /// The first port-I/O instruction (IN, OUT, INS, OUTS, with or without REP). Unicorn runs
    /// port I/O without the IOPL check and reports it only from inside the instruction, after
    /// which the rest of the block runs too; in user mode the engine stops there instead, so
    /// that the #GP comes before the instruction, as the hardware raises it.
    pub port_io: Option<u64>,
    /// The first instruction that may turn on a check the engine makes one instruction at a
    /// time ([`turns_on_checks`]): from there the engine single-steps.
    pub check_switch: Option<u64>,
}

/// Scans the instructions in `bytes` (code at `rip`) for [`BlockScan`]'s two kinds, up to an
/// instruction that does not decode.
pub fn scan_block(bytes: &[u8], rip: u64) -> BlockScan {
    let mut d = Decoder::with_ip(64, bytes, rip, DecoderOptions::NONE);
    let mut insn = Instruction::default();
    let mut scan = BlockScan::default();
    while d.can_decode() && (scan.port_io.is_none() || scan.check_switch.is_none()) {
        d.decode_out(&mut insn);
        if insn.is_invalid() {
            break;
        }
        let port_io = matches!(
            insn.mnemonic(),
            Mnemonic::In
                | Mnemonic::Out
                | Mnemonic::Insb
                | Mnemonic::Insw
                | Mnemonic::Insd
                | Mnemonic::Outsb
                | Mnemonic::Outsw
                | Mnemonic::Outsd
        );
        if port_io && scan.port_io.is_none() {
            scan.port_io = Some(insn.ip());
        }
        if turns_on_checks(insn.mnemonic()) && scan.check_switch.is_none() {
            scan.check_switch = Some(insn.ip());
        }
    }
    scan
}

/// Whether an instruction may set RFLAGS.AC (alignment checks: every guest access is at
/// hardware CPL 3, and the host's CR0.AM is set) or unmask an MXCSR exception (#XM). QEMU's
/// TCG, under Unicorn, makes neither check, so the engine makes them before each instruction
/// while they can apply, stepping one instruction at a time (`engine::needs_steps`). POPF
/// and IRET load RFLAGS; LDMXCSR, FXRSTOR and XRSTOR load MXCSR. (The host loads RFLAGS and
/// MXCSR itself at every event and ERETU/ERETS, and looks at them then.)
pub fn turns_on_checks(m: Mnemonic) -> bool {
    matches!(
        m,
        Mnemonic::Popf
            | Mnemonic::Popfq
            | Mnemonic::Iret
            | Mnemonic::Iretd
            | Mnemonic::Iretq
            | Mnemonic::Ldmxcsr
            | Mnemonic::Vldmxcsr
            | Mnemonic::Fxrstor
            | Mnemonic::Fxrstor64
            | Mnemonic::Xrstor
            | Mnemonic::Xrstor64
            | Mnemonic::Xrstors
            | Mnemonic::Xrstors64
    )
}

/// A data access an alignment check faults on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Misaligned {
    /// Its linear address.
    pub addr: u64,
    /// Its size in bytes.
    pub size: u64,
    /// A write (else a read).
    pub write: bool,
}

/// The first data access of the instruction at `bytes` (at `rip`) that an alignment check
/// faults on (#AC(0): CPL 3, CR0.AM and RFLAGS.AC; SDM Vol. 3A 6.15, interrupt 17, table
/// 6-7), with registers read as for [`faulting`]. Checked: 2-, 4- and 8-byte accesses at their
/// size, 10-byte x87 values at 8, explicit operands and the implicit stack and string
/// accesses alike. Not checked: 16-byte and wider SSE accesses, which the SDM leaves to the
/// instruction (#GP for the aligned forms, no check for most others).
pub fn misaligned_access(
    bytes: &[u8],
    rip: u64,
    reg: impl Fn(Register) -> u64,
) -> Option<Misaligned> {
    let insn = decode_one(bytes, rip)?;
    let mut factory = InstructionInfoFactory::new();
    let info = factory.info(&insn);
    info.used_memory().iter().find_map(|m| {
        let write = match m.access() {
            OpAccess::Read | OpAccess::CondRead => false,
            OpAccess::Write
            | OpAccess::CondWrite
            | OpAccess::ReadWrite
            | OpAccess::ReadCondWrite => true,
            _ => return None,
        };
        let size = m.memory_size().size() as u64;
        let align: u64 = match size {
            2 => 2,
            4 => 4,
            8 | 10 => 8,
            _ => return None,
        };
        let addr = m.virtual_address(0, |r, _, _| Some(address_register(&reg, r)))?;
        (addr % align != 0).then_some(Misaligned { addr, size, write })
    })
}

/// Where an SSE instruction [`crate::simd`] replays takes its source from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SimdSource {
    /// XMM register n.
    Xmm(usize),
    /// Memory at this linear address ([`crate::simd::Op::source_size`] bytes).
    Memory(u64),
}

/// An SSE instruction [`crate::simd::raised`] can replay.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SimdInsn {
    /// The operation.
    pub op: crate::simd::Op,
    /// The destination (first) operand: XMM register n.
    pub dst: usize,
    /// The source.
    pub src: SimdSource,
}

/// The instruction at `bytes` (at `rip`) as a [`SimdInsn`], if it is one (the two-operand
/// legacy SSE forms), with registers read as for [`faulting`].
pub fn simd_insn(bytes: &[u8], rip: u64, reg: impl Fn(Register) -> u64) -> Option<SimdInsn> {
    let insn = decode_one(bytes, rip)?;
    let op = crate::simd::op(insn.mnemonic())?;
    if insn.op_count() != 2 || insn.op0_kind() != OpKind::Register {
        return None;
    }
    let xmm = |r: Register| r.is_xmm().then(|| r.number());
    let dst = xmm(insn.op0_register())?;
    let src = match insn.op1_kind() {
        OpKind::Register => SimdSource::Xmm(xmm(insn.op1_register())?),
        OpKind::Memory => SimdSource::Memory(
            insn.virtual_address(1, 0, |r, _, _| Some(address_register(&reg, r)))?,
        ),
        _ => return None,
    };
    Some(SimdInsn { op, dst, src })
}

/// The length of the instruction at `bytes` (at `rip`), if it decodes.
pub fn length(bytes: &[u8], rip: u64) -> Option<usize> {
    decode_one(bytes, rip).map(|insn| insn.len())
}

/// Whether the bytes are RDPMC (`0f 33`).
pub fn is_rdpmc(bytes: &[u8]) -> bool {
    bytes.starts_with(&[0x0f, 0x33])
}

fn string_size(code: Code) -> usize {
    match code {
        Code::Outsb_DX_m8 | Code::Insb_m8_DX => 1,
        Code::Outsw_DX_m16 | Code::Insw_m16_DX => 2,
        _ => 4,
    }
}

fn cr_number(r: Register) -> Option<u8> {
    Some(match r {
        Register::CR0 => 0,
        Register::CR2 => 2,
        Register::CR3 => 3,
        Register::CR4 => 4,
        Register::CR8 => 8,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_block_scan_finds_the_first_port_io_and_check_switch() {
        let port_io = |b: &[u8], rip| scan_block(b, rip).port_io;
        // mov eax, 1; nop; in al, dx; ret
        let block = [0xb8, 1, 0, 0, 0, 0x90, 0xec, 0xc3];
        assert_eq!(port_io(&block, 0x1000), Some(0x1006));
        // rep outsb first
        assert_eq!(port_io(&[0xf3, 0x6e], 0x2000), Some(0x2000));
        // mov eax, 1; ret
        assert_eq!(
            scan_block(&[0xb8, 1, 0, 0, 0, 0xc3], 0),
            BlockScan::default()
        );
        // nop; popfq; ldmxcsr (%rax): the POPF
        let block = [0x90, 0x9d, 0x0f, 0xae, 0x10];
        assert_eq!(scan_block(&block, 0x10).check_switch, Some(0x11));
        // xor eax, eax; ldmxcsr (%rax); out %al, $0x80
        let block = [0x31, 0xc0, 0x0f, 0xae, 0x10, 0xe6, 0x80];
        assert_eq!(
            scan_block(&block, 0),
            BlockScan {
                port_io: Some(5),
                check_switch: Some(2)
            }
        );
    }

    #[test]
    fn misaligned_accesses_are_found_at_their_size() {
        let reg = |r: Register| match r {
            Register::RAX => 0x1000,
            Register::RSP => 0x8008,
            Register::FS => 0x7000_0001,
            _ => 0,
        };
        // mov 1(%rax), %rdi: 8 bytes at 0x1001
        let at = |b: &[u8]| misaligned_access(b, 0, reg).map(|m| m.addr);
        assert_eq!(
            misaligned_access(&[0x48, 0x8b, 0x78, 0x01], 0, reg),
            Some(Misaligned {
                addr: 0x1001,
                size: 8,
                write: false
            })
        );
        // mov 8(%rax), %rdi; movb 1(%rax), %dil (one byte is never misaligned)
        assert_eq!(at(&[0x48, 0x8b, 0x78, 0x08]), None);
        assert_eq!(at(&[0x40, 0x8a, 0x78, 0x01]), None);
        // mov 2(%rax), %edi: 4 bytes at 0x1002
        assert_eq!(at(&[0x8b, 0x78, 0x02]), Some(0x1002));
        // push %rax with RSP 8-aligned: the store at 0x8000 is aligned
        assert_eq!(at(&[0x50]), None);
        // mov %edi, 3(%rax): a write
        assert!(misaligned_access(&[0x89, 0x78, 0x03], 0, reg).is_some_and(|m| m.write));
        // mov %fs:0, %eax: FS's base makes it misaligned
        assert_eq!(at(&[0x64, 0x8b, 0x04, 0x25, 0, 0, 0, 0]), Some(0x7000_0001));
        // lea 1(%rax), %rdi accesses no memory
        assert_eq!(at(&[0x48, 0x8d, 0x78, 0x01]), None);
    }

    #[test]
    fn sse_arithmetic_names_its_operands() {
        let reg = |r: Register| if r == Register::RAX { 0x2000 } else { 0 };
        // divss %xmm1, %xmm0
        let i = simd_insn(&[0xf3, 0x0f, 0x5e, 0xc1], 0, reg).expect("divss");
        assert_eq!((i.dst, i.src), (0, SimdSource::Xmm(1)));
        // divsd 8(%rax), %xmm2
        let i = simd_insn(&[0xf2, 0x0f, 0x5e, 0x50, 0x08], 0, reg).expect("divsd");
        assert_eq!(
            (i.dst, i.src, i.op.source_size),
            (2, SimdSource::Memory(0x2008), 8)
        );
        // movss %xmm1, %xmm0 raises nothing: not replayed
        assert_eq!(simd_insn(&[0xf3, 0x0f, 0x10, 0xc1], 0, reg), None);
        assert_eq!(length(&[0xf3, 0x0f, 0x5e, 0xc1], 0), Some(4));
    }

    #[test]
    fn the_privileged_forms_the_guest_uses_decode() {
        assert_eq!(decode(&SYNTHETIC_CPUID, 0), Some((Op::SyntheticCpuid, 10)));
        assert_eq!(decode(&[0x0f, 0x32], 0), Some((Op::Rdmsr, 2)));
        assert_eq!(
            decode(&[0xe6, 0x80], 0),
            Some((
                Op::Out {
                    port: Some(0x80),
                    size: 1
                },
                2
            ))
        );
        assert_eq!(
            decode(&[0xef], 0),
            Some((
                Op::Out {
                    port: None,
                    size: 4
                },
                1
            ))
        );
        assert_eq!(
            decode(&[0x66, 0xed], 0),
            Some((
                Op::In {
                    port: None,
                    size: 2
                },
                2
            ))
        );
        assert_eq!(
            decode(&[0xf3, 0x6e], 0),
            Some((Op::Outs { size: 1, rep: true }, 2))
        );
        assert_eq!(
            decode(&[0x0f, 0x22, 0xd8], 0),
            Some((
                Op::MovToCr {
                    cr: 3,
                    reg: Register::RAX
                },
                3
            ))
        );
        assert_eq!(decode(&[0xf4], 0), Some((Op::Hlt, 1)));
        assert_eq!(decode(&[0x0f, 0x0b], 0), None, "ud2 is not emulated");
    }

    #[test]
    fn faulting_instructions_name_their_selector_or_stack_use() {
        let reg = |r: Register| match r {
            Register::RAX => 0x1218,
            Register::RBX => 0x4000,
            Register::RSP => 0x8000,
            Register::RBP => 0x8000_0000_0000_0000,
            _ => 0,
        };
        // mov %ax,%ds
        assert_eq!(
            faulting(&[0x8e, 0xd8], 0, reg),
            Faulting::SegmentLoad(SelectorAt::Value(0x1218))
        );
        // mov (%rbx),%es
        assert_eq!(
            faulting(&[0x8e, 0x03], 0, reg),
            Faulting::SegmentLoad(SelectorAt::Memory(0x4000))
        );
        // pop %fs
        assert_eq!(
            faulting(&[0x0f, 0xa1], 0, reg),
            Faulting::SegmentLoad(SelectorAt::Memory(0x8000))
        );
        // lss (%rbx),%rax: 8-byte offset, then the selector
        assert_eq!(
            faulting(&[0x48, 0x0f, 0xb2, 0x03], 0, reg),
            Faulting::SegmentLoad(SelectorAt::Memory(0x4008))
        );
        // mov (%rbp),%rax; push %rax
        assert_eq!(
            faulting(&[0x48, 0x8b, 0x45, 0x00], 0, reg),
            Faulting::StackReference
        );
        assert_eq!(faulting(&[0x50], 0, reg), Faulting::StackReference);
        // mov (%rbx),%rax
        assert_eq!(faulting(&[0x48, 0x8b, 0x03], 0, reg), Faulting::Other);
    }
}
