//! The overflow tier's shared memory: one directory per running levee, holding
//!
//! | file | what | created by | used by |
//! |---|---|---|---|
//! | `load` | the load table (backend counts and caps, settings) | `levee run` | forwarders, workers |
//! | `park` | park entries, `overflow.max_queue` per forwarder | `levee run` | forwarders, workers |
//! | `queue.N` | pool N's queue of tickets (MPMC) | `levee run` | forwarders push, workers claim |
//! | `notice.W.F` | worker W's notices to forwarder F (SPSC) | `levee run` | worker W produces, forwarder F consumes |
//! | `wW.sock` | worker W's socket for `SCM_RIGHTS` handoffs | worker W | forwarders send to it |
//! | `levee.conf` | the configuration in effect, every key written out | `levee run` | workers read it |
//!
//! `levee run` creates the directory (for `overflow.dir = auto`, `/dev/shm/levee.PID`), refuses
//! one that a live levee uses, clears one left by a levee that died, and removes what it made
//! when it exits.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use levee_rings::table::Table;
use levee_rings::{mpmc, segment, spsc};

use super::ticket::TICKET_LEN;
use crate::config::{Config, Overflow, PoolConfig};
use crate::pool::table as load_table;

/// Bytes of each notice ring: room for about 2,700 notices a forwarder has not read yet.
pub const NOTICE_RING_BYTES: usize = 64 * 1024;

/// The file names, so that creator and attachers agree.
pub fn load_path(dir: &Path) -> PathBuf {
    dir.join("load")
}
pub fn park_path(dir: &Path) -> PathBuf {
    dir.join("park")
}
pub fn queue_path(dir: &Path, pool: usize) -> PathBuf {
    dir.join(format!("queue.{pool}"))
}
pub fn notice_path(dir: &Path, worker: u32, forwarder: usize) -> PathBuf {
    dir.join(format!("notice.{worker}.{forwarder}"))
}
pub fn worker_socket_path(dir: &Path, worker: u32) -> PathBuf {
    dir.join(format!("w{worker}.sock"))
}
pub fn config_path(dir: &Path) -> PathBuf {
    dir.join("levee.conf")
}

/// The directory `overflow.dir` names for a new engine of this process: for `auto`,
/// `/dev/shm/levee.PID`, and `/dev/shm/levee.PID.N` for the N-th further engine in the same
/// process (tests start many).
pub fn resolve_dir(cfg: &Config) -> PathBuf {
    static ENGINES: AtomicU32 = AtomicU32::new(0);
    if let Some(dir) = &cfg.overflow.dir {
        return dir.clone();
    }
    let pid = std::process::id();
    match ENGINES.fetch_add(1, Ordering::Relaxed) {
        0 => {
            remove_stale_auto_dirs(Path::new(AUTO_PARENT));
            PathBuf::from(format!("{AUTO_PARENT}/levee.{pid}"))
        }
        n => PathBuf::from(format!("{AUTO_PARENT}/levee.{pid}.{n}")),
    }
}

const AUTO_PARENT: &str = "/dev/shm";

/// Removes the `auto` directories of levees that died without cleaning up: `levee.PID[.N]`
/// whose process is gone and whose load table no live process is attached to.
fn remove_stale_auto_dirs(parent: &Path) {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix("levee.")) else {
            continue;
        };
        let pid = rest.split('.').next().unwrap_or("");
        if pid.is_empty() || !pid.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        if Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        let dir = entry.path();
        let stale = match segment::inspect(load_path(&dir)) {
            Ok(info) => info.is_stale(),
            // No table (or not one): nothing can be attached to it.
            Err(_) => true,
        };
        if stale && std::fs::remove_dir_all(&dir).is_ok() {
            tracing::info!(dir = %dir.display(), "removed the overflow directory of a levee that is gone");
        }
    }
}

/// Whether any pool queues: only then does levee need the overflow tier.
pub fn wanted(cfg: &Config) -> bool {
    cfg.pools.iter().any(|p| p.overflow == Overflow::Queue)
}

/// The geometry both sides derive from the configuration in effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    pub forwarders: usize,
    /// Park entries per forwarder.
    pub park_entries: usize,
    /// Holder indices 1..=max_workers are workers'; 0 is `levee run`'s.
    pub max_workers: u32,
}

