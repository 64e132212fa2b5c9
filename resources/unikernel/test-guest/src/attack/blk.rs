//! Attacks on a virtio-blk device through a raw queue 0: status games, an
//! impossible avail index, hostile descriptor chains, and a ring kept full.
//! Every request is a read of sector 0, so no attack changes the disk.

use rt::println;

use super::Error;
use super::device::{
    self, ACKNOWLEDGE, BLOCK, DRIVER, DRIVER_OK, Device, FEATURES_OK, NEEDS_RESET, STATUS,
};
use super::ring::{
    AVAIL_F_NO_INTERRUPT, Desc, F_INDIRECT, F_NEXT, F_WRITE, RawQueue, Shared, addr,
};

const SECTOR_LEN: u32 = 512;
const SECTOR_SIZE: usize = SECTOR_LEN as usize;
const T_IN: u32 = 0;
const HEADER_LEN: u32 = 16;
/// Written into a status byte before its request: 255 = the device wrote none.
const STATUS_UNWRITTEN: u8 = 0xff;
const QUEUE_SIZE: u16 = 16;
/// Head of the valid reads (descriptors 13..=15), apart from head 0 that the
/// hostile chains use.
const VALID_HEAD: u16 = 13;

const STATUS_ROUNDS: usize = 100;
/// How long status-games waits for each request, in spins (about 0.1 s natively):
/// a device that took the bogus rings never completes it.
const COMPLETION_SPINS: u32 = 100_000_000;
/// Ring address no device may use: the last page of the address space.
const BOGUS_RING: u64 = 0xffff_ffff_ffff_f000;
const BAD_AVAIL_NOTIFIES: u32 = 10_000;
const HOSTILE_PUBLICATIONS: u32 = 10_000;
/// A buffer that wraps around the top of the address space.
const HUGE_ADDR: u64 = 0xffff_ffff_ffff_fff0;
/// ring-refill: 16 requests of 3 descriptors in flight need 48 descriptors.
const REFILL_QUEUE_SIZE: u16 = 64;
const REFILL_IN_FLIGHT: u16 = 16;
const REFILL_REQUESTS: u32 = 200_000;

#[repr(C)]
struct RequestHeader {
    kind: u32,
    reserved: u32,
    sector: u64,
}

/// The header of every request: a read of sector 0.
static READ_HEADER: Shared<RequestHeader> = Shared::new(RequestHeader {
    kind: T_IN,
    reserved: 0,
    sector: 0,
});
/// Where every read lands; nobody looks at it.
static DATA: Shared<[u8; SECTOR_SIZE]> = Shared::new([0; SECTOR_SIZE]);
/// One status byte per request in flight.
static STATUS_BYTES: Shared<[u8; REFILL_IN_FLIGHT as usize]> =
    Shared::new([0; REFILL_IN_FLIGHT as usize]);

/// An indirect descriptor table (16-byte aligned) whose two entries loop.
#[repr(C, align(16))]
struct Table([Desc; 2]);
static INDIRECT: Shared<Table> = Shared::new(Table([EMPTY; 2]));
const EMPTY: Desc = Desc {
    addr: 0,
    len: 0,
    flags: 0,
    next: 0,
};

/// The first block device, driven through one raw queue.
struct Blk {
    device: Device,
    queue: RawQueue,
}

impl Blk {
    /// Finds the block device and sets it up properly with a queue of `size`.
    fn open(cmdline: &[u8], size: u16) -> Result<Blk, Error> {
        let device = device::find(cmdline, BLOCK)?;
        let queue = RawQueue::new(size).ok_or("out of ring pages")?;
        device.init([&queue])?;
        Ok(Blk { device, queue })
    }

    /// Resets the device and sets it up again on the cleared ring page.
    fn reinit(&mut self) -> Result<(), Error> {
        self.device.reset();
        self.queue.clear();
        self.device.init([&self.queue])
    }

    /// Writes a valid read of sector 0 as descriptors `head..head + 3`, with its
    /// status in byte `slot` (set to 255 first).
    fn write_read(&mut self, head: u16, slot: usize) {
        // A device may still write it for an earlier request (the attacks allow
        // that), which is harmless.
        STATUS_BYTES.write(slot, STATUS_UNWRITTEN);
        let header = addr(READ_HEADER.get());
        let data = addr(DATA.get());
        let status = addr(STATUS_BYTES.at(slot));
        let q = &mut self.queue;
        q.set_desc(head, desc(header, HEADER_LEN, F_NEXT, head + 1));
        q.set_desc(head + 1, desc(data, SECTOR_LEN, F_WRITE | F_NEXT, head + 2));
        q.set_desc(head + 2, desc(status, 1, F_WRITE, 0));
    }

