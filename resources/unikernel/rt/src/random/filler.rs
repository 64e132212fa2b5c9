//! The progress of one [`fill`](super::fill), apart from the waiting: what the
//! device has given so far, and when to ask it again.

use core::time::Duration;

use crate::time;
use crate::virtio::Transport;
use crate::virtio::rng::Rng;

/// The pause after the device answers with no bytes (it failed, or holds back), so
/// that a device which keeps doing so is not asked again and again at full speed;
/// each further empty answer doubles it, up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(1);
/// Such a device gets ten requests a second at most.
const MAX_BACKOFF: Duration = Duration::from_millis(100);

/// One fill's progress.
pub(crate) struct Filler {
    filled: usize,
    /// The pause after the next empty answer.
    backoff: Duration,
    /// The TSC value before which no request goes out: the last answer was empty.
    retry_at: Option<u64>,
}

/// What [`Filler::step`] needs next.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Step {
    /// The buffer is full.
    Full,
    /// It asked the device for more: wait for the answer.
    Requested,
    /// Wait for the pending answer (`None`), or until a TSC value and step again.
    Wait(Option<u64>),
}

impl Filler {
    pub(crate) const fn new() -> Filler {
        Filler {
            filled: 0,
            backoff: MIN_BACKOFF,
            retry_at: None,
        }
    }

