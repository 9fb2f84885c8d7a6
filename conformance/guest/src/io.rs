//! Exits to the VMM: port I/O of every size, MMIO, HLT. Each case has a host-side check
//! (`HostCheck`) that records what the VMM saw and compares it with the shared constants.

use guest_lib::abi::case::{HostCheck, io};
use guest_lib::abi::env::Area;
use guest_lib::abi::layout::MMIO_WINDOW;
use guest_lib::arch::instr;
use guest_lib::case::Spec;
use guest_lib::report;
use guest_lib::{case, check, check_eq};

fn port_out_in() {
    for (size, v) in io::PIO_OUT {
        let back = match size {
            1 => {
                instr::outb(io::ECHO_PORT, v as u8);
                u32::from(instr::inb(io::ECHO_PORT))
            }
            2 => {
                instr::outw(io::ECHO_PORT, v as u16);
                u32::from(instr::inw(io::ECHO_PORT))
            }
            _ => {
                instr::outl(io::ECHO_PORT, v);
                instr::inl(io::ECHO_PORT)
            }
        };
        check_eq!(back, io::pio_in_answer(v, size), "IN of {} byte(s)", size);
    }
}
case!(
    port_out_in,
    Spec::new(
        "io.port_out_in",
        Area::Io,
        "OUT/IN of 1, 2 and 4 bytes reach the VMM with their values"
    )
    .host(HostCheck::PortIo)
    .smoke()
    .reqs("X86-IO-1,PVM-IO-1")
);

fn mmio_write_read() {
    let (_, v) = io::MMIO_WRITE;
    instr::mmio_write_u32(MMIO_WINDOW + io::MMIO_WRITE_OFFSET, v as u32);
    check_eq!(
        instr::mmio_read_u32(MMIO_WINDOW + io::MMIO_READ_OFFSET),
        io::MMIO_READ_VALUE,
        "MMIO read"
    );
}
case!(
    mmio_write_read,
    Spec::new(
        "io.mmio_write_read",
        Area::Io,
        "MMIO write and read at an unbacked GPA exit to the VMM"
    )
    .host(HostCheck::Mmio)
    .smoke()
    .reqs("X86-MMIO-1,PVM-IO-2")
);

fn hlt_exit() {
    for i in 0..io::HLT_COUNT {
        report::checkpoint(i, [0; 3]);
        instr::hlt();
    }
}
case!(
    hlt_exit,
    Spec::new(
        "io.hlt_exit",
        Area::Io,
        "HLT without an irqchip exits to the VMM, and execution resumes after it"
    )
    .host(HostCheck::HltExit)
    .smoke()
    .reqs("X86-HLT-1")
);

// --- The scratch device: every access size and instruction form -------------------------------

use guest_lib::abi::case::io::{
    SCRATCH_COUNTER_PORT, SCRATCH_MMIO_OFFSET, SCRATCH_PORT, scratch_initial,
};
use guest_lib::arch::instr::{Extend, MmioAddr, Rmw};
use guest_lib::vmm::{self, DeviceAccess};
use guest_lib::{case_table, rt};

/// GPA of the scratch device's MMIO register file.
const SCRATCH: u64 = MMIO_WINDOW + SCRATCH_MMIO_OFFSET;

fn mmio_at(offset: u64) -> MmioAddr {
    match MmioAddr::new(SCRATCH + offset) {
        Some(a) => a,
        None => guest_lib::error!("scratch offset {:#x} outside the MMIO window", offset),
    }
}

fn mask(size: u8) -> u64 {
    if size >= 8 {
        u64::MAX
    } else {
        (1u64 << (8 * size)) - 1
    }
}

/// The device's log, checked against `want` entry by entry (and in length).
fn check_log(want: &[DeviceAccess]) {
    let n = vmm::device_log_len();
    check_eq!(n, want.len() as u64, "accesses the device saw");
    for (i, w) in want.iter().enumerate() {
        check_eq!(vmm::device_log(i as u64), Some(*w), "access {}", i);
    }
}

fn port_access(write: bool, port: u16, size: u8, value: u64) -> DeviceAccess {
    DeviceAccess {
        write,
        mmio: false,
        size,
        addr: u64::from(port),
        value: value & mask(size),
    }
}

fn mmio_access(write: bool, offset: u64, size: u8, value: u64) -> DeviceAccess {
    DeviceAccess {
        write,
        mmio: true,
        size,
        addr: SCRATCH + offset,
        value: value & mask(size),
    }
}