    /// Reads sector 0 and sleeps until the device returns the request; returns
    /// its status byte (hangs if the device never does).
    fn valid_read(&mut self) -> u8 {
        self.write_read(VALID_HEAD, 0);
        self.queue.publish(VALID_HEAD);
        self.device.notify(0);
        loop {
            while let Some((id, _)) = self.queue.pop_used() {
                if id == u32::from(VALID_HEAD) {
                    return STATUS_BYTES.read(0);
                }
            }
            self.device.sleep();
        }
    }

    /// Sleeps until at most `limit` chains are outstanding. A device that asks
    /// for a reset (NEEDS_RESET) gets one, which drops them all; returns whether
    /// it did.
    fn settle(&mut self, limit: u16) -> Result<bool, Error> {
        loop {
            while self.queue.pop_used().is_some() {}
            if self.queue.outstanding() <= limit {
                return Ok(false);
            }
            if self.device.status() & NEEDS_RESET != 0 {
                self.reinit()?;
                return Ok(true);
            }
            self.device.sleep();
        }
    }

    /// Writes hostile chain number `n` (of seven kinds, in turn) at head 0.
    fn write_hostile(&mut self, n: u32) {
        let header = addr(READ_HEADER.get());
        let data = addr(DATA.get());
        let q = &mut self.queue;
        match n % 7 {
            // A head that is its own next.
            0 => q.set_desc(0, desc(header, HEADER_LEN, F_NEXT, 0)),
            // 0 -> 1 -> 0.
            1 => {
                q.set_desc(0, desc(header, HEADER_LEN, F_NEXT, 1));
                q.set_desc(1, desc(data, SECTOR_LEN, F_WRITE | F_NEXT, 0));
            }
            // Every descriptor, the last pointing back to the first.
            2 => {
                q.set_desc(0, desc(header, HEADER_LEN, F_NEXT, 1));
                for i in 1..QUEUE_SIZE {
                    q.set_desc(
                        i,
                        desc(data, SECTOR_LEN, F_WRITE | F_NEXT, (i + 1) % QUEUE_SIZE),
                    );
                }
            }
            // A head that wraps around the top of the address space.
            3 => q.set_desc(0, desc(HUGE_ADDR, u32::MAX, 0, 0)),
            // A valid header, then a data buffer that wraps around the top.
            4 => {
                q.set_desc(0, desc(header, HEADER_LEN, F_NEXT, 1));
                q.set_desc(1, desc(HUGE_ADDR, u32::MAX, F_WRITE | F_NEXT, 2));
                q.set_desc(2, desc(addr(STATUS_BYTES.at(0)), 1, F_WRITE, 0));
            }
            // An indirect table (never negotiated) whose entries loop.
            5 => q.set_desc(0, desc(addr(INDIRECT.get()), 32, F_INDIRECT, 0)),
            // A next index far beyond the queue.
            _ => q.set_desc(0, desc(header, HEADER_LEN, F_NEXT, 999)),
        }
    }
}

fn desc(addr: u64, len: u32, flags: u16, next: u16) -> Desc {
    Desc {
        addr,
        len,
        flags,
        next,
    }
}

/// `status-games`: a proper read; then 100 rounds of dropping DRIVER_OK,
/// pointing queue 0 at the last page of the address space (size 256), setting
/// DRIVER_OK again, publishing a request and notifying, with FEATURES_OK and
/// DRIVER_OK written alone in changing orders; then a reset and a proper read.
pub fn status_games(cmdline: &[u8]) -> Result<(), Error> {
    let mut blk = Blk::open(cmdline, QUEUE_SIZE)?;
    println!("attack: status-games start");
    println!(
        "attack: status-games first read status={}",
        blk.valid_read()
    );
    let configured = ACKNOWLEDGE | DRIVER | FEATURES_OK;
    let orders = [
        [FEATURES_OK, DRIVER_OK],
        [DRIVER_OK, FEATURES_OK],
        [DRIVER_OK, FEATURES_OK | DRIVER_OK],
    ];
    let mut completed = 0;
    for round in 0..STATUS_ROUNDS {
        let device = &blk.device;
        device.write(STATUS, configured);
        device.set_queue(0, 256, (BOGUS_RING, BOGUS_RING, BOGUS_RING));
        device.write(STATUS, configured | DRIVER_OK);
        // The request goes into the real ring, the only one the guest can write:
        // a device that kept its rings completes it.
        blk.write_read(0, 1);
        blk.queue.publish(0);
        blk.device.notify(0);
        if (0..COMPLETION_SPINS).any(|_| {
            core::hint::spin_loop();
            blk.queue.pop_used().is_some()
        }) {
            completed += 1;
        }
        for status in orders[round % orders.len()] {
            blk.device.write(STATUS, status);
        }
        blk.device.notify(0);
    }
    println!("attack: status-games completed during games={completed}/{STATUS_ROUNDS}");
    blk.reinit()?;
    let status = blk.valid_read();
    println!("attack: status-games read after reset status={status}");
    println!("attack: status-games done");
    Ok(())
}

