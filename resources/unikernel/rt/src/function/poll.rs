//! When the serving loop stops polling the device and sleeps.
//!
//! A sleep costs the guest a handful of VM exits: reading and acknowledging the
//! device's interrupt status (two exits to the VMM, none with virtio-pci's MSI-X),
//! the wait gate and the interrupt, and, when the interrupt for buffers already
//! handled is still pending, one more round of the gate and a status read. Under kvm_pvm each exit
//! takes about 33 µs, on hardware virtualization a microsecond or two. Polling the
//! used rings from ring 3 costs only the CPU, so after packets move the loop polls
//! for a while before it sleeps, for two kinds of waits separately: for the device
//! to return what was sent (its thread in the VMM answers within microseconds) and
//! for new traffic (as slow as the peer).
//!
//! How long: never longer than a sleep would cost ([`EXITS_PER_SLEEP`] times the
//! measured cost of an exit, at most [`MAX_WINDOW`]), the classic spin-then-block
//! bound; within that, as long as polling pays. A poll that finds work widens the
//! window to at least twice the time the work took to come; one that finds
//! nothing shrinks it by a quarter. The second rule matters on a host short of
//! CPUs: there the spinning vCPU can keep the very VMM thread that would bring the
//! work from running, so that every poll ends empty-handed and only delays the
//! sleep that would let that thread run.
//! Every [`EXPLORE`]th wait polls for the longest window anyway, to notice when
//! polling pays again. An idle function stops spinning within the window and costs
//! no CPU.

/// Exits one sleep costs, about: status read, acknowledgement, the gate (with
/// its interrupt), and a status read after a pending interrupt ends the first
/// sleep at once.
pub const EXITS_PER_SLEEP: u64 = 4;
/// Shortest window, in TSC cycles (about 12 µs at 2.6 GHz).
pub const MIN_WINDOW: u64 = 1 << 15;
/// Longest window (about 200 µs at 2.6 GHz, KVM's default halt polling).
pub const MAX_WINDOW: u64 = 1 << 19;
/// One wait in this many polls for the longest window.
pub const EXPLORE: u32 = 16;

/// What a wait is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wait {
    /// The device returning sent buffers (or the peer's credit for more).
    Sent = 0,
    /// New traffic from a peer.
    Traffic = 1,
}

#[derive(Debug)]
pub struct Poller {
    /// When packets last moved.
    active_at: u64,
    /// Moving average of the cycles one exit takes; 0 before the first sample.
    exit_cycles: u64,
    /// Per kind of wait: the current window and the waits so far.
    windows: [u64; 2],
    waits: [u32; 2],
}

impl Poller {
    /// Before any activity there is nothing to poll for.
    pub const fn new() -> Poller {
        Poller {
            active_at: 0,
            exit_cycles: 0,
            windows: [MAX_WINDOW; 2],
            waits: [0; 2],
        }
    }

    /// Packets moved (arrived or went out) at `now`.
    pub fn active(&mut self, now: u64) {
        self.active_at = now;
    }

    /// Starts a wait of `kind` at `now`: until when (TSC) to poll, or `None` to
    /// sleep at once.
    pub fn deadline(&mut self, kind: Wait, now: u64) -> Option<u64> {
        let longest = self.longest();
        let k = kind as usize;
        self.waits[k] = self.waits[k].wrapping_add(1);
        let window = if self.waits[k].is_multiple_of(EXPLORE) {
            longest
        } else {
            self.windows[k].clamp(MIN_WINDOW, longest)
        };
        let deadline = self.active_at.wrapping_add(window);
        // Signed: the deadline may lie behind `now`.
        (deadline.wrapping_sub(now).cast_signed() > 0).then_some(deadline)
    }

    /// A wait of `kind` that polled found work at `now` (`Some`) or gave up.
    pub fn polled(&mut self, kind: Wait, found_at: Option<u64>) {
        let longest = self.longest();
        let window = &mut self.windows[kind as usize];
        *window = match found_at {
            Some(now) => (*window).max(now.wrapping_sub(self.active_at).saturating_mul(2)),
            None => *window - *window / 4,
        }
        .clamp(MIN_WINDOW, longest);
    }

