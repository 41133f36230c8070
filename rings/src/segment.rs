//! The segment: a file holding one ring, mapped shared by every process that uses it.
//!
//! Layout of the first 128 bytes (all little-endian, native atomics):
//!
//! | offset | field |
//! |---|---|
//! | 0 | magic `b"LEVEERNG"` as u64 — stored last, with Release: this is publication |
//! | 8 | layout version (u32) |
//! | 12 | kind (u32): 1 SPSC, 2 MPMC, 3 table |
//! | 16 | total length of the segment (u64) |
//! | 24 | line size the layout is aligned to (u32), reserved (u32) |
//! | 32 | six kind-specific parameters (u64 each) |
//! | 80 | creator pid (u32), reserved (u32) |
//! | 88 | creator start time, clock ticks after boot (u64) |
//! | 96 | boot id of the creator's boot (16 bytes) |
//! | 112 | FNV-1a 64 checksum of bytes 8..112 |
//!
//! Creation is atomic: the file is made unnamed (`O_TMPFILE`, or a hidden temporary name where
//! the filesystem lacks it) with mode 0600, sized and allocated with `fallocate` (so a full disk
//! or a full /dev/shm is an error now rather than a SIGBUS later), initialised, and only then
//! linked at its path with `linkat`, which refuses to replace an existing file. An opener checks
//! the file's size before it maps anything, so a short or truncated file is refused rather than
//! faulted on. An anonymous segment ([`crate::table::Table::create_anonymous`]) is made the
//! same way and never linked.

use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::time::{Duration, Instant};

use memmap2::{MmapOptions, MmapRaw};

use crate::error::{Error, Result};
use crate::primitive::{Ordering, Shm};
use crate::sys::{self, ProcessId};

pub(crate) const MAGIC: u64 = u64::from_le_bytes(*b"LEVEERNG");
/// The layout version this build reads and writes. 2: SPSC records are published by their
/// header and followed by an end marker; MPMC slots are packed at 16-byte strides.
pub const LAYOUT_VERSION: u32 = 2;
/// Every shared field that two sides write sits on its own line of this size.
pub(crate) const LINE: usize = 128;
pub(crate) const HEADER_LEN: usize = LINE;

const OFF_MAGIC: usize = 0;
const OFF_VERSION: usize = 8;
const OFF_KIND: usize = 12;
const OFF_TOTAL: usize = 16;
const OFF_LINE: usize = 24;
const OFF_PARAMS: usize = 32;
const OFF_PID: usize = 80;
const OFF_START: usize = 88;
const OFF_BOOT: usize = 96;
const OFF_SUM: usize = 112;

/// Which ring a segment holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RingKind {
    /// A single-producer single-consumer byte ring ([`crate::spsc`]).
    Spsc,
    /// A multi-producer multi-consumer message queue ([`crate::mpmc`]).
    Mpmc,
    /// A table of rows with exact per-holder counts ([`crate::table`]).
    Table,
}

impl RingKind {
    fn code(self) -> u32 {
        match self {
            RingKind::Spsc => 1,
            RingKind::Mpmc => 2,
            RingKind::Table => 3,
        }
    }

    fn from_code(code: u32) -> Option<RingKind> {
        match code {
            1 => Some(RingKind::Spsc),
            2 => Some(RingKind::Mpmc),
            3 => Some(RingKind::Table),
            _ => None,
        }
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            RingKind::Spsc => "SPSC",
            RingKind::Mpmc => "MPMC",
            RingKind::Table => "TABLE",
        }
    }
}

/// The kind-specific part of a segment: its parameters decide its size and its lock count.
pub(crate) trait Layout: Sized {
    const KIND: RingKind;
    fn params(&self) -> [u64; 6];
    /// Checks parameters read from a header; never trusts them.
    fn from_params(params: [u64; 6]) -> std::result::Result<Self, String>;
    fn total_len(&self) -> usize;
    /// How many lock bytes (one per handle that can attach) follow the segment's end.
    fn lock_count(&self) -> u32;
}

/// The lock count and total length that parameters read from a header give, checked by the
/// layout `L` of the header's kind.
pub(crate) fn geometry<L: Layout>(params: [u64; 6]) -> std::result::Result<(u32, usize), String> {
    let l = L::from_params(params)?;
    Ok((l.lock_count(), l.total_len()))
}

/// A mapped segment. Handles share it through an `Arc`; each handle has its own open file
/// description for its locks.
pub(crate) struct Mapping {
    pub(crate) shm: Shm,
    file: File,
    path: PathBuf,
    map: MmapRaw,
}

