//! A running microVM: its vCPU threads, its memory and its devices, and
//! the runtime actions the controller takes on them.

use std::path::Path;

use crate::devices::legacy::i8042;
use crate::devices::manager::Devices;
use crate::devices::virtio::block::{self, Disk};
use crate::devices::virtio::INT_CONFIG;
use crate::devices::EventSubscriber;
use crate::vstate::memory::GuestMemoryMmap;
use crate::vstate::memory::MemoryBackend;
use crate::vstate::vcpu::{self, VcpuHandle, VcpuState};
use crate::vstate::vm::Vm;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Pausing, resuming or saving a vCPU.
    #[error(transparent)]
    Vcpu(#[from] vcpu::Error),
    /// The i8042 could not take the key presses.
    #[error("cannot send Ctrl+Alt+Del: {0}")]
    Keyboard(#[from] i8042::Error),
    /// A drive update names a drive the VM does not have.
    #[error("no drive with id '{0}'")]
    NoSuchDrive(String),
    /// The new backing file of a drive could not be opened.
    #[error(transparent)]
    Drive(#[from] block::Error),
    /// A thread panicked while holding a device: its state can no longer be trusted.
    #[error("a device lock is poisoned")]
    Poisoned,
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

    /// The devices' host-side events, for the event loop to serve from now on.
    pub fn take_subscribers(&mut self) -> Vec<Box<dyn EventSubscriber>> {
        self.devices.take_subscribers()
    }
}
