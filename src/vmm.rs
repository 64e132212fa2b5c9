//! A running microVM: its vCPU threads, its memory and its devices, and
//! the runtime actions the controller takes on them.

use crate::devices::legacy::i8042;
use crate::devices::manager::{self, Devices};
use crate::devices::virtio::balloon::BalloonStatus;
use crate::devices::EventSubscriber;
use crate::resources::DeviceChange;
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
    /// A device change the devices could not carry out.
    #[error(transparent)]
    Devices(#[from] manager::Error),
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
        vm.mark_started();
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

    /// Makes a change to the devices.
    pub fn change_device(&self, change: &DeviceChange) -> Result<(), Error> {
        Ok(self.devices.apply(change)?)
    }

    /// What the balloon holds and the guest last reported.
    pub fn balloon_status(&self) -> Result<BalloonStatus, Error> {
        Ok(self.devices.balloon_status()?)
    }

    /// The devices' host-side events, for the event loop to serve from now on.
    pub fn take_subscribers(&mut self) -> Vec<Box<dyn EventSubscriber>> {
        self.devices.take_subscribers()
    }
}
