//! COM1: vm-superio's 16550A UART on port 0x3f8 / IRQ 4, wired to ember's
//! stdout (unbuffered, so a prompt without a newline shows at once) and stdin.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use vm_superio::serial::{SerialEvents, SerialState};
use vm_superio::Serial;
use vmm_sys_util::eventfd::EventFd;

use super::super::bus::BusDevice;
use super::super::{EventSubscriber, IrqLine};
use crate::metrics::METRICS;

pub const COM1_PORT: u64 = 0x3f8;
pub const COM1_IRQ: u32 = 4;
pub const PORT_COUNT: u64 = 8;

/// Tells the console the guest drained the input FIFO, so it may read more
/// of stdin (it stops reading while the FIFO is full).
pub struct InputDrained(pub EventFd);

impl SerialEvents for InputDrained {
    fn buffer_read(&self) {}
    fn out_byte(&self) {}
    fn tx_lost_byte(&self) {}
    fn in_buffer_empty(&self) {
        // A failed write means the counter is already non-zero: the loop wakes anyway.
        let _ = self.0.write(1);
    }
}

/// The guest's console output, written without ever blocking the vCPU that
/// runs the guest's `OUT`: what a full pipe does not take is dropped and
/// counted, so a reader that stops reading loses only its own view of the
/// console, and Pause, snapshots and the API go on.
pub struct ConsoleOut {
    out: File,
    dropped: u64,
}

impl ConsoleOut {
    /// `out` is made non-blocking if it is a pipe or a socket.
    pub fn new(out: File) -> Self {
        use std::os::fd::AsFd;
        if let Err(e) = crate::stdio::never_block(out.as_fd()) {
            log::warn!("serial console: output may block: {e}");
        }
        ConsoleOut { out, dropped: 0 }
    }
}

