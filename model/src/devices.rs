//! What a VMM registers with KVM for a VM and the model plays for its VMM: ioeventfds (a write
//! that matches becomes a counter increment, not an exit), coalesced MMIO/PIO zones (writes are
//! queued in a ring the VMM drains, not exits) and extra memslots. KVM decides the first two
//! before the exit reaches the VMM, as the model does before the case's exit handler sees the
//! access (virt/kvm/eventfd.c:ioeventfd_write, virt/kvm/coalesced_mmio.c:coalesced_mmio_write);
//! memslots change the guest-physical map every vCPU's engine uses ([`Devices::slots`]).

use std::sync::Arc;

use runner::memory::MmapRam;
use runner::vm::GuestRam;

/// Port I/O or MMIO.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Space {
    /// A port.
    Pio,
    /// A guest-physical address.
    Mmio,
}

/// An interrupt to deliver: (destination x2APIC ID, vector).
pub type Delivery = (u32, u8);

/// Pins of the model's I/O APIC (KVM's `IOAPIC_NUM_PINS`).
pub const IOAPIC_PINS: usize = 24;

/// The in-kernel I/O APIC (`KVM_CREATE_IRQCHIP`; arch/x86/kvm/ioapic.c): IOREGSEL/IOWIN at
/// `abi::x86::ioapic::BASE`, 24 redirection entries with vector, trigger mode, mask and
/// physical destination (bits 63:56); edge pins interrupt on a rising edge, level pins while
/// high and their remote IRR is clear, and an EOI of the vector clears remote IRR (and brings
/// a still-high line back).
#[derive(Clone, Debug)]
pub struct Ioapic {
    select: u32,
    entries: [u64; IOAPIC_PINS],
    /// Lines the VMM holds high, by pin.
    high: u32,
}

impl Default for Ioapic {
    fn default() -> Self {
        Self {
            select: 0,
            entries: [abi::x86::ioapic::MASKED; IOAPIC_PINS],
            high: 0,
        }
    }
}

impl Ioapic {
    /// A 32-bit read at `off` in the I/O APIC's page.
    pub fn read(&self, off: u64) -> u32 {
        match (off, self.select) {
            (abi::x86::ioapic::IOREGSEL, _) => self.select,
            (abi::x86::ioapic::IOWIN, 0) => 0,
            // Version 0x11, maximum redirection entry 23.
            (abi::x86::ioapic::IOWIN, abi::x86::ioapic::VERSION) => {
                0x11 | ((IOAPIC_PINS as u32 - 1) << 16)
            }
            (abi::x86::ioapic::IOWIN, r) if r >= 0x10 => {
                match self.entries.get((r as usize - 0x10) / 2) {
                    Some(e) if r.is_multiple_of(2) => *e as u32,
                    Some(e) => (*e >> 32) as u32,
                    None => 0,
                }
            }
            _ => 0,
        }
    }

    /// A 32-bit write at `off`; returns what it makes deliverable (an unmasked level pin
    /// that is high).
    pub fn write(&mut self, off: u64, v: u32) -> Vec<Delivery> {
        match off {
            abi::x86::ioapic::IOREGSEL => self.select = v & 0xff,
            abi::x86::ioapic::IOWIN if self.select >= 0x10 => {
                let r = self.select as usize - 0x10;
                let Some(e) = self.entries.get_mut(r / 2) else {
                    return Vec::new();
                };
                // Remote IRR and delivery status are read-only.
                let ro = *e & (abi::x86::ioapic::REMOTE_IRR | 1 << 12);
                *e = if r.is_multiple_of(2) {
                    (*e & !0xffff_ffff) | u64::from(v)
                } else {
                    (*e & 0xffff_ffff) | u64::from(v) << 32
                };
                *e = (*e & !(abi::x86::ioapic::REMOTE_IRR | 1 << 12)) | ro;
                return self.service(r / 2);
            }
            _ => {}
        }
        Vec::new()
    }

