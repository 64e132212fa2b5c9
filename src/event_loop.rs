//! The main thread's epoll loop: API requests, the guest's exit signal,
//! virtio queue notifications and the serial console's stdin.

use std::fs::File;
use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Mutex};

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use crate::api::ApiCall;
use crate::controller::Controller;
use crate::devices::virtio::mmio::MmioTransport;
use crate::exit::{ExitReason, ExitSignal};

/// What an epoll token stands for.
enum Source {
    Exit,
    Api,
    Stdin(File),
    SerialDrained(EventFd),
    Queue(EventFd, Arc<Mutex<MmioTransport>>, usize),
    Backend(Arc<Mutex<MmioTransport>>),
}

pub struct EventLoop {
    epoll: Epoll,
    sources: Vec<(RawFd, Source)>,
    exit: Arc<ExitSignal>,
    api: Option<(Receiver<ApiCall>, Arc<EventFd>)>,
    vm_sources_added: bool,
    /// Whether the VM's sources are watched: not while the VM is paused, so
    /// that nothing changes guest memory or device state then.
    vm_sources_watched: bool,
    stdin_open: bool,
}

impl EventLoop {
    pub fn new(exit: Arc<ExitSignal>) -> std::io::Result<Self> {
        let mut event_loop = EventLoop {
            epoll: Epoll::new()?,
            sources: Vec::new(),
            exit: exit.clone(),
            api: None,
            vm_sources_added: false,
            vm_sources_watched: true,
            stdin_open: true,
        };
        event_loop.add(exit.event_fd().as_raw_fd(), Source::Exit)?;
        Ok(event_loop)
    }

    pub fn add_api(&mut self, calls: Receiver<ApiCall>, wake: Arc<EventFd>) -> std::io::Result<()> {
        self.add(wake.as_raw_fd(), Source::Api)?;
        self.api = Some((calls, wake));
        Ok(())
    }

    fn add(&mut self, fd: RawFd, source: Source) -> std::io::Result<()> {
        let token = self.sources.len() as u64;
        self.epoll.ctl(
            ControlOperation::Add,
            fd,
            EpollEvent::new(EventSet::IN, token),
        )?;
        self.sources.push((fd, source));
        Ok(())
    }

    fn set_watched(&self, token: usize, watched: bool) {
        let Some((fd, _)) = self.sources.get(token) else {
            return;
        };
        let events = if watched {
            EventSet::IN
        } else {
            EventSet::empty()
        };
        let _ = self.epoll.ctl(
            ControlOperation::Modify,
            *fd,
            EpollEvent::new(events, token as u64),
        );
    }

    fn set_stdin_watched(&mut self, watched: bool) {
        if let Some(token) = self
            .sources
            .iter()
            .position(|(_, s)| matches!(s, Source::Stdin(_)))
        {
            self.set_watched(token, watched);
        }
    }

    /// Stops serving the VM's devices while it is paused, and starts again
    /// when it resumes: queue notifications and host data wait in their fds.
    fn follow_pause(&mut self, controller: &Controller) {
        let watched = controller.vmm().is_some_and(|vmm| !vmm.is_paused());
        if !self.vm_sources_added || watched == self.vm_sources_watched {
            return;
        }
        self.vm_sources_watched = watched;
        for token in 0..self.sources.len() {
            let on = match &self.sources[token].1 {
                Source::Queue(..) | Source::Backend(_) | Source::SerialDrained(_) => watched,
                Source::Stdin(_) => watched && self.stdin_open,
                Source::Exit | Source::Api => continue,
            };
            self.set_watched(token, on);
        }
    }

