//! Fan-out policy for video viewers, sans-IO: a keyframe cache for joiners
//! and a bounded per-viewer queue that drops whole access units and resumes
//! at the next keyframe. Generic over the frame handle `T` (in the data
//! plane a reference-counted buffer, so queueing a frame for a viewer
//! copies no payload).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// What the policy needs to know about one access unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meta {
    /// Starts a decodable picture on its own.
    pub keyframe: bool,
    /// Payload bytes (the queue bounds are in bytes).
    pub bytes: usize,
    /// When it arrived at the host.
    pub at: Instant,
}

/// Frames since the last keyframe, so a new viewer starts with a picture.
#[derive(Debug)]
pub struct KeyframeCache<T> {
    frames: VecDeque<(Meta, T)>,
    bytes: usize,
    /// Most bytes kept.
    pub max_bytes: usize,
    /// Most frames kept.
    pub max_frames: usize,
}

impl<T: Clone> KeyframeCache<T> {
    /// A cache bounded by `max_bytes` and `max_frames`.
    pub fn new(max_bytes: usize, max_frames: usize) -> Self {
        KeyframeCache {
            frames: VecDeque::new(),
            bytes: 0,
            max_bytes,
            max_frames,
        }
    }

    /// Records a frame: a keyframe restarts the cache; a frame that would
    /// exceed a bound empties it (no partial group is ever served).
    pub fn push(&mut self, meta: Meta, frame: &T) {
        if meta.keyframe {
            self.frames.clear();
            self.bytes = 0;
        } else if self.frames.is_empty() {
            return;
        }
        if self.bytes + meta.bytes > self.max_bytes || self.frames.len() + 1 > self.max_frames {
            self.frames.clear();
            self.bytes = 0;
            return;
        }
        self.bytes += meta.bytes;
        self.frames.push_back((meta, frame.clone()));
    }

    /// The cached frames, oldest (the keyframe) first.
    pub fn frames(&self) -> impl Iterator<Item = &(Meta, T)> {
        self.frames.iter()
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

/// Outcome of offering a frame to a viewer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offer {
    /// Queued.
    Queued,
    /// Dropped: the viewer waits for a keyframe.
    Skipped,
    /// The queue overflowed: everything queued was dropped, the viewer now
    /// waits for the next keyframe (this frame too, unless it is one).
    Overflow,
}

/// Counters of one viewer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ViewerStats {
    /// Frames handed to the viewer's socket.
    pub sent: u64,
    /// Frames dropped for this viewer.
    pub dropped: u64,
    /// Times it had to resume at a keyframe.
    pub resyncs: u64,
}

impl std::ops::AddAssign for ViewerStats {
    fn add_assign(&mut self, o: ViewerStats) {
        self.sent += o.sent;
        self.dropped += o.dropped;
        self.resyncs += o.resyncs;
    }
}

/// One viewer's queue. The producer never waits on it.
#[derive(Debug)]
pub struct ViewerQueue<T> {
    queue: VecDeque<(Meta, T)>,
    bytes: usize,
    /// Most bytes queued.
    pub max_bytes: usize,
    /// Oldest queued frame may be this old.
    pub max_age: Duration,
    waiting_for_key: bool,
    last_progress: Instant,
    /// Counters.
    pub stats: ViewerStats,
}

impl<T> ViewerQueue<T> {
    /// A queue that starts waiting for a keyframe.
    pub fn new(max_bytes: usize, max_age: Duration, now: Instant) -> Self {
        ViewerQueue {
            queue: VecDeque::new(),
            bytes: 0,
            max_bytes,
            max_age,
            waiting_for_key: true,
            last_progress: now,
            stats: ViewerStats::default(),
        }
    }

    /// Offers a frame (never blocks, never grows past the bounds).
    pub fn offer(&mut self, meta: Meta, frame: T) -> Offer {
        if self.waiting_for_key && !meta.keyframe {
            self.stats.dropped += 1;
            return Offer::Skipped;
        }
        let too_old = self
            .queue
            .front()
            .is_some_and(|(m, _)| meta.at.saturating_duration_since(m.at) > self.max_age);
        if self.bytes + meta.bytes > self.max_bytes || too_old {
            self.stats.dropped += self.queue.len() as u64;
            self.stats.resyncs += 1;
            self.queue.clear();
            self.bytes = 0;
            self.waiting_for_key = true;
            if !meta.keyframe || meta.bytes > self.max_bytes {
                self.stats.dropped += 1;
                return Offer::Overflow;
            }
        }
        self.waiting_for_key = false;
        self.bytes += meta.bytes;
        self.queue.push_back((meta, frame));
        Offer::Queued
    }

