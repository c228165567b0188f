//! The single audit writer: records are batched off the request path and
//! appended to the chain in order, one transaction per batch.
//!
//! `batched`: a request hands its record over (waiting only while the
//! bounded queue is full: backpressure, never a silent drop) and goes on; the
//! record is committed within the batch window. A crash loses at most the
//! records of that window. `sync`: the request waits for its record's
//! commit; if the store fails, the request fails (`internal`) and the error
//! is logged. In batched mode a failing store is retried every 100 ms, the
//! queue fills, and requests then wait.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};
use warden_store::Store;

use crate::{AuditKey, Chain, Checkpoint};

/// Most records per transaction. A batch's insert runs on one thread and,
/// on a server with one core, holds it from the requests for its whole
/// length: 256 records are about 1 ms of SQLite, where 4,096 were up to
/// 20 ms (the p99 latency and the memory a batch holds both grew with it;
/// docs/benchmarks.md, "Audit trail"). Past a few hundred records a
/// transaction's own cost is already spread thin.
const MAX_BATCH: usize = 256;

/// How the writer runs.
#[derive(Debug, Clone)]
pub struct WriterSettings {
    /// This replica's chain.
    pub replica: String,
    /// `sync`: each record is committed before its request is answered.
    pub sync: bool,
    /// `batched`: the longest a record waits for its batch's commit.
    pub window: Duration,
    /// Records that may wait; past it, callers wait (backpressure).
    pub queue: usize,
    /// How often a signed checkpoint is written to the log (when the chain
    /// moved), and the retention policy applied.
    pub checkpoint_every: Duration,
    /// What is kept of the chain.
    pub retention: Retention,
}

/// What is kept of a chain (docs/audit.md, "Retention"): older records are
/// removed behind a signed anchor. The chain's last record is always kept.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Retention {
    /// Records older than this are removed.
    pub max_age: Option<Duration>,
    /// At most this many records are kept.
    pub max_records: Option<u64>,
}

/// Rows removed per transaction, so that pruning a large backlog never
/// holds the store for long.
const PRUNE_CHUNK: i64 = 20_000;

/// Why the retention policy removed nothing.
#[derive(Debug, thiserror::Error)]
pub enum PruneError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] warden_store::StoreError),
    /// The rows to be removed do not verify: nothing is removed, so that
    /// pruning can never be used to destroy evidence of tampering.
    #[error("the audit chain does not verify at sequence {}: {:?}; nothing was removed", .0.seq, .0.problem)]
    Tampered(crate::Finding),
}

/// Applies `retention` to `replica`'s chain now: removes the records it
/// does not keep, oldest first, each chunk behind a signed anchor. Every
/// row removed is verified first (MAC and link, from the previous anchor or
/// the chain's start, through the first row kept), so rows edited to look
/// old, or a gap, stop the pruning instead of being signed over. Returns
/// the records removed.
pub fn prune(
    store: &dyn Store,
    key: &AuditKey,
    replica: &str,
    retention: Retention,
    now_us: i64,
) -> Result<u64, PruneError> {
    if retention == Retention::default() {
        return Ok(0);
    }
    let Some(head) = store.audit_head(replica)? else {
        return Ok(0);
    };
    let Some(mut first) = store.audit_rows(replica, 0, 1)?.first().map(|r| r.seq) else {
        return Ok(0);
    };
    let mut through = first - 1;
    if let Some(max) = retention.max_records {
        through = through.max(head.seq - i64::try_from(max).unwrap_or(i64::MAX));
    }
    if let Some(age) = retention.max_age {
        let cutoff = now_us.saturating_sub(i64::try_from(age.as_micros()).unwrap_or(i64::MAX));
        through = through.max(last_before(store, replica, first, head.seq, cutoff)?);
    }
    // The head is always kept: the writer continues the chain from it.
    let through = through.min(head.seq - 1);
    if first > through {
        return Ok(0);
    }
    // Where the stored chain starts: after a valid anchor, or at 1.
    let tampered = |seq, problem| PruneError::Tampered(crate::Finding { seq, problem });
    let mut prev = match store.audit_anchor(replica)? {
        Some(a) if a.seq == first - 1 && crate::anchor_is_valid(key, &a) => a.head,
        Some(a) => return Err(tampered(a.seq, crate::Problem::BadAnchor)),
        None if first == 1 => crate::GENESIS.to_vec(),
        None => return Err(tampered(1, crate::Problem::Missing)),
    };
    let mut removed = 0;
    while first <= through {
        let upto = through.min(first + PRUNE_CHUNK - 1);
        // The chunk and the first row after it (which must link to it).
        let wanted = usize::try_from(upto - first + 2).unwrap_or(usize::MAX);
        let rows = store.audit_rows(replica, first, wanted)?;
        if rows.len() < wanted {
            return Err(tampered(first + rows.len() as i64, crate::Problem::Missing));
        }
        crate::verify_rows(key, replica, rows.iter().cloned(), first, Some(prev), None)
            .map_err(PruneError::Tampered)?;
        let last = &rows[wanted - 2];
        removed += store.prune_audit(&crate::anchor_at(key, last))?;
        prev = last.mac.clone();
        first = upto + 1;
    }
    Ok(removed)
}

