//! Hostile guest behaviour for ember's robustness tests (`ember.attack=<mode>` on
//! the command line): the guest attacks the VMM from inside through its devices,
//! prints `attack: <mode> start` once set up and `attack: <mode> done [stats]` at
//! the end, then calms down. Every attack is bounded, so it ends on a VMM that
//! copes; a VMM that does not may hang, which the host tests detect.
//!
//! The calm phase uses no CPU unless an interrupt comes: with a vsock device the
//! guest becomes the echo function on port 1024 (rt's function runtime resets
//! the device and sets it up from scratch), so the host can check that ember
//! still serves invocations; without one it sleeps in the wait gate for good.
//!
//! The attacks drive devices through raw registers and raw rings in `.bss`
//! (never the heap, which the function runtime takes over in the calm phase).

mod blk;
mod device;
mod net;
mod pci;
mod ring;
mod rx;
mod storm;
mod streams;
mod vsock;

use alloc::vec::Vec;

use rt::io::{Serial, reset};
use rt::virtio::discover;
use rt::{BootInfo, irq, print, println};

/// What stopped an attack before it started (a missing device, say).
type Error = &'static str;

/// Runs attack `mode`, then the calm phase. An unknown mode, or an attack that
/// cannot start, is reported and resets the machine.
pub fn run(boot: &BootInfo, mode: &[u8]) -> ! {
    irq::init();
    let cmdline = boot.cmdline;
    let result = match mode {
        b"serial-flood" => storm::serial_flood(),
        b"register-garbage" => storm::register_garbage(cmdline),
        b"status-games" => blk::status_games(cmdline),
        b"vsock-reset" => streams::vsock_reset(cmdline),
        b"bad-avail-idx" => blk::bad_avail_idx(cmdline),
        b"looping-chain" => blk::looping_chain(cmdline),
        b"ring-refill" => blk::ring_refill(cmdline),
        b"notify-storm" => storm::notify_storm(cmdline),
        b"rx-header-only" => rx::header_only(cmdline),
        b"rx-outside-ram" => rx::outside_ram(cmdline),
        b"vsock-connect-flood" => streams::connect_flood(cmdline),
        b"vsock-silent" => streams::silent(cmdline),
        b"net-garbage" => net::garbage(cmdline),
        b"pci-garbage" => pci::garbage(),
        _ => {
            print!("attack: unknown mode ");
            Serial::write_bytes(mode);
            println!();
            stop()
        }
    };
    if let Err(err) = result {
        print!("attack: ");
        Serial::write_bytes(mode);
        println!(" error {err}");
        stop()
    }
    calm(boot)
}

fn stop() -> ! {
    println!("guest: reset");
    reset()
}

/// The calm phase: the echo function if there is a vsock device, else sleep.
fn calm(boot: &BootInfo) -> ! {
    if discover::devices(boot.cmdline).any(|(id, _)| id == device::VSOCK) {
        rt::function::run(boot, echo)
    }
    // Nothing routes an interrupt that would need handling; a device interrupt
    // left routed by the attack only ends one wait.
    loop {
        irq::wait();
    }
}

/// The calm phase's function: returns its input.
fn echo(input: &[u8]) -> Result<Vec<u8>, rt::function::Error> {
    Ok(input.to_vec())
}
