//! A virtio device inside the test process, so that the drivers get host unit
//! tests: [`FakeTransport`] keeps the registers in plain fields and plays the
//! device side of the queues, taking the chains a driver publishes and completing
//! them, or misbehaving on purpose. Drivers hand out pointers as guest-physical
//! addresses, which the guest's identity map makes true; in the test process the
//! device side dereferences them just the same.

use core::cell::RefCell;
use core::ptr::{addr_of, addr_of_mut, read_volatile, write_volatile};
use core::sync::atomic::{Ordering, fence};
use std::rc::Rc;

use super::queue::{Avail, DESC_F_NEXT, DESC_F_WRITE, Desc, Used, UsedElem};
use super::{STATUS_FEATURES_OK, Transport};

/// One queue's registers, and how far the device got in its rings.
#[derive(Clone, Copy, Debug, Default)]
pub struct QueueRegs {
    pub max_size: u32,
    pub size: u16,
    pub desc: u64,
    pub driver: u64,
    pub device: u64,
    pub ready: bool,
    /// Avail entries taken.
    last_avail: u16,
    /// Used entries written.
    used_idx: u16,
}

/// What the device does when a queue is notified, given the transport and the
/// queue's index.
type Hook = Box<dyn FnMut(&FakeTransport, u32)>;

#[derive(Default)]
struct Device {
    status: u32,
    /// Ignores the driver's reset.
    stuck: bool,
    /// Clears FEATURES_OK when the driver sets it.
    refuses_features: bool,
    offered: u64,
    accepted: u64,
    selected: u32,
    queues: Vec<QueueRegs>,
    notified: Vec<u32>,
    on_notify: Option<Hook>,
    interrupt: u32,
    config: Vec<u8>,
    generation: u32,
    /// Config bytes (offset, value) that change right after the next config read.
    torn: Option<(usize, Vec<u8>)>,
}

/// The transport a driver under test owns; clones share the device, so the test
/// keeps one to play the device side.
#[derive(Clone)]
pub struct FakeTransport(Rc<RefCell<Device>>);

impl FakeTransport {
    /// A device offering `features`, with a queue for each of the `max_sizes` and
    /// `config` as its config space.
    pub fn new(features: u64, max_sizes: &[u32], config: &[u8]) -> FakeTransport {
        FakeTransport(Rc::new(RefCell::new(Device {
            offered: features,
            queues: max_sizes
                .iter()
                .map(|&max_size| QueueRegs {
                    max_size,
                    ..QueueRegs::default()
                })
                .collect(),
            config: config.to_vec(),
            ..Device::default()
        })))
    }

    /// Makes the device ignore resets.
    pub fn break_reset(&self) {
        self.0.borrow_mut().stuck = true;
    }

    /// Makes the device refuse whatever features the driver accepts.
    pub fn refuse_features(&self) {
        self.0.borrow_mut().refuses_features = true;
    }

    /// The features the driver accepted.
    pub fn accepted(&self) -> u64 {
        self.0.borrow().accepted
    }

    pub fn queue(&self, index: u32) -> QueueRegs {
        self.0.borrow().queues[index as usize]
    }

    /// Indexes of the queues notified since the last call.
    pub fn take_notified(&self) -> Vec<u32> {
        core::mem::take(&mut self.0.borrow_mut().notified)
    }

    /// Runs `hook` whenever the driver notifies a queue, as the device would.
    pub fn on_notify(&self, hook: impl FnMut(&FakeTransport, u32) + 'static) {
        self.0.borrow_mut().on_notify = Some(Box::new(hook));
    }

    pub fn raise_interrupt(&self, bits: u32) {
        self.0.borrow_mut().interrupt |= bits;
    }

    /// Writes `bytes` at `offset` of the config space, as a device changes it.
    pub fn set_config(&self, offset: usize, bytes: &[u8]) {
        let mut device = self.0.borrow_mut();
        device.config[offset..offset + bytes.len()].copy_from_slice(bytes);
        device.generation += 1;
    }

    /// Changes the config space right after the driver's next config read.
    pub fn set_config_after_next_read(&self, offset: usize, bytes: &[u8]) {
        self.0.borrow_mut().torn = Some((offset, bytes.to_vec()));
    }

    /// The avail ring's flags (the driver's wishes) of queue `index`.
    pub fn avail_flags(&self, index: u32) -> u16 {
        let avail = self.queue(index).driver as *const Avail;
        // SAFETY: the driver activated the queue with this ring, which lives for the
        // rest of the process.
        unsafe { read_volatile(addr_of!((*avail).flags)) }
    }

    /// Sets the used ring's flags of queue `index`.
    pub fn set_used_flags(&self, index: u32, flags: u16) {
        let used = self.queue(index).device as *mut Used;
        // SAFETY: as in `avail_flags`; the used ring is the device's to write.
        unsafe { write_volatile(addr_of_mut!((*used).flags), flags) }
    }

    /// The next chain the driver published on queue `index`, if any.
    pub fn pop_avail(&self, index: u32) -> Option<Chain> {
        let mut device = self.0.borrow_mut();
        let queue = &mut device.queues[index as usize];
        assert!(queue.ready, "queue {index} is not live");
        let avail = queue.driver as *const Avail;
        let table = queue.desc as *const Desc;
        // SAFETY: as in `avail_flags`; entries are read after their index (the fence
        // orders the reads), and only descriptors below the queue size.
        unsafe {
            if read_volatile(addr_of!((*avail).idx)) == queue.last_avail {
                return None;
            }
            fence(Ordering::SeqCst);
            let slot = usize::from(queue.last_avail % queue.size);
            let head = read_volatile(addr_of!((*avail).ring[slot]));
            queue.last_avail = queue.last_avail.wrapping_add(1);
            let mut descs = Vec::new();
            let mut id = head;
            loop {
                assert!(id < queue.size, "descriptor {id} beyond the queue");
                assert!(descs.len() < usize::from(queue.size), "looping chain");
                let desc = read_volatile(table.add(usize::from(id)));
                descs.push(desc);
                if desc.flags & DESC_F_NEXT == 0 {
                    break;
                }
                id = desc.next;
            }
            Some(Chain { head, descs })
        }
    }

