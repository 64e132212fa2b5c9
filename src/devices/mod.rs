//! Guest-visible devices: legacy PC devices on the port bus, virtio-mmio
//! devices on the MMIO bus.

pub mod boot_timer;
pub mod bus;
pub mod legacy;
pub mod virtio;

use vmm_sys_util::eventfd::EventFd;

/// An interrupt line: an eventfd KVM turns into a guest IRQ (irqfd).
pub struct IrqLine(pub EventFd);

impl vm_superio::Trigger for IrqLine {
    type E = std::io::Error;

    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}
