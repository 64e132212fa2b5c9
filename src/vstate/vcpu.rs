//! vCPUs: boot-time configuration, and one thread per vCPU running the
//! `KVM_RUN` loop, dispatching port and MMIO exits to the device buses.
//!
//! Pause and resume go through a small state machine: the main thread sends a
//! command and kicks the thread with a signal, whose handler sets
//! `immediate_exit` so a kick that lands just before `KVM_RUN` is not lost.

use std::cell::Cell;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Once};
use std::thread::JoinHandle;

use kvm_bindings::{kvm_run, CpuId, Msrs};
use kvm_ioctls::{VcpuExit, VcpuFd};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::signal::{register_signal_handler, Killable, SIGRTMIN};

use super::vm::Vm;
use crate::arch::x86_64::{cpuid, regs};
use crate::devices::bus::Bus;
use crate::exit::{ExitReason, ExitSignal};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("KVM refused to {what} for vCPU {index}: {source}")]
    Kvm {
        what: &'static str,
        index: u8,
        source: kvm_ioctls::Error,
    },
    #[error("cannot write vCPU boot state: {0}")]
    BootState(#[from] regs::Error),
    #[error("KVM accepted {set} of {total} boot MSRs for vCPU {index}")]
    Msrs { index: u8, set: usize, total: usize },
    #[error("cannot start the thread of vCPU {index}: {source}")]
    Spawn { index: u8, source: std::io::Error },
    #[error("cannot install the vCPU kick signal handler: {0}")]
    Signal(vmm_sys_util::errno::Error),
    #[error("vCPU {0} stopped answering")]
    Gone(u8),
}

/// What the main thread asks of a vCPU thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Command {
    Pause,
    Resume,
}

/// The ports and MMIO windows a vCPU thread dispatches exits to.
pub struct Buses {
    pub pio: Bus,
    pub mmio: Bus,
}

pub struct Vcpu {
    index: u8,
    fd: VcpuFd,
}

impl Vcpu {
    pub fn new(vm: &Vm, index: u8) -> Result<Self, Error> {
        let fd = vm
            .fd()
            .create_vcpu(u64::from(index))
            .map_err(|source| Error::Kvm {
                what: "create the vCPU",
                index,
                source,
            })?;
        Ok(Vcpu { index, fd })
    }

