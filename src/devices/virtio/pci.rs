//! The virtio-pci transport (virtio 1.2 §4.1), modern only: a PCI function
//! whose BAR 0 holds the common configuration, the ISR, the device
//! configuration, one notification slot per queue and the MSI-X table and
//! pending bits, each found through a vendor capability. Interrupts are
//! MSI-X only (no INTx), as in Firecracker: a driver that does not enable
//! MSI-X gets none.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use virtio_queue::QueueT;

use super::transport::{Error, Transport, TransportState, VirtioTransport};
use super::{Interrupt, VirtioDevice};
use crate::devices::bus::BusDevice;
use crate::devices::pci::config::{ConfigSpace, Identity};
use crate::devices::pci::msix::{self, Msix, MsixState, MsixVectors};
use crate::devices::pci::PciFunction;
use crate::vstate::memory::GuestMemoryMmap;
use crate::vstate::vm::Vm;

/// The virtio PCI vendor, and the first modern device id (plus the type).
const VENDOR: u16 = 0x1af4;
const DEVICE_BASE: u16 = 0x1040;
/// Modern devices have revision 1 and a subsystem id of at least 0x40.
const REVISION: u8 = 1;
const SUBSYSTEM: u16 = 0x40;

/// Vendor-specific capability id, and the virtio structures it points at.
const VENDOR_CAPABILITY: u8 = 0x09;
const CAP_COMMON: u8 = 1;
const CAP_NOTIFY: u8 = 2;
const CAP_ISR: u8 = 3;
const CAP_DEVICE: u8 = 4;
const CAP_PCI_CFG: u8 = 5;

/// Where each structure sits in BAR 0, a page apart.
const COMMON: u64 = 0x0000;
const COMMON_SIZE: u64 = common::SIZE as u64;
const ISR: u64 = 0x1000;
const DEVICE: u64 = 0x2000;
const DEVICE_SIZE: u64 = 0x1000;
pub const NOTIFY: u64 = 0x3000;
/// Bytes between two queues' notification addresses.
pub const NOTIFY_MULTIPLIER: u32 = 4;
const MSIX_TABLE: u64 = 0x4000;
const MSIX_PBA: u64 = 0x5000;
/// BAR 0's size.
/// The parts of BAR 0 whose writes KVM may hold back until the guest next
/// exits (`vstate::coalesced`), as (offset, length): the common configuration
/// on either side of the device status, whose writes start and reset the
/// device and must act at once. A driver sets everything else up before it
/// sets DRIVER_OK, and reads exit as usual, after the writes held before them.
pub const HELD_WRITES: [(u64, u64); 2] = [
    (COMMON, common::DEVICE_STATUS as u64),
    (
        COMMON + common::QUEUE_SELECT as u64,
        (common::SIZE - common::QUEUE_SELECT) as u64,
    ),
];
pub const BAR_SIZE: u64 = crate::arch::x86_64::layout::PCI_BAR_SIZE;
const _: () = assert!(MSIX_PBA + 0x1000 <= BAR_SIZE);

/// The common configuration's fields (virtio 1.2 §4.1.4.3).
mod common {
    pub const DEVICE_FEATURE_SELECT: usize = 0x00;
    pub const DEVICE_FEATURE: usize = 0x04;
    pub const DRIVER_FEATURE_SELECT: usize = 0x08;
    pub const DRIVER_FEATURE: usize = 0x0c;
    pub const CONFIG_MSIX_VECTOR: usize = 0x10;
    pub const NUM_QUEUES: usize = 0x12;
    pub const DEVICE_STATUS: usize = 0x14;
    pub const CONFIG_GENERATION: usize = 0x15;
    pub const QUEUE_SELECT: usize = 0x16;
    pub const QUEUE_SIZE: usize = 0x18;
    pub const QUEUE_MSIX_VECTOR: usize = 0x1a;
    pub const QUEUE_ENABLE: usize = 0x1c;
    pub const QUEUE_NOTIFY_OFF: usize = 0x1e;
    pub const QUEUE_DESC: usize = 0x20;
    pub const QUEUE_DRIVER: usize = 0x28;
    pub const QUEUE_DEVICE: usize = 0x30;
    /// The structure's size: the last queue address field ends it.
    pub const SIZE: usize = QUEUE_DEVICE + 8;
}