    /// Watches the running VM's queues and console once it has started.
    fn add_vm_sources(&mut self, controller: &Controller) -> std::io::Result<()> {
        let Some(vmm) = controller.vmm() else {
            return Ok(());
        };
        if self.vm_sources_added {
            return Ok(());
        }
        self.vm_sources_added = true;
        for (evt, transport, queue) in vmm.queue_events() {
            let evt = evt.try_clone()?;
            self.add(
                evt.as_raw_fd(),
                Source::Queue(evt, transport.clone(), *queue),
            )?;
        }
        for (fd, transport) in vmm.backend_events() {
            self.add(*fd, Source::Backend(transport.clone()))?;
        }
        let drained = vmm.serial_drained().try_clone()?;
        self.add(drained.as_raw_fd(), Source::SerialDrained(drained))?;
        // Unbuffered: bytes epoll reported must reach the guest, not sit in a reader's buffer.
        let stdin = File::from(std::io::stdin().as_fd().try_clone_to_owned()?);
        // stdin may be a file or /dev/null, which epoll refuses: then there is no console input.
        if self.add(stdin.as_raw_fd(), Source::Stdin(stdin)).is_err() {
            self.stdin_open = false;
        }
        Ok(())
    }

    /// Runs until the guest or a fault ends the VM.
    pub fn run(&mut self, controller: &mut Controller) -> ExitReason {
        if let Err(e) = self.add_vm_sources(controller) {
            return ExitReason::Fault(format!("cannot watch the VM's devices: {e}"));
        }
        self.follow_pause(controller);
        let mut events = vec![EpollEvent::default(); 32];
        loop {
            let ready = match self.epoll.wait(-1, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return ExitReason::Fault(format!("epoll failed: {e}")),
            };
            for event in &events[..ready] {
                let token = event.data() as usize;
                let source = self.sources.get(token).map(|(_, s)| s);
                // A pause served earlier in this batch holds the rest of it.
                let vm_source = !matches!(source, Some(Source::Exit | Source::Api) | None);
                if vm_source && !self.vm_sources_watched {
                    continue;
                }
                match source {
                    Some(Source::Exit) => {
                        if let Some(reason) = self.exit.reason() {
                            return reason;
                        }
                    }
                    Some(Source::Queue(evt, transport, queue)) => {
                        // Reset the counter so level-triggered epoll stops reporting it.
                        let _ = evt.read();
                        if let Ok(mut t) = transport.lock() {
                            t.process_queue(*queue);
                        }
                    }
                    Some(Source::Backend(transport)) => {
                        if let Ok(mut t) = transport.lock() {
                            t.process_backend();
                        }
                    }
                    Some(Source::Api) => {
                        self.serve_api(controller);
                        if let Err(e) = self.add_vm_sources(controller) {
                            return ExitReason::Fault(format!(
                                "cannot watch the VM's devices: {e}"
                            ));
                        }
                        self.follow_pause(controller);
                    }
                    Some(Source::Stdin(_)) => self.read_stdin(controller, token),
                    Some(Source::SerialDrained(evt)) => {
                        let _ = evt.read();
                        if self.stdin_open && self.vm_sources_watched {
                            self.set_stdin_watched(true);
                        }
                    }
                    None => {}
                }
            }
        }
    }

    fn serve_api(&mut self, controller: &mut Controller) {
        let Some((calls, wake)) = &self.api else {
            return;
        };
        let _ = wake.read();
        while let Ok(call) = calls.try_recv() {
            let result = controller.handle(call.request);
            // The client may have hung up; its answer then has nowhere to go.
            let _ = call.reply.send(result);
        }
    }

    fn read_stdin(&mut self, controller: &Controller, token: usize) {
        let Some(serial) = controller.vmm().map(|v| v.serial().clone()) else {
            return;
        };
        let Ok(mut serial) = serial.lock() else {
            return;
        };
        let room = serial.input_room();
        if room == 0 {
            // The guest has not read what it has: wait until it drains the FIFO.
            drop(serial);
            self.set_stdin_watched(false);
            return;
        }
        let mut buf = [0u8; 64];
        let want = room.min(buf.len());
        let Some((_, Source::Stdin(stdin))) = self.sources.get_mut(token) else {
            return;
        };
        match stdin.read(&mut buf[..want]) {
            Ok(0) => {
                drop(serial);
                self.stdin_open = false;
                self.set_stdin_watched(false);
            }
            Ok(n) => {
                serial.enqueue_input(&buf[..n]);
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                log::warn!("serial console: cannot read stdin: {e}");
                drop(serial);
                self.stdin_open = false;
                self.set_stdin_watched(false);
            }
        }
    }
}
