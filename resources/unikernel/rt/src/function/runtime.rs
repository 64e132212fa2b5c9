//! The serving loop on the devices: boot-time setup, waiting, responding, the
//! network and entropy calls of functions, and the recovery from a function's panic.

use alloc::vec::Vec;
use core::arch::asm;
use core::cell::UnsafeCell;
use core::fmt::{self, Write};
use core::panic::PanicInfo;
use core::sync::atomic::{AtomicBool, Ordering};
use core::time::Duration;

use super::framing::{RESPONSE_PREFIX_LEN, Request, Status};
use super::poll::{Poller, Wait};
use super::server::{ClientState, ConnId, Payload, Server};
use super::{Error, Function};
use crate::bootinfo::BootInfo;
use crate::cmdline::{IpConfig, ip_config, parse_number, value};
use crate::io::{rdtsc, reset, signal_boot_timer};
use crate::net::serve::{HttpId, Written};
use crate::net::{NetError, Stack as NetStack, mmds};
use crate::random::{Filler, RandomError, Step};
use crate::virtio::balloon::{self, Balloon};
use crate::virtio::discover::{self, Found};
use crate::virtio::rng::{self, Rng};
use crate::virtio::vsock::{self, Received, Vsock};
use crate::virtio::{DeviceTransport, INTERRUPT_CONFIG, Transport, net};
use crate::{heap, irq, println, time};

/// The port served unless the command line says `ember.port=<n>`.
const DEFAULT_PORT: u32 = 1024;
/// Stack of the serving loop and the function: the boot stack is only 64 KiB.
/// Nothing guards its end.
const STACK_SIZE: usize = 1 << 20;
/// Longest panic message sent; the rest is cut.
const PANIC_MESSAGE_MAX: usize = 4096;
/// How long an HTTP client may go without taking any of its response before
/// its connection is reset, so that one that stopped reading cannot hold the
/// runtime.
const HTTP_SEND_TIMEOUT: Duration = Duration::from_secs(30);
/// How long each request for a restored clone's network may take.
const MMDS_TIMEOUT: Duration = Duration::from_secs(2);

/// Everything the serving loop keeps between invocations.
struct Runtime {
    vsock: Vsock,
    /// The network, with a virtio-net device.
    net: Network,
    /// The entropy device, if any.
    entropy: Entropy,
    /// The balloon, if any.
    memory: Memory,
    server: Server,
    function: Function,
    /// The request being served and who sent it. The request lives here, not on
    /// the loop's stack, so that a panic does not leak it.
    request: Vec<u8>,
    caller: Caller,
    /// Take the network from the MMDS after a restore (`ember.net=mmds`).
    readdress_on_restore: bool,
    /// A restore happened, and the network is still the snapshot's.
    readdress_pending: bool,
    /// Which source of requests to look at first, taking turns.
    http_first: bool,
    /// When to stop polling the device and sleep.
    poller: Poller,
}

const _: () = assert!(RESPONSE_PREFIX_LEN <= vsock::INLINE_LEN);

/// Who sent the request being served.
#[derive(Clone, Copy, Debug)]
enum Caller {
    Vsock(ConnId),
    Http(HttpId),
}

/// What the serving loop does next.
enum Next {
    /// Call the function with a request.
    Invoke(Caller, Vec<u8>),
    /// Take the network from the MMDS, as a restored clone (see [`readdress`]).
    Readdress,
}

/// The network device and its stack, brought up when the function first uses
/// the network: setting the device up costs dozens of VM exits (about 2 ms
/// under kvm_pvm), which a function that never uses it should not pay at boot.
enum Network {
    Absent,
    /// The device and the addressing from `ip=`, untouched yet.
    Idle(Found, Option<IpConfig>),
    Up(alloc::boxed::Box<NetStack>),
}

impl Network {
    /// The stack, brought up now if it was idle.
    fn up(&mut self) -> Result<&mut NetStack, NetError> {
        if matches!(self, Network::Idle(..)) {
            let Network::Idle(found, ip) = core::mem::replace(self, Network::Absent) else {
                return Err(NetError::NoDevice);
            };
            let device = found
                .open()
                .and_then(net::Net::new)
                .unwrap_or_else(|err| fail(format_args!("virtio-net: {err}")));
            *self = Network::Up(alloc::boxed::Box::new(NetStack::new(
                device,
                ip,
                rdtsc(),
                time::tsc_khz(),
            )));
        }
        self.running().ok_or(NetError::NoDevice)
    }

