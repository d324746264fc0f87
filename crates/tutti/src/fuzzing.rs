//! Entry points of the fuzz targets (`fuzz/` at the repository's root, run by
//! `scripts/fuzz.sh`) and of the garbage property tests below: each feeds arbitrary bytes to one
//! decoder of what arrives from the network and checks what the rest of the library relies on.
//! A broken promise panics, which the fuzzer records as a crash.
//!
//! - [`frame_header`]: `FrameHeader::decode_prefix`, the first thing a link reads of every
//!   frame;
//! - [`mesh_hello`]: the mesh handshake's hello and the acceptor's check of it;
//! - [`store_message`]: the store's hellos, verdicts, frame lengths, requests and responses.
//!
//! Every decoded value must re-encode into bytes that decode to the same value.

use crate::rendezvous::wire::{
    frame_len, ClientHello, Request, Response, ServerHello, Verdict, MAX_FRAME,
};
use crate::transport::frame::{FrameHeader, HEADER_LEN, MAX_HEADER_LEN};

/// `FrameHeader::decode_prefix` on `data`: never panics; a header it returns fits in `data`, is
/// at most `MAX_HEADER_LEN` long and round-trips; it waits for more bytes only while fewer than
/// `MAX_HEADER_LEN` have arrived (so a garbage length cannot make a link wait forever).
pub fn frame_header(data: &[u8]) {
    match FrameHeader::decode_prefix(data) {
        Ok(Some((h, len))) => {
            assert!(
                (HEADER_LEN..=MAX_HEADER_LEN).contains(&len) && len <= data.len(),
                "header length {len} for {} bytes",
                data.len()
            );
            assert_eq!(FrameHeader::decode(&h.encode()), Ok((h, 0)), "round trip");
        }
        Ok(None) => assert!(data.len() < MAX_HEADER_LEN, "waits at {} bytes", data.len()),
        Err(_) => {}
    }
}

/// The mesh hello decoder and the acceptor's check on `data`.
pub fn mesh_hello(data: &[u8]) {
    crate::transport::tcp::fuzz_hello(data);
}

/// The store protocol's decoders on `data`: its first byte picks the decoder, the rest is its
/// input.
pub fn store_message(data: &[u8]) {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    match which % 6 {
        0 => {
            if let Ok(r) = Request::decode(rest) {
                let frame = r.encode();
                assert_eq!(Request::decode(body(&frame)), Ok(r), "request round trip");
            }
        }
        1 => {
            if let Ok(r) = Response::decode(rest) {
                let frame = r.encode();
                assert_eq!(Response::decode(body(&frame)), Ok(r), "response round trip");
            }
        }
        2 => {
            if let Ok(h) = ClientHello::decode(rest) {
                assert_eq!(
                    ClientHello::decode(&h.encode()),
                    Ok(h),
                    "client hello round trip"
                );
            }
        }
        3 => {
            if let Ok(h) = ServerHello::decode(rest) {
                assert_eq!(
                    ServerHello::decode(&h.encode()),
                    Ok(h),
                    "server hello round trip"
                );
            }
        }
        4 => {
            if let Ok(v) = Verdict::decode(rest) {
                assert_eq!(Verdict::decode(&v.encode()), Ok(v), "verdict round trip");
            }
        }
        _ => {
            let mut prefix = [0u8; 4];
            let n = rest.len().min(4);
            prefix[..n].copy_from_slice(&rest[..n]);
            if let Ok(len) = frame_len(prefix) {
                assert!(len <= MAX_FRAME);
            }
        }
    }
}

/// The body of an encoded frame (after its 4-byte length, which must match).
fn body(frame: &[u8]) -> &[u8] {
    let (len, body) = frame.split_at(4);
    assert_eq!(
        u32::from_le_bytes([len[0], len[1], len[2], len[3]]) as usize,
        body.len(),
        "length prefix"
    );
    body
}

