//! From a validated configuration to a running microVM.
//!
//! Everything here is on the InstanceStart path, so it does only what the
//! guest needs before its first instruction: guest memory is mapped lazily,
//! files are opened once, and the vCPUs start as soon as they are configured.

use std::fs::File;
use std::os::fd::AsFd;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use crate::vstate::memory::GuestMemoryMmap;
use kvm_bindings::{CpuId, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::IoEventAddress;
use linux_loader::loader::Cmdline;
use serde::{Deserialize, Serialize};
use vm_memory::GuestAddress;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::arch::x86_64::boot;
use crate::arch::x86_64::layout::{
    virtio_slot, BOOT_TIMER_START, CMDLINE_MAX_SIZE, VIRTIO_MMIO_SIZE,
};
use crate::config::{
    BootSourceConfig, CacheType, DriveConfig, MachineConfig, VsockConfig, DEFAULT_BOOT_ARGS,
};
use crate::devices::boot_timer::BootTimer;
use crate::devices::bus::{self, Bus};
use crate::devices::legacy::i8042::{self, I8042State, I8042};
use crate::devices::legacy::serial::{
    self, ConsoleOut, InputDrained, SerialDevice, SerialSnapshot,
};
use crate::devices::virtio::block::{self as block, Block, Disk};
use crate::devices::virtio::mmio::{self, MmioTransport, TransportState, NOTIFY_REG_OFFSET};
use crate::devices::virtio::vsock::{self, Vsock};
use crate::devices::virtio::{Interrupt, VirtioDevice};
use crate::devices::IrqLine;
use crate::exit::ExitSignal;
use crate::seccomp::Filters;
use crate::vmm::{Devices, Drive, Vmm};
use crate::vstate::memory::{self, MemoryBackend};
use crate::vstate::vcpu::{self, Buses, Vcpu, VcpuHandle, VcpuState, VcpuThread};
use crate::vstate::vm::{self, VmState};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no boot source: PUT /boot-source with a kernel_image_path first")]
    NoBootSource,
    #[error(transparent)]
    Vm(#[from] vm::Error),
    #[error(transparent)]
    Memory(#[from] memory::Error),
    #[error(transparent)]
    Boot(#[from] boot::Error),
    #[error(transparent)]
    Vcpu(#[from] vcpu::Error),
    #[error(transparent)]
    Drive(#[from] block::Error),
    #[error(transparent)]
    Transport(#[from] mmio::Error),
    #[error("cannot lay out devices: {0}")]
    Bus(#[from] bus::Error),
    #[error("too many virtio devices: ember has IRQs for {0}")]
    TooManyDevices(usize),
    #[error("invalid kernel command line: {0}")]
    Cmdline(linux_loader::cmdline::Error),
    #[error("cannot set up {what}: {source}")]
    Setup {
        what: &'static str,
        source: std::io::Error,
    },
    #[error(transparent)]
    Vsock(#[from] vsock::Error),
    #[error("the VM preparation thread panicked")]
    PrepPanicked,
    #[error("the snapshot's device state is invalid: {0}")]
    BadDeviceState(&'static str),
    #[error("a device lock is poisoned")]
    Poisoned,
    #[error("KVM refused to wire {what}: {source}")]
    Wire {
        what: &'static str,
        source: kvm_ioctls::Error,
    },
}

fn setup_err(what: &'static str) -> impl FnOnce(std::io::Error) -> Error {
    move |source| Error::Setup { what, source }
}

/// What the builder needs beyond the configuration.
pub struct BuildOptions {
    /// Adds Firecracker's boot-timer device, timing from `start`.
    pub boot_timer: bool,
    pub start: Instant,
}

/// A VM being made ready off the start path.
///
/// Creating the VM with its memory slots and interrupt controllers, querying
/// CPUID and starting the vCPU threads do not depend on the kernel or the
/// devices, so they run on their own thread as soon as the machine
/// configuration is known, while the API is still being configured or the
/// kernel is being loaded. Guest memory itself is mapped right away.
pub struct VmPrep {
    mem_size_mib: u64,
    track_dirty_pages: bool,
    mem: GuestMemoryMmap,
    /// Taken by `finish`; otherwise joined, and the VM destroyed, off the
    /// caller's path when the preparation is dropped.
    kvm: Option<JoinHandle<Result<(vm::Vm, CpuId), Error>>>,
    /// Started here, so a snapshot load can take them without waiting for the VM.
    vcpu_threads: Vec<VcpuThread>,
}

impl VmPrep {
    pub fn start(
        machine: &MachineConfig,
        exit: &Arc<ExitSignal>,
        seccomp: &Filters,
    ) -> Result<Self, Error> {
        let mem = memory::create(machine.mem_size_mib)?;
        let slots = mem.clone();
        let track_dirty_pages = machine.track_dirty_pages;
        let kvm = std::thread::Builder::new()
            .name("ember_vmprep".into())
            .spawn(move || {
                let vm = vm::Vm::new(&slots, track_dirty_pages)?;
                let cpuid = vm
                    .kvm()
                    .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
                    .map_err(|source| Error::Wire {
                        what: "CPUID",
                        source,
                    })?;
                Ok((vm, cpuid))
            })
            .map_err(setup_err("the VM preparation thread"))?;
        let vcpu_threads = vcpu_threads(Vec::new(), machine.vcpu_count, exit, seccomp)?;
        Ok(VmPrep {
            mem_size_mib: machine.mem_size_mib,
            track_dirty_pages,
            mem,
            kvm: Some(kvm),
            vcpu_threads,
        })
    }

    /// Whether this VM fits a machine configuration.
    pub fn fits(&self, machine: &MachineConfig) -> bool {
        self.mem_size_mib == machine.mem_size_mib
            && self.track_dirty_pages == machine.track_dirty_pages
            && self.vcpu_threads.len() == usize::from(machine.vcpu_count)
    }

    fn finish(mut self) -> Result<(vm::Vm, CpuId, Vec<VcpuThread>), Error> {
        let kvm = self.kvm.take().ok_or(Error::PrepPanicked)?;
        let (vm, cpuid) = kvm.join().map_err(|_| Error::PrepPanicked)??;
        Ok((vm, cpuid, std::mem::take(&mut self.vcpu_threads)))
    }

    /// For a snapshot load, which needs a VM of its own: the vCPU threads.
    pub fn into_vcpu_threads(mut self) -> Vec<VcpuThread> {
        std::mem::take(&mut self.vcpu_threads)
    }
}

impl Drop for VmPrep {
    /// Destroying a VM takes milliseconds (and it may not even be ready):
    /// a preparation nobody used is let go on a thread of its own.
    fn drop(&mut self) {
        if let Some(kvm) = self.kvm.take() {
            let _ = std::thread::Builder::new()
                .name("ember_vmdrop".into())
                .spawn(move || drop(kvm.join()));
        }
    }
}

/// `count` vCPU threads: those in `ready` if there are as many, else new ones.
fn vcpu_threads(
    ready: Vec<VcpuThread>,
    count: u8,
    exit: &Arc<ExitSignal>,
    seccomp: &Filters,
) -> Result<Vec<VcpuThread>, Error> {
    if ready.len() == usize::from(count) {
        return Ok(ready);
    }
    Ok((0..count)
        .map(|index| VcpuThread::spawn(index, exit.clone(), seccomp.clone()))
        .collect::<Result<_, _>>()?)
}

/// Where each virtio device sits: the root drive is the guest's first
/// (/dev/vda), as in Firecracker, then the other drives, then vsock. A boot
/// and every restore of it lay devices out the same way.
struct DeviceLayout<'a> {
    drives: Vec<(&'a DriveConfig, u64, u32)>,
    vsock: Option<(&'a VsockConfig, u64, u32)>,
}

fn device_layout<'a>(
    drives: &'a [DriveConfig],
    vsock: Option<&'a VsockConfig>,
) -> Result<DeviceLayout<'a>, Error> {
    let slot = |index: usize| virtio_slot(index).ok_or(Error::TooManyDevices(index));
    let drives = drives
        .iter()
        .filter(|d| d.is_root_device)
        .chain(drives.iter().filter(|d| !d.is_root_device))
        .enumerate()
        .map(|(index, drive)| {
            let (address, irq) = slot(index)?;
            Ok((drive, address, irq))
        })
        .collect::<Result<Vec<_>, Error>>()?;
    let vsock = vsock
        .map(|config| {
            let (address, irq) = slot(drives.len())?;
            Ok::<_, Error>((config, address, irq))
        })
        .transpose()?;
    Ok(DeviceLayout { drives, vsock })
}

/// Every device's state, in layout order for the virtio ones.
#[derive(Serialize, Deserialize)]
pub struct DeviceStates {
    serial: SerialSnapshot,
    i8042: I8042State,
    virtio: Vec<TransportState>,
}

impl DeviceStates {
    pub fn save(devices: &Devices) -> Result<Self, Error> {
        Ok(DeviceStates {
            serial: devices
                .serial
                .lock()
                .map_err(|_| Error::Poisoned)?
                .save_state(),
            i8042: devices
                .i8042
                .lock()
                .map_err(|_| Error::Poisoned)?
                .save_state(),
            virtio: devices
                .transports
                .iter()
                .map(|t| Ok(t.lock().map_err(|_| Error::Poisoned)?.save_state()))
                .collect::<Result<_, Error>>()?,
        })
    }
}

/// The host side of the virtio devices, the drives' files and the vsock
/// socket: opened before the VM exists, so a bad path fails fast and leaves
/// no VM to tear down.
struct Backends {
    disks: Vec<Arc<Mutex<Disk>>>,
    vsock: Option<Vsock>,
}

fn open_backends(layout: &DeviceLayout) -> Result<Backends, Error> {
    let disks = layout
        .drives
        .iter()
        .map(|&(drive, _, _)| {
            Ok(Arc::new(Mutex::new(Disk::open(
                Path::new(drive.path()),
                drive.is_read_only,
            )?)))
        })
        .collect::<Result<_, Error>>()?;
    let vsock = layout
        .vsock
        .map(|(config, _, _)| Vsock::new(u64::from(config.guest_cid), Path::new(&config.uds_path)))
        .transpose()?;
    Ok(Backends { disks, vsock })
}

/// Creates the devices of `layout` on `vm`, at power-on or as `saved` left them.
fn create_devices(
    vm: &vm::Vm,
    mem: &GuestMemoryMmap,
    layout: &DeviceLayout,
    backends: Backends,
    boot_timer: Option<Instant>,
    exit: &Arc<ExitSignal>,
    saved: Option<&DeviceStates>,
) -> Result<(Buses, Devices), Error> {
    let mut pio = Bus::default();
    let mut mmio = Bus::default();
    let irq_line = |irq: u32, what: &'static str| -> Result<EventFd, Error> {
        let evt = EventFd::new(EFD_NONBLOCK).map_err(setup_err(what))?;
        vm.fd()
            .register_irqfd(&evt, irq)
            .map_err(|source| Error::Wire { what, source })?;
        Ok(evt)
    };

    let stdout = std::io::stdout()
        .as_fd()
        .try_clone_to_owned()
        .map_err(setup_err("the serial console"))?;
    let serial_drained = EventFd::new(EFD_NONBLOCK).map_err(setup_err("the serial console"))?;
    let serial = SerialDevice::new(
        IrqLine(irq_line(serial::COM1_IRQ, "the serial IRQ")?),
        InputDrained(
            serial_drained
                .try_clone()
                .map_err(setup_err("the serial console"))?,
        ),
        Box::new(ConsoleOut::new(File::from(stdout))),
        saved.map(|s| &s.serial),
    )
    .map_err(|_| Error::BadDeviceState("the serial console's input is over its FIFO size"))?;
    let serial = Arc::new(Mutex::new(serial));
    pio.insert(serial::COM1_PORT, serial::PORT_COUNT, serial.clone())?;

    let mut i8042 = I8042::new(
        exit.clone(),
        IrqLine(irq_line(i8042::KBD_IRQ, "the keyboard IRQ")?),
    );
    if let Some(saved) = saved {
        i8042.restore_state(&saved.i8042);
    }
    let i8042 = Arc::new(Mutex::new(i8042));
    pio.insert(i8042::I8042_PORT, i8042::PORT_COUNT, i8042.clone())?;

    if let Some(start) = boot_timer {
        let timer = Arc::new(Mutex::new(BootTimer::new(start)));
        mmio.insert(BOOT_TIMER_START, VIRTIO_MMIO_SIZE, timer)?;
    }

    let device_count = layout.drives.len() + usize::from(layout.vsock.is_some());
    if saved.is_some_and(|s| s.virtio.len() != device_count) {
        return Err(Error::BadDeviceState(
            "the snapshot's virtio devices do not match its configuration",
        ));
    }
    let mut saved_virtio = saved.map(|s| s.virtio.iter());
    let mut transports = Vec::with_capacity(device_count);
    let mut queue_events = Vec::new();
    let mut backend_events = Vec::new();
    let mut attach = |device: Box<dyn VirtioDevice>, address: u64, irq: u32| {
        let interrupt = Arc::new(Interrupt::new(irq_line(irq, "a virtio IRQ")?));
        let transport = match saved_virtio.as_mut().and_then(Iterator::next) {
            Some(state) => MmioTransport::restore(device, mem.clone(), interrupt.clone(), state)?,
            None => MmioTransport::new(device, mem.clone(), interrupt.clone())?,
        };
        let mut events = Vec::new();
        for (queue, evt) in transport.queue_events().iter().enumerate() {
            vm.fd()
                .register_ioevent(
                    evt,
                    &IoEventAddress::Mmio(address + NOTIFY_REG_OFFSET),
                    queue as u32,
                )
                .map_err(|source| Error::Wire {
                    what: "a virtio queue notification",
                    source,
                })?;
            events.push((evt.try_clone().map_err(setup_err("a virtio queue"))?, queue));
        }
        let backend_fd = transport.backend_fd();
        let transport = Arc::new(Mutex::new(transport));
        queue_events.extend(
            events
                .into_iter()
                .map(|(evt, queue)| (evt, transport.clone(), queue)),
        );
        if let Some(fd) = backend_fd {
            backend_events.push((fd, transport.clone()));
        }
        mmio.insert(address, VIRTIO_MMIO_SIZE, transport.clone())?;
        transports.push(transport);
        Ok::<_, Error>(interrupt)
    };
    let mut drives = Vec::with_capacity(layout.drives.len());
    for (&(drive, address, irq), disk) in layout.drives.iter().zip(backends.disks) {
        let cache = match drive.cache_type {
            CacheType::Unsafe => block::CacheType::Unsafe,
            CacheType::Writeback => block::CacheType::Writeback,
        };
        let device = Block::new(disk.clone(), drive.is_read_only, cache);
        let interrupt = attach(Box::new(device), address, irq)?;
        drives.push(Drive {
            id: drive.drive_id.clone(),
            disk,
            interrupt,
        });
    }
    if let (Some((_, address, irq)), Some(device)) = (layout.vsock, backends.vsock) {
        attach(Box::new(device), address, irq)?;
    }
    Ok((
        Buses { pio, mmio },
        Devices {
            serial,
            serial_drained,
            i8042,
            drives,
            transports,
            queue_events,
            backend_events,
        },
    ))
}

/// Builds and starts the microVM described by the configuration, on the VM `prep` made ready.
pub fn build(
    prep: VmPrep,
    boot_source: Option<&BootSourceConfig>,
    machine: &MachineConfig,
    drives: &[DriveConfig],
    vsock: Option<&VsockConfig>,
    options: &BuildOptions,
    exit: Arc<ExitSignal>,
) -> Result<Vmm, Error> {
    let boot_source = boot_source.ok_or(Error::NoBootSource)?;
    let mut stages = Stages::new();
    let mem = prep.mem.clone();
    let mem_size = machine.mem_size_mib << 20;

    // First everything that only writes guest memory or reads files...
    let kernel = boot::load_kernel(&mem, Path::new(&boot_source.kernel_image_path))?;
    let initrd = boot_source
        .initrd_path
        .as_deref()
        .map(|p| boot::load_initrd(&mem, Path::new(p), mem_size))
        .transpose()?;
    stages.mark("kernel");

    let layout = device_layout(drives, vsock)?;
    let mut cmdline = Cmdline::new(CMDLINE_MAX_SIZE).map_err(Error::Cmdline)?;
    let boot_args = boot_source
        .boot_args
        .as_deref()
        .unwrap_or(DEFAULT_BOOT_ARGS);
    cmdline.insert_str(boot_args).map_err(Error::Cmdline)?;
    let addresses = layout
        .drives
        .iter()
        .map(|&(drive, address, irq)| (Some(drive), address, irq))
        .chain(layout.vsock.map(|(_, address, irq)| (None, address, irq)));
    for (drive, address, irq) in addresses {
        if let Some(drive) = drive.filter(|d| d.is_root_device) {
            let mode = if drive.is_read_only { "ro" } else { "rw" };
            let root = match &drive.partuuid {
                Some(uuid) => format!("root=PARTUUID={uuid} {mode}"),
                None => format!("root=/dev/vda {mode}"),
            };
            cmdline.insert_str(root).map_err(Error::Cmdline)?;
        }
        cmdline
            .add_virtio_mmio_device(VIRTIO_MMIO_SIZE, GuestAddress(address), irq, None)
            .map_err(Error::Cmdline)?;
    }
    boot::configure_system(
        &mem,
        &kernel,
        &cmdline,
        initrd,
        mem_size,
        machine.vcpu_count,
    )?;
    let backends = open_backends(&layout)?;
    stages.mark("boot params");

    // ...then what needs the VM.
    let (vm, supported_cpuid, threads) = prep.finish()?;
    stages.mark("vm ready");

    let boot_timer = options.boot_timer.then_some(options.start);
    let (buses, devices) = create_devices(&vm, &mem, &layout, backends, boot_timer, &exit, None)?;
    stages.mark("devices");

    let vcpus = (0..machine.vcpu_count)
        .map(|index| {
            let vcpu = Vcpu::new(&vm, index)?;
            let boot = (index == 0).then_some((&mem, kernel.entry));
            vcpu.configure(&supported_cpuid, machine.vcpu_count, boot)?;
            Ok(vcpu)
        })
        .collect::<Result<Vec<_>, vcpu::Error>>()?;

    let handles = start_vcpus(vcpus, threads, buses, false)?;
    stages.mark("vcpus");
    stages.log("InstanceStart");
    Ok(Vmm::new(vm, mem, handles, devices, false, None))
}

/// Gives each vCPU to its thread, one for one.
fn start_vcpus(
    vcpus: Vec<Vcpu>,
    threads: Vec<VcpuThread>,
    buses: Buses,
    paused: bool,
) -> Result<Vec<VcpuHandle>, Error> {
    let buses = Arc::new(buses);
    Ok(vcpus
        .into_iter()
        .zip(threads)
        .map(|(vcpu, thread)| thread.run(vcpu, buses.clone(), paused))
        .collect::<Result<Vec<_>, _>>()?)
}

/// A saved microVM, as [`restore`] needs it.
pub struct SavedVm<'a> {
    pub machine: &'a MachineConfig,
    pub drives: &'a [DriveConfig],
    pub vsock: Option<&'a VsockConfig>,
    pub vm: &'a VmState,
    pub vcpus: &'a [VcpuState],
    pub devices: &'a DeviceStates,
}

/// Brings a saved microVM back on guest memory `mem`, which already holds
/// (or, with userfaultfd, will serve) the saved pages; its vCPUs run at once
/// unless `paused`.
#[allow(clippy::too_many_arguments)]
pub fn restore(
    saved: SavedVm,
    mem: GuestMemoryMmap,
    memory_backend: Option<MemoryBackend>,
    paused: bool,
    clock_realtime: bool,
    exit: Arc<ExitSignal>,
    seccomp: &Filters,
    ready_threads: Vec<VcpuThread>,
) -> Result<Vmm, Error> {
    let mut stages = Stages::new();
    if saved.vcpus.len() != usize::from(saved.machine.vcpu_count) {
        return Err(Error::BadDeviceState(
            "the snapshot's vCPU states do not match its vCPU count",
        ));
    }
    let layout = device_layout(saved.drives, saved.vsock)?;
    let backends = open_backends(&layout)?;
    let threads = vcpu_threads(ready_threads, saved.machine.vcpu_count, &exit, seccomp)?;
    let vm = vm::Vm::new(&mem, saved.machine.track_dirty_pages)?;
    stages.mark("vm");
    match restore_on(
        &vm,
        &mem,
        &saved,
        &layout,
        backends,
        paused,
        clock_realtime,
        &exit,
        threads,
        &mut stages,
    ) {
        Ok((handles, devices)) => {
            stages.log("snapshot restore");
            Ok(Vmm::new(vm, mem, handles, devices, paused, memory_backend))
        }
        Err(e) => {
            // Destroying a VM takes milliseconds: keep it off the error reply.
            let _ = std::thread::Builder::new()
                .name("ember_vmdrop".into())
                .spawn(move || drop((vm, mem)));
            Err(e)
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn restore_on(
    vm: &vm::Vm,
    mem: &GuestMemoryMmap,
    saved: &SavedVm,
    layout: &DeviceLayout,
    backends: Backends,
    paused: bool,
    clock_realtime: bool,
    exit: &Arc<ExitSignal>,
    threads: Vec<VcpuThread>,
    stages: &mut Stages,
) -> Result<(Vec<VcpuHandle>, Devices), Error> {
    vm.restore_state(saved.vm, clock_realtime)?;
    stages.mark("vm state");
    let (buses, devices) =
        create_devices(vm, mem, layout, backends, None, exit, Some(saved.devices))?;
    stages.mark("devices");
    let vcpus = saved
        .vcpus
        .iter()
        .enumerate()
        .map(|(index, state)| {
            let vcpu = Vcpu::new(vm, index as u8)?;
            vcpu.restore_state(state)?;
            Ok(vcpu)
        })
        .collect::<Result<Vec<_>, vcpu::Error>>()?;
    let handles = start_vcpus(vcpus, threads, buses, paused)?;
    stages.mark("vcpus");
    Ok((handles, devices))
}

/// Times the steps of a start for the log, so "where the time goes" is one
/// `--level Info` away.
struct Stages {
    last: Instant,
    start: Instant,
    marks: Vec<(&'static str, std::time::Duration)>,
}

impl Stages {
    fn new() -> Self {
        let now = Instant::now();
        Stages {
            last: now,
            start: now,
            marks: Vec::with_capacity(8),
        }
    }

    fn mark(&mut self, stage: &'static str) {
        let now = Instant::now();
        self.marks.push((stage, now - self.last));
        self.last = now;
    }

    fn log(&self, what: &str) {
        if log::log_enabled!(log::Level::Info) {
            let parts: Vec<String> = self
                .marks
                .iter()
                .map(|(stage, d)| format!("{stage} {}us", d.as_micros()))
                .collect();
            log::info!(
                "{what} took {}us: {}",
                self.start.elapsed().as_micros(),
                parts.join(", ")
            );
        }
    }
}
