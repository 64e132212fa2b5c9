//! Polled virtio-blk driver: one request at a time, 512-byte sectors.

use core::ptr::{addr_of, addr_of_mut, read_volatile};

use super::{Buffer, Error, F_VERSION_1, Queue, Transport};

/// Device ID of a block device.
pub const DEVICE_ID: u32 = 2;
pub const SECTOR_SIZE: usize = 512;
/// Length of the GET_ID answer (a serial string, NUL-padded).
pub const ID_LEN: usize = 20;

const F_RO: u64 = 1 << 5;
const F_FLUSH: u64 = 1 << 9;

const T_IN: u32 = 0;
const T_OUT: u32 = 1;
const T_FLUSH: u32 = 4;
const T_GET_ID: u32 = 8;

/// Written into the status byte before each request, so a device that completes a
/// request without writing a status shows as 255 rather than as a stale value.
const STATUS_UNWRITTEN: u8 = 0xff;

#[repr(C)]
struct RequestHeader {
    kind: u32,
    reserved: u32,
    sector: u64,
}

/// The request's data, by direction.
enum Data<'a> {
    None,
    /// The device fills it.
    In(&'a mut [u8]),
    /// The device reads it.
    Out(&'a [u8]),
}

/// A block device after feature negotiation and queue setup.
pub struct Block {
    transport: Transport,
    queue: Queue,
    capacity: u64,
    read_only: bool,
}

impl Block {
    /// Initializes the block device behind `transport` (already probed as one).
    pub fn new(transport: Transport) -> Result<Block, Error> {
        let features = transport.negotiate(F_VERSION_1, F_RO | F_FLUSH)?;
        let mut queue = Queue::new()?;
        transport.setup_queue(0, &mut queue)?;
        transport.driver_ok();
        Ok(Block {
            capacity: transport.config_u64(0),
            read_only: features & F_RO != 0,
            transport,
            queue,
        })
    }

    /// Size in 512-byte sectors.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Whether the device announced VIRTIO_BLK_F_RO.
    pub fn read_only(&self) -> bool {
        self.read_only
    }

    // Each request returns the device's status byte: 0 OK, 1 IOERR, 2 UNSUPP, or 255
    // when the device did not write one.

    /// Reads whole sectors starting at `sector` into `buf`.
    pub fn read(&mut self, sector: u64, buf: &mut [u8]) -> u8 {
        self.request(T_IN, sector, Data::In(buf))
    }

    /// Writes whole sectors from `buf` starting at `sector`.
    pub fn write(&mut self, sector: u64, buf: &[u8]) -> u8 {
        self.request(T_OUT, sector, Data::Out(buf))
    }

    /// Asks the device to make earlier writes durable.
    pub fn flush(&mut self) -> u8 {
        self.request(T_FLUSH, 0, Data::None)
    }

    /// Reads the device's ID string.
    pub fn get_id(&mut self, id: &mut [u8; ID_LEN]) -> u8 {
        self.request(T_GET_ID, 0, Data::In(id))
    }

    fn request(&mut self, kind: u32, sector: u64, data: Data<'_>) -> u8 {
        let header = RequestHeader {
            kind,
            reserved: 0,
            sector,
        };
        let mut status = STATUS_UNWRITTEN;
        let buffer = |addr: *const u8, len: usize, device_writes| Buffer {
            addr: addr as u64,
            len: u32::try_from(len).expect("request buffer under 4 GiB"),
            device_writes,
        };
        let head = buffer(addr_of!(header).cast(), size_of::<RequestHeader>(), false);
        let tail = buffer(addr_of_mut!(status), 1, true);
        let mut chain = [head, tail, tail];
        let chain: &[Buffer] = match data {
            Data::None => &chain[..2],
            Data::In(buf) => {
                chain[1] = buffer(buf.as_mut_ptr(), buf.len(), true);
                &chain
            }
            Data::Out(buf) => {
                chain[1] = buffer(buf.as_ptr(), buf.len(), false);
                &chain
            }
        };
        // SAFETY: header, status and data outlive the call, which waits for the
        // device to finish with them.
        unsafe { self.queue.submit_and_wait(&self.transport, 0, chain) };
        // SAFETY: `status` is a live local; the device may have written it, so the
        // read must not be folded into the initial value.
        unsafe { read_volatile(addr_of!(status)) }
    }
}