/// OUT then IN of one size on a scratch port: one exit each, with the size and the value.
fn port_size() {
    let size = rt::case_param() as u8;
    let v: u64 = 0x8765_4321;
    let back = match size {
        1 => {
            instr::outb(SCRATCH_PORT, v as u8);
            u64::from(instr::inb(SCRATCH_PORT))
        }
        2 => {
            instr::outw(SCRATCH_PORT, v as u16);
            u64::from(instr::inw(SCRATCH_PORT))
        }
        _ => {
            instr::outl(SCRATCH_PORT, v as u32);
            u64::from(instr::inl(SCRATCH_PORT))
        }
    };
    check_eq!(back, v & mask(size), "IN after OUT");
    check_log(&[
        port_access(true, SCRATCH_PORT, size, v),
        port_access(false, SCRATCH_PORT, size, v),
    ]);
}

const fn io_spec(name: &'static str, summary: &'static str) -> Spec {
    Spec::new(name, Area::Io, summary).host(HostCheck::Scratch)
}

case_table!(
    port_size,
    io_spec,
    [
        (
            "io.port.size8",
            1,
            "OUT/IN of 1 byte: one exit each with size and value",
            "X86-IO-1,PVM-IO-1"
        ),
        (
            "io.port.size16",
            2,
            "OUT/IN of 2 bytes: one exit each with size and value",
            "X86-IO-1,PVM-IO-1"
        ),
        (
            "io.port.size32",
            4,
            "OUT/IN of 4 bytes: one exit each with size and value",
            "X86-IO-1,PVM-IO-1"
        ),
    ]
);

/// Case parameter of the string port cases: size in the low byte, `BACKWARDS` for DF=1.
const BACKWARDS: u64 = 0x100;

/// REP OUTS of 8 bytes in items of one size: one OUT per item, in memory order (or, with
/// DF=1, from the last item down).
fn rep_outs() {
    let p = rt::case_param();
    let (size, backwards) = ((p & 0xff) as u8, p & BACKWARDS != 0);
    let buf: [u8; 8] = [0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88];
    instr::rep_outs(SCRATCH_PORT, size, &buf, backwards);
    check_eq!(
        instr::read_rflags() & guest_lib::abi::x86::rflags::DF,
        0,
        "RFLAGS.DF afterwards"
    );
    let n = 8 / usize::from(size);
    let item = |i: usize| {
        let mut v = 0u64;
        for b in 0..usize::from(size) {
            v |= u64::from(buf[i * usize::from(size) + b]) << (8 * b);
        }
        v
    };
    let want: [DeviceAccess; 8] = core::array::from_fn(|k| {
        let i = if backwards {
            n.saturating_sub(1 + k)
        } else {
            k
        };
        port_access(true, SCRATCH_PORT, size, item(i.min(n - 1)))
    });
    check_log(&want[..n]);
}

case_table!(
    rep_outs,
    io_spec,
    [
        (
            "io.port.rep_outsb",
            1,
            "REP OUTSB: one exit per byte, in memory order",
            "X86-IO-2"
        ),
        (
            "io.port.rep_outsw",
            2,
            "REP OUTSW: one exit per word, in memory order",
            "X86-IO-2"
        ),
        (
            "io.port.rep_outsd",
            4,
            "REP OUTSD: one exit per dword, in memory order",
            "X86-IO-2"
        ),
        (
            "io.port.rep_outsw_df",
            2 | BACKWARDS,
            "REP OUTSW with DF=1: from the last word down",
            "X86-IO-2"
        ),
        (
            "io.port.rep_outsb_df",
            1 | BACKWARDS,
            "REP OUTSB with DF=1: from the last byte down",
            "X86-IO-2"
        ),
    ]
);

/// REP INS of items of one size from the counter port (which answers 0, 1, 2 ...): item `i`
/// of the buffer gets `i` (or, with DF=1, the last item gets 0).
fn rep_ins() {
    let p = rt::case_param();
    let (size, backwards) = ((p & 0xff) as u8, p & BACKWARDS != 0);
    let mut buf = [0xeeu8; 8];
    instr::rep_ins(SCRATCH_COUNTER_PORT, size, &mut buf, backwards);
    check_eq!(
        instr::read_rflags() & guest_lib::abi::x86::rflags::DF,
        0,
        "RFLAGS.DF afterwards"
    );
    let sz = usize::from(size);
    let n = 8 / sz;
    for i in 0..n {
        let mut v = 0u64;
        for b in 0..sz {
            v |= u64::from(buf[i * sz + b]) << (8 * b);
        }
        let want = if backwards {
            (n - 1 - i) as u64
        } else {
            i as u64
        };
        check_eq!(v, want, "item {} of the buffer", i);
    }
    check_eq!(vmm::device_log_len(), n as u64, "INs the device answered");
}

