//! Guest-visible devices: legacy PC devices on the port bus, virtio-mmio
//! devices on the MMIO bus.

pub mod boot_timer;
pub mod bus;
pub mod legacy;
pub mod manager;
pub mod pci;
pub mod rate_limiter;
pub mod virtio;

use std::os::fd::{FromRawFd, RawFd};

use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::timerfd::TimerFd;

/// A device's host side, as the main thread's event loop serves it: the fds
/// it wants watched and its work when one is readable. Each device handles
/// its own events, so the event loop knows none of them.
pub trait EventSubscriber: Send {
    /// The fds to watch; `on_ready` gets the index of the one that fired.
    fn fds(&self) -> Vec<RawFd>;
    /// Does the work for fd `index` being readable.
    fn on_ready(&mut self, index: usize);
    /// Whether fd `index` is worth watching now: a device holds off a source
    /// it cannot take more from, as the serial console does with stdin while
    /// the guest's input FIFO is full.
    fn wants(&self, _index: usize) -> bool {
        true
    }
}

/// An interrupt line: an eventfd KVM turns into a guest IRQ (irqfd).
pub struct IrqLine(pub EventFd);

impl vm_superio::Trigger for IrqLine {
    type E = std::io::Error;

    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}

/// A timer whose read never blocks, so a stale readiness report costs nothing.
pub fn nonblocking_timer() -> std::io::Result<TimerFd> {
    // SAFETY: timerfd_create takes no pointers; the result is checked.
    let fd = unsafe {
        libc::timerfd_create(
            libc::CLOCK_MONOTONIC,
            libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh timerfd that nothing else owns.
    Ok(unsafe { TimerFd::from_raw_fd(fd) })
}
