//! Measures what an idle consumer costs: a consumer blocks in `claim_wait` on an empty queue for
//! a few seconds, and its thread's CPU time (utime + stime from /proc) is printed.
//!
//! `cargo run --release -p levee-rings --example idle_cost -- [seconds]`

use std::time::{Duration, Instant};

use levee_rings::mpmc::{Config, Queue};

/// utime + stime of thread `tid` of this process, in clock ticks.
fn cpu_ticks(tid: i32) -> std::io::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat"))?;
    let rest = stat.rfind(')').map(|i| &stat[i + 1..]).unwrap_or("");
    let fields: Vec<&str> = rest.split_ascii_whitespace().collect();
    // After the command name: field 14 (utime) and 15 (stime) are at 11 and 12.
    let get = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    Ok(get(11) + get(12))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let secs: u64 = std::env::args().nth(1).map_or(Ok(5), |s| s.parse())?;
    let path =
        std::path::PathBuf::from(format!("/dev/shm/levee-rings-idle-{}", std::process::id()));
    let queue = Queue::create(&path, &Config::default())?;
    let mut consumer = queue.consumer()?;
    let (tx, rx) = std::sync::mpsc::channel();
    let waiter = std::thread::spawn(move || -> Result<(), levee_rings::Error> {
        // SAFETY: gettid has no memory effects.
        let tid = unsafe { libc::gettid() };
        let _ = tx.send(tid);
        if let Some(claim) = consumer.claim_wait(None)? {
            claim.ack();
        }
        Ok(())
    });
    let tid = rx.recv()?;
    std::thread::sleep(Duration::from_millis(200)); // past the brief spin
    let before = cpu_ticks(tid)?;
    let start = Instant::now();
    std::thread::sleep(Duration::from_secs(secs));
    let ticks = cpu_ticks(tid)? - before;
    let elapsed = start.elapsed();
    // SAFETY: sysconf has no memory effects.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    println!(
        "idle consumer: {ticks} ticks of CPU in {:.1} s = {:.3} % of one CPU",
        elapsed.as_secs_f64(),
        100.0 * ticks as f64 / hz / elapsed.as_secs_f64()
    );
    queue.producer()?.push(b"stop")?;
    waiter.join().map_err(|_| "waiter panicked")??;
    drop(queue);
    std::fs::remove_file(&path)?;
    Ok(())
}
