//! ember's own launcher: KVM VMs made by the builder and `persist`, with a
//! VM readied ahead of InstanceStart.

use std::sync::Arc;
use std::time::Instant;

use super::{Launcher, RunningVm};
use crate::builder::{self, BuildOptions, VmPrep};
use crate::config::{MachineConfig, SnapshotCreateConfig, SnapshotLoadConfig, VmConfig};
use crate::devices::virtio::balloon::BalloonStatus;
use crate::exit::ExitSignal;
use crate::mmds::SharedMmds;
use crate::persist;
use crate::resources::{DeviceChange, VmResources};
use crate::seccomp::Filters;
use crate::vmm::{self, Vmm};

pub struct KvmLauncher {
    boot_timer: bool,
    pci: bool,
    seccomp: Filters,
    exit: Arc<ExitSignal>,
    /// The VM readied for the machine configuration as it last was.
    prep: Option<VmPrep>,
}

impl KvmLauncher {
    /// `boot_timer` adds Firecracker's boot-timer device to booted VMs;
    /// `pci` puts virtio devices on PCI.
    pub fn new(boot_timer: bool, pci: bool, seccomp: Filters, exit: Arc<ExitSignal>) -> Self {
        KvmLauncher {
            boot_timer,
            pci,
            seccomp,
            exit,
            prep: None,
        }
    }
}

impl Launcher for KvmLauncher {
    type Vm = Vmm;

    fn prepare(&mut self, machine: &MachineConfig) {
        if self.prep.as_ref().is_some_and(|p| p.fits(machine)) {
            return;
        }
        // A failure here is reported by InstanceStart, which tries again.
        self.prep = VmPrep::start(machine, &self.exit, &self.seccomp)
            .map_err(|e| log::warn!("cannot prepare the VM ahead of InstanceStart: {e}"))
            .ok();
    }

    fn enable_pci(&mut self) {
        self.pci = true;
    }

    fn start(&mut self, resources: &VmResources) -> Result<Vmm, builder::Error> {
        let options = BuildOptions {
            boot_timer: self.boot_timer,
            start: Instant::now(),
            pci: self.pci,
        };
        self.prepare(&resources.machine);
        let prep = match self.prep.take() {
            Some(prep) => prep,
            None => VmPrep::start(&resources.machine, &self.exit, &self.seccomp)?,
        };
        builder::build(prep, resources, &options, self.exit.clone())
    }

    fn load(
        &mut self,
        params: &SnapshotLoadConfig,
        mmds: SharedMmds,
    ) -> Result<(Vmm, VmResources), persist::Error> {
        // The VM readied for a boot is not the one a snapshot needs, but its
        // vCPU threads may be.
        let threads = self
            .prep
            .take()
            .map(VmPrep::into_vcpu_threads)
            .unwrap_or_default();
        let options = persist::LoadOptions {
            exit: self.exit.clone(),
            seccomp: &self.seccomp,
            vcpu_threads: threads,
            mmds,
            pci: self.pci,
        };
        persist::load(params, options)
    }
}

impl RunningVm for Vmm {
    fn is_paused(&self) -> bool {
        Vmm::is_paused(self)
    }

    fn pause(&mut self) -> Result<(), vmm::Error> {
        Vmm::pause(self)
    }

    fn resume(&mut self) -> Result<(), vmm::Error> {
        Vmm::resume(self)
    }

    fn send_ctrl_alt_del(&self) -> Result<(), vmm::Error> {
        Vmm::send_ctrl_alt_del(self)
    }

    fn change_device(&self, change: &DeviceChange) -> Result<(), vmm::Error> {
        Vmm::change_device(self, change)
    }

    fn balloon_status(&self) -> Result<BalloonStatus, vmm::Error> {
        Vmm::balloon_status(self)
    }

    fn snapshot(
        &self,
        config: &VmConfig,
        params: &SnapshotCreateConfig,
    ) -> Result<(), persist::Error> {
        persist::create(self, config, params)
    }
}
