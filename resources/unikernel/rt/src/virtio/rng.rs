//! virtio-rng (entropy) driver (virtio 1.2 §5.4), for Firecracker's entropy device:
//! the driver posts a device-writable buffer on the one queue and the device returns
//! it with `len` random bytes written, maybe fewer than asked, maybe none.
//!
//! One request at a time, into a buffer of the driver's own rather than the caller's:
//! a request whose caller is gone (a function's panic abandons its frames) then writes
//! nothing anyone uses. Interrupt-driven like net: the device interrupts only while the
//! driver sleeps on a request ([`Rng::enable_interrupts`]). What to do about short
//! answers is the caller's business ([`crate::random`]).

use core::mem::take;
use core::ptr::NonNull;

use super::queue::desc_len;
use super::{Buffer, DeviceTransport, Error, F_VERSION_1, Queue, Transport, device_memory};

/// Device ID of an entropy source.
pub const DEVICE_ID: u32 = 4;

const REQUESTQ: u32 = 0;

/// The most bytes one request asks for: a function's 1 MiB takes 16 requests.
/// Requests never ask for more than their caller wants, so the host's entropy and
/// the buffer's pages (which fault in as requests first reach them) go only as far
/// as needed.
pub const MAX_REQUEST: usize = 64 * 1024;
const MAX_REQUEST_DESC: u32 = desc_len(MAX_REQUEST);

/// Where the one request stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Idle,
    /// The device holds the buffer.
    Pending,
    /// The device returned the buffer with this many bytes written (no more than
    /// the request asked for: the queue bounds it).
    Returned(usize),
}

/// An entropy device after initialization.
pub struct Rng<T: Transport = DeviceTransport> {
    transport: T,
    queue: Queue,
    /// [`MAX_REQUEST`] bytes for the device to write (leaked: a request may stay
    /// with the device for good).
    buffer: NonNull<u8>,
    /// How much of the buffer, from its start, is initialized: zeroed once before a
    /// request first reaches it, so that a device claiming bytes it never wrote
    /// hands out zeros, not uninitialized memory.
    initialized: usize,
    state: State,
    /// The device returned the buffer since [`Rng::ack_interrupt`] last looked.
    returned: bool,
}

impl<T: Transport> Rng<T> {
    /// Initializes the entropy device behind `transport` (already probed as one).
    pub fn new(transport: T) -> Result<Rng<T>, Error> {
        transport.negotiate(F_VERSION_1, 0)?;
        let mut queue = Queue::new()?;
        transport.setup_queue(REQUESTQ, &mut queue)?;
        transport.driver_ok();
        Ok(Rng {
            transport,
            queue,
            buffer: device_memory(MAX_REQUEST),
            initialized: 0,
            state: State::Idle,
            returned: false,
        })
    }

    /// Asks the device for `len` bytes (at most [`MAX_REQUEST`]) and notifies it,
    /// unless a request is pending or its answer not taken yet. Returns whether it
    /// asked.
    pub fn request(&mut self, len: usize) -> bool {
        let len = u32::try_from(len).map_or(MAX_REQUEST_DESC, |len| len.min(MAX_REQUEST_DESC));
        if self.state != State::Idle || len == 0 {
            return false;
        }
        let end = len as usize;
        if self.initialized < end {
            // SAFETY: the range lies inside the buffer, which the device does not
            // hold (no request is pending).
            unsafe {
                self.buffer
                    .add(self.initialized)
                    .write_bytes(0, end - self.initialized);
            }
            self.initialized = end;
        }
        let buffer = Buffer {
            addr: self.buffer.as_ptr() as u64,
            len,
            device_writes: true,
        };
        // SAFETY: the buffer is leaked, so valid forever, and only read once the
        // device has returned it.
        if unsafe { self.queue.push(&[buffer], 0) }.is_err() {
            return false;
        }
        self.queue.notify(&self.transport, REQUESTQ);
        self.state = State::Pending;
        true
    }

    /// Takes the request back if the device has returned it (used entries naming
    /// anything else are skipped), with interrupts off while the driver works.
    /// Returns whether it came back.
    pub fn reclaim(&mut self) -> bool {
        self.queue.disable_interrupts();
        let mut back = false;
        // The queue only returns the chain in flight, so this is the request.
        while let Some((_, len)) = self.queue.pop_used() {
            self.state = State::Returned(len as usize);
            back = true;
        }
        self.returned |= back;
        back
    }

