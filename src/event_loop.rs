//! The main thread's epoll loop: API requests, the guest's exit signal, and
//! the devices' host-side events, which each device handles itself.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::mpsc::Receiver;
use std::sync::Arc;

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::timerfd::TimerFd;

use crate::api::ApiCall;
use crate::controller::VmmController;
use crate::devices::{nonblocking_timer, EventSubscriber};
use crate::exit::{ExitReason, ExitSignal};
use crate::metrics::{self, METRICS};

/// What an epoll token stands for.
#[derive(Clone, Copy)]
enum Source {
    Exit,
    Api,
    /// The periodic metrics flush.
    MetricsTimer,
    /// Fd `fd_index` of device subscriber `subscriber`.
    Device {
        subscriber: usize,
        fd_index: usize,
    },
}

/// A watched fd and whether it is in the epoll set now.
struct Registration {
    fd: RawFd,
    source: Source,
    watched: bool,
}

/// Where API calls arrive, and the eventfd that signals them.
struct ApiInbox {
    calls: Receiver<ApiCall>,
    wake: Arc<EventFd>,
}

pub struct EventLoop {
    epoll: Epoll,
    /// Fires every [`metrics::FLUSH_INTERVAL`] once metrics are configured.
    metrics_timer: TimerFd,
    metrics_timer_armed: bool,
    registrations: Vec<Registration>,
    subscribers: Vec<Box<dyn EventSubscriber>>,
    exit: Arc<ExitSignal>,
    api: Option<ApiInbox>,
    vm_sources_added: bool,
    /// Whether the VM's sources are served: not while the VM is paused, so
    /// that nothing changes guest memory or device state then.
    vm_running: bool,
}

impl EventLoop {
    pub fn new(exit: Arc<ExitSignal>) -> std::io::Result<Self> {
        let mut event_loop = EventLoop {
            epoll: Epoll::new()?,
            metrics_timer: nonblocking_timer()?,
            metrics_timer_armed: false,
            registrations: Vec::new(),
            subscribers: Vec::new(),
            exit: exit.clone(),
            api: None,
            vm_sources_added: false,
            vm_running: true,
        };
        event_loop.add(exit.event_fd().as_raw_fd(), Source::Exit)?;
        let timer = event_loop.metrics_timer.as_raw_fd();
        event_loop.add(timer, Source::MetricsTimer)?;
        Ok(event_loop)
    }

    pub fn add_api(&mut self, calls: Receiver<ApiCall>, wake: Arc<EventFd>) -> std::io::Result<()> {
        self.add(wake.as_raw_fd(), Source::Api)?;
        self.api = Some(ApiInbox { calls, wake });
        Ok(())
    }

    fn add(&mut self, fd: RawFd, source: Source) -> std::io::Result<()> {
        let token = self.registrations.len() as u64;
        self.epoll.ctl(
            ControlOperation::Add,
            fd,
            EpollEvent::new(EventSet::IN, token),
        )?;
        self.registrations.push(Registration {
            fd,
            source,
            watched: true,
        });
        Ok(())
    }

    /// Mirrors into epoll whether each of `subscriber`'s fds is to be
    /// watched: only while the VM runs, and only if the device wants it. An
    /// fd not watched leaves the epoll set: epoll reports a hang-up (a stdin
    /// whose writer closed) whatever events it is asked for, so an fd kept
    /// in the set with none would wake the loop for ever.
    fn sync_watches(&mut self, subscriber: Option<usize>) {
        for (token, registration) in self.registrations.iter_mut().enumerate() {
            let Source::Device {
                subscriber: owner,
                fd_index,
            } = registration.source
            else {
                continue;
            };
            if subscriber.is_some_and(|s| s != owner) {
                continue;
            }
            let wanted = self.vm_running && self.subscribers[owner].wants(fd_index);
            if wanted == registration.watched {
                continue;
            }
            let operation = if wanted {
                ControlOperation::Add
            } else {
                ControlOperation::Delete
            };
            let event = EpollEvent::new(EventSet::IN, token as u64);
            if self.epoll.ctl(operation, registration.fd, event).is_ok() {
                registration.watched = wanted;
            }
        }
    }