impl Write for ConsoleOut {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        // A full pipe, or a closed stdout, takes nothing; neither stops the guest.
        let written = self.out.write(buf).unwrap_or_default();
        METRICS.uart.write_count.inc();
        if written < buf.len() {
            METRICS
                .uart
                .missed_write_count
                .add((buf.len() - written) as u64);
            self.dropped += (buf.len() - written) as u64;
            log::warn!(
                "serial console: output is not being read; {} bytes dropped so far",
                self.dropped
            );
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

pub struct SerialDevice {
    uart: Serial<IrqLine, InputDrained, Box<dyn Write + Send>>,
}

/// The UART's registers and unread input, as a snapshot stores them.
#[derive(Serialize, Deserialize)]
pub struct SerialSnapshot(#[serde(with = "SerialStateDef")] SerialState);

#[derive(Serialize, Deserialize)]
#[serde(remote = "SerialState")]
struct SerialStateDef {
    baud_divisor_low: u8,
    baud_divisor_high: u8,
    interrupt_enable: u8,
    interrupt_identification: u8,
    line_control: u8,
    line_status: u8,
    modem_control: u8,
    modem_status: u8,
    scratch: u8,
    in_buffer: Vec<u8>,
}

impl SerialDevice {
    /// A UART at power-on, or in the state a snapshot saved.
    pub fn new(
        irq: IrqLine,
        drained: InputDrained,
        out: Box<dyn Write + Send>,
        saved: Option<&SerialSnapshot>,
    ) -> Result<Self, vm_superio::serial::Error<std::io::Error>> {
        let uart = match saved {
            Some(SerialSnapshot(state)) => Serial::from_state(state, irq, drained, out)?,
            None => Serial::with_events(irq, drained, out),
        };
        Ok(SerialDevice { uart })
    }

    pub fn save_state(&self) -> SerialSnapshot {
        SerialSnapshot(self.uart.state())
    }

    /// Queues host input for the guest; returns how many bytes fit.
    pub fn enqueue_input(&mut self, bytes: &[u8]) -> usize {
        self.uart.enqueue_raw_bytes(bytes).unwrap_or(0)
    }

    /// Room left in the guest's input FIFO.
    pub fn input_room(&self) -> usize {
        self.uart.fifo_capacity()
    }
}

/// The console's input side: stdin into the guest's FIFO, at the pace the
/// guest reads it.
pub struct ConsoleIn {
    serial: Arc<Mutex<SerialDevice>>,
    /// Unbuffered: bytes epoll reported must reach the guest, not sit in a
    /// reader's buffer.
    stdin: File,
    drained: EventFd,
    stdin_open: bool,
    /// The guest's FIFO was full when stdin was last readable.
    waiting_for_room: bool,
}

impl ConsoleIn {
    const STDIN: usize = 0;
    const DRAINED: usize = 1;

    pub fn new(serial: Arc<Mutex<SerialDevice>>, stdin: File, drained: EventFd) -> Self {
        ConsoleIn {
            serial,
            stdin,
            drained,
            stdin_open: true,
            waiting_for_room: false,
        }
    }

    fn read_stdin(&mut self) {
        let Ok(mut serial) = self.serial.lock() else {
            return;
        };
        let room = serial.input_room();
        if room == 0 {
            // The guest has not read what it has: wait until it drains the FIFO.
            self.waiting_for_room = true;
            return;
        }
        let mut buf = [0u8; 64];
        match self.stdin.read(&mut buf[..room.min(64)]) {
            Ok(0) => self.stdin_open = false,
            Ok(n) => {
                METRICS.uart.read_count.inc();
                serial.enqueue_input(&buf[..n]);
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                log::warn!("serial console: cannot read stdin: {e}");
                self.stdin_open = false;
            }
        }
    }
}

impl EventSubscriber for ConsoleIn {
    fn fds(&self) -> Vec<RawFd> {
        vec![self.stdin.as_raw_fd(), self.drained.as_raw_fd()]
    }

    fn on_ready(&mut self, index: usize) {
        match index {
            Self::STDIN => self.read_stdin(),
            _ => {
                let _ = self.drained.read();
                self.waiting_for_room = false;
            }
        }
    }

    fn wants(&self, index: usize) -> bool {
        index == Self::DRAINED || (self.stdin_open && !self.waiting_for_room)
    }
}

impl BusDevice for SerialDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match (data, u8::try_from(offset)) {
            ([byte], Ok(offset)) => *byte = self.uart.read(offset),
            (data, _) => data.fill(0),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let ([byte], Ok(offset)) = (data, u8::try_from(offset)) {
            // The console output never fails; nothing else here does either.
            let _ = self.uart.write(offset, *byte);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use vmm_sys_util::eventfd::EFD_NONBLOCK;

    use super::*;

    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);

    impl Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn console_output_to_a_full_pipe_is_dropped_not_blocked_on() {
        let (read_end, write_end) = std::os::unix::net::UnixStream::pair().unwrap();
        let mut out = ConsoleOut::new(File::from(std::os::fd::OwnedFd::from(write_end)));
        // Far more than a socket buffer holds, with nobody reading.
        let line = [b'x'; 4096];
        for _ in 0..1024 {
            assert_eq!(out.write(&line).unwrap(), line.len());
        }
        assert!(out.dropped > 0);
        drop(read_end);
        assert_eq!(
            out.write(b"gone").unwrap(),
            4,
            "a closed reader is no error"
        );
    }

    #[test]
    fn guest_output_reaches_the_writer_and_input_the_guest() {
        let sink = Sink::default();
        let drained = EventFd::new(EFD_NONBLOCK).unwrap();
        let mut serial = SerialDevice::new(
            IrqLine(EventFd::new(EFD_NONBLOCK).unwrap()),
            InputDrained(drained.try_clone().unwrap()),
            Box::new(sink.clone()),
            None,
        )
        .unwrap();
        for b in b"hi\n" {
            serial.write(0, &[*b]);
        }
        assert_eq!(sink.0.lock().unwrap().as_slice(), b"hi\n");

        assert_eq!(serial.enqueue_input(b"ok"), 2);
        let mut lsr = [0];
        serial.read(5, &mut lsr);
        assert_eq!(lsr[0] & 1, 1, "data ready");
        let mut byte = [0];
        serial.read(0, &mut byte);
        assert_eq!(byte, [b'o']);
        serial.read(0, &mut byte);
        assert_eq!(byte, [b'k']);
        assert_eq!(
            drained.read().unwrap(),
            1,
            "event loop told the FIFO is empty"
        );
    }
}
