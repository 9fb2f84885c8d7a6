//! Instruction-class probes for the CPU cases: each function runs one class of instructions a
//! kernel uses (string ops, atomics, bit ops, 128-bit arithmetic, SSE, XSAVE, fences, flags,
//! CRC32, RDRAND, segment queries) on local data and folds the results into one value; each
//! `*_RESULT` constant is the architectural answer, computed by the compiler (in const
//! evaluation on the build host, not by the instructions under test).
//!
//! A host that executes guest kernel code in an emulator (the local host's emulated CPL0)
//! either gets these right, or fails to emulate them, which the suite reports.

use core::arch::asm;

use abi::layout::sel::{KERNEL_CS, KERNEL_DS};
use abi::x86::cr4;

use crate::exception::Exception;
use crate::paging::Frame;

/// What [`string_ops`] returns: sum of the copied bytes, sum of the stored bytes, RCX after
/// REPE CMPSB and after REPNE SCASB, the byte LODSB loaded.
pub const STRING_OPS_RESULT: u64 = {
    let copied = 15 * 16 / 2; // 0 + 1 + ... + 15
    let stored = 8 * 0xab;
    copied | (stored << 16) | (8 << 40) | (5 << 48)
};

/// REP MOVSB, REP STOSB, REPE CMPSB, REPNE SCASB and LODSB on local buffers.
pub fn string_ops() -> u64 {
    let src: [u8; 16] = core::array::from_fn(|i| i as u8);
    let mut dst = [0u8; 16];
    let mut stos = [0u8; 8];
    let cmps_left: u64;
    let scas_left: u64;
    let lods: u64;
    // SAFETY: every string instruction stays inside the local arrays: MOVSB copies 16 bytes
    // from `src` into `dst`, STOSB stores 8 into `stos`, CMPSB/SCASB/LODSB only read `src` and
    // `dst` within their 16 bytes (RCX bounds them). DF is clear (ABI) and left clear.
    unsafe {
        asm!("rep movsb", inout("rsi") src.as_ptr() => _, inout("rdi") dst.as_mut_ptr() => _,
             inout("rcx") 16usize => _, options(att_syntax, nostack));
        asm!("rep stosb", in("al") 0xabu8, inout("rdi") stos.as_mut_ptr() => _,
             inout("rcx") 8usize => _, options(att_syntax, nostack));
        asm!("repe cmpsb", inout("rsi") src.as_ptr() => _, inout("rdi") dst.as_ptr() => _,
             inout("rcx") 16u64 => cmps_left, options(att_syntax, nostack, readonly));
        asm!("repne scasb", in("al") 7u8, inout("rdi") src.as_ptr() => _,
             inout("rcx") 16u64 => scas_left, options(att_syntax, nostack, readonly));
        asm!("lodsb", "movzbq %al, {out}", inout("rsi") src.as_ptr().add(5) => _, out("al") _,
             out = out(reg) lods, options(att_syntax, nostack, readonly));
    }
    let copied: u64 = dst.iter().map(|&b| u64::from(b)).sum();
    let stored: u64 = stos.iter().map(|&b| u64::from(b)).sum();
    copied | (stored << 16) | (cmps_left << 32) | (scas_left << 40) | (lods << 48)
}

/// What [`atomics`] returns: the final value, XADD's and XCHG's old values, the 16-byte pair
/// after CMPXCHG16B and its ZF.
pub const ATOMICS_RESULT: u64 = 99 | (20 << 8) | (26 << 16) | (3 << 24) | (4 << 32) | (1 << 40);

/// A 16-byte aligned pair for CMPXCHG16B.
#[repr(C, align(16))]
struct Pair([u64; 2]);