/// The last sequence number in `[first, last]` whose record is older than
/// `cutoff_us` (`first - 1` if none), by binary search: records are
/// appended in time order (to within a batch window).
fn last_before(
    store: &dyn Store,
    replica: &str,
    first: i64,
    last: i64,
    cutoff_us: i64,
) -> Result<i64, warden_store::StoreError> {
    let time_of = |seq: i64| -> Result<Option<i64>, warden_store::StoreError> {
        Ok(store
            .audit_rows(replica, seq, 1)?
            .first()
            .and_then(|r| serde_json::from_str::<serde_json::Value>(&r.record).ok())
            .and_then(|v| v.get("time_us").and_then(serde_json::Value::as_i64)))
    };
    let (mut lo, mut hi) = (first, last);
    let mut found = first - 1;
    while lo <= hi {
        let mid = lo + (hi - lo) / 2;
        match time_of(mid)? {
            Some(t) if t < cutoff_us => {
                found = mid;
                lo = mid + 1;
            }
            _ => hi = mid - 1,
        }
    }
    Ok(found)
}

struct Job {
    /// `None`: a flush marker, acknowledged once everything before it is committed.
    record: Option<String>,
    ack: Option<oneshot::Sender<bool>>,
    queued: Instant,
}

/// Counters the metrics endpoint reads.
#[derive(Debug, Default)]
pub struct WriterStats {
    /// Records committed.
    pub committed: AtomicU64,
    /// Failed batch writes.
    pub failures: AtomicU64,
    /// Queue-to-commit time of the oldest record of the last batch, in µs.
    pub lag_us: AtomicU64,
}

/// The audit log's front end.
#[derive(Debug)]
pub struct AuditLog {
    tx: mpsc::Sender<Job>,
    key: Arc<AuditKey>,
    sync: bool,
    replica: String,
    checkpoint: Arc<std::sync::Mutex<Option<Checkpoint>>>,
    stats: Arc<WriterStats>,
    /// Wakes the batched writer before its window ends (a full batch, a flush).
    wake: Arc<tokio::sync::Notify>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job").finish_non_exhaustive()
    }
}

/// The record could not be committed (sync mode), or the writer is gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotRecorded;

impl AuditLog {
    /// Starts the writer on the current tokio runtime, continuing the
    /// replica's chain from the store (blocking read of the head).
    pub fn start(
        store: Arc<dyn Store>,
        key: AuditKey,
        settings: WriterSettings,
    ) -> Result<Arc<Self>, String> {
        let head = store
            .audit_head(&settings.replica)
            .map_err(|e| format!("cannot read the audit chain: {e}"))?;
        let chain = Chain::resume(&settings.replica, head.as_ref());
        let (tx, rx) = mpsc::channel(settings.queue.max(1));
        let key = Arc::new(key);
        let log = Arc::new(Self {
            tx,
            key: Arc::clone(&key),
            sync: settings.sync,
            replica: settings.replica.clone(),
            checkpoint: Arc::new(std::sync::Mutex::new(
                head.is_some().then(|| chain.checkpoint(&key)),
            )),
            stats: Arc::default(),
            wake: Arc::default(),
        });
        let writer = Writer {
            store,
            key,
            chain,
            settings,
            checkpoint: Arc::clone(&log.checkpoint),
            stats: Arc::clone(&log.stats),
            logged_seq: 0,
            pruning: Arc::default(),
            wake: Arc::clone(&log.wake),
        };
        tokio::spawn(writer.run(rx));
        Ok(log)
    }

