//! The snapshot state file's decoder (`ember_snapshot::format`: magic,
//! version, architecture, length, CRC-64, postcard) as the load path calls
//! it, for ember's `persist::MicrovmState`; and the restore of the legacy
//! devices' saved states (UART, i8042), which the state file carries.
//!
//! Input: a mode byte, then
//! - 0: a whole state file, as read from disk;
//! - 1: a payload, wrapped in a valid container, so the postcard decoding of
//!   `MicrovmState` (configuration, vCPU, VM and device states) is reached
//!   without the fuzzer having to forge the CRC;
//! - 2: version (u16), architecture (16 bytes), a flag and a u64 declared
//!   length (used when the flag is set), then a payload: a container with
//!   these header fields and a correct CRC;
//! - 3: a postcard `SerialSnapshot`, restored into a UART, then read;
//! - 4: a postcard `I8042State`, restored into an i8042, then read.

#![no_main]

use std::sync::Arc;

use ember::devices::bus::BusDevice;
use ember::devices::legacy::i8042::{I8042State, I8042};
use ember::devices::legacy::serial::{InputDrained, SerialDevice, SerialSnapshot};
use ember::devices::IrqLine;
use ember::exit::ExitSignal;
use ember::persist::MicrovmState;
use ember_fuzz::bytes::Reader;
use ember_snapshot::format;
use libfuzzer_sys::fuzz_target;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 5 {
        0 => {
            let header = format::read_header(rest);
            let state = format::load::<MicrovmState, _>(rest);
            // A file that loads has a header that reads.
            assert!(state.is_err() || header.is_ok());
        }
        1 => {
            let file =
                ember_fuzz::state_file(format::FORMAT_VERSION, format::ARCH.as_bytes(), None, rest);
            let _ = format::load::<MicrovmState, _>(&file[..]);
        }
        2 => {
            let mut r = Reader::new(rest);
            let version = r.u16();
            let arch = r.bytes(16);
            let declared = r.bool();
            let len = r.u64();
            let file = ember_fuzz::state_file(version, arch, declared.then_some(len), r.rest());
            let _ = format::read_header(&file[..]);
            let _ = format::load::<MicrovmState, _>(&file[..]);
        }
        3 => {
            let Ok(saved) = postcard::from_bytes::<SerialSnapshot>(rest) else {
                return;
            };
            let (Ok(irq), Ok(drained)) = (EventFd::new(EFD_NONBLOCK), EventFd::new(EFD_NONBLOCK))
            else {
                return;
            };
            let out: Box<dyn std::io::Write + Send> = Box::new(std::io::sink());
            let Ok(mut uart) =
                SerialDevice::new(IrqLine(irq), InputDrained(drained), out, Some(&saved))
            else {
                return;
            };
            for offset in 0..8 {
                let mut byte = [0u8];
                uart.read(offset, &mut byte);
            }
            uart.enqueue_input(b"input");
            let _ = uart.save_state();
        }
        _ => {
            let Ok(saved) = postcard::from_bytes::<I8042State>(rest) else {
                return;
            };
            let (Ok(irq), Ok(exit)) = (EventFd::new(EFD_NONBLOCK), ExitSignal::new()) else {
                return;
            };
            let mut i8042 = I8042::new(Arc::new(exit), IrqLine(irq));
            i8042.restore_state(&saved);
            for _ in 0..4 {
                let mut byte = [0u8];
                i8042.read(0, &mut byte);
                i8042.read(4, &mut byte);
            }
            let _ = i8042.ctrl_alt_del();
            let _ = i8042.save_state();
        }
    }
});
