//! Several vCPUs on the model: one Unicorn engine per vCPU, each in its own thread, taking
//! turns. Only the vCPU holding the turn executes guest code (a fair ticket lock, handed on
//! after each slice of at most [`SLICE`]), so guest atomics stay atomic without Unicorn's
//! parallel TCG mode, which it does not offer; this is QEMU's single-threaded TCG way of
//! running an SMP guest. IPIs travel on the [`IpiBus`]: a sender sets the vector in the
//! target's mailbox, the target moves it into its IRR before its next slice.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::Duration;

/// Longest stretch one vCPU runs while others wait for the turn.
pub const SLICE: Duration = Duration::from_micros(100);

/// The fair turn: a ticket lock whose waiters sleep on a condition variable.
#[derive(Debug, Default)]
pub struct Turn {
    /// (next ticket to hand out, ticket being served).
    tickets: Mutex<(u64, u64)>,
    served: Condvar,
}

impl Turn {
    /// Waits for the turn, in arrival order; returns early (without the turn) once `stop` is
    /// set. Returns whether the turn was taken.
    pub fn take(&self, stop: &AtomicBool) -> bool {
        if stop.load(Ordering::Acquire) {
            return false;
        }
        let Ok(mut t) = self.tickets.lock() else {
            return false;
        };
        let mine = t.0;
        t.0 += 1;
        while t.1 != mine {
            // Once the run stops nobody needs the order any more: every waiter sees `stop`
            // within a millisecond and leaves, and the holder leaves after its slice.
            if stop.load(Ordering::Acquire) {
                return false;
            }
            t = match self.served.wait_timeout(t, Duration::from_millis(1)) {
                Ok((g, _)) => g,
                Err(_) => return false,
            };
        }
        true
    }

    /// Waits for the turn (see [`Turn::take`]); the guard hands it on when dropped.
    pub fn hold<'a>(&'a self, stop: &AtomicBool) -> Option<TurnGuard<'a>> {
        self.take(stop).then_some(TurnGuard(self))
    }

    /// Hands the turn on.
    pub fn pass(&self) {
        if let Ok(mut t) = self.tickets.lock() {
            t.1 += 1;
        }
        self.served.notify_all();
    }
}

/// The turn, held until dropped.
#[derive(Debug)]
pub struct TurnGuard<'a>(&'a Turn);

impl Drop for TurnGuard<'_> {
    fn drop(&mut self) {
        self.0.pass();
    }
}

/// Interrupt mailboxes, one per vCPU, by x2APIC ID (the IDs `first`.. of the VM's vCPUs).
#[derive(Debug)]
pub struct IpiBus {
    first: usize,
    fixed: Vec<[AtomicU64; 4]>,
    nmi: Vec<AtomicBool>,
}

impl IpiBus {
    /// Mailboxes for `n` vCPUs with x2APIC IDs `first..first + n`.
    pub fn new(first: usize, n: usize) -> Self {
        Self {
            first,
            fixed: (0..n).map(|_| Default::default()).collect(),
            nmi: (0..n).map(|_| AtomicBool::new(false)).collect(),
        }
    }

    /// The vCPUs' x2APIC IDs.
    pub fn ids(&self) -> std::ops::Range<usize> {
        self.first..self.first + self.fixed.len()
    }

    fn index(&self, id: usize) -> usize {
        id.wrapping_sub(self.first)
    }

    /// Posts fixed `vector` to vCPU `dest` (ignored when there is no such vCPU, as an IPI to
    /// an absent APIC is lost).
    pub fn post(&self, dest: usize, vector: u8) {
        if let Some(m) = self.fixed.get(self.index(dest)) {
            m[usize::from(vector / 64)].fetch_or(1 << (vector % 64), Ordering::AcqRel);
        }
    }

    /// Posts an NMI to vCPU `dest`.
    pub fn post_nmi(&self, dest: usize) {
        if let Some(m) = self.nmi.get(self.index(dest)) {
            m.store(true, Ordering::Release);
        }
    }

    /// Takes vCPU `me`'s mail: the fixed vectors (IRR words) and whether an NMI came.
    pub fn take(&self, me: usize) -> ([u64; 4], bool) {
        let mut irr = [0u64; 4];
        let me = self.index(me);
        if let Some(m) = self.fixed.get(me) {
            for (w, a) in irr.iter_mut().zip(m) {
                *w = a.swap(0, Ordering::AcqRel);
            }
        }
        let nmi = self
            .nmi
            .get(me)
            .is_some_and(|n| n.swap(false, Ordering::AcqRel));
        (irr, nmi)
    }
}

/// What the vCPU threads of one multi-vCPU run share.
#[derive(Debug)]
pub struct Smp<'a> {
    /// The turn.
    pub turn: &'a Turn,
    /// Set when the run ends (the first vCPU whose run ended sets it).
    pub stop: &'a AtomicBool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn mail_is_taken_once() {
        let bus = IpiBus::new(0, 2);
        bus.post(1, 0x41);
        bus.post(1, 0xf0);
        bus.post(7, 0x41);
        bus.post_nmi(1);
        let (irr, nmi) = bus.take(1);
        assert_eq!(irr[1], 1 << 1);
        assert_eq!(irr[3], 1 << 0x30);
        assert!(nmi);
        assert_eq!(bus.take(1), ([0; 4], false));
        assert_eq!(bus.take(0), ([0; 4], false));
    }

    #[test]
    fn the_turn_is_exclusive_and_ends_with_stop() {
        let turn = Arc::new(Turn::default());
        let stop = Arc::new(AtomicBool::new(false));
        let inside = Arc::new(AtomicU64::new(0));
        let threads: Vec<_> = (0..3)
            .map(|_| {
                let (turn, stop, inside) = (turn.clone(), stop.clone(), inside.clone());
                std::thread::spawn(move || {
                    for _ in 0..50 {
                        if !turn.take(&stop) {
                            return;
                        }
                        assert_eq!(inside.fetch_add(1, Ordering::SeqCst), 0);
                        inside.fetch_sub(1, Ordering::SeqCst);
                        turn.pass();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("a turn-taking thread");
        }
        // Once the run stops the turn is not taken, held or free.
        let held = Turn::default();
        assert!(held.take(&stop));
        stop.store(true, Ordering::SeqCst);
        assert!(!held.take(&stop));
        assert!(!Turn::default().take(&stop));
    }
}
