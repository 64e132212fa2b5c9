//! A running microVM: its vCPU threads and the device handles the event
//! loop and the controller act on.

use std::os::fd::RawFd;
use std::path::Path;
use std::sync::{Arc, Mutex};

use vmm_sys_util::eventfd::EventFd;

use crate::devices::legacy::i8042::{self, I8042};
use crate::devices::legacy::serial::SerialDevice;
use crate::devices::virtio::block::{self, Disk};
use crate::devices::virtio::mmio::MmioTransport;
use crate::devices::virtio::{Interrupt, INT_CONFIG};
use crate::vstate::memory::GuestMemoryMmap;
use crate::vstate::memory::MemoryBackend;
use crate::vstate::vcpu::{self, VcpuHandle, VcpuState};
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

/// The devices of a running microVM, as the event loop and the controller reach them.
pub struct Devices {
    pub serial: Arc<Mutex<SerialDevice>>,
    pub serial_drained: EventFd,
    pub i8042: Arc<Mutex<I8042>>,
    pub drives: Vec<Drive>,
    /// Every virtio transport, in layout order.
    pub transports: Vec<Arc<Mutex<MmioTransport>>>,
    pub queue_events: Vec<QueueEvent>,
    pub backend_events: Vec<BackendEvent>,
}

pub struct Vmm {
    // Field order is drop order: threads go before the memory they run on.
    vcpus: Vec<VcpuHandle>,
    devices: Devices,
    paused: bool,
    mem: GuestMemoryMmap,
    vm: Vm,
    _memory_backend: Option<MemoryBackend>,
}

impl Vmm {
    pub fn new(
        vm: Vm,
        mem: GuestMemoryMmap,
        vcpus: Vec<VcpuHandle>,
        devices: Devices,
        paused: bool,
        memory_backend: Option<MemoryBackend>,
    ) -> Self {
        Vmm {
            vcpus,
            devices,
            paused,
            mem,
            vm,
            _memory_backend: memory_backend,
        }
    }

    pub fn vm(&self) -> &Vm {
        &self.vm
    }

    pub fn mem(&self) -> &GuestMemoryMmap {
        &self.mem
    }

    pub fn devices(&self) -> &Devices {
        &self.devices
    }

    /// Every vCPU's state; the VM must be paused.
    pub fn save_vcpus(&self) -> Result<Vec<VcpuState>, Error> {
        let msrs = vcpu::msrs_to_save(&self.vm)?;
        Ok(VcpuHandle::save_all(&self.vcpus, &msrs)?)
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
        self.devices
            .i8042
            .lock()
            .map_err(|_| Error::Poisoned)?
            .ctrl_alt_del()?;
        Ok(())
    }

    /// Points drive `id` at another file and tells the guest its size changed.
    pub fn update_drive(&self, id: &str, path: &Path, read_only: bool) -> Result<(), Error> {
        let drive = self
            .devices
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
        &self.devices.serial
    }

    pub fn serial_drained(&self) -> &EventFd {
        &self.devices.serial_drained
    }

    pub fn queue_events(&self) -> &[QueueEvent] {
        &self.devices.queue_events
    }

    pub fn backend_events(&self) -> &[BackendEvent] {
        &self.devices.backend_events
    }
}
