//! Polled virtio-blk driver: one request at a time, 512-byte sectors.

use core::ptr::{addr_of, addr_of_mut, read_volatile};

use super::{Buffer, DeviceTransport, Error, F_VERSION_1, Queue, Transport};

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

/// Descriptors of the longest request: header, data, status.
const MAX_CHAIN: u16 = 3;

const STATUS_OK: u8 = 0;
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

/// A request the device did not complete: its status byte, 1 (IOERR), 2 (UNSUPP),
/// or 255 when it wrote none.
#[derive(Debug, PartialEq, Eq)]
pub struct RequestError(pub u8);

/// A block device after feature negotiation and queue setup.
pub struct Block<T: Transport = DeviceTransport> {
    transport: T,
    queue: Queue,
    capacity: u64,
    read_only: bool,
}

impl<T: Transport> Block<T> {
    /// Initializes the block device behind `transport` (already probed as one).
    pub fn new(transport: T) -> Result<Block<T>, Error> {
        let features = transport.negotiate(F_VERSION_1, F_RO | F_FLUSH)?;
        let mut queue = Queue::new()?;
        transport.setup_queue(0, &mut queue)?;
        if queue.size() < MAX_CHAIN {
            return Err(Error::QueueTooSmall(0));
        }
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

    /// Reads whole sectors starting at `sector` into `buf`.
    pub fn read(&mut self, sector: u64, buf: &mut [u8]) -> Result<(), RequestError> {
        self.request(T_IN, sector, Data::In(buf))
    }

    /// Writes whole sectors from `buf` starting at `sector`.
    pub fn write(&mut self, sector: u64, buf: &[u8]) -> Result<(), RequestError> {
        self.request(T_OUT, sector, Data::Out(buf))
    }

    /// Asks the device to make earlier writes durable.
    pub fn flush(&mut self) -> Result<(), RequestError> {
        self.request(T_FLUSH, 0, Data::None)
    }

    /// Reads the device's ID string.
    pub fn get_id(&mut self, id: &mut [u8; ID_LEN]) -> Result<(), RequestError> {
        self.request(T_GET_ID, 0, Data::In(id))
    }

    fn request(&mut self, kind: u32, sector: u64, data: Data<'_>) -> Result<(), RequestError> {
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
        match unsafe { read_volatile(addr_of!(status)) } {
            STATUS_OK => Ok(()),
            status => Err(RequestError(status)),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::rc::Rc;

    use super::super::fake::{Chain, FakeTransport};
    use super::super::queue::{DESC_F_NEXT, DESC_F_WRITE};
    use super::*;

    const DISK_SECTORS: usize = 4;
    const SECTORS: u64 = DISK_SECTORS as u64;

    /// A block device on a fake transport whose notifications `serve` answers;
    /// its config space gives the capacity.
    fn fake_block(
        features: u64,
        mut serve: impl FnMut(&Chain) -> u32 + 'static,
    ) -> Block<FakeTransport> {
        let fake = FakeTransport::new(features, &[64], &SECTORS.to_le_bytes());
        fake.on_notify(move |device, index| {
            while let Some(chain) = device.pop_avail(index) {
                let len = serve(&chain);
                device.complete(index, &chain, len);
            }
        });
        Block::new(fake).unwrap()
    }

    /// The request header's fields: type and sector.
    fn header(chain: &Chain) -> (u32, u64) {
        let bytes = chain.read(0);
        assert_eq!(bytes.len(), size_of::<RequestHeader>());
        let kind = u32::from_le_bytes(bytes[0..4].try_into().unwrap());
        let sector = u64::from_le_bytes(bytes[8..16].try_into().unwrap());
        (kind, sector)
    }

    /// A device backed by `disk` that serves requests as virtio-blk says.
    fn disk_device(disk: Rc<RefCell<Vec<u8>>>) -> impl FnMut(&Chain) -> u32 {
        move |chain| {
            let (kind, sector) = header(chain);
            let status = chain.descs.len() - 1;
            let at = usize::try_from(sector).unwrap() * SECTOR_SIZE;
            let mut disk = disk.borrow_mut();
            let code = match kind {
                T_IN | T_OUT if at + chain.descs[1].len as usize > disk.len() => 1,
                T_IN => {
                    chain.write(1, &disk[at..at + chain.descs[1].len as usize]);
                    0
                }
                T_OUT => {
                    let data = chain.read(1);
                    disk[at..at + data.len()].copy_from_slice(&data);
                    0
                }
                T_FLUSH => 0,
                T_GET_ID => {
                    chain.write(1, b"fake-disk");
                    0
                }
                _ => 2,
            };
            chain.write(status, &[code]);
            1
        }
    }

    #[test]
    fn reads_its_capacity_and_features() {
        let block = fake_block(F_VERSION_1 | F_RO, |_| 0);
        assert_eq!((block.capacity(), block.read_only()), (SECTORS, true));
        let block = Block::new(FakeTransport::new(F_VERSION_1, &[64], &[0; 8])).unwrap();
        assert!(!block.read_only());
    }

    #[test]
    fn refuses_devices_it_cannot_drive() {
        let legacy = FakeTransport::new(F_RO, &[64], &[0; 8]);
        assert_eq!(
            Block::new(legacy).err(),
            Some(Error::MissingFeatures(F_VERSION_1))
        );
        let tiny = FakeTransport::new(F_VERSION_1, &[2], &[0; 8]);
        assert_eq!(Block::new(tiny).err(), Some(Error::QueueTooSmall(0)));
    }

    #[test]
    fn lays_out_requests_as_header_data_status() {
        let seen = Rc::new(RefCell::new(Vec::new()));
        let log = seen.clone();
        let mut block = fake_block(F_VERSION_1, move |chain| {
            let flags: Vec<u16> = chain.descs.iter().map(|d| d.flags).collect();
            let lens: Vec<u32> = chain.descs.iter().map(|d| d.len).collect();
            log.borrow_mut().push((header(chain), flags, lens));
            chain.write(chain.descs.len() - 1, &[0]);
            1
        });
        let mut sector = [0u8; 2 * SECTOR_SIZE];
        block.read(3, &mut sector).unwrap();
        block.write(1, &sector[..SECTOR_SIZE]).unwrap();
        block.flush().unwrap();
        block.get_id(&mut [0; ID_LEN]).unwrap();
        let (next, write) = (DESC_F_NEXT, DESC_F_WRITE);
        assert_eq!(
            *seen.borrow(),
            [
                (
                    (T_IN, 3),
                    vec![next, next | write, write],
                    vec![16, 1024, 1]
                ),
                ((T_OUT, 1), vec![next, next, write], vec![16, 512, 1]),
                ((T_FLUSH, 0), vec![next, write], vec![16, 1]),
                (
                    (T_GET_ID, 0),
                    vec![next, next | write, write],
                    vec![16, 20, 1]
                ),
            ]
        );
    }

    #[test]
    fn moves_data_both_ways() {
        let disk = Rc::new(RefCell::new(vec![0u8; DISK_SECTORS * SECTOR_SIZE]));
        let mut block = fake_block(F_VERSION_1, disk_device(disk.clone()));
        let data: Vec<u8> = (0..=u8::MAX).cycle().take(2 * SECTOR_SIZE).collect();
        block.write(2, &data).unwrap();
        assert_eq!(disk.borrow()[2 * SECTOR_SIZE..], data);
        let mut back = [0u8; SECTOR_SIZE];
        block.read(3, &mut back).unwrap();
        assert_eq!(back, data[SECTOR_SIZE..]);
        let mut id = [0; ID_LEN];
        block.get_id(&mut id).unwrap();
        assert_eq!(&id[..10], b"fake-disk\0");
    }

    #[test]
    fn reports_a_failed_request_as_its_status() {
        let disk = Rc::new(RefCell::new(vec![0u8; DISK_SECTORS * SECTOR_SIZE]));
        let mut block = fake_block(F_VERSION_1, disk_device(disk));
        let mut sector = [0u8; SECTOR_SIZE];
        assert_eq!(block.read(SECTORS, &mut sector), Err(RequestError(1)));
        assert_eq!(block.write(SECTORS, &sector), Err(RequestError(1)));

        let statuses = Rc::new(RefCell::new(vec![None, Some(0), Some(2)]));
        let next = statuses.clone();
        let mut block = fake_block(F_VERSION_1, move |chain| {
            if let Some(status) = next.borrow_mut().pop().unwrap() {
                chain.write(chain.descs.len() - 1, &[status]);
            }
            1
        });
        assert_eq!(block.flush(), Err(RequestError(2)));
        assert_eq!(block.flush(), Ok(()));
        // A device that writes no status fails the request even after a success.
        assert_eq!(block.flush(), Err(RequestError(STATUS_UNWRITTEN)));
        assert!(statuses.borrow().is_empty());
    }
}
