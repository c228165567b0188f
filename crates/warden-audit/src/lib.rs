//! The tamper-evident audit trail (issue 5, first part): records form one
//! hash chain per replica, each row MAC'd with HMAC-SHA256 under a key the
//! database never holds, so whoever can write the database but lacks the
//! key cannot produce a chain that verifies. Signed checkpoints (sequence,
//! head MAC) let a reader detect truncation of the tail.
//!
//! A row's MAC covers a domain tag, the replica id, the sequence number, the
//! previous row's MAC and the record's canonical JSON, each length-prefixed:
//! editing any field, deleting, inserting, reordering or renumbering rows all
//! break the chain at the first affected row, which [`verify`] names.

mod writer;

pub use writer::{
    AuditLog, NotRecorded, PruneError, Retention, WriterSettings, WriterStats, append_one,
    key_file, prune,
};

use aws_lc_rs::hmac;
use serde::{Deserialize, Serialize};
use warden_store::{AuditAnchor, AuditRow};

/// The `prev` of the first row.
pub const GENESIS: [u8; 32] = [0; 32];

/// The MAC key (from a secret in config).
pub struct AuditKey(hmac::Key);

impl std::fmt::Debug for AuditKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AuditKey([redacted])")
    }
}

impl AuditKey {
    /// A key from secret bytes (at least 32 are expected; config checks).
    pub fn new(secret: &[u8]) -> Self {
        Self(hmac::Key::new(hmac::HMAC_SHA256, secret))
    }

    fn mac(&self, parts: &[&[u8]]) -> [u8; 32] {
        let mut ctx = hmac::Context::with_key(&self.0);
        for p in parts {
            ctx.update(&(p.len() as u64).to_be_bytes());
            ctx.update(p);
        }
        let tag = ctx.sign();
        let mut out = [0u8; 32];
        out.copy_from_slice(tag.as_ref());
        out
    }

    /// The MAC of a row.
    pub fn row_mac(&self, replica: &str, seq: i64, prev: &[u8], record: &str) -> [u8; 32] {
        self.mac(&[
            b"warden-audit-row-v1",
            replica.as_bytes(),
            &seq.to_be_bytes(),
            prev,
            record.as_bytes(),
        ])
    }

    /// The signature of a retention anchor: its own domain tag, so that a
    /// checkpoint (logged every minute, served by the API) can never pass
    /// for an anchor and justify deleting the chain up to it.
    fn anchor_mac(&self, replica: &str, seq: i64, head: &[u8]) -> [u8; 32] {
        self.mac(&[
            b"warden-audit-anchor-v1",
            replica.as_bytes(),
            &seq.to_be_bytes(),
            head,
        ])
    }

    fn checkpoint_mac(&self, replica: &str, seq: i64, head: &[u8]) -> [u8; 32] {
        self.mac(&[
            b"warden-audit-checkpoint-v1",
            replica.as_bytes(),
            &seq.to_be_bytes(),
            head,
        ])
    }
}

/// The writer's position in one replica's chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    replica: String,
    seq: i64,
    head: Vec<u8>,
}

impl Chain {
    /// Continues the chain after its stored head (or starts it).
    pub fn resume(replica: &str, head: Option<&AuditRow>) -> Self {
        match head {
            Some(h) => Self {
                replica: replica.to_owned(),
                seq: h.seq,
                head: h.mac.clone(),
            },
            None => Self {
                replica: replica.to_owned(),
                seq: 0,
                head: GENESIS.to_vec(),
            },
        }
    }

    /// The next row for `record` (canonical JSON); the chain moves on.
    pub fn append(&mut self, key: &AuditKey, record: String) -> AuditRow {
        let seq = self.seq + 1;
        let mac = key
            .row_mac(&self.replica, seq, &self.head, &record)
            .to_vec();
        let row = AuditRow {
            replica: self.replica.clone(),
            seq,
            record,
            prev: std::mem::replace(&mut self.head, mac.clone()),
            mac,
        };
        self.seq = seq;
        row
    }

    /// A signed checkpoint of the current head.
    pub fn checkpoint(&self, key: &AuditKey) -> Checkpoint {
        Checkpoint {
            replica: self.replica.clone(),
            seq: self.seq,
            head: hex::encode(&self.head),
            sig: hex::encode(key.checkpoint_mac(&self.replica, self.seq, &self.head)),
        }
    }
}

/// (sequence, head MAC) of a chain at some moment, signed with the key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Replica.
    pub replica: String,
    /// Last sequence number.
    pub seq: i64,
    /// That row's MAC, hex.
    pub head: String,
    /// HMAC of (replica, seq, head), hex.
    pub sig: String,
}

