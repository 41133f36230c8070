//! Looks at a ring segment from the outside, for an operator.
//!
//! ```text
//! ring_inspect PATH                      kind, size, creator (alive or not), attached handles,
//!                                        and for a queue its depths and counters
//! ring_inspect PATH --take-dead-letters  also prints each dead letter and removes it
//! ```
//!
//! `cargo run -p levee-rings --example ring_inspect -- /dev/shm/levee-admission`

use levee_rings::mpmc::Queue;
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
    if info.kind != RingKind::Mpmc {
        return Ok(());
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
