//! The virtio-mmio transport (`devices::virtio::mmio::MmioTransport`) with a
//! block device, a vsock device, a balloon (inflate, deflate, free page
//! hinting and reporting queues) or a small dummy device behind it, driven by
//! the guest's side only: register reads and writes (`BusDevice::read` and
//! `write` at offsets 0..0x200, widths 1, 2, 4 and 8), writes to guest
//! memory, queue notifications (`process_queue`) and backend activity, in
//! any order; and the snapshot path: a transport restored from a saved state
//! given by the input, and saving then restoring the live transport, which
//! must always succeed.
//!
//! Input: a device byte (low 7 bits modulo 4: block, vsock, balloon, dummy; bit 7:
//! start from the postcard `TransportState` in the next chunk), the address
//! (u16, above the rings) and a chunk of guest memory contents, then up to
//! 128 operations, an opcode byte (modulo 10) and its operands each:
//! 0 read (offset u16 % 0x200, width), 1 write (offset, width, u64 value),
//! 2 write a named register (index into `REGS`, u32), 3 read one,
//! 4 `process_queue` (0..3), 5 `process_backend`, 6 write guest memory
//! (address, chunk), 7 the driver's initialization of a queue (index 0..3, size),
//! 8 a chain made available and notified (queue, direction, chain), 9 save,
//! encode, decode and restore the transport over a fresh device.

#![no_main]

use std::sync::{Arc, Mutex};

use ember::devices::bus::BusDevice;
use ember::devices::rate_limiter::RateLimiter;
use ember::devices::virtio::balloon::Balloon;
use ember::devices::virtio::block::{Block, CacheType, Disk};
use ember::devices::virtio::mmio::MmioTransport;
use ember::devices::virtio::transport::TransportState;
use ember::devices::virtio::vsock::Vsock;
use ember::devices::virtio::{Activity, Interrupt, VirtioDevice};
use ember::vstate::memory::GuestMemoryMmap;
use ember_fuzz::bytes::Reader;
use ember_fuzz::queue::{self, read_addr, read_chain, Ring, DATA_START, QSIZE};
use ember_fuzz::scratch;
use libfuzzer_sys::fuzz_target;
use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_DRIVER_OK,
    VIRTIO_CONFIG_S_FEATURES_OK,
};
use virtio_bindings::virtio_mmio::*;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

const MAX_OPS: usize = 128;

/// Every register of the layout, for writes and reads by name.
const REGS: [u32; 24] = [
    VIRTIO_MMIO_MAGIC_VALUE,
    VIRTIO_MMIO_VERSION,
    VIRTIO_MMIO_DEVICE_ID,
    VIRTIO_MMIO_VENDOR_ID,
    VIRTIO_MMIO_DEVICE_FEATURES,
    VIRTIO_MMIO_DEVICE_FEATURES_SEL,
    VIRTIO_MMIO_DRIVER_FEATURES,
    VIRTIO_MMIO_DRIVER_FEATURES_SEL,
    VIRTIO_MMIO_QUEUE_SEL,
    VIRTIO_MMIO_QUEUE_NUM_MAX,
    VIRTIO_MMIO_QUEUE_NUM,
    VIRTIO_MMIO_QUEUE_READY,
    VIRTIO_MMIO_QUEUE_NOTIFY,
    VIRTIO_MMIO_INTERRUPT_STATUS,
    VIRTIO_MMIO_INTERRUPT_ACK,
    VIRTIO_MMIO_STATUS,
    VIRTIO_MMIO_QUEUE_DESC_LOW,
    VIRTIO_MMIO_QUEUE_DESC_HIGH,
    VIRTIO_MMIO_QUEUE_AVAIL_LOW,
    VIRTIO_MMIO_QUEUE_AVAIL_HIGH,
    VIRTIO_MMIO_QUEUE_USED_LOW,
    VIRTIO_MMIO_QUEUE_USED_HIGH,
    VIRTIO_MMIO_CONFIG_GENERATION,
    VIRTIO_MMIO_CONFIG,
];

/// A device with two queues that reads and writes a little of each buffer.
struct Dummy;

