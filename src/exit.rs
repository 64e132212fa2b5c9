//! How a running microVM ends: a guest reset, a guest shutdown, or a fault.
//! vCPU threads and devices raise it; the main thread's event loop acts on it.

use std::sync::Mutex;

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Why the VMM should stop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitReason {
    /// The guest asked for a reset (i8042, triple fault, PSCI-like system event).
    GuestReset,
    /// The guest powered off.
    GuestShutdown,
    /// A vCPU could not go on.
    Fault(String),
}

impl ExitReason {
    /// The process exit code Firecracker uses for the same reason.
    pub fn exit_code(&self) -> i32 {
        match self {
            ExitReason::GuestReset | ExitReason::GuestShutdown => 0,
            ExitReason::Fault(_) => 1,
        }
    }
}

/// A one-shot "stop now" signal that the event loop polls as an eventfd.
pub struct ExitSignal {
    evt: EventFd,
    reason: Mutex<Option<ExitReason>>,
}

impl ExitSignal {
    pub fn new() -> std::io::Result<Self> {
        Ok(ExitSignal {
            evt: EventFd::new(EFD_NONBLOCK)?,
            reason: Mutex::new(None),
        })
    }

    /// Records `reason` unless an earlier one is already recorded, and wakes the event loop.
    pub fn raise(&self, reason: ExitReason) {
        if let Ok(mut slot) = self.reason.lock() {
            slot.get_or_insert(reason);
        }
        // A full eventfd counter still wakes the loop, so a failed write loses nothing.
        let _ = self.evt.write(1);
    }

    /// The first reason raised, if any.
    pub fn reason(&self) -> Option<ExitReason> {
        self.reason.lock().ok().and_then(|r| r.clone())
    }

    pub fn event_fd(&self) -> &EventFd {
        &self.evt
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_reason_wins_and_wakes_the_loop() {
        let signal = ExitSignal::new().unwrap();
        assert_eq!(signal.reason(), None);
        signal.raise(ExitReason::GuestReset);
        signal.raise(ExitReason::Fault("later".into()));
        assert_eq!(signal.reason(), Some(ExitReason::GuestReset));
        assert_eq!(signal.event_fd().read().unwrap(), 2);
        assert_eq!(ExitReason::GuestReset.exit_code(), 0);
        assert_eq!(ExitReason::Fault(String::new()).exit_code(), 1);
    }
}