/// Valid inputs of every target, to start a fuzzer from: `(target, bytes)`.
pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    use crate::transport::{Lane, MsgKey};
    let key = MsgKey {
        comm_id: 1,
        lane: Lane::P2p,
        tag: 7,
    };
    let mut out: Vec<(&'static str, Vec<u8>)> = vec![
        (
            "frame_header",
            FrameHeader::data(key, 5, 64).encode().to_vec(),
        ),
        ("frame_header", FrameHeader::goodbye(true).encode().to_vec()),
        ("frame_header", FrameHeader::credit(4096).encode().to_vec()),
        (
            "frame_header",
            FrameHeader::heartbeat(Some((
                MsgKey {
                    lane: Lane::Collective,
                    ..key
                },
                9,
            )))
            .encode()
            .to_vec(),
        ),
    ];
    out.extend(
        crate::transport::tcp::fuzz_hello_seeds()
            .into_iter()
            .map(|s| ("mesh_hello", s)),
    );
    let with = |which: u8, bytes: &[u8]| {
        let mut v = vec![which];
        v.extend_from_slice(bytes);
        v
    };
    let requests = [
        Request::Set {
            key: "tutti/addr/1".into(),
            value: b"127.0.0.1:5".to_vec(),
        },
        Request::Wait {
            keys: vec!["a".into(), "b".into()],
            wait: std::time::Duration::from_millis(5),
        },
        Request::Add {
            key: "n".into(),
            delta: -1,
        },
    ];
    for r in requests {
        out.push(("store_message", with(0, &r.encode()[4..])));
    }
    for r in [
        Response::Value(b"v".to_vec()),
        Response::Timeout(vec!["k".into()]),
    ] {
        out.push(("store_message", with(1, &r.encode()[4..])));
    }
    let client = ClientHello {
        auth: true,
        rank: Some(2),
        job: 3,
        nonce: [1; 32],
    };
    out.push(("store_message", with(2, &client.encode())));
    let server = ServerHello {
        auth: true,
        job: 3,
        nonce: [2; 32],
    };
    out.push(("store_message", with(3, &server.encode())));
    out.push((
        "store_message",
        with(4, &Verdict::Refused("no".into()).encode()),
    ));
    out.push((
        "store_message",
        with(4, &Verdict::Accepted([5; 32]).encode()),
    ));
    out.push(("store_message", with(5, &64u32.to_le_bytes())));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn garbage_frame_headers(data in proptest::collection::vec(any::<u8>(), 0..200)) {
            frame_header(&data);
        }

        #[test]
        fn garbage_after_a_valid_frame_prefix(tail in proptest::collection::vec(any::<u8>(), 0..120), kind in 0u8..6) {
            // Magic and version right, so the decoder looks further.
            let mut data = vec![b'T', b'U', crate::transport::frame::VERSION, kind];
            data.extend_from_slice(&tail);
            frame_header(&data);
        }

        #[test]
        fn garbage_mesh_hellos(data in proptest::collection::vec(any::<u8>(), 0..100)) {
            mesh_hello(&data);
        }

        #[test]
        fn garbage_mesh_hellos_with_the_magic(tail in proptest::collection::vec(any::<u8>(), 55)) {
            let mut data = crate::transport::tcp::HELLO_MAGIC.to_vec();
            data.extend_from_slice(&tail);
            mesh_hello(&data);
        }

        #[test]
        fn garbage_store_messages(data in proptest::collection::vec(any::<u8>(), 0..120)) {
            store_message(&data);
        }
    }

    #[test]
    fn valid_inputs_pass_the_checks() {
        use crate::transport::{Lane, MsgKey};
        let key = MsgKey {
            comm_id: 3,
            lane: Lane::Collective,
            tag: 9,
        };
        let h = FrameHeader::fragment(key, 0xabc, 100, 10, 20, 4).encode();
        frame_header(&h);
        assert!(matches!(FrameHeader::decode_prefix(&h), Ok(Some(_))));
        for seed in crate::fuzzing::seeds() {
            match seed.0 {
                "frame_header" => frame_header(&seed.1),
                "mesh_hello" => mesh_hello(&seed.1),
                _ => store_message(&seed.1),
            }
        }
    }
}
