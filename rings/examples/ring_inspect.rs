//! Looks at a ring segment from the outside, for an operator.
//!
//! ```text
//! ring_inspect PATH                      kind, size, creator (alive or not), attached handles,
//!                                        for a queue its depths and counters, for a table its
//!                                        holders and the caps and counts of its rows
//! ring_inspect PATH --take-dead-letters  also prints each dead letter and removes it
//! ```
//!
//! `cargo run -p levee-rings --example ring_inspect -- /dev/shm/levee-admission`

use levee_rings::mpmc::Queue;
use levee_rings::table::Table;
use levee_rings::{RingKind, inspect};

fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(path), flag) = (args.next(), args.next()) else {
        eprintln!("usage: ring_inspect PATH [--take-dead-letters]");
        std::process::exit(2);
    };
    let take = match flag.as_deref() {
        None => false,
        Some("--take-dead-letters") => true,
        Some(other) => {
            eprintln!("unknown option {other}; usage: ring_inspect PATH [--take-dead-letters]");
            std::process::exit(2);
        }
    };
    if let Err(e) = run(&path, take) {
        eprintln!("ring_inspect: {e}");
        std::process::exit(1);
    }
}

fn run(path: &str, take: bool) -> Result<(), levee_rings::Error> {
    let info = inspect(path)?;
    println!("kind: {:?}", info.kind);
    println!("size: {} bytes", info.len);
    println!(
        "creator: pid {} ({})",
        info.creator.pid,
        if info.creator_alive {
            "running"
        } else {
            "gone"
        }
    );
    println!("attached handles: {}", info.attached);
    if info.is_stale() {
        println!("stale: nothing is using it; open it to drain it, or remove it");
    }
    match info.kind {
        RingKind::Mpmc => {}
        RingKind::Table => return show_table(path),
        RingKind::Spsc => return Ok(()),
    }
    let queue = Queue::open(path)?;
    let c = queue.config();
    let st = queue.stats();
    println!(
        "config: capacity {}, max_record {}, dead_letter_capacity {}, max_attempts {}, \
         max_handles {}",
        c.capacity, c.max_record, c.dead_letter_capacity, c.max_attempts, c.max_handles
    );
    println!("depth: {} ready or in flight", st.depth);
    println!("dead letters: {}", st.dead_letters);
    println!(
        "counters: requeued {}, dead-lettered {}, abandoned writes {}, corrupt {}",
        st.requeued, st.dead_lettered, st.abandoned_writes, st.corrupt
    );
    if take {
        let mut letters = queue.dead_letters()?;
        while let Some(letter) = letters.claim()? {
            let shown: String = letter
                .iter()
                .take(256)
                .flat_map(|b| b.escape_ascii())
                .map(char::from)
                .collect();
            println!(
                "dead letter ({} attempts, {} bytes): {shown}",
                letter.attempts(),
                letter.len()
            );
            letter.ack();
        }
    }
    Ok(())
}

/// Rows shown at most; a table may have millions.
const ROWS_SHOWN: usize = 64;

fn show_table(path: &str) -> Result<(), levee_rings::Error> {
    let table = Table::open(path)?;
    let c = table.config();
    println!(
        "config: rows {}, holders {}, words {}, padded {}",
        c.rows, c.holders, c.words, c.padded
    );
    for h in table.holders()? {
        println!(
            "holder {}: pid {} ({})",
            h.index,
            h.pid,
            if h.alive {
                "alive"
            } else {
                "dead: its units stay counted until a holder reaps it"
            }
        );
    }
    for row in 0..c.rows.min(ROWS_SHOWN) {
        let (cap, count) = (table.cap(row), table.count(row));
        if cap != 0 || count != 0 {
            println!("row {row}: count {count}, cap {cap}");
        }
    }
    if c.rows > ROWS_SHOWN {
        println!("(rows past {ROWS_SHOWN} not shown)");
    }
    Ok(())
}