case_table!(
    rep_ins,
    io_spec,
    [
        (
            "io.port.rep_insb",
            1,
            "REP INSB: one exit per byte, stored in memory order",
            "X86-IO-2"
        ),
        (
            "io.port.rep_insw",
            2,
            "REP INSW: one exit per word, stored in memory order",
            "X86-IO-2"
        ),
        (
            "io.port.rep_insd",
            4,
            "REP INSD: one exit per dword, stored in memory order",
            "X86-IO-2"
        ),
        (
            "io.port.rep_insw_df",
            2 | BACKWARDS,
            "REP INSW with DF=1: stored from the last word down",
            "X86-IO-2"
        ),
    ]
);

/// A plain MOV store and load of one size: one MMIO exit each, with the size and the value.
fn mmio_size() {
    let size = rt::case_param() as u8;
    let v = 0x8899_aabb_ccdd_eeffu64;
    let a = mmio_at(0x40);
    instr::mmio_write(a, size, v);
    check_eq!(
        instr::mmio_read(a, size),
        v & mask(size),
        "load after store"
    );
    check_log(&[
        mmio_access(true, 0x40, size, v),
        mmio_access(false, 0x40, size, v),
    ]);
}

case_table!(
    mmio_size,
    io_spec,
    [
        (
            "io.mmio.size8",
            1,
            "MMIO MOV of 1 byte: one exit each way with size and value",
            "X86-MMIO-1,PVM-IO-2"
        ),
        (
            "io.mmio.size16",
            2,
            "MMIO MOV of 2 bytes: one exit each way with size and value",
            "X86-MMIO-1,PVM-IO-2"
        ),
        (
            "io.mmio.size32",
            4,
            "MMIO MOV of 4 bytes: one exit each way with size and value",
            "X86-MMIO-1,PVM-IO-2"
        ),
        (
            "io.mmio.size64",
            8,
            "MMIO MOV of 8 bytes: one exit each way with size and value",
            "X86-MMIO-1,PVM-IO-2"
        ),
    ]
);

/// MOVZX/MOVSX loads from MMIO: the access has the source size, the register gets the value
/// zero- or sign-extended.
fn mmio_extend() {
    let (how, size, raw, want) = match rt::case_param() {
        0 => (Extend::ZeroByte, 1u8, 0x80u64, 0x80u64),
        1 => (Extend::ZeroWord, 2, 0x8001, 0x8001),
        2 => (Extend::SignByte, 1, 0x80, 0xffff_ffff_ffff_ff80),
        3 => (Extend::SignWord, 2, 0x8001, 0xffff_ffff_ffff_8001),
        _ => (Extend::SignDword, 4, 0x8000_0002, 0xffff_ffff_8000_0002),
    };
    let a = mmio_at(0x80);
    instr::mmio_write(a, size, raw);
    vmm::device_log_clear();
    check_eq!(instr::mmio_read_extend(a, how), want, "the extended value");
    check_log(&[mmio_access(false, 0x80, size, raw)]);
}

case_table!(
    mmio_extend,
    io_spec,
    [
        (
            "io.mmio.movzx8",
            0,
            "MOVZX of an MMIO byte: a 1-byte read, zero-extended",
            "X86-MMIO-2"
        ),
        (
            "io.mmio.movzx16",
            1,
            "MOVZX of an MMIO word: a 2-byte read, zero-extended",
            "X86-MMIO-2"
        ),
        (
            "io.mmio.movsx8",
            2,
            "MOVSX of an MMIO byte: a 1-byte read, sign-extended",
            "X86-MMIO-2"
        ),
        (
            "io.mmio.movsx16",
            3,
            "MOVSX of an MMIO word: a 2-byte read, sign-extended",
            "X86-MMIO-2"
        ),
        (
            "io.mmio.movsxd",
            4,
            "MOVSXD of an MMIO dword: a 4-byte read, sign-extended",
            "X86-MMIO-2"
        ),
    ]
);

