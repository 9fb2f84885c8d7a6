//! Exits to the VMM: port I/O of every size, MMIO, HLT. Each case has a host-side check
//! (`HostCheck`) that records what the VMM saw and compares it with the shared constants.

use guest_lib::abi::case::{HostCheck, io};
use guest_lib::abi::env::Area;
use guest_lib::abi::layout::MMIO_WINDOW;
use guest_lib::arch::instr;
use guest_lib::case::Spec;
use guest_lib::report;
use guest_lib::{case, check_eq};

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
    .reqs("X86-HLT-1")
);