/// What a snapshot keeps of a virtio-pci function.
#[derive(Serialize, Deserialize)]
pub struct PciTransportState {
    transport: TransportState,
    config: Vec<u32>,
    msix: MsixState,
}

/// A virtio device as a PCI function.
pub struct PciTransport {
    transport: Transport,
    config: ConfigSpace,
    msix: Msix,
    vectors: Arc<MsixVectors>,
    /// Offsets of the MSI-X and the PCI configuration access capabilities.
    msix_capability: usize,
    pci_cfg_capability: usize,
}

/// A function's PCI side, before it has its device.
struct Function {
    config: ConfigSpace,
    msix: Msix,
    vectors: Arc<MsixVectors>,
    msix_capability: usize,
    pci_cfg_capability: usize,
}

impl Function {
    /// The header and capabilities of a device of `device_type` with
    /// `queues` queues, BAR 0 at `bar`, one MSI-X vector per queue and one
    /// for configuration changes, on GSIs of `vm`.
    fn new(device_type: u32, queues: usize, vm: &Vm, bar: u64) -> Result<Self, PciError> {
        let count = u16::try_from(queues + 1).map_err(|_| PciError::TooManyQueues)?;
        let gsi = vm.gsi_routes().allocate(count).map_err(PciError::Gsi)?;
        let vectors = Arc::new(MsixVectors::new(vm.fd(), gsi, count, queues)?);
        let msix = Msix::new(vectors.clone(), vm.gsi_routes().clone());
        let mut config = ConfigSpace::new(&Identity {
            vendor: VENDOR,
            device: u16::try_from(device_type)
                .ok()
                .and_then(|t| DEVICE_BASE.checked_add(t))
                .ok_or(PciError::DeviceType(device_type))?,
            revision: REVISION,
            class: class(device_type),
            subsystem_vendor: VENDOR,
            subsystem: SUBSYSTEM,
        });
        config.set_bar0(bar, BAR_SIZE);
        let notify_size = queues as u64 * u64::from(NOTIFY_MULTIPLIER);
        // What a driver needs first comes first (MSI-X, then the structures;
        // the ISR status, which MSI-X makes unnecessary, last), so one that
        // stops once it has them reads fewer registers.
        let offset = |at: u64| u32::try_from(at).unwrap_or(0);
        let (body, writable) = msix.capability(offset(MSIX_TABLE), offset(MSIX_PBA));
        let msix_capability = config.add_capability(msix::CAPABILITY_ID, &body, &writable);
        for (kind, offset, length) in [
            (CAP_COMMON, COMMON, COMMON_SIZE),
            (CAP_NOTIFY, NOTIFY, notify_size),
            (CAP_DEVICE, DEVICE, DEVICE_SIZE),
            (CAP_ISR, ISR, 1),
        ] {
            config.add_capability(VENDOR_CAPABILITY, &structure(kind, offset, length), &[]);
        }
        // The configuration access window: the driver picks bar, offset and
        // length, then reads or writes the data dword.
        let pci_cfg_capability = config.add_capability(
            VENDOR_CAPABILITY,
            &structure(CAP_PCI_CFG, 0, 0),
            &[0, 0x0000_00ff, u32::MAX, u32::MAX, u32::MAX],
        );
        Ok(Function {
            config,
            msix,
            vectors,
            msix_capability,
            pci_cfg_capability,
        })
    }