/// A read-modify-write instruction on MMIO: a read then a write of the operand size, the
/// right result in the device, the right old value in the register.
fn mmio_rmw() {
    let a = mmio_at(0xc0);
    let init = 0x0000_0001_7fff_fff0u64;
    let (op, size, want_mem, want_reg) = match rt::case_param() {
        0 => (Rmw::Add32(0x20), 4u8, 0x8000_0010u64, 0u64),
        1 => (Rmw::Or8(0x0f), 1, 0xff, 0),
        2 => (Rmw::Inc64, 8, init + 1, 0),
        3 => (Rmw::Xchg32(0x1234_5678), 4, 0x1234_5678, 0x7fff_fff0),
        4 => (Rmw::LockXadd32(0x10), 4, 0x8000_0000, 0x7fff_fff0),
        _ => (Rmw::Bts64(33), 8, init | (1 << 33), 0),
    };
    instr::mmio_write(a, 8, init);
    vmm::device_log_clear();
    check_eq!(
        instr::mmio_rmw(a, op),
        want_reg,
        "the register operand afterwards ({:?})",
        op
    );
    let accesses = vmm::device_log_len();
    check_eq!(accesses, 2, "accesses of {:?} (a read and a write)", op);
    let r = vmm::device_log(0);
    let w = vmm::device_log(1);
    check_eq!(
        r.map(|x| (x.write, x.size)),
        Some((false, size)),
        "first access: a read of {} bytes",
        size
    );
    check_eq!(
        w.map(|x| (x.write, x.size)),
        Some((true, size)),
        "second access: a write of {} bytes",
        size
    );
    check_eq!(
        instr::mmio_read(a, size),
        want_mem,
        "the device's value afterwards"
    );
}

case_table!(
    mmio_rmw,
    io_spec,
    [
        (
            "io.mmio.rmw_add32",
            0,
            "ADD to MMIO: a 4-byte read and write with the sum",
            "X86-MMIO-3"
        ),
        (
            "io.mmio.rmw_or8",
            1,
            "OR to an MMIO byte: a 1-byte read and write",
            "X86-MMIO-3"
        ),
        (
            "io.mmio.rmw_inc64",
            2,
            "INC of an MMIO quadword: an 8-byte read and write",
            "X86-MMIO-3"
        ),
        (
            "io.mmio.rmw_xchg32",
            3,
            "XCHG with MMIO: the old value back, the new one written",
            "X86-MMIO-3"
        ),
        (
            "io.mmio.rmw_lock_xadd32",
            4,
            "LOCK XADD on MMIO: the old value back, the sum written",
            "X86-MMIO-3"
        ),
        (
            "io.mmio.rmw_bts64",
            5,
            "BTS on an MMIO quadword: the old bit back, the bit set",
            "X86-MMIO-3"
        ),
    ]
);

/// REP MOVSB between RAM and MMIO: the bytes arrive (in the device, or in RAM), every access
/// inside the 8 bytes, adding up to 8.
fn mmio_movs() {
    let to_device = rt::case_param() == 0;
    let a = mmio_at(0x100);
    let data: [u8; 8] = [1, 2, 3, 4, 5, 6, 7, 8];
    if to_device {
        instr::mmio_movs_to(a, &data);
        check_eq!(
            instr::mmio_read(a, 8),
            u64::from_le_bytes(data),
            "the device's bytes"
        );
    } else {
        instr::mmio_write(a, 8, u64::from_le_bytes(data));
        vmm::device_log_clear();
        let mut buf = [0u8; 8];
        instr::mmio_movs_from(a, &mut buf);
        check_eq!(
            u64::from_le_bytes(buf),
            u64::from_le_bytes(data),
            "the bytes in RAM"
        );
    }
    let n = vmm::device_log_len();
    let mut bytes = 0u64;
    for i in 0..n {
        if let Some(x) = vmm::device_log(i)
            && x.write == to_device
        {
            check!(
                x.addr >= a.get() && x.addr + u64::from(x.size) <= a.get() + 8,
                "access {} at {:#x} of {} bytes outside the 8 bytes",
                i,
                x.addr,
                x.size
            );
            bytes += u64::from(x.size);
        }
    }
    check_eq!(bytes, 8, "bytes moved through the device");
}

case_table!(
    mmio_movs,
    io_spec,
    [
        (
            "io.mmio.movs_to_device",
            0,
            "REP MOVSB from RAM to MMIO: all 8 bytes reach the device",
            "X86-MMIO-4"
        ),
        (
            "io.mmio.movs_from_device",
            1,
            "REP MOVSB from MMIO to RAM: all 8 bytes arrive",
            "X86-MMIO-4"
        ),
    ]
);