/// LOCK CMPXCHG, LOCK XADD, LOCK INC, XCHG and LOCK CMPXCHG16B on local memory.
pub fn atomics() -> u64 {
    let mut x: u64 = 10;
    let xadd_old: u64;
    let xchg_old: u64;
    let mut pair = Pair([1, 2]);
    let zf: u8;
    let px: *mut u64 = &mut x;
    let pp: *mut Pair = &mut pair;
    // SAFETY: the memory operands are the locals `x` and `pair` (through pointers taken from
    // unique references that stay live); RBX, which LLVM reserves, is swapped out and back
    // around CMPXCHG16B.
    unsafe {
        asm!("lock cmpxchgq {new}, ({p})", p = in(reg) px, new = in(reg) 20u64,
             inout("rax") 10u64 => _, options(att_syntax, nostack));
        asm!("lock xaddq {r}, ({p})", p = in(reg) px, r = inout(reg) 5u64 => xadd_old,
             options(att_syntax, nostack));
        asm!("lock incq ({p})", p = in(reg) px, options(att_syntax, nostack));
        asm!("xchgq {r}, ({p})", p = in(reg) px, r = inout(reg) 99u64 => xchg_old,
             options(att_syntax, nostack));
        asm!("xchgq {lo}, %rbx", "lock cmpxchg16b ({p})", "sete {zf}", "xchgq {lo}, %rbx",
             p = in(reg) pp, lo = inout(reg) 3u64 => _, zf = out(reg_byte) zf,
             inout("rax") 1u64 => _, inout("rdx") 2u64 => _, in("rcx") 4u64,
             options(att_syntax));
        x = px.read();
    }
    x | (xadd_old << 8)
        | (xchg_old << 16)
        | (pair.0[0] << 24)
        | (pair.0[1] << 32)
        | (u64::from(zf) << 40)
}

const BIT_INPUT: u64 = 0x0000_0100_0000_8000;
const SWAP_INPUT: u64 = 0x0102_0304_0506_0708;

/// What [`bit_ops`] returns.
pub const BIT_OPS_RESULT: u64 = {
    let bsf = BIT_INPUT.trailing_zeros() as u64;
    let bsr = 63 - BIT_INPUT.leading_zeros() as u64;
    let bt = (BIT_INPUT >> 40) & 1;
    let bts_btr = (BIT_INPUT | 8) & !(1 << 15);
    let bswap = SWAP_INPUT.swap_bytes();
    let shld = (SWAP_INPUT << 8) | (BIT_INPUT >> 56);
    let rol = SWAP_INPUT.rotate_left(13);
    bsf ^ (bsr << 8) ^ (bt << 16) ^ bts_btr ^ bswap ^ shld ^ rol
};

/// BSF, BSR, BT, BTS, BTR, BSWAP, SHLD and ROL on registers.
pub fn bit_ops() -> u64 {
    let (bsf, bsr, bt, bts_btr, bswap, shld, rol): (u64, u64, u64, u64, u64, u64, u64);
    // SAFETY: register-only instructions.
    unsafe {
        asm!("bsfq {v}, {o}", v = in(reg) BIT_INPUT, o = out(reg) bsf, options(att_syntax, nostack, nomem));
        asm!("bsrq {v}, {o}", v = in(reg) BIT_INPUT, o = out(reg) bsr, options(att_syntax, nostack, nomem));
        asm!("btq $40, {v}", "setc {c}", "movzbq {c}, {o}", v = in(reg) BIT_INPUT,
             c = out(reg_byte) _, o = out(reg) bt, options(att_syntax, nostack, nomem));
        asm!("btsq $3, {v}", "btrq $15, {v}", v = inout(reg) BIT_INPUT => bts_btr,
             options(att_syntax, nostack, nomem));
        asm!("bswapq {v}", v = inout(reg) SWAP_INPUT => bswap, options(att_syntax, nostack, nomem));
        asm!("shldq $8, {s}, {d}", s = in(reg) BIT_INPUT, d = inout(reg) SWAP_INPUT => shld,
             options(att_syntax, nostack, nomem));
        asm!("rolq $13, {v}", v = inout(reg) SWAP_INPUT => rol, options(att_syntax, nostack, nomem));
    }
    bsf ^ (bsr << 8) ^ (bt << 16) ^ bts_btr ^ bswap ^ shld ^ rol
}

/// What [`popcnt_tzcnt`] returns.
pub const POPCNT_TZCNT_RESULT: u64 = {
    let p = 0xf0f0u64.count_ones() as u64;
    let t = 0x100u64.trailing_zeros() as u64;
    p | (t << 16)
};

/// POPCNT and TZCNT (the caller checks CPUID for POPCNT; TZCNT of a nonzero value gives the
/// same answer where the CPU decodes it as BSF).
pub fn popcnt_tzcnt() -> u64 {
    let (p, t): (u64, u64);
    // SAFETY: register-only instructions.
    unsafe {
        asm!("popcntq {v}, {o}", v = in(reg) 0xf0f0u64, o = out(reg) p, options(att_syntax, nostack, nomem));
        asm!("tzcntq {v}, {o}", v = in(reg) 0x100u64, o = out(reg) t, options(att_syntax, nostack, nomem));
    }
    p | (t << 16)
}

