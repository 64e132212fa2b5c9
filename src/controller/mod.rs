//! The one place that decides what may happen in which state: pre-boot
//! configuration, InstanceStart or a snapshot load, and runtime actions on
//! the running VM.
//!
//! Each state has its own handler, and each handler names, in one arm, the
//! requests it refuses. Making and driving the VM goes through [`Launcher`]
//! and [`RunningVm`], so the rules here are tested without KVM.

mod accounting;
mod kvm;
#[cfg(test)]
mod tests;

use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::Value;

use crate::config::{
    self, BalloonConfig, BalloonStatsUpdate, BalloonUpdate, BootSourceConfig, DeviceConfig,
    DeviceUpdate, FunctionConfig, HintingStart, LoggerConfig, MachineConfig, MachineConfigUpdate,
    MetricsConfig, MmdsConfig, SnapshotCreateConfig, SnapshotLoadConfig, VmConfig,
};
use crate::devices::virtio::balloon::BalloonStatus;
use crate::logger;
use crate::metrics::{self, METRICS};
use crate::mmds::{self, SharedMmds};
use crate::persist;
use crate::resources::{self, DeviceChange, VmResources};
use crate::vmm;
use crate::{builder, vmm::Vmm};

pub use kvm::KvmLauncher;

pub const APP_NAME: &str = "ember";
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// A typed request, whether it came over the API or from the config file.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    GetInstanceInfo,
    GetVersion,
    GetMachineConfig,
    GetVmConfig,
    PutBootSource(BootSourceConfig),
    PutMachineConfig(MachineConfig),
    PatchMachineConfig(MachineConfigUpdate),
    /// A drive, the vsock, or another device, before boot.
    PutDevice(DeviceConfig),
    /// A change to a device of the running VM.
    UpdateDevice(DeviceUpdate),
    PutLogger(LoggerConfig),
    PutFunction(FunctionConfig),
    /// Replaces the metadata service's document.
    PutMmds(Value),
    /// Merges a JSON merge patch into the metadata service's document.
    PatchMmds(Value),
    GetMmds,
    /// Which interfaces reach the metadata service, and how (pre-boot only).
    PutMmdsConfig(MmdsConfig),
    /// Where `POST /invocations` should send its request.
    GetInvocationTarget,
    StartInstance,
    SendCtrlAltDel,
    Pause,
    Resume,
    CreateSnapshot(SnapshotCreateConfig),
    LoadSnapshot(SnapshotLoadConfig),
    /// Where metrics are flushed, for the life of the process.
    PutMetrics(MetricsConfig),
    FlushMetrics,
    /// The metrics as Prometheus text (ember's extension).
    GetMetrics,
    GetBalloon,
    /// A new balloon target, before or after boot.
    PatchBalloon(BalloonUpdate),
    GetBalloonStats,
    /// A new statistics polling interval, before or after boot.
    PatchBalloonStats(BalloonStatsUpdate),
    /// Starts a free page hinting run.
    StartHinting(HintingStart),
    /// Ends the free page hinting run.
    StopHinting,
    GetHintingStatus,
}

/// A typed answer; the API turns it into JSON.
#[derive(Debug, Clone, PartialEq)]
pub enum Response {
    NoContent,
    InstanceInfo(InstanceInfo),
    Version(VersionInfo),
    MachineConfig(MachineConfig),
    VmConfig(Box<VmConfig>),
    /// The metadata service's document.
    Mmds(Value),
    /// Prometheus's text exposition of the metrics.
    Metrics(String),
    Invocation(InvocationTarget),
    Balloon(BalloonConfig),
    BalloonStats(Box<BalloonStats>),
    HintingStatus(HintingStatus),
}

/// `GET /balloon/hinting/status`, in Firecracker's shape: the command the
/// host last gave and the one the guest last sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct HintingStatus {
    pub host_cmd: u32,
    pub guest_cmd: Option<u32>,
}

/// `GET /balloon/statistics`, in Firecracker's shape: the target and what
/// the guest holds, then whatever statistics the guest last reported.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BalloonStats {
    pub target_pages: u32,
    pub actual_pages: u32,
    pub target_mib: u32,
    pub actual_mib: u32,
    #[serde(flatten)]
    pub reported: serde_json::Map<String, Value>,
}

