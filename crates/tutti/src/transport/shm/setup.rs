//! Choosing and setting up shared memory per link, right after the hello, over the link's
//! (still blocking) TCP connection.
//!
//! Every message is a `u32` length (little-endian) and that many bytes (at most 4 KiB):
//! 1. both ends: `b"TSHM"`, mode (0 tcp, 1 auto, 2 shm), process id (`u32`), host identity
//!    (UTF-8). The pair uses shared memory iff neither end says tcp and the identities are
//!    equal.
//! 2. such a pair's lower rank creates the segment and sends status (0 ok, 1 failed), ring size
//!    (`u64`), and the segment's name (or why it failed);
//! 3. the higher rank opens and maps it, unlinks it, and answers status and a reason;
//! 4. the lower rank reads the answer and unlinks the name too (whoever is first removes it).
//!
//! Each step is done for every link before the next step starts (all writes of a step first,
//! then its reads), and every write is a few bytes that the socket buffer takes at once, so no
//! two ranks wait for each other in a cycle. Every read is bounded by the mesh deadline.
//!
//! A pair that cannot set up shared memory uses TCP: logged as a warning naming the size needed
//! under `auto`, an error on the rank whose `TUTTI_TRANSPORT` is `shm`.

use super::{host_identity, segment_len, Segment, ShmMode, ShmOptions, ShmPipe};
use crate::deadline::Deadline;
use std::io::{self, Read, Write};
use std::net::TcpStream;

const MAGIC: &[u8; 4] = b"TSHM";
const MAX_MESSAGE: usize = 4096;

/// What one end said in step 1.
struct PeerInfo {
    mode: ShmMode,
    identity: String,
}

/// A link whose shared memory is being set up.
enum State {
    Tcp,
    Offered {
        name: String,
        ring: usize,
        seg: Segment,
    },
    Ready(ShmPipe),
}

/// Why the mesh cannot form: a link (named by its peer) broke during set-up, or shared memory
/// was required and failed.
#[derive(Debug)]
pub(crate) struct SetupError {
    pub peer: usize,
    pub why: String,
}

/// Sets up shared memory on every link where both ends share a host; returns the pipes
/// (`None`: TCP). `streams[p]` is the blocking connection to rank `p` (`None` at `rank`).
pub(crate) fn negotiate(
    rank: usize,
    session: u64,
    streams: &[Option<TcpStream>],
    opts: &ShmOptions,
    deadline: Deadline,
) -> Result<Vec<Option<ShmPipe>>, SetupError> {
    let mine = host_identity(&opts.dir);
    let mut hello = MAGIC.to_vec();
    hello.push(opts.mode.code());
    hello.extend_from_slice(&std::process::id().to_le_bytes());
    hello.extend_from_slice(mine.as_bytes());
    let links: Vec<(usize, &TcpStream)> = streams
        .iter()
        .enumerate()
        .filter_map(|(p, s)| s.as_ref().map(|s| (p, s)))
        .collect();
    for &(peer, s) in &links {
        send(s, &hello, deadline).map_err(|e| broke(peer, "sending the host identity", e))?;
    }
    let mut local = Vec::new();
    for &(peer, s) in &links {
        let info =
            read_info(s, deadline).map_err(|e| broke(peer, "reading its host identity", e))?;
        let wanted = opts.mode != ShmMode::Off && info.mode != ShmMode::Off;
        if wanted && info.identity == mine {
            local.push(peer);
        }
        tracing::debug!(rank, peer, same_host = info.identity == mine, mode = ?info.mode, "link set-up");
    }
    let ring = opts.ring_bytes_for(local.len());
    let mut states: Vec<State> = streams.iter().map(|_| State::Tcp).collect();
    // Step 2: offers to the higher local peers.
    for &peer in local.iter().filter(|&&p| p > rank) {
        let s = streams[peer].as_ref().expect("a local peer has a link");
        let name = Segment::name(session, rank, peer);
        let mut offer = Vec::new();
        let failed = match Segment::create(&opts.dir, &name, segment_len(ring)) {
            Ok(seg) => {
                offer.push(0);
                offer.extend_from_slice(&(ring as u64).to_le_bytes());
                offer.extend_from_slice(name.as_bytes());
                states[peer] = State::Offered { name, ring, seg };
                None
            }
            Err(e) => {
                offer.push(1);
                offer.extend_from_slice(&0u64.to_le_bytes());
                offer.extend_from_slice(e.to_string().as_bytes());
                Some(e.to_string())
            }
        };
        // Sent before a failure is reported, so the peer does not wait for it.
        send(s, &offer, deadline).map_err(|e| broke(peer, "offering shared memory", e))?;
        if let Some(why) = failed {
            fallback(rank, peer, opts.mode, &why)?;
        }
    }
    // Step 3: open the lower peers' segments.
    for &peer in local.iter().filter(|&&p| p < rank) {
        let s = streams[peer].as_ref().expect("a local peer has a link");
        let offer = recv(s, deadline).map_err(|e| broke(peer, "reading its offer", e))?;
        let (status, ring, text) = parse_offer(&offer).map_err(|why| SetupError { peer, why })?;
        if status != 0 {
            fallback(
                rank,
                peer,
                opts.mode,
                &format!("rank {peer} could not create it: {text}"),
            )?;
            continue;
        }
        let opened = Segment::open(&opts.dir, &text, segment_len(ring));
        Segment::unlink(&opts.dir, &text);
        let answer = match opened {
            Ok(seg) => {
                states[peer] = State::Ready(ShmPipe::new(seg, ring, false));
                vec![0]
            }
            Err(e) => {
                let mut a = vec![1];
                a.extend_from_slice(e.to_string().as_bytes());
                send(s, &a, deadline).map_err(|e| broke(peer, "answering its offer", e))?;
                fallback(rank, peer, opts.mode, &e.to_string())?;
                continue;
            }
        };
        send(s, &answer, deadline).map_err(|e| broke(peer, "answering its offer", e))?;
    }
    // Step 4: the answers of the higher peers.
    for &peer in local.iter().filter(|&&p| p > rank) {
        let State::Offered { name, ring, seg } = std::mem::replace(&mut states[peer], State::Tcp)
        else {
            continue;
        };
        let s = streams[peer].as_ref().expect("a local peer has a link");
        let answer = recv(s, deadline);
        // The peer has opened it (or given up): the name can go, whatever it says.
        Segment::unlink(&opts.dir, &name);
        let answer = answer.map_err(|e| broke(peer, "reading its answer", e))?;
        match answer.split_first() {
            Some((0, _)) => states[peer] = State::Ready(ShmPipe::new(seg, ring, true)),
            Some((_, why)) => {
                let why = String::from_utf8_lossy(why);
                fallback(
                    rank,
                    peer,
                    opts.mode,
                    &format!("rank {peer} could not map it: {why}"),
                )?;
            }
            None => {
                return Err(SetupError {
                    peer,
                    why: "an empty answer to the shared-memory offer".into(),
                })
            }
        }
    }
    Ok(states
        .into_iter()
        .map(|s| match s {
            State::Ready(p) => Some(p),
            _ => None,
        })
        .collect())
}