    fn with(self, transport: Transport) -> PciTransport {
        PciTransport {
            transport,
            config: self.config,
            msix: self.msix,
            vectors: self.vectors,
            msix_capability: self.msix_capability,
            pci_cfg_capability: self.pci_cfg_capability,
        }
    }
}

impl PciTransport {
    /// `device` as a PCI function with BAR 0 at `bar`, interrupting through
    /// MSI-X vectors on GSIs of `vm`.
    pub fn new(
        device: Box<dyn VirtioDevice>,
        mem: GuestMemoryMmap,
        vm: &Vm,
        bar: u64,
    ) -> Result<Self, PciError> {
        let function = Function::new(
            device.device_type(),
            device.queue_max_sizes().len(),
            vm,
            bar,
        )?;
        let interrupt = Arc::new(Interrupt::msix(function.vectors.clone()));
        Ok(function.with(Transport::new(device, mem, interrupt)?))
    }

    pub fn save_state(&self) -> PciTransportState {
        PciTransportState {
            transport: self.transport.save_state(),
            config: self.config.save(),
            msix: self.msix.save(),
        }
    }

    /// A function for `device` in a saved state, running again: its MSI-X
    /// table, masks and pending bits and its routes first, then the
    /// transport, whose device looks at every queue once it runs.
    pub fn restore(
        device: Box<dyn VirtioDevice>,
        mem: GuestMemoryMmap,
        vm: &Vm,
        bar: u64,
        state: &PciTransportState,
    ) -> Result<Self, PciError> {
        let mut function = Function::new(
            device.device_type(),
            device.queue_max_sizes().len(),
            vm,
            bar,
        )?;
        function
            .msix
            .restore(&state.msix)
            .map_err(PciError::State)?;
        let own = [(function.msix_capability, 0xc000_0000)];
        function
            .config
            .restore(&state.config, &own)
            .map_err(PciError::State)?;
        let interrupt = Arc::new(Interrupt::msix(function.vectors.clone()));
        let mut transport = Transport::restore(device, mem, interrupt, &state.transport)?;
        transport.resume()?;
        Ok(function.with(transport))
    }

    /// How the device interrupts: the controller raises configuration
    /// changes through it.
    pub fn interrupt(&self) -> Arc<Interrupt> {
        self.transport.interrupt.clone()
    }

    /// One eventfd per queue, signalled when the guest notifies that queue.
    pub fn queue_events(&self) -> &[vmm_sys_util::eventfd::EventFd] {
        self.transport.queue_events()
    }

    /// The common configuration as the guest reads it.
    fn common_image(&self) -> [u8; common::SIZE] {
        let t = &self.transport;
        let selected = t.queue_select as usize;
        let mut image = [0u8; common::SIZE];
        let mut put = |offset: usize, bytes: &[u8]| {
            if let Some(slot) = image.get_mut(offset..offset + bytes.len()) {
                slot.copy_from_slice(bytes);
            }
        };
        let narrow = |value: usize| u16::try_from(value).unwrap_or(u16::MAX);
        put(
            common::DEVICE_FEATURE_SELECT,
            &t.features_select.to_le_bytes(),
        );
        put(
            common::DEVICE_FEATURE,
            &t.device_features_word().to_le_bytes(),
        );
        put(
            common::DRIVER_FEATURE_SELECT,
            &t.driver_features_select.to_le_bytes(),
        );
        put(
            common::DRIVER_FEATURE,
            &t.driver_features_word().to_le_bytes(),
        );
        put(
            common::CONFIG_MSIX_VECTOR,
            &self.vectors.config_vector().to_le_bytes(),
        );
        put(common::NUM_QUEUES, &narrow(t.queues.len()).to_le_bytes());
        put(common::DEVICE_STATUS, &t.status.to_le_bytes()[..1]);
        put(common::CONFIG_GENERATION, &[0]);
        put(common::QUEUE_SELECT, &narrow(selected).to_le_bytes());
        if let Some(q) = t.selected_queue() {
            put(common::QUEUE_SIZE, &q.size().to_le_bytes());
            let vector = self.vectors.queue_vector(selected);
            put(common::QUEUE_MSIX_VECTOR, &vector.to_le_bytes());
            put(common::QUEUE_ENABLE, &u16::from(q.ready()).to_le_bytes());
            put(common::QUEUE_NOTIFY_OFF, &narrow(selected).to_le_bytes());
            put(common::QUEUE_DESC, &q.desc_table().to_le_bytes());
            put(common::QUEUE_DRIVER, &q.avail_ring().to_le_bytes());
            put(common::QUEUE_DEVICE, &q.used_ring().to_le_bytes());
        }
        image
    }