impl Geometry {
    pub fn new(cfg: &Config, forwarders: usize) -> Self {
        Self {
            forwarders,
            park_entries: cfg.overflow.max_queue as usize,
            max_workers: cfg.overflow.max_workers,
        }
    }

    /// Park entry `entry` of forwarder `forwarder`, as a row of the park table; `None` out of
    /// range (a ticket from a corrupt peer).
    pub fn park_row(&self, forwarder: usize, entry: u32) -> Option<usize> {
        let entry = entry as usize;
        (forwarder < self.forwarders && entry < self.park_entries)
            .then(|| forwarder * self.park_entries + entry)
    }
}

/// Why the overflow tier could not be set up.
#[derive(Debug)]
pub enum SharedError {
    Dir { dir: PathBuf, error: io::Error },
    InUse { dir: PathBuf },
    Ring(levee_rings::Error),
    Mismatch { dir: PathBuf, what: String },
}

impl std::fmt::Display for SharedError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Dir { dir, error } => write!(f, "overflow.dir {}: {error}", dir.display()),
            Self::InUse { dir } => write!(
                f,
                "overflow.dir {} is in use by another running levee; give each levee its own \
                 overflow.dir (or leave it auto)",
                dir.display()
            ),
            Self::Ring(e) => write!(f, "overflow tier: {e}"),
            Self::Mismatch { dir, what } => write!(
                f,
                "overflow.dir {}: {what}; it was made by a levee with another configuration",
                dir.display()
            ),
        }
    }
}

impl std::error::Error for SharedError {}

impl From<levee_rings::Error> for SharedError {
    fn from(e: levee_rings::Error) -> Self {
        Self::Ring(e)
    }
}

/// The overflow tier's segments, mapped.
pub struct Shared {
    pub dir: PathBuf,
    pub geometry: Geometry,
    pub load: Table,
    pub park: Table,
    /// One per pool; `None` for a pool whose overflow is `reject`.
    pub queues: Vec<Option<mpmc::Queue>>,
    /// Made by this process: removed when it is dropped.
    created: Vec<PathBuf>,
    remove_dir: bool,
}

impl Shared {
    /// Creates every segment for `cfg` with `forwarders` forwarders: by `levee run`. Returns the
    /// notice rings' consumer ends, `[forwarder][worker - 1]`, for the forwarders.
    pub fn create(
        cfg: &Config,
        forwarders: usize,
    ) -> Result<(Self, Vec<Vec<spsc::Consumer>>), SharedError> {
        let dir = resolve_dir(cfg);
        let made_dir = prepare_dir(&dir)?;
        let geometry = Geometry::new(cfg, forwarders);
        // Whatever is made goes again if a later step fails.
        let mut made = Made {
            paths: Vec::new(),
            dir: (made_dir && cfg.overflow.dir.is_none()).then(|| dir.clone()),
        };
        let load = Table::create(
            made.add(load_path(&dir)),
            &load_table::config(&cfg.pools, geometry.max_workers + 1),
        )?;
        let park = Table::create(made.add(park_path(&dir)), &park_config(geometry))?;
        let mut queues = Vec::with_capacity(cfg.pools.len());
        for (i, pool) in cfg.pools.iter().enumerate() {
            queues.push(if pool.overflow == Overflow::Queue {
                let config = queue_config(cfg, pool, forwarders);
                Some(mpmc::Queue::create(made.add(queue_path(&dir, i)), &config)?)
            } else {
                None
            });
        }
        let mut notices = Vec::with_capacity(forwarders);
        for f in 0..forwarders {
            let mut per_worker = Vec::with_capacity(geometry.max_workers as usize);
            for w in 1..=geometry.max_workers {
                let path = made.add(notice_path(&dir, w, f));
                per_worker.push(spsc::Consumer::create(&path, NOTICE_RING_BYTES)?);
            }
            notices.push(per_worker);
        }
        let mut effective = cfg.clone();
        effective.overflow.dir = Some(dir.clone());
        let conf = made.add(config_path(&dir));
        std::fs::write(&conf, crate::config::listing(&effective)).map_err(|error| {
            SharedError::Dir {
                dir: dir.clone(),
                error,
            }
        })?;
        let (created, remove_dir) = made.keep();
        Ok((
            Self {
                dir,
                geometry,
                load,
                park,
                queues,
                created,
                remove_dir,
            },
            notices,
        ))
    }

