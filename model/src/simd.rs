//! SIMD floating-point exceptions (#XM), which Unicorn does not raise: QEMU's TCG under it
//! (the QEMU 5.0 base) keeps SSE exception flags in its softfloat status only, so neither
//! MXCSR's flags nor an unmasked exception ever show. On the host the guest runs on real
//! hardware, whose CR4.OSXMMEXCPT is the host's (set by Linux; notes §6: the guest's CR4 is
//! stored, not loaded), so an unmasked SIMD exception is #XM whatever the guest's CR4 says.
//!
//! While MXCSR unmasks an exception, the engine asks [`raised`] before each SSE arithmetic
//! instruction: the operation is replayed on this machine's own CPU with the same operands
//! and the guest's rounding, FTZ and DAZ, every exception masked, and the flags it raises are
//! read back. One that the guest's MXCSR leaves unmasked is #XM at the instruction, which
//! then does not run (SDM Vol. 1 11.5.1: the destination is not changed; the flags are set).
//! Covered: ADD, SUB, MUL, DIV, MIN, MAX and SQRT in their SS/SD/PS/PD forms, COMISS/COMISD,
//! UCOMISS/UCOMISD and the CVTSS2SD/CVTSD2SS/CVTPS2PD/CVTPD2PS conversions, with a register
//! or memory source (the legacy SSE encodings: the model offers no AVX). Others (CVT* to an
//! integer register, CMPcc, DPPS, ROUND*, the horizontal ops) run without the check.
//!
//! Hand-written: no crate replays x86 SSE operations with their exception flags; the CPU the
//! model runs on is the reference (an x86-64 host: SSE2 is baseline).

use core::arch::asm;
use core::arch::x86_64::__m128i;

use iced_x86::Mnemonic;

/// One replayable operation: the mnemonic's legacy SSE form, and its memory operand's size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Op {
    mnemonic: Mnemonic,
    /// Bytes a memory source holds (4 or 8 for scalar and half-width forms, else 16).
    pub source_size: usize,
}

/// The operations [`raised`] replays, with their memory source sizes.
const OPS: [(Mnemonic, usize); 36] = {
    use Mnemonic::*;
    [
        (Addss, 4),
        (Addsd, 8),
        (Addps, 16),
        (Addpd, 16),
        (Subss, 4),
        (Subsd, 8),
        (Subps, 16),
        (Subpd, 16),
        (Mulss, 4),
        (Mulsd, 8),
        (Mulps, 16),
        (Mulpd, 16),
        (Divss, 4),
        (Divsd, 8),
        (Divps, 16),
        (Divpd, 16),
        (Minss, 4),
        (Minsd, 8),
        (Minps, 16),
        (Minpd, 16),
        (Maxss, 4),
        (Maxsd, 8),
        (Maxps, 16),
        (Maxpd, 16),
        (Sqrtss, 4),
        (Sqrtsd, 8),
        (Sqrtps, 16),
        (Sqrtpd, 16),
        (Comiss, 4),
        (Comisd, 8),
        (Ucomiss, 4),
        (Ucomisd, 8),
        (Cvtss2sd, 4),
        (Cvtsd2ss, 8),
        (Cvtps2pd, 8),
        (Cvtpd2ps, 16),
    ]
};

/// The replayable operation of `m`, if it is one.
pub fn op(m: Mnemonic) -> Option<Op> {
    OPS.iter()
        .find(|(n, _)| *n == m)
        .map(|&(mnemonic, source_size)| Op {
            mnemonic,
            source_size,
        })
}

/// `x` as an SSE register value.
fn m128(x: u128) -> __m128i {
    // SAFETY: u128 and __m128i are both 16 plain bytes; every bit pattern is valid for both.
    unsafe { core::mem::transmute::<u128, __m128i>(x) }
}

/// Runs `insn dst, src` on this CPU under MXCSR `control` (exceptions masked, flags clear)
/// and evaluates to the exception flags it raised. The thread's own MXCSR is saved and
/// restored inside the same asm block.
macro_rules! replay {
    ($insn:literal, $dst:expr, $src:expr, $control:expr) => {{
        let control: u32 = $control;
        let mut saved: u32 = 0;
        let mut after: u32 = 0;
        let (d, s) = (m128($dst), m128($src));
        // SAFETY: the block reads and writes only its operands and the three u32s named
        // (by pointer, alive for the block), and leaves MXCSR as it found it; the SSE
        // operation touches only the two XMM registers allocated for `d` and `s` (and RFLAGS
        // for the COMIS forms, which asm blocks may clobber).
        unsafe {
            asm!(
                "stmxcsr dword ptr [{saved}]",
                "ldmxcsr dword ptr [{control}]",
                concat!($insn, " {d}, {s}"),
                "stmxcsr dword ptr [{after}]",
                "ldmxcsr dword ptr [{saved}]",
                saved = in(reg) &raw mut saved,
                control = in(reg) &raw const control,
                after = in(reg) &raw mut after,
                d = inout(xmm_reg) d => _,
                s = in(xmm_reg) s,
                options(nostack),
            );
        }
        after & abi::x86::mxcsr::FLAGS
    }};
}