    /// The next frame to write, without taking it.
    pub fn front(&self) -> Option<&T> {
        self.queue.front().map(|(_, f)| f)
    }

    /// The next frame to write, if any.
    pub fn pop(&mut self, now: Instant) -> Option<T> {
        let (m, f) = self.queue.pop_front()?;
        self.bytes -= m.bytes;
        self.stats.sent += 1;
        self.last_progress = now;
        Some(f)
    }

    /// Marks progress without a pop (the socket accepted bytes).
    pub fn progressed(&mut self, now: Instant) {
        self.last_progress = now;
    }

    /// Bytes queued.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Frames queued.
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// True when nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// True when frames wait but none has gone out for `limit`: the viewer
    /// is stuck and should be disconnected.
    pub fn stuck(&self, now: Instant, limit: Duration) -> bool {
        !self.queue.is_empty() && now.saturating_duration_since(self.last_progress) > limit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(key: bool, bytes: usize, at: Instant) -> Meta {
        Meta {
            keyframe: key,
            bytes,
            at,
        }
    }

    #[test]
    fn cache_holds_the_group_since_the_last_keyframe() {
        let t = Instant::now();
        let mut c = KeyframeCache::new(1000, 10);
        c.push(m(false, 10, t), &0); // before any keyframe: not cached
        assert_eq!(c.frames().count(), 0);
        c.push(m(true, 100, t), &1);
        c.push(m(false, 10, t), &2);
        c.push(m(false, 10, t), &3);
        assert_eq!(
            c.frames().map(|(_, f)| *f).collect::<Vec<_>>(),
            vec![1, 2, 3]
        );
        c.push(m(true, 100, t), &4);
        assert_eq!(c.frames().map(|(_, f)| *f).collect::<Vec<_>>(), vec![4]);
        // Over the byte bound: emptied, never a partial group.
        c.push(m(false, 950, t), &5);
        assert_eq!(c.frames().count(), 0);
        assert_eq!(c.bytes(), 0);
    }

    #[test]
    fn viewer_starts_at_a_keyframe_and_drops_whole_units_on_overflow() {
        let t = Instant::now();
        let mut q = ViewerQueue::new(300, Duration::from_secs(1), t);
        assert_eq!(q.offer(m(false, 10, t), 0), Offer::Skipped);
        assert_eq!(q.offer(m(true, 100, t), 1), Offer::Queued);
        assert_eq!(q.offer(m(false, 100, t), 2), Offer::Queued);
        assert_eq!(q.offer(m(false, 100, t), 3), Offer::Queued);
        // 300 bytes queued: the next frame overflows; all is dropped.
        assert_eq!(q.offer(m(false, 50, t), 4), Offer::Overflow);
        assert!(q.is_empty());
        assert_eq!(q.offer(m(false, 50, t), 5), Offer::Skipped);
        assert_eq!(q.offer(m(true, 100, t), 6), Offer::Queued);
        assert_eq!(q.pop(t), Some(6));
        assert_eq!(
            q.stats,
            ViewerStats {
                sent: 1,
                dropped: 6,
                resyncs: 1
            }
        );
    }

    #[test]
    fn age_bound_and_stuck_detection() {
        let t = Instant::now();
        let mut q = ViewerQueue::new(1 << 20, Duration::from_millis(500), t);
        q.offer(m(true, 10, t), 1);
        q.offer(m(false, 10, t + Duration::from_millis(100)), 2);
        assert!(
            !q.stuck(t + Duration::from_millis(400), Duration::from_millis(300)) || q.len() == 2
        );
        // A keyframe 600 ms after the oldest queued frame: resync onto it.
        assert_eq!(
            q.offer(m(true, 10, t + Duration::from_millis(600)), 3),
            Offer::Queued
        );
        assert_eq!(q.len(), 1);
        assert!(q.stuck(t + Duration::from_secs(5), Duration::from_secs(2)));
        q.pop(t + Duration::from_secs(5));
        assert!(
            !q.stuck(t + Duration::from_secs(9), Duration::from_secs(2)),
            "empty queue is not stuck"
        );
    }
}