const MUL_A: u64 = u64::MAX;
const DIV_HI: u64 = 1;
const DIV_LO: u64 = 5;

/// What [`mul_div`] returns.
pub const MUL_DIV_RESULT: u64 = {
    let m = MUL_A as u128 * 3;
    let n = ((DIV_HI as u128) << 64) | DIV_LO as u128;
    let (q, r) = ((n / 7) as u64, (n % 7) as u64);
    let im = (-3i64 as i128) * 5;
    let (iq, ir) = (-100i64 / 7, -100i64 % 7);
    (m as u64)
        ^ ((m >> 64) as u64).rotate_left(7)
        ^ q.rotate_left(14)
        ^ r.rotate_left(21)
        ^ (im as u64).rotate_left(28)
        ^ ((im >> 64) as u64).rotate_left(35)
        ^ (iq as u64).rotate_left(42)
        ^ (ir as u64).rotate_left(49)
};

/// MUL, DIV, IMUL and IDIV with 128-bit RDX:RAX operands.
pub fn mul_div() -> u64 {
    let (mlo, mhi, q, r, ilo, ihi, iq, ir): (u64, u64, u64, u64, u64, u64, u64, u64);
    // SAFETY: register-only arithmetic; the divisions cannot fault (divisor 7, quotients fit).
    unsafe {
        asm!("mulq {b}", b = in(reg) 3u64, inout("rax") MUL_A => mlo, out("rdx") mhi,
             options(att_syntax, nostack, nomem));
        asm!("divq {d}", d = in(reg) 7u64, inout("rax") DIV_LO => q, inout("rdx") DIV_HI => r,
             options(att_syntax, nostack, nomem));
        asm!("imulq {b}", b = in(reg) 5i64, inout("rax") -3i64 => ilo, out("rdx") ihi,
             options(att_syntax, nostack, nomem));
        asm!("cqto", "idivq {d}", d = in(reg) 7i64, inout("rax") -100i64 => iq, out("rdx") ir,
             options(att_syntax, nostack, nomem));
    }
    mlo ^ mhi.rotate_left(7)
        ^ q.rotate_left(14)
        ^ r.rotate_left(21)
        ^ ilo.rotate_left(28)
        ^ ihi.rotate_left(35)
        ^ iq.rotate_left(42)
        ^ ir.rotate_left(49)
}

#[repr(C, align(16))]
struct Xmm([u64; 2]);

const SSE_A: [u64; 2] = [1, 2];
const SSE_B: [u64; 2] = [10, 20];
const SSE_C: [u64; 2] = [0xff, 0xff00];

/// What [`sse_moves`] returns.
pub const SSE_MOVES_RESULT: u64 = {
    let lo = (SSE_A[0] + SSE_B[0]) ^ SSE_C[0];
    let hi = (SSE_A[1] + SSE_B[1]) ^ SSE_C[1];
    lo ^ hi.rotate_left(17)
};

/// MOVDQU/MOVAPS loads, PADDQ, PXOR and a MOVDQU store (the caller enables SSE).
pub fn sse_moves() -> u64 {
    let a = Xmm(SSE_A);
    let b = Xmm(SSE_B);
    let c = Xmm(SSE_C);
    let mut out = Xmm([0; 2]);
    // SAFETY: loads from and a store to local 16-byte aligned arrays; XMM0/XMM1 are declared
    // clobbered.
    unsafe {
        asm!("movdqu ({a}), %xmm0", "movaps ({b}), %xmm1", "paddq %xmm1, %xmm0",
             "movdqu ({c}), %xmm1", "pxor %xmm1, %xmm0", "movdqu %xmm0, ({o})",
             a = in(reg) &a, b = in(reg) &b, c = in(reg) &c, o = in(reg) &mut out,
             out("xmm0") _, out("xmm1") _, options(att_syntax, nostack));
    }
    out.0[0] ^ out.0[1].rotate_left(17)
}

/// What [`xsave_roundtrip`] returns: the XMM0 value put back by XRSTOR.
pub const XSAVE_RESULT: u64 = 0x5a5a_1234_8765_a5a5;

