//! Ray-style objects: [`ObjectStore::put`] keeps a copy of an array on this rank and returns a
//! small [`ObjectRef`]; [`ObjectStore::get`] on any rank fetches it from its owner.
//!
//! # How a fetch is served
//! Each rank that starts a store runs one service thread. It listens on a communicator of its
//! own (an id derived from the parent's, so its messages never match the application's) for
//! requests `[1, id: u64 le, reply_tag: u32 le]` on tag [`REQUEST_TAG`], looks the id up in the
//! registry and answers on the requester's `reply_tag` with a header `[status, dtype code]`
//! followed, when found, by the payload. The owner therefore answers while its application
//! computes or blocks in a collective. Each `get` uses a fresh reply tag, so concurrent gets
//! from several threads never take each other's answers.
//!
//! # Lifetime and errors
//! An object lives until its owner calls [`ObjectStore::free`] (or drops its store, or leaves
//! the group). A get of a freed or unknown id is [`Error::InvalidArgument`] naming the owner and
//! the id; a get from an owner that has left is a transport error (`PeerLost`), and one that
//! gets no answer fails at the communicator's timeout. Every wait is bounded: requests and
//! replies by the communicator's timeout, the service thread's listening by [`POLL`] (then it
//! checks whether to stop).
//!
//! Costs: a put copies the array once; a remote get sends 13 bytes, then the owner sends the
//! payload (one copy into the transport, one out into the returned vector); a local get copies.

use super::Communicator;
use crate::error::{Error, Op, Result};
use crate::exec::Group;
use crate::transport::TransportError;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;
use tutti_core::{DType, Element};

/// The tag of requests to a service thread.
pub const REQUEST_TAG: u32 = 1;
/// How long the service thread waits for a request before checking whether to stop.
pub const POLL: Duration = Duration::from_millis(100);

const KIND_GET: u8 = 1;
const STATUS_OK: u8 = 0;
const STATUS_MISSING: u8 = 1;

/// A reference to an object held by rank `owner` (a world rank of the store's communicator):
/// plain data, to be sent anywhere (the Python binding pickles it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ObjectRef {
    pub owner: usize,
    pub id: u64,
}

type Registry = Mutex<HashMap<u64, (DType, Arc<Vec<u8>>)>>;

/// This rank's objects and its service thread (see the module doc). Dropping it stops the
/// thread (within [`POLL`]) and frees the objects.
pub struct ObjectStore {
    comm: Communicator,
    /// The parent's world rank when it is a sub-communicator (for errors).
    world_rank: Option<usize>,
    registry: Arc<Registry>,
    next_id: AtomicU64,
    next_reply: AtomicU32,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Communicator {
    /// Starts this rank's object store (not a collective: each rank starts its own, and only
    /// ranks with a store answer gets; a rank that puts has one).
    pub fn object_store(&self) -> Result<ObjectStore> {
        ObjectStore::start(self)
    }

    /// A handle on the store's own communicator: this one's ranks and links, another id.
    fn store_comm(&self, timeout: Duration) -> Communicator {
        let group = Group {
            members: self.group.members.clone(),
            rank: self.group.rank,
            comm_id: store_id(self.group.comm_id),
        };
        Communicator::new(
            self.transport.clone(),
            group,
            timeout,
            self.algorithms(),
            self.world_hosts.clone(),
            self._keepalive.clone(),
        )
    }
}

impl ObjectStore {
    fn start(parent: &Communicator) -> Result<ObjectStore> {
        let comm = parent.store_comm(parent.timeout);
        let listen = parent.store_comm(POLL);
        let replies = parent.store_comm(parent.timeout);
        let registry = Arc::new(Registry::default());
        let stop = Arc::new(AtomicBool::new(false));
        let (reg, halt) = (registry.clone(), stop.clone());
        let thread = std::thread::Builder::new()
            .name(format!("tutti-objects-{}", parent.rank()))
            .spawn(move || serve(&listen, &replies, &reg, &halt))
            .map_err(|e| Error::InvalidArgument {
                op: Op::Get,
                rank: parent.rank(),
                what: format!("cannot start the object store's service thread: {e}"),
            })?;
        Ok(ObjectStore {
            comm,
            world_rank: parent.group.world_rank_if_sub(),
            registry,
            next_id: AtomicU64::new(1),
            next_reply: AtomicU32::new(0),
            stop,
            thread: Some(thread),
        })
    }

    /// Keeps a copy of `data` on this rank until [`free`](Self::free); returns its reference.
    pub fn put<T: Element>(&self, data: &[T]) -> ObjectRef {
        let bytes = bytemuck::cast_slice::<T, u8>(data).to_vec();
        self.put_bytes(T::DTYPE, bytes)
    }