    /// The stack, if it is up.
    fn running(&mut self) -> Option<&mut NetStack> {
        match self {
            Network::Up(stack) => Some(stack),
            _ => None,
        }
    }
}

/// The entropy device, brought up when the function first asks for random bytes,
/// for the same reason as the network.
enum Entropy {
    Absent,
    /// The device, untouched yet.
    Idle(Found),
    Up(alloc::boxed::Box<Rng>),
}

impl Entropy {
    /// The device, brought up now if it was idle.
    fn up(&mut self) -> Result<&mut Rng, RandomError> {
        if let Entropy::Idle(..) = self {
            let Entropy::Idle(found) = core::mem::replace(self, Entropy::Absent) else {
                return Err(RandomError::NoDevice);
            };
            let device = found
                .open()
                .and_then(Rng::new)
                .unwrap_or_else(|err| fail(format_args!("virtio-rng: {err}")));
            *self = Entropy::Up(alloc::boxed::Box::new(device));
        }
        self.running().ok_or(RandomError::NoDevice)
    }

    /// The device, if it is up.
    fn running(&mut self) -> Option<&mut Rng> {
        match self {
            Entropy::Up(rng) => Some(rng),
            _ => None,
        }
    }
}

/// The balloon, brought up when the host first gives it a target: until then it
/// costs nothing but its interrupt line.
enum Memory {
    Absent,
    /// The device, its interrupt set up, otherwise untouched since boot.
    Idle(DeviceTransport),
    Up(alloc::boxed::Box<Balloon>),
}

impl Memory {
    fn up(&mut self) {
        if let Memory::Idle(_) = self {
            let Memory::Idle(transport) = core::mem::replace(self, Memory::Absent) else {
                return;
            };
            let balloon = Balloon::new(transport)
                .unwrap_or_else(|err| fail(format_args!("virtio-balloon: {err}")));
            *self = Memory::Up(alloc::boxed::Box::new(balloon));
        }
    }

    /// After a wake-up: the host may have set a target. Returns the VM exits it
    /// took.
    fn woken(&mut self) -> u64 {
        match self {
            Memory::Absent => 0,
            Memory::Up(balloon) => balloon.ack_interrupt(),
            Memory::Idle(transport) => {
                let status = transport.take_interrupt();
                if status & INTERRUPT_CONFIG != 0 {
                    self.up();
                }
                1 + u64::from(status != 0)
            }
        }
    }

    fn running(&mut self) -> Option<&mut Balloon> {
        match self {
            Memory::Up(balloon) => Some(balloon),
            _ => None,
        }
    }
}

/// Memory that only the single, uninterrupted thread of ring 3 touches.
struct Local<T>(UnsafeCell<T>);

// SAFETY: the guest runs one vCPU and ring 3 is never interrupted by code that
// touches these (the interrupt handlers only signal end-of-interrupt).
unsafe impl<T> Sync for Local<T> {}

static RUNTIME: Local<Option<Runtime>> = Local(UnsafeCell::new(None));
#[repr(align(16))]
struct Stack([u8; STACK_SIZE]);
static STACK: Local<Stack> = Local(UnsafeCell::new(Stack([0; STACK_SIZE])));
static PANIC_MESSAGE: Local<[u8; PANIC_MESSAGE_MAX]> =
    Local(UnsafeCell::new([0; PANIC_MESSAGE_MAX]));
/// Set while the function runs: its panics are answered, not fatal.
static IN_FUNCTION: AtomicBool = AtomicBool::new(false);