/// `bad-avail-idx`: a valid request in every ring slot, then 10,000 times the
/// avail index moved 1000 further (more than the queue holds) and notified,
/// paced by one STATUS read (a VM exit) each.
pub fn bad_avail_idx(cmdline: &[u8]) -> Result<(), Error> {
    let mut blk = Blk::open(cmdline, QUEUE_SIZE)?;
    blk.write_read(0, 0);
    blk.queue.fill_ring(0);
    println!("attack: bad-avail-idx start");
    for _ in 0..BAD_AVAIL_NOTIFIES {
        let idx = blk.queue.avail_idx().wrapping_add(1000);
        blk.queue.set_avail_idx(idx);
        blk.device.notify(0);
        blk.device.status();
    }
    let status = blk.device.status();
    println!("attack: bad-avail-idx done device-status={status:#x}");
    Ok(())
}

/// `looping-chain`: 10,000 hostile chains (see [`Blk::write_hostile`]) published
/// at head 0 and notified, each followed by one STATUS read; at most a queue's
/// worth outstanding (the device returns chains it rejects, or asks for a reset
/// and gets one). Then a valid read.
pub fn looping_chain(cmdline: &[u8]) -> Result<(), Error> {
    let mut blk = Blk::open(cmdline, QUEUE_SIZE)?;
    let header = addr(READ_HEADER.get());
    let table = [
        desc(header, HEADER_LEN, F_NEXT, 1),
        desc(addr(DATA.get()), SECTOR_LEN, F_WRITE | F_NEXT, 0),
    ];
    // SAFETY: the table is ours, and no chain points at it yet.
    unsafe { INDIRECT.get().write_volatile(Table(table)) };
    println!("attack: looping-chain start");
    let mut resets = 0;
    for n in 0..HOSTILE_PUBLICATIONS {
        resets += u32::from(blk.settle(QUEUE_SIZE - 1)?);
        blk.write_hostile(n);
        blk.queue.publish(0);
        blk.device.notify(0);
        if blk.device.status() & NEEDS_RESET != 0 {
            blk.reinit()?;
            resets += 1;
        }
    }
    resets += u32::from(blk.settle(0)?);
    println!(
        "attack: looping-chain valid read status={}",
        blk.valid_read()
    );
    println!("attack: looping-chain done resets={resets}");
    Ok(())
}

/// `ring-refill`: 16 valid reads in flight (a queue of 64), refilled the moment
/// they come back, polling the used ring without ever sleeping, until 200,000
/// completed. `errors` counts non-zero status bytes and unknown used ids.
pub fn ring_refill(cmdline: &[u8]) -> Result<(), Error> {
    let mut blk = Blk::open(cmdline, REFILL_QUEUE_SIZE)?;
    blk.queue.set_avail_flags(AVAIL_F_NO_INTERRUPT);
    for k in 0..REFILL_IN_FLIGHT {
        blk.write_read(3 * k, usize::from(k));
    }
    println!("attack: ring-refill start");
    for k in 0..REFILL_IN_FLIGHT {
        blk.queue.publish(3 * k);
    }
    blk.device.notify(0);
    let mut published = u32::from(REFILL_IN_FLIGHT);
    let (mut completed, mut errors) = (0, 0);
    while completed < REFILL_REQUESTS {
        let mut refilled = false;
        while let Some((id, _)) = blk.queue.pop_used() {
            completed += 1;
            let Some(head) = u16::try_from(id)
                .ok()
                .filter(|&h| h % 3 == 0 && h < 3 * REFILL_IN_FLIGHT)
            else {
                errors += 1;
                continue;
            };
            let slot = usize::from(head / 3);
            if STATUS_BYTES.read(slot) != 0 {
                errors += 1;
            }
            if published < REFILL_REQUESTS {
                blk.write_read(head, slot);
                blk.queue.publish(head);
                published += 1;
                refilled = true;
            }
        }
        if refilled {
            blk.device.notify(0);
        } else {
            core::hint::spin_loop();
        }
    }
    println!("attack: ring-refill done completed={completed} errors={errors}");
    Ok(())
}
