//! The work queue between the planner and the workers: bounded, keyed by target, coalescing.
//!
//! Invariants:
//! - at most one job per target is in flight; a job for a target that is in flight waits beside
//!   it and starts when the first one finishes;
//! - a newer job for a target replaces the one queued (or waiting) for it, so ten writes to one
//!   file cost one upload;
//! - `push` waits while the queue is full (back-pressure on the planner); replacing a queued job
//!   never waits.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Mutex;

use tokio::sync::Notify;

/// Anything the queue can hold: it only needs the target's key.
pub trait Keyed {
    fn key(&self) -> &str;
}

struct Inner<J> {
    order: VecDeque<String>,
    queued: HashMap<String, J>,
    in_flight: HashSet<String>,
    waiting: HashMap<String, J>,
    closed: bool,
}

pub struct Queue<J> {
    inner: Mutex<Inner<J>>,
    changed: Notify,
    capacity: usize,
}

impl<J: Keyed> Queue<J> {
    pub fn new(capacity: usize) -> Queue<J> {
        Queue {
            inner: Mutex::new(Inner {
                order: VecDeque::new(),
                queued: HashMap::new(),
                in_flight: HashSet::new(),
                waiting: HashMap::new(),
                closed: false,
            }),
            changed: Notify::new(),
            capacity: capacity.max(1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner<J>> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Adds a job, replacing a queued or waiting job for the same target. Returns `true` when it
    /// replaced one. Waits while the queue is full.
    pub async fn push(&self, job: J) -> bool {
        let mut job = Some(job);
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut inner = self.lock();
                let key = job.as_ref().map(|j| j.key().to_owned()).unwrap_or_default();
                if inner.in_flight.contains(&key) {
                    let replaced = inner
                        .waiting
                        .insert(key, job.take().expect("job"))
                        .is_some();
                    drop(inner);
                    self.changed.notify_waiters();
                    return replaced;
                }
                if let Some(slot) = inner.queued.get_mut(&key) {
                    *slot = job.take().expect("job");
                    return true;
                }
                if inner.queued.len() + inner.waiting.len() < self.capacity {
                    inner.order.push_back(key.clone());
                    inner.queued.insert(key, job.take().expect("job"));
                    drop(inner);
                    self.changed.notify_waiters();
                    return false;
                }
            }
            notified.await;
        }
    }

    /// Takes the next job and marks its target in flight; `None` once closed and empty.
    pub async fn pop(&self) -> Option<J> {
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut inner = self.lock();
                while let Some(key) = inner.order.pop_front() {
                    if let Some(job) = inner.queued.remove(&key) {
                        inner.in_flight.insert(key);
                        drop(inner);
                        self.changed.notify_waiters();
                        return Some(job);
                    }
                }
                if inner.closed && inner.waiting.is_empty() {
                    return None;
                }
            }
            notified.await;
        }
    }

    /// The job for `key` is done; a job that waited for it becomes ready.
    pub fn finish(&self, key: &str) {
        let mut inner = self.lock();
        inner.in_flight.remove(key);
        if let Some(next) = inner.waiting.remove(key) {
            inner.order.push_front(key.to_owned());
            inner.queued.insert(key.to_owned(), next);
        }
        drop(inner);
        self.changed.notify_waiters();
    }

    /// No more pushes: `pop` returns `None` once the queue is empty.
    pub fn close(&self) {
        self.lock().closed = true;
        self.changed.notify_waiters();
    }

    /// Drops every job not yet started (on shutdown: they are redone next time).
    pub fn clear(&self) -> usize {
        let mut inner = self.lock();
        let n = inner.queued.len() + inner.waiting.len();
        inner.queued.clear();
        inner.waiting.clear();
        inner.order.clear();
        drop(inner);
        self.changed.notify_waiters();
        n
    }

    /// Jobs queued or waiting (not in flight).
    pub fn len(&self) -> usize {
        let inner = self.lock();
        inner.queued.len() + inner.waiting.len()
    }

    pub fn in_flight(&self) -> usize {
        self.lock().in_flight.len()
    }

    /// Waits until nothing is queued, waiting or in flight.
    pub async fn idle(&self) {
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let inner = self.lock();
                if inner.queued.is_empty() && inner.waiting.is_empty() && inner.in_flight.is_empty()
                {
                    return;
                }
            }
            notified.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[derive(Debug, PartialEq)]
    struct J(&'static str, u32);
    impl Keyed for J {
        fn key(&self) -> &str {
            self.0
        }
    }

    #[tokio::test]
    async fn newer_job_replaces_queued_one() {
        let q = Queue::new(10);
        assert!(!q.push(J("a", 1)).await);
        assert!(q.push(J("a", 2)).await);
        assert!(!q.push(J("b", 1)).await);
        assert_eq!(q.pop().await, Some(J("a", 2)));
        assert_eq!(q.pop().await, Some(J("b", 1)));
    }

    #[tokio::test]
    async fn one_in_flight_per_target() {
        let q = Queue::new(10);
        q.push(J("a", 1)).await;
        let first = q.pop().await.unwrap();
        q.push(J("a", 2)).await;
        q.push(J("a", 3)).await;
        q.push(J("b", 1)).await;
        // "a" is in flight, so the next job handed out is "b", not a second "a".
        assert_eq!(q.pop().await, Some(J("b", 1)));
        q.finish(first.0);
        assert_eq!(q.pop().await, Some(J("a", 3)));
        q.finish("a");
        q.finish("b");
        q.close();
        assert_eq!(q.pop().await, None);
        q.idle().await;
    }

    #[tokio::test]
    async fn push_waits_when_full() {
        let q = Arc::new(Queue::new(1));
        q.push(J("a", 1)).await;
        let q2 = q.clone();
        let pusher = tokio::spawn(async move { q2.push(J("b", 1)).await });
        tokio::task::yield_now().await;
        assert!(!pusher.is_finished());
        assert_eq!(q.pop().await, Some(J("a", 1)));
        pusher.await.unwrap();
        assert_eq!(q.len(), 1);
    }
}
