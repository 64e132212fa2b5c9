//! virtio-blk requests: `block::request::parse` on every chain of a queue
//! built from the input, then `Block::process_queue` serving the same queue
//! against a small temp-file `Disk` (read-only or not, either cache type,
//! a size that may not be whole sectors).
//!
//! Input: a flags byte (bit 0: read-only, bit 1: Writeback, bit 2: a partial
//! sector at the end of the file), the disk's size in sectors, a chunk of
//! guest memory contents, then one to eight chains: each either raw (see
//! `ember_fuzz::queue::read_chain`, optionally with a request header at its
//! first buffer) or laid out as a driver does (header, data buffers, status)
//! with the type, sector, addresses, lengths and directions from the input.
//! The disk file must keep its size, and its contents when read-only.

#![no_main]

use std::sync::{Arc, Mutex};

use ember::config::{RateLimiterConfig, TokenBucketConfig};
use ember::devices::rate_limiter::RateLimiter;
use ember::devices::virtio::block::request::{self, RequestType, SECTOR_SIZE};
use ember::devices::virtio::block::{Block, CacheType, Disk};
use ember::devices::virtio::VirtioDevice;
use ember_fuzz::bytes::Reader;
use ember_fuzz::queue::{
    self, read_addr, read_chain, read_len, Desc, Ring, DATA_START, NEXT, QSIZE, WRITE,
};
use ember_fuzz::scratch;
use libfuzzer_sys::fuzz_target;
use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
};
use virtio_queue::QueueT;
use vm_memory::{Bytes, GuestAddress};

fn read_kind(r: &mut Reader) -> u32 {
    match r.u8() % 6 {
        0 => VIRTIO_BLK_T_IN,
        1 => VIRTIO_BLK_T_OUT,
        2 => VIRTIO_BLK_T_FLUSH,
        3 => VIRTIO_BLK_T_GET_ID,
        4 => u32::from(r.u8()),
        _ => r.u32(),
    }
}

/// A request header (type, reserved, sector) at `addr`, if that is in memory.
fn write_header(r: &mut Reader, mem: &ember::vstate::memory::GuestMemoryMmap, addr: u64) -> u32 {
    let kind = read_kind(r);
    let sector = if r.bool() { r.u64() } else { u64::from(r.u8()) };
    let mut header = [0u8; 16];
    header[..4].copy_from_slice(&kind.to_le_bytes());
    header[8..].copy_from_slice(&sector.to_le_bytes());
    let _ = mem.write_slice(&header, GuestAddress(addr));
    kind
}

/// A request as a driver lays it out, with the input's choices in each part.
fn driver_chain(r: &mut Reader, mem: &ember::vstate::memory::GuestMemoryMmap) -> Vec<Desc> {
    let header_addr = read_addr(r);
    let kind = write_header(r, mem, header_addr);
    let header_len = if r.bool() { read_len(r) } else { 16 };
    let mut descs = vec![Desc {
        addr: header_addr,
        len: header_len,
        flags: 0,
        next: None,
    }];
    let device_writes = kind == VIRTIO_BLK_T_IN || kind == VIRTIO_BLK_T_GET_ID;
    for _ in 0..r.u8() % 4 {
        let addr = read_addr(r);
        let len = if r.bool() {
            u32::from(r.u8() % 9) * SECTOR_SIZE as u32
        } else {
            read_len(r)
        };
        let writes = device_writes != r.bool();
        descs.push(Desc {
            addr,
            len,
            flags: if writes { WRITE } else { 0 },
            next: None,
        });
    }
    let status_addr = read_addr(r);
    let status_len = if r.bool() { read_len(r) } else { 1 };
    let status_writable = !r.bool();
    descs.push(Desc {
        addr: status_addr,
        len: status_len,
        flags: if status_writable { WRITE } else { 0 },
        next: None,
    });
    let last = descs.len() - 1;
    for d in &mut descs[..last] {
        d.flags |= NEXT;
    }
    descs
}

fuzz_target!(|data: &[u8]| {
    let mut r = Reader::new(data);
    let flags = r.u8();
    let read_only = flags & 1 != 0;
    let cache = if flags & 2 != 0 {
        CacheType::Writeback
    } else {
        CacheType::Unsafe
    };
    let sectors = usize::from(r.u8() % 17);
    let tail = if flags & 4 != 0 { 100 } else { 0 };
    let content: Vec<u8> = (0..sectors * 512 + tail).map(|i| (i / 512) as u8).collect();
    let path = scratch::fresh("disk.img");
    if std::fs::write(&path, &content).is_err() {
        return;
    }
    let Ok(disk) = Disk::open(&path, read_only) else {
        return;
    };
    // Flag 8: a limiter of 3 requests and 4 KiB, so requests are also refused
    // and left in the ring.
    let limits = (flags & 8 != 0).then(|| RateLimiterConfig {
        bandwidth: Some(TokenBucketConfig {
            size: 4096,
            one_time_burst: None,
            refill_time: 60_000,
        }),
        ops: Some(TokenBucketConfig {
            size: 3,
            one_time_burst: None,
            refill_time: 60_000,
        }),
    });
    let Ok(limiter) = RateLimiter::shared(limits.as_ref()) else {
        return;
    };
    let mut block = Block::new(
        Arc::new(Mutex::new(disk)),
        limiter,
        Arc::default(),
        read_only,
        cache,
    );

    let mem = queue::memory();
    let _ = mem.write_slice(r.chunk(1024), GuestAddress(DATA_START));
    let mut ring = Ring::new(&mem, queue::ring_base(0), QSIZE);
    for _ in 0..1 + r.u8() % 8 {
        let chain = if r.u8() & 0x80 != 0 {
            let chain = read_chain(&mut r, false);
            if r.bool() {
                write_header(&mut r, &mem, chain[0].addr);
            }
            chain
        } else {
            driver_chain(&mut r, &mem)
        };
        ring.add(&mem, &chain);
    }

    // The parser alone, on each chain as the device pops it.
    let mut q = ring.queue();
    while let Some(chain) = q.pop_descriptor_chain(&mem) {
        if let Ok(req) = request::parse(&mem, chain) {
            if matches!(req.kind, RequestType::In | RequestType::Out) {
                assert_eq!(req.data_len() % SECTOR_SIZE, 0);
            }
        }
    }
    // The device, from the start of the same ring.
    let mut q = ring.queue();
    for _ in 0..2 {
        let activity = block.process_queue(0, std::slice::from_mut(&mut q), &mem);
        if activity.rerun.is_none() {
            break;
        }
    }
    drop(block);
    let after = std::fs::read(&path).expect("cannot read the disk file");
    assert_eq!(after.len(), content.len(), "the disk file changed size");
    if read_only {
        assert!(after == content, "a read-only disk was written");
    }
    let _ = std::fs::remove_file(&path);
});