/// An 8-byte MMIO store and load that cross a page boundary (and a 4-byte load that is
/// merely misaligned): the value round-trips; the accesses cover exactly its bytes.
fn mmio_split() {
    let crossing = rt::case_param() == 0;
    let (off, size) = if crossing { (0xffc, 8u8) } else { (0x141, 4) };
    let a = mmio_at(off);
    let v = 0x0102_0304_0506_0708u64;
    instr::mmio_write(a, size, v);
    check_eq!(
        instr::mmio_read(a, size),
        v & mask(size),
        "load after store"
    );
    let mut covered = 0u64;
    for i in 0..vmm::device_log_len() {
        if let Some(x) = vmm::device_log(i)
            && x.write
        {
            let lo = x.addr - a.get();
            for b in 0..u64::from(x.size) {
                covered |= 1 << (lo + b);
            }
        }
    }
    check_eq!(
        covered,
        (1u64 << size) - 1,
        "bytes the stores covered (one bit per byte)"
    );
}

case_table!(
    mmio_split,
    io_spec,
    [
        (
            "io.mmio.page_crossing",
            0,
            "an 8-byte MMIO store/load across a page boundary round-trips",
            "X86-MMIO-5"
        ),
        (
            "io.mmio.misaligned",
            1,
            "a misaligned 4-byte MMIO store/load round-trips",
            "X86-MMIO-5"
        ),
    ]
);

/// Before any write, the device's bytes are its initial pattern (a control for the log: the
/// read is one 8-byte exit).
fn mmio_initial() {
    let a = mmio_at(0x200);
    let mut want = 0u64;
    for b in 0..8 {
        want |= u64::from(scratch_initial(0x200 + b)) << (8 * b);
    }
    check_eq!(instr::mmio_read(a, 8), want, "the untouched register file");
    check_log(&[mmio_access(false, 0x200, 8, want)]);
}
case!(
    mmio_initial,
    io_spec(
        "io.mmio.read_untouched",
        "an MMIO read of untouched device bytes returns what the VMM supplies"
    )
    .reqs("X86-MMIO-1")
);

// --- KVM's in-kernel fast paths: coalesced MMIO/PIO, ioeventfd, irqfd ------------------------

/// Writes to a coalesced MMIO zone do not exit: KVM queues them in the ring, which the VMM
/// drains with every address and value.
fn coalesced_mmio() {
    use guest_lib::vmm::Op;
    let zone = SCRATCH + 0x1800;
    vmm::must(Op::RegisterCoalesced, [zone, 0x100, 0]);
    for i in 0..4u64 {
        instr::mmio_write(mmio_at(0x1800 + 8 * i), 8, 0x100 + i);
    }
    let exits = vmm::device_log_len();
    let r = vmm::must(Op::DrainCoalesced, [0; 3]);
    check_eq!(exits, 0, "exits for writes to the coalesced zone");
    check_eq!(r[0], 4, "entries in the coalesced ring");
    check_eq!(r[1], zone, "address of the first entry");
    check_eq!(r[2], 0x103, "data of the last entry");
}
case!(
    coalesced_mmio,
    io_spec(
        "io.coalesced_mmio",
        "writes to a coalesced MMIO zone are queued in the ring, not exits"
    )
    .smoke()
    .reqs("KVM-IO-1")
);

/// OUTs to a coalesced PIO zone do not exit either.
fn coalesced_pio() {
    use guest_lib::vmm::Op;
    let port = SCRATCH_PORT + 4;
    vmm::must(Op::RegisterCoalesced, [u64::from(port), 1, 1]);
    for i in 0..3u8 {
        instr::outb(port, 0x50 + i);
    }
    let exits = vmm::device_log_len();
    let r = vmm::must(Op::DrainCoalesced, [0; 3]);
    check_eq!(exits, 0, "exits for OUTs to the coalesced PIO zone");
    check_eq!(r[0], 3, "entries in the ring");
    check_eq!(r[1], u64::from(port), "port of the first entry");
    check_eq!(r[2] & 0xff, 0x52, "data of the last entry");
}
case!(
    coalesced_pio,
    io_spec(
        "io.coalesced_pio",
        "OUTs to a coalesced PIO zone are queued in the ring, not exits"
    )
    .reqs("KVM-IO-1")
);