/// What is wrong at the first bad row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Problem {
    /// The row's content or MAC does not match (edited, forged, or moved).
    Modified,
    /// A sequence number is missing (rows deleted).
    Missing,
    /// The row does not follow the previous one (rows inserted, reordered,
    /// or deleted and renumbered).
    BrokenLink,
    /// The chain ends before the checkpoint's sequence.
    Truncated,
    /// The row at the checkpoint's sequence is not the one checkpointed.
    Rewritten,
    /// The checkpoint itself does not verify with this key.
    BadCheckpoint,
    /// The anchor a pruned chain starts after does not verify with this key.
    BadAnchor,
}

/// The first bad row found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// Its sequence number.
    pub seq: i64,
    /// What is wrong.
    pub problem: Problem,
}

/// A verified stretch of chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// Rows checked.
    pub rows: u64,
    /// Last sequence number (0 if none).
    pub last_seq: i64,
}

/// Verifies rows (in `seq` order) from `from_seq`. When `from_seq` > 1 the
/// first row's `prev` is trusted as given (its own MAC is still checked);
/// verify from 1 to check the whole chain. A `checkpoint` the reader kept
/// detects truncation and rewriting of the tail.
pub fn verify(
    key: &AuditKey,
    replica: &str,
    rows: impl IntoIterator<Item = AuditRow>,
    from_seq: i64,
    checkpoint: Option<&Checkpoint>,
) -> Result<Verified, Finding> {
    let prev = (from_seq <= 1).then(|| GENESIS.to_vec());
    verify_rows(key, replica, rows, from_seq.max(1), prev, checkpoint)
}

/// Verifies a pruned chain (docs/audit.md, "Retention"): the anchor's
/// signature, then every remaining row from the one after the anchor, the
/// first of which must link to the anchor's head. Rows removed before the
/// anchor cannot be checked any more, but no row after it can be removed,
/// edited or inserted unseen, and nor can the anchor be moved without the key.
pub fn verify_anchored(
    key: &AuditKey,
    anchor: &AuditAnchor,
    rows: impl IntoIterator<Item = AuditRow>,
    checkpoint: Option<&Checkpoint>,
) -> Result<Verified, Finding> {
    if !anchor_is_valid(key, anchor) {
        return Err(Finding {
            seq: anchor.seq,
            problem: Problem::BadAnchor,
        });
    }
    verify_rows(
        key,
        &anchor.replica,
        rows,
        anchor.seq + 1,
        Some(anchor.head.clone()),
        checkpoint,
    )
}

/// Whether `anchor` was signed with `key` (by the retention policy).
pub(crate) fn anchor_is_valid(key: &AuditKey, anchor: &AuditAnchor) -> bool {
    let expected = key.anchor_mac(&anchor.replica, anchor.seq, &anchor.head);
    constant_eq(&anchor.sig, &expected)
}

/// The anchor that lets rows up to and including `row` be removed: the
/// chain's position at `row`, signed with the key under the anchor's own
/// domain tag. Only the retention policy makes one, after verifying every
/// row it removes (`prune`).
pub fn anchor_at(key: &AuditKey, row: &AuditRow) -> AuditAnchor {
    AuditAnchor {
        replica: row.replica.clone(),
        seq: row.seq,
        head: row.mac.clone(),
        sig: key.anchor_mac(&row.replica, row.seq, &row.mac).to_vec(),
    }
}

pub(crate) fn verify_rows(
    key: &AuditKey,
    replica: &str,
    rows: impl IntoIterator<Item = AuditRow>,
    first_seq: i64,
    mut prev: Option<Vec<u8>>,
    checkpoint: Option<&Checkpoint>,
) -> Result<Verified, Finding> {
    if let Some(c) = checkpoint {
        let head = hex::decode(&c.head).unwrap_or_default();
        let sig = hex::decode(&c.sig).unwrap_or_default();
        let expected = key.checkpoint_mac(&c.replica, c.seq, &head);
        if c.replica != replica || !constant_eq(&sig, &expected) {
            return Err(Finding {
                seq: c.seq,
                problem: Problem::BadCheckpoint,
            });
        }
    }
    let mut count = 0u64;
    let mut last_seq = first_seq - 1;
    for (expected_seq, row) in (first_seq..).zip(rows) {
        if row.seq != expected_seq {
            return Err(Finding {
                seq: expected_seq,
                problem: if row.seq > expected_seq {
                    Problem::Missing
                } else {
                    Problem::BrokenLink
                },
            });
        }
        if let Some(p) = &prev
            && !constant_eq(p, &row.prev)
        {
            return Err(Finding {
                seq: row.seq,
                problem: Problem::BrokenLink,
            });
        }
        let mac = key.row_mac(replica, row.seq, &row.prev, &row.record);
        if row.replica != replica || !constant_eq(&mac, &row.mac) {
            return Err(Finding {
                seq: row.seq,
                problem: Problem::Modified,
            });
        }
        if let Some(c) = checkpoint
            && row.seq == c.seq
            && hex::encode(&row.mac) != c.head
        {
            return Err(Finding {
                seq: row.seq,
                problem: Problem::Rewritten,
            });
        }
        prev = Some(row.mac);
        last_seq = row.seq;
        count += 1;
    }
    if let Some(c) = checkpoint
        && last_seq < c.seq
    {
        return Err(Finding {
            seq: last_seq + 1,
            problem: Problem::Truncated,
        });
    }
    Ok(Verified {
        rows: count,
        last_seq,
    })
}