/// Sets up the heap, the vsock device and its interrupt (the network and entropy
/// devices, if any, wait for their first use), prints `EMBER-FN: ready on port
/// <n>`, then serves `function` forever.
pub fn run(boot: &BootInfo, function: Function) -> ! {
    let port = match value(boot.cmdline, b"ember.port=") {
        None => DEFAULT_PORT,
        Some(text) => match parse_number(text).and_then(|n| u32::try_from(n).ok()) {
            Some(port) => port,
            None => fail(format_args!("bad ember.port")),
        },
    };
    let http_port = value(boot.cmdline, b"ember.http=").map(|text| {
        parse_number(text)
            .and_then(|n| u16::try_from(n).ok())
            .filter(|&port| port != 0)
            .unwrap_or_else(|| fail(format_args!("bad ember.http")))
    });
    let readdress_on_restore = match value(boot.cmdline, b"ember.net=") {
        None => false,
        Some(b"mmds") => true,
        Some(_) => fail(format_args!("bad ember.net: only ember.net=mmds is known")),
    };
    let ip = ip_config(boot.cmdline).unwrap_or_else(|err| fail(format_args!("{err}")));
    // SAFETY: everything needed from the boot structures has been read; they and
    // the command line lie below the image anyway, outside the heap.
    let heap_size = unsafe { heap::init(boot.memory.iter()) };
    let [vsock_device, net_device, rng_device, balloon_device] = discover::find(
        boot.cmdline,
        [
            vsock::DEVICE_ID,
            net::DEVICE_ID,
            rng::DEVICE_ID,
            balloon::DEVICE_ID,
        ],
    );
    let Some(found) = vsock_device else {
        fail(format_args!("no virtio-vsock device"))
    };
    irq::init();
    let vsock = match found.open().and_then(Vsock::new) {
        Ok(vsock) => vsock,
        Err(err) => fail(format_args!("virtio-vsock: {err}")),
    };
    let mut net = match net_device {
        Some(found) => Network::Idle(found, ip),
        None => Network::Absent,
    };
    if let Some(port) = http_port {
        // Serving HTTP needs the network from the start.
        match net.up() {
            Ok(stack) if ip.is_some() => stack.serve_http(port, heap_size),
            Ok(_) => fail(format_args!("ember.http= needs an address: ip= is missing")),
            Err(err) => fail(format_args!("ember.http=: {err}")),
        }
    }
    let entropy = match rng_device {
        Some(found) => Entropy::Idle(found),
        None => Entropy::Absent,
    };
    let mut memory = Memory::Absent;
    if let Some(found) = balloon_device {
        let transport = found
            .open()
            .unwrap_or_else(|err| fail(format_args!("virtio-balloon: {err}")));
        transport.enable_config_interrupt();
        // A target set before boot is there at once; later ones interrupt.
        let targeted = transport.config_u32(0) != 0;
        memory = Memory::Idle(transport);
        if targeted {
            memory.up();
        }
    }
    let server = Server::new(vsock.guest_cid(), port, heap_size);
    // SAFETY: nothing else references the runtime yet.
    unsafe {
        *RUNTIME.0.get() = Some(Runtime {
            vsock,
            net,
            entropy,
            memory,
            server,
            function,
            request: Vec::new(),
            caller: Caller::Vsock(0),
            readdress_on_restore,
            readdress_pending: false,
            http_first: false,
            poller: Poller::new(),
        });
    }
    match http_port {
        Some(http) => println!("EMBER-FN: ready on port {port}, http {http}"),
        None => println!("EMBER-FN: ready on port {port}"),
    }
    signal_boot_timer();
    // SAFETY: the boot stack is left for good.
    unsafe { restart() }
}

fn fail(what: fmt::Arguments<'_>) -> ! {
    println!("ember-fn: error {what}");
    reset()
}

/// Runs `f` on the runtime, which [`run`] has set up.
///
/// The one place that makes a reference to it, and why that is sound: `f`
/// cannot keep the reference (`R` cannot borrow from it); ring 3 has one thread,
/// interrupted by no code that touches the runtime; and no `f` calls
/// `with_runtime` again: this module's closures never call the function, the
/// only caller of `HostStream`, of the network calls ([`with_stack`],
/// [`net_until`], whose closures only touch the stack) and of [`fill_random`].
/// The exception is [`recover`], which runs on the function's panic, maybe inside
/// the `f` of such a call: those frames, and the reference they hold, are
/// abandoned for good.
fn with_runtime<R>(f: impl FnOnce(&mut Runtime) -> R) -> R {
    // SAFETY: as above, the reference is the only one for as long as `f` runs.
    let runtime = unsafe { (*RUNTIME.0.get()).as_mut() };
    f(runtime.expect("runtime set up before serving"))
}

