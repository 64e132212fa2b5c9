//! A VM's devices: where each sits, opening their host side, creating and
//! attaching them at power-on or from a snapshot, and saving their states.
//!
//! The legacy PC devices are attached the same way on every VM; the virtio
//! devices follow the configuration, in one layout that gives each its MMIO
//! window and IRQ. Adding a virtio device is a variant of [`VirtioConfig`]
//! and [`Backend`], and its arm in `plan`, `open_backends` and
//! `attach_virtio`.

use std::fs::File;
use std::os::fd::AsFd;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use kvm_ioctls::IoEventAddress;
use linux_loader::loader::Cmdline;
use serde::{Deserialize, Serialize};
use vm_memory::GuestAddress;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::boot_timer::BootTimer;
use super::bus::{self, Bus};
use super::legacy::i8042::{self, I8042State, I8042};
use super::legacy::serial::{
    self, ConsoleIn, ConsoleOut, InputDrained, SerialDevice, SerialSnapshot,
};
use super::pci::PciRoot;
use super::rate_limiter::{RateLimiter, SharedRateLimiter};
use super::virtio::balloon::{self, Balloon, BalloonHandle, BalloonStatus};
use super::virtio::block::{self, Block, Disk};
use super::virtio::mmio::{self, MmioTransport};
use super::virtio::net::tap;
use super::virtio::net::{Net, NetLimiters};
use super::virtio::pci::{self as virtio_pci, PciTransport, PciTransportState};
use super::virtio::rng::Rng;
use super::virtio::transport::{self, TransportEvents, TransportState, VirtioTransport};
use super::virtio::vsock::{self, Vsock};
use super::virtio::{Interrupt, VirtioDevice};
use super::{EventSubscriber, IrqLine};
use crate::arch::x86_64::acpi::DsdtDevice;
use crate::arch::x86_64::layout::{pci_bar, virtio_slot, BOOT_TIMER_START, VIRTIO_MMIO_SIZE};
use crate::config::{
    BalloonConfig, CacheType, DriveConfig, EntropyConfig, NetworkInterfaceConfig,
    RateLimiterConfig, VsockConfig,
};
use crate::exit::ExitSignal;
use crate::metrics::METRICS;
use crate::mmds::stack::MmdsStack;
use crate::resources::{DeviceChange, VmResources};
use crate::vstate::memory::GuestMemoryMmap;
use crate::vstate::vcpu::Buses;
use crate::vstate::vm::Vm;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// More virtio devices than the layout has IRQs for.
    #[error("too many virtio devices: ember has IRQs for {0}")]
    TooManyDevices(usize),
    /// The device entries do not fit the kernel command line.
    #[error("invalid kernel command line: {0}")]
    Cmdline(linux_loader::cmdline::Error),
    /// An eventfd or a console descriptor could not be made.
    #[error("cannot set up {what}: {source}")]
    Setup {
        what: &'static str,
        source: std::io::Error,
    },
    /// An irqfd or ioeventfd KVM refused.
    #[error("KVM refused to wire {what}: {source}")]
    Wire {
        what: &'static str,
        source: kvm_ioctls::Error,
    },
    /// Two devices in one window: a layout bug.
    #[error("cannot lay out devices: {0}")]
    Bus(#[from] bus::Error),
    /// A drive's backing file could not be opened.
    #[error(transparent)]
    Drive(#[from] block::Error),
    /// A network interface's TAP could not be opened.
    #[error("network interface '{0}': {1}")]
    Tap(String, tap::Error),
    /// The vsock device's socket could not be set up.
    #[error(transparent)]
    Vsock(#[from] vsock::Error),
    /// A virtio transport that cannot be made or restored.
    #[error(transparent)]
    Transport(#[from] transport::Error),
    /// A virtio-pci function that cannot be made or restored.
    #[error(transparent)]
    Pci(#[from] virtio_pci::PciError),
    /// More virtio devices than PCI slots.
    #[error("too many virtio devices: the PCI bus has {0} slots for them")]
    TooManyPciDevices(usize),
    /// A snapshot taken on the other transport.
    #[error("the snapshot's devices are on {saved}, and this ember puts them on {ours}: start ember {hint}")]
    TransportMismatch {
        saved: &'static str,
        ours: &'static str,
        hint: &'static str,
    },
    /// A change for a drive the VM does not have.
    #[error("no drive with id '{0}'")]
    NoSuchDrive(String),
    /// A change for an interface the VM does not have.
    #[error("no network interface with id '{0}'")]
    NoSuchInterface(String),
    /// A balloon request on a VM without one.
    #[error("the microVM has no balloon device: PUT /balloon before InstanceStart")]
    NoBalloon,
    /// A snapshot's device states that do not fit its devices.
    #[error("the snapshot's device state is invalid: {0}")]
    BadState(&'static str),
    /// A thread panicked while holding a device.
    #[error("a device lock is poisoned")]
    Poisoned,
}

fn setup_err(what: &'static str) -> impl FnOnce(std::io::Error) -> Error {
    move |source| Error::Setup { what, source }
}

/// The configuration of one virtio device.
#[derive(Clone, Copy)]
enum VirtioConfig<'a> {
    Block(&'a DriveConfig),
    Net(&'a NetworkInterfaceConfig),
    Vsock(&'a VsockConfig),
    Entropy(&'a EntropyConfig),
    Balloon(&'a BalloonConfig),
}

/// Where a virtio device sits: a virtio-mmio window and its IRQ, or a PCI
/// slot and its BAR.
#[derive(Clone, Copy)]
enum Placement {
    Mmio { address: u64, irq: u32 },
    Pci { bar: u64 },
}

/// A virtio device in the layout.
struct VirtioSlot<'a> {
    config: VirtioConfig<'a>,
    placement: Placement,
}

/// Where each virtio device sits: the root drive is the guest's first
/// (/dev/vda), as in Firecracker, then the other drives, the network
/// interfaces, then vsock, the entropy device and the balloon. A boot and every
/// restore of it lay devices out the same way.
pub struct DeviceLayout<'a> {
    virtio: Vec<VirtioSlot<'a>>,
    resources: &'a VmResources,
    pci: bool,
}

impl<'a> DeviceLayout<'a> {
    /// With `pci` (`--enable-pci`), the virtio devices are PCI functions in
    /// slots from 1, in the same order.
    pub fn plan(resources: &'a VmResources, pci: bool) -> Result<Self, Error> {
        let drives = &resources.drives;
        let configs = drives
            .iter()
            .filter(|d| d.is_root_device)
            .chain(drives.iter().filter(|d| !d.is_root_device))
            .map(VirtioConfig::Block)
            .chain(resources.network_interfaces.iter().map(VirtioConfig::Net))
            .chain(resources.vsock.iter().map(VirtioConfig::Vsock))
            .chain(resources.entropy.iter().map(VirtioConfig::Entropy))
            .chain(resources.balloon.iter().map(VirtioConfig::Balloon));
        let virtio = configs
            .enumerate()
            .map(|(index, config)| {
                let placement = if pci {
                    let bar = u8::try_from(index + 1)
                        .ok()
                        .and_then(pci_bar)
                        .ok_or(Error::TooManyPciDevices(index))?;
                    Placement::Pci { bar }
                } else {
                    let (address, irq) = virtio_slot(index).ok_or(Error::TooManyDevices(index))?;
                    Placement::Mmio { address, irq }
                };
                Ok(VirtioSlot { config, placement })
            })
            .collect::<Result<_, Error>>()?;
        Ok(DeviceLayout {
            virtio,
            resources,
            pci,
        })
    }

    /// Tells a Linux guest where its virtio devices are and which is its root;
    /// without PCI, that there is none to probe (`pci=off`, as Firecracker
    /// says it, unless the boot arguments already say something of PCI).
    pub fn add_to_cmdline(&self, cmdline: &mut Cmdline) -> Result<(), Error> {
        let says_pci = cmdline.as_cstring().is_ok_and(|c| {
            c.to_string_lossy()
                .split_whitespace()
                .any(|t| t.starts_with("pci="))
        });
        if !self.pci && !says_pci {
            cmdline.insert_str("pci=off").map_err(Error::Cmdline)?;
        }
        if self.pci && says_pci {
            log::warn!("--enable-pci with boot arguments that set pci=: a Linux guest may not look for its devices on PCI");
        }
        for slot in &self.virtio {
            if let VirtioConfig::Block(drive) = slot.config {
                if drive.is_root_device {
                    let mode = if drive.is_read_only { "ro" } else { "rw" };
                    let root = match &drive.partuuid {
                        Some(uuid) => format!("root=PARTUUID={uuid} {mode}"),
                        None => format!("root=/dev/vda {mode}"),
                    };
                    cmdline.insert_str(root).map_err(Error::Cmdline)?;
                }
            }
            if let Placement::Mmio { address, irq } = slot.placement {
                cmdline
                    .add_virtio_mmio_device(VIRTIO_MMIO_SIZE, GuestAddress(address), irq, None)
                    .map_err(Error::Cmdline)?;
            }
        }
        Ok(())
    }

    /// Every device the guest's ACPI DSDT describes: the legacy ones, then
    /// each virtio-mmio window in layout order.
    pub fn acpi_devices(&self) -> Vec<DsdtDevice> {
        let uart = u16::try_from(serial::COM1_PORT)
            .ok()
            .map(|port| DsdtDevice::Uart {
                port,
                irq: serial::COM1_IRQ,
            });
        let keyboard = DsdtDevice::Keyboard {
            irq: i8042::KBD_IRQ,
        };
        let legacy = uart.into_iter().chain([keyboard]);
        let pci = self.pci.then(|| {
            let (start, size) = PciRoot::bar_window();
            let (ecam, ecam_size) = PciRoot::window();
            let ecam = (u32::try_from(ecam).ok()?, u32::try_from(ecam_size).ok()?);
            let bridge = DsdtDevice::PciHostBridge {
                window: (u32::try_from(start).ok()?, u32::try_from(size).ok()?),
                ecam,
            };
            let reserved = DsdtDevice::Reserved {
                address: ecam.0,
                size: ecam.1,
            };
            Some([bridge, reserved])
        });
        let virtio = self.virtio.iter().filter_map(|slot| match slot.placement {
            Placement::Mmio { address, irq } => Some(DsdtDevice::VirtioMmio {
                address: u32::try_from(address).ok()?,
                size: u32::try_from(VIRTIO_MMIO_SIZE).ok()?,
                irq,
            }),
            Placement::Pci { .. } => None,
        });
        legacy
            .chain(pci.flatten().into_iter().flatten())
            .chain(virtio)
            .collect()
    }

    /// Opens every device's host side: before the VM exists, so a bad path
    /// fails fast and leaves no VM to tear down.
    pub fn open_backends(&self) -> Result<Backends<'a>, Error> {
        let backends = self
            .virtio
            .iter()
            .map(|slot| {
                let backend = match slot.config {
                    VirtioConfig::Block(drive) => {
                        let disk = Disk::open(Path::new(drive.path()), drive.is_read_only)?;
                        let limiter = limiter(drive.rate_limiter.as_ref())?;
                        Backend::Block(drive, Arc::new(Mutex::new(disk)), limiter)
                    }
                    VirtioConfig::Net(net) => {
                        let (device, interface) = self.open_net(net)?;
                        Backend::Net(Box::new(device), interface)
                    }
                    VirtioConfig::Entropy(entropy) => {
                        let limiter = RateLimiter::new(entropy.rate_limiter.as_ref())
                            .map_err(setup_err("a rate limiter"))?;
                        Backend::Entropy(Box::new(Rng::new(limiter)))
                    }
                    VirtioConfig::Balloon(config) => {
                        let (balloon, handle) = Balloon::new(
                            mib_to_pages(config.amount_mib),
                            config.deflate_on_oom,
                            config.stats_polling_interval_s,
                            config.free_page_hinting,
                            config.free_page_reporting,
                        )
                        .map_err(setup_err("the balloon's statistics timer"))?;
                        Backend::Balloon(Box::new(balloon), handle)
                    }
                    VirtioConfig::Vsock(config) => Backend::Vsock(Box::new(Vsock::new(
                        u64::from(config.guest_cid),
                        Path::new(&config.uds_path),
                    )?)),
                };
                Ok(OpenDevice {
                    placement: slot.placement,
                    backend,
                })
            })
            .collect::<Result<_, Error>>()?;
        Ok(Backends(backends, self.pci))
    }

    /// A net device on its TAP, with MMDS if the configuration puts it
    /// there, and the handle the controller changes its limits through.
    fn open_net(&self, net: &NetworkInterfaceConfig) -> Result<(Net, Interface), Error> {
        let tap = self
            .resources
            .open_taps
            .take_or_open(&net.host_dev_name)
            .map_err(|e| Error::Tap(net.iface_id.clone(), e))?;
        let mmds = self
            .resources
            .mmds_config
            .as_ref()
            .filter(|m| m.network_interfaces.contains(&net.iface_id))
            .and_then(|m| m.address().ok())
            .map(|address| MmdsStack::new(address, self.resources.mmds.clone()));
        let limiters = NetLimiters {
            rx: limiter(net.rx_rate_limiter.as_ref())?,
            tx: limiter(net.tx_rate_limiter.as_ref())?,
        };
        let interface = Interface {
            id: net.iface_id.clone(),
            limiters: limiters.clone(),
        };
        Ok((
            Net::new(
                tap,
                net.mac(),
                net.mtu(),
                mmds,
                limiters,
                METRICS.interface(&net.iface_id),
            ),
            interface,
        ))
    }
}

/// Balloon pages (4 KiB) in `mib` MiB.
pub fn mib_to_pages(mib: u32) -> u32 {
    mib.saturating_mul(balloon::PAGES_PER_MIB)
}

fn limiter(config: Option<&RateLimiterConfig>) -> Result<SharedRateLimiter, Error> {
    RateLimiter::shared(config).map_err(setup_err("a rate limiter"))
}

/// The host side of one virtio device, with its configuration.
enum Backend<'a> {
    Block(&'a DriveConfig, Arc<Mutex<Disk>>, SharedRateLimiter),
    Net(Box<Net>, Interface),
    Vsock(Box<Vsock>),
    Entropy(Box<Rng>),
    Balloon(Box<Balloon>, BalloonHandle),
}

/// A virtio device whose host side is open, where the layout puts it.
struct OpenDevice<'a> {
    placement: Placement,
    backend: Backend<'a>,
}

/// The layout's virtio devices with their host side open, in layout order,
/// and whether they go on PCI.
pub struct Backends<'a>(Vec<OpenDevice<'a>>, bool);

/// A block device as the controller sees it after boot.
pub struct Drive {
    pub id: String,
    pub disk: Arc<Mutex<Disk>>,
    pub limiter: SharedRateLimiter,
    pub interrupt: Arc<Interrupt>,
}

/// A network interface as the controller sees it after boot.
pub struct Interface {
    pub id: String,
    pub limiters: NetLimiters,
}

/// The balloon as the controller sees it after boot.
pub struct BalloonDevice {
    pub handle: BalloonHandle,
    pub interrupt: Arc<Interrupt>,
}

/// Every device's state, in layout order for the virtio ones.
#[derive(Serialize, Deserialize)]
pub struct DeviceStates {
    serial: SerialSnapshot,
    i8042: I8042State,
    virtio: VirtioStates,
}

impl DeviceStates {
    /// Refuses states saved on the other virtio transport than the one
    /// `pci` says this ember uses.
    pub fn check_transport(&self, pci: bool) -> Result<(), Error> {
        let ours = if pci { TRANSPORT_PCI } else { TRANSPORT_MMIO };
        if self.virtio.transport() == ours {
            return Ok(());
        }
        Err(Error::TransportMismatch {
            saved: self.virtio.transport(),
            ours,
            hint: if pci {
                "without --enable-pci"
            } else {
                "with --enable-pci"
            },
        })
    }
}

/// The virtio devices' states, on the transport they were on.
#[derive(Serialize, Deserialize)]
enum VirtioStates {
    Mmio(Vec<TransportState>),
    Pci(Vec<PciTransportState>),
}

impl VirtioStates {
    fn len(&self) -> usize {
        match self {
            VirtioStates::Mmio(states) => states.len(),
            VirtioStates::Pci(states) => states.len(),
        }
    }

    fn transport(&self) -> &'static str {
        match self {
            VirtioStates::Mmio(_) => TRANSPORT_MMIO,
            VirtioStates::Pci(_) => TRANSPORT_PCI,
        }
    }
}

const TRANSPORT_MMIO: &str = "virtio-mmio";
const TRANSPORT_PCI: &str = "virtio-pci";

/// A running VM's virtio transports, in layout order: all on one transport.
enum Transports {
    Mmio(Vec<Arc<Mutex<MmioTransport>>>),
    Pci(Vec<Arc<Mutex<PciTransport>>>),
}

/// The devices of a running microVM, as the controller reaches them.
pub struct Devices {
    pub i8042: Arc<Mutex<I8042>>,
    pub drives: Vec<Drive>,
    pub interfaces: Vec<Interface>,
    pub balloon: Option<BalloonDevice>,
    serial: Arc<Mutex<SerialDevice>>,
    /// Every virtio transport, in layout order.
    transports: Transports,
    /// Taken by the event loop when the VM starts.
    subscribers: Vec<Box<dyn EventSubscriber>>,
}

impl Devices {
    /// Creates the devices around `backends` on `vm`, at power-on or as `saved`
    /// left them, with their buses for the vCPUs.
    pub fn create(
        vm: &Vm,
        mem: &GuestMemoryMmap,
        backends: Backends,
        boot_timer: Option<Instant>,
        exit: &Arc<ExitSignal>,
        saved: Option<&DeviceStates>,
    ) -> Result<(Buses, Devices), Error> {
        let mut buses = Buses {
            pio: Bus::default(),
            mmio: Bus::default(),
            holds_writes: false,
            held_writes: None,
        };
        let mut devices = Devices::attach_legacy(vm, &mut buses, exit, saved)?;
        if let Some(start) = boot_timer {
            let timer = Arc::new(Mutex::new(BootTimer::new(start)));
            buses
                .mmio
                .insert(BOOT_TIMER_START, VIRTIO_MMIO_SIZE, timer)?;
        }
        devices.attach_virtio(vm, mem, &mut buses.mmio, backends, saved)?;
        buses.holds_writes = matches!(&devices.transports, Transports::Pci(all) if !all.is_empty());
        Ok((buses, devices))
    }

    /// The serial console on COM1 and the i8042 controller.
    fn attach_legacy(
        vm: &Vm,
        buses: &mut Buses,
        exit: &Arc<ExitSignal>,
        saved: Option<&DeviceStates>,
    ) -> Result<Devices, Error> {
        let console = |what| setup_err(what);
        let stdout = std::io::stdout()
            .as_fd()
            .try_clone_to_owned()
            .map_err(console("the serial console's output"))?;
        let stdin = std::io::stdin()
            .as_fd()
            .try_clone_to_owned()
            .map_err(console("the serial console's input"))?;
        let drained = EventFd::new(EFD_NONBLOCK).map_err(console("the serial console"))?;
        let serial = SerialDevice::new(
            irq_line(vm, serial::COM1_IRQ, "the serial IRQ")?,
            InputDrained(drained.try_clone().map_err(console("the serial console"))?),
            Box::new(ConsoleOut::new(File::from(stdout))),
            saved.map(|s| &s.serial),
        )
        .map_err(|_| Error::BadState("the serial console's input is over its FIFO size"))?;
        let serial = Arc::new(Mutex::new(serial));
        buses
            .pio
            .insert(serial::COM1_PORT, serial::PORT_COUNT, serial.clone())?;
        let console_in = ConsoleIn::new(serial.clone(), File::from(stdin), drained);

        let mut i8042 = I8042::new(
            exit.clone(),
            irq_line(vm, i8042::KBD_IRQ, "the keyboard IRQ")?,
        );
        if let Some(saved) = saved {
            i8042.restore_state(&saved.i8042);
        }
        let i8042 = Arc::new(Mutex::new(i8042));
        buses
            .pio
            .insert(i8042::I8042_PORT, i8042::PORT_COUNT, i8042.clone())?;
        Ok(Devices {
            i8042,
            drives: Vec::new(),
            interfaces: Vec::new(),
            balloon: None,
            serial,
            transports: Transports::Mmio(Vec::new()),
            subscribers: vec![Box::new(console_in)],
        })
    }

    /// The virtio devices, each on its transport.
    fn attach_virtio(
        &mut self,
        vm: &Vm,
        mem: &GuestMemoryMmap,
        mmio_bus: &mut Bus,
        backends: Backends,
        saved: Option<&DeviceStates>,
    ) -> Result<(), Error> {
        let Backends(opened, pci) = backends;
        if pci {
            self.transports = Transports::Pci(Vec::new());
        }
        if let Some(saved) = saved {
            saved.check_transport(pci)?;
            if saved.virtio.len() != opened.len() {
                return Err(Error::BadState(
                    "the snapshot's virtio devices do not match its configuration",
                ));
            }
        }
        let mut pci_root = PciRoot::new();
        for (index, open) in opened.into_iter().enumerate() {
            let (device, keep) = self.device(open.backend);
            let (transport, interrupt): (Arc<Mutex<dyn VirtioTransport>>, _) = match open.placement
            {
                Placement::Mmio { address, irq } => {
                    let interrupt = Arc::new(Interrupt::pin(irq_line(vm, irq, "a virtio IRQ")?.0));
                    let transport = match saved.map(|s| &s.virtio) {
                        Some(VirtioStates::Mmio(states)) => {
                            let state = states.get(index).ok_or(Error::BadState("a device"))?;
                            MmioTransport::restore(device, mem.clone(), interrupt.clone(), state)?
                        }
                        _ => MmioTransport::new(device, mem.clone(), interrupt.clone())?,
                    };
                    let notify = IoEventAddress::Mmio(address + mmio::NOTIFY_REG_OFFSET);
                    for (queue, evt) in (0u32..).zip(transport.queue_events()) {
                        register_notify(vm, evt, &notify, Some(queue))?;
                    }
                    let transport = Arc::new(Mutex::new(transport));
                    mmio_bus.insert(address, VIRTIO_MMIO_SIZE, transport.clone())?;
                    if let Transports::Mmio(all) = &mut self.transports {
                        all.push(transport.clone());
                    }
                    (transport, interrupt)
                }
                Placement::Pci { bar } => {
                    let transport = match saved.map(|s| &s.virtio) {
                        Some(VirtioStates::Pci(states)) => {
                            let state = states.get(index).ok_or(Error::BadState("a device"))?;
                            PciTransport::restore(device, mem.clone(), vm, bar, state)?
                        }
                        _ => PciTransport::new(device, mem.clone(), vm, bar)?,
                    };
                    for (queue, evt) in (0u64..).zip(transport.queue_events()) {
                        let offset =
                            virtio_pci::NOTIFY + queue * u64::from(virtio_pci::NOTIFY_MULTIPLIER);
                        register_notify(vm, evt, &IoEventAddress::Mmio(bar + offset), None)?;
                    }
                    for (offset, len) in virtio_pci::HELD_WRITES {
                        hold_writes(vm, bar + offset, len)?;
                    }
                    let interrupt = transport.interrupt();
                    let transport = Arc::new(Mutex::new(transport));
                    pci_root
                        .add(transport.clone())
                        .ok_or(Error::TooManyPciDevices(index))?;
                    mmio_bus.insert(bar, virtio_pci::BAR_SIZE, transport.clone())?;
                    if let Transports::Pci(all) = &mut self.transports {
                        all.push(transport.clone());
                    }
                    (transport, interrupt)
                }
            };
            self.keep(keep, interrupt);
            self.subscribers
                .push(Box::new(TransportEvents::new(transport)?));
        }
        if pci {
            let (start, size) = PciRoot::window();
            mmio_bus.insert(start, size, Arc::new(Mutex::new(pci_root)))?;
        }
        Ok(())
    }

    /// The device over `backend`, and what the controller keeps of it.
    fn device(&mut self, backend: Backend) -> (Box<dyn VirtioDevice>, Keep) {
        match backend {
            Backend::Block(drive, disk, limiter) => {
                let cache = match drive.cache_type {
                    CacheType::Unsafe => block::CacheType::Unsafe,
                    CacheType::Writeback => block::CacheType::Writeback,
                };
                let metrics = METRICS.drive(&drive.drive_id);
                let keep = Keep::Drive(drive.drive_id.clone(), disk.clone(), limiter.clone());
                let block = Block::new(disk, limiter, metrics, drive.is_read_only, cache);
                (Box::new(block), keep)
            }
            Backend::Net(net, interface) => {
                self.interfaces.push(interface);
                (net, Keep::Nothing)
            }
            Backend::Vsock(vsock) => (vsock, Keep::Nothing),
            Backend::Entropy(rng) => (rng, Keep::Nothing),
            Backend::Balloon(balloon, handle) => (balloon, Keep::Balloon(handle)),
        }
    }

    /// Keeps what the controller reaches a device through, with the
    /// interrupt it raises configuration changes on.
    fn keep(&mut self, keep: Keep, interrupt: Arc<Interrupt>) {
        match keep {
            Keep::Drive(id, disk, limiter) => self.drives.push(Drive {
                id,
                disk,
                limiter,
                interrupt,
            }),
            Keep::Balloon(handle) => self.balloon = Some(BalloonDevice { handle, interrupt }),
            Keep::Nothing => {}
        }
    }

    /// Every device's state; the VM must be paused.
    pub fn save_state(&self) -> Result<DeviceStates, Error> {
        Ok(DeviceStates {
            serial: self
                .serial
                .lock()
                .map_err(|_| Error::Poisoned)?
                .save_state(),
            i8042: self.i8042.lock().map_err(|_| Error::Poisoned)?.save_state(),
            virtio: match &self.transports {
                Transports::Mmio(all) => VirtioStates::Mmio(saved(all, MmioTransport::save_state)?),
                Transports::Pci(all) => VirtioStates::Pci(saved(all, PciTransport::save_state)?),
            },
        })
    }

    /// Makes a change the controller asked for on the running VM.
    pub fn apply(&self, change: &DeviceChange) -> Result<(), Error> {
        match change {
            DeviceChange::Drive {
                id,
                file,
                rate_limiter,
            } => {
                let drive = self
                    .drives
                    .iter()
                    .find(|d| &d.id == id)
                    .ok_or_else(|| Error::NoSuchDrive(id.clone()))?;
                if let Some((path, read_only)) = file {
                    let metrics = METRICS.drive(id);
                    metrics.update_count.inc();
                    let disk =
                        Disk::open(path, *read_only).inspect_err(|_| metrics.update_fails.inc())?;
                    *drive.disk.lock().map_err(|_| Error::Poisoned)? = disk;
                    // The guest learns the new size from the configuration space.
                    drive.interrupt.raise_config();
                }
                if let Some(update) = rate_limiter {
                    update_limiter(&drive.limiter, update)?;
                }
                Ok(())
            }
            DeviceChange::Net {
                id,
                rx_rate_limiter,
                tx_rate_limiter,
            } => {
                let interface = self
                    .interfaces
                    .iter()
                    .find(|i| &i.id == id)
                    .ok_or_else(|| Error::NoSuchInterface(id.clone()))?;
                let limiters = &interface.limiters;
                for (limiter, update) in [
                    (&limiters.rx, rx_rate_limiter),
                    (&limiters.tx, tx_rate_limiter),
                ] {
                    if let Some(update) = update {
                        update_limiter(limiter, update)?;
                    }
                }
                Ok(())
            }
            DeviceChange::BalloonTarget { amount_mib } => {
                let balloon = self.balloon.as_ref().ok_or(Error::NoBalloon)?;
                balloon
                    .handle
                    .status
                    .lock()
                    .map_err(|_| Error::Poisoned)?
                    .target_pages = mib_to_pages(*amount_mib);
                // The guest reads the new target from the configuration space.
                balloon.interrupt.raise_config();
                Ok(())
            }
            DeviceChange::BalloonHinting(start) => {
                let balloon = self.balloon.as_ref().ok_or(Error::NoBalloon)?;
                let mut status = balloon.handle.status.lock().map_err(|_| Error::Poisoned)?;
                match start {
                    Some(acknowledge_on_stop) => status.hinting.start(*acknowledge_on_stop),
                    None => status.hinting.stop(),
                }
                drop(status);
                // The guest reads the command from the configuration space.
                balloon.interrupt.raise_config();
                Ok(())
            }
            DeviceChange::BalloonStatsInterval { seconds } => {
                let balloon = self.balloon.as_ref().ok_or(Error::NoBalloon)?;
                balloon
                    .handle
                    .set_stats_interval(*seconds)
                    .map_err(setup_err("the balloon's statistics timer"))
            }
        }
    }

    /// What the balloon holds and the guest last reported, if there is one.
    pub fn balloon_status(&self) -> Result<BalloonStatus, Error> {
        let balloon = self.balloon.as_ref().ok_or(Error::NoBalloon)?;
        let status = balloon.handle.status.lock().map_err(|_| Error::Poisoned)?;
        Ok(status.clone())
    }

    /// The devices' host-side events, for the event loop to serve from now on.
    pub fn take_subscribers(&mut self) -> Vec<Box<dyn EventSubscriber>> {
        std::mem::take(&mut self.subscribers)
    }
}

fn update_limiter(limiter: &SharedRateLimiter, update: &RateLimiterConfig) -> Result<(), Error> {
    limiter.lock().map_err(|_| Error::Poisoned)?.update(update);
    Ok(())
}

/// Each transport's state, by `save`.
fn saved<T, S>(all: &[Arc<Mutex<T>>], save: fn(&T) -> S) -> Result<Vec<S>, Error> {
    all.iter()
        .map(|t| t.lock().map(|t| save(&t)).map_err(|_| Error::Poisoned))
        .collect()
}

/// What the controller keeps of a device, besides its interrupt.
enum Keep {
    Drive(String, Arc<Mutex<Disk>>, SharedRateLimiter),
    Balloon(BalloonHandle),
    Nothing,
}

/// Has KVM signal `evt` on a guest write at `address` (of `datamatch`, if given).
fn register_notify(
    vm: &Vm,
    evt: &EventFd,
    address: &IoEventAddress,
    datamatch: Option<u32>,
) -> Result<(), Error> {
    let registered = match datamatch {
        Some(value) => vm.fd().register_ioevent(evt, address, value),
        None => vm
            .fd()
            .register_ioevent(evt, address, kvm_ioctls::NoDatamatch),
    };
    registered.map_err(|source| Error::Wire {
        what: "a virtio queue notification",
        source,
    })
}

/// Has KVM queue guest writes to `len` bytes at `address` for the vCPUs to
/// replay, instead of exiting for each (`vstate::coalesced`).
fn hold_writes(vm: &Vm, address: u64, len: u64) -> Result<(), Error> {
    let wire = |source| Error::Wire {
        what: "a coalesced MMIO zone",
        source,
    };
    let len = u32::try_from(len).map_err(|_| wire(kvm_ioctls::Error::new(libc::EINVAL)))?;
    vm.fd()
        .register_coalesced_mmio(IoEventAddress::Mmio(address), len)
        .map_err(wire)
}

/// An interrupt line: an eventfd KVM turns into guest IRQ `irq`.
fn irq_line(vm: &Vm, irq: u32, what: &'static str) -> Result<IrqLine, Error> {
    let evt = EventFd::new(EFD_NONBLOCK).map_err(setup_err(what))?;
    vm.fd()
        .register_irqfd(&evt, irq)
        .map_err(|source| Error::Wire { what, source })?;
    Ok(IrqLine(evt))
}
