use super::super::fake::{Chain, FakeTransport};
use super::super::queue::{AVAIL_F_NO_INTERRUPT, DESC_F_WRITE};
use super::*;

const MAC: [u8; 6] = [0x06, 0, 0xac, 0x10, 0, 2];
/// Every feature ember's device offers (Firecracker's set).
const OFFERED: u64 = F_VERSION_1
    | 1 // CSUM
    | F_GUEST_CSUM
    | F_MTU
    | F_MAC
    | F_GUEST_TSO4
    | 1 << 8 // GUEST_TSO6
    | 1 << 10 // GUEST_UFO
    | 1 << 11 // HOST_TSO4
    | 1 << 12 // HOST_TSO6
    | 1 << 14 // HOST_UFO
    | F_MRG_RXBUF;

/// `virtio_net_config`: mac, status, max_virtqueue_pairs, mtu.
fn config(mtu: u16) -> Vec<u8> {
    let mut config = MAC.to_vec();
    config.extend_from_slice(&[0; 4]);
    config.extend_from_slice(&mtu.to_le_bytes());
    config
}

fn device(features: u64, mtu: u16, max: u32) -> (FakeTransport, Net<FakeTransport>) {
    let fake = FakeTransport::new(features, &[max, max], &config(mtu));
    let net = Net::new(fake.clone()).unwrap();
    (fake, net)
}

/// A receive header saying the frame spans `num_buffers` buffers.
fn header(num_buffers: u16) -> Vec<u8> {
    let mut header = vec![0; HEADER_LEN];
    header[NUM_BUFFERS_AT..].copy_from_slice(&num_buffers.to_le_bytes());
    header
}
const NUM_BUFFERS_AT: usize = 10;

fn posted(fake: &FakeTransport, queue: u32) -> Vec<Chain> {
    core::iter::from_fn(|| fake.pop_avail(queue)).collect()
}

/// Has the device write `bytes` into `chain` and return it with `len` written.
fn fill(fake: &FakeTransport, chain: &Chain, bytes: &[u8], len: usize) {
    chain.write(0, bytes);
    fake.complete(RX, chain, u32::try_from(len).unwrap());
}

fn frames(net: &mut Net<FakeTransport>) -> Vec<Vec<u8>> {
    let (rx, _) = net.split();
    core::iter::from_fn(|| {
        let frame = rx.next()?;
        let bytes = rx.frame(&frame).to_vec();
        rx.release(&frame);
        Some(bytes)
    })
    .collect()
}

#[test]
fn negotiates_what_it_uses_and_reads_the_config() {
    let (fake, net) = device(OFFERED, 9001, 256);
    assert_eq!(
        fake.accepted(),
        F_VERSION_1 | F_MAC | F_MTU | F_MRG_RXBUF | F_GUEST_CSUM | F_GUEST_TSO4
    );
    assert_eq!((net.mac(), net.mtu()), (Some(MAC), 9001));
    assert_eq!(fake.take_notified(), [RX]);
    let rx = posted(&fake, RX);
    assert_eq!(rx.len(), 64, "one buffer per descriptor");
    for chain in &rx {
        assert_eq!(chain.descs.len(), 1);
        assert_eq!(
            (chain.descs[0].len, chain.descs[0].flags),
            (16384, DESC_F_WRITE)
        );
    }
    assert!(posted(&fake, TX).is_empty());
    for queue in [RX, TX] {
        assert_eq!(fake.avail_flags(queue), AVAIL_F_NO_INTERRUPT);
    }

    // Neither MAC nor MTU offered; an MTU below IPv4's minimum.
    let (_, net) = device(F_VERSION_1 | F_MRG_RXBUF, 9001, 256);
    assert_eq!((net.mac(), net.mtu()), (None, DEFAULT_MTU));
    let (_, net) = device(F_VERSION_1 | F_MTU, 67, 256);
    assert_eq!(net.mtu(), DEFAULT_MTU);
}