    /// Copies the device's answer, if it came, into `buf` (the same on every
    /// step), then asks for the rest unless an empty answer calls for a pause
    /// first. `now` is the TSC, running at `khz`.
    pub(crate) fn step<T: Transport>(
        &mut self,
        rng: &mut Rng<T>,
        buf: &mut [u8],
        now: u64,
        khz: u64,
    ) -> Step {
        if let Some(n) = rng.take(&mut buf[self.filled..]) {
            self.filled += n;
            if n == 0 {
                self.retry_at = Some(now.saturating_add(time::ticks_at(self.backoff, khz)));
                self.backoff = self.backoff.saturating_mul(2).min(MAX_BACKOFF);
            } else {
                self.backoff = MIN_BACKOFF;
            }
        }
        if self.filled == buf.len() {
            return Step::Full;
        }
        if let Some(at) = self.retry_at.filter(|&at| now < at) {
            return Step::Wait(Some(at));
        }
        self.retry_at = None;
        if rng.request(buf.len() - self.filled) {
            Step::Requested
        } else {
            Step::Wait(None)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::collections::VecDeque;
    use std::rc::Rc;

    use super::*;
    use crate::virtio::F_VERSION_1;
    use crate::virtio::fake::FakeTransport;
    use crate::virtio::rng::MAX_REQUEST;

    const KHZ: u64 = 1_000_000;
    const MS: u64 = 1_000_000;

    /// An entropy device that answers each request at once with what `answer`
    /// makes of the length asked: the bytes it writes (numbered, counting on from
    /// the last) and the length it reports. Also returns the lengths asked.
    fn device(
        answer: impl Fn(u32) -> (u32, u32) + 'static,
    ) -> (FakeTransport, Rng<FakeTransport>, Rc<RefCell<Vec<u32>>>) {
        let fake = FakeTransport::new(F_VERSION_1, &[256], &[]);
        let asked = Rc::new(RefCell::new(Vec::new()));
        let log = asked.clone();
        let mut next = 0u8;
        fake.on_notify(move |device, index| {
            let chain = device.pop_avail(index).unwrap();
            let len = chain.descs[0].len;
            log.borrow_mut().push(len);
            let (written, reported) = answer(len);
            let bytes: Vec<u8> = (0..written)
                .map(|_| {
                    next = next.wrapping_add(1);
                    next
                })
                .collect();
            chain.write(0, &bytes);
            device.complete(index, &chain, reported);
        });
        let rng = Rng::new(fake.clone()).unwrap();
        (fake, rng, asked)
    }

    #[test]
    fn accumulates_short_answers_until_full() {
        let (_, mut rng, asked) = device(|len| (len.min(7), len.min(7)));
        let mut buf = [0u8; 20];
        let mut filler = Filler::new();
        let steps: Vec<Step> = (0..7)
            .map(|_| filler.step(&mut rng, &mut buf, 0, KHZ))
            .collect();
        use Step::*;
        assert_eq!(
            steps,
            [Requested, Requested, Requested, Full, Full, Full, Full]
        );
        assert_eq!(*asked.borrow(), [20, 13, 6]);
        assert_eq!(buf.to_vec(), (1..=20).collect::<Vec<u8>>());
    }

    #[test]
    fn asks_for_large_fills_in_parts() {
        let (_, mut rng, asked) = device(|len| (len, len));
        let mut buf = vec![0u8; 3 * MAX_REQUEST + 100];
        let mut filler = Filler::new();
        while filler.step(&mut rng, &mut buf, 0, KHZ) != Step::Full {}
        let max = u32::try_from(MAX_REQUEST).unwrap();
        assert_eq!(*asked.borrow(), [max, max, max, 100]);
        let numbered = (1..=u8::MAX).chain([0]).cycle();
        assert!(buf.iter().copied().eq(numbered.take(buf.len())));
    }

    /// A device giving the lengths in `answers` (no more than asked), then all
    /// that is asked.
    fn scripted(answers: &[u32]) -> (Rng<FakeTransport>, Rc<RefCell<Vec<u32>>>) {
        let answers = RefCell::new(answers.iter().copied().collect::<VecDeque<u32>>());
        let (_, rng, asked) = device(move |len| {
            let n = answers.borrow_mut().pop_front().map_or(len, |n| n.min(len));
            (n, n)
        });
        (rng, asked)
    }

    /// Steps `filler` as the runtime does, the TSC moving to the end of each pause,
    /// until `buf` is full; returns the pauses in milliseconds.
    fn fill_pausing(rng: &mut Rng<FakeTransport>, buf: &mut [u8]) -> Vec<u64> {
        let mut filler = Filler::new();
        let (mut now, mut pauses) = (5, Vec::new());
        loop {
            match filler.step(rng, buf, now, KHZ) {
                Step::Full => return pauses,
                Step::Requested => {}
                Step::Wait(Some(at)) => {
                    // Not asked again before the pause is over.
                    assert_eq!(filler.step(rng, buf, at - 1, KHZ), Step::Wait(Some(at)));
                    pauses.push((at - now) / MS);
                    now = at;
                }
                Step::Wait(None) => panic!("the device answers at once"),
            }
        }
    }

    #[test]
    fn pauses_longer_after_each_empty_answer() {
        let (mut rng, asked) = scripted(&[0; 9]);
        let mut buf = [0u8; 8];
        let pauses = fill_pausing(&mut rng, &mut buf);
        assert_eq!(pauses, [1, 2, 4, 8, 16, 32, 64, 100, 100]);
        assert_eq!(*asked.borrow(), [8; 10]);
        assert_eq!(buf, [1, 2, 3, 4, 5, 6, 7, 8]);

        // Bytes start the pauses over.
        let (mut rng, asked) = scripted(&[0, 0, 3, 0, 5]);
        let pauses = fill_pausing(&mut rng, &mut buf);
        assert_eq!(pauses, [1, 2, 1]);
        assert_eq!(*asked.borrow(), [8, 8, 8, 5, 5]);
        assert_eq!(buf, [1, 2, 3, 4, 5, 6, 7, 8]);
    }

    #[test]
    fn treats_lengths_beyond_the_request_as_empty() {
        // A device claiming more than it was asked for (and writing it).
        let (_, mut rng, _) = device(|len| (len, len + 1));
        let mut buf = [0u8; 16];
        let mut filler = Filler::new();
        assert_eq!(filler.step(&mut rng, &mut buf, 0, KHZ), Step::Requested);
        assert!(matches!(
            filler.step(&mut rng, &mut buf, 0, KHZ),
            Step::Wait(Some(_))
        ));
        assert_eq!(buf, [0; 16]);
    }

    #[test]
    fn waits_for_a_device_that_has_not_answered() {
        let fake = FakeTransport::new(F_VERSION_1, &[256], &[]);
        let mut rng = Rng::new(fake.clone()).unwrap();
        let mut buf = [0u8; 4];
        let mut filler = Filler::new();
        assert_eq!(filler.step(&mut rng, &mut buf, 0, KHZ), Step::Requested);
        // Garbage in the used ring is no answer.
        fake.push_used(0, 9, 4);
        assert_eq!(filler.step(&mut rng, &mut buf, 0, KHZ), Step::Wait(None));
        assert_eq!(fake.take_notified(), [0], "asked once");
        let chain = fake.pop_avail(0).unwrap();
        chain.write(0, &[9, 8, 7, 6]);
        fake.complete(0, &chain, 4);
        assert_eq!(filler.step(&mut rng, &mut buf, 0, KHZ), Step::Full);
        assert_eq!(buf, [9, 8, 7, 6]);
    }
}