    /// Puts `(id, len)` in the used ring of queue `index` and publishes it, whether
    /// or not `id` is a chain the driver gave.
    pub fn push_used(&self, index: u32, id: u32, len: u32) {
        let mut device = self.0.borrow_mut();
        let queue = &mut device.queues[index as usize];
        let used = queue.device as *mut Used;
        let slot = usize::from(queue.used_idx % queue.size);
        queue.used_idx = queue.used_idx.wrapping_add(1);
        // SAFETY: as in `set_used_flags`; the fence orders the entry before the
        // index that publishes it.
        unsafe {
            write_volatile(addr_of_mut!((*used).ring[slot]), UsedElem { id, len });
            fence(Ordering::SeqCst);
            write_volatile(addr_of_mut!((*used).idx), queue.used_idx);
        }
    }

    /// Returns `chain` to the driver on queue `index`, `len` bytes written.
    pub fn complete(&self, index: u32, chain: &Chain, len: u32) {
        self.push_used(index, u32::from(chain.head), len);
    }
}

impl Transport for FakeTransport {
    fn status(&self) -> u32 {
        self.0.borrow().status
    }

    fn set_status(&self, status: u32) {
        let mut device = self.0.borrow_mut();
        if status == 0 {
            if device.stuck {
                return;
            }
            for queue in &mut device.queues {
                *queue = QueueRegs {
                    max_size: queue.max_size,
                    ..QueueRegs::default()
                };
            }
        }
        device.status = if device.refuses_features {
            status & !STATUS_FEATURES_OK
        } else {
            status
        };
    }

    fn device_features(&self) -> u64 {
        self.0.borrow().offered
    }

    fn set_driver_features(&self, features: u64) {
        self.0.borrow_mut().accepted = features;
    }

    fn select_queue(&self, index: u32) {
        self.0.borrow_mut().selected = index;
    }

    fn queue_max_size(&self) -> u32 {
        let device = self.0.borrow();
        device
            .queues
            .get(device.selected as usize)
            .map_or(0, |q| q.max_size)
    }

    fn queue_ready(&self) -> bool {
        let device = self.0.borrow();
        device
            .queues
            .get(device.selected as usize)
            .is_some_and(|q| q.ready)
    }

    fn activate_queue(&self, size: u16, desc: u64, driver: u64, device: u64) {
        let mut state = self.0.borrow_mut();
        let selected = state.selected as usize;
        let queue = &mut state.queues[selected];
        assert!(
            u32::from(size) <= queue.max_size,
            "queue larger than allowed"
        );
        *queue = QueueRegs {
            size,
            desc,
            driver,
            device,
            ready: true,
            ..*queue
        };
    }

    fn notify(&self, index: u32) {
        let hook = {
            let mut device = self.0.borrow_mut();
            device.notified.push(index);
            device.on_notify.take()
        };
        if let Some(mut hook) = hook {
            hook(self, index);
            self.0.borrow_mut().on_notify = Some(hook);
        }
    }

    fn take_interrupt(&self) -> u32 {
        core::mem::take(&mut self.0.borrow_mut().interrupt)
    }

    fn set_config_u32(&self, offset: usize, value: u32) {
        self.set_config(offset, &value.to_le_bytes());
    }

    fn config_generation(&self) -> u32 {
        self.0.borrow().generation
    }

    fn config_u32(&self, offset: usize) -> u32 {
        let value = {
            let device = self.0.borrow();
            let bytes = &device.config[offset..offset + 4];
            u32::from_le_bytes(bytes.try_into().expect("four bytes"))
        };
        let torn = self.0.borrow_mut().torn.take();
        if let Some((offset, bytes)) = torn {
            self.set_config(offset, &bytes);
        }
        value
    }
}

/// A descriptor chain the driver published, as the device sees it.
#[derive(Debug)]
pub struct Chain {
    pub head: u16,
    pub descs: Vec<Desc>,
}

impl Chain {
    /// The bytes of descriptor `i`.
    pub fn read(&self, i: usize) -> Vec<u8> {
        let desc = self.descs[i];
        // SAFETY: `Queue::push` has the driver keep a published buffer valid until
        // the chain is used, and tests read chains they have not completed.
        unsafe { core::slice::from_raw_parts(desc.addr as *const u8, desc.len as usize) }.to_vec()
    }

    /// Writes `bytes` at the start of descriptor `i`, which must be the device's to
    /// write and long enough.
    pub fn write(&self, i: usize, bytes: &[u8]) {
        let desc = self.descs[i];
        assert!(
            desc.flags & DESC_F_WRITE != 0,
            "descriptor {i} is read-only"
        );
        assert!(
            bytes.len() <= desc.len as usize,
            "descriptor {i} is too short"
        );
        // SAFETY: as in `read`, and the driver let the device write this buffer.
        unsafe { core::ptr::copy_nonoverlapping(bytes.as_ptr(), desc.addr as *mut u8, bytes.len()) }
    }
}