    /// Stops serving the VM's devices while it is paused, and starts again
    /// when it resumes: queue notifications and host data wait in their fds.
    fn follow_pause(&mut self, controller: &VmmController) {
        let running = controller.vm().is_some_and(|vmm| !vmm.is_paused());
        if !self.vm_sources_added || running == self.vm_running {
            return;
        }
        self.vm_running = running;
        self.sync_watches(None);
    }

    /// Watches the devices' events once the VM has started.
    fn add_vm_sources(&mut self, controller: &mut VmmController) -> std::io::Result<()> {
        let Some(vmm) = controller.vmm_mut() else {
            return Ok(());
        };
        if self.vm_sources_added {
            return Ok(());
        }
        self.vm_sources_added = true;
        self.subscribers = vmm.take_subscribers();
        for subscriber in 0..self.subscribers.len() {
            for (fd_index, fd) in self.subscribers[subscriber].fds().into_iter().enumerate() {
                let source = Source::Device {
                    subscriber,
                    fd_index,
                };
                match self.add(fd, source) {
                    Ok(()) => {}
                    // stdin may be a file or /dev/null, which epoll refuses
                    // (EPERM): the console then goes without input.
                    Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
                        log::debug!("a device's fd cannot be watched: {e}");
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        self.sync_watches(None);
        Ok(())
    }

    /// Starts the periodic flush once metrics have somewhere to go (they
    /// never stop having it).
    fn follow_metrics(&mut self) {
        if self.metrics_timer_armed || !METRICS.is_configured() {
            return;
        }
        let interval = metrics::FLUSH_INTERVAL;
        match self.metrics_timer.reset(interval, Some(interval)) {
            Ok(()) => self.metrics_timer_armed = true,
            Err(e) => log::warn!("cannot start the periodic metrics flush: {e}"),
        }
    }

    /// Runs until the guest or a fault ends the VM.
    pub fn run(&mut self, controller: &mut VmmController) -> ExitReason {
        if let Err(e) = self.add_vm_sources(controller) {
            return cannot_watch(e);
        }
        self.follow_pause(controller);
        self.follow_metrics();
        let mut events = vec![EpollEvent::default(); 32];
        loop {
            let ready = match self.epoll.wait(-1, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return ExitReason::Fault(format!("epoll failed: {e}")),
            };
            for event in &events[..ready] {
                let registration = usize::try_from(event.data())
                    .ok()
                    .and_then(|token| self.registrations.get(token));
                match registration.map(|r| r.source) {
                    Some(Source::Exit) => {
                        if let Some(reason) = self.exit.reason() {
                            return reason;
                        }
                    }
                    Some(Source::MetricsTimer) => {
                        let _ = self.metrics_timer.wait();
                        if let Err(e) = METRICS.flush() {
                            log::warn!("periodic metrics flush: {e}");
                        }
                    }
                    Some(Source::Api) => {
                        self.serve_api(controller);
                        self.follow_metrics();
                        if let Err(e) = self.add_vm_sources(controller) {
                            return cannot_watch(e);
                        }
                        self.follow_pause(controller);
                    }
                    // A pause served earlier in this batch holds the rest of it.
                    Some(Source::Device {
                        subscriber,
                        fd_index,
                    }) if self.vm_running => {
                        METRICS.vmm.device_events.inc();
                        self.subscribers[subscriber].on_ready(fd_index);
                        self.sync_watches(Some(subscriber));
                    }
                    Some(Source::Device { .. }) | None => {}
                }
            }
        }
    }

    fn serve_api(&mut self, controller: &mut VmmController) {
        let Some(api) = &self.api else {
            return;
        };
        let _ = api.wake.read();
        while let Ok(call) = api.calls.try_recv() {
            let result = controller.handle(call.request);
            // The client may have hung up; its answer then has nowhere to go.
            let _ = call.reply.send(result);
        }
    }
}

/// A device the loop cannot watch would go silent: the VM ends instead.
fn cannot_watch(e: std::io::Error) -> ExitReason {
    ExitReason::Fault(format!("cannot watch the VM's devices: {e}"))
}