#[test]
fn sizes_receive_buffers_for_the_largest_frame() {
    let buffer_len = |features, mtu, max| {
        let (fake, _) = device(features, mtu, max);
        let rx = posted(&fake, RX);
        (rx.len(), rx[0].descs[0].len)
    };
    // Without merged buffers each holds a whole frame: an MTU's, or 64 KiB with TSO.
    assert_eq!(
        buffer_len(F_VERSION_1 | F_MTU, 20_000, 64),
        (64, 12 + 14 + 20_000)
    );
    assert_eq!(buffer_len(F_VERSION_1 | F_MTU, 9000, 64), (64, 16384));
    assert_eq!(buffer_len(F_VERSION_1 | F_GUEST_TSO4, 0, 64), (64, 65_562));
    // A small queue: half of its buffers still hold a 64 KiB frame.
    assert_eq!(buffer_len(OFFERED, 1500, 4), (4, 32_781));
}

#[test]
fn hands_over_frames_in_one_buffer_or_several() {
    let (fake, mut net) = device(OFFERED, 1500, 64);
    let rx = posted(&fake, RX);
    let single = [header(1), b"single frame".to_vec()].concat();
    fill(&fake, &rx[0], &single, single.len());
    // Three buffers: a header and the frame's start, then two continuations.
    let first = [header(3), b"first|".to_vec()].concat();
    fill(&fake, &rx[1], &first, first.len());
    fill(&fake, &rx[2], b"second|", 7);
    assert!(net.has_used());
    assert_eq!(frames(&mut net), [b"single frame".to_vec()]);
    assert!(!net.has_used(), "the last buffer has not come yet");
    fill(&fake, &rx[3], b"third", 5);
    assert_eq!(frames(&mut net), [b"first|second|third".to_vec()]);
    // Four of 64 handled: no buffer goes back yet.
    net.kick();
    assert!(posted(&fake, RX).is_empty());
}

#[test]
fn takes_one_frame_per_buffer_without_merged_buffers() {
    let (fake, mut net) = device(F_VERSION_1, 1500, 64);
    let rx = posted(&fake, RX);
    // num_buffers means nothing then.
    let frame = [header(5), b"frame".to_vec()].concat();
    fill(&fake, &rx[0], &frame, frame.len());
    assert_eq!(frames(&mut net), [b"frame".to_vec()]);
}

#[test]
fn posts_handled_buffers_back_in_batches() {
    let (fake, mut net) = device(OFFERED, 1500, 8);
    fake.take_notified();
    let rx = posted(&fake, RX);
    let frame = [header(1), vec![7; 60]].concat();
    for chain in &rx[..3] {
        fill(&fake, chain, &frame, frame.len());
    }
    assert_eq!(frames(&mut net).len(), 3);
    net.kick();
    assert!(fake.take_notified().is_empty());
    fill(&fake, &rx[3], &frame, frame.len());
    assert_eq!(frames(&mut net).len(), 1);
    // Half handled: all four go back at once, with one notification.
    net.kick();
    assert_eq!(fake.take_notified(), [RX]);
    assert_eq!(posted(&fake, RX).len(), 4);
}

#[test]
fn queues_frames_and_notifies_once_per_batch() {
    let (fake, mut net) = device(OFFERED, 1500, 256);
    fake.take_notified();
    let (_, tx) = net.split();
    for i in 0..3u8 {
        tx.send(60, |frame| frame.fill(i));
    }
    assert!(
        fake.take_notified().is_empty(),
        "the device hears at the kick"
    );
    net.kick();
    assert_eq!(fake.take_notified(), [TX]);
    let sent = posted(&fake, TX);
    assert_eq!(sent.len(), 3);
    for (i, chain) in (0u8..).zip(&sent) {
        assert_eq!(chain.descs.len(), 1);
        assert_eq!(chain.descs[0].flags, 0);
        assert_eq!(chain.read(0), [vec![0; HEADER_LEN], vec![i; 60]].concat());
    }
    // Slots come back as the device returns them.
    assert!(!net.reclaim());
    fake.complete(TX, &sent[1], 0);
    assert!(net.reclaim());
    net.kick();
    assert!(fake.take_notified().is_empty(), "nothing new to send");
}

#[test]
fn drops_frames_no_slot_takes() {
    // One descriptor: one slot.
    let (fake, mut net) = device(OFFERED, 1500, 1);
    let (_, tx) = net.split();
    assert_eq!(tx.send(1514, |frame| frame.len()), 1514);
    assert!(!tx.can_send());
    tx.send(100, |frame| frame.fill(1));
    net.kick();
    assert_eq!(posted(&fake, TX).len(), 1, "the second frame was dropped");
    let (_, tx) = net.split();
    assert_eq!(
        tx.send(1515, |frame| frame.len()),
        1515,
        "longer than the MTU"
    );
}

