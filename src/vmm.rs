//! A running microVM: its vCPU threads and the device handles the event
//! loop and the controller act on.

use std::os::fd::RawFd;
use std::path::Path;
use std::sync::{Arc, Mutex};

use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use crate::devices::legacy::i8042::{self, I8042};
use crate::devices::legacy::serial::SerialDevice;
use crate::devices::virtio::block::{self, Disk};
use crate::devices::virtio::mmio::MmioTransport;
use crate::devices::virtio::{Interrupt, INT_CONFIG};
use crate::vstate::vcpu::{self, VcpuHandle};
use crate::vstate::vm::Vm;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Vcpu(#[from] vcpu::Error),
    #[error("cannot send Ctrl+Alt+Del: {0}")]
    Keyboard(#[from] i8042::Error),
    #[error("no drive with id '{0}'")]
    NoSuchDrive(String),
    #[error(transparent)]
    Drive(#[from] block::Error),
    #[error("a device lock is poisoned")]
    Poisoned,
}

/// A block device as the controller sees it after boot.
pub struct Drive {
    pub id: String,
    pub disk: Arc<Mutex<Disk>>,
    pub interrupt: Arc<Interrupt>,
}

/// A queue's notification eventfd and the transport to run when it fires.
pub type QueueEvent = (EventFd, Arc<Mutex<MmioTransport>>, usize);
/// A device's host-side fd and the transport to run when it is readable.
pub type BackendEvent = (RawFd, Arc<Mutex<MmioTransport>>);

pub struct Vmm {
    // Field order is drop order: threads go before the memory they run on.
    vcpus: Vec<VcpuHandle>,
    serial: Arc<Mutex<SerialDevice>>,
    serial_drained: EventFd,
    i8042: Arc<Mutex<I8042>>,
    drives: Vec<Drive>,
    queue_events: Vec<QueueEvent>,
    backend_events: Vec<BackendEvent>,
    paused: bool,
    _mem: GuestMemoryMmap,
    _vm: Vm,
}

impl Vmm {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        vm: Vm,
        mem: GuestMemoryMmap,
        vcpus: Vec<VcpuHandle>,
        serial: Arc<Mutex<SerialDevice>>,
        serial_drained: EventFd,
        i8042: Arc<Mutex<I8042>>,
        drives: Vec<Drive>,
        queue_events: Vec<QueueEvent>,
        backend_events: Vec<BackendEvent>,
    ) -> Self {
        Vmm {
            vcpus,
            serial,
            serial_drained,
            i8042,
            drives,
            queue_events,
            backend_events,
            paused: false,
            _mem: mem,
            _vm: vm,
        }
    }

    pub fn is_paused(&self) -> bool {
        self.paused
    }

    pub fn pause(&mut self) -> Result<(), Error> {
        VcpuHandle::pause_all(&self.vcpus)?;
        self.paused = true;
        Ok(())
    }

    pub fn resume(&mut self) -> Result<(), Error> {
        VcpuHandle::resume_all(&self.vcpus)?;
        self.paused = false;
        Ok(())
    }

    pub fn send_ctrl_alt_del(&self) -> Result<(), Error> {
        self.i8042
            .lock()
            .map_err(|_| Error::Poisoned)?
            .ctrl_alt_del()?;
        Ok(())
    }

    /// Points drive `id` at another file and tells the guest its size changed.
    pub fn update_drive(&self, id: &str, path: &Path, read_only: bool) -> Result<(), Error> {
        let drive = self
            .drives
            .iter()
            .find(|d| d.id == id)
            .ok_or_else(|| Error::NoSuchDrive(id.to_string()))?;
        let disk = Disk::open(path, read_only)?;
        *drive.disk.lock().map_err(|_| Error::Poisoned)? = disk;
        drive.interrupt.raise(INT_CONFIG);
        Ok(())
    }

    pub fn serial(&self) -> &Arc<Mutex<SerialDevice>> {
        &self.serial
    }

    pub fn serial_drained(&self) -> &EventFd {
        &self.serial_drained
    }

    pub fn queue_events(&self) -> &[QueueEvent] {
        &self.queue_events
    }

    pub fn backend_events(&self) -> &[BackendEvent] {
        &self.backend_events
    }
}
