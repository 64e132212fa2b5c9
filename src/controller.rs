//! The one place that decides what may happen in which state: pre-boot
//! configuration, InstanceStart, and runtime actions on the running VM.

use std::os::unix::fs::FileTypeExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use serde_json::{json, Value};

use crate::builder::{self, BuildOptions, VmPrep};
use crate::config::{
    self, BootSourceConfig, DriveConfig, DriveUpdate, FunctionConfig, LoggerConfig, MachineConfig,
    MachineConfigUpdate, SnapshotCreateConfig, SnapshotLoadConfig, VmConfig, VsockConfig,
};
use crate::exit::ExitSignal;
use crate::logger;
use crate::persist;
use crate::seccomp::Filters;
use crate::vmm::{self, Vmm};

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
    PutDrive(DriveConfig),
    PatchDrive(DriveUpdate),
    PutLogger(LoggerConfig),
    PutVsock(VsockConfig),
    PutFunction(FunctionConfig),
    /// Where `POST /invocations` should send its request.
    GetInvocationTarget,
    StartInstance,
    SendCtrlAltDel,
    Pause,
    Resume,
    CreateSnapshot(SnapshotCreateConfig),
    LoadSnapshot(SnapshotLoadConfig),
}

#[derive(Debug, Clone, PartialEq)]
pub enum Response {
    NoContent,
    Json(Value),
    Invocation(InvocationTarget),
}