    /// The VMM sets line `pin` to `level` (`KVM_IRQ_LINE`).
    pub fn set_line(&mut self, pin: usize, level: bool) -> Vec<Delivery> {
        if pin >= IOAPIC_PINS {
            return Vec::new();
        }
        let was = self.high & (1 << pin) != 0;
        if level {
            self.high |= 1 << pin;
        } else {
            self.high &= !(1 << pin);
        }
        let e = self.entries[pin];
        if e & abi::x86::ioapic::LEVEL == 0 {
            // Edge: one interrupt per rising edge of an unmasked pin.
            return if level && !was && e & abi::x86::ioapic::MASKED == 0 {
                vec![Self::target(e)]
            } else {
                Vec::new()
            };
        }
        self.service(pin)
    }

    /// An EOI of `vector` from a local APIC: level pins routed to it drop remote IRR and, if
    /// still high, interrupt again.
    pub fn eoi(&mut self, vector: u8) -> Vec<Delivery> {
        let mut out = Vec::new();
        for pin in 0..IOAPIC_PINS {
            let e = self.entries[pin];
            if e & abi::x86::ioapic::LEVEL != 0 && e as u8 == vector {
                self.entries[pin] &= !abi::x86::ioapic::REMOTE_IRR;
                out.extend(self.service(pin));
            }
        }
        out
    }

    /// A level pin that is high, unmasked and not awaiting an EOI interrupts (remote IRR set).
    fn service(&mut self, pin: usize) -> Vec<Delivery> {
        let e = self.entries[pin];
        let ready = e & abi::x86::ioapic::LEVEL != 0
            && e & abi::x86::ioapic::MASKED == 0
            && e & abi::x86::ioapic::REMOTE_IRR == 0
            && self.high & (1 << pin) != 0;
        if !ready {
            return Vec::new();
        }
        self.entries[pin] |= abi::x86::ioapic::REMOTE_IRR;
        vec![Self::target(e)]
    }

    fn target(e: u64) -> Delivery {
        ((e >> 56) as u32, e as u8)
    }
}

/// One ioeventfd (`KVM_IOEVENTFD`), or an irqfd (`KVM_IRQFD`: signalling it pulses its GSI).
#[derive(Clone, Debug)]
struct IoEventfd {
    space: Space,
    addr: u64,
    /// Access size it matches; 0 matches any (KVM: only without datamatch).
    len: usize,
    datamatch: Option<u64>,
    /// An irqfd's GSI (then the other fields are unused).
    irqfd: Option<usize>,
    /// Signals since the VMM last read the counter.
    count: u64,
}

/// One coalesced zone (`KVM_REGISTER_COALESCED_MMIO`).
#[derive(Clone, Copy, Debug)]
struct Zone {
    space: Space,
    addr: u64,
    size: u64,
}

/// Most entries the ring holds (KVM's ring is one page of 32-byte entries, less its header;
/// a full ring makes the write an ordinary exit).
const RING_ENTRIES: usize = (4096 - 16) / 32;

/// An extra memslot (`KVM_SET_USER_MEMORY_REGION`), filled by the VMM.
#[derive(Clone, Debug)]
pub struct Slot {
    /// Slot number (1 to `abi::vmm::MAX_EXTRA_SLOT`).
    pub id: u64,
    /// Guest-physical start.
    pub gpa: u64,
    /// Its memory (shared with every engine that maps it, so it outlives their mappings).
    pub mem: Arc<MmapRam>,
    /// `KVM_MEM_READONLY`: reads are memory, writes exit as MMIO.
    pub readonly: bool,
}

impl Slot {
    /// Bytes.
    pub fn size(&self) -> u64 {
        self.mem.size()
    }
}

impl PartialEq for Slot {
    fn eq(&self, o: &Self) -> bool {
        self.id == o.id
            && self.gpa == o.gpa
            && self.readonly == o.readonly
            && Arc::ptr_eq(&self.mem, &o.mem)
    }
}

