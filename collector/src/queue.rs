//! A queue bounded in bytes that drops its *oldest* items when full: the collector's
//! buffer between eviction (which must never block) and Kafka (which may be slow or
//! down). An item larger than the whole queue is still admitted, alone.

use std::collections::VecDeque;
use std::sync::Mutex;

use tokio::sync::Notify;

/// What a push displaced.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Dropped {
    pub items: u64,
    pub bytes: u64,
    /// Sum of the dropped items' weights (e.g. flow records), see [`Weighted`].
    pub weight: u64,
}

/// An item's weight in what it carries (flow records for a batch), reported on drops.
pub trait Weighted {
    fn weight(&self) -> u64;
}

impl Weighted for i32 {
    fn weight(&self) -> u64 {
        1
    }
}

struct Inner<T> {
    items: VecDeque<(T, usize)>,
    bytes: usize,
    closed: bool,
}

pub struct ByteQueue<T> {
    inner: Mutex<Inner<T>>,
    capacity: usize,
    notify: Notify,
}

impl<T: Weighted> ByteQueue<T> {
    pub fn new(capacity_bytes: usize) -> Self {
        Self {
            inner: Mutex::new(Inner {
                items: VecDeque::new(),
                bytes: 0,
                closed: false,
            }),
            capacity: capacity_bytes,
            notify: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner<T>> {
        // A panic while holding this lock cannot leave the deque inconsistent.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds an item of `size` bytes at the back, dropping from the front until it fits.
    pub fn push(&self, item: T, size: usize) -> Dropped {
        let mut dropped = Dropped::default();
        {
            let mut inner = self.lock();
            while !inner.items.is_empty() && inner.bytes + size > self.capacity {
                if let Some((old, old_size)) = inner.items.pop_front() {
                    inner.bytes -= old_size;
                    dropped.items += 1;
                    dropped.bytes += old_size as u64;
                    dropped.weight += old.weight();
                }
            }
            inner.bytes += size;
            inner.items.push_back((item, size));
        }
        self.notify.notify_one();
        dropped
    }

    /// Puts an item that could not be delivered back at the front, unless newer items
    /// have filled the queue meanwhile (then it is the oldest, and it is dropped).
    pub fn push_front(&self, item: T, size: usize) -> Dropped {
        let mut inner = self.lock();
        if !inner.items.is_empty() && inner.bytes + size > self.capacity {
            return Dropped {
                items: 1,
                bytes: size as u64,
                weight: item.weight(),
            };
        }
        inner.bytes += size;
        inner.items.push_front((item, size));
        drop(inner);
        self.notify.notify_one();
        Dropped::default()
    }

    pub fn try_pop(&self) -> Option<(T, usize)> {
        let mut inner = self.lock();
        let (item, size) = inner.items.pop_front()?;
        inner.bytes -= size;
        Some((item, size))
    }

    /// Waits for an item; `None` once the queue is closed and empty.
    pub async fn pop(&self) -> Option<(T, usize)> {
        loop {
            let notified = self.notify.notified();
            {
                let mut inner = self.lock();
                if let Some((item, size)) = inner.items.pop_front() {
                    inner.bytes -= size;
                    return Some((item, size));
                }
                if inner.closed {
                    return None;
                }
            }
            notified.await;
        }
    }

    /// No more pushes: `pop` returns `None` once drained.
    pub fn close(&self) {
        self.lock().closed = true;
        self.notify.notify_waiters();
        self.notify.notify_one();
    }

    /// (items, bytes) queued now.
    pub fn usage(&self) -> (usize, usize) {
        let inner = self.lock();
        (inner.items.len(), inner.bytes)
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oldest_items_go_first_and_oversize_items_are_admitted_alone() {
        let q = ByteQueue::new(10);
        assert_eq!(q.push(1, 4), Dropped::default());
        assert_eq!(q.push(2, 4), Dropped::default());
        assert_eq!(
            q.push(3, 4),
            Dropped {
                items: 1,
                bytes: 4,
                weight: 1
            }
        );
        assert_eq!(q.usage(), (2, 8));
        assert_eq!(q.try_pop().map(|x| x.0), Some(2));
        assert_eq!(
            q.push(4, 100),
            Dropped {
                items: 1,
                bytes: 4,
                weight: 1
            }
        );
        assert_eq!(q.usage(), (1, 100));
        assert_eq!(
            q.push(5, 1),
            Dropped {
                items: 1,
                bytes: 100,
                weight: 1
            }
        );
        assert_eq!(q.push_front(6, 9), Dropped::default());
        assert_eq!(
            q.push_front(7, 5),
            Dropped {
                items: 1,
                bytes: 5,
                weight: 1
            }
        );
        assert_eq!(q.try_pop().map(|x| x.0), Some(6));
    }

    #[tokio::test]
    async fn pop_waits_and_ends_after_close() {
        let q = std::sync::Arc::new(ByteQueue::new(10));
        let q2 = q.clone();
        let waiter = tokio::spawn(async move { q2.pop().await.map(|x| x.0) });
        tokio::task::yield_now().await;
        q.push(9, 1);
        assert_eq!(waiter.await.unwrap(), Some(9));
        q.close();
        assert_eq!(q.pop().await.map(|x| x.0), None::<i32>);
    }
}