/// A pair that must use TCP: a warning under `auto`, an error under `shm`.
fn fallback(rank: usize, peer: usize, mode: ShmMode, why: &str) -> Result<(), SetupError> {
    if mode == ShmMode::Require {
        return Err(SetupError {
            peer,
            why: format!(
                "shared memory is required (TUTTI_TRANSPORT=shm) but could not be set up: {why}"
            ),
        });
    }
    tracing::warn!(
        rank,
        peer,
        "shared memory with rank {peer} could not be set up, using TCP: {why}"
    );
    Ok(())
}

fn broke(peer: usize, what: &str, e: io::Error) -> SetupError {
    SetupError {
        peer,
        why: format!("the link broke while {what} for the shared-memory set-up: {e}"),
    }
}

fn read_info(s: &TcpStream, deadline: Deadline) -> io::Result<PeerInfo> {
    let m = recv(s, deadline)?;
    let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_string());
    if m.len() < 9 || &m[..4] != MAGIC {
        return Err(bad("not a tutti link set-up message"));
    }
    let mode = ShmMode::from_code(m[4]).ok_or_else(|| bad("an unknown transport mode"))?;
    Ok(PeerInfo {
        mode,
        identity: String::from_utf8_lossy(&m[9..]).into_owned(),
    })
}

fn parse_offer(m: &[u8]) -> Result<(u8, usize, String), String> {
    if m.len() < 9 {
        return Err(format!("a shared-memory offer of {} bytes", m.len()));
    }
    let ring = u64::from_le_bytes(m[1..9].try_into().expect("8 bytes"));
    let ring = usize::try_from(ring)
        .ok()
        .filter(|r| m[0] != 0 || (r.is_power_of_two() && (4 << 10..=64 << 20).contains(r)))
        .ok_or_else(|| format!("a shared-memory offer with a ring of {ring} bytes"))?;
    let text = String::from_utf8_lossy(&m[9..]).into_owned();
    if m[0] == 0 && (text.is_empty() || text.contains('/') || text.starts_with('.')) {
        return Err(format!("a shared-memory offer naming {text:?}"));
    }
    Ok((m[0], ring, text))
}

fn send(s: &TcpStream, payload: &[u8], deadline: Deadline) -> io::Result<()> {
    let mut m = (payload.len() as u32).to_le_bytes().to_vec();
    m.extend_from_slice(payload);
    s.set_write_timeout(Some(left(deadline)?))?;
    (&*s).write_all(&m)?;
    s.set_write_timeout(None)
}

fn recv(s: &TcpStream, deadline: Deadline) -> io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    read_exact_by(s, &mut len, deadline)?;
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_MESSAGE {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("a set-up message of {len} bytes (at most {MAX_MESSAGE})"),
        ));
    }
    let mut m = vec![0u8; len];
    read_exact_by(s, &mut m, deadline)?;
    Ok(m)
}

fn read_exact_by(s: &TcpStream, buf: &mut [u8], deadline: Deadline) -> io::Result<()> {
    let mut n = 0;
    while n < buf.len() {
        s.set_read_timeout(Some(left(deadline)?))?;
        match (&*s).read(&mut buf[n..]) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    s.set_read_timeout(None)
}

fn left(deadline: Deadline) -> io::Result<std::time::Duration> {
    let left = deadline.remaining();
    if left.is_zero() {
        return Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "the mesh deadline passed",
        ));
    }
    Ok(left)
}
