//! Tests of the matcher: posted and unexpected messages, pieces, sizes, any-source, closing.

use super::*;
use crate::transport::Lane;
use tutti_core::channel::RecvInto;
use tutti_core::{DType, ReduceOp, Reducer};

fn key(tag: u64) -> MsgKey {
    MsgKey {
        comm_id: 0,
        lane: Lane::P2p,
        tag,
    }
}

fn deliver(m: &mut Matcher, peer: usize, tag: u64, data: &[u8]) {
    m.begin(peer, key(tag), 0, data.len());
    m.bytes(peer, data);
}

fn pending(p: Post) -> u64 {
    match p {
        Post::Pending(id) => id,
        Post::Done(_) => panic!("expected a pending receive"),
    }
}

#[test]
fn posted_receives_are_filled_in_place_and_in_order() {
    let mut m = Matcher::new(3);
    let (mut a, mut b) = ([0u8; 3], [0u8; 3]);
    let ia = pending(
        m.post(
            Source::Rank(1),
            key(7),
            0,
            Sink::borrowed(RecvInto::Copy(&mut a)),
        )
        .unwrap(),
    );
    let ib = pending(
        m.post(
            Source::Rank(1),
            key(7),
            0,
            Sink::borrowed(RecvInto::Copy(&mut b)),
        )
        .unwrap(),
    );
    m.begin(1, key(7), 0, 3);
    m.bytes(1, &[1, 2]);
    assert!(m.take_done(ia).is_none(), "not complete yet");
    m.bytes(1, &[3]);
    deliver(&mut m, 1, 7, &[4, 5, 6]);
    assert!(m.take_done(ia).unwrap().is_ok());
    assert!(m.take_done(ib).unwrap().is_ok());
    assert_eq!((a, b), ([1, 2, 3], [4, 5, 6]));
    assert_eq!(m.buffered(1), 0);
    assert_eq!(m.take_credit(1), 6 + 2 * MESSAGE_COST);
}

#[test]
fn unexpected_messages_wait_and_a_late_receive_takes_over_the_rest() {
    let mut m = Matcher::new(2);
    deliver(&mut m, 0, 1, b"early");
    m.begin(0, key(2), 9, 4);
    m.bytes(0, b"ha");
    assert_eq!(m.buffered(0), 7 + 2 * MESSAGE_COST);
    let mut buf = [0u8; 4];
    let id = pending(
        m.post(
            Source::Rank(0),
            key(2),
            9,
            Sink::borrowed(RecvInto::Copy(&mut buf)),
        )
        .unwrap(),
    );
    m.bytes(0, b"lf");
    assert!(m.take_done(id).unwrap().is_ok());
    assert_eq!(&buf, b"half");
    let mut e = [0u8; 5];
    match m.post(
        Source::Any,
        key(1),
        0,
        Sink::borrowed(RecvInto::Copy(&mut e)),
    ) {
        Ok(Post::Done(Ok((env, None)))) => assert!(env.written && env.peer == 0),
        _ => panic!("the early message is taken at once"),
    }
    assert_eq!(&e, b"early");
    assert_eq!(m.buffered(0), 0);
}

#[test]
fn wrong_sizes_and_fingerprints_are_reported_not_written() {
    let mut m = Matcher::new(2);
    let mut buf = [9u8; 2];
    let id = pending(
        m.post(
            Source::Rank(1),
            key(0),
            5,
            Sink::borrowed(RecvInto::Copy(&mut buf)),
        )
        .unwrap(),
    );
    deliver(&mut m, 1, 0, &[1, 2, 3]);
    let (env, _) = m.take_done(id).unwrap().unwrap();
    assert!(!env.written && env.len == 3);
    let id = pending(
        m.post(
            Source::Rank(1),
            key(0),
            5,
            Sink::borrowed(RecvInto::Copy(&mut buf)),
        )
        .unwrap(),
    );
    m.begin(1, key(0), 6, 2);
    m.bytes(1, &[1, 2]);
    let (env, _) = m.take_done(id).unwrap().unwrap();
    assert!(!env.written && env.fingerprint == 6);
    assert_eq!(buf, [9, 9]);
}