impl Problem {
    /// A stable snake_case name (the management API's `problem`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Modified => "modified",
            Self::Missing => "missing",
            Self::BrokenLink => "broken_link",
            Self::Truncated => "truncated",
            Self::Rewritten => "rewritten",
            Self::BadCheckpoint => "bad_checkpoint",
            Self::BadAnchor => "bad_anchor",
        }
    }
}

/// The verification of one stored chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainReport {
    /// The chain (replica id).
    pub replica: String,
    /// The first sequence number checked.
    pub from: i64,
    /// Records up to and including this one were removed by the retention
    /// policy behind a verified anchor.
    pub pruned_through: Option<i64>,
    /// The verified stretch, or the first bad record.
    pub result: Result<Verified, Finding>,
}

/// Rows read from the store per page while verifying.
const VERIFY_PAGE: usize = 10_000;

/// Verifies a chain as stored (`warden audit verify`, and the management
/// API's `GET /admin/audit/verify`): from its signed anchor when the
/// retention policy pruned it (unless `from` is later), else from `from`,
/// reading [`VERIFY_PAGE`] rows at a time so that memory stays bounded
/// whatever the chain's length.
pub fn verify_stored(
    store: &dyn warden_store::Store,
    key: &AuditKey,
    chain: &str,
    from: i64,
    checkpoint: Option<&Checkpoint>,
) -> Result<ChainReport, warden_store::StoreError> {
    let anchor = store.audit_anchor(chain)?.filter(|a| from <= a.seq + 1);
    let from = anchor.as_ref().map_or(from.max(1), |a| a.seq + 1);
    let mut failed = None;
    let rows = Pages {
        store,
        chain,
        next: from,
        page: Vec::new().into_iter(),
        done: false,
        failed: &mut failed,
    };
    let result = match &anchor {
        Some(a) => verify_anchored(key, a, rows, checkpoint),
        None => verify(key, chain, rows, from, checkpoint),
    };
    if let Some(e) = failed {
        return Err(e);
    }
    Ok(ChainReport {
        replica: chain.to_owned(),
        from,
        pruned_through: anchor.map(|a| a.seq),
        result,
    })
}

/// A chain's rows, a page at a time; a store error ends the rows and is
/// kept in `failed`.
struct Pages<'a> {
    store: &'a dyn warden_store::Store,
    chain: &'a str,
    next: i64,
    page: std::vec::IntoIter<AuditRow>,
    done: bool,
    failed: &'a mut Option<warden_store::StoreError>,
}

impl Iterator for Pages<'_> {
    type Item = AuditRow;

    fn next(&mut self) -> Option<AuditRow> {
        if let Some(row) = self.page.next() {
            return Some(row);
        }
        if self.done {
            return None;
        }
        match self.store.audit_rows(self.chain, self.next, VERIFY_PAGE) {
            Ok(rows) => {
                self.done = rows.len() < VERIFY_PAGE;
                if let Some(last) = rows.last() {
                    self.next = last.seq + 1;
                }
                self.page = rows.into_iter();
                self.page.next()
            }
            Err(e) => {
                *self.failed = Some(e);
                self.done = true;
                None
            }
        }
    }
}

fn constant_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.ct_eq(b).into()
}

#[cfg(test)]
mod tests;

/// Reads a point in time for `--since` and the query API, as µs since the
/// Unix epoch: an RFC 3339 timestamp (`2026-11-29T10:00:00Z`), Unix seconds
/// (`1764410400`), or a duration back from `now_us` (`90m`, `24h`, `7d`).
pub fn parse_time(text: &str, now_us: i64) -> Result<i64, String> {
    let text = text.trim();
    if let Ok(secs) = text.parse::<i64>() {
        return secs
            .checked_mul(1_000_000)
            .ok_or_else(|| format!("{text:?} is out of range"));
    }
    if let Ok(t) = humantime::parse_rfc3339_weak(text) {
        let d = t
            .duration_since(std::time::UNIX_EPOCH)
            .map_err(|_| format!("{text:?} is before 1970"))?;
        return i64::try_from(d.as_micros()).map_err(|_| format!("{text:?} is out of range"));
    }
    if let Ok(d) = humantime::parse_duration(text) {
        let back = i64::try_from(d.as_micros()).unwrap_or(i64::MAX);
        return Ok(now_us.saturating_sub(back));
    }
    Err(format!(
        "{text:?} is not a time: use RFC 3339 in UTC (2026-11-29T10:00:00Z), Unix seconds, or a duration back from now (24h, 7d)"
    ))
}