    /// The answer to the request, once the device has returned it: copies what it
    /// wrote into `out` (more than fits is dropped) and returns how many bytes;
    /// `None` while there is no answer.
    pub fn take(&mut self, out: &mut [u8]) -> Option<usize> {
        self.reclaim();
        let State::Returned(written) = self.state else {
            return None;
        };
        self.state = State::Idle;
        let n = written.min(out.len());
        // SAFETY: `n` is at most what the request asked for, which lies in the
        // initialized part of the buffer, and the device has returned it.
        let bytes = unsafe { core::slice::from_raw_parts(self.buffer.as_ptr(), n) };
        out[..n].copy_from_slice(bytes);
        Some(n)
    }

    /// Whether the device has returned something not yet looked at. Memory reads
    /// only, for polling.
    pub fn has_used(&self) -> bool {
        self.queue.has_used()
    }

    /// Before the vCPU sleeps: lets the device interrupt when it answers a pending
    /// request. Returns whether the vCPU may sleep: not if it answered already.
    pub fn enable_interrupts(&mut self) -> bool {
        if self.state == State::Pending {
            self.queue.enable_interrupts();
        }
        !self.has_used()
    }

    /// After a snapshot restore: tells the device again about a pending request,
    /// which a restored device may never have heard of.
    pub fn renotify(&self) {
        if self.state == State::Pending {
            self.queue.notify(&self.transport, REQUESTQ);
        }
    }

    /// Acknowledges the device's interrupt before the driver waits for the next;
    /// returns how many register accesses (VM exits) that took: none unless the
    /// device returned the buffer since the last acknowledgement, as it only
    /// interrupts after that.
    pub fn ack_interrupt(&mut self) -> u64 {
        if !take(&mut self.returned) {
            return 0;
        }
        self.transport.ack_interrupt()
    }
}

#[cfg(test)]
mod tests {
    use super::super::fake::{Chain, FakeTransport};
    use super::super::queue::{AVAIL_F_NO_INTERRUPT, DESC_F_WRITE};
    use super::*;

    /// Firecracker's device: VERSION_1 only, one queue of 256, no config space.
    fn device() -> (FakeTransport, Rng<FakeTransport>) {
        let fake = FakeTransport::new(F_VERSION_1, &[256], &[]);
        let rng = Rng::new(fake.clone()).unwrap();
        (fake, rng)
    }

    fn posted(fake: &FakeTransport) -> Vec<Chain> {
        core::iter::from_fn(|| fake.pop_avail(REQUESTQ)).collect()
    }

    /// Has the device write `bytes` and return the request saying it wrote `len`.
    fn answer(fake: &FakeTransport, bytes: &[u8], len: u32) {
        let [chain] = <[Chain; 1]>::try_from(posted(fake)).unwrap();
        chain.write(0, bytes);
        fake.complete(REQUESTQ, &chain, len);
    }

    #[test]
    fn negotiates_version_1_only_and_sets_up_the_queue() {
        let fake = FakeTransport::new(F_VERSION_1 | 1 << 7, &[256], &[]);
        Rng::new(fake.clone()).unwrap();
        assert_eq!(fake.accepted(), F_VERSION_1);
        assert!(fake.queue(REQUESTQ).ready);
        assert_eq!(fake.avail_flags(REQUESTQ), AVAIL_F_NO_INTERRUPT);
        assert!(
            posted(&fake).is_empty(),
            "nothing asked before a caller asks"
        );

        let legacy = FakeTransport::new(0, &[256], &[]);
        assert_eq!(
            Rng::new(legacy).err(),
            Some(Error::MissingFeatures(F_VERSION_1))
        );
        let queueless = FakeTransport::new(F_VERSION_1, &[0], &[]);
        assert_eq!(Rng::new(queueless).err(), Some(Error::QueueUnavailable(0)));
    }