    fn kvm_err(&self, what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> Error {
        let index = self.index;
        move |source| Error::Kvm {
            what,
            index,
            source,
        }
    }

    /// Sets CPUID, MSRs and the local APIC; for the boot vCPU also the
    /// registers that enter the kernel.
    pub fn configure(
        &self,
        supported_cpuid: &CpuId,
        count: u8,
        boot: Option<(&GuestMemoryMmap, regs::BootEntry)>,
    ) -> Result<(), Error> {
        let mut entries = supported_cpuid.as_slice().to_vec();
        cpuid::filter(&mut entries, self.index, count);
        let cpuid = CpuId::from_entries(&entries).map_err(|_| Error::Kvm {
            what: "build CPUID",
            index: self.index,
            source: kvm_ioctls::Error::new(libc::E2BIG),
        })?;
        self.fd
            .set_cpuid2(&cpuid)
            .map_err(self.kvm_err("set CPUID"))?;

        let boot_msrs = regs::boot_msrs();
        let msrs = Msrs::from_entries(&boot_msrs).map_err(|_| Error::Kvm {
            what: "build MSRs",
            index: self.index,
            source: kvm_ioctls::Error::new(libc::E2BIG),
        })?;
        let set = self.fd.set_msrs(&msrs).map_err(self.kvm_err("set MSRs"))?;
        if set != boot_msrs.len() {
            return Err(Error::Msrs {
                index: self.index,
                set,
                total: boot_msrs.len(),
            });
        }

        let mut lapic = self
            .fd
            .get_lapic()
            .map_err(self.kvm_err("read the LAPIC"))?;
        regs::setup_lint(&mut lapic);
        self.fd
            .set_lapic(&lapic)
            .map_err(self.kvm_err("set the LAPIC"))?;

        if let Some((mem, entry)) = boot {
            let mut sregs = self.fd.get_sregs().map_err(self.kvm_err("read sregs"))?;
            regs::setup_sregs(mem, entry.protocol, &mut sregs)?;
            self.fd
                .set_sregs(&sregs)
                .map_err(self.kvm_err("set sregs"))?;
            self.fd
                .set_regs(&regs::boot_regs(entry))
                .map_err(self.kvm_err("set registers"))?;
            self.fd
                .set_fpu(&regs::boot_fpu())
                .map_err(self.kvm_err("set the FPU"))?;
        }
        Ok(())
    }

    /// Starts the vCPU's thread; it runs the guest until told otherwise.
    pub fn start(self, buses: Arc<Buses>, exit: Arc<ExitSignal>) -> Result<VcpuHandle, Error> {
        install_kick_handler()?;
        let index = self.index;
        let (command_tx, command_rx) = channel();
        let (ack_tx, ack_rx) = channel();
        let thread = std::thread::Builder::new()
            .name(format!("ember_vcpu{index}"))
            .spawn(move || {
                VcpuLoop {
                    vcpu: self,
                    buses,
                    exit,
                    commands: command_rx,
                    acks: ack_tx,
                }
                .run()
            })
            .map_err(|source| Error::Spawn { index, source })?;
        Ok(VcpuHandle {
            index,
            thread,
            commands: command_tx,
            acks: ack_rx,
        })
    }
}

/// The main thread's end of a running vCPU.
pub struct VcpuHandle {
    index: u8,
    thread: JoinHandle<()>,
    commands: Sender<Command>,
    acks: Receiver<Command>,
}

impl VcpuHandle {
    fn send(&self, command: Command) -> Result<(), Error> {
        self.commands
            .send(command)
            .map_err(|_| Error::Gone(self.index))?;
        self.thread
            .kill(SIGRTMIN() + KICK_SIGNAL_OFFSET)
            .map_err(|_| Error::Gone(self.index))
    }

    fn wait(&self, command: Command) -> Result<(), Error> {
        match self.acks.recv() {
            Ok(ack) if ack == command => Ok(()),
            _ => Err(Error::Gone(self.index)),
        }
    }

    /// Stops every vCPU out of guest mode and waits until all have.
    pub fn pause_all(handles: &[VcpuHandle]) -> Result<(), Error> {
        Self::command_all(handles, Command::Pause)
    }

    pub fn resume_all(handles: &[VcpuHandle]) -> Result<(), Error> {
        Self::command_all(handles, Command::Resume)
    }

    fn command_all(handles: &[VcpuHandle], command: Command) -> Result<(), Error> {
        // Kick all first, then collect: the vCPUs stop in parallel.
        handles.iter().try_for_each(|h| h.send(command))?;
        handles.iter().try_for_each(|h| h.wait(command))
    }
}

const KICK_SIGNAL_OFFSET: i32 = 0;

thread_local! {
    /// This thread's `kvm_run` area, for the kick signal handler.
    static KVM_RUN: Cell<*mut kvm_run> = const { Cell::new(std::ptr::null_mut()) };
}

extern "C" fn kick_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    let run = KVM_RUN.with(Cell::get);
    if !run.is_null() {
        // SAFETY: the pointer is this thread's live `kvm_run` mapping, set by the
        // vCPU loop before it first enters the guest and valid until the thread ends;
        // a volatile byte store is async-signal-safe.
        unsafe { std::ptr::addr_of_mut!((*run).immediate_exit).write_volatile(1) };
    }
}

