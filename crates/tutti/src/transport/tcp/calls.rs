//! The [`Transport`] calls of [`TcpTransport`]: each one takes the engine, posts or queues its
//! request, and waits through [`Shared::run_until`](super::engine::Shared::run_until), which
//! drives the links (see the [module doc](super)).

use super::engine::{Driver, Engine, QueuedSend, Source as SendSource};
use super::TcpTransport;
use crate::deadline::Deadline;
use crate::transport::matcher::{into_message, Post, Sink};
use crate::transport::{
    recv_timeout, Completion, Envelope, MsgKey, RecvInto, RequestId, Source, Transport,
    TransportError, SEND_REQUEST,
};
use std::time::Duration;

impl Transport for TcpTransport {
    fn rank(&self) -> usize {
        self.rank
    }

    fn size(&self) -> usize {
        self.size
    }

    fn window(&self) -> usize {
        self.window
    }

    fn send(
        &self,
        peer: usize,
        key: MsgKey,
        fingerprint: u128,
        payload: &[u8],
        deadline: Deadline,
    ) -> Result<(), TransportError> {
        let mut e = self.open(Some(peer))?;
        let src = SendSource::Borrowed {
            ptr: payload.as_ptr(),
            len: payload.len(),
        };
        let Some(id) = self.queue_send(&mut e, peer, key, fingerprint, src)? else {
            return Ok(());
        };
        self.finish_send(e, id, peer, deadline).1.map(drop)
    }

    fn recv(
        &self,
        from: Source,
        key: MsgKey,
        expect: u128,
        into: RecvInto<'_>,
        deadline: Deadline,
    ) -> Result<Envelope, TransportError> {
        let peer = match from {
            Source::Rank(p) => Some(p),
            Source::Any => None,
        };
        let mut e = self.open(peer)?;
        // SAFETY (the matcher's invariant): this call returns only after the receive finished
        // or was cancelled, under the engine's mutex.
        match e.matcher.post(from, key, expect, Sink::borrowed(into))? {
            Post::Done(out) => out.map(|(env, _)| env),
            Post::Pending(id) => self
                .finish_recv(e, id, from, deadline)
                .1
                .map(|(env, _)| env),
        }
    }

    fn send_recv(
        &self,
        to: usize,
        key: MsgKey,
        fingerprint: u128,
        payload: &[u8],
        from: usize,
        into: RecvInto<'_>,
        deadline: Deadline,
    ) -> Result<Envelope, TransportError> {
        let mut e = self.open(Some(to.max(from)))?;
        // SAFETY: as in `recv`; the receive is posted first, so it never waits on our send.
        let posted = e
            .matcher
            .post(Source::Rank(from), key, fingerprint, Sink::borrowed(into))?;
        let src = SendSource::Borrowed {
            ptr: payload.as_ptr(),
            len: payload.len(),
        };
        let sent = match self.queue_send(&mut e, to, key, fingerprint, src) {
            Ok(id) => id,
            Err(err) => {
                if let Post::Pending(id) = posted {
                    e.matcher.cancel(id);
                }
                return Err(err);
            }
        };
        if let Some(id) = sent {
            let (back, r) = self.finish_send(e, id, to, deadline);
            e = back;
            if let Err(err) = r {
                if let Post::Pending(id) = posted {
                    e.matcher.cancel(id);
                }
                return Err(err);
            }
        }
        match posted {
            Post::Done(out) => out.map(|(env, _)| env),
            Post::Pending(id) => self
                .finish_recv(e, id, Source::Rank(from), deadline)
                .1
                .map(|(env, _)| env),
        }
    }

    fn isend(
        &self,
        peer: usize,
        key: MsgKey,
        fingerprint: u128,
        payload: Vec<u8>,
    ) -> Result<RequestId, TransportError> {
        let mut e = self.open(Some(peer))?;
        match self.queue_send(&mut e, peer, key, fingerprint, SendSource::Owned(payload))? {
            Some(id) => Ok(RequestId(SEND_REQUEST | id)),
            None => {
                // Delivered to ourselves: file it as a finished send.
                let id = e.next_send;
                e.next_send += 1;
                e.sends.0.insert(id, QueuedSend::finished(peer));
                Ok(RequestId(SEND_REQUEST | id))
            }
        }
    }

    fn irecv(&self, from: Source, key: MsgKey) -> Result<RequestId, TransportError> {
        let peer = match from {
            Source::Rank(p) => Some(p),
            Source::Any => None,
        };
        let mut e = self.open(peer)?;
        let id = match e.matcher.post(from, key, 0, Sink::Owned(Vec::new()))? {
            Post::Pending(id) => id,
            Post::Done(out) => e.matcher.file_done(out),
        };
        e.irecv_keys.insert(id, (key, from));
        Ok(RequestId(id))
    }

