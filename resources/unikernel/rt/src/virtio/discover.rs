//! The virtio devices the VMM gave this guest: on PCI when ACPI describes a PCI
//! configuration space (ember's `--enable-pci`), else the virtio-mmio windows the
//! command line announces.

use super::{DeviceTransport, Error, MmioTransport, PciFunction, pci_functions};
use crate::cmdline::virtio_mmio_devices;
use crate::{acpi, irq};

/// A device found and not driven yet.
pub enum Found {
    /// A virtio-mmio window, probed, and its IOAPIC pin.
    Mmio(MmioTransport, u32),
    Pci(PciFunction),
}

impl Found {
    /// Routes the device's interrupt here and hands over its transport.
    pub fn open(self) -> Result<DeviceTransport, Error> {
        match self {
            Found::Mmio(transport, line) => {
                irq::enable(line).map_err(|irq::BadIrq(line)| Error::Irq(line))?;
                Ok(DeviceTransport::Mmio(transport))
            }
            Found::Pci(function) => function.open().map(DeviceTransport::Pci),
        }
    }
}

/// Every virtio device, with its device type; allocates nothing, so a guest
/// without a heap can look too.
pub fn devices(cmdline: &[u8]) -> impl Iterator<Item = (u32, Found)> + '_ {
    let ecam = acpi::ecam_base(acpi::identity_read).and_then(|e| usize::try_from(e).ok());
    let pci = ecam.map(|ecam| {
        // SAFETY: the MCFG gives bus 0's configuration space, identity-mapped, and
        // the caller drives each function once.
        unsafe { pci_functions(ecam) }.map(|f| (f.device_id, Found::Pci(f)))
    });
    let mmio = pci.is_none().then(|| {
        virtio_mmio_devices(cmdline).flatten().filter_map(|device| {
            let base = device.mapped_base()?;
            // SAFETY: the VMM announced a virtio-mmio window at this identity-mapped
            // address; each announcement is taken once.
            let transport = unsafe { MmioTransport::new(base) };
            let id = transport.probe().ok()?;
            Some((id, Found::Mmio(transport, device.irq)))
        })
    });
    pci.into_iter().flatten().chain(mmio.into_iter().flatten())
}

/// The first device of each type in `ids`.
pub fn find<const N: usize>(cmdline: &[u8], ids: [u32; N]) -> [Option<Found>; N] {
    let mut found = [const { None }; N];
    for (id, device) in devices(cmdline) {
        if let Some(at) = ids.iter().position(|&wanted| wanted == id) {
            found[at].get_or_insert(device);
        }
    }
    found
}