    /// A guest write to the common configuration: each field at its own
    /// width, the 64-bit addresses also as two 32-bit halves.
    fn write_common(&mut self, offset: usize, data: &[u8]) {
        let t = &mut self.transport;
        let selected = t.queue_select as usize;
        let word = <[u8; 2]>::try_from(data).map(u16::from_le_bytes);
        let dword = <[u8; 4]>::try_from(data).map(u32::from_le_bytes);
        match (offset, word, dword) {
            (common::DEVICE_FEATURE_SELECT, _, Ok(value)) => t.features_select = value,
            (common::DRIVER_FEATURE_SELECT, _, Ok(value)) => t.driver_features_select = value,
            (common::DRIVER_FEATURE, _, Ok(value)) => t.set_driver_features_word(value),
            (common::CONFIG_MSIX_VECTOR, Ok(vector), _) => self.vectors.set_config_vector(vector),
            (common::DEVICE_STATUS, _, _) => {
                if let &[status] = data {
                    if status == 0 {
                        self.vectors.reset_assignments();
                    }
                    t.set_status(u32::from(status));
                }
            }
            (common::QUEUE_SELECT, Ok(queue), _) => t.queue_select = u32::from(queue),
            (common::QUEUE_MSIX_VECTOR, Ok(vector), _) => {
                if t.configuring_queues() {
                    self.vectors.set_queue_vector(selected, vector);
                }
            }
            (common::QUEUE_SIZE, Ok(size), _) => {
                if let Some(queue) = t.configurable_queue() {
                    queue.set_size(size);
                }
            }
            (common::QUEUE_ENABLE, Ok(1), _) => {
                if let Some(queue) = t.configurable_queue() {
                    queue.set_ready(true);
                }
            }
            (common::QUEUE_DESC..common::SIZE, _, _) => {
                if let Some(queue) = t.configurable_queue() {
                    set_queue_address(queue, offset, data);
                }
            }
            _ => log::debug!("virtio-pci: ignored write of {data:x?} at common {offset:#x}"),
        }
    }

    /// The guest reads or writes through the configuration access window.
    fn window_access(&mut self, write: bool) {
        let cap = self.pci_cfg_capability;
        let bar = self.config.dword(cap + 4).to_le_bytes()[0];
        let offset = u64::from(self.config.dword(cap + 8));
        let length = self.config.dword(cap + 12) as usize;
        let aligned = matches!(length, 1 | 2 | 4) && offset.is_multiple_of(length as u64);
        if bar != 0 || !aligned {
            return;
        }
        let mut data = self.config.dword(cap + 16).to_le_bytes();
        let data = &mut data[..length];
        if write {
            self.write_bar(offset, data);
        } else {
            self.read_bar(offset, data);
            let mut dword = [0u8; 4];
            dword[..length].copy_from_slice(data);
            self.config.set_dword(cap + 16, u32::from_le_bytes(dword));
        }
    }
}