/// virtio's statistic tags, by number, under Firecracker's names.
const STAT_NAMES: [&str; 16] = [
    "swap_in",
    "swap_out",
    "major_faults",
    "minor_faults",
    "free_memory",
    "total_memory",
    "available_memory",
    "disk_caches",
    "hugetlb_allocations",
    "hugetlb_failures",
    "oom_kill",
    "alloc_stall",
    "async_scan",
    "direct_scan",
    "async_reclaim",
    "direct_reclaim",
];

impl From<BalloonStatus> for BalloonStats {
    fn from(status: BalloonStatus) -> Self {
        let pages_per_mib = crate::devices::manager::mib_to_pages(1);
        BalloonStats {
            target_pages: status.target_pages,
            actual_pages: status.actual_pages,
            target_mib: status.target_pages / pages_per_mib,
            actual_mib: status.actual_pages / pages_per_mib,
            reported: STAT_NAMES
                .iter()
                .zip(status.stats)
                .filter_map(|(name, value)| Some((name.to_string(), Value::from(value?))))
                .collect(),
        }
    }
}

/// `GET /`, in Firecracker's shape.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InstanceInfo {
    pub app_name: &'static str,
    pub id: String,
    pub state: InstanceState,
    pub vmm_version: &'static str,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum InstanceState {
    #[serde(rename = "Not started")]
    NotStarted,
    Running,
    Paused,
}

/// `GET /version`, in Firecracker's shape: clients read `firecracker_version`
/// as a semantic version, here ember's. The other fields say whose it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VersionInfo {
    pub firecracker_version: &'static str,
    pub app_name: &'static str,
    pub vmm_version: &'static str,
}