    /// Attaches to the segments a running levee made in `dir` for `cfg` (its `levee.conf`),
    /// waiting up to `wait` for them to appear: by a worker.
    pub fn open(dir: &Path, cfg: &Config, wait: Duration) -> Result<Self, SharedError> {
        let load = Table::open_with(load_path(dir), wait)?;
        let park = Table::open_with(park_path(dir), wait)?;
        let park_rows = park.config().rows;
        let entries = cfg.overflow.max_queue as usize;
        if entries == 0 || park_rows % entries != 0 {
            return Err(SharedError::Mismatch {
                dir: dir.to_owned(),
                what: format!("{park_rows} park entries for max_queue {entries}"),
            });
        }
        let geometry = Geometry {
            forwarders: park_rows / entries,
            park_entries: entries,
            max_workers: load.config().holders.saturating_sub(1),
        };
        if load.config().rows != load_table::config(&cfg.pools, 1).rows {
            return Err(SharedError::Mismatch {
                dir: dir.to_owned(),
                what: "the load table has rows for other pools".into(),
            });
        }
        let mut queues = Vec::with_capacity(cfg.pools.len());
        for (i, pool) in cfg.pools.iter().enumerate() {
            queues.push(if pool.overflow == Overflow::Queue {
                Some(mpmc::Queue::open_with(queue_path(dir, i), wait)?)
            } else {
                None
            });
        }
        Ok(Self {
            dir: dir.to_owned(),
            geometry,
            load,
            park,
            queues,
            created: Vec::new(),
            remove_dir: false,
        })
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        for path in &self.created {
            let _ = std::fs::remove_file(path);
        }
        if self.remove_dir {
            // Workers' sockets, if any are left, go too.
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Paths made so far, removed on drop unless kept.
struct Made {
    paths: Vec<PathBuf>,
    dir: Option<PathBuf>,
}

impl Made {
    fn add(&mut self, path: PathBuf) -> PathBuf {
        self.paths.push(path.clone());
        path
    }

    fn keep(mut self) -> (Vec<PathBuf>, bool) {
        let dir = self.dir.take().is_some();
        (std::mem::take(&mut self.paths), dir)
    }
}

impl Drop for Made {
    fn drop(&mut self) {
        for path in &self.paths {
            let _ = std::fs::remove_file(path);
        }
        if let Some(dir) = &self.dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

fn park_config(g: Geometry) -> levee_rings::table::Config {
    levee_rings::table::Config {
        rows: (g.forwarders * g.park_entries).max(1),
        holders: 0,
        words: 1,
        padded: false,
    }
}

fn queue_config(cfg: &Config, _pool: &PoolConfig, forwarders: usize) -> mpmc::Config {
    let max_queue = cfg.overflow.max_queue as usize;
    mpmc::Config {
        // Room for every forwarder racing past max_queue's check at once.
        capacity: (max_queue + forwarders).next_power_of_two().max(2),
        max_record: TICKET_LEN,
        dead_letter_capacity: (max_queue / 8).next_power_of_two().clamp(16, 4096),
        max_attempts: cfg.overflow.max_attempts,
        // Each forwarder produces, each worker consumes, `levee run` reads dead letters.
        max_handles: (forwarders as u32 + cfg.overflow.max_workers + 2)
            .min(mpmc::MAX_HANDLES_LIMIT),
    }
}

/// Makes `dir` (mode 0700) or checks the one that is there: a segment in it that a live process
/// uses means another levee runs there; stale ones are removed. Returns whether it was made.
fn prepare_dir(dir: &Path) -> Result<bool, SharedError> {
    use std::os::unix::fs::DirBuilderExt;
    let err = |error| SharedError::Dir {
        dir: dir.to_owned(),
        error,
    };
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => return Ok(true),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(err(e)),
    }
    for entry in std::fs::read_dir(dir).map_err(err)? {
        let path = entry.map_err(err)?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let segment = name == "load"
            || name == "park"
            || name.starts_with("queue.")
            || name.starts_with("notice.");
        if segment {
            match segment::inspect(&path) {
                Ok(info) if !info.is_stale() => {
                    return Err(SharedError::InUse {
                        dir: dir.to_owned(),
                    });
                }
                _ => std::fs::remove_file(&path).map_err(err)?,
            }
        } else if name == "levee.conf" || name.ends_with(".sock") {
            std::fs::remove_file(&path).map_err(err)?;
        }
    }
    Ok(false)
}