    /// Records one record (canonical JSON). In sync mode, returns once it is
    /// committed.
    pub async fn record(&self, record: String) -> Result<(), NotRecorded> {
        let (ack, done) = if self.sync {
            let (ack, done) = oneshot::channel();
            (Some(ack), Some(done))
        } else {
            (None, None)
        };
        self.tx
            .send(Job {
                record: Some(record),
                ack,
                queued: Instant::now(),
            })
            .await
            .map_err(|_| NotRecorded)?;
        self.wake_if_full();
        match done {
            None => Ok(()),
            Some(done) => match done.await {
                Ok(true) => Ok(()),
                _ => Err(NotRecorded),
            },
        }
    }

    /// Hands a record to the writer without waiting for its commit, in
    /// either mode (records nobody's answer waits for, such as refusal
    /// tallies); [`AuditLog::flush`] waits for them.
    pub async fn record_unacknowledged(&self, record: String) -> Result<(), NotRecorded> {
        self.tx
            .send(Job {
                record: Some(record),
                ack: None,
                queued: Instant::now(),
            })
            .await
            .map_err(|_| NotRecorded)?;
        self.wake_if_full();
        Ok(())
    }

    /// Wakes the batched writer early when a whole batch is queued.
    fn wake_if_full(&self) {
        if !self.sync && self.queued() >= MAX_BATCH {
            self.wake.notify_one();
        }
    }

    /// Waits until every record handed over so far is committed (graceful
    /// shutdown: nothing accepted is left in the queue), and logs a checkpoint.
    pub async fn flush(&self) -> Result<(), NotRecorded> {
        let (ack, done) = oneshot::channel();
        self.tx
            .send(Job {
                record: None,
                ack: Some(ack),
                queued: Instant::now(),
            })
            .await
            .map_err(|_| NotRecorded)?;
        self.wake.notify_one();
        match done.await {
            Ok(true) => Ok(()),
            _ => Err(NotRecorded),
        }
    }

    /// Records waiting to be written.
    pub fn queued(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }

    /// Verifies every chain in the store with this log's key, each from its
    /// start (or its retention anchor), and this replica's against its
    /// latest checkpoint, which detects truncation of the tail.
    pub fn verify_stored(
        &self,
        store: &dyn Store,
    ) -> Result<Vec<crate::ChainReport>, warden_store::StoreError> {
        store
            .audit_replicas()?
            .iter()
            .map(|chain| {
                let checkpoint = self.checkpoint().filter(|c| &c.replica == chain);
                let report = crate::verify_stored(store, &self.key, chain, 1, checkpoint.as_ref())?;
                // The retention policy may have moved the chain's anchor and
                // removed rows while they were read (a row "missing" at the
                // old start): once more from the new anchor.
                if report.result.is_err()
                    && store.audit_anchor(chain)?.map(|a| a.seq) != report.pruned_through
                {
                    return crate::verify_stored(store, &self.key, chain, 1, checkpoint.as_ref());
                }
                Ok(report)
            })
            .collect()
    }

    /// This replica's chain id.
    pub fn replica(&self) -> &str {
        &self.replica
    }

    /// The signed checkpoint of the last committed batch (or of the chain's
    /// head at start); `None` while the chain is empty.
    pub fn checkpoint(&self) -> Option<Checkpoint> {
        self.checkpoint
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// The writer's counters.
    pub fn stats(&self) -> &WriterStats {
        &self.stats
    }
}

struct Writer {
    store: Arc<dyn Store>,
    key: Arc<AuditKey>,
    chain: Chain,
    settings: WriterSettings,
    checkpoint: Arc<std::sync::Mutex<Option<Checkpoint>>>,
    stats: Arc<WriterStats>,
    /// The sequence number of the last checkpoint written to the log.
    logged_seq: i64,
    /// Whether a retention run is under way.
    pruning: Arc<std::sync::atomic::AtomicBool>,
    /// See [`AuditLog::wake`].
    wake: Arc<tokio::sync::Notify>,
}

impl Writer {
    async fn run(mut self, mut rx: mpsc::Receiver<Job>) {
        let key = Arc::clone(&self.key);
        // Checkpoints go to the log on a timer too, so that the last one
        // before a quiet period is not held back until the next write.
        let mut ticker = tokio::time::interval(self.settings.checkpoint_every);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let first = tokio::select! {
                job = rx.recv() => match job {
                    Some(job) => job,
                    None => break,
                },
                _ = ticker.tick() => {
                    self.log_checkpoint();
                    self.prune(&key);
                    continue;
                }
            };
            let mut jobs = self.batch(first, &mut rx).await;
            let flushing = jobs.iter().any(|j| j.record.is_none());
            let records = jobs.iter_mut().filter_map(|j| j.record.take()).collect();
            let committed = self.commit(&key, records).await;
            if committed {
                let lag = jobs.first().map_or(Duration::ZERO, |j| j.queued.elapsed());
                self.stats
                    .lag_us
                    .store(lag.as_micros() as u64, Ordering::Relaxed);
            }
            for j in jobs {
                if let Some(ack) = j.ack {
                    let _ = ack.send(committed);
                }
            }
            if committed && flushing {
                self.log_checkpoint();
            }
        }
    }