/// A write to one of the selected queue's ring addresses: a whole 64-bit
/// field, or either 32-bit half.
fn set_queue_address(queue: &mut virtio_queue::Queue, offset: usize, data: &[u8]) {
    let half = |bytes: &[u8]| <[u8; 4]>::try_from(bytes).ok().map(u32::from_le_bytes);
    let (low, high) = match (offset % 8, data.len()) {
        (0, 8) => (half(&data[..4]), half(&data[4..])),
        (0, 4) => (half(data), None),
        (4, 4) => (None, half(data)),
        _ => return,
    };
    match offset - offset % 8 {
        common::QUEUE_DESC => queue.set_desc_table_address(low, high),
        common::QUEUE_DRIVER => queue.set_avail_ring_address(low, high),
        common::QUEUE_DEVICE => queue.set_used_ring_address(low, high),
        _ => {}
    }
}

/// A virtio capability's body (after id and next pointer): its length,
/// the structure's type, BAR 0, and where in it the structure lies; the
/// notification structure adds its multiplier, the access window its data.
fn structure(kind: u8, offset: u64, length: u64) -> Vec<u8> {
    let mut body = vec![0, kind, 0, 0, 0, 0];
    for field in [offset, length] {
        body.extend_from_slice(&u32::try_from(field).unwrap_or(0).to_le_bytes());
    }
    match kind {
        CAP_NOTIFY => body.extend_from_slice(&NOTIFY_MULTIPLIER.to_le_bytes()),
        CAP_PCI_CFG => body.extend_from_slice(&[0; 4]),
        _ => {}
    }
    body[0] = u8::try_from(body.len() + 2).unwrap_or(0);
    body
}

/// The PCI class a device type shows: network and storage have theirs,
/// the others none in particular.
fn class(device_type: u32) -> u32 {
    match device_type {
        1 => 0x02_00_00,
        2 => 0x01_80_00,
        _ => 0xff_00_00,
    }
}

impl PciFunction for PciTransport {
    fn config(&self) -> &ConfigSpace {
        &self.config
    }

    fn read_config(&mut self, offset: usize, data: &mut [u8]) {
        let window = self.pci_cfg_capability + 16;
        if overlaps(offset, data.len(), window) {
            self.window_access(false);
        }
        self.config.read(offset, data);
    }

    fn write_config(&mut self, offset: usize, data: &[u8]) {
        self.config.write(offset, data);
        if overlaps(offset, data.len(), self.msix_capability) {
            let [_, _, low, high] = self.config.dword(self.msix_capability).to_le_bytes();
            let control = u16::from_le_bytes([low, high]);
            self.msix.set_control(control);
        }
        if overlaps(offset, data.len(), self.pci_cfg_capability + 16) {
            self.window_access(true);
        }
    }
}

impl PciTransport {
    /// A guest read in BAR 0, at `offset` into it.
    pub fn read_bar(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        match offset {
            COMMON..COMMON_SIZE => {
                let image = self.common_image();
                let start = usize::try_from(offset).unwrap_or(usize::MAX);
                for (byte, value) in data.iter_mut().zip(image.iter().skip(start)) {
                    *byte = *value;
                }
            }
            ISR => {
                if let Some(first) = data.first_mut() {
                    *first = self.transport.interrupt.take_status().to_le_bytes()[0];
                }
            }
            DEVICE..NOTIFY => self.transport.device.read_config(offset - DEVICE, data),
            MSIX_TABLE..MSIX_PBA => self.msix.read_table(offset - MSIX_TABLE, data),
            MSIX_PBA..BAR_SIZE => self.msix.read_pba(offset - MSIX_PBA, data),
            _ => {}
        }
    }

    /// A guest write in BAR 0.
    pub fn write_bar(&mut self, offset: u64, data: &[u8]) {
        match offset {
            COMMON..COMMON_SIZE => {
                if let Ok(offset) = usize::try_from(offset) {
                    self.write_common(offset, data);
                }
            }
            DEVICE..NOTIFY => self.transport.device.write_config(offset - DEVICE, data),
            NOTIFY..MSIX_TABLE => {
                let queue = (offset - NOTIFY) / u64::from(NOTIFY_MULTIPLIER);
                self.transport
                    .notify_queue(usize::try_from(queue).unwrap_or(usize::MAX));
            }
            MSIX_TABLE..MSIX_PBA => self.msix.write_table(offset - MSIX_TABLE, data),
            _ => log::debug!("virtio-pci: ignored write at BAR offset {offset:#x}"),
        }
    }
}