    /// As [`put`](Self::put), for bytes already laid out as elements of `dtype` (taken as is).
    pub fn put_bytes(&self, dtype: DType, bytes: Vec<u8>) -> ObjectRef {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        lock(&self.registry).insert(id, (dtype, Arc::new(bytes)));
        ObjectRef {
            owner: self.comm.rank(),
            id,
        }
    }

    /// Drops this rank's object `r`; later gets of it fail. Only the owner may free it.
    pub fn free(&self, r: ObjectRef) -> Result<()> {
        let me = self.comm.rank();
        if r.owner != me {
            return Err(self.invalid(format!(
                "free of object {} of rank {}: only its owner frees it (this is rank {me})",
                r.id, r.owner
            )));
        }
        match lock(&self.registry).remove(&r.id) {
            Some(_) => Ok(()),
            None => Err(self.invalid(format!(
                "free of object {} of rank {me}: no such object (already freed, or never put)",
                r.id
            ))),
        }
    }

    /// The number of objects this rank holds.
    pub fn len(&self) -> usize {
        lock(&self.registry).len()
    }

    /// True if this rank holds no object.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Fetches object `r` from its owner (or this rank's registry) as elements of `T`, which
    /// must be the type it was put with.
    pub fn get<T: Element>(&self, r: ObjectRef) -> Result<Vec<T>> {
        let (dtype, bytes) = self.get_bytes(r)?;
        if dtype != T::DTYPE {
            return Err(self.invalid(format!(
                "get of object {} of rank {}: it holds {dtype}, not {}",
                r.id,
                r.owner,
                T::DTYPE
            )));
        }
        let count = bytes.len() / std::mem::size_of::<T>();
        let mut out = vec![T::zeroed(); count];
        bytemuck::cast_slice_mut::<T, u8>(&mut out).copy_from_slice(&bytes);
        Ok(out)
    }

    /// Fetches object `r` as its element type and bytes.
    pub fn get_bytes(&self, r: ObjectRef) -> Result<(DType, Vec<u8>)> {
        if r.owner >= self.comm.size() {
            return Err(self.invalid(format!(
                "get of object {} of rank {}: no such rank in a group of {}",
                r.id,
                r.owner,
                self.comm.size()
            )));
        }
        if r.owner == self.comm.rank() {
            let found = lock(&self.registry).get(&r.id).cloned();
            return match found {
                Some((dtype, bytes)) => Ok((dtype, bytes.as_ref().clone())),
                None => Err(self.missing(r)),
            };
        }
        self.fetch(r)
    }

    fn fetch(&self, r: ObjectRef) -> Result<(DType, Vec<u8>)> {
        // Tags 0 and REQUEST_TAG are not reply tags.
        let reply_tag = 2 + self.next_reply.fetch_add(1, Ordering::Relaxed) % (u32::MAX - 2);
        let mut req = Vec::with_capacity(13);
        req.push(KIND_GET);
        req.extend_from_slice(&r.id.to_le_bytes());
        req.extend_from_slice(&reply_tag.to_le_bytes());
        let exchange = || -> Result<(DType, Vec<u8>)> {
            self.comm.send(&req, r.owner, REQUEST_TAG)?;
            self.answer(r, reply_tag)
        };
        exchange().map_err(|e| self.as_get(e))
    }

    /// Receives the owner's answer for `r` on `reply_tag`.
    fn answer(&self, r: ObjectRef, reply_tag: u32) -> Result<(DType, Vec<u8>)> {
        let (head, _) = self.comm.recv_vec::<u8>(Some(r.owner), reply_tag)?;
        match head.as_slice() {
            [STATUS_OK, code] => {
                let dtype = DType::ALL
                    .iter()
                    .copied()
                    .find(|d| d.code() == *code)
                    .ok_or_else(|| self.bad_reply(r, format!("unknown dtype code {code}")))?;
                let (bytes, _) = self.comm.recv_vec::<u8>(Some(r.owner), reply_tag)?;
                Ok((dtype, bytes))
            }
            [STATUS_MISSING, _] => Err(self.missing(r)),
            other => Err(self.bad_reply(r, format!("a header of {} bytes", other.len()))),
        }
    }

    /// A transport error of a fetch, reported as the `get` it was part of.
    fn as_get(&self, e: Error) -> Error {
        match e {
            Error::Transport {
                seq,
                rank,
                source,
                waiting_for,
                ..
            } => Error::Transport {
                op: Op::Get,
                seq,
                rank,
                world_rank: self.world_rank,
                source,
                waiting_for,
            },
            other => other,
        }
    }

    fn invalid(&self, what: String) -> Error {
        Error::InvalidArgument {
            op: Op::Get,
            rank: self.comm.rank(),
            what,
        }
    }