    /// The next batch: in sync mode whatever is already queued; in batched
    /// mode whatever arrives within the window. A flush marker ends the
    /// batch at once, so shutdown does not wait out the window.
    async fn batch(&self, first: Job, rx: &mut mpsc::Receiver<Job>) -> Vec<Job> {
        let mut jobs = vec![first];
        if self.settings.sync {
            while jobs.len() < MAX_BATCH && jobs.last().is_some_and(|j| j.record.is_some()) {
                match rx.try_recv() {
                    Ok(j) => jobs.push(j),
                    Err(_) => break,
                }
            }
        } else if jobs[0].record.is_some() {
            // Group commit without a wake-up per record: the writer sleeps
            // out the window (or until the senders see a full batch
            // queued, or a flush asks), then takes what is queued. Waking
            // the writer for each record cost more than its SQLite insert
            // (docs/benchmarks.md, "Audit trail").
            let deadline = tokio::time::Instant::now() + self.settings.window;
            tokio::select! {
                () = tokio::time::sleep_until(deadline) => {}
                () = self.wake.notified() => {}
            }
            while jobs.len() < MAX_BATCH && jobs.last().is_some_and(|j| j.record.is_some()) {
                match rx.try_recv() {
                    Ok(j) => jobs.push(j),
                    Err(_) => break,
                }
            }
        }
        jobs
    }