impl VirtioDevice for Dummy {
    fn device_type(&self) -> u32 {
        42
    }
    fn features(&self) -> u64 {
        1 << 32 | 1
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &[16, 8]
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        ember::devices::virtio::read_config_space(b"dummy-config", offset, data);
    }
    fn process_queue(
        &mut self,
        index: usize,
        queues: &mut [Queue],
        mem: &GuestMemoryMmap,
    ) -> Activity {
        let Some(q) = queues.get_mut(index) else {
            return Activity::default();
        };
        let mut used = false;
        for _ in 0..8 {
            let Some(chain) = q.pop_descriptor_chain(mem) else {
                return Activity { used, rerun: None };
            };
            let head = chain.head_index();
            let mut written = 0u32;
            let mut buf = [0u8; 64];
            for d in chain {
                let n = d.len().min(64) as usize;
                if d.is_write_only() {
                    if mem.write_slice(&[0xab; 64][..n], d.addr()).is_ok() {
                        written += n as u32;
                    }
                } else {
                    let _ = mem.read_slice(&mut buf[..n], d.addr());
                }
            }
            used |= q.add_used(mem, head, written).is_ok();
        }
        Activity {
            used,
            rerun: Some(index),
        }
    }
}

fn device(kind: u8) -> Option<Box<dyn VirtioDevice>> {
    match kind % 4 {
        0 => {
            let path = scratch::fresh("mmio-disk.img");
            std::fs::write(&path, vec![7u8; 8 * 512]).ok()?;
            let disk = Disk::open(&path, false).ok()?;
            Some(Box::new(Block::new(
                Arc::new(Mutex::new(disk)),
                RateLimiter::shared(None).ok()?,
                Arc::default(),
                false,
                CacheType::Writeback,
            )))
        }
        1 => Some(Box::new(
            Vsock::new(3, &scratch::fresh("mmio-v.sock")).ok()?,
        )),
        2 => Some(Box::new(Balloon::new(256, true, 0, true, true).ok()?.0)),
        _ => Some(Box::new(Dummy)),
    }
}

fn interrupt() -> Option<Arc<Interrupt>> {
    Some(Arc::new(Interrupt::pin(EventFd::new(EFD_NONBLOCK).ok()?)))
}

fn read32(t: &mut MmioTransport, reg: u32) -> u32 {
    let mut b = [0u8; 4];
    t.read(u64::from(reg), &mut b);
    u32::from_le_bytes(b)
}

fn write32(t: &mut MmioTransport, reg: u32, value: u32) {
    t.write(u64::from(reg), &value.to_le_bytes());
}

/// The driver's initialization of queue `index` (virtio 1.2 §3.1.1, §4.2.3.2)
/// with rings at the harness's layout: every feature the device offers.
fn init(t: &mut MmioTransport, mem: &GuestMemoryMmap, index: u32, size: u16) -> Ring {
    write32(t, VIRTIO_MMIO_STATUS, VIRTIO_CONFIG_S_ACKNOWLEDGE);
    let mut status = VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER;
    write32(t, VIRTIO_MMIO_STATUS, status);
    for sel in 0..2 {
        write32(t, VIRTIO_MMIO_DEVICE_FEATURES_SEL, sel);
        let features = read32(t, VIRTIO_MMIO_DEVICE_FEATURES);
        write32(t, VIRTIO_MMIO_DRIVER_FEATURES_SEL, sel);
        write32(t, VIRTIO_MMIO_DRIVER_FEATURES, features);
    }
    status |= VIRTIO_CONFIG_S_FEATURES_OK;
    write32(t, VIRTIO_MMIO_STATUS, status);
    let ring = Ring::new(mem, queue::ring_base(index as usize % 4), size);
    let (desc, avail, used) = ring.addresses();
    write32(t, VIRTIO_MMIO_QUEUE_SEL, index);
    write32(t, VIRTIO_MMIO_QUEUE_NUM, u32::from(size));
    for (low, value) in [
        (VIRTIO_MMIO_QUEUE_DESC_LOW, desc),
        (VIRTIO_MMIO_QUEUE_AVAIL_LOW, avail),
        (VIRTIO_MMIO_QUEUE_USED_LOW, used),
    ] {
        write32(t, low, value as u32);
        write32(t, low + 4, (value >> 32) as u32);
    }
    write32(t, VIRTIO_MMIO_QUEUE_READY, 1);
    write32(t, VIRTIO_MMIO_STATUS, status | VIRTIO_CONFIG_S_DRIVER_OK);
    ring
}