impl Mapping {
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    pub(crate) fn file(&self) -> std::os::fd::BorrowedFd<'_> {
        std::os::fd::AsFd::as_fd(&self.file)
    }

    /// A new open file description of the same file (not a `dup`): its locks are its own.
    pub(crate) fn reopen(&self) -> Result<File> {
        let proc_path = format!("/proc/self/fd/{}", self.file.as_raw_fd());
        OpenOptions::new()
            .read(true)
            .write(true)
            .open(proc_path)
            .map_err(|e| Error::io("reopen", &self.path, e))
    }

    /// Flushes the mapping to the file's storage (msync), so queued records survive a reboot of
    /// a ring kept on a real filesystem.
    pub(crate) fn sync(&self) -> Result<()> {
        self.map
            .flush()
            .map_err(|e| Error::io("msync", &self.path, e))
    }

    /// Re-checks that the file was not truncated under us (another program could; the kernel
    /// offers no mandatory guard for named files).
    pub(crate) fn check_len(&self) -> Result<()> {
        let len = self
            .file
            .metadata()
            .map_err(|e| Error::io("stat", &self.path, e))?
            .len();
        if len < self.shm.len() as u64 {
            return Err(Error::Truncated {
                path: self.path.clone(),
                len,
                expected: self.shm.len() as u64,
            });
        }
        Ok(())
    }

    pub(crate) fn creator(&self) -> ProcessId {
        read_creator(&self.shm)
    }

    /// Whether a handle's open file description (any but the mapping's own, which never locks)
    /// holds lock byte `index`: whether that handle lives.
    pub(crate) fn is_locked(&self, index: u32) -> Result<bool> {
        sys::is_locked(&self.file, index).map_err(|e| Error::io("test lock", &self.path, e))
    }
}

fn checksum(shm: &Shm) -> u64 {
    let mut bytes = [0u8; OFF_SUM - OFF_VERSION];
    // SAFETY: the header lies within every mapping (checked at open); written before publication.
    unsafe { shm.read(OFF_VERSION, &mut bytes) };
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

fn read_u64(shm: &Shm, off: usize) -> u64 {
    let mut b = [0u8; 8];
    // SAFETY: header offsets are 8-aligned and lie within the mapping, which is at least
    // HEADER_LEN long; the header is only ever accessed in whole words.
    unsafe { shm.read(off, &mut b) };
    u64::from_le_bytes(b)
}

/// The u32 field at `off`, read as part of its 8-aligned word: the header is only ever accessed in
/// whole words.
fn read_u32(shm: &Shm, off: usize) -> u32 {
    let word = read_u64(shm, off & !7).to_le_bytes();
    let at = off & 7;
    u32::from_le_bytes([word[at], word[at + 1], word[at + 2], word[at + 3]])
}

fn read_creator(shm: &Shm) -> ProcessId {
    let mut boot_id = [0u8; 16];
    // SAFETY: as in `read_u64`.
    unsafe { shm.read(OFF_BOOT, &mut boot_id) };
    ProcessId {
        pid: read_u32(shm, OFF_PID),
        start_ticks: read_u64(shm, OFF_START),
        boot_id,
    }
}

fn map(file: &File, len: usize, path: &Path) -> Result<(MmapRaw, Shm)> {
    let map = MmapOptions::new()
        .len(len)
        .map_raw(file)
        .map_err(|e| Error::io("mmap", path, e))?;
    let base = NonNull::new(map.as_mut_ptr())
        .ok_or_else(|| Error::io("mmap", path, io::Error::other("mapping at null")))?;
    // SAFETY: the mapping is `len` bytes, page-aligned (so 128-aligned), shared and writable, and
    // lives in the `Mapping` next to this `Shm`.
    let shm = unsafe { Shm::new(base, len) };
    Ok((map, shm))
}

fn cpath(path: &Path) -> Result<CString> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| Error::InvalidConfig {
        reason: format!("path {} contains a NUL byte", path.display()),
    })
}

/// The directory a segment at `path` is made in.
fn dir_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    }
}

