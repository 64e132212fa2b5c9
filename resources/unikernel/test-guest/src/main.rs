//! Test guest for ember: prints, in a fixed line format that ember's tests parse,
//! what the VMM gave it (boot protocol, command line, memory map, CPUs, block
//! devices), exercises each block device, optionally echoes the serial console,
//! then resets. With `ember.attack=<mode>` it attacks the VMM instead (see
//! [`attack`]).
#![no_std]
#![no_main]

extern crate alloc;

mod attack;

use core::fmt::{self, Write};

use rt::cmdline::{has_token, value, virtio_mmio_devices};
use rt::io::{Serial, reset, signal_boot_timer};
use rt::virtio::blk::{self, Block, RequestError};
use rt::virtio::discover;
use rt::{BootInfo, mptable, print, println};

rt::entry!(main);

fn main(boot: &BootInfo) -> ! {
    println!("EMBER-TEST-GUEST: hello from {}", boot.protocol.name());
    signal_boot_timer();

    print!("cmdline: ");
    Serial::write_bytes(boot.cmdline);
    println!();

    let mut usable = 0;
    for region in boot.memory.iter() {
        let end = region.start.wrapping_add(region.size.saturating_sub(1));
        println!("mem: {:#x}-{:#x} type={}", region.start, end, region.kind);
        if region.kind == 1 {
            usable += region.size;
        }
    }
    println!("mem: total usable {} KiB", usable / 1024);

    match mptable::count_cpus() {
        Ok(Some(cpus)) => println!("cpus: {cpus}"),
        Ok(None) => println!("cpus: none"),
        Err(err) => println!("cpus: error {err}"),
    }

    if let Some(mode) = value(boot.cmdline, b"ember.attack=") {
        attack::run(boot, mode);
    }

    block_devices(boot.cmdline);

    if has_token(boot.cmdline, b"ember.echo") {
        echo();
    }
    println!("guest: reset");
    reset()
}

/// Exercises every block device the VMM gave, on virtio-mmio or virtio-pci.
fn block_devices(cmdline: &[u8]) {
    for token in virtio_mmio_devices(cmdline).filter_map(Result::err) {
        print!("virtio: error bad token ");
        Serial::write_bytes(token);
        println!();
    }
    let mut count = 0;
    for (id, found) in discover::devices(cmdline) {
        if id != blk::DEVICE_ID {
            continue;
        }
        match found.open().and_then(Block::new) {
            Ok(mut block) => {
                exercise(count, &mut block);
                if let Some(kib) = value(cmdline, b"ember.blkread=") {
                    read_for_time(count, &mut block, kib);
                }
            }
            Err(err) => println!("blk{count}: error {err}"),
        }
        count += 1;
    }
    if count == 0 {
        println!("blk: none");
    }
}

/// Reads, writes, flushes and reads back, then reads past the end.
fn exercise(i: usize, block: &mut Block) {
    let mut id = [0u8; blk::ID_LEN];
    if let Err(RequestError(status)) = block.get_id(&mut id) {
        println!("blk{i}: error get-id status={status}");
    }
    let id_len = id.iter().position(|&b| b == 0).unwrap_or(id.len());
    print!("blk{i}: id=");
    Serial::write_bytes(&id[..id_len]);
    println!(
        " sectors={} ro={}",
        block.capacity(),
        u8::from(block.read_only())
    );

    let mut sector = [0u8; blk::SECTOR_SIZE];
    if let Err(RequestError(status)) = block.read(0, &mut sector) {
        println!("blk{i}: error read status={status}");
    }
    println!("blk{i}: sector0={}", Printable(&sector[..32]));

    let mut data = [0u8; blk::SECTOR_SIZE];
    // The text is far shorter than a sector, so it always fits.
    let _ = writeln!(
        SliceWriter(&mut data[..]),
        "ember-test-guest wrote blk{i} sector 1"
    );
    println!("blk{i}: write status={}", status(block.write(1, &data)));
    println!("blk{i}: flush status={}", status(block.flush()));

    if let Err(RequestError(status)) = block.read(1, &mut sector) {
        println!("blk{i}: error read status={status}");
    }
    println!("blk{i}: sector1={}", Printable(&sector[..32]));

    let status = status(block.read(block.capacity(), &mut sector));
    println!("blk{i}: beyond-end status={status}");
}

/// `ember.blkread=<KiB>`: reads that much from the start of the device (round
/// and round), 4 KiB per request, and prints how long it took, for the rate
/// limiter's tests.
fn read_for_time(i: usize, block: &mut Block, kib: &[u8]) {
    const CHUNK_SECTORS: u64 = 8;
    let Some(kib) = core::str::from_utf8(kib)
        .ok()
        .and_then(|k| k.parse::<u64>().ok())
    else {
        println!("blk{i}: error bad ember.blkread");
        return;
    };
    let Some(chunks) = block
        .capacity()
        .checked_div(CHUNK_SECTORS)
        .filter(|&c| c > 0)
    else {
        println!("blk{i}: error the device is smaller than 4 KiB");
        return;
    };
    let mut buf = [0u8; 4096];
    let start = rt::time::now();
    for n in 0..kib.div_ceil(4) {
        if let Err(RequestError(status)) = block.read((n % chunks) * CHUNK_SECTORS, &mut buf) {
            println!("blk{i}: error read status={status}");
            return;
        }
    }
    let micros = rt::time::elapsed_nanos(start) / 1000;
    println!("blk{i}: read {kib} KiB in {micros} us");
}

/// The status byte of a request, as the output shows it (0 for success).
fn status(result: Result<(), RequestError>) -> u8 {
    result.map_or_else(|RequestError(status)| status, |()| 0)
}

/// Echoes the serial input until a line reads `reset`.
fn echo() {
    println!("echo: ready");
    let mut line = [0u8; 64];
    let mut len = 0;
    loop {
        let byte = Serial::read_byte();
        Serial::write_bytes(&[byte]);
        match byte {
            b'\n' | b'\r' => {
                if &line[..len] == b"reset" {
                    return;
                }
                len = 0;
            }
            // Overlong lines keep their start only; they cannot equal `reset` anyway.
            _ if len < line.len() => {
                line[len] = byte;
                len += 1;
            }
            _ => {}
        }
    }
}

/// Shows bytes as ASCII, with `.` for anything not printable.
struct Printable<'a>(&'a [u8]);

impl fmt::Display for Printable<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for &b in self.0 {
            let c = if (0x20..=0x7e).contains(&b) { b } else { b'.' };
            f.write_char(char::from(c))?;
        }
        Ok(())
    }
}

/// Formats into a byte buffer, failing once it is full.
struct SliceWriter<'a>(&'a mut [u8]);

impl Write for SliceWriter<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let buf = core::mem::take(&mut self.0);
        if s.len() > buf.len() {
            return Err(fmt::Error);
        }
        let (head, rest) = buf.split_at_mut(s.len());
        head.copy_from_slice(s.as_bytes());
        self.0 = rest;
        Ok(())
    }
}