    /// Whether the cost of an exit has been measured yet.
    pub fn measured_exits(&self) -> bool {
        self.exit_cycles != 0
    }

    /// `exits` VM exits took `cycles` in all (before a sleep); no exits, no sample.
    pub fn measured(&mut self, exits: u64, cycles: u64) {
        if exits == 0 {
            return;
        }
        // A sample stretched by the host descheduling the vCPU counts as at most
        // the longest window.
        let sample = (cycles / exits.max(1)).min(MAX_WINDOW);
        self.exit_cycles = if self.exit_cycles == 0 {
            sample
        } else {
            (self.exit_cycles * 7 + sample) / 8
        };
    }

    /// The longest window: what a sleep costs.
    pub fn longest(&self) -> u64 {
        (self.exit_cycles * EXITS_PER_SLEEP).clamp(MIN_WINDOW, MAX_WINDOW)
    }
}

impl Default for Poller {
    fn default() -> Poller {
        Poller::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 33 µs at 2.6 GHz.
    const EXIT: u64 = 85_800;

    #[test]
    fn polls_no_longer_than_a_sleep_costs() {
        let mut poller = Poller::new();
        assert_eq!(
            poller.deadline(Wait::Traffic, 1 << 40),
            None,
            "nothing to poll for before any activity"
        );
        assert_eq!(poller.longest(), MIN_WINDOW);
        poller.measured(0, 100);
        assert!(
            !poller.measured_exits(),
            "a sleep without exits says nothing"
        );
        poller.measured(2, 2 * EXIT);
        assert!(poller.measured_exits());
        poller.measured(0, 100);
        assert_eq!(poller.longest(), 4 * EXIT);
        poller.active(1 << 40);
        assert_eq!(
            poller.deadline(Wait::Traffic, (1 << 40) + 5),
            Some((1 << 40) + 4 * EXIT)
        );
        // Hardware virtualization: a couple of microseconds per exit.
        let mut fast = Poller::new();
        fast.measured(1, 4000);
        assert_eq!(fast.longest(), MIN_WINDOW);
        // A sample stretched by descheduling moves the average only so far.
        fast.measured(1, 50_000_000);
        assert_eq!(fast.exit_cycles, (4000 * 7 + MAX_WINDOW) / 8);
        for _ in 0..100 {
            fast.measured(2, 2 * 500_000);
        }
        assert_eq!(fast.longest(), MAX_WINDOW);
    }

    #[test]
    fn polls_as_long_as_it_pays_per_kind_of_wait() {
        let mut poller = Poller::new();
        poller.measured(1, EXIT);
        let mut now = 1 << 40;
        // New traffic never comes while polling: the window shrinks to the least.
        for _ in 1..EXPLORE {
            poller.active(now);
            let deadline = poller.deadline(Wait::Traffic, now).unwrap();
            poller.polled(Wait::Traffic, None);
            now = deadline + 1000;
        }
        assert_eq!(poller.windows[Wait::Traffic as usize], MIN_WINDOW);
        // Sent buffers come back fast: that window stays.
        poller.active(now);
        assert!(poller.deadline(Wait::Sent, now).is_some());
        poller.polled(Wait::Sent, Some(now + 30_000));
        assert_eq!(poller.windows[Wait::Sent as usize], 4 * EXIT);
        // Every EXPLORE-th wait polls for the longest window, and a late find
        // there widens the window again.
        poller.active(now);
        assert_eq!(
            poller.deadline(Wait::Traffic, now),
            Some(now + poller.longest())
        );
        poller.polled(Wait::Traffic, Some(now + 100_000));
        assert_eq!(poller.windows[Wait::Traffic as usize], 200_000);
        poller.active(now);
        assert_eq!(poller.deadline(Wait::Traffic, now), Some(now + 200_000));
        // A wait that starts after the window has passed sleeps at once.
        assert_eq!(poller.deadline(Wait::Traffic, now + 200_000), None);
    }
}