/// The devices of one VM.
#[derive(Clone, Debug, Default)]
pub struct Devices {
    ioeventfds: Vec<IoEventfd>,
    zones: Vec<Zone>,
    /// Coalesced writes not yet drained: address and the first 8 data bytes.
    ring: Vec<(u64, [u8; 8])>,
    slots: Vec<Slot>,
    /// Bumped by every memslot change; engines compare it with what they mapped.
    slot_generation: u64,
    /// The in-kernel I/O APIC (used when the VM has the in-kernel irqchip).
    pub ioapic: Ioapic,
}

/// The devices as the vCPUs of a VM share them.
#[derive(Clone, Debug, Default)]
pub struct Shared(std::sync::Arc<std::sync::Mutex<Devices>>);

impl Shared {
    /// The devices, locked (a panic in another vCPU's thread leaves them usable).
    pub fn lock(&self) -> std::sync::MutexGuard<'_, Devices> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Why a registration is refused (`EINVAL`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Invalid;

impl Devices {
    /// Registers an ioeventfd; returns its id (the index the VMM's eventfd requests name).
    pub fn add_ioeventfd(
        &mut self,
        space: Space,
        addr: u64,
        len: usize,
        datamatch: Option<u64>,
    ) -> Result<u64, Invalid> {
        // kvm_assign_ioeventfd: the length is 0, 1, 2, 4 or 8; datamatch needs a length.
        if !matches!(len, 0 | 1 | 2 | 4 | 8) || (len == 0 && datamatch.is_some()) {
            return Err(Invalid);
        }
        self.ioeventfds.push(IoEventfd {
            space,
            addr,
            len,
            datamatch,
            irqfd: None,
            count: 0,
        });
        Ok(self.ioeventfds.len() as u64 - 1)
    }

    /// Registers an irqfd for I/O APIC pin `gsi`; returns its id (ioeventfds' id space, as
    /// the KVM backend's VMM numbers its eventfds).
    pub fn add_irqfd(&mut self, gsi: usize) -> Result<u64, Invalid> {
        if gsi >= IOAPIC_PINS {
            return Err(Invalid);
        }
        self.ioeventfds.push(IoEventfd {
            space: Space::Mmio,
            addr: 0,
            len: 0,
            datamatch: None,
            irqfd: Some(gsi),
            count: 0,
        });
        Ok(self.ioeventfds.len() as u64 - 1)
    }

    /// Signals eventfd `id`: an irqfd pulses its pin (`kvm_set_irq` 1 then 0,
    /// virt/kvm/eventfd.c:irqfd_inject), an ioeventfd counts.
    pub fn signal(&mut self, id: u64) -> Result<Vec<Delivery>, Invalid> {
        let e = usize::try_from(id)
            .ok()
            .and_then(|i| self.ioeventfds.get_mut(i))
            .ok_or(Invalid)?;
        let Some(gsi) = e.irqfd else {
            e.count += 1;
            return Ok(Vec::new());
        };
        let mut out = self.ioapic.set_line(gsi, true);
        out.extend(self.ioapic.set_line(gsi, false));
        Ok(out)
    }

    /// Reads and resets ioeventfd `id`'s counter.
    pub fn take_count(&mut self, id: u64) -> Option<u64> {
        let e = self.ioeventfds.get_mut(usize::try_from(id).ok()?)?;
        Some(core::mem::take(&mut e.count))
    }

    /// Registers a coalesced zone.
    pub fn add_zone(&mut self, space: Space, addr: u64, size: u64) -> Result<(), Invalid> {
        if size == 0 || addr.checked_add(size).is_none() {
            return Err(Invalid);
        }
        self.zones.push(Zone { space, addr, size });
        Ok(())
    }

    /// Empties the ring: (entries, first entry's address, last entry's data).
    pub fn drain(&mut self) -> (u64, u64, u64) {
        let n = self.ring.len() as u64;
        let first = self.ring.first().map_or(0, |e| e.0);
        let last = self.ring.last().map_or(0, |e| u64::from_le_bytes(e.1));
        self.ring.clear();
        (n, first, last)
    }