struct Fixture {
    kind: u8,
    mem: GuestMemoryMmap,
    transport: Option<MmioTransport>,
    rings: Vec<Ring>,
}

impl Fixture {
    fn step(&mut self, r: &mut Reader) -> Option<()> {
        let t = self.transport.as_mut()?;
        match r.u8() % 10 {
            0 => {
                let offset = u64::from(r.u16() % 0x200);
                let width = [1, 2, 4, 8][usize::from(r.u8() % 4)];
                let mut buf = [0u8; 8];
                t.read(offset, &mut buf[..width]);
            }
            1 => {
                let offset = u64::from(r.u16() % 0x200);
                let width = [1, 2, 4, 8][usize::from(r.u8() % 4)];
                let value = r.u64().to_le_bytes();
                t.write(offset, &value[..width]);
            }
            2 => {
                let reg = REGS[usize::from(r.u8()) % REGS.len()];
                write32(t, reg, r.u32());
            }
            3 => {
                let reg = REGS[usize::from(r.u8()) % REGS.len()];
                read32(t, reg);
            }
            4 => t.process_queue(usize::from(r.u8() % 4)),
            5 => t.process_backend(0),
            6 => {
                let addr = read_addr(r);
                let _ = self.mem.write_slice(r.chunk(256), GuestAddress(addr));
            }
            7 => {
                let index = r.u8() % 4;
                let size = match r.u8() % 4 {
                    0 => QSIZE,
                    1 => 8,
                    2 => 256,
                    _ => r.u16(),
                };
                self.rings[usize::from(index)] = init(t, &self.mem, u32::from(index), size);
            }
            8 => {
                // The driver makes a chain available and notifies the queue.
                let index = usize::from(r.u8() % 4);
                let device_writes = r.bool();
                let chain = read_chain(r, device_writes);
                self.rings[index].add(&self.mem, &chain);
                write32(t, VIRTIO_MMIO_QUEUE_NOTIFY, index as u32);
                t.process_queue(index);
            }
            _ => {
                // A snapshot of the transport, restored over a fresh device.
                let saved =
                    postcard::to_stdvec(&t.save_state()).expect("a transport state encodes");
                let state: TransportState =
                    postcard::from_bytes(&saved).expect("a saved transport state decodes");
                // The old device goes first: a vsock device holds its socket path.
                self.transport = None;
                let restored = MmioTransport::restore(
                    device(self.kind)?,
                    self.mem.clone(),
                    interrupt()?,
                    &state,
                );
                self.transport = Some(restored.expect("a saved transport does not restore"));
            }
        }
        Some(())
    }
}

fuzz_target!(|data: &[u8]| {
    ember_fuzz::ignore_sigpipe();
    let mut r = Reader::new(data);
    let kind = r.u8();
    let mem = queue::memory();
    let saved = (kind & 0x80 != 0).then(|| r.chunk(1024));
    let init_at = DATA_START + u64::from(r.u16()) % (queue::LOW_END - DATA_START);
    let _ = mem.write_slice(r.chunk(4096), GuestAddress(init_at));
    let (Some(dev), Some(irq)) = (device(kind & 0x7f), interrupt()) else {
        return;
    };
    let transport = match saved {
        Some(bytes) => {
            let Ok(state) = postcard::from_bytes::<TransportState>(bytes) else {
                return;
            };
            MmioTransport::restore(dev, mem.clone(), irq, &state)
        }
        None => MmioTransport::new(dev, mem.clone(), irq),
    };
    let Ok(transport) = transport else {
        return;
    };
    let mut fixture = Fixture {
        kind: kind & 0x7f,
        mem,
        transport: Some(transport),
        rings: Vec::new(),
    };
    fixture.rings = (0..4)
        .map(|i| Ring::new(&fixture.mem, queue::ring_base(i), QSIZE))
        .collect();
    for _ in 0..MAX_OPS {
        if r.is_empty() || fixture.step(&mut r).is_none() {
            break;
        }
    }
});
