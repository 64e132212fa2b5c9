//! MSI-X (PCI Local Bus 3.0 §6.8.2): a table of vectors the guest programs
//! with an address and data, each maskable, and a pending bit array.
//!
//! Every vector has its own GSI and irqfd from creation on. [`Msix`] (the
//! guest's view, under its transport's lock, on a vCPU thread) routes a
//! vector's GSI to its message through KVM when the vector is usable;
//! [`MsixVectors`] (shared with whoever raises interrupts: the event loop,
//! the controller) delivers through the irqfd, or marks the vector pending
//! while it is masked. Masks live in a small lock per vector, never held
//! across an ioctl, so raising an interrupt never waits for a routing change.

use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};

use kvm_ioctls::VmFd;
use serde::{Deserialize, Serialize};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::vstate::vm::{GsiRoutes, MsiMessage};

/// The MSI-X capability id.
pub const CAPABILITY_ID: u8 = 0x11;
/// Bytes per table entry: address low, address high, data, vector control.
pub const ENTRY_SIZE: usize = 16;
/// A virtio vector number meaning "no vector".
pub const NO_VECTOR: u16 = 0xffff;
/// Message control: MSI-X enable, and the function-wide mask.
const CONTROL_ENABLE: u16 = 1 << 15;
const CONTROL_FUNCTION_MASK: u16 = 1 << 14;
/// Vector control: the vector is masked (its state at reset).
const ENTRY_MASKED: u32 = 1;
/// Messages the local APICs take: addresses 0xfee0_0000-0xfeef_ffff.
const MSI_ADDRESS_MASK: u32 = 0xfff0_0000;
const MSI_ADDRESS_BASE: u32 = 0xfee0_0000;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot create an MSI-X vector's eventfd: {0}")]
    Event(std::io::Error),
    #[error("KVM refused an MSI-X vector's irqfd: {0}")]
    Irqfd(kvm_ioctls::Error),
}

/// Whether a vector may interrupt now, and whether it owes an interrupt.
#[derive(Default)]
struct Delivery {
    masked: bool,
    pending: bool,
}

struct Vector {
    irqfd: EventFd,
    gsi: u32,
    state: Mutex<Delivery>,
}

/// The vectors of one function, and which vector each virtio queue and the
/// configuration use (virtio-pci's `config_msix_vector` and
/// `queue_msix_vector`).
pub struct MsixVectors {
    vectors: Vec<Vector>,
    config: AtomicU16,
    queues: Vec<AtomicU16>,
}

impl MsixVectors {
    /// `count` vectors on GSIs `gsi_base..`, each with an irqfd on `vm`, all
    /// masked; `queues` virtio queues, none with a vector yet.
    pub fn new(vm: &VmFd, gsi_base: u32, count: u16, queues: usize) -> Result<Self, Error> {
        let vectors = (gsi_base..gsi_base + u32::from(count))
            .map(|gsi| {
                let irqfd = EventFd::new(EFD_NONBLOCK).map_err(Error::Event)?;
                vm.register_irqfd(&irqfd, gsi).map_err(Error::Irqfd)?;
                Ok(Vector {
                    irqfd,
                    gsi,
                    state: Mutex::new(Delivery {
                        masked: true,
                        pending: false,
                    }),
                })
            })
            .collect::<Result<_, Error>>()?;
        Ok(MsixVectors {
            vectors,
            config: AtomicU16::new(NO_VECTOR),
            queues: (0..queues).map(|_| AtomicU16::new(NO_VECTOR)).collect(),
        })
    }

    /// How many vectors the function has.
    pub fn count(&self) -> usize {
        self.vectors.len()
    }

    fn gsi(&self, index: usize) -> Option<u32> {
        self.vectors.get(index).map(|v| v.gsi)
    }

    /// Interrupts through `vector`, or leaves it pending while masked.
    pub fn signal(&self, vector: u16) {
        let Some(v) = self.vectors.get(usize::from(vector)) else {
            return;
        };
        let Ok(mut state) = v.state.lock() else {
            return;
        };
        if state.masked {
            state.pending = true;
        } else if let Err(e) = v.irqfd.write(1) {
            log::warn!("virtio-pci: cannot raise an MSI-X interrupt: {e}");
        }
    }

    /// Interrupts through every vector a queue or the configuration uses.
    pub fn signal_all(&self) {
        self.signal(self.config_vector());
        for queue in 0..self.queues.len() {
            self.signal(self.queue_vector(queue));
        }
    }

    fn set_masked(&self, index: usize, masked: bool) {
        let Some(v) = self.vectors.get(index) else {
            return;
        };
        let Ok(mut state) = v.state.lock() else {
            return;
        };
        state.masked = masked;
        if !masked && std::mem::take(&mut state.pending) {
            if let Err(e) = v.irqfd.write(1) {
                log::warn!("virtio-pci: cannot raise an MSI-X interrupt: {e}");
            }
        }
    }