/// Runs [`serve`] from the top of the serving stack, abandoning the current one.
///
/// # Safety
/// Nothing on the current stack may be used again.
unsafe fn restart() -> ! {
    // SAFETY: only computes the address just past the stack's bytes.
    let top = unsafe { (&raw mut (*STACK.0.get()).0).wrapping_add(1) } as usize;
    // SAFETY: `top` is the 16-byte-aligned end of the serving stack; the call
    // leaves it aligned as the ABI expects at entry, and `serve` never returns.
    unsafe {
        asm!("mov rsp, {top}", "call {serve}", "ud2", top = in(reg) top,
            serve = sym serve, options(noreturn))
    }
}

/// The serving loop: next request, call the function, send the response.
extern "C" fn serve() -> ! {
    // Whatever a panic left behind goes.
    with_runtime(|rt| {
        rt.request = Vec::new();
        rt.server.close_clients();
        if let Some(net) = rt.net.running() {
            net.abort_all();
        }
    });
    loop {
        let next = with_runtime(|rt| {
            let Next::Invoke(caller, request) = rt.next_request() else {
                return None;
            };
            rt.request = request;
            rt.caller = caller;
            let input: *const [u8] = rt.request.as_slice();
            Some((caller, input, rt.function))
        });
        let Some((caller, input, function)) = next else {
            readdress();
            continue;
        };
        IN_FUNCTION.store(true, Ordering::Relaxed);
        // SAFETY: the request is not touched until the function returns, or until
        // its panic has abandoned it.
        let result = function(unsafe { &*input });
        IN_FUNCTION.store(false, Ordering::Relaxed);
        with_runtime(|rt| {
            match &result {
                Ok(output) => rt.respond(caller, Status::Ok, output),
                Err(err) => rt.respond(caller, Status::Error, err.message().as_bytes()),
            }
            rt.request = Vec::new();
        });
    }
}

/// Takes the network a restored clone was given (`/ember/network` in the MMDS:
/// `ip=` as on the command line, and `mac=`), or keeps the snapshot's if the
/// MMDS has none; uses the MMDS client, as a function would.
fn readdress() {
    let fetched = mmds::token(60, MMDS_TIMEOUT).and_then(|token| {
        mmds::body(mmds::request(
            "GET",
            "/ember/network",
            &[(mmds::TOKEN_HEADER, &token)],
            MMDS_TIMEOUT,
        ))
    });
    let network = fetched.and_then(|text| {
        let config = ip_config(&text)
            .map_err(|err| alloc::format!("{err}"))?
            .ok_or_else(|| alloc::string::String::from("no ip="))?;
        let mac = value(&text, b"mac=")
            .and_then(parse_mac)
            .ok_or_else(|| alloc::string::String::from("no mac="))?;
        Ok((config, mac))
    });
    match network {
        Ok((config, mac)) => {
            let _ = with_stack(|net| {
                net.readdress(config, mac, rdtsc());
                Ok(())
            });
            println!("EMBER-FN: restored as {}", config.address);
        }
        Err(err) => println!("ember-fn: keeping the snapshot's network: {err}"),
    }
}

/// `aa:bb:cc:dd:ee:ff`.
fn parse_mac(text: &[u8]) -> Option<[u8; 6]> {
    let text = core::str::from_utf8(text).ok()?;
    let mut mac = [0; 6];
    let mut parts = text.split(':');
    for byte in &mut mac {
        *byte = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// Whether a panic now comes from the function.
pub(crate) fn in_function() -> bool {
    IN_FUNCTION.load(Ordering::Relaxed)
}

/// Answers the function's panic with status 2 and its message, then serves on.
pub(crate) fn recover(info: &PanicInfo) -> ! {
    IN_FUNCTION.store(false, Ordering::Relaxed);
    // SAFETY: only this (non-reentrant: a panic in here is fatal) code uses the
    // buffer.
    let buffer = unsafe { &mut *PANIC_MESSAGE.0.get() };
    let mut message = Truncating { buffer, len: 0 };
    // Truncation is the only failure, and it is wanted.
    let _ = write!(message, "{}", info.message());
    let len = message.len;
    with_runtime(|rt| rt.respond(rt.caller, Status::Panic, &message.buffer[..len]));
    // SAFETY: the panicking stack is abandoned.
    unsafe { restart() }
}

/// Formats into a fixed buffer, dropping what does not fit (on a char boundary).
struct Truncating<'a> {
    buffer: &'a mut [u8],
    len: usize,
}

impl Write for Truncating<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let room = self.buffer.len() - self.len;
        let mut n = s.len().min(room);
        while !s.is_char_boundary(n) {
            n -= 1;
        }
        self.buffer[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        if n < s.len() { Err(fmt::Error) } else { Ok(()) }
    }
}

