//! What storing one audit record costs, by layout (docs/benchmarks.md,
//! "Audit trail: where the insert's time goes"). The audit writer commits
//! batches of up to 256 records (warden-audit's `MAX_BATCH`); this appends
//! 100,000 records of the size the server writes for a one-row iris
//! prediction, in such batches, to a file-backed store in a temporary
//! directory, and reports the CPU time and the wall time per record
//! (medians of interleaved rounds):
//!
//! - `sqlite_rows`: `SqliteStore::append_audit`, the layout Warden uses (one
//!   row per record, WAL, `synchronous = NORMAL`);
//! - `sqlite_blocks`: the same database settings, one row per batch (the
//!   records as lines of one text value), a layout Warden does not use;
//! - `segment_file`: the batch appended to a plain file with one `write`,
//!   no sync;
//! - `segment_file_fdatasync`: the same, with `fdatasync` after each batch
//!   (what a group commit per batch window would pay).
//!
//! MAC computation is not included (it is the same for every layout).
//!
//!     cargo bench -p warden-store --bench audit_storage [-- ROUNDS]
//!
//! Prints one JSON object.

#![allow(clippy::print_stdout, reason = "a benchmark tool")]

use std::io::Write;
use std::path::Path;
use std::time::Instant;

use warden_store::{AuditRow, SqliteStore, Store};

const RECORDS: usize = 100_000;
const BATCH: usize = 256;

/// The record the server writes for a one-row iris prediction.
fn record(seq: usize) -> String {
    format!(
        r#"{{"time_us":{},"request_id":"0193a1b2{seq:012x}","plane":"data","protocol":"http","principal":"key:abcdefabcdef","client":"127.0.0.1","method":"POST","route":"/v1/models/iris:predict","status":200,"outcome":"ok","model":"iris","version":1,"rows":1,"input_sha256":"{}","defense_flags":[],"latency_us":812}}"#,
        1_796_000_000_000_000u64 + seq as u64,
        "ab".repeat(32)
    )
}

/// This thread's CPU time in seconds (the first field of
/// /proc/thread-self/schedstat, in nanoseconds: finer than the clock ticks
/// of /proc/self/stat).
fn cpu_seconds() -> f64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(0.0, |ns| ns / 1e9)
}

/// Runs `append` over every batch; returns (CPU µs, wall µs) per record.
fn measure(mut append: impl FnMut(usize, &[String])) -> (f64, f64) {
    let batches: Vec<Vec<String>> = (0..RECORDS)
        .map(record)
        .collect::<Vec<_>>()
        .chunks(BATCH)
        .map(<[String]>::to_vec)
        .collect();
    let (cpu, wall) = (cpu_seconds(), Instant::now());
    let mut first = 1;
    for batch in &batches {
        append(first, batch);
        first += batch.len();
    }
    let per = |s: f64| s * 1e6 / RECORDS as f64;
    (per(cpu_seconds() - cpu), per(wall.elapsed().as_secs_f64()))
}

fn sqlite_rows(dir: &Path) -> (f64, f64) {
    let store = SqliteStore::open(&dir.join("rows.db")).expect("open the store");
    let mac = vec![7u8; 32];
    measure(|first, batch| {
        let rows: Vec<AuditRow> = batch
            .iter()
            .enumerate()
            .map(|(i, r)| AuditRow {
                replica: "bench".into(),
                seq: (first + i) as i64,
                record: r.clone(),
                prev: mac.clone(),
                mac: mac.clone(),
            })
            .collect();
        store.append_audit(&rows).expect("append");
    })
}

fn sqlite_blocks(dir: &Path) -> (f64, f64) {
    let mut conn = rusqlite::Connection::open(dir.join("blocks.db")).expect("open");
    conn.pragma_update(None, "journal_mode", "WAL")
        .expect("WAL");
    conn.pragma_update(None, "synchronous", "NORMAL")
        .expect("NORMAL");
    conn.execute_batch(
        "CREATE TABLE audit_block (replica TEXT NOT NULL, first_seq INTEGER NOT NULL,
            last_seq INTEGER NOT NULL, prev BLOB NOT NULL, body TEXT NOT NULL,
            PRIMARY KEY (replica, first_seq)) STRICT",
    )
    .expect("create");
    let mac = "07".repeat(32);
    measure(|first, batch| {
        let mut body = String::with_capacity(batch.len() * 512);
        for r in batch {
            body.push_str(&mac);
            body.push(' ');
            body.push_str(r);
            body.push('\n');
        }
        let tx = conn.transaction().expect("begin");
        tx.prepare_cached("INSERT INTO audit_block VALUES (?1, ?2, ?3, ?4, ?5)")
            .and_then(|mut s| {
                s.execute(rusqlite::params![
                    "bench",
                    first as i64,
                    (first + batch.len() - 1) as i64,
                    [7u8; 32].as_slice(),
                    body
                ])
            })
            .expect("insert");
        tx.commit().expect("commit");
    })
}

fn segment_file(dir: &Path, name: &str, sync: bool) -> (f64, f64) {
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(name))
        .expect("open");
    let mac = "07".repeat(32);
    measure(|first, batch| {
        let mut body = String::with_capacity(batch.len() * 512);
        for (i, r) in batch.iter().enumerate() {
            body.push_str(&(first + i).to_string());
            body.push(' ');
            body.push_str(&mac);
            body.push(' ');
            body.push_str(r);
            body.push('\n');
        }
        file.write_all(body.as_bytes()).expect("write");
        if sync {
            file.sync_data().expect("fdatasync");
        }
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let rounds: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(3);
    let layouts = [
        "sqlite_rows",
        "sqlite_blocks",
        "segment_file",
        "segment_file_fdatasync",
    ];
    let mut cpu = vec![Vec::new(); layouts.len()];
    let mut wall = vec![Vec::new(); layouts.len()];
    for _ in 0..rounds {
        for (i, layout) in layouts.iter().enumerate() {
            let dir = tempfile::tempdir().expect("a temporary directory");
            let (c, w) = match *layout {
                "sqlite_rows" => sqlite_rows(dir.path()),
                "sqlite_blocks" => sqlite_blocks(dir.path()),
                "segment_file" => segment_file(dir.path(), "a.seg", false),
                _ => segment_file(dir.path(), "b.seg", true),
            };
            cpu[i].push(c);
            wall[i].push(w);
        }
    }
    let fields: Vec<String> = layouts
        .iter()
        .enumerate()
        .map(|(i, l)| {
            format!(
                "\"{l}\": {{\"cpu_us_per_record\": {:.2}, \"wall_us_per_record\": {:.2}}}",
                median(cpu[i].clone()),
                median(wall[i].clone())
            )
        })
        .collect();
    println!(
        "{{\"records\": {RECORDS}, \"batch\": {BATCH}, \"rounds\": {rounds}, {}}}",
        fields.join(", ")
    );
}