    fn wait(&self, req: RequestId, deadline: Deadline) -> Result<Completion, TransportError> {
        let e = self.shared.lock();
        if req.0 & SEND_REQUEST != 0 {
            let id = req.0 & !SEND_REQUEST;
            let peer = e.sends.0.get(&id).map_or(0, |s| s.peer);
            let (mut e, _) = self.shared.run_until(e, deadline, |e| {
                e.sends.0.get(&id).is_none_or(|s| s.done.is_some())
            });
            return match e.sends.0.get(&id).map(|s| s.done.is_some()) {
                Some(true) => {
                    let s = e.sends.0.remove(&id).expect("checked");
                    s.done.expect("checked").map(|()| match s.src {
                        SendSource::Owned(v) => Completion::Sent(v),
                        SendSource::Borrowed { .. } => Completion::Sent(Vec::new()),
                    })
                }
                Some(false) => Err(TransportError::Timeout {
                    peer,
                    what: "send to",
                    waited: deadline.elapsed(),
                }),
                None => Err(TransportError::NoSuchRequest(req.0)),
            };
        }
        let Some(&(key, from)) = e.irecv_keys.get(&req.0) else {
            return Err(TransportError::NoSuchRequest(req.0));
        };
        let (mut e, _) = self.shared.run_until(e, deadline, |e| {
            e.matcher.has_done(req.0) || !e.matcher.is_pending(req.0)
        });
        match e.matcher.take_done(req.0) {
            Some(out) => {
                e.irecv_keys.remove(&req.0);
                let (env, data) = out?;
                Ok(Completion::Received(into_message(key, env, data)))
            }
            None if e.matcher.is_pending(req.0) => Err(recv_timeout(from, deadline)),
            None => Err(TransportError::NoSuchRequest(req.0)),
        }
    }

    fn test(&self, req: RequestId) -> Result<Option<Completion>, TransportError> {
        let ready = {
            let mut e = self.shared.lock();
            if e.driver == Driver::Nobody {
                e.progress();
            }
            if req.0 & SEND_REQUEST != 0 {
                let id = req.0 & !SEND_REQUEST;
                e.sends.0.get(&id).is_none_or(|s| s.done.is_some())
            } else {
                e.matcher.has_done(req.0) || !e.matcher.is_pending(req.0)
            }
        };
        if ready {
            self.wait(req, Deadline::after(Duration::ZERO)).map(Some)
        } else {
            Ok(None)
        }
    }

    fn cancel(&self, req: RequestId) {
        let mut e = self.shared.lock();
        if req.0 & SEND_REQUEST != 0 {
            // An owned send nobody waits for still completes, in the background.
            let id = req.0 & !SEND_REQUEST;
            match e.sends.0.get_mut(&id) {
                Some(s) if s.done.is_none() => s.detached = true,
                _ => {
                    e.sends.0.remove(&id);
                }
            }
        } else {
            e.matcher.cancel(req.0);
            e.irecv_keys.remove(&req.0);
        }
    }

    fn probe(
        &self,
        from: Source,
        key: MsgKey,
        deadline: Option<Deadline>,
    ) -> Result<Option<Envelope>, TransportError> {
        let peer = match from {
            Source::Rank(p) => Some(p),
            Source::Any => None,
        };
        let mut e = self.open(peer)?;
        if e.driver == Driver::Nobody {
            e.progress();
        }
        let look = |e: &mut Engine| {
            e.matcher.peek(from, key).is_some() || e.matcher.unreachable(from).is_some()
        };
        if let Some(d) = deadline {
            e = self.shared.run_until(e, d, look).0;
        }
        if let Some(env) = e.matcher.peek(from, key) {
            return Ok(Some(env));
        }
        if let Some(err) = e.matcher.unreachable(from) {
            return Err(err);
        }
        match deadline {
            Some(d) => Err(recv_timeout(from, d)),
            None => Ok(None),
        }
    }

    fn shm_peers(&self) -> Vec<usize> {
        let e = self.shared.lock();
        e.links
            .iter()
            .flatten()
            .filter(|l| l.shm.is_some())
            .map(|l| l.peer)
            .collect()
    }

    fn shutdown(&self, reason: &str) {
        self.close(reason, false);
    }

    fn abort(&self, reason: &str) {
        self.close(reason, true);
    }
}