/// An ioeventfd on a port (or an MMIO address) turns each write into an eventfd signal in the
/// kernel: no exit, and the counter says how many.
fn ioeventfd() {
    use guest_lib::abi::vmm::{DATAMATCH, MMIO};
    use guest_lib::vmm::Op;
    match rt::case_param() {
        0 => {
            let port = SCRATCH_PORT + 2;
            let id = vmm::must(Op::RegisterIoEventfd, [u64::from(port), 0, 0])[0];
            for i in 0..3u16 {
                instr::outw(port, i);
            }
            check_eq!(
                vmm::must(Op::EventfdCount, [id, 0, 0])[0],
                3,
                "eventfd count"
            );
            check_eq!(vmm::device_log_len(), 0, "exits for the OUTs");
        }
        1 => {
            let a = mmio_at(0x300);
            let id = vmm::must(Op::RegisterIoEventfd, [a.get(), MMIO, 0])[0];
            instr::mmio_write(a, 4, 1);
            instr::mmio_write(a, 4, 2);
            check_eq!(
                vmm::must(Op::EventfdCount, [id, 0, 0])[0],
                2,
                "eventfd count"
            );
            check_eq!(vmm::device_log_len(), 0, "exits for the stores");
        }
        _ => {
            let port = SCRATCH_PORT + 6;
            let id = vmm::must(
                Op::RegisterIoEventfd,
                [u64::from(port), DATAMATCH | 1, 0x42],
            )[0];
            instr::outb(port, 0x42);
            instr::outb(port, 0x43);
            check_eq!(
                vmm::must(Op::EventfdCount, [id, 0, 0])[0],
                1,
                "eventfd count (one match)"
            );
            check_log(&[port_access(true, port, 1, 0x43)]);
        }
    }
}

case_table!(
    ioeventfd,
    io_spec,
    [
        (
            "io.ioeventfd.pio",
            0,
            "an ioeventfd on a port: OUTs signal the eventfd without exits",
            "KVM-IO-2"
        ),
        (
            "io.ioeventfd.mmio",
            1,
            "an ioeventfd on MMIO: stores signal the eventfd without exits",
            "KVM-IO-2"
        ),
        (
            "io.ioeventfd.datamatch",
            2,
            "an ioeventfd with datamatch: only the matching OUT signals; the other exits",
            "KVM-IO-2"
        ),
    ]
);

static IRQFD_HITS: core::sync::atomic::AtomicU32 = core::sync::atomic::AtomicU32::new(0);
/// Vector and I/O APIC pin of the irqfd case.
const IRQFD_VECTOR: u8 = 0x27;
const IRQFD_PIN: u32 = 12;

fn on_irqfd(_: &mut guest_lib::exception::Frame, ex: guest_lib::exception::Exception) -> bool {
    if ex.vector != IRQFD_VECTOR {
        return false;
    }
    IRQFD_HITS.fetch_add(1, core::sync::atomic::Ordering::SeqCst);
    guest_lib::apic::eoi();
    true
}

/// An irqfd: the VMM signals an eventfd and the in-kernel irqchip raises the GSI (edge, through
/// the I/O APIC), once per signal.
fn irqfd() {
    use core::sync::atomic::Ordering::SeqCst;
    use guest_lib::apic;
    use guest_lib::vmm::Op;
    if let Err(e) = apic::enable_x2apic(apic::SPURIOUS_VECTOR) {
        guest_lib::skip!("no usable x2APIC: {:?}", e);
    }
    let io = apic::Ioapic::map(guest_lib::paging::TestVa::must(0x6000_0000));
    io.route(IRQFD_PIN, IRQFD_VECTOR, false, 0);
    let id = vmm::must(Op::RegisterIrqfd, [u64::from(IRQFD_PIN), 0, 0])[0];
    IRQFD_HITS.store(0, SeqCst);
    guest_lib::exception::set_hook(Some(on_irqfd));
    apic::set_interrupts(true);
    for round in 1..=2u32 {
        vmm::must(Op::SignalEventfd, [id, 0, 0]);
        let t0 = instr::rdtsc();
        while IRQFD_HITS.load(SeqCst) < round && instr::rdtsc() - t0 < 20 * rt::cycles_per_ms() {
            core::hint::spin_loop();
        }
    }
    apic::set_interrupts(false);
    guest_lib::exception::set_hook(None);
    io.mask(IRQFD_PIN);
    check_eq!(
        IRQFD_HITS.load(SeqCst),
        2,
        "interrupts for two irqfd signals"
    );
}
case!(
    irqfd,
    io_spec(
        "io.irqfd",
        "an irqfd signal raises its GSI through the in-kernel irqchip, once per signal"
    )
    .flags(guest_lib::abi::case::FLAG_IRQCHIP)
    .reqs("KVM-IO-3")
);
