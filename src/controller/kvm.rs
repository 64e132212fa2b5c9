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
use crate::vstate::vcpu::VcpuThread;

pub struct KvmLauncher {
    boot_timer: bool,
    pci: bool,
    seccomp: Filters,
    exit: Arc<ExitSignal>,
    /// vCPU threads readied at start-up, before anything says whether a
    /// boot or a snapshot load will use them.
    threads: Vec<VcpuThread>,
    /// The VM readied for a boot, for the machine configuration as it last was.
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
            threads: Vec::new(),
            prep: None,
        }
    }

    /// The vCPU threads started ahead, taken from a readied VM if there is
    /// one (whose VM, not the one a snapshot needs, is let go).
    fn ready_threads(&mut self) -> Vec<VcpuThread> {
        match self.prep.take() {
            Some(prep) => prep.into_vcpu_threads(),
            None => std::mem::take(&mut self.threads),
        }
    }
}

impl Launcher for KvmLauncher {
    type Vm = Vmm;

    fn get_ready(&mut self, machine: &MachineConfig) {
        if !self.threads.is_empty() || self.prep.is_some() {
            return;
        }
        // Whoever needs them makes them if this fails.
        match builder::vcpu_threads(Vec::new(), machine.vcpu_count, &self.exit, &self.seccomp) {
            Ok(threads) => self.threads = threads,
            Err(e) => log::warn!("cannot start vCPU threads ahead of time: {e}"),
        }
    }

    fn prepare(&mut self, machine: &MachineConfig) {
        if self.prep.as_ref().is_some_and(|p| p.fits(machine)) {
            return;
        }
        // A failure here is reported by InstanceStart, which tries again.
        let (ready, replaced) = match self.prep.take() {
            Some(prep) => prep.into_parts(),
            None => (std::mem::take(&mut self.threads), None),
        };
        self.prep = VmPrep::start(machine, ready, replaced, &self.exit, &self.seccomp)
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
            None => {
                let ready = self.ready_threads();
                VmPrep::start(&resources.machine, ready, None, &self.exit, &self.seccomp)?
            }
        };
        builder::build(prep, resources, &options, self.exit.clone())
    }

    fn load(
        &mut self,
        params: &SnapshotLoadConfig,
        mmds: SharedMmds,
    ) -> Result<(Vmm, VmResources), persist::Error> {
        let threads = self.ready_threads();
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
