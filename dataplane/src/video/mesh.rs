//! Video between shards, by message only. A viewer may land on any shard
//! (every shard accepts RTSP on the same port, `SO_REUSEPORT`); the site's
//! tunnel lives on one. The viewer's shard keeps a *mirror* feed and
//! subscribes to the *origin* feed on the owning shard; the origin sends
//! each access unit's shared buffer ([`Shared`], an `Arc`) over a bounded
//! single-producer channel. No payload byte is copied between cores.
//!
//! On the origin, each subscribing shard is one more consumer of the feed
//! with the same bounded queue as a viewer: a shard that falls behind
//! loses whole access units and resumes at a keyframe; the origin never
//! waits for it.

use super::feed::{Feed, Shared, Viewer};
use crate::signal::Signal;
use glommio::channels::shared_channel::{self, ConnectedSender, SharedReceiver, SharedSender};
use std::cell::RefCell;
use std::collections::{HashMap, HashSet, VecDeque};
use std::rc::Rc;
use std::time::Instant;

/// Messages between two shards' redirectors.
#[derive(Debug)]
pub enum Msg {
    /// Viewer shard to origin: start sending this camera as `sub`.
    Subscribe {
        /// Id chosen by the viewer shard.
        sub: u64,
        /// Site.
        site: String,
        /// Camera.
        cam: String,
    },
    /// Viewer shard to origin: stop.
    Unsubscribe {
        /// The subscription.
        sub: u64,
    },
    /// Origin to viewer shard: the camera's SDP (the subscription is live).
    Sdp {
        /// The subscription.
        sub: u64,
        /// SDP text.
        sdp: String,
    },
    /// Origin to viewer shard: one access unit.
    Unit {
        /// The subscription.
        sub: u64,
        /// The shared buffer.
        frame: Shared,
    },
    /// Origin to viewer shard: the feed ended or was refused.
    Closed {
        /// The subscription.
        sub: u64,
        /// RTSP status for viewers still setting up.
        status: u16,
        /// Why.
        reason: String,
    },
}

/// Messages in flight per direction between two shards.
pub const CHANNEL_CAPACITY: usize = 512;

/// One shard's ends of the full mesh: a sender to and a receiver from
/// every other shard.
pub struct MeshEnd {
    /// Index = peer shard; `None` for this shard.
    pub senders: Vec<Option<SharedSender<Msg>>>,
    /// Index = peer shard; `None` for this shard.
    pub receivers: Vec<Option<SharedReceiver<Msg>>>,
}

impl std::fmt::Debug for MeshEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeshEnd")
            .field("peers", &self.senders.iter().flatten().count())
            .finish()
    }
}

/// Builds the channels of a full mesh over `n` shards.
pub fn mesh(n: usize) -> Vec<MeshEnd> {
    let mut ends: Vec<MeshEnd> = (0..n)
        .map(|_| MeshEnd {
            senders: (0..n).map(|_| None).collect(),
            receivers: (0..n).map(|_| None).collect(),
        })
        .collect();
    for from in 0..n {
        for to in 0..n {
            if from != to {
                let (tx, rx) = shared_channel::new_bounded(CHANNEL_CAPACITY);
                ends[from].senders[to] = Some(tx);
                ends[to].receivers[from] = Some(rx);
            }
        }
    }
    ends
}

/// A peer's subscription on the origin: its consumer and the feed.
type Subscription = (Rc<Viewer>, Rc<Feed>);

/// This shard's side of the link to one peer shard. One task owns the
/// channel sender (glommio's sender must not be awaited by two tasks).
#[derive(Default)]
pub struct Link {
    /// Control messages, sent before any frame.
    outbox: RefCell<VecDeque<Msg>>,
    /// Origin side: the peer's subscriptions to feeds of this shard.
    subs: RefCell<HashMap<u64, Subscription>>,
    /// Origin side: unsubscribed before the subscription was live.
    cancelled: RefCell<HashSet<u64>>,
    /// Wakes the link task.
    pub sig: Rc<Signal>,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link")
            .field("outbox", &self.outbox.borrow().len())
            .field("subs", &self.subs.borrow().len())
            .finish_non_exhaustive()
    }
}

impl Link {
    /// Queues a control message.
    pub fn post(&self, m: Msg) {
        self.outbox.borrow_mut().push_back(m);
        self.sig.notify();
    }

    /// Origin side: a subscription became live.
    pub fn add(&self, sub: u64, viewer: Rc<Viewer>, feed: Rc<Feed>, sdp: String) {
        if self.cancelled.borrow_mut().remove(&sub) {
            viewer.gone.set(true);
            return;
        }
        self.post(Msg::Sdp { sub, sdp });
        self.subs.borrow_mut().insert(sub, (viewer, feed));
    }

    /// Origin side: the peer refused or could not get the feed.
    pub fn refuse(&self, sub: u64, status: u16, reason: String) {
        if !self.cancelled.borrow_mut().remove(&sub) {
            self.post(Msg::Closed {
                sub,
                status,
                reason,
            });
        }
    }

    /// Origin side: the peer does not want `sub` any more.
    pub fn remove(&self, sub: u64) {
        match self.subs.borrow_mut().remove(&sub) {
            Some((v, _)) => v.gone.set(true),
            None => {
                let mut c = self.cancelled.borrow_mut();
                // Ids of subscriptions that were refused and then cancelled
                // would pile up; they are never reused, so forgetting is safe.
                if c.len() >= 4096 {
                    c.clear();
                }
                c.insert(sub);
            }
        }
    }

    /// Sends control messages and queued frames to the peer until the
    /// peer goes away.
    pub async fn run(self: Rc<Self>, tx: ConnectedSender<Msg>) {
        loop {
            let wake = self.sig.wait();
            let mut progress = false;
            loop {
                let next = self.outbox.borrow_mut().pop_front();
                let Some(m) = next else { break };
                if tx.send(m).await.is_err() {
                    return;
                }
                progress = true;
            }
            let subs: Vec<(u64, Rc<Viewer>, Rc<Feed>)> = self
                .subs
                .borrow()
                .iter()
                .map(|(s, (v, f))| (*s, v.clone(), f.clone()))
                .collect();
            for (sub, v, feed) in subs {
                if v.gone.get() {
                    if self.subs.borrow_mut().remove(&sub).is_some() {
                        if let Some((status, reason)) = feed.closed.borrow().clone() {
                            self.post(Msg::Closed {
                                sub,
                                status,
                                reason,
                            });
                        }
                    }
                    progress = true;
                    continue;
                }
                // A bounded batch per subscription, so one busy feed does
                // not starve the others or the control messages.
                for _ in 0..64 {
                    let next = v.queue.borrow_mut().pop(Instant::now());
                    let Some(frame) = next else { break };
                    if tx.send(Msg::Unit { sub, frame }).await.is_err() {
                        return;
                    }
                    v.queue.borrow_mut().progressed(Instant::now());
                    progress = true;
                }
            }
            if !progress {
                wake.await;
            }
        }
    }
}