fn install_kick_handler() -> Result<(), Error> {
    static INSTALL: Once = Once::new();
    let mut result = Ok(());
    INSTALL.call_once(|| {
        result = register_signal_handler(SIGRTMIN() + KICK_SIGNAL_OFFSET, kick_handler)
            .map_err(Error::Signal);
    });
    result
}

struct VcpuLoop {
    vcpu: Vcpu,
    buses: Arc<Buses>,
    exit: Arc<ExitSignal>,
    commands: Receiver<Command>,
    acks: Sender<Command>,
}

impl VcpuLoop {
    fn run(mut self) {
        KVM_RUN.with(|run| run.set(self.vcpu.fd.get_kvm_run()));
        loop {
            let index = self.vcpu.index;
            let stop = match self.vcpu.fd.run() {
                Ok(VcpuExit::IoIn(port, data)) => {
                    self.buses.pio.read(u64::from(port), data);
                    None
                }
                Ok(VcpuExit::IoOut(port, data)) => {
                    self.buses.pio.write(u64::from(port), data);
                    None
                }
                Ok(VcpuExit::MmioRead(addr, data)) => {
                    self.buses.mmio.read(addr, data);
                    None
                }
                Ok(VcpuExit::MmioWrite(addr, data)) => {
                    self.buses.mmio.write(addr, data);
                    None
                }
                Ok(VcpuExit::Shutdown) => Some(ExitReason::GuestReset),
                Ok(VcpuExit::SystemEvent(kind, _)) => Some(match kind {
                    kvm_bindings::KVM_SYSTEM_EVENT_SHUTDOWN => ExitReason::GuestShutdown,
                    _ => ExitReason::GuestReset,
                }),
                Ok(VcpuExit::Hlt) => Some(ExitReason::GuestShutdown),
                Ok(VcpuExit::FailEntry(reason, cpu)) => Some(ExitReason::Fault(format!(
                    "vCPU {index} failed to enter the guest: reason {reason:#x} on host CPU {cpu}"
                ))),
                Ok(VcpuExit::InternalError) => Some(ExitReason::Fault(format!(
                    "vCPU {index}: KVM internal error"
                ))),
                Ok(other) => Some(ExitReason::Fault(format!(
                    "vCPU {index}: unexpected exit {other:?}"
                ))),
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                    self.vcpu.fd.set_kvm_immediate_exit(0);
                    if self.serve_commands() {
                        None
                    } else {
                        return;
                    }
                }
                Err(e) => Some(ExitReason::Fault(format!(
                    "vCPU {index}: KVM_RUN failed: {e}"
                ))),
            };
            if let Some(reason) = stop {
                if let ExitReason::Fault(message) = &reason {
                    log::error!("{message}");
                }
                self.exit.raise(reason);
                self.park();
                return;
            }
        }
    }

    /// Handles pending commands; false once the main thread is gone.
    fn serve_commands(&mut self) -> bool {
        loop {
            match self.commands.try_recv() {
                Ok(Command::Pause) => {
                    if self.acks.send(Command::Pause).is_err() {
                        return false;
                    }
                    // Paused: block until resumed.
                    loop {
                        match self.commands.recv() {
                            Ok(Command::Resume) => break,
                            Ok(Command::Pause) => {
                                if self.acks.send(Command::Pause).is_err() {
                                    return false;
                                }
                            }
                            Err(_) => return false,
                        }
                    }
                    if self.acks.send(Command::Resume).is_err() {
                        return false;
                    }
                }
                Ok(Command::Resume) => {
                    if self.acks.send(Command::Resume).is_err() {
                        return false;
                    }
                }
                Err(std::sync::mpsc::TryRecvError::Empty) => return true,
                Err(std::sync::mpsc::TryRecvError::Disconnected) => return false,
            }
        }
    }

    /// After the guest stopped: keep acknowledging commands so nobody waits forever.
    fn park(&self) {
        while let Ok(command) = self.commands.recv() {
            if self.acks.send(command).is_err() {
                return;
            }
        }
    }
}
