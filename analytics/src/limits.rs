//! Resource limits: one memory pool for the process, a cap per query inside it, and a
//! time limit per query. One heavy query fails with a clear error; the others keep
//! running (the cap stops it before it can starve them of the shared pool).

use std::num::NonZeroUsize;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use datafusion::error::{DataFusionError, Result};
use datafusion::execution::memory_pool::{
    FairSpillPool, MemoryConsumer, MemoryLimit, MemoryPool, MemoryReservation, TrackConsumersPool,
};

/// The limits a query runs under.
#[derive(Clone, Debug)]
pub struct Limits {
    /// All queries of the process together (bytes).
    pub memory_bytes: usize,
    /// One query (bytes); at most `memory_bytes`.
    pub query_memory_bytes: usize,
    /// Wall-clock time of one query, planning to last row.
    pub query_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            memory_bytes: 2 << 30,
            query_memory_bytes: 512 << 20,
            query_timeout: Duration::from_secs(300),
        }
    }
}

impl Limits {
    /// Checks the limits make sense together.
    pub fn validate(&self) -> Result<(), String> {
        if self.memory_bytes == 0 || self.query_memory_bytes == 0 {
            return Err("memory limits must be above zero".into());
        }
        if self.query_memory_bytes > self.memory_bytes {
            return Err(format!(
                "the per-query memory limit ({} MiB) is above the total ({} MiB)",
                self.query_memory_bytes >> 20,
                self.memory_bytes >> 20
            ));
        }
        if self.query_timeout.is_zero() {
            return Err("the query timeout must be above zero".into());
        }
        Ok(())
    }

    /// The process-wide pool: fair between spilling operators, and naming the largest
    /// consumers when it is exhausted.
    pub fn shared_pool(&self) -> Arc<dyn MemoryPool> {
        Arc::new(TrackConsumersPool::new(
            FairSpillPool::new(self.memory_bytes),
            NonZeroUsize::new(3).expect("3 is not zero"),
        ))
    }
}

/// One query's view of the shared pool: every reservation goes to the shared pool, and
/// the query's total is capped.
#[derive(Debug)]
pub struct QueryPool {
    shared: Arc<dyn MemoryPool>,
    used: AtomicUsize,
    limit: usize,
}

impl QueryPool {
    pub fn new(shared: Arc<dyn MemoryPool>, limit: usize) -> Self {
        Self {
            shared,
            used: AtomicUsize::new(0),
            limit,
        }
    }
}

impl std::fmt::Display for QueryPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "query pool: {} of {} bytes, within {}",
            self.reserved(),
            self.limit,
            self.shared
        )
    }
}

impl MemoryPool for QueryPool {
    fn name(&self) -> &str {
        "bulkhead-query"
    }

    fn register(&self, consumer: &MemoryConsumer) {
        self.shared.register(consumer)
    }

    fn unregister(&self, consumer: &MemoryConsumer) {
        self.shared.unregister(consumer)
    }

    fn grow(&self, reservation: &MemoryReservation, additional: usize) {
        self.shared.grow(reservation, additional);
        self.used.fetch_add(additional, Ordering::Relaxed);
    }

    fn shrink(&self, reservation: &MemoryReservation, shrink: usize) {
        self.shared.shrink(reservation, shrink);
        self.used.fetch_sub(shrink, Ordering::Relaxed);
    }

    fn try_grow(&self, reservation: &MemoryReservation, additional: usize) -> Result<()> {
        let before = self.used.fetch_add(additional, Ordering::Relaxed);
        if before + additional > self.limit {
            self.used.fetch_sub(additional, Ordering::Relaxed);
            return Err(DataFusionError::ResourcesExhausted(format!(
                "the query needs more than its memory limit of {} MiB ({} wanted {} more bytes \
                 with {} bytes already held by the query); narrow it (filter by date, \
                 aggregate, LIMIT) or raise --query-memory",
                self.limit >> 20,
                reservation.consumer().name(),
                additional,
                before
            )));
        }
        if let Err(e) = self.shared.try_grow(reservation, additional) {
            self.used.fetch_sub(additional, Ordering::Relaxed);
            return Err(e);
        }
        Ok(())
    }

    fn reserved(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    fn memory_limit(&self) -> MemoryLimit {
        MemoryLimit::Finite(self.limit)
    }
}