    /// Appends the batch in one transaction. In batched mode a failure is
    /// retried every 100 ms (the queue fills and callers wait); in sync mode
    /// it is reported to the waiting requests, which fail.
    async fn commit(&mut self, key: &Arc<AuditKey>, mut records: Vec<String>) -> bool {
        if records.is_empty() {
            return true;
        }
        let mut conflicts = 0;
        loop {
            let before = self.chain.clone();
            let rows: Vec<_> = records
                .drain(..)
                .map(|r| self.chain.append(key, r))
                .collect();
            let n = rows.len() as u64;
            let store = Arc::clone(&self.store);
            // The rows come back, so that a retry needs no copy of them.
            let (rows, result) = match tokio::task::spawn_blocking(move || {
                let result = store.append_audit(&rows);
                (rows, result)
            })
            .await
            {
                Ok(done) => done,
                Err(e) => {
                    // Only a panic in the store gets here; the batch is lost
                    // and said so.
                    tracing::error!(alert = "audit_write_failed", error = %e, records = n, "audit write task failed: records lost");
                    self.chain = before;
                    self.stats.failures.fetch_add(1, Ordering::Relaxed);
                    return false;
                }
            };
            let error = match result {
                Ok(()) => {
                    self.stats.committed.fetch_add(n, Ordering::Relaxed);
                    *self
                        .checkpoint
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner) =
                        Some(self.chain.checkpoint(key));
                    return true;
                }
                Err(e) => e.to_string(),
            };
            records = rows.into_iter().map(|r| r.record).collect();
            match self.stored_head().await {
                // The store said it failed, but the rows are there (a
                // PostgreSQL connection lost after COMMIT was sent, a call
                // that outlived its deadline): the batch is committed, and
                // writing it again would record each request twice.
                Some(stored) if stored == self.chain => {
                    tracing::warn!(error = %error, records = n, "audit write reported failure but was committed");
                    self.stats.committed.fetch_add(n, Ordering::Relaxed);
                    *self
                        .checkpoint
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner) =
                        Some(self.chain.checkpoint(key));
                    return true;
                }
                // Another process appended to this chain (a second server
                // with the same `audit.replica` on the same database):
                // continue after the stored head, so the chain stays one
                // line, and retry.
                Some(stored) if stored.seq != before.seq => {
                    self.chain = stored;
                    if conflicts < 3 {
                        conflicts += 1;
                        tracing::warn!(
                            replica = %self.settings.replica,
                            "another process writes this audit chain: give each replica its own audit.replica"
                        );
                        continue;
                    }
                }
                _ => self.chain = before,
            }
            self.stats.failures.fetch_add(1, Ordering::Relaxed);
            tracing::error!(
                alert = "audit_write_failed",
                error = %error,
                records = n,
                "audit write failed"
            );
            if self.settings.sync {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Applies the retention policy on the blocking pool, in a task of its
    /// own so that the writer goes on committing meanwhile (a large backlog
    /// takes a while to verify and remove); one run at a time. A failure is
    /// logged and tried again at the next tick.
    fn prune(&self, key: &Arc<AuditKey>) {
        let retention = self.settings.retention;
        if retention == Retention::default() || self.pruning.swap(true, Ordering::AcqRel) {
            return;
        }
        let pruning = Arc::clone(&self.pruning);
        let store = Arc::clone(&self.store);
        let key = Arc::clone(key);
        let replica = self.settings.replica.clone();
        let now_us = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX));
        tokio::spawn(async move {
            let chain = replica.clone();
            let done = tokio::task::spawn_blocking(move || {
                prune(&*store, &key, &chain, retention, now_us)
            })
            .await;
            match done {
                Ok(Ok(0)) => {}
                Ok(Ok(removed)) => tracing::info!(
                    event = "audit_pruned",
                    %replica,
                    removed,
                    "audit records past the retention policy removed behind a signed anchor"
                ),
                Ok(Err(e @ PruneError::Tampered(_))) => tracing::error!(
                    %replica,
                    error = %e,
                    "audit retention refused: run `warden audit verify`"
                ),
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "audit retention could not be applied; retrying later");
                }
                Err(e) => tracing::warn!(error = %e, "audit retention task failed"),
            }
            pruning.store(false, Ordering::Release);
        });
    }

    /// The chain as stored (`None` if the store cannot say).
    async fn stored_head(&self) -> Option<Chain> {
        let store = Arc::clone(&self.store);
        let replica = self.settings.replica.clone();
        tokio::task::spawn_blocking(move || {
            store
                .audit_head(&replica)
                .ok()
                .map(|head| Chain::resume(&replica, head.as_ref()))
        })
        .await
        .ok()
        .flatten()
    }

    /// Writes the current checkpoint to the log, if the chain moved since
    /// the last one. A reader who keeps these lines can detect truncation
    /// with `warden audit verify --checkpoint`.
    fn log_checkpoint(&mut self) {
        let Some(c) = self
            .checkpoint
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
        else {
            return;
        };
        if c.seq == self.logged_seq {
            return;
        }
        self.logged_seq = c.seq;
        tracing::info!(
            event = "audit_checkpoint",
            replica = %c.replica,
            seq = c.seq,
            head = %c.head,
            sig = %c.sig,
            "audit checkpoint"
        );
    }
}

/// Appends one record to `replica`'s chain straight through the store, for
/// processes without a writer (the CLI). The head is re-read on each try:
/// if another process appended in between, the insert conflicts on the
/// sequence number and is retried, so the chain never forks.
pub fn append_one(
    store: &dyn Store,
    key: &AuditKey,
    replica: &str,
    record: String,
) -> Result<i64, String> {
    let mut last = String::new();
    for _ in 0..5 {
        let head = store
            .audit_head(replica)
            .map_err(|e| format!("cannot read the audit chain: {e}"))?;
        let mut chain = Chain::resume(replica, head.as_ref());
        let row = chain.append(key, record.clone());
        let seq = row.seq;
        match store.append_audit(&[row]) {
            Ok(()) => return Ok(seq),
            Err(e) => last = e.to_string(),
        }
    }
    Err(format!("cannot append to the audit chain: {last}"))
}

/// Reads the audit key file, generating 32 random bytes (hex, mode 0600)
/// on first use.
pub fn key_file(path: &std::path::Path) -> Result<AuditKey, String> {
    if !path.exists() {
        let bytes: [u8; 32] = rand::random();
        write_private(path, hex::encode(bytes).as_bytes())
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        tracing::info!(path = %path.display(), "generated the audit key");
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let bytes =
        hex::decode(text.trim()).map_err(|_| format!("{} is not a hex key", path.display()))?;
    if bytes.len() < 32 {
        return Err(format!(
            "{}: the key needs at least 32 bytes",
            path.display()
        ));
    }
    Ok(AuditKey::new(&bytes))
}

fn write_private(path: &std::path::Path, content: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path)?.write_all(content)
}