    /// Adds memslot `id` at `gpa` of `size` bytes, filled with `abi::vmm::slot_pattern`, the
    /// way the KVM backend's VMM does (`runner::kvm::requests`): a request
    /// `abi::vmm::memslot_request_valid` takes, inside `[lo, hi)` (where the model lets slots
    /// go), overlapping no other slot.
    pub fn add_slot(
        &mut self,
        id: u64,
        gpa: u64,
        size: u64,
        readonly: bool,
        lo: u64,
        hi: u64,
    ) -> Result<(), Invalid> {
        let end = gpa.checked_add(size).ok_or(Invalid)?;
        let bad = !abi::vmm::memslot_request_valid(id, gpa, size)
            || gpa < lo
            || end > hi
            || self
                .slots
                .iter()
                .any(|s| s.id == id || (gpa < s.gpa + s.size() && s.gpa < end));
        if bad {
            return Err(Invalid);
        }
        let mem = MmapRam::new(size).map_err(|_| Invalid)?;
        let mut bytes = vec![0u8; size as usize];
        abi::vmm::fill_slot_pattern(&mut bytes, gpa);
        mem.write(0, &bytes).map_err(|_| Invalid)?;
        self.slots.push(Slot {
            id,
            gpa,
            mem: Arc::new(mem),
            readonly,
        });
        self.slot_generation += 1;
        Ok(())
    }

    /// Deletes memslot `id`.
    pub fn remove_slot(&mut self, id: u64) -> Result<(), Invalid> {
        let i = self.slots.iter().position(|s| s.id == id).ok_or(Invalid)?;
        self.slots.remove(i);
        self.slot_generation += 1;
        Ok(())
    }

    /// The memslots, when they changed since generation `seen`: (generation, slots).
    pub fn slots(&self, seen: u64) -> Option<(u64, Vec<Slot>)> {
        (seen != self.slot_generation).then(|| (self.slot_generation, self.slots.clone()))
    }

