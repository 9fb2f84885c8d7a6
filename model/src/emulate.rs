//! Trapped privileged instructions: what the host does when the guest's supervisor code
//! executes one in hardware ring 3 and the CPU raises #GP (notes §6: the KVM emulator runs it
//! with CPL0 semantics). The instruction is decoded with iced-x86; [`decode`] says what it is
//! and the engine carries it out (it owns the registers, memory and the exit handler).
//! [`faulting`] classifies an instruction that raised an exception, for what Unicorn does not
//! report (error codes, #SS for stack references).

use iced_x86::{Code, Decoder, DecoderOptions, Instruction, Mnemonic, OpKind, Register};

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
    /// Instructions the host stores or ignores (LGDT, LIDT, LTR, LLDT, WBINVD, INVD).
    Ignored,
}

/// The synthetic CPUID's bytes.
pub const SYNTHETIC_CPUID: [u8; 10] = abi::upstream::SYNTHETIC_CPUID;

/// What the bytes at RIP are, and the instruction's length; `None` for an instruction the host
/// does not emulate (the #GP is delivered to the guest).
pub fn decode(bytes: &[u8], rip: u64) -> Option<(Op, usize)> {
    if bytes.starts_with(&SYNTHETIC_CPUID) {
        return Some((Op::SyntheticCpuid, SYNTHETIC_CPUID.len()));
    }
    let mut d = Decoder::with_ip(64, bytes, rip, DecoderOptions::NONE);
    let insn: Instruction = d.decode();
    if insn.is_invalid() {
        return None;
    }
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
        Mnemonic::Lgdt
        | Mnemonic::Lidt
        | Mnemonic::Ltr
        | Mnemonic::Lldt
        | Mnemonic::Wbinvd
        | Mnemonic::Invd => Op::Ignored,
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
    let mut d = Decoder::with_ip(64, bytes, rip, DecoderOptions::NONE);
    let insn: Instruction = d.decode();
    if insn.is_invalid() {
        return Faulting::Other;
    }
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
    let mut d = Decoder::with_ip(64, bytes, rip, DecoderOptions::NONE);
    let insn: Instruction = d.decode();
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

/// The address of the first port-I/O instruction (IN, OUT, INS, OUTS, with or without REP)
/// among the instructions in `bytes` (code at `rip`), if any. Unicorn runs port I/O without
/// the IOPL check and only reports it from inside the instruction, after which the rest of the
/// translation block runs too; the engine looks for one at the start of each user-mode block
/// so that the #GP comes before the instruction, as the hardware raises it.
pub fn first_port_io(bytes: &[u8], rip: u64) -> Option<u64> {
    let mut d = Decoder::with_ip(64, bytes, rip, DecoderOptions::NONE);
    let mut insn = Instruction::default();
    while d.can_decode() {
        d.decode_out(&mut insn);
        if insn.is_invalid() {
            return None;
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
        if port_io {
            return Some(insn.ip());
        }
    }
    None
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
    fn the_first_port_io_of_a_block_is_found() {
        // mov eax, 1; nop; in al, dx; ret
        let block = [0xb8, 1, 0, 0, 0, 0x90, 0xec, 0xc3];
        assert_eq!(first_port_io(&block, 0x1000), Some(0x1006));
        // rep outsb first
        assert_eq!(first_port_io(&[0xf3, 0x6e], 0x2000), Some(0x2000));
        // mov eax, 1; ret
        assert_eq!(first_port_io(&[0xb8, 1, 0, 0, 0, 0xc3], 0), None);
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