impl Runtime {
    /// Waits for the next complete request, from vsock or HTTP in turns, or for a
    /// restored clone's network.
    fn next_request(&mut self) -> Next {
        loop {
            // SAFETY: without a response there are no body ranges to send.
            unsafe { self.pump(&[]) };
            if core::mem::take(&mut self.readdress_pending) {
                return Next::Readdress;
            }
            self.http_first = !self.http_first;
            let http = |rt: &mut Runtime| {
                let (id, body) = rt.net.running()?.take_http_request()?;
                Some((Caller::Http(id), Request::Data(body)))
            };
            let vsock = |rt: &mut Runtime| {
                let (conn, request) = rt.server.take_request()?;
                Some((Caller::Vsock(conn), request))
            };
            let next = match self.http_first {
                true => http(self).or_else(|| vsock(self)),
                false => vsock(self).or_else(|| http(self)),
            };
            match next {
                Some((caller, Request::Data(request))) => return Next::Invoke(caller, request),
                Some((caller, _)) => self.respond(
                    caller,
                    Status::Error,
                    b"ember-fn: request does not fit in memory",
                ),
                None => self.wait(Wait::Traffic, None),
            }
        }
    }

    /// Sends a response, serving other traffic meanwhile; returns once the device
    /// (vsock) or the socket (HTTP) holds all of it, or the connection is gone.
    fn respond(&mut self, caller: Caller, status: Status, body: &[u8]) {
        match caller {
            Caller::Vsock(conn) => self.respond_vsock(conn, status, body),
            Caller::Http(id) => self.respond_http(id, status, body),
        }
    }

    fn respond_vsock(&mut self, conn: ConnId, status: Status, body: &[u8]) {
        let Ok(len) = u32::try_from(body.len()) else {
            return self.respond_vsock(conn, Status::Error, b"ember-fn: output longer than 4 GiB");
        };
        self.server.start_response(conn, status, len);
        self.send(body);
    }

    /// 200 with the output, 500 with an error or panic message.
    fn respond_http(&mut self, id: HttpId, status: Status, body: &[u8]) {
        let code = if status == Status::Ok { 200 } else { 500 };
        let Some(net) = self.net.running() else {
            return;
        };
        net.start_http_response(id, code, body.len());
        let mut deadline = time::deadline(HTTP_SEND_TIMEOUT);
        loop {
            let Some(net) = self.net.running() else {
                return;
            };
            match net.write_http_response(id, body, rdtsc()) {
                Written::Done | Written::Gone => break,
                Written::More(0) if time::passed(deadline) => {
                    net.abort_http(id);
                    break;
                }
                Written::More(0) => {}
                Written::More(_) => deadline = time::deadline(HTTP_SEND_TIMEOUT),
            }
            // SAFETY: there is no vsock response body in flight.
            unsafe { self.pump(&[]) };
            self.wait(Wait::Sent, Some(deadline));
        }
        // SAFETY: as above.
        unsafe { self.pump(&[]) };
    }

    /// Sends the started response or client write, whose body is `body`, and
    /// returns once the device holds none of it.
    fn send(&mut self, body: &[u8]) {
        loop {
            // SAFETY: `body` outlives the loop, which only ends when the device
            // holds no packet.
            unsafe { self.pump(body) };
            if !self.server.responding() && !self.vsock.sending() {
                return;
            }
            self.wait(Wait::Sent, None);
        }
    }