    /// A guest write of `data` at `addr`: whether a device took it (no exit to the VMM).
    pub fn write(&mut self, space: Space, addr: u64, data: &[u8]) -> bool {
        let mut b = [0u8; 8];
        let n = data.len().min(8);
        b[..n].copy_from_slice(&data[..n]);
        let value = u64::from_le_bytes(b);
        if let Some(e) = self.ioeventfds.iter_mut().find(|e| {
            e.irqfd.is_none()
                && e.space == space
                && e.addr == addr
                && (e.len == 0 || e.len == data.len())
                && e.datamatch.is_none_or(|d| d == value)
        }) {
            e.count += 1;
            return true;
        }
        let end = addr + data.len() as u64;
        let zoned = self
            .zones
            .iter()
            .any(|z| z.space == space && addr >= z.addr && end <= z.addr + z.size);
        if zoned && self.ring.len() < RING_ENTRIES {
            self.ring.push((addr, b));
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ioeventfds_match_address_length_and_data() {
        let mut d = Devices::default();
        let any = d
            .add_ioeventfd(Space::Pio, 0x10, 0, None)
            .expect("any length");
        let matched = d
            .add_ioeventfd(Space::Pio, 0x20, 1, Some(0x42))
            .expect("datamatch");
        assert!(d.write(Space::Pio, 0x10, &[1, 2]));
        assert!(!d.write(Space::Mmio, 0x10, &[1, 2]), "another space");
        assert!(d.write(Space::Pio, 0x20, &[0x42]));
        assert!(
            !d.write(Space::Pio, 0x20, &[0x43]),
            "no data match: an exit"
        );
        assert_eq!(d.take_count(any), Some(1));
        assert_eq!(d.take_count(any), Some(0), "reading resets");
        assert_eq!(d.take_count(matched), Some(1));
        assert_eq!(d.take_count(9), None);
        assert_eq!(d.add_ioeventfd(Space::Pio, 0, 0, Some(1)), Err(Invalid));
    }

    #[test]
    fn ioapic_pins_interrupt_by_edge_and_by_level_until_the_eoi() {
        use abi::x86::ioapic::{IOREGSEL, IOWIN, LEVEL, REMOTE_IRR, redirection};
        let mut io = Ioapic::default();
        let route = |io: &mut Ioapic, pin: u32, low: u64, dest: u32| {
            io.write(IOREGSEL, redirection(pin) + 1);
            io.write(IOWIN, dest << 24);
            io.write(IOREGSEL, redirection(pin));
            io.write(IOWIN, low as u32)
        };
        assert!(io.set_line(1, true).is_empty(), "masked at reset");
        io.set_line(1, false);
        assert!(route(&mut io, 1, 0x41, 0).is_empty());
        assert_eq!(io.set_line(1, true), vec![(0, 0x41)], "a rising edge");
        assert!(io.set_line(1, true).is_empty(), "held high: no second edge");
        io.set_line(2, true);
        assert_eq!(
            route(&mut io, 2, LEVEL | 0x42, 1),
            vec![(1, 0x42)],
            "unmasked while high"
        );
        io.write(IOREGSEL, redirection(2));
        assert_ne!(
            u64::from(io.read(IOWIN)) & REMOTE_IRR,
            0,
            "awaiting the EOI"
        );
        assert!(io.set_line(2, true).is_empty(), "remote IRR holds it");
        assert_eq!(io.eoi(0x42), vec![(1, 0x42)], "still high: again");
        io.set_line(2, false);
        assert!(io.eoi(0x42).is_empty(), "low: done");
        io.write(IOREGSEL, abi::x86::ioapic::VERSION);
        assert_eq!(io.read(IOWIN), 0x17_0011);
    }

    #[test]
    fn memslots_are_checked_filled_and_counted() {
        let mut d = Devices::default();
        let (lo, hi) = (0x4000_0000, 0x4400_0000);
        assert_eq!(d.slots(0).map(|(g, _)| g), None, "nothing changed yet");
        d.add_slot(1, lo, 0x2000, false, lo, hi).expect("a slot");
        assert_eq!(
            d.add_slot(1, lo + 0x4000, 0x1000, false, lo, hi),
            Err(Invalid),
            "id"
        );
        assert_eq!(
            d.add_slot(2, lo + 0x1000, 0x1000, false, lo, hi),
            Err(Invalid),
            "overlap"
        );
        assert_eq!(
            d.add_slot(2, lo - 0x1000, 0x1000, false, lo, hi),
            Err(Invalid),
            "below"
        );
        assert_eq!(
            d.add_slot(2, lo + 0x4000, 0x800, false, lo, hi),
            Err(Invalid),
            "size"
        );
        let (g, slots) = d.slots(0).expect("a change");
        assert_eq!((g, slots.len()), (1, 1));
        let mut b = [0u8; 8];
        slots[0].mem.read(8, &mut b).expect("slot memory");
        assert_eq!(u64::from_le_bytes(b), abi::vmm::slot_pattern(lo + 8));
        assert!(d.slots(g).is_none());
        d.remove_slot(1).expect("removal");
        assert_eq!(d.slots(g).map(|(g, s)| (g, s.len())), Some((2, 0)));
        assert_eq!(d.remove_slot(1), Err(Invalid));
    }

    #[test]
    fn coalesced_writes_queue_inside_their_zone_only() {
        let mut d = Devices::default();
        d.add_zone(Space::Mmio, 0x1000, 0x100).expect("zone");
        assert!(d.write(Space::Mmio, 0x1000, &7u64.to_le_bytes()));
        assert!(d.write(Space::Mmio, 0x10f8, &9u64.to_le_bytes()));
        assert!(
            !d.write(Space::Mmio, 0x10fc, &1u64.to_le_bytes()),
            "crosses the end"
        );
        assert_eq!(d.drain(), (2, 0x1000, 9));
        assert_eq!(d.drain(), (0, 0, 0));
    }
}