/// Makes an unnamed (or hidden) 0600 file in `dir`, for a segment to be known as `path` (which
/// errors name). Returns it and, for the fallback, the temporary name to unlink.
fn unnamed_file(dir: &Path, path: &Path) -> Result<(File, Option<PathBuf>)> {
    let cdir = cpath(dir)?;
    // SAFETY: a NUL-terminated path and valid flags; the returned fd is checked below.
    let fd = unsafe {
        libc::open(
            cdir.as_ptr(),
            libc::O_TMPFILE | libc::O_RDWR | libc::O_CLOEXEC,
            0o600 as libc::c_uint,
        )
    };
    if fd >= 0 {
        // SAFETY: `fd` is a fresh descriptor that nothing else owns.
        return Ok((unsafe { File::from_raw_fd(fd) }, None));
    }
    let err = io::Error::last_os_error();
    if !matches!(
        err.raw_os_error(),
        Some(libc::EOPNOTSUPP) | Some(libc::EISDIR) | Some(libc::EINVAL)
    ) {
        return Err(Error::io("create (O_TMPFILE)", path, err));
    }
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let tmp = dir.join(format!(".{name}.tmp.{}.{nanos}", std::process::id()));
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| Error::io("create temporary", &tmp, e))?;
    Ok((file, Some(tmp)))
}

fn allocate(file: &File, len: usize, path: &Path) -> Result<()> {
    file.set_len(len as u64)
        .map_err(|e| Error::io("set size", path, e))?;
    // SAFETY: fallocate on a valid fd with in-range arguments.
    let rc = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, len as libc::off_t) };
    if rc != 0 {
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EOPNOTSUPP) {
            return Err(Error::io("allocate (fallocate)", path, err));
        }
    }
    Ok(())
}

fn remove_temporary(tmp: &Option<PathBuf>) {
    if let Some(t) = tmp {
        let _ = std::fs::remove_file(t);
    }
}

/// A segment made and initialised in an unnamed file, its magic stored, not yet linked.
struct Unlinked {
    file: File,
    /// The hidden name to unlink, where the filesystem lacks `O_TMPFILE`.
    tmp: Option<PathBuf>,
    map: MmapRaw,
    shm: Shm,
}

/// Makes a segment for `layout` in an unnamed file in `dir` (`path` names it in errors), sizes,
/// allocates and initialises it, and stores its magic last.
fn build<L: Layout>(dir: &Path, path: &Path, layout: &L) -> Result<Unlinked> {
    let total = layout.total_len();
    let me = ProcessId::current().map_err(|e| Error::io("read own identity", path, e))?;
    let (file, tmp) = unnamed_file(dir, path)?;
    let result = (|| {
        allocate(&file, total, path)?;
        let (map, shm) = map(&file, total, path)?;
        let mut h = [0u8; OFF_SUM - OFF_VERSION];
        let mut put = |off: usize, bytes: &[u8]| {
            h[off - OFF_VERSION..off - OFF_VERSION + bytes.len()].copy_from_slice(bytes)
        };
        put(OFF_VERSION, &LAYOUT_VERSION.to_le_bytes());
        put(OFF_KIND, &L::KIND.code().to_le_bytes());
        put(OFF_TOTAL, &(total as u64).to_le_bytes());
        put(OFF_LINE, &(LINE as u32).to_le_bytes());
        for (i, p) in layout.params().iter().enumerate() {
            put(OFF_PARAMS + 8 * i, &p.to_le_bytes());
        }
        put(OFF_PID, &me.pid.to_le_bytes());
        put(OFF_START, &me.start_ticks.to_le_bytes());
        put(OFF_BOOT, &me.boot_id);
        // SAFETY: the header lies within the fresh mapping, which no one else can see yet.
        unsafe { shm.write(OFF_VERSION, &h) };
        let sum = checksum(&shm);
        // SAFETY: as above.
        unsafe { shm.write(OFF_SUM, &sum.to_le_bytes()) };
        // SAFETY: offset 0 is the 8-aligned magic word, accessed only atomically.
        unsafe { shm.u64(OFF_MAGIC) }.store(MAGIC, Ordering::Release);
        Ok((map, shm))
    })();
    match result {
        Ok((map, shm)) => Ok(Unlinked {
            file,
            tmp,
            map,
            shm,
        }),
        Err(e) => {
            remove_temporary(&tmp);
            Err(e)
        }
    }
}

/// Creates a segment for `layout` that is never linked into the filesystem: only this process
/// (and children it hands the mapping to) can use it. `dir` must be on a filesystem that holds
/// the segment (/dev/shm, say); where it lacks `O_TMPFILE`, the hidden temporary name is unlinked
/// at once.
pub(crate) fn create_anonymous<L: Layout>(dir: &Path, layout: &L) -> Result<Mapping> {
    let Unlinked {
        file,
        tmp,
        map,
        shm,
    } = build(dir, dir, layout)?;
    remove_temporary(&tmp);
    Ok(Mapping {
        shm,
        file,
        path: dir.to_owned(),
        map,
    })
}