    /// Moves packets both ways until nothing more can move now: device events,
    /// received packets, sent packets back, then whatever the server has to send.
    ///
    /// # Safety
    /// `body` (the current response's body) must stay valid until the device holds
    /// no packet (`!self.vsock.sending()`).
    unsafe fn pump(&mut self, body: &[u8]) {
        if self.vsock.has_used() {
            self.poller.active(rdtsc());
        }
        if self.vsock.take_transport_reset() {
            // ember resets vsock transports after a snapshot restore.
            self.server.transport_reset(self.vsock.guest_cid());
            if let Some(net) = self.net.running() {
                net.forget_neighbors(rdtsc());
                self.readdress_pending = self.readdress_on_restore;
            }
            if let Some(rng) = self.entropy.running() {
                rng.renotify();
            }
        }
        let server = &mut self.server;
        self.vsock.receive(|packet| match packet {
            Received::Packet(header, payload) => server.receive(&header, payload),
            Received::Truncated(header) => server.refuse(&header),
        });
        self.vsock.reclaim_sent();
        let mut sent = false;
        while self.vsock.can_send() {
            let Some(out) = self.server.next_packet() else {
                break;
            };
            let (inline, payload) = match &out.payload {
                Payload::None => (&[][..], &[][..]),
                Payload::Data {
                    inline,
                    inline_len,
                    offset,
                    len,
                } => (&inline[..*inline_len], &body[*offset..*offset + *len]),
            };
            // SAFETY: inline parts are short enough for `send` to copy; body ranges
            // stay valid as the caller guarantees.
            unsafe { self.vsock.send(&out.header, inline, payload) };
            sent = true;
        }
        if sent {
            self.poller.active(rdtsc());
        }
        self.vsock.kick();
        if let Some(net) = self.net.running()
            && net.poll(rdtsc())
        {
            self.poller.active(rdtsc());
        }
        // Takes the answer (or garbage) off the ring, so that waits do not spin on
        // it; the caller of `fill_random` copies it out.
        if let Some(rng) = self.entropy.running()
            && rng.reclaim()
        {
            self.poller.active(rdtsc());
        }
        if let Some(balloon) = self.memory.running() {
            balloon.poll();
        }
    }

    /// Whether a device has returned buffers not yet looked at, or the balloon
    /// has a step to take.
    fn has_used(&self) -> bool {
        self.vsock.has_used()
            || matches!(&self.net, Network::Up(net) if net.has_used())
            || matches!(&self.entropy, Entropy::Up(rng) if rng.has_used())
            || matches!(&self.memory, Memory::Up(balloon) if balloon.has_work())
    }

    /// Waits for the devices, or until the TSC reaches `deadline` or the network
    /// stack's next timer: polls the used rings as long as the [`Poller`] says, then
    /// sleeps until an interrupt (or the time). An interrupt for buffers seen by
    /// polling stays pending (ring 3 runs with interrupts off) and ends the next
    /// sleep at once.
    fn wait(&mut self, kind: Wait, deadline: Option<u64>) {
        if self.has_used() {
            return;
        }
        if let Some(poll_end) = self.poller.deadline(kind, rdtsc()) {
            let poll_end = deadline.map_or(poll_end, |d| d.min(poll_end));
            let found = loop {
                core::hint::spin_loop();
                let now = rdtsc();
                if self.has_used() {
                    break Some(now);
                }
                if poll_end.wrapping_sub(now).cast_signed() <= 0 {
                    break None;
                }
            };
            self.poller.polled(kind, found);
            if found.is_some() {
                return;
            }
        }
        let start = rdtsc();
        let mut exits = self.vsock.ack_interrupt();
        if let Some(net) = self.net.running() {
            exits += net.ack_interrupt();
        }
        if let Some(rng) = self.entropy.running() {
            exits += rng.ack_interrupt();
        }
        if exits == 0 && !self.poller.measured_exits() {
            // Acknowledging took no exit (MSI-X): time one, once.
            exits = self.vsock.sample_exit();
        }
        self.poller.measured(exits, rdtsc().wrapping_sub(start));
        if let Some(rng) = self.entropy.running()
            && !rng.enable_interrupts()
        {
            return;
        }
        let mut timer = None;
        if let Some(net) = self.net.running() {
            if !net.enable_interrupts() {
                return;
            }
            timer = net.deadline(rdtsc());
        }
        match [deadline, timer].into_iter().flatten().min() {
            Some(until) => irq::wait_until(until),
            None => irq::wait(),
        }
        // A balloon's new target is announced only in its interrupt status, and
        // its interrupt may have come together with returned buffers: look at
        // every wake-up (one exit, and only where there is a balloon).
        self.memory.woken();
    }

    /// Serves traffic until the state of client connection `id` is `ready`.
    fn client(&mut self, id: ConnId, ready: impl Fn(&ClientState) -> bool) -> ClientState {
        loop {
            // SAFETY: there is no response body in flight.
            unsafe { self.pump(&[]) };
            let state = self.server.client_state(id);
            if ready(&state) {
                return state;
            }
            self.wait(Wait::Traffic, None);
        }
    }
}

