//! The i8042 keyboard controller at ports 0x60-0x64.
//!
//! vm-superio's i8042 only knows the reset command; ember also needs the
//! keyboard half so `SendCtrlAltDel` can type Ctrl+Alt+Del into the guest
//! (which Linux turns into a clean reboot), so this small controller does both.

use std::collections::VecDeque;
use std::sync::Arc;

use super::super::bus::BusDevice;
use super::super::IrqLine;
use crate::exit::{ExitReason, ExitSignal};

pub const I8042_PORT: u64 = 0x60;
pub const PORT_COUNT: u64 = 5;
pub const KBD_IRQ: u32 = 1;

const DATA: u64 = 0;
const COMMAND: u64 = 4;

const CMD_READ_CONFIG: u8 = 0x20;
const CMD_WRITE_CONFIG: u8 = 0x60;
const CMD_SELF_TEST: u8 = 0xaa;
const CMD_KBD_TEST: u8 = 0xab;
const CMD_RESET_CPU: u8 = 0xfe;

const STATUS_OUTPUT_FULL: u8 = 1;
const STATUS_SYSTEM: u8 = 1 << 2;
const CONFIG_KBD_INTERRUPT: u8 = 1;

const SELF_TEST_OK: u8 = 0x55;
const KBD_ACK: u8 = 0xfa;
const KBD_RESET_OK: u8 = 0xaa;
const KBD_CMD_RESET: u8 = 0xff;

/// Ctrl, Alt and Delete key presses in scancode set 2.
const CTRL_ALT_DEL: [u8; 4] = [0x14, 0x11, 0xe0, 0x71];
const BUFFER_SIZE: usize = 16;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    /// Ctrl+Alt+Del while the guest has not read earlier key presses.
    #[error("the guest has not read earlier keyboard input yet")]
    BufferFull,
    /// The keyboard IRQ could not be raised.
    #[error("cannot raise the keyboard interrupt: {0}")]
    Interrupt(String),
}

/// The controller's configuration byte and unread output, as a snapshot stores them.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct I8042State {
    config: u8,
    expecting_config: bool,
    output: Vec<u8>,
}

pub struct I8042 {
    exit: Arc<ExitSignal>,
    irq: IrqLine,
    config: u8,
    expecting_config: bool,
    output: VecDeque<u8>,
}

impl I8042 {
    pub fn new(exit: Arc<ExitSignal>, irq: IrqLine) -> Self {
        I8042 {
            exit,
            irq,
            config: CONFIG_KBD_INTERRUPT,
            expecting_config: false,
            output: VecDeque::with_capacity(BUFFER_SIZE),
        }
    }

    pub fn save_state(&self) -> I8042State {
        I8042State {
            config: self.config,
            expecting_config: self.expecting_config,
            output: self.output.iter().copied().collect(),
        }
    }

    /// Puts back a saved state; output beyond the controller's buffer is dropped.
    pub fn restore_state(&mut self, state: &I8042State) {
        self.config = state.config;
        self.expecting_config = state.expecting_config;
        self.output = state.output.iter().copied().take(BUFFER_SIZE).collect();
    }

    fn push(&mut self, bytes: &[u8]) -> Result<(), Error> {
        if self.output.len() + bytes.len() > BUFFER_SIZE {
            return Err(Error::BufferFull);
        }
        self.output.extend(bytes);
        if self.config & CONFIG_KBD_INTERRUPT != 0 {
            self.irq
                .0
                .write(1)
                .map_err(|e| Error::Interrupt(e.to_string()))?;
        }
        Ok(())
    }

    /// Types Ctrl+Alt+Del on the guest's keyboard.
    pub fn ctrl_alt_del(&mut self) -> Result<(), Error> {
        self.push(&CTRL_ALT_DEL)
    }

    fn status(&self) -> u8 {
        let full = if self.output.is_empty() {
            0
        } else {
            STATUS_OUTPUT_FULL
        };
        STATUS_SYSTEM | full
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let value = match offset {
            DATA => self.output.pop_front().unwrap_or(0),
            COMMAND => self.status(),
            _ => 0,
        };
        data.fill(0);
        if let Some(first) = data.first_mut() {
            *first = value;
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let Some(&value) = data.first() else { return };
        // Replies the guest did not ask for twice are dropped if it never reads them.
        let reply = match (offset, value) {
            (COMMAND, CMD_RESET_CPU) => {
                self.exit.raise(ExitReason::GuestReset);
                Ok(())
            }
            (COMMAND, CMD_READ_CONFIG) => self.push(&[self.config]),
            (COMMAND, CMD_WRITE_CONFIG) => {
                self.expecting_config = true;
                Ok(())
            }
            (COMMAND, CMD_SELF_TEST) => self.push(&[SELF_TEST_OK]),
            (COMMAND, CMD_KBD_TEST) => self.push(&[0]),
            (DATA, config) if self.expecting_config => {
                self.expecting_config = false;
                self.config = config;
                Ok(())
            }
            (DATA, KBD_CMD_RESET) => self.push(&[KBD_ACK, KBD_RESET_OK]),
            (DATA, _) => self.push(&[KBD_ACK]),
            _ => Ok(()),
        };
        if let Err(e) = reply {
            log::debug!("i8042: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

    use super::*;

    fn device() -> (I8042, Arc<ExitSignal>, EventFd) {
        let exit = Arc::new(ExitSignal::new().unwrap());
        let irq = EventFd::new(EFD_NONBLOCK).unwrap();
        let dev = I8042::new(exit.clone(), IrqLine(irq.try_clone().unwrap()));
        (dev, exit, irq)
    }

    fn read(dev: &mut I8042, offset: u64) -> u8 {
        let mut b = [0];
        dev.read(offset, &mut b);
        b[0]
    }

    #[test]
    fn reset_command_stops_the_vm_cleanly() {
        let (mut dev, exit, _) = device();
        dev.write(COMMAND, &[CMD_RESET_CPU]);
        assert_eq!(exit.reason(), Some(ExitReason::GuestReset));
    }

    #[test]
    fn ctrl_alt_del_is_typed_with_an_interrupt() {
        let (mut dev, exit, irq) = device();
        dev.ctrl_alt_del().unwrap();
        assert_eq!(irq.read().unwrap(), 1);
        let mut typed = Vec::new();
        while read(&mut dev, COMMAND) & STATUS_OUTPUT_FULL != 0 {
            typed.push(read(&mut dev, DATA));
        }
        assert_eq!(typed, CTRL_ALT_DEL);
        assert_eq!(exit.reason(), None);
    }

    #[test]
    fn unread_input_is_not_overwritten() {
        let (mut dev, _, _) = device();
        for _ in 0..BUFFER_SIZE / CTRL_ALT_DEL.len() {
            dev.ctrl_alt_del().unwrap();
        }
        assert_eq!(dev.ctrl_alt_del(), Err(Error::BufferFull));
    }

    #[test]
    fn controller_answers_config_and_self_test() {
        let (mut dev, _, _) = device();
        dev.write(COMMAND, &[CMD_WRITE_CONFIG]);
        dev.write(DATA, &[0x45]);
        dev.write(COMMAND, &[CMD_READ_CONFIG]);
        assert_eq!(read(&mut dev, DATA), 0x45);
        dev.write(COMMAND, &[CMD_SELF_TEST]);
        assert_eq!(read(&mut dev, DATA), SELF_TEST_OK);
    }
}
