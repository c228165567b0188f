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
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use warden_store::Store;

use crate::{AuditKey, Chain, Checkpoint};

/// Most records per transaction.
const MAX_BATCH: usize = 512;

struct Job {
    /// `None`: a flush marker, acknowledged once everything before it is committed.
    record: Option<String>,
    ack: Option<oneshot::Sender<bool>>,
}

/// The audit log's front end.
#[derive(Debug)]
pub struct AuditLog {
    tx: mpsc::Sender<Job>,
    sync: bool,
    checkpoint: Arc<std::sync::Mutex<Option<Checkpoint>>>,
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
        replica: &str,
        sync: bool,
        window: Duration,
        queue: usize,
    ) -> Result<Arc<Self>, String> {
        let head = store
            .audit_head(replica)
            .map_err(|e| format!("cannot read the audit chain: {e}"))?;
        let chain = Chain::resume(replica, head.as_ref());
        let (tx, rx) = mpsc::channel(queue.max(1));
        let checkpoint = Arc::new(std::sync::Mutex::new(None));
        tokio::spawn(run(store, key, chain, rx, sync, window, checkpoint.clone()));
        Ok(Arc::new(Self {
            tx,
            sync,
            checkpoint,
        }))
    }

    /// Records one record (canonical JSON). In sync mode, returns once it is
    /// committed.
    pub async fn record(&self, record: String) -> Result<(), NotRecorded> {
        if self.sync {
            let (ack, done) = oneshot::channel();
            self.tx
                .send(Job {
                    record: Some(record),
                    ack: Some(ack),
                })
                .await
                .map_err(|_| NotRecorded)?;
            match done.await {
                Ok(true) => Ok(()),
                _ => Err(NotRecorded),
            }
        } else {
            self.tx
                .send(Job {
                    record: Some(record),
                    ack: None,
                })
                .await
                .map_err(|_| NotRecorded)
        }
    }

    /// Waits until every record handed over so far is committed (graceful
    /// shutdown: nothing accepted is left in the queue).
    pub async fn flush(&self) -> Result<(), NotRecorded> {
        let (ack, done) = oneshot::channel();
        self.tx
            .send(Job {
                record: None,
                ack: Some(ack),
            })
            .await
            .map_err(|_| NotRecorded)?;
        match done.await {
            Ok(true) => Ok(()),
            _ => Err(NotRecorded),
        }
    }

    /// Records waiting to be written.
    pub fn queued(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }

    /// The checkpoint of the last committed batch.
    pub fn checkpoint(&self) -> Option<Checkpoint> {
        self.checkpoint
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

async fn run(
    store: Arc<dyn Store>,
    key: AuditKey,
    mut chain: Chain,
    mut rx: mpsc::Receiver<Job>,
    sync: bool,
    window: Duration,
    checkpoint: Arc<std::sync::Mutex<Option<Checkpoint>>>,
) {
    let key = Arc::new(key);
    while let Some(first) = rx.recv().await {
        let mut jobs = vec![first];
        if sync {
            while jobs.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(j) => jobs.push(j),
                    Err(_) => break,
                }
            }
        } else {
            // A flush marker ends the batch at once: shutdown does not wait
            // out the window.
            let deadline = tokio::time::Instant::now() + window;
            while jobs.len() < MAX_BATCH && jobs.last().is_some_and(|j| j.record.is_some()) {
                match tokio::time::timeout_at(deadline, rx.recv()).await {
                    Ok(Some(j)) => jobs.push(j),
                    _ => break,
                }
            }
        }
        loop {
            let before = chain.clone();
            let rows: Vec<_> = jobs
                .iter()
                .filter_map(|j| j.record.clone())
                .map(|r| chain.append(&key, r))
                .collect();
            let s = Arc::clone(&store);
            let result = tokio::task::spawn_blocking(move || s.append_audit(&rows)).await;
            match result {
                Ok(Ok(())) => {
                    *checkpoint
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner) =
                        Some(chain.checkpoint(&key));
                    for j in jobs {
                        if let Some(ack) = j.ack {
                            let _ = ack.send(true);
                        }
                    }
                    break;
                }
                failure => {
                    let error = match failure {
                        Ok(Err(e)) => e.to_string(),
                        Err(e) => e.to_string(),
                        Ok(Ok(())) => String::new(),
                    };
                    tracing::error!(error = %error, records = jobs.len(), "audit write failed");
                    chain = before;
                    if sync {
                        for j in jobs {
                            if let Some(ack) = j.ack {
                                let _ = ack.send(false);
                            }
                        }
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
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