/// How to reach the guest's function: the vsock socket, port and time limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvocationTarget {
    pub uds_path: String,
    pub port: u32,
    pub timeout: std::time::Duration,
    pub max_concurrent: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the requested operation is not supported after starting the microVM")]
    AfterStart,
    #[error("the requested operation is not supported before starting the microVM")]
    BeforeStart,
    #[error("the microVM is already running")]
    AlreadyStarted,
    #[error(transparent)]
    Config(#[from] config::Error),
    #[error("{0}")]
    File(String),
    #[error("a root block device already exists: '{0}'")]
    SecondRoot(String),
    #[error("cannot start the microVM: {0}")]
    Start(#[from] builder::Error),
    #[error(transparent)]
    Vmm(#[from] vmm::Error),
    #[error("cannot configure the logger: {0}")]
    Logger(#[from] logger::Error),
    #[error("the '{0}' section is not supported by ember yet")]
    Unsupported(&'static str),
    #[error(
        "the microVM has no vsock device: PUT /vsock before InstanceStart to invoke functions"
    )]
    NoVsock,
    #[error(
        "loading a snapshot is only allowed before configuring boot-specific resources (boot source, drives, vsock)"
    )]
    LoadAfterConfig,
    #[error(transparent)]
    Snapshot(#[from] persist::Error),
}

pub struct Controller {
    instance_id: String,
    boot_timer: bool,
    seccomp: Filters,
    exit: Arc<ExitSignal>,
    boot_source: Option<BootSourceConfig>,
    machine: MachineConfig,
    drives: Vec<DriveConfig>,
    logger: Option<LoggerConfig>,
    vsock: Option<VsockConfig>,
    function: FunctionConfig,
    prep: Option<VmPrep>,
    vmm: Option<Vmm>,
}

/// Checks that `path` names a file ember can open, for an early, precise 400.
fn check_file(what: &str, path: &str) -> Result<(), Error> {
    match std::fs::metadata(path) {
        Ok(m) if m.is_file() || m.file_type().is_block_device() => Ok(()),
        Ok(_) => Err(Error::File(format!(
            "{what} '{path}' is not a regular file"
        ))),
        Err(e) => Err(Error::File(format!("cannot open {what} '{path}': {e}"))),
    }
}

impl Controller {
    pub fn new(
        instance_id: String,
        boot_timer: bool,
        seccomp: Filters,
        exit: Arc<ExitSignal>,
    ) -> Self {
        Controller {
            instance_id,
            boot_timer,
            seccomp,
            exit,
            boot_source: None,
            machine: MachineConfig::default(),
            drives: Vec::new(),
            logger: None,
            vsock: None,
            function: FunctionConfig::default(),
            prep: None,
            vmm: None,
        }
    }

    /// Starts making a VM of the configured memory size ready in the
    /// background, unless one is already on its way.
    pub fn prepare(&mut self) {
        if self.vmm.is_some() || self.prep.as_ref().is_some_and(|p| p.fits(&self.machine)) {
            return;
        }
        // A failure here is reported by InstanceStart, which tries again.
        self.prep = VmPrep::start(&self.machine, &self.exit, &self.seccomp)
            .map_err(|e| log::warn!("cannot prepare the VM ahead of InstanceStart: {e}"))
            .ok();
    }

    pub fn vmm(&self) -> Option<&Vmm> {
        self.vmm.as_ref()
    }

    /// The vsock socket the running VM listens on, to remove at exit.
    pub fn vsock_socket(&self) -> Option<&str> {
        self.vmm.as_ref()?;
        self.vsock.as_ref().map(|v| v.uds_path.as_str())
    }

    /// Applies a whole `--config-file` document, section by section.
    pub fn apply_config(&mut self, config: VmConfig) -> Result<(), Error> {
        if let Some(section) = config.unsupported_section() {
            return Err(Error::Unsupported(section));
        }
        if let Some(logger) = config.logger {
            self.handle(Request::PutLogger(logger))?;
        }
        if let Some(machine) = config.machine_config {
            machine.validate()?;
            self.handle(Request::PutMachineConfig(machine))?;
        }
        if let Some(boot_source) = config.boot_source {
            self.handle(Request::PutBootSource(boot_source))?;
        }
        for drive in config.drives {
            self.handle(Request::PutDrive(drive))?;
        }
        if let Some(vsock) = config.vsock {
            self.handle(Request::PutVsock(vsock))?;
        }
        if let Some(function) = config.function {
            self.handle(Request::PutFunction(function))?;
        }
        Ok(())
    }

    fn state(&self) -> &'static str {
        match &self.vmm {
            None => "Not started",
            Some(vmm) if vmm.is_paused() => "Paused",
            Some(_) => "Running",
        }
    }

    fn vm_config(&self) -> VmConfig {
        VmConfig {
            boot_source: self.boot_source.clone(),
            drives: self.drives.clone(),
            machine_config: Some(self.machine.clone()),
            logger: self.logger.clone(),
            vsock: self.vsock.clone(),
            function: Some(self.function.clone()),
            ..Default::default()
        }
    }

    fn running(&mut self) -> Result<&mut Vmm, Error> {
        self.vmm.as_mut().ok_or(Error::BeforeStart)
    }

    fn pre_boot(&self) -> Result<(), Error> {
        match self.vmm {
            Some(_) => Err(Error::AfterStart),
            None => Ok(()),
        }
    }

    pub fn handle(&mut self, request: Request) -> Result<Response, Error> {
        match request {
            Request::GetInstanceInfo => Ok(Response::Json(json!({
                "app_name": APP_NAME,
                "id": self.instance_id,
                "state": self.state(),
                "vmm_version": VERSION,
            }))),
            Request::GetVersion => Ok(Response::Json(json!({ "firecracker_version": VERSION }))),
            Request::GetMachineConfig => Ok(Response::Json(json!(self.machine))),
            Request::GetVmConfig => Ok(Response::Json(json!(self.vm_config()))),
            Request::PutLogger(logger) => {
                logger::configure(&logger)?;
                self.logger = Some(logger);
                Ok(Response::NoContent)
            }
            Request::PutBootSource(boot_source) => {
                self.pre_boot()?;
                check_file("kernel image", &boot_source.kernel_image_path)?;
                if let Some(initrd) = &boot_source.initrd_path {
                    check_file("initrd", initrd)?;
                }
                self.boot_source = Some(boot_source);
                Ok(Response::NoContent)
            }
            Request::PutMachineConfig(machine) => {
                self.pre_boot()?;
                machine.validate()?;
                self.machine = machine;
                self.prepare();
                Ok(Response::NoContent)
            }
            Request::PatchMachineConfig(update) => {
                self.pre_boot()?;
                self.machine = self.machine.updated(&update)?;
                self.prepare();
                Ok(Response::NoContent)
            }
            Request::PutDrive(drive) => {
                self.pre_boot()?;
                drive.validate()?;
                check_file("drive file", drive.path())?;
                if drive.is_root_device {
                    if let Some(root) = self
                        .drives
                        .iter()
                        .find(|d| d.is_root_device && d.drive_id != drive.drive_id)
                    {
                        return Err(Error::SecondRoot(root.drive_id.clone()));
                    }
                }
                match self
                    .drives
                    .iter_mut()
                    .find(|d| d.drive_id == drive.drive_id)
                {
                    Some(existing) => *existing = drive,
                    None => self.drives.push(drive),
                }
                Ok(Response::NoContent)
            }
            Request::PutVsock(vsock) => {
                self.pre_boot()?;
                vsock.validate()?;
                self.vsock = Some(vsock);
                Ok(Response::NoContent)
            }
            Request::PutFunction(function) => {
                function.validate()?;
                self.function = function;
                Ok(Response::NoContent)
            }
            Request::GetInvocationTarget => {
                self.running()?;
                let vsock = self.vsock.as_ref().ok_or(Error::NoVsock)?;
                Ok(Response::Invocation(InvocationTarget {
                    uds_path: vsock.uds_path.clone(),
                    port: self.function.vsock_port,
                    timeout: std::time::Duration::from_millis(self.function.timeout_ms),
                    max_concurrent: self.function.max_concurrent_invocations,
                }))
            }
            Request::PatchDrive(update) => {
                self.running()?;
                update.validate()?;
                let drive = self
                    .drives
                    .iter()
                    .position(|d| d.drive_id == update.drive_id)
                    .ok_or_else(|| vmm::Error::NoSuchDrive(update.drive_id.clone()))?;
                let Some(path) = update.path_on_host else {
                    return Ok(Response::NoContent);
                };
                let read_only = self.drives[drive].is_read_only;
                self.running()?
                    .update_drive(&update.drive_id, Path::new(&path), read_only)?;
                self.drives[drive].path_on_host = Some(path);
                Ok(Response::NoContent)
            }
            Request::StartInstance => {
                if self.vmm.is_some() {
                    return Err(Error::AlreadyStarted);
                }
                let options = BuildOptions {
                    boot_timer: self.boot_timer,
                    start: Instant::now(),
                };
                self.prepare();
                let prep = match self.prep.take() {
                    Some(prep) => prep,
                    None => VmPrep::start(&self.machine, &self.exit, &self.seccomp)?,
                };
                let built = builder::build(
                    prep,
                    self.boot_source.as_ref(),
                    &self.machine,
                    &self.drives,
                    self.vsock.as_ref(),
                    &options,
                    self.exit.clone(),
                );
                match built {
                    Ok(vmm) => {
                        self.vmm = Some(vmm);
                        Ok(Response::NoContent)
                    }
                    Err(e) => {
                        // Ready the next attempt.
                        self.prepare();
                        Err(e.into())
                    }
                }
            }
            Request::SendCtrlAltDel => {
                self.running()?.send_ctrl_alt_del()?;
                Ok(Response::NoContent)
            }
            Request::Pause => {
                self.running()?.pause()?;
                Ok(Response::NoContent)
            }
            Request::Resume => {
                self.running()?.resume()?;
                Ok(Response::NoContent)
            }
            Request::CreateSnapshot(params) => {
                params.validate()?;
                let config = self.vm_config();
                persist::create(self.running()?, &config, &params)?;
                Ok(Response::NoContent)
            }
            Request::LoadSnapshot(params) => {
                self.pre_boot()?;
                params.validate()?;
                if self.boot_source.is_some() || !self.drives.is_empty() || self.vsock.is_some() {
                    return Err(Error::LoadAfterConfig);
                }
                // The VM readied for a boot is not the one a snapshot needs,
                // but its vCPU threads may be.
                let threads = self
                    .prep
                    .take()
                    .map(VmPrep::into_vcpu_threads)
                    .unwrap_or_default();
                let (vmm, config) =
                    persist::load(&params, self.exit.clone(), &self.seccomp, threads)?;
                self.boot_source = config.boot_source;
                self.machine = config.machine_config.unwrap_or_default();
                self.drives = config.drives;
                self.vsock = config.vsock;
                if let Some(function) = config.function {
                    self.function = function;
                }
                self.vmm = Some(vmm);
                Ok(Response::NoContent)
            }
        }
    }
}