/// Runs `f` on the network stack, then moves what it queued.
pub(crate) fn with_stack<R>(
    f: impl FnOnce(&mut NetStack) -> Result<R, NetError>,
) -> Result<R, NetError> {
    with_runtime(|rt| {
        let result = f(rt.net.up()?);
        // SAFETY: there is no response body in flight.
        unsafe { rt.pump(&[]) };
        result
    })
}

/// Serves traffic until `step` makes progress (`Some`), then moves what it queued;
/// `None` once the TSC has passed `deadline`.
pub(crate) fn net_until<R>(
    deadline: Option<u64>,
    mut step: impl FnMut(&mut NetStack) -> Option<R>,
) -> Result<Option<R>, NetError> {
    with_runtime(|rt| {
        loop {
            // SAFETY: there is no response body in flight.
            unsafe { rt.pump(&[]) };
            let net = rt.net.up()?;
            if let Some(progress) = step(net) {
                // SAFETY: as above.
                unsafe { rt.pump(&[]) };
                return Ok(Some(progress));
            }
            if deadline.is_some_and(time::passed) {
                return Ok(None);
            }
            rt.wait(Wait::Traffic, deadline);
        }
    })
}

/// Fills `buf` (not empty) from the entropy device (see [`crate::random::fill`]),
/// serving traffic until it is full.
pub(crate) fn fill_random(buf: &mut [u8]) -> Result<(), RandomError> {
    with_runtime(|rt| {
        let mut filler = Filler::new();
        loop {
            // SAFETY: there is no response body in flight.
            unsafe { rt.pump(&[]) };
            let rng = rt.entropy.up()?;
            let now = rdtsc();
            match filler.step(rng, buf, now, time::tsc_khz()) {
                Step::Full => return Ok(()),
                Step::Requested => {
                    rt.poller.active(now);
                    rt.wait(Wait::Sent, None);
                }
                Step::Wait(until) => rt.wait(Wait::Sent, until),
            }
        }
    })
}

/// A stream from the function to a port on the host (vsock CID 2), closed when
/// dropped. Each call serves other traffic while it waits; whatever a panicking
/// function held is reset.
#[derive(Debug)]
pub struct HostStream {
    id: ConnId,
}

impl HostStream {
    /// Connects to `port` on the host, waiting until it accepts or refuses.
    pub fn connect(port: u32) -> Result<HostStream, Error> {
        with_runtime(|rt| {
            let id = rt
                .server
                .connect(port)
                .ok_or(Error::new("ember-fn: too many connections"))?;
            match rt.client(id, |s| *s != ClientState::Connecting) {
                ClientState::Open { .. } => Ok(HostStream { id }),
                _ => Err(Error::new("ember-fn: connection refused")),
            }
        })
    }

    /// Sends all of `data`, returning once the device has taken it.
    pub fn write_all(&mut self, data: &[u8]) -> Result<(), Error> {
        with_runtime(|rt| {
            if !rt.server.start_send(self.id, data.len()) {
                return Err(Error::new("ember-fn: connection closed"));
            }
            rt.send(data);
            if rt.server.send_dropped() {
                Err(Error::new("ember-fn: connection reset"))
            } else {
                Ok(())
            }
        })
    }

    /// Appends what has arrived to `buf`, waiting for at least one byte; returns
    /// how many, 0 once the host has closed its side.
    pub fn read(&mut self, buf: &mut Vec<u8>) -> Result<usize, Error> {
        with_runtime(|rt| {
            match rt.client(self.id, |s| {
                !matches!(
                    s,
                    ClientState::Open {
                        readable: 0,
                        eof: false
                    }
                )
            }) {
                ClientState::Open { .. } => Ok(rt.server.read(self.id, buf)),
                _ => Err(Error::new("ember-fn: connection reset")),
            }
        })
    }

    /// Appends everything until the host closes its side to `buf`.
    pub fn read_to_end(&mut self, buf: &mut Vec<u8>) -> Result<usize, Error> {
        let mut total = 0;
        loop {
            match self.read(buf)? {
                0 => return Ok(total),
                n => total += n,
            }
        }
    }
}

impl Drop for HostStream {
    fn drop(&mut self) {
        with_runtime(|rt| {
            rt.server.close(self.id);
            // SAFETY: there is no response body in flight.
            unsafe { rt.pump(&[]) };
        });
    }
}