    #[test]
    fn asks_for_what_the_caller_wants_one_request_at_a_time() {
        let (fake, mut rng) = device();
        assert!(!rng.request(0));
        assert!(rng.request(100));
        assert_eq!(fake.take_notified(), [REQUESTQ]);
        assert!(!rng.request(100), "one is pending");
        let [chain] = <[Chain; 1]>::try_from(posted(&fake)).unwrap();
        assert_eq!(chain.descs.len(), 1);
        assert_eq!(
            (chain.descs[0].len, chain.descs[0].flags),
            (100, DESC_F_WRITE)
        );
        assert_eq!(rng.take(&mut [0; 100]), None, "no answer yet");

        chain.write(0, &[7; 100]);
        fake.complete(REQUESTQ, &chain, 100);
        assert!(!rng.request(100), "the answer is not taken yet");
        let mut out = [0; 100];
        assert_eq!(rng.take(&mut out), Some(100));
        assert_eq!(out, [7; 100]);
        assert_eq!(rng.take(&mut out), None, "an answer is taken once");

        // No request asks for more than MAX_REQUEST.
        assert!(rng.request(usize::MAX));
        assert_eq!(posted(&fake)[0].descs[0].len, MAX_REQUEST_DESC);
    }

    #[test]
    fn hands_out_short_and_empty_answers_as_they_are() {
        let (fake, mut rng) = device();
        rng.request(32);
        answer(&fake, &[1; 32], 10);
        let mut out = [0; 32];
        assert_eq!(rng.take(&mut out), Some(10));
        assert_eq!(out[..11], [[1; 10].as_slice(), &[0]].concat());

        rng.request(32);
        answer(&fake, &[], 0);
        assert_eq!(rng.take(&mut out), Some(0));
        // Bytes beyond `out` are dropped, never kept for a later caller.
        rng.request(32);
        answer(&fake, &[2; 32], 32);
        assert_eq!(rng.take(&mut out[..5]), Some(5));
        assert_eq!(rng.take(&mut out), None);
    }

    #[test]
    fn survives_a_device_that_returns_garbage() {
        let (fake, mut rng) = device();
        let mut out = [0xaa; 64];
        // Used entries while nothing is pending, and for ids never given out.
        for id in [0, 1, 63, 64, 1 << 20, u32::MAX] {
            fake.push_used(REQUESTQ, id, 64);
        }
        assert!(rng.has_used());
        assert_eq!(rng.take(&mut out), None);
        assert!(!rng.has_used(), "skipped, not left to be polled forever");

        // A length it claims but never wrote reads zeros, not uninitialized memory.
        rng.request(48);
        answer(&fake, &[], 48);
        assert_eq!(rng.take(&mut out), Some(48));
        assert_eq!(out[..48], [0; 48]);

        // A length beyond the request: nothing it wrote is trusted.
        out = [0xaa; 64];
        rng.request(16);
        answer(&fake, &[3; 16], 17);
        assert_eq!(rng.take(&mut out), Some(0));
        rng.request(16);
        answer(&fake, &[3; 16], u32::MAX);
        assert_eq!(rng.take(&mut out), Some(0));
        assert_eq!(out, [0xaa; 64]);
        // The same request id used twice: the second names nothing in flight.
        rng.request(8);
        let [chain] = <[Chain; 1]>::try_from(posted(&fake)).unwrap();
        fake.complete(REQUESTQ, &chain, 0);
        fake.complete(REQUESTQ, &chain, 8);
        assert_eq!(rng.take(&mut out), Some(0));
        assert_eq!(rng.take(&mut out), None);
    }

    #[test]
    fn interrupts_only_while_a_request_is_pending() {
        let (fake, mut rng) = device();
        fake.raise_interrupt(1);
        assert!(rng.enable_interrupts());
        assert_eq!(fake.avail_flags(REQUESTQ), AVAIL_F_NO_INTERRUPT, "idle");
        assert_eq!(rng.ack_interrupt(), 0, "nothing returned: nothing to see");

        rng.request(8);
        assert!(rng.enable_interrupts());
        assert_eq!(fake.avail_flags(REQUESTQ), 0);
        answer(&fake, &[5; 8], 8);
        assert!(!rng.enable_interrupts(), "answered: no sleep");
        assert!(rng.reclaim());
        assert_eq!(fake.avail_flags(REQUESTQ), AVAIL_F_NO_INTERRUPT);
        assert_eq!(rng.ack_interrupt(), 2);
        assert_eq!(rng.ack_interrupt(), 0);
    }

    #[test]
    fn tells_a_restored_device_about_a_pending_request() {
        let (fake, mut rng) = device();
        rng.renotify();
        assert!(fake.take_notified().is_empty(), "nothing pending");
        rng.request(8);
        fake.take_notified();
        rng.renotify();
        assert_eq!(fake.take_notified(), [REQUESTQ]);
    }
}