/// How to reach the guest's function: the vsock socket, port and time limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvocationTarget {
    pub uds_path: String,
    pub port: u32,
    pub timeout: Duration,
    pub max_concurrent: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A pre-boot request on a started VM.
    #[error("the requested operation is not supported after starting the microVM")]
    AfterStart,
    /// A runtime request before InstanceStart or a snapshot load.
    #[error("the requested operation is not supported before starting the microVM")]
    BeforeStart,
    /// A second InstanceStart.
    #[error("the microVM is already running")]
    AlreadyStarted,
    /// A request body that is well-formed but not valid.
    #[error(transparent)]
    Config(#[from] config::Error),
    /// A configuration the VM's resources refuse.
    #[error(transparent)]
    Resources(#[from] resources::Error),
    /// InstanceStart failed; the VM stays configurable.
    #[error("cannot start the microVM: {0}")]
    Start(#[from] builder::Error),
    /// A runtime action the running VM could not carry out.
    #[error(transparent)]
    Vmm(#[from] vmm::Error),
    /// A `PUT /logger` whose level or file is refused.
    #[error("cannot configure the logger: {0}")]
    Logger(#[from] logger::Error),
    /// A `--config-file` section of Firecracker's that ember does not implement.
    #[error("the '{0}' section is not supported by ember yet")]
    Unsupported(&'static str),
    /// An invocation on a VM without a vsock device.
    #[error(
        "the microVM has no vsock device: PUT /vsock before InstanceStart to invoke functions"
    )]
    NoVsock,
    /// A snapshot load would discard the boot configuration already given.
    #[error(
        "loading a snapshot is only allowed before configuring boot-specific resources (boot source, drives, network interfaces, vsock, entropy, balloon)"
    )]
    LoadAfterConfig,
    /// A metadata document the data store refuses.
    #[error(transparent)]
    Mmds(#[from] mmds::Error),
    /// A thread panicked holding the metadata service.
    #[error("the MMDS data store is unavailable: a thread panicked holding it")]
    Poisoned,
    /// Creating or loading a snapshot failed.
    #[error(transparent)]
    Snapshot(#[from] persist::Error),
    /// Statistics asked of a balloon configured without them.
    #[error("balloon statistics are not enabled: set stats_polling_interval_s when the balloon is configured")]
    BalloonStatsOff,
    /// Configuring or flushing the metrics failed.
    #[error(transparent)]
    Metrics(#[from] metrics::Error),
}

/// Makes VMs: boots them from resources or brings them back from snapshots.
pub trait Launcher {
    type Vm: RunningVm;

    /// Readies what any VM needs, booted or loaded from a snapshot (its vCPU
    /// threads), while nothing says yet which it will be.
    fn get_ready(&mut self, machine: &MachineConfig);

    /// Starts readying a VM for `machine` off the start path, once a boot is
    /// on its way; a failure is left for `start` to report.
    fn prepare(&mut self, machine: &MachineConfig);

    /// Puts the virtio devices of the VM it starts on PCI (a config file's
    /// `pci` section; `--enable-pci` sets it up front).
    fn enable_pci(&mut self);

    fn start(&mut self, resources: &VmResources) -> Result<Self::Vm, builder::Error>;

    /// The VM a snapshot holds, with the resources it was saved with.
    /// Its net devices serve `mmds`, the platform's metadata service.
    fn load(
        &mut self,
        params: &SnapshotLoadConfig,
        mmds: SharedMmds,
    ) -> Result<(Self::Vm, VmResources), persist::Error>;
}

/// The runtime actions of a started VM.
pub trait RunningVm {
    fn is_paused(&self) -> bool;
    fn pause(&mut self) -> Result<(), vmm::Error>;
    fn resume(&mut self) -> Result<(), vmm::Error>;
    fn send_ctrl_alt_del(&self) -> Result<(), vmm::Error>;
    /// Makes a change to the VM's devices.
    fn change_device(&self, change: &DeviceChange) -> Result<(), vmm::Error>;
    /// What the balloon holds and the guest last reported.
    fn balloon_status(&self) -> Result<BalloonStatus, vmm::Error>;
    /// Saves the paused VM, whose configuration is `config`.
    fn snapshot(
        &self,
        config: &VmConfig,
        params: &SnapshotCreateConfig,
    ) -> Result<(), persist::Error>;
}

fn version() -> Response {
    Response::Version(VersionInfo {
        firecracker_version: VERSION,
        app_name: APP_NAME,
        vmm_version: VERSION,
    })
}

/// The controller of ember's own VMs.
pub type VmmController = Controller<KvmLauncher>;

pub struct Controller<L: Launcher> {
    instance_id: String,
    launcher: L,
    resources: VmResources,
    vm: Option<L::Vm>,
    /// Whether a machine configuration was given: until then the default
    /// one may still change, and a VM readied for it be thrown away.
    machine_given: bool,
}

impl<L: Launcher> Controller<L> {
    pub fn new(instance_id: String, launcher: L) -> Self {
        Controller {
            instance_id,
            launcher,
            resources: VmResources::default(),
            vm: None,
            machine_given: false,
        }
    }

    /// Caps the metadata document (`--mmds-size-limit`); called at start.
    pub fn set_mmds_size_limit(&mut self, size_limit: usize) {
        if let Some(mut mmds) = self.resources.mmds.lock() {
            mmds.store = mmds::MmdsStore::new(size_limit);
        }
    }

    /// Readies what a boot and a snapshot load both need; at start-up.
    pub fn get_ready(&mut self) {
        if self.vm.is_none() {
            self.launcher.get_ready(&self.resources.machine);
        }
    }

    /// Starts making a VM of the configured machine ready in the background,
    /// once a boot is on its way (a machine configuration, or a boot source
    /// after one): a snapshot load could use none of it.
    fn prepare(&mut self) {
        if self.vm.is_none() {
            self.launcher.prepare(&self.resources.machine);
        }
    }

    pub fn vm(&self) -> Option<&L::Vm> {
        self.vm.as_ref()
    }

    /// The vsock socket the running VM listens on, to remove at exit.
    pub fn vsock_socket(&self) -> Option<&str> {
        self.vm.as_ref()?;
        self.resources.vsock.as_ref().map(|v| v.uds_path.as_str())
    }

    /// Applies a whole `--config-file` document, section by section.
    pub fn apply_config(&mut self, config: VmConfig) -> Result<(), Error> {
        if let Some(section) = config.unsupported_section() {
            return Err(Error::Unsupported(section));
        }
        config.check_unique_ids()?;
        if config.pci.is_some_and(|pci| pci.enabled) {
            self.launcher.enable_pci();
        }
        let requests = config
            .logger
            .map(Request::PutLogger)
            .into_iter()
            .chain(config.metrics.map(Request::PutMetrics))
            .chain(config.machine_config.map(Request::PutMachineConfig))
            .chain(config.boot_source.map(Request::PutBootSource))
            .chain(
                config
                    .drives
                    .into_iter()
                    .map(DeviceConfig::Drive)
                    .map(Request::PutDevice),
            )
            .chain(
                config
                    .network_interfaces
                    .into_iter()
                    .map(DeviceConfig::Net)
                    .map(Request::PutDevice),
            )
            .chain(
                config
                    .vsock
                    .map(DeviceConfig::Vsock)
                    .map(Request::PutDevice),
            )
            .chain(
                config
                    .entropy
                    .map(DeviceConfig::Entropy)
                    .map(Request::PutDevice),
            )
            .chain(
                config
                    .balloon
                    .map(DeviceConfig::Balloon)
                    .map(Request::PutDevice),
            )
            .chain(config.mmds_config.map(Request::PutMmdsConfig))
            .chain(config.function.map(Request::PutFunction));
        for request in requests {
            self.handle(request)?;
        }
        Ok(())
    }

    pub fn handle(&mut self, request: Request) -> Result<Response, Error> {
        let counters = accounting::request_counters(&request);
        let latency = accounting::latency(&request);
        if accounting::uses_deprecated_fields(&request) {
            METRICS.deprecated_api.deprecated_http_api_calls.inc();
        }
        let loads_snapshot = matches!(request, Request::LoadSnapshot(_));
        let started = Instant::now();
        let result = if self.vm.is_some() {
            self.handle_runtime(request)
        } else {
            self.handle_pre_boot(request)
        };
        if let Some((count, fails)) = counters {
            count.inc();
            if let (Some(fails), Err(_)) = (fails, &result) {
                fails.inc();
            }
        }
        if result.is_ok() {
            if let Some(latency) = latency {
                latency.set_since(started);
            }
            if loads_snapshot {
                METRICS.ember.snapshot_loads.inc();
            }
        }
        result
    }

    /// The metrics requests, served the same before and after boot.
    fn metrics(&self, request: Request) -> Result<Response, Error> {
        match request {
            Request::PutMetrics(config) => METRICS.configure(&config.metrics_path)?,
            Request::FlushMetrics => METRICS.flush()?,
            _ => return Ok(Response::Metrics(METRICS.prometheus())),
        }
        Ok(Response::NoContent)
    }

    fn handle_pre_boot(&mut self, request: Request) -> Result<Response, Error> {
        match request {
            Request::PutBootSource(boot_source) => {
                let response = self.configured(|r| r.set_boot_source(boot_source))?;
                // Before a machine configuration, InstanceStart readies the VM.
                if self.machine_given {
                    self.prepare();
                }
                Ok(response)
            }
            Request::PutMachineConfig(machine) => self.set_machine(|r| r.set_machine(machine)),
            Request::PatchMachineConfig(update) => self.set_machine(|r| r.update_machine(&update)),
            Request::PutDevice(device) => self.configured(|r| r.put_device(device)),
            Request::StartInstance => self.start(),
            Request::LoadSnapshot(params) => self.load_snapshot(params),
            Request::GetInstanceInfo => Ok(self.instance_info()),
            Request::GetVersion => Ok(version()),
            Request::GetMachineConfig => Ok(self.machine_config()),
            Request::GetVmConfig => Ok(self.vm_config()),
            Request::PutLogger(logger) => self.set_logger(logger),
            Request::PutFunction(function) => self.configured(|r| r.set_function(function)),
            Request::PutMmds(data) => self.set_mmds(|m| m.put(data)),
            Request::PatchMmds(patch) => self.set_mmds(|m| m.patch(patch)),
            Request::GetMmds => self.mmds_document(),
            Request::PutMmdsConfig(config) => self.configured(|r| r.set_mmds_config(config)),
            Request::PutMetrics(_) | Request::FlushMetrics | Request::GetMetrics => {
                self.metrics(request)
            }
            Request::GetBalloon => self.balloon(),
            Request::PatchBalloon(update) => {
                let patched = self.resources.patched_balloon(update)?;
                self.resources.balloon = Some(patched);
                Ok(Response::NoContent)
            }
            Request::PatchBalloonStats(update) => {
                let patched = self.resources.patched_balloon_stats(update, false)?;
                self.resources.balloon = Some(patched);
                Ok(Response::NoContent)
            }
            Request::GetBalloonStats => self.balloon_stats(),
            Request::StartHinting(_) | Request::StopHinting | Request::GetHintingStatus => {
                self.resources.check_hinting()?;
                Err(Error::BeforeStart)
            }
            Request::GetInvocationTarget
            | Request::UpdateDevice(_)
            | Request::SendCtrlAltDel
            | Request::Pause
            | Request::Resume
            | Request::CreateSnapshot(_) => Err(Error::BeforeStart),
        }
    }

    fn handle_runtime(&mut self, request: Request) -> Result<Response, Error> {
        match request {
            Request::GetInvocationTarget => self.invocation_target(),
            Request::UpdateDevice(update) => self.update_device(update),
            Request::SendCtrlAltDel => self.act(|vm| vm.send_ctrl_alt_del()),
            Request::Pause => self.act(|vm| vm.pause()),
            Request::Resume => self.act(|vm| vm.resume()),
            Request::CreateSnapshot(params) => self.create_snapshot(params),
            Request::StartInstance => Err(Error::AlreadyStarted),
            Request::PutBootSource(_)
            | Request::PutMachineConfig(_)
            | Request::PatchMachineConfig(_)
            | Request::PutDevice(_)
            | Request::PutMmdsConfig(_)
            | Request::LoadSnapshot(_) => Err(Error::AfterStart),
            Request::GetInstanceInfo => Ok(self.instance_info()),
            Request::GetVersion => Ok(version()),
            Request::GetMachineConfig => Ok(self.machine_config()),
            Request::GetVmConfig => Ok(self.vm_config()),
            Request::PutLogger(logger) => self.set_logger(logger),
            Request::PutFunction(function) => self.configured(|r| r.set_function(function)),
            Request::PutMmds(data) => self.set_mmds(|m| m.put(data)),
            Request::PatchMmds(patch) => self.set_mmds(|m| m.patch(patch)),
            Request::GetMmds => self.mmds_document(),
            Request::PutMetrics(_) | Request::FlushMetrics | Request::GetMetrics => {
                self.metrics(request)
            }
            Request::GetBalloon => self.balloon(),
            Request::PatchBalloon(update) => {
                let patched = self.resources.patched_balloon(update)?;
                let change = DeviceChange::BalloonTarget {
                    amount_mib: patched.amount_mib,
                };
                self.running()?.change_device(&change)?;
                self.resources.balloon = Some(patched);
                Ok(Response::NoContent)
            }
            Request::PatchBalloonStats(update) => {
                let patched = self.resources.patched_balloon_stats(update, true)?;
                let change = DeviceChange::BalloonStatsInterval {
                    seconds: patched.stats_polling_interval_s,
                };
                self.running()?.change_device(&change)?;
                self.resources.balloon = Some(patched);
                Ok(Response::NoContent)
            }
            Request::GetBalloonStats => self.balloon_stats(),
            Request::StartHinting(start) => self.hinting(Some(start.acknowledge_on_stop)),
            Request::StopHinting => self.hinting(None),
            Request::GetHintingStatus => {
                self.resources.check_hinting()?;
                let hinting = self.running()?.balloon_status()?.hinting;
                Ok(Response::HintingStatus(HintingStatus {
                    host_cmd: hinting.host_cmd,
                    guest_cmd: hinting.guest_cmd,
                }))
            }
        }
    }

    /// Starts (`Some`) or ends a free page hinting run on the running VM.
    fn hinting(&mut self, start: Option<bool>) -> Result<Response, Error> {
        self.resources.check_hinting()?;
        self.running()?
            .change_device(&DeviceChange::BalloonHinting(start))?;
        Ok(Response::NoContent)
    }

    fn balloon(&self) -> Result<Response, Error> {
        let balloon = self.resources.balloon.ok_or(resources::Error::NoBalloon)?;
        Ok(Response::Balloon(balloon))
    }

    fn balloon_stats(&mut self) -> Result<Response, Error> {
        let balloon = self.resources.balloon.ok_or(resources::Error::NoBalloon)?;
        if balloon.stats_polling_interval_s == 0 {
            return Err(Error::BalloonStatsOff);
        }
        let status = self.running()?.balloon_status()?;
        Ok(Response::BalloonStats(Box::new(status.into())))
    }

    fn machine_config(&self) -> Response {
        Response::MachineConfig(self.resources.machine.clone())
    }

    fn vm_config(&self) -> Response {
        Response::VmConfig(Box::new(self.resources.vm_config()))
    }

    fn set_mmds(
        &mut self,
        change: impl FnOnce(&mut mmds::MmdsStore) -> Result<(), mmds::Error>,
    ) -> Result<Response, Error> {
        let mut mmds = self.resources.mmds.lock().ok_or(Error::Poisoned)?;
        change(&mut mmds.store)?;
        Ok(Response::NoContent)
    }

    fn mmds_document(&self) -> Result<Response, Error> {
        let mmds = self.resources.mmds.lock().ok_or(Error::Poisoned)?;
        Ok(Response::Mmds(mmds.store.value()))
    }

    fn set_logger(&mut self, logger: LoggerConfig) -> Result<Response, Error> {
        logger::configure(&logger)?;
        self.resources.logger = Some(logger.over(self.resources.logger.as_ref()));
        Ok(Response::NoContent)
    }

    fn configured(
        &mut self,
        change: impl FnOnce(&mut VmResources) -> Result<(), resources::Error>,
    ) -> Result<Response, Error> {
        change(&mut self.resources)?;
        Ok(Response::NoContent)
    }

    /// A machine configuration: a boot is on its way, for which a VM is
    /// readied (again, if the machine changed).
    fn set_machine(
        &mut self,
        change: impl FnOnce(&mut VmResources) -> Result<(), resources::Error>,
    ) -> Result<Response, Error> {
        change(&mut self.resources)?;
        self.machine_given = true;
        self.prepare();
        Ok(Response::NoContent)
    }

    fn instance_info(&self) -> Response {
        let state = match &self.vm {
            None => InstanceState::NotStarted,
            Some(vm) if vm.is_paused() => InstanceState::Paused,
            Some(_) => InstanceState::Running,
        };
        Response::InstanceInfo(InstanceInfo {
            app_name: APP_NAME,
            id: self.instance_id.clone(),
            state,
            vmm_version: VERSION,
        })
    }

    fn start(&mut self) -> Result<Response, Error> {
        match self.launcher.start(&self.resources) {
            Ok(vm) => {
                self.vm = Some(vm);
                Ok(Response::NoContent)
            }
            Err(e) => {
                // Ready the next attempt.
                self.prepare();
                Err(e.into())
            }
        }
    }

    fn load_snapshot(&mut self, params: SnapshotLoadConfig) -> Result<Response, Error> {
        params.validate()?;
        if self.resources.has_boot_devices() {
            return Err(Error::LoadAfterConfig);
        }
        let (vm, saved) = self.launcher.load(&params, self.resources.mmds.clone())?;
        // The logger and the metadata are the platform's, not the snapshot's;
        // the restored devices already share the latter.
        let logger = self.resources.logger.take();
        self.resources = VmResources { logger, ..saved };
        self.vm = Some(vm);
        Ok(Response::NoContent)
    }

    fn running(&mut self) -> Result<&mut L::Vm, Error> {
        self.vm.as_mut().ok_or(Error::BeforeStart)
    }

    fn act(
        &mut self,
        action: impl FnOnce(&mut L::Vm) -> Result<(), vmm::Error>,
    ) -> Result<Response, Error> {
        action(self.running()?)?;
        Ok(Response::NoContent)
    }

    fn invocation_target(&self) -> Result<Response, Error> {
        let vsock = self.resources.vsock.as_ref().ok_or(Error::NoVsock)?;
        let function = &self.resources.function;
        Ok(Response::Invocation(InvocationTarget {
            uds_path: vsock.uds_path.clone(),
            port: function.vsock_port,
            timeout: Duration::from_millis(function.timeout_ms),
            max_concurrent: function.max_concurrent_invocations,
        }))
    }

    fn update_device(&mut self, update: DeviceUpdate) -> Result<Response, Error> {
        if let Some(change) = self.resources.device_change(&update)? {
            self.running()?.change_device(&change)?;
        }
        self.resources.apply_update(update);
        Ok(Response::NoContent)
    }

    fn create_snapshot(&mut self, params: SnapshotCreateConfig) -> Result<Response, Error> {
        params.validate()?;
        let config = self.resources.vm_config();
        self.running()?.snapshot(&config, &params)?;
        Ok(Response::NoContent)
    }
}

impl Controller<KvmLauncher> {
    /// The running VM's devices, for the event loop.
    pub fn vmm_mut(&mut self) -> Option<&mut Vmm> {
        self.vm.as_mut()
    }
}
