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
    /// Rung after every post (a count, so that a waiter that looked at its mailbox under the
    /// lock cannot miss a post made after that).
    bell: Mutex<u64>,
    rung: Condvar,
}

impl IpiBus {
    /// Mailboxes for `n` vCPUs with x2APIC IDs `first..first + n`.
    pub fn new(first: usize, n: usize) -> Self {
        Self {
            first,
            fixed: (0..n).map(|_| Default::default()).collect(),
            nmi: (0..n).map(|_| AtomicBool::new(false)).collect(),
            bell: Mutex::new(0),
            rung: Condvar::new(),
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
            self.ring();
        }
    }

    /// Posts an NMI to vCPU `dest`.
    pub fn post_nmi(&self, dest: usize) {
        if let Some(m) = self.nmi.get(self.index(dest)) {
            m.store(true, Ordering::Release);
            self.ring();
        }
    }

    fn ring(&self) {
        if let Ok(mut b) = self.bell.lock() {
            *b = b.wrapping_add(1);
        }
        self.rung.notify_all();
    }

    /// Whether vCPU `me` has mail waiting (without taking it).
    fn has_mail(&self, me: usize) -> bool {
        let me = self.index(me);
        self.fixed
            .get(me)
            .is_some_and(|m| m.iter().any(|w| w.load(Ordering::Acquire) != 0))
            || self.nmi.get(me).is_some_and(|n| n.load(Ordering::Acquire))
    }

    /// Waits until vCPU `me` has mail or `timeout` passed (a halted vCPU: an IPI wakes it at
    /// once, the timeout bounds how late it looks at its timer and at the run's end).
    pub fn wait(&self, me: usize, timeout: Duration) {
        let Ok(mut b) = self.bell.lock() else {
            return;
        };
        let until = std::time::Instant::now() + timeout;
        while !self.has_mail(me) {
            let left = until.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return;
            }
            b = match self.rung.wait_timeout(b, left) {
                Ok((g, _)) => g,
                Err(_) => return,
            };
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
    fn a_post_wakes_a_waiter_and_an_idle_wait_times_out() {
        let bus = Arc::new(IpiBus::new(4, 2));
        let t0 = std::time::Instant::now();
        bus.wait(5, Duration::from_millis(20));
        assert!(
            t0.elapsed() >= Duration::from_millis(20),
            "no mail: the whole timeout"
        );
        let poster = {
            let bus = bus.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(10));
                bus.post(5, 0x30);
            })
        };
        let t1 = std::time::Instant::now();
        bus.wait(5, Duration::from_secs(10));
        assert!(
            t1.elapsed() < Duration::from_secs(5),
            "the post woke the waiter"
        );
        poster.join().expect("the posting thread");
        assert_eq!(bus.take(5).0[0], 1 << 0x30);
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