    fn pending(&self, index: usize) -> bool {
        self.vectors
            .get(index)
            .and_then(|v| v.state.lock().ok())
            .is_some_and(|s| s.pending)
    }

    fn set_pending(&self, index: usize, pending: bool) {
        if let Some(mut state) = self.vectors.get(index).and_then(|v| v.state.lock().ok()) {
            state.pending = pending;
        }
    }

    /// The vector for configuration changes.
    pub fn config_vector(&self) -> u16 {
        self.config.load(Ordering::Relaxed)
    }

    /// The vector for queue `queue`'s used buffers.
    pub fn queue_vector(&self, queue: usize) -> u16 {
        self.queues
            .get(queue)
            .map_or(NO_VECTOR, |v| v.load(Ordering::Relaxed))
    }

    /// A vector number the function has, or [`NO_VECTOR`], as virtio-pci
    /// answers a driver that asks for one it does not have.
    fn valid(&self, vector: u16) -> u16 {
        if usize::from(vector) < self.vectors.len() {
            vector
        } else {
            NO_VECTOR
        }
    }

    pub fn set_config_vector(&self, vector: u16) {
        self.config.store(self.valid(vector), Ordering::Relaxed);
    }

    pub fn set_queue_vector(&self, queue: usize, vector: u16) {
        if let Some(slot) = self.queues.get(queue) {
            slot.store(self.valid(vector), Ordering::Relaxed);
        }
    }

    /// Forgets the driver's choices of vectors (a device reset).
    pub fn reset_assignments(&self) {
        self.config.store(NO_VECTOR, Ordering::Relaxed);
        for queue in &self.queues {
            queue.store(NO_VECTOR, Ordering::Relaxed);
        }
    }
}

/// What a snapshot keeps of a function's MSI-X state.
#[derive(Serialize, Deserialize)]
pub struct MsixState {
    entries: Vec<[u32; 4]>,
    enabled: bool,
    function_masked: bool,
    pending: Vec<bool>,
    config_vector: u16,
    queue_vectors: Vec<u16>,
}

/// The guest's view: the table, the capability's control bits, and the
/// message KVM routes each vector's GSI to.
pub struct Msix {
    entries: Vec<[u32; 4]>,
    enabled: bool,
    function_masked: bool,
    routed: Vec<Option<MsiMessage>>,
    vectors: Arc<MsixVectors>,
    routes: Arc<GsiRoutes>,
}

impl Msix {
    pub fn new(vectors: Arc<MsixVectors>, routes: Arc<GsiRoutes>) -> Self {
        let count = vectors.count();
        Msix {
            entries: vec![[0, 0, 0, ENTRY_MASKED]; count],
            enabled: false,
            function_masked: false,
            routed: vec![None; count],
            vectors,
            routes,
        }
    }

    /// The capability's body (after id and next pointer) for a table and a
    /// PBA in BAR 0 at the given offsets, and which of its bits a guest may
    /// write (enable and function mask).
    pub fn capability(&self, table_offset: u32, pba_offset: u32) -> (Vec<u8>, [u32; 1]) {
        let table_size = u16::try_from(self.entries.len().saturating_sub(1)).unwrap_or(0);
        let mut body = table_size.to_le_bytes().to_vec();
        body.extend_from_slice(&table_offset.to_le_bytes());
        body.extend_from_slice(&pba_offset.to_le_bytes());
        let writable = u32::from(CONTROL_ENABLE | CONTROL_FUNCTION_MASK) << 16;
        (body, [writable])
    }

    /// The guest wrote the capability's message control.
    pub fn set_control(&mut self, control: u16) {
        let enabled = control & CONTROL_ENABLE != 0;
        let function_masked = control & CONTROL_FUNCTION_MASK != 0;
        if (enabled, function_masked) != (self.enabled, self.function_masked) {
            self.enabled = enabled;
            self.function_masked = function_masked;
            self.update(0..self.entries.len());
        }
    }

    pub fn read_table(&self, offset: u64, data: &mut [u8]) {
        for (i, byte) in data.iter_mut().enumerate() {
            *byte = usize::try_from(offset)
                .ok()
                .and_then(|o| o.checked_add(i))
                .and_then(|at| {
                    let entry = self.entries.get(at / ENTRY_SIZE)?;
                    let dword = entry[(at % ENTRY_SIZE) / 4];
                    Some(dword.to_le_bytes()[at % 4])
                })
                .unwrap_or(0);
        }
    }

    /// A guest write into the table: any width, any offset; each entry it
    /// touches is routed and masked anew.
    pub fn write_table(&mut self, offset: u64, data: &[u8]) {
        let Ok(offset) = usize::try_from(offset) else {
            return;
        };
        let mut touched = None;
        for (i, &byte) in data.iter().enumerate() {
            let Some(at) = offset.checked_add(i) else {
                break;
            };
            let Some(entry) = self.entries.get_mut(at / ENTRY_SIZE) else {
                break;
            };
            let dword = &mut entry[(at % ENTRY_SIZE) / 4];
            let shift = (at % 4) * 8;
            *dword = (*dword & !(0xff << shift)) | u32::from(byte) << shift;
            touched = Some(at / ENTRY_SIZE);
        }
        if let Some(last) = touched {
            self.update(offset / ENTRY_SIZE..last + 1);
        }
    }