#[test]
fn combining_receives_handle_pieces_that_split_elements() {
    let red = Reducer::new(DType::U32, ReduceOp::Sum).unwrap();
    let mut acc: Vec<u8> = [1u32, 2, 3].iter().flat_map(|v| v.to_le_bytes()).collect();
    let mut m = Matcher::new(2);
    let id = pending(
        m.post(
            Source::Rank(1),
            key(0),
            0,
            Sink::borrowed(RecvInto::Combine(&mut acc, &red)),
        )
        .unwrap(),
    );
    let msg: Vec<u8> = [10u32, 20, 30]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    m.begin(1, key(0), 0, 12);
    for piece in [&msg[..3], &msg[3..4], &msg[4..11], &msg[11..]] {
        m.bytes(1, piece);
    }
    assert!(m.take_done(id).unwrap().unwrap().0.written);
    let got: Vec<u32> = acc
        .chunks(4)
        .map(|c| u32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    assert_eq!(got, [11, 22, 33]);
}

#[test]
fn any_source_takes_the_earliest_and_closed_peers_fail_their_receives() {
    let mut m = Matcher::new(3);
    deliver(&mut m, 2, 0, b"b");
    deliver(&mut m, 1, 0, b"a");
    assert_eq!(m.peek(Source::Any, key(0)).unwrap().peer, 2);
    let id = pending(
        m.post(Source::Rank(1), key(5), 0, Sink::Owned(Vec::new()))
            .unwrap(),
    );
    m.close(1, "gone");
    assert!(matches!(
        m.take_done(id),
        Some(Err(TransportError::PeerLost { peer: 1, .. }))
    ));
    // Messages that arrived before the close are still delivered.
    match m.post(Source::Rank(1), key(0), 0, Sink::Owned(Vec::new())) {
        Ok(Post::Done(Ok((_, Some(v))))) => assert_eq!(v, b"a"),
        _ => panic!("expected the early message"),
    }
    assert!(matches!(
        m.post(Source::Rank(1), key(0), 0, Sink::Owned(Vec::new())),
        Ok(Post::Done(Err(_)))
    ));
}

#[test]
fn a_cancelled_receive_is_never_written() {
    let mut m = Matcher::new(2);
    let mut buf = [0u8; 4];
    let id = pending(
        m.post(
            Source::Rank(1),
            key(0),
            0,
            Sink::borrowed(RecvInto::Copy(&mut buf)),
        )
        .unwrap(),
    );
    m.begin(1, key(0), 0, 4);
    m.bytes(1, &[1, 1]);
    m.cancel(id);
    m.bytes(1, &[2, 2]);
    assert_eq!(buf, [1, 1, 0, 0]);
    assert!(!m.is_pending(id) && m.take_done(id).is_none());
    assert_eq!(m.inbound(1), None);
}

#[test]
fn bytes_of_a_message_cut_by_a_close_are_dropped() {
    let mut m = Matcher::new(2);
    let mut buf = [0u8; 4];
    let id = pending(
        m.post(
            Source::Rank(1),
            key(0),
            0,
            Sink::borrowed(RecvInto::Copy(&mut buf)),
        )
        .unwrap(),
    );
    m.begin(1, key(0), 0, 4);
    m.bytes(1, &[1, 1]);
    m.close(1, "gone");
    // The link drains the rest of the frame after the close: nothing is written or kept.
    m.bytes(1, &[2, 2]);
    assert!(matches!(
        m.take_done(id),
        Some(Err(TransportError::PeerLost { peer: 1, .. }))
    ));
    assert_eq!(buf, [1, 1, 0, 0]);
    assert_eq!(m.buffered(1), 0);
}

/// A collective message that disagrees with a receive of the same call fails that receive,
/// whichever peer it waits for (in both orders); point-to-point tags are left alone.
#[test]
fn a_disagreeing_message_of_the_same_call_fails_receives_from_other_peers() {
    let coll = MsgKey {
        comm_id: 0,
        lane: Lane::Collective,
        tag: 1,
    };
    // Posted first, the foreign message second.
    let mut m = Matcher::new(3);
    let mut buf = [9u8; 4];
    let id = pending(
        m.post(
            Source::Rank(0),
            coll,
            5,
            Sink::borrowed(RecvInto::Copy(&mut buf)),
        )
        .unwrap(),
    );
    m.begin(2, coll, 6, 4);
    m.bytes(2, &[1, 2, 3, 4]);
    let (env, _) = m.take_done(id).unwrap().unwrap();
    assert_eq!((env.peer, env.fingerprint, env.written), (2, 6, false));
    assert_eq!(buf, [9; 4]);
    // The foreign message first: the receive fails as it is posted.
    let mut m = Matcher::new(3);
    m.begin(2, coll, 6, 4);
    m.bytes(2, &[1, 2, 3, 4]);
    match m
        .post(
            Source::Rank(0),
            coll,
            5,
            Sink::borrowed(RecvInto::Copy(&mut buf)),
        )
        .unwrap()
    {
        Post::Done(Ok((env, _))) => assert_eq!((env.peer, env.written), (2, false)),
        _ => panic!("expected a failed receive"),
    }
    // The same fingerprint from another peer, another call, or a p2p tag: nothing fails.
    let mut m = Matcher::new(3);
    let id = pending(
        m.post(
            Source::Rank(0),
            coll,
            5,
            Sink::borrowed(RecvInto::Copy(&mut buf)),
        )
        .unwrap(),
    );
    m.begin(2, coll, 5, 4);
    m.bytes(2, &[1, 2, 3, 4]);
    let next_call = MsgKey { tag: 2, ..coll };
    m.begin(1, next_call, 6, 0);
    deliver(&mut m, 1, 1, &[7]);
    assert!(m.take_done(id).is_none(), "still waiting for rank 0");
}

#[test]
fn an_announced_call_fails_receives_of_the_same_call_with_another_fingerprint() {
    let coll = |tag| MsgKey {
        comm_id: 3,
        lane: Lane::Collective,
        tag,
    };
    let mut m = Matcher::new(3);
    let mut buf = [9u8; 4];
    // Posted before the announcement: it fails when the announcement arrives.
    let id = pending(
        m.post(
            Source::Rank(1),
            coll(1),
            5,
            Sink::borrowed(RecvInto::Copy(&mut buf)),
        )
        .unwrap(),
    );
    // The same call (same fingerprint), another call, a p2p key, no fingerprint: nothing.
    m.announce(2, coll(1), 5);
    m.announce(2, coll(2), 6);
    m.announce(2, key(1), 6);
    m.announce(2, coll(1), 0);
    assert!(m.is_pending(id));
    assert_eq!(
        m.blocked_calls(0, 4),
        Vec::new(),
        "posted after watermark 0"
    );
    assert_eq!(m.blocked_calls(m.watermark(), 4), vec![(coll(1), 5)]);
    m.announce(2, coll(1), 6);
    let (env, _) = m.take_done(id).unwrap().unwrap();
    assert_eq!((env.peer, env.fingerprint, env.written), (2, 6, false));
    assert_eq!(buf, [9; 4]);
    // Posted after it: fails at once, naming the announcing peer.
    match m
        .post(
            Source::Rank(0),
            coll(1),
            5,
            Sink::borrowed(RecvInto::Copy(&mut buf)),
        )
        .unwrap()
    {
        Post::Done(Ok((env, _))) => assert_eq!((env.peer, env.fingerprint), (2, 6)),
        _ => panic!("expected a failed receive"),
    }
    // At most MAX_ANNOUNCED calls are kept per peer: the oldest is forgotten.
    for tag in 10..10 + MAX_ANNOUNCED as u64 {
        m.announce(2, coll(tag), 7);
    }
    let id = pending(
        m.post(
            Source::Rank(0),
            coll(1),
            5,
            Sink::borrowed(RecvInto::Copy(&mut buf)),
        )
        .unwrap(),
    );
    assert!(m.is_pending(id));
    m.cancel(id);
}