/// Sets CR4.OSXSAVE and XCR0 = x87|SSE, saves the SSE state with XSAVE into `area`, clobbers
/// XMM0, restores it with XRSTOR and returns its low half; then puts XCR0 and CR4 back. The
/// exception of the first instruction that faults, if one does.
pub fn xsave_roundtrip(area: &Frame) -> Result<u64, Exception> {
    let cr4_old = super::instr::read_cr4();
    // SAFETY: OSXSAVE only enables the XSAVE family and XGETBV/XSETBV; no memory changes.
    unsafe { asm!("movq {}, %cr4", in(reg) cr4_old | cr4::OSXSAVE, options(att_syntax, nostack)) }
    let result = xsave_inner(area);
    // SAFETY: restores the CR4 read above (and XCR0 to x87 only, its reset value, which the
    // library never changed).
    unsafe {
        let _ = super::instr::xsetbv_safe(0, 1);
        asm!("movq {}, %cr4", in(reg) cr4_old, options(att_syntax, nostack));
    }
    result
}

fn xsave_inner(area: &Frame) -> Result<u64, Exception> {
    super::instr::xsetbv_safe(0, 3)?;
    let xcr0 = super::instr::xgetbv_safe(0)?;
    if xcr0 & 3 != 3 {
        return Ok(xcr0);
    }
    let p = area.pa();
    let v = Xmm([XSAVE_RESULT, !XSAVE_RESULT]);
    let back: u64;
    // SAFETY: XSAVE/XRSTOR write and read the 4 KiB scratch frame `area` (64-byte aligned,
    // identity mapped, holding no Rust object; the x87+SSE image is 576 bytes); XMM0 is
    // declared clobbered.
    unsafe {
        asm!("movdqu ({v}), %xmm0", "xsave ({p})", "pxor %xmm0, %xmm0", "xrstor ({p})",
             "movq %xmm0, {back}",
             v = in(reg) &v, p = in(reg) p, back = out(reg) back,
             in("eax") 3u32, in("edx") 0u32, out("xmm0") _, options(att_syntax, nostack));
    }
    Ok(back)
}

/// What [`fences_and_flushes`] returns: the value written before the flush.
pub const FENCES_RESULT: u64 = 0x0123_4567_89ab_cdef;

/// MFENCE, LFENCE, SFENCE, CLFLUSH and PREFETCHT0 around a write and a read of a local.
pub fn fences_and_flushes() -> u64 {
    let mut x: u64 = 0;
    let p: *mut u64 = &mut x;
    // SAFETY: the only memory touched is the local `x`; fences and cache hints change no
    // architectural state.
    unsafe {
        asm!("movq {v}, ({p})", "sfence", "clflush ({p})", "mfence", "prefetcht0 ({p})",
             "lfence", p = in(reg) p, v = in(reg) FENCES_RESULT, options(att_syntax, nostack));
        p.read_volatile()
    }
}

/// What [`stack_and_flags`] returns.
pub const STACK_FLAGS_RESULT: u64 = 1 | (0xd5 << 8) | (1 << 16);

/// PUSHF/POPF (CF round trip), SAHF/LAHF, ENTER/LEAVE (RSP restored).
pub fn stack_and_flags() -> u64 {
    let (cf, ah, same): (u64, u64, u64);
    // SAFETY: the stack is used balanced within each block (PUSHF/POP, ENTER/LEAVE); flags
    // are clobbered (not preserved by asm! without `preserves_flags`).
    unsafe {
        asm!("stc", "pushfq", "popq {f}", "andq $1, {f}", f = out(reg) cf, options(att_syntax));
        asm!("movb $0xd5, %ah", "sahf", "movb $0, %ah", "lahf", "movl %eax, {o:e}",
             "shrl $8, {o:e}", "andl $0xff, {o:e}",
             o = out(reg) ah, out("rax") _, options(att_syntax, nostack, nomem));
        asm!("movq %rsp, {a}", "enter $32, $0", "leave", "movq %rsp, {b}", "cmpq {a}, {b}",
             "sete {s:l}", "movzbq {s:l}, {s}", a = out(reg) _, b = out(reg) _, s = out(reg) same,
             options(att_syntax));
    }
    cf | ((ah & 0xd5) << 8) | (same << 16)
}

/// What [`cmov_setcc`] returns.
pub const CMOV_SETCC_RESULT: u64 = {
    let setl = 1u64; // 3 < 5
    let cmovg = 7u64; // not taken: keeps 7
    let adc = 10 + 20 + 1; // with CF set
    let sbb = 50 - 8 - 1;
    setl | (cmovg << 8) | (adc << 16) | (sbb << 32)
};