/// Creates and publishes a segment for `layout` at `path`.
pub(crate) fn create<L: Layout>(path: &Path, layout: &L) -> Result<Mapping> {
    let Unlinked {
        file,
        tmp,
        map,
        shm,
    } = build(&dir_of(path), path, layout)?;
    let target = match cpath(path) {
        Ok(t) => t,
        Err(e) => {
            remove_temporary(&tmp);
            return Err(e);
        }
    };
    let linked = match &tmp {
        None => {
            let proc_path = cpath(Path::new(&format!("/proc/self/fd/{}", file.as_raw_fd())))?;
            // SAFETY: NUL-terminated paths; AT_SYMLINK_FOLLOW links the file the magic link names.
            unsafe {
                libc::linkat(
                    libc::AT_FDCWD,
                    proc_path.as_ptr(),
                    libc::AT_FDCWD,
                    target.as_ptr(),
                    libc::AT_SYMLINK_FOLLOW,
                )
            }
        }
        Some(t) => {
            let from = cpath(t)?;
            // SAFETY: NUL-terminated paths.
            unsafe { libc::link(from.as_ptr(), target.as_ptr()) }
        }
    };
    let link_err = (linked != 0).then(io::Error::last_os_error);
    remove_temporary(&tmp);
    if let Some(err) = link_err {
        if err.kind() == io::ErrorKind::AlreadyExists {
            let (creator_alive, attached) = match inspect(path) {
                Ok(info) => (info.creator_alive, info.attached > 0),
                Err(_) => (false, false),
            };
            return Err(Error::AlreadyExists {
                path: path.to_owned(),
                creator_alive,
                attached,
            });
        }
        return Err(Error::io("publish (link)", path, err));
    }
    Ok(Mapping {
        shm,
        file,
        path: path.to_owned(),
        map,
    })
}

/// What the header says, checked.
struct Header {
    kind: RingKind,
    params: [u64; 6],
    total: u64,
}

fn open_file(path: &Path, wait: Duration) -> Result<File> {
    let start = Instant::now();
    loop {
        match OpenOptions::new().read(true).write(true).open(path) {
            Ok(f) => return Ok(f),
            Err(e) if e.kind() == io::ErrorKind::NotFound && start.elapsed() < wait => {
                std::thread::sleep(Duration::from_millis(2));
            }
            Err(e) => return Err(Error::io("open", path, e)),
        }
    }
}

fn file_len(file: &File, path: &Path) -> Result<u64> {
    Ok(file
        .metadata()
        .map_err(|e| Error::io("stat", path, e))?
        .len())
}