    fn missing(&self, r: ObjectRef) -> Error {
        self.invalid(format!(
            "get of object {} of rank {}: the owner has no such object (freed, or never put)",
            r.id, r.owner
        ))
    }

    fn bad_reply(&self, r: ObjectRef, what: String) -> Error {
        Error::Mismatch {
            op: Op::Get,
            seq: 0,
            rank: self.comm.rank(),
            peer: r.owner,
            what: format!("the answer for object {}: {what}", r.id),
        }
    }
}

impl Drop for ObjectStore {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The id of the store's communicator for a parent of id `parent`.
fn store_id(parent: u64) -> u64 {
    let mut z = parent ^ 0x6f62_6a65_6374_7300; // "objects"
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    (z ^ (z >> 31)).max(1)
}

/// The service loop: answers requests until `stop` is set or the links close.
fn serve(listen: &Communicator, replies: &Communicator, registry: &Registry, stop: &AtomicBool) {
    while !stop.load(Ordering::Acquire) {
        match listen.recv_vec::<u8>(None, REQUEST_TAG) {
            Ok((req, st)) => answer(replies, registry, &req, st.source),
            Err(Error::Transport { source, .. }) => match source {
                TransportError::Timeout { .. } | TransportError::TimeoutAny { .. } => {}
                TransportError::Closed { .. } => return,
                other => {
                    tracing::debug!("object store: listening failed ({other}); retrying");
                    std::thread::sleep(POLL);
                }
            },
            Err(e) => {
                tracing::debug!("object store: a bad request ({e}); ignored");
            }
        }
    }
}

/// Answers one request from `source`; a malformed one is dropped (logged), a failed reply is
/// logged (the requester's own deadline reports it).
fn answer(replies: &Communicator, registry: &Registry, req: &[u8], source: usize) {
    let parsed = match req {
        [KIND_GET, rest @ ..] if rest.len() == 12 => {
            let (id, tag) = rest.split_at(8);
            let id = u64::from_le_bytes(id.try_into().unwrap_or([0; 8]));
            let tag = u32::from_le_bytes(tag.try_into().unwrap_or([0; 4]));
            Some((id, tag))
        }
        _ => None,
    };
    let Some((id, tag)) = parsed else {
        tracing::warn!(
            "object store: a malformed request of {} bytes from rank {source}; ignored",
            req.len()
        );
        return;
    };
    let found = lock(registry).get(&id).cloned();
    let sent = match found {
        Some((dtype, bytes)) => replies
            .send(&[STATUS_OK, dtype.code()], source, tag)
            .and_then(|()| replies.send(bytes.as_slice(), source, tag)),
        None => replies.send(&[STATUS_MISSING, 0], source, tag),
    };
    if let Err(e) = sent {
        tracing::warn!("object store: the answer for object {id} to rank {source} failed: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn world(n: usize) -> Vec<Communicator> {
        let mut w = Communicator::in_process(n, crate::Config::default()).expect("a local world");
        for c in &mut w {
            c.set_timeout(Duration::from_secs(5));
        }
        w
    }

    #[test]
    fn get_fetches_from_the_owner_while_it_does_nothing() {
        let w = world(3);
        let stores: Vec<ObjectStore> = w.iter().map(|c| c.object_store().unwrap()).collect();
        let r = stores[1].put(&[1.5f32, 2.5, 3.5]);
        for s in &stores {
            assert_eq!(s.get::<f32>(r).unwrap(), vec![1.5, 2.5, 3.5]);
        }
        assert!(matches!(
            stores[0].get::<f64>(r),
            Err(Error::InvalidArgument { .. })
        ));
    }

    #[test]
    fn get_after_free_is_a_clear_error() {
        let w = world(2);
        let stores: Vec<ObjectStore> = w.iter().map(|c| c.object_store().unwrap()).collect();
        let r = stores[0].put(&[7u8; 100]);
        assert!(stores[1].free(r).is_err(), "only the owner frees");
        stores[0].free(r).unwrap();
        let e = stores[1].get::<u8>(r).unwrap_err().to_string();
        assert!(e.contains("no such object") && e.contains("rank 0"), "{e}");
        assert!(stores[0].is_empty());
    }

    #[test]
    fn get_from_an_owner_that_left_fails_within_the_timeout() {
        let mut w = world(2);
        for c in &mut w {
            c.set_timeout(Duration::from_millis(500));
        }
        let owner = w[0].object_store().unwrap();
        let other = w[1].object_store().unwrap();
        let r = owner.put(&[1i32, 2, 3]);
        drop(owner);
        drop(w.remove(0));
        let t = std::time::Instant::now();
        let e = other.get::<i32>(r).unwrap_err().to_string();
        assert!(
            e.starts_with("get on rank 1") && e.contains("rank 0"),
            "{e}"
        );
        assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    }
}