/// SETL, CMOVG (not taken), ADC and SBB with CF set.
pub fn cmov_setcc() -> u64 {
    let (setl, cmovg, adc, sbb): (u64, u64, u64, u64);
    // SAFETY: register-only instructions.
    unsafe {
        asm!("cmpq $5, {a}", "setl {s:l}", "movzbq {s:l}, {s}", a = in(reg) 3u64, s = out(reg) setl,
             options(att_syntax, nostack, nomem));
        asm!("cmpq $5, {a}", "cmovgq {x}, {r}", a = in(reg) 3u64, x = in(reg) 9u64,
             r = inout(reg) 7u64 => cmovg, options(att_syntax, nostack, nomem));
        asm!("stc", "adcq {b}, {a}", a = inout(reg) 10u64 => adc, b = in(reg) 20u64,
             options(att_syntax, nostack, nomem));
        asm!("stc", "sbbq {b}, {a}", a = inout(reg) 50u64 => sbb, b = in(reg) 8u64,
             options(att_syntax, nostack, nomem));
    }
    setl | (cmovg << 8) | (adc << 16) | (sbb << 32)
}

const CRC_INPUT: u64 = 0x0102_0304_0506_0708;

/// CRC-32C (Castagnoli, reflected) of the 8 bytes of `v` (little endian) from `crc`.
const fn crc32c_u64(mut crc: u32, v: u64) -> u32 {
    let mut i = 0;
    while i < 8 {
        crc ^= ((v >> (8 * i)) & 0xff) as u32;
        let mut k = 0;
        while k < 8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0x82f6_3b78
            } else {
                crc >> 1
            };
            k += 1;
        }
        i += 1;
    }
    crc
}

/// What [`crc32`] returns.
pub const CRC32_RESULT: u64 = crc32c_u64(!0, CRC_INPUT) as u64;

/// CRC32 (SSE4.2) of 8 bytes from !0 (the caller checks CPUID).
pub fn crc32() -> u64 {
    let out: u64;
    // SAFETY: register-only instruction.
    unsafe {
        asm!("crc32q {v}, {c}", v = in(reg) CRC_INPUT, c = inout(reg) 0xffff_ffffu64 => out,
             options(att_syntax, nostack, nomem));
    }
    out
}

/// Whether RDRAND reported success (CF=1) in one of 100 tries (the caller checks CPUID).
pub fn rdrand_ok() -> bool {
    (0..100).any(|_| {
        let ok: u8;
        // SAFETY: register-only instruction.
        unsafe {
            asm!("rdrand {v}", "setc {ok}", v = out(reg) _, ok = out(reg_byte) ok,
                 options(att_syntax, nostack, nomem));
        }
        ok != 0
    })
}

/// What [`segment_queries`] returns: LAR of the kernel code selector (access rights and
/// flags of its descriptor 0x00af9a00_0000ffff), LSL of the kernel data selector (4 GiB - 1),
/// VERR of the kernel data selector (readable: ZF=1) and VERW of the kernel code selector
/// (not writable: ZF=0).
pub const SEGMENT_QUERIES_RESULT: u64 = 0x00a0_9a00 ^ (0xffff_ffffu64 << 24) ^ (1 << 60);

/// LAR, LSL, VERR and VERW on the kernel selectors.
pub fn segment_queries() -> u64 {
    let (lar, lsl, verr, verw): (u64, u64, u64, u64);
    // SAFETY: the instructions only read descriptor tables.
    unsafe {
        // LAR/LSL leave the destination unchanged when they fail (ZF=0): start from 0.
        asm!("larq {s:r}, {o}", s = in(reg) u64::from(KERNEL_CS), o = inout(reg) 0u64 => lar,
             options(att_syntax, nostack, readonly));
        asm!("lslq {s:r}, {o}", s = in(reg) u64::from(KERNEL_DS), o = inout(reg) 0u64 => lsl,
             options(att_syntax, nostack, readonly));
        asm!("verr {s:x}", "sete {z:l}", "movzbq {z:l}, {z}", s = in(reg) KERNEL_DS,
             z = out(reg) verr, options(att_syntax, nostack, readonly));
        asm!("verw {s:x}", "sete {z:l}", "movzbq {z:l}, {z}", s = in(reg) KERNEL_CS,
             z = out(reg) verw, options(att_syntax, nostack, readonly));
    }
    lar ^ (lsl << 24) ^ (verr << 60) ^ (verw << 61)
}