/// BAR 0 is a device of its own on the MMIO bus.
impl BusDevice for PciTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        self.read_bar(offset, data);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        self.write_bar(offset, data);
    }
}

/// Whether an access of `len` bytes at `offset` touches the dword at `dword`.
fn overlaps(offset: usize, len: usize, dword: usize) -> bool {
    offset < dword + 4 && dword < offset.saturating_add(len)
}

impl VirtioTransport for PciTransport {
    fn transport(&mut self) -> &mut Transport {
        &mut self.transport
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PciError {
    #[error(transparent)]
    Transport(#[from] Error),
    #[error(transparent)]
    Msix(#[from] msix::Error),
    #[error("cannot give a virtio-pci function its interrupts: {0}")]
    Gsi(crate::vstate::vm::Error),
    #[error("a virtio device with more queues than MSI-X vectors")]
    TooManyQueues,
    #[error("virtio device type {0} has no PCI device id")]
    DeviceType(u32),
    #[error("the saved state of a virtio-pci function is invalid: {0}")]
    State(&'static str),
}

#[cfg(test)]
mod tests {
    use virtio_queue::Queue;
    use vmm_sys_util::eventfd::EventFd;

    use super::*;
    use crate::devices::virtio::test_utils::guest_memory;
    use crate::devices::virtio::{Activity, VIRTIO_F_VERSION_1};

    const BAR: u64 = 0xd100_0000;

    /// A device of two queues that uses a buffer on every notification and
    /// has a configuration space of four bytes.
    struct Dummy;

    impl VirtioDevice for Dummy {
        fn device_type(&self) -> u32 {
            2
        }
        fn features(&self) -> u64 {
            1 << VIRTIO_F_VERSION_1
        }
        fn queue_max_sizes(&self) -> &[u16] {
            &[16, 16]
        }
        fn read_config(&self, offset: u64, data: &mut [u8]) {
            super::super::read_config_space(&[1, 2, 3, 4], offset, data);
        }
        fn process_queue(&mut self, _: usize, _: &mut [Queue], _: &GuestMemoryMmap) -> Activity {
            Activity {
                used: true,
                rerun: None,
            }
        }
    }

    /// A function on a real KVM VM (its irqfds and routes need one).
    fn function() -> (Vm, PciTransport) {
        let mem = guest_memory(0x10000);
        let vm = Vm::new(&mem, false).expect("a KVM VM: these tests need /dev/kvm");
        let t = PciTransport::new(Box::new(Dummy), mem, &vm, BAR).unwrap();
        (vm, t)
    }

    fn config32(t: &mut PciTransport, offset: usize) -> u32 {
        let mut b = [0; 4];
        t.read_config(offset, &mut b);
        u32::from_le_bytes(b)
    }

    fn bar_read(t: &mut PciTransport, offset: u64, len: usize) -> u64 {
        let mut b = [0; 8];
        t.read_bar(offset, &mut b[..len]);
        u64::from_le_bytes(b)
    }

    fn bar_write(t: &mut PciTransport, offset: u64, value: u64, len: usize) {
        t.write_bar(offset, &value.to_le_bytes()[..len]);
    }

    /// The capabilities, as `(id, virtio structure type, offset in BAR 0)`.
    fn capabilities(t: &mut PciTransport) -> Vec<(u8, u8, u32)> {
        let mut caps = Vec::new();
        let mut at = (config32(t, 0x34) & 0xfc) as usize;
        while at != 0 {
            let header = config32(t, at).to_le_bytes();
            caps.push((header[0], header[3], config32(t, at + 8)));
            at = usize::from(header[1]);
        }
        caps
    }

    #[test]
    fn a_function_shows_virtio_ids_and_its_structures() {
        let (_vm, mut t) = function();
        assert_eq!(config32(&mut t, 0), 0x1042_1af4, "virtio block, modern");
        assert_eq!(config32(&mut t, 0x10), 0xd100_0004, "BAR 0, 64-bit");
        let caps = capabilities(&mut t);
        let virtio: Vec<(u8, u32)> = caps
            .iter()
            .filter(|c| c.0 == VENDOR_CAPABILITY)
            .map(|c| (c.1, c.2))
            .collect();
        // Common, notify, device, then the ISR a driver using MSI-X never needs.
        assert_eq!(
            virtio,
            [(1, 0), (2, 0x3000), (4, 0x2000), (3, 0x1000), (5, 0)]
        );
        assert!(caps.iter().any(|c| c.0 == msix::CAPABILITY_ID));
        assert_eq!(bar_read(&mut t, 0x12, 2), 2, "num_queues");
        assert_eq!(bar_read(&mut t, 0x2000, 4), 0x0403_0201, "device config");
    }

    /// Drives the common configuration through a driver's initialization
    /// with queue 0 on vector 1.
    fn activate(t: &mut PciTransport) {
        bar_write(t, common::DEVICE_STATUS as u64, 1, 1);
        bar_write(t, common::DEVICE_STATUS as u64, 3, 1);
        bar_write(t, common::DRIVER_FEATURE_SELECT as u64, 1, 4);
        bar_write(t, common::DRIVER_FEATURE as u64, 1, 4);
        bar_write(t, common::DEVICE_STATUS as u64, 0xb, 1);
        bar_write(t, common::QUEUE_SELECT as u64, 0, 2);
        bar_write(t, common::QUEUE_DESC as u64, 0x1000, 8);
        bar_write(t, common::QUEUE_DRIVER as u64, 0x2000, 4);
        bar_write(t, common::QUEUE_DEVICE as u64, 0x3000, 4);
        bar_write(t, common::QUEUE_DEVICE as u64 + 4, 0, 4);
        bar_write(t, common::QUEUE_MSIX_VECTOR as u64, 1, 2);
        bar_write(t, common::QUEUE_ENABLE as u64, 1, 2);
        bar_write(t, common::DEVICE_STATUS as u64, 0xf, 1);
    }

    #[test]
    fn the_common_configuration_sets_a_device_up() {
        let (_vm, mut t) = function();
        activate(&mut t);
        assert_eq!(bar_read(&mut t, common::DEVICE_STATUS as u64, 1), 0xf);
        assert_eq!(bar_read(&mut t, common::QUEUE_DESC as u64, 8), 0x1000);
        assert_eq!(bar_read(&mut t, common::QUEUE_MSIX_VECTOR as u64, 2), 1);
        // A vector the function lacks reads back as none.
        bar_write(&mut t, common::CONFIG_MSIX_VECTOR as u64, 7, 2);
        assert_eq!(
            bar_read(&mut t, common::CONFIG_MSIX_VECTOR as u64, 2),
            u64::from(msix::NO_VECTOR)
        );
        // A notification reaches the queue's eventfd, as its ioeventfd would.
        let events: Vec<EventFd> = t
            .queue_events()
            .iter()
            .map(|e| e.try_clone().unwrap())
            .collect();
        let _ = events[1].read();
        bar_write(&mut t, NOTIFY + 4, 1, 2);
        assert_eq!(events[1].read().unwrap(), 1);
        // A reset forgets the queue and its vector.
        bar_write(&mut t, common::DEVICE_STATUS as u64, 0, 1);
        assert_eq!(bar_read(&mut t, common::QUEUE_ENABLE as u64, 2), 0);
        assert_eq!(
            bar_read(&mut t, common::QUEUE_MSIX_VECTOR as u64, 2),
            u64::from(msix::NO_VECTOR)
        );
    }

    #[test]
    fn msix_delivers_only_unmasked_vectors_and_keeps_the_rest_pending() {
        let (_vm, mut t) = function();
        activate(&mut t);
        t.transport.process_queue(0);
        // MSI-X is off: the interrupt waits in the pending bits; the ISR says so.
        assert_eq!(bar_read(&mut t, MSIX_PBA, 8), 0b10);
        // Vector 1: a message to APIC 0, unmasked; then MSI-X on.
        bar_write(&mut t, MSIX_TABLE + 16, 0xfee0_0000, 8);
        bar_write(&mut t, MSIX_TABLE + 24, 0x31, 8);
        let cap = t.msix_capability;
        let control = config32(&mut t, cap) | 0x8000_0000;
        t.write_config(cap, &control.to_le_bytes());
        assert_eq!(bar_read(&mut t, MSIX_PBA, 8), 0, "delivered on unmask");
        assert_eq!(bar_read(&mut t, ISR, 1), 1, "the ISR has it, read to clear");
        assert_eq!(bar_read(&mut t, ISR, 1), 0);
        // Masked again: pending until unmasked.
        bar_write(&mut t, MSIX_TABLE + 28, 1, 4);
        t.transport.process_queue(0);
        assert_eq!(bar_read(&mut t, MSIX_PBA, 8), 0b10);
        bar_write(&mut t, MSIX_TABLE + 28, 0, 4);
        assert_eq!(bar_read(&mut t, MSIX_PBA, 8), 0);
        // A message no APIC takes is not routed, and nothing breaks.
        bar_write(&mut t, MSIX_TABLE + 16, 0xdead_beef, 8);
        t.transport.process_queue(0);
        assert_eq!(bar_read(&mut t, MSIX_PBA, 8), 0);
    }

    #[test]
    fn the_access_window_reaches_bar_0() {
        let (_vm, mut t) = function();
        let cap = t.pci_cfg_capability;
        t.write_config(cap + 4, &[0, 0, 0, 0]);
        t.write_config(cap + 8, &0x2000u32.to_le_bytes());
        t.write_config(cap + 12, &4u32.to_le_bytes());
        assert_eq!(config32(&mut t, cap + 16), 0x0403_0201);
        // A length the window does not take reads nothing new.
        t.write_config(cap + 12, &3u32.to_le_bytes());
        t.write_config(cap + 8, &0x12u32.to_le_bytes());
        assert_eq!(config32(&mut t, cap + 16), 0x0403_0201);
    }

    #[test]
    fn a_saved_function_comes_back_with_its_vectors() {
        let (vm, mut t) = function();
        activate(&mut t);
        bar_write(&mut t, MSIX_TABLE + 16, 0xfee0_0000, 8);
        bar_write(&mut t, MSIX_TABLE + 24, 0x31, 8);
        let cap = t.msix_capability;
        let control = config32(&mut t, cap) | 0x8000_0000;
        t.write_config(cap, &control.to_le_bytes());
        let state = t.save_state();
        let text = serde_json::to_string(&state).unwrap();
        let state: PciTransportState = serde_json::from_str(&text).unwrap();
        let mem = guest_memory(0x10000);
        let mut restored = PciTransport::restore(Box::new(Dummy), mem, &vm, BAR, &state).unwrap();
        assert_eq!(config32(&mut restored, cap) >> 31, 1, "MSI-X still on");
        assert_eq!(bar_read(&mut restored, MSIX_TABLE + 24, 4), 0x31);
        assert_eq!(
            bar_read(&mut restored, common::QUEUE_MSIX_VECTOR as u64, 2),
            1
        );
        assert_eq!(
            bar_read(&mut restored, common::DEVICE_STATUS as u64, 1),
            0xf
        );
    }
}