#[test]
fn survives_a_device_that_returns_garbage() {
    let (fake, mut net) = device(OFFERED, 1500, 8);
    let rx = posted(&fake, RX);
    // Ids no buffer has, and a length beyond the buffer (reported as 0).
    for id in [8, 1 << 20, u32::MAX] {
        fake.push_used(RX, id, 100);
    }
    fake.complete(RX, &rx[0], rx[0].descs[0].len + 1);
    // Shorter than a header; a header claiming no buffers.
    fill(&fake, &rx[1], &[0; 5], 5);
    fill(&fake, &rx[2], &header(0), HEADER_LEN);
    // A frame claiming more buffers than its 64 KiB can take, then a good one.
    let huge = [header(u16::MAX), vec![1; 8180]].concat();
    for chain in &rx[3..7] {
        fill(&fake, chain, &huge, huge.len());
    }
    assert!(frames(&mut net).is_empty());
    net.kick();
    // Every buffer returned went back at once: seven of eight were held.
    assert_eq!(posted(&fake, RX).len(), 7);
    let fine = [header(1), b"fine".to_vec()].concat();
    fill(&fake, &rx[7], &fine, fine.len());
    assert!(
        frames(&mut net).is_empty(),
        "still a continuation of the huge one"
    );
}

#[test]
fn drops_frames_longer_than_the_largest() {
    let (fake, mut net) = device(OFFERED, 1500, 16);
    let rx = posted(&fake, RX);
    let first = [header(10), vec![1; 8180]].concat();
    fill(&fake, &rx[0], &first, first.len());
    for chain in &rx[1..10] {
        fill(&fake, chain, &[2; 8192], 8192);
    }
    let next = [header(1), b"next".to_vec()].concat();
    fill(&fake, &rx[10], &next, next.len());
    assert_eq!(frames(&mut net), [b"next".to_vec()]);

    // A queue of one: its buffer holds two frames' worth, too long to start one.
    let (fake, mut net) = device(OFFERED, 1500, 1);
    let long = [header(2), vec![1; 70_000]].concat();
    fill(&fake, &posted(&fake, RX)[0], &long, long.len());
    assert!(frames(&mut net).is_empty());
    net.kick();
    fill(&fake, &posted(&fake, RX)[0], &[3; 100], 100);
    assert!(frames(&mut net).is_empty(), "the rest of the long frame");
}

#[test]
fn interrupts_only_while_it_sleeps() {
    let (fake, mut net) = device(OFFERED, 1500, 1);
    assert!(net.enable_interrupts());
    assert_eq!(
        (fake.avail_flags(RX), fake.avail_flags(TX)),
        (0, AVAIL_F_NO_INTERRUPT)
    );
    net.disable_interrupts();
    assert_eq!(fake.avail_flags(RX), AVAIL_F_NO_INTERRUPT);
    // With every slot taken, sent frames are worth waking for.
    let (_, tx) = net.split();
    tx.send(60, |_| ());
    net.kick();
    assert!(net.enable_interrupts());
    assert_eq!(fake.avail_flags(TX), 0);
    let sent = posted(&fake, TX);
    fake.complete(TX, &sent[0], 0);
    assert!(net.has_used());
    assert!(!net.enable_interrupts(), "a buffer came back: no sleep");
}

#[test]
fn acknowledges_interrupts_only_after_buffers_came_back() {
    let (fake, mut net) = device(OFFERED, 1500, 8);
    fake.raise_interrupt(1);
    assert_eq!(
        net.ack_interrupt(),
        0,
        "no buffer returned: no interrupt to see"
    );
    let rx = posted(&fake, RX);
    let frame = [header(1), b"x".to_vec()].concat();
    fill(&fake, &rx[0], &frame, frame.len());
    assert_eq!(frames(&mut net).len(), 1);
    assert_eq!(net.ack_interrupt(), 2);
    assert_eq!(net.ack_interrupt(), 0);
}