/// Maps the header only and checks it; waits up to `wait` for publication.
fn read_header(file: &File, path: &Path, wait: Duration) -> Result<Header> {
    let start = Instant::now();
    let len = file_len(file, path)?;
    if len < HEADER_LEN as u64 {
        return Err(Error::Truncated {
            path: path.to_owned(),
            len,
            expected: HEADER_LEN as u64,
        });
    }
    let (_map, shm) = map(file, HEADER_LEN, path)?;
    loop {
        // SAFETY: the magic word is in the header, 8-aligned, only accessed atomically.
        let magic = unsafe { shm.u64(OFF_MAGIC) }.load(Ordering::Acquire);
        if magic == MAGIC {
            break;
        }
        if magic != 0 {
            return Err(Error::NotARing {
                path: path.to_owned(),
            });
        }
        if start.elapsed() >= wait {
            return Err(if wait.is_zero() {
                Error::NotARing {
                    path: path.to_owned(),
                }
            } else {
                Error::NotPublished {
                    path: path.to_owned(),
                    waited: wait,
                }
            });
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let version = read_u32(&shm, OFF_VERSION);
    if version != LAYOUT_VERSION {
        return Err(Error::Version {
            path: path.to_owned(),
            found: version,
            supported: LAYOUT_VERSION,
        });
    }
    let sum = read_u64(&shm, OFF_SUM);
    if sum != checksum(&shm) {
        return Err(Error::BadHeader {
            path: path.to_owned(),
            reason: "header checksum mismatch".into(),
        });
    }
    let kind = RingKind::from_code(read_u32(&shm, OFF_KIND)).ok_or_else(|| Error::BadHeader {
        path: path.to_owned(),
        reason: format!("unknown ring kind {}", read_u32(&shm, OFF_KIND)),
    })?;
    let line = read_u32(&shm, OFF_LINE);
    if line as usize != LINE {
        return Err(Error::BadHeader {
            path: path.to_owned(),
            reason: format!("line size {line}, expected {LINE}"),
        });
    }
    let mut params = [0u64; 6];
    for (i, p) in params.iter_mut().enumerate() {
        *p = read_u64(&shm, OFF_PARAMS + 8 * i);
    }
    Ok(Header {
        kind,
        params,
        total: read_u64(&shm, OFF_TOTAL),
    })
}

/// Opens, checks and maps the segment at `path` as a ring of kind `L`.
pub(crate) fn open<L: Layout>(path: &Path, wait: Duration) -> Result<(Mapping, L)> {
    let file = open_file(path, wait)?;
    let header = read_header(&file, path, wait)?;
    if header.kind != L::KIND {
        return Err(Error::WrongKind {
            path: path.to_owned(),
            found: header.kind.name(),
            expected: L::KIND.name(),
        });
    }
    let layout = L::from_params(header.params).map_err(|reason| Error::BadHeader {
        path: path.to_owned(),
        reason,
    })?;
    let total = layout.total_len() as u64;
    if header.total != total {
        return Err(Error::BadHeader {
            path: path.to_owned(),
            reason: format!(
                "header says {} bytes, its parameters need {total}",
                header.total
            ),
        });
    }
    let len = file_len(&file, path)?;
    if len < total {
        return Err(Error::Truncated {
            path: path.to_owned(),
            len,
            expected: total,
        });
    }
    let (map, shm) = map(&file, total as usize, path)?;
    Ok((
        Mapping {
            shm,
            file,
            path: path.to_owned(),
            map,
        },
        layout,
    ))
}

/// What [`inspect`] found in a segment's header and locks.
#[derive(Clone, Debug)]
pub struct SegmentInfo {
    /// The kind of ring.
    pub kind: RingKind,
    /// The segment's size in bytes.
    pub len: u64,
    /// Who created it.
    pub creator: ProcessId,
    /// Whether that process is still running (same boot, same pid, same start time).
    pub creator_alive: bool,
    /// How many handles (producers, consumers, readers) live processes hold now.
    pub attached: u32,
}

impl SegmentInfo {
    /// A segment is stale when its creator is gone and no live process is attached: left behind
    /// by a crash, it may still hold messages, but nothing is using it.
    pub fn is_stale(&self) -> bool {
        !self.creator_alive && self.attached == 0
    }
}

/// Reads a segment's header and counts the live handles attached to it, without attaching.
pub fn inspect(path: impl AsRef<Path>) -> Result<SegmentInfo> {
    let path = path.as_ref();
    let file = open_file(path, Duration::ZERO)?;
    let header = read_header(&file, path, Duration::ZERO)?;
    let (_map, shm) = map(&file, HEADER_LEN, path)?;
    let creator = read_creator(&shm);
    let (locks, total) =
        crate::kind_geometry(header.kind, header.params).map_err(|reason| Error::BadHeader {
            path: path.to_owned(),
            reason,
        })?;
    // The same checks of what the header claims as an opener makes: a forged length is refused
    // here too, not reported as the segment's.
    if header.total != total as u64 {
        return Err(Error::BadHeader {
            path: path.to_owned(),
            reason: format!(
                "header says {} bytes, its parameters need {total}",
                header.total
            ),
        });
    }
    let len = file_len(&file, path)?;
    if len < header.total {
        return Err(Error::Truncated {
            path: path.to_owned(),
            len,
            expected: header.total,
        });
    }
    let mut attached = 0;
    for i in 0..locks {
        if sys::is_locked(&file, i).map_err(|e| Error::io("test lock", path, e))? {
            attached += 1;
        }
    }
    Ok(SegmentInfo {
        kind: header.kind,
        len: header.total,
        creator,
        creator_alive: creator.is_alive(),
        attached,
    })
}

/// Removes the segment at `path` if it is stale (see [`SegmentInfo::is_stale`]). Returns whether
/// it was removed. A live segment is left alone. The check and the removal are not atomic: run it
/// when nothing is starting up on this segment (a process that attaches in between keeps its
/// mapping, but the path is gone).
pub fn remove_stale(path: impl AsRef<Path>) -> Result<bool> {
    let path = path.as_ref();
    let info = inspect(path)?;
    if !info.is_stale() {
        return Ok(false);
    }
    std::fs::remove_file(path).map_err(|e| Error::io("remove", path, e))?;
    Ok(true)
}