    /// The pending bits; read-only to the guest.
    pub fn read_pba(&self, offset: u64, data: &mut [u8]) {
        for (i, byte) in data.iter_mut().enumerate() {
            let first_bit = usize::try_from(offset)
                .ok()
                .and_then(|o| o.checked_add(i))
                .and_then(|at| at.checked_mul(8));
            *byte = first_bit.map_or(0, |first| {
                (0..8)
                    .filter(|bit| self.vectors.pending(first + bit))
                    .fold(0, |b, bit| b | 1 << bit)
            });
        }
    }

    /// Whether vector `index` may interrupt: MSI-X on, the function and the
    /// vector unmasked.
    fn usable(&self, index: usize) -> bool {
        self.enabled
            && !self.function_masked
            && self
                .entries
                .get(index)
                .is_some_and(|e| e[3] & ENTRY_MASKED == 0)
    }

    /// The message of vector `index`, if it is one the local APICs take.
    fn message(&self, index: usize) -> Option<MsiMessage> {
        let [low, high, data, _] = *self.entries.get(index)?;
        let valid = high == 0 && low & MSI_ADDRESS_MASK == MSI_ADDRESS_BASE;
        if !valid {
            log::debug!("virtio-pci: MSI-X vector {index} has an address no APIC takes");
        }
        valid.then_some(MsiMessage {
            address: u64::from(low),
            data,
        })
    }

    /// Routes the usable vectors among `indices` to their messages (one
    /// routing update, and only for a message that changed), then applies
    /// every one's mask, which delivers what a now-unmasked vector owed.
    fn update(&mut self, indices: std::ops::Range<usize>) {
        // (vector, its GSI, its new message) for each usable vector whose
        // message is not the one KVM routes.
        let changed: Vec<(usize, u32, Option<MsiMessage>)> = indices
            .clone()
            .filter(|&i| self.usable(i))
            .filter_map(|i| {
                let message = self.message(i);
                let gsi = self.vectors.gsi(i)?;
                (self.routed.get(i) != Some(&message)).then_some((i, gsi, message))
            })
            .collect();
        let routes: Vec<(u32, Option<MsiMessage>)> = changed
            .iter()
            .map(|&(_, gsi, message)| (gsi, message))
            .collect();
        let routed = routes.is_empty()
            || match self.routes.update(&routes) {
                Ok(()) => {
                    for (i, _, message) in changed {
                        if let Some(slot) = self.routed.get_mut(i) {
                            *slot = message;
                        }
                    }
                    true
                }
                Err(e) => {
                    log::warn!("virtio-pci: cannot route MSI-X vectors: {e}");
                    false
                }
            };
        // Vectors KVM could not route stay masked: their interrupts wait.
        for i in indices {
            self.vectors.set_masked(i, !(routed && self.usable(i)));
        }
    }

    pub fn save(&self) -> MsixState {
        MsixState {
            entries: self.entries.clone(),
            enabled: self.enabled,
            function_masked: self.function_masked,
            pending: (0..self.entries.len())
                .map(|i| self.vectors.pending(i))
                .collect(),
            config_vector: self.vectors.config_vector(),
            queue_vectors: (0..self.vectors.queues.len())
                .map(|q| self.vectors.queue_vector(q))
                .collect(),
        }
    }

    /// Takes back a saved state, routes its vectors and applies its masks.
    pub fn restore(&mut self, state: &MsixState) -> Result<(), &'static str> {
        let count = self.entries.len();
        if state.entries.len() != count
            || state.pending.len() != count
            || state.queue_vectors.len() != self.vectors.queues.len()
        {
            return Err("its MSI-X table does not fit the device");
        }
        self.entries.clone_from(&state.entries);
        self.enabled = state.enabled;
        self.function_masked = state.function_masked;
        for (i, &pending) in state.pending.iter().enumerate() {
            self.vectors.set_pending(i, pending);
        }
        self.vectors.set_config_vector(state.config_vector);
        for (queue, &vector) in state.queue_vectors.iter().enumerate() {
            self.vectors.set_queue_vector(queue, vector);
        }
        self.update(0..count);
        Ok(())
    }

    /// The capability's message control as the guest reads it.
    pub fn control(&self) -> u16 {
        let table_size = u16::try_from(self.entries.len().saturating_sub(1)).unwrap_or(0);
        let enable = if self.enabled { CONTROL_ENABLE } else { 0 };
        let mask = if self.function_masked {
            CONTROL_FUNCTION_MASK
        } else {
            0
        };
        table_size | enable | mask
    }
}
