//! Everything configured before InstanceStart, in one value: what the API and
//! `--config-file` set piece by piece, and what the builder takes whole.

use std::os::unix::fs::FileTypeExt;

use crate::config::{
    self, BootSourceConfig, DriveConfig, FunctionConfig, LoggerConfig, MachineConfig,
    MachineConfigUpdate, VmConfig, VsockConfig,
};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A request body that is well-formed but not valid.
    #[error(transparent)]
    Config(#[from] config::Error),
    /// A file the configuration names that ember cannot use.
    #[error("{0}")]
    File(String),
    /// Firecracker allows one root device per VM.
    #[error("a root block device already exists: '{0}'")]
    SecondRoot(String),
}

/// The microVM's configuration, as the pre-boot requests leave it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct VmResources {
    pub boot_source: Option<BootSourceConfig>,
    pub machine: MachineConfig,
    pub drives: Vec<DriveConfig>,
    pub vsock: Option<VsockConfig>,
    pub function: FunctionConfig,
    pub logger: Option<LoggerConfig>,
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

impl VmResources {
    /// The resources a saved configuration describes (a snapshot's).
    pub fn from_config(config: VmConfig) -> Self {
        VmResources {
            boot_source: config.boot_source,
            machine: config.machine_config.unwrap_or_default(),
            drives: config.drives,
            vsock: config.vsock,
            function: config.function.unwrap_or_default(),
            logger: config.logger,
        }
    }

    /// The configuration as `GET /vm/config` shows it and snapshots keep it.
    pub fn vm_config(&self) -> VmConfig {
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

    /// Whether anything only a boot uses is configured, which a snapshot
    /// load would silently replace.
    pub fn has_boot_devices(&self) -> bool {
        self.boot_source.is_some() || !self.drives.is_empty() || self.vsock.is_some()
    }

    pub fn set_boot_source(&mut self, boot_source: BootSourceConfig) -> Result<(), Error> {
        check_file("kernel image", &boot_source.kernel_image_path)?;
        if let Some(initrd) = &boot_source.initrd_path {
            check_file("initrd", initrd)?;
        }
        self.boot_source = Some(boot_source);
        Ok(())
    }

    pub fn set_machine(&mut self, machine: MachineConfig) -> Result<(), Error> {
        machine.validate()?;
        self.machine = machine;
        Ok(())
    }

    pub fn update_machine(&mut self, update: &MachineConfigUpdate) -> Result<(), Error> {
        self.machine = self.machine.updated(update)?;
        Ok(())
    }

    /// Adds a drive, or replaces the one with the same id.
    pub fn put_drive(&mut self, drive: DriveConfig) -> Result<(), Error> {
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
        Ok(())
    }

    pub fn set_vsock(&mut self, vsock: VsockConfig) -> Result<(), Error> {
        vsock.validate()?;
        self.vsock = Some(vsock);
        Ok(())
    }

    pub fn set_function(&mut self, function: FunctionConfig) -> Result<(), Error> {
        function.validate()?;
        self.function = function;
        Ok(())
    }
}