/// The MXCSR exception flags `op` raises on `dst` (the destination register's value) and
/// `src` (the source register, or the memory operand in the low bytes), under the rounding,
/// FTZ and DAZ of `mxcsr`.
pub fn raised(op: Op, dst: u128, src: u128, mxcsr: u32) -> u32 {
    use abi::x86::mxcsr;
    // Every exception masked, no flags: the replay raises flags and never traps.
    let control = (mxcsr | mxcsr::FLAGS << mxcsr::MASK_SHIFT) & !mxcsr::FLAGS;
    use Mnemonic::*;
    match op.mnemonic {
        Addss => replay!("addss", dst, src, control),
        Addsd => replay!("addsd", dst, src, control),
        Addps => replay!("addps", dst, src, control),
        Addpd => replay!("addpd", dst, src, control),
        Subss => replay!("subss", dst, src, control),
        Subsd => replay!("subsd", dst, src, control),
        Subps => replay!("subps", dst, src, control),
        Subpd => replay!("subpd", dst, src, control),
        Mulss => replay!("mulss", dst, src, control),
        Mulsd => replay!("mulsd", dst, src, control),
        Mulps => replay!("mulps", dst, src, control),
        Mulpd => replay!("mulpd", dst, src, control),
        Divss => replay!("divss", dst, src, control),
        Divsd => replay!("divsd", dst, src, control),
        Divps => replay!("divps", dst, src, control),
        Divpd => replay!("divpd", dst, src, control),
        Minss => replay!("minss", dst, src, control),
        Minsd => replay!("minsd", dst, src, control),
        Minps => replay!("minps", dst, src, control),
        Minpd => replay!("minpd", dst, src, control),
        Maxss => replay!("maxss", dst, src, control),
        Maxsd => replay!("maxsd", dst, src, control),
        Maxps => replay!("maxps", dst, src, control),
        Maxpd => replay!("maxpd", dst, src, control),
        Sqrtss => replay!("sqrtss", dst, src, control),
        Sqrtsd => replay!("sqrtsd", dst, src, control),
        Sqrtps => replay!("sqrtps", dst, src, control),
        Sqrtpd => replay!("sqrtpd", dst, src, control),
        Comiss => replay!("comiss", dst, src, control),
        Comisd => replay!("comisd", dst, src, control),
        Ucomiss => replay!("ucomiss", dst, src, control),
        Ucomisd => replay!("ucomisd", dst, src, control),
        Cvtss2sd => replay!("cvtss2sd", dst, src, control),
        Cvtsd2ss => replay!("cvtsd2ss", dst, src, control),
        Cvtps2pd => replay!("cvtps2pd", dst, src, control),
        Cvtpd2ps => replay!("cvtpd2ps", dst, src, control),
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use abi::x86::mxcsr;

    const ZE: u32 = 1 << 2;
    const IE: u32 = 1 << 0;
    const PE: u32 = 1 << 5;

    fn f32s(a: f32) -> u128 {
        u128::from(a.to_bits())
    }

    #[test]
    fn the_replay_sees_the_flags_of_each_operation() {
        let div = op(Mnemonic::Divss).expect("divss");
        assert_eq!(div.source_size, 4);
        assert_eq!(raised(div, f32s(1.0), f32s(0.0), mxcsr::DEFAULT), ZE);
        assert_eq!(raised(div, f32s(0.0), f32s(0.0), mxcsr::DEFAULT), IE);
        assert_eq!(raised(div, f32s(1.0), f32s(3.0), mxcsr::DEFAULT), PE);
        assert_eq!(raised(div, f32s(1.0), f32s(2.0), mxcsr::DEFAULT), 0);
        let sqrt = op(Mnemonic::Sqrtsd).expect("sqrtsd");
        assert_eq!(
            raised(sqrt, 0, u128::from((-1.0f64).to_bits()), mxcsr::DEFAULT),
            IE
        );
        assert_eq!(op(Mnemonic::Cvttss2si), None);
    }

    #[test]
    fn an_unmasked_guest_mxcsr_does_not_trap_the_replay() {
        // ZM clear: the replay runs masked anyway and reports ZE.
        let div = op(Mnemonic::Divsd).expect("divsd");
        let one = u128::from(1.0f64.to_bits());
        assert_eq!(raised(div, one, 0, mxcsr::DEFAULT & !mxcsr::ZM), ZE);
        assert_eq!(mxcsr::unmasked(mxcsr::DEFAULT & !mxcsr::ZM, ZE), ZE);
        assert_eq!(mxcsr::unmasked(mxcsr::DEFAULT, ZE), 0);
    }
}
