//! The `levee` command: run a configuration, check one, or show its effective values.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex, PoisonError};

use clap::{Parser, Subcommand};
use nix::sys::signal::{SigSet, Signal};
use tracing::{error, info, warn};

use levee::config::{self, Config};
use levee::ctl::{Live, Server};
use levee::demo;
use levee::engine::{Engine, Options};
use levee::metrics::Endpoint;
use levee::pool::carried::Carried;

/// Exit status for a configuration that does not validate.
const EXIT_CONFIG: u8 = 2;
/// Exit status for a failure at or after start.
const EXIT_FAILURE: u8 = 1;

#[derive(Parser)]
#[command(
    name = "levee",
    version,
    about = "L4 TCP load balancer with thread-per-core io_uring forwarders",
    long_about = "L4 TCP load balancer with thread-per-core io_uring forwarders.\n\n\
                  Without a command, levee runs a built-in configuration: it listens on \
                  127.0.0.1:8080 in front of three small HTTP backends it starts on loopback."
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run a configuration until SIGTERM or Ctrl-C, then drain and exit.
    Run {
        /// Configuration file in sysctl.conf syntax.
        #[arg(short = 'c', long = "config", value_name = "FILE")]
        config: PathBuf,
    },
    /// Validate a configuration and exit: 0 when valid, 2 with every error listed otherwise.
    Check {
        #[arg(short = 'c', long = "config", value_name = "FILE")]
        config: PathBuf,
    },
    /// Print every key with its effective value (`-a` in sysctl terms), defaults included.
    Show {
        /// Configuration file; without it, the built-in default is shown.
        #[arg(short = 'c', long = "config", value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Serve connections from a running levee's overflow queue: attach to it, take queued
    /// connections over when a backend has room, and relay them. `levee run` starts
    /// `overflow.workers` of these itself; more may be started on their own.
    Worker {
        /// The running levee's overflow directory (`stats.overflow.dir` in `levee ctl -a`).
        #[arg(long = "dir", value_name = "DIR", conflicts_with = "config")]
        dir: Option<PathBuf>,
        /// Configuration file of the running levee: its overflow.dir, or for `auto`, its
        /// ctl.socket, which says where its overflow directory is.
        #[arg(short = 'c', long = "config", value_name = "FILE")]
        config: Option<PathBuf>,
        /// Pin the worker to this CPU.
        #[arg(long = "cpu", value_name = "N")]
        cpu: Option<usize>,
    },
    /// Upgrade a running levee to the binary now installed where it was started from (and its
    /// configuration file as it is now): the same handover as `levee ctl --reload`, with no
    /// connection dropped. Waits until the new levee serves, or says why it was refused.
    Upgrade {
        #[command(flatten)]
        levee: Running,
    },
    /// Read or change a running levee, like sysctl: `levee ctl -a`, `levee ctl KEY`,
    /// `levee ctl -w KEY=VALUE`, `levee ctl -p FILE`.
    Ctl {
        #[command(flatten)]
        levee: Running,
        /// Every key with its value in effect, then the live counters (stats.*).
        #[arg(short = 'a', long = "all", conflicts_with_all = ["write", "load"])]
        all: bool,
        /// Print values only, without keys.
        #[arg(short = 'n', long = "values")]
        values: bool,
        /// Set: each argument is KEY=VALUE; only runtime keys change.
        #[arg(short = 'w', long = "write", conflicts_with = "load")]
        write: bool,
        /// Apply every key of a file in configuration syntax whose value differs.
        #[arg(short = 'p', long = "load", value_name = "FILE")]
        load: Option<PathBuf>,
        /// Reload: the running levee re-reads its configuration file and a new levee process
        /// takes its listening sockets over (with the binary now on disk: an upgrade too);
        /// waits until it serves, or says why it was refused.
        #[arg(long = "reload", conflicts_with_all = ["all", "write", "load"])]
        reload: bool,
        /// Keys to read (or KEY=VALUE pairs with -w).
        args: Vec<String>,
    },
    /// Watch a running levee: per backend its state, weight and connections; per pool its
    /// queue; in total, connections and bytes per second. Redrawn every interval until Ctrl-C.
    Top {
        #[command(flatten)]
        levee: Running,
        /// Time between two readings, from 100ms to 1h.
        #[arg(
            long = "interval",
            value_name = "DURATION",
            default_value = "1s",
            value_parser = levee::top::parse_interval
        )]
        interval: std::time::Duration,
        /// Print one frame without escapes and exit (two readings, an interval apart).
        #[arg(long = "once")]
        once: bool,
    },
}

/// Which running levee `ctl`, `top` and `upgrade` talk to.
#[derive(clap::Args, Debug)]
struct Running {
    /// Control socket of the running levee (its ctl.socket).
    #[arg(
        short = 's',
        long = "socket",
        value_name = "PATH",
        conflicts_with = "config"
    )]
    socket: Option<PathBuf>,
    /// Take the control socket from this configuration file's ctl.socket.
    #[arg(short = 'c', long = "config", value_name = "FILE")]
    config: Option<PathBuf>,
}

impl Running {
    /// The control socket `command` (`levee ctl`, `levee top`) talks to: `-s`, or the
    /// `ctl.socket` of `-c FILE`, or the default.
    fn socket(self, command: &str) -> Result<PathBuf, ExitCode> {
        Ok(match (self.socket, self.config) {
            (Some(s), _) => s,
            (None, Some(path)) => match load(&path)?.ctl.socket {
                Some(s) => s,
                None => {
                    eprintln!(
                        "{command}: {}: ctl.socket is none: runtime control is off",
                        path.display()
                    );
                    return Err(ExitCode::from(EXIT_CONFIG));
                }
            },
            (None, None) => config::CtlConfig::default().socket.unwrap_or_default(),
        })
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The stop signals are blocked only by the commands that wait for them (`run`, `worker`),
    // and only once their configuration is read: every other command, and a `run` still
    // reading a slow file, dies of Ctrl-C as any command does.
    match cli.command {
        None => match block_stop_signals() {
            Ok(()) => run_builtin(),
            Err(code) => code,
        },
        Some(Command::Run { config }) => {
            // First, while this process has one thread: a levee started to take over from
            // another (reload, upgrade) receives its sockets.
            let inherited = match levee::handover::Inherited::receive() {
                Ok(inherited) => inherited,
                Err(e) => {
                    eprintln!("levee: {e}");
                    return ExitCode::from(EXIT_FAILURE);
                }
            };
            match load(&config).and_then(|cfg| {
                footprint(&config, &cfg)?;
                Ok(cfg)
            }) {
                Ok(cfg) => {
                    if let Err(code) = block_stop_signals() {
                        return code;
                    }
                    let set_level = init_logging(&cfg.log);
                    run(&cfg, Some(&config), inherited, set_level)
                }
                Err(code) => code,
            }
        }
        Some(Command::Check { config }) => match load(&config) {
            Ok(cfg) => {
                let footprint = match footprint(&config, &cfg) {
                    Ok(footprint) => footprint,
                    Err(code) => return code,
                };
                if let Some(path) = &cfg.ctl.socket
                    && let Err(e) = levee::ctl::check_socket_path(path)
                {
                    eprintln!("{}: ctl.socket {e}", config.display());
                    return ExitCode::from(EXIT_CONFIG);
                }
                let backends: usize = cfg.pools.iter().map(|p| p.backends.len()).sum();
                println!(
                    "{}: ok ({} listeners, {} pools, {} backends)",
                    config.display(),
                    cfg.listeners.len(),
                    cfg.pools.len(),
                    backends
                );
                println!("memory: {footprint}");
                ExitCode::SUCCESS
            }
            Err(code) => code,
        },
        Some(Command::Worker { dir, config, cpu }) => worker(dir, config, cpu),
        Some(Command::Show { config: Some(path) }) => match load(&path) {
            Ok(cfg) => {
                print!("{}", config::listing(&cfg));
                ExitCode::SUCCESS
            }
            Err(code) => code,
        },
        Some(Command::Ctl {
            levee,
            all,
            values,
            write,
            load,
            reload,
            args,
        }) => match levee.socket("levee ctl") {
            Ok(socket) if reload => ExitCode::from(levee::ctl::reload(&socket)),
            Ok(socket) => ctl(&socket, all, values, write, load, args),
            Err(code) => code,
        },
        Some(Command::Upgrade { levee }) => levee.socket("levee upgrade").map_or_else(
            |code| code,
            |socket| ExitCode::from(levee::ctl::reload(&socket)),
        ),
        Some(Command::Top {
            levee,
            interval,
            once,
        }) => levee.socket("levee top").map_or_else(
            |code| code,
            |socket| {
                ExitCode::from(levee::top::run(&levee::top::Options {
                    socket,
                    interval,
                    once,
                }))
            },
        ),
        Some(Command::Show { config: None }) => {
            let placeholders: Vec<std::net::SocketAddr> = (1..=DEMO_BACKENDS as u16)
                .map(|port| ([127, 0, 0, 1], port).into())
                .collect();
            match builtin_config(&placeholders) {
                Ok(cfg) => {
                    println!(
                        "# built-in default; the demo backends get ephemeral ports at start \
                         (shown here as 1, 2, 3)"
                    );
                    print!("{}", config::listing(&cfg));
                    ExitCode::SUCCESS
                }
                Err(code) => code,
            }
        }
    }
}

/// What `cfg` will map, refused (exit 2) when it is more than this host's memory: `levee run`
/// would otherwise fail with "Cannot allocate memory" in a forwarder's start.
fn footprint(path: &Path, cfg: &Config) -> Result<levee::forward::Footprint, ExitCode> {
    use levee::forward::{Bytes, Footprint, host_memory};
    let forwarders = cfg.engine.cores.resolve().map_or(1, |c| c.len().max(1));
    let footprint = Footprint::of(cfg, forwarders);
    match host_memory() {
        Some(host) if footprint.total() > host => {
            eprintln!(
                "{}: engine.buffers x engine.buffer_size: this configuration maps {footprint}, \
                 more than this host's {} of memory; lower engine.buffers or \
                 engine.buffer_size, or run fewer forwarders (engine.cores)",
                path.display(),
                Bytes(host)
            );
            Err(ExitCode::from(EXIT_CONFIG))
        }
        _ => Ok(footprint),
    }
}

fn load(path: &Path) -> Result<Config, ExitCode> {
    config::load(path).map_err(|errors| {
        eprintln!("{errors}");
        ExitCode::from(EXIT_CONFIG)
    })
}

const DEMO_BACKENDS: usize = 3;
/// Connections levee opens to each demo backend at once in the built-in default.
const DEMO_MAX_CONNS: u32 = 8;

/// The built-in default, with the demo backends' addresses filled in. It goes through the same
/// parser as any file, so it is checked like one.
fn builtin_config(backends: &[std::net::SocketAddr]) -> Result<Config, ExitCode> {
    let mut text = String::from(
        "# levee built-in default: one listener in front of the built-in demo backends.\n\
         # The demo backends take 1024 connections each; no need for more slots per forwarder.\n\
         engine.max_conns = 1024\n\
         listener.default.addr = 127.0.0.1:8080\n\
         listener.default.pool = demo\n\
         # Round robin, so that successive requests from one client visit every backend.\n\
         pool.demo.balance = round_robin\n\
         # Small caps, so that a burst overflows into the queue and one worker drains it.\n\
         overflow.workers = 1\n",
    );
    for (i, addr) in backends.iter().enumerate() {
        text.push_str(&format!("pool.demo.backend.demo{}.addr = {addr}\n", i + 1));
        text.push_str(&format!(
            "pool.demo.backend.demo{}.max_conns = {DEMO_MAX_CONNS}\n",
            i + 1
        ));
    }
    config::parse(&text, "<built-in>").map_err(|errors| {
        eprintln!("{errors}");
        ExitCode::from(EXIT_CONFIG)
    })
}

fn ctl(
    socket: &Path,
    all: bool,
    values: bool,
    write: bool,
    load_file: Option<PathBuf>,
    args: Vec<String>,
) -> ExitCode {
    let action = match (all, write, load_file) {
        (true, _, _) => levee::ctl::Action::List,
        (_, _, Some(file)) => levee::ctl::Action::Load(file),
        (_, true, None) => levee::ctl::Action::Set(args),
        (false, false, None) if !args.is_empty() => levee::ctl::Action::Get(args),
        _ => {
            eprintln!("levee ctl: say what to do: -a, KEY..., -w KEY=VALUE... or -p FILE");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    ExitCode::from(levee::ctl::run_client(socket, &action, values))
}

fn run_builtin() -> ExitCode {
    let set_level = init_logging(&config::LogConfig::default());
    let backends = match demo::start(DEMO_BACKENDS) {
        Ok(b) => b,
        Err(e) => {
            error!(error = %e, "cannot start the built-in demo backends");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    let addrs: Vec<_> = backends.iter().map(|b| b.addr).collect();
    let cfg = match builtin_config(&addrs) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let started: Vec<String> = backends
        .iter()
        .map(|b| format!("{} on {}", b.name, b.addr))
        .collect();
    info!("no configuration given: running the built-in default");
    info!(
        "started {} built-in HTTP backends: {}",
        backends.len(),
        started.join(", ")
    );
    run(&cfg, None, None, set_level)
}

/// Starts the engine on `cfg`, waits for SIGTERM or SIGINT, drains and exits.
/// Runs levee until a stop signal, or until a reload (SIGHUP, `levee ctl --reload`) hands its
/// sockets to a new levee. `config` is the file, `None` for the built-in default; `inherited`
/// what a levee this one replaces handed over.
fn run(
    cfg: &Config,
    config: Option<&Path>,
    mut inherited: Option<levee::handover::Inherited>,
    set_level: LevelSetter,
) -> ExitCode {
    let builtin = config.is_none();
    // The binary as started, read before anyone can replace the file: a reload starts what is
    // at this path then, which makes a reload after installing a new binary an upgrade.
    let exe = std::env::current_exe().ok();
    // Before anything starts: a path levee must not replace stops it here, not after a reload
    // of traffic.
    if let Some(path) = &cfg.ctl.socket
        && let Err(e) = levee::ctl::check_socket_path(path)
    {
        error!("ctl.socket {e}");
        return ExitCode::from(EXIT_FAILURE);
    }
    raise_fd_limit(cfg);

    if exe.is_none() {
        warn!("cannot find levee's own binary: no worker processes will be started, no reload");
    }
    let run_as = match account(
        "engine.user",
        cfg.engine.user.as_deref(),
        cfg.engine.group.as_deref(),
    ) {
        Ok((user, gid)) => match (user.map(|u| u.uid), gid) {
            (None, None) => None,
            (uid, gid) => Some((
                uid.unwrap_or_else(nix::unistd::getuid).as_raw(),
                gid.unwrap_or_else(nix::unistd::getgid).as_raw(),
            )),
        },
        Err(e) => {
            error!("{e}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    let options = Options {
        worker_exe: exe.clone(),
        run_as,
    };
    let mut no_sockets = Vec::new();
    let sockets = inherited
        .as_mut()
        .map_or(&mut no_sockets, |i| &mut i.listeners);
    let engine = match Engine::start_from(cfg, &options, sockets) {
        Ok(e) => e,
        Err(e) => {
            error!("{e}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    for (name, addr, _) in sockets.drain(..) {
        info!("listener {name} on {addr} is no longer configured: its socket closes");
    }
    for (l, addr) in cfg.listeners.iter().zip(engine.listener_addrs()) {
        let pool = &cfg.pools[l.pool];
        info!(
            "listener {} on {addr} -> pool {} ({} backends, balance {})",
            l.name,
            pool.name,
            pool.backends.len(),
            pool.balance
        );
    }
    let reload = Arc::new(levee::ctl::Reload::new(Box::new(|| {
        // To the process, not this thread (raise): the main thread's sigwait takes it.
        nix::sys::signal::kill(nix::unistd::Pid::this(), Signal::SIGHUP)
            .map_err(|e| format!("cannot signal a reload: {e}"))
    })));
    let live = Live::new(
        cfg.clone(),
        engine.pools().to_vec(),
        engine.tunables().clone(),
        engine.counters(),
        Box::new(move |level| set_level(level)),
        engine.overflow().map(|tier| levee::ctl::Overflow {
            tier: tier.clone(),
            workers: engine.worker_target(),
        }),
    );
    let live = live
        .with_gates(engine.gates().to_vec())
        .with_threads(engine.threads().clone());
    let live = Arc::new(if builtin {
        live
    } else {
        live.with_reload(reload.clone())
    });
    let inherited_ctl = inherited.as_mut().and_then(|i| i.ctl.take());
    let control = cfg.ctl.socket.as_deref().map(|path| {
        match inherited_ctl {
            Some(fd) => Server::adopt(path, fd, live.clone()),
            None => Server::start(path, live.clone()),
        }
        .map_err(|e| format!("ctl.socket {}: {e}", path.display()))
    });
    // The metrics socket a levee being replaced handed over, where the address is the same.
    let inherited_metrics = inherited
        .as_mut()
        .and_then(|i| i.metrics.take())
        .filter(|(addr, _)| cfg.stats.listen == Some(*addr));
    let metrics = cfg.stats.listen.map(|addr| {
        match inherited_metrics {
            Some((_, fd)) => Endpoint::adopt(fd, live.clone()),
            None => Endpoint::start(addr, live.clone()),
        }
        .map_err(|e| format!("stats.listen {addr}: cannot serve /metrics: {e}"))
    });
    // An operator who configured runtime control or metrics gets them or a refusal, not a
    // levee they cannot reach or see.
    let (mut control, mut metrics) = match (control.transpose(), metrics.transpose()) {
        (Ok(control), Ok(metrics)) => (control, metrics),
        (Err(e), _) | (_, Err(e)) => {
            error!("{e}");
            engine.stop();
            let _ = engine.join();
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    if builtin {
        let addr = engine.listener_addrs()[0];
        info!("try it: curl http://{addr}/");
        info!("load it: wrk -t1 -c50 -d10s --latency http://{addr}/");
        info!(
            "overflow it: each demo backend takes {DEMO_MAX_CONNS} connections from levee and \
             {} ms per answer; a burst of new connections beyond that waits in the queue: \
             wrk -t1 -c200 -d10s -H 'Connection: close' http://{addr}/",
            demo::THINK.as_millis()
        );
        if let Some(socket) = &cfg.ctl.socket {
            info!(
                "watch the queue drain: watch -n 0.5 'levee ctl -s {} -a | grep queue'",
                socket.display()
            );
        }
        info!(
            "run your own configuration with: levee run -c FILE (levee check -c FILE validates it)"
        );
    }
    if let Some(path) = control.as_ref().and(cfg.ctl.socket.as_deref())
        && let Err(e) = own_control_socket(path, &cfg.ctl)
    {
        error!("{e}");
        engine.stop();
        let _ = engine.join();
        return ExitCode::from(EXIT_FAILURE);
    }
    // Every socket is bound: from here on levee needs no privilege it started with.
    if let Err(e) = drop_privileges(cfg) {
        error!("{e}");
        engine.stop();
        let _ = engine.join();
        return ExitCode::from(EXIT_FAILURE);
    }
    let took_over = inherited.is_some();
    // The connections of the levee replaced (and of any it replaced that still drains).
    let mut carried: Option<Arc<Mutex<Carried>>> = None;
    if let Some(mut inherited) = inherited {
        // Its connections count against the backends' caps here until it has exited.
        let followed = Carried::new(
            std::mem::take(&mut inherited.loads),
            &inherited.rows,
            engine.pools(),
        );
        // The levee this one replaces stops accepting once it reads this.
        match inherited.ready() {
            Ok(predecessor) => {
                info!(
                    backends = followed.len(),
                    connections = followed.carried(),
                    "took over the listening sockets: the levee replaced drains and exits, its \
                     connections counted against the backends' max_conns here until then"
                );
                let followed = Arc::new(Mutex::new(followed));
                follow_predecessor(predecessor, followed.clone(), engine.mailbox());
                carried = Some(followed);
            }
            Err(e) => warn!(error = %e, "cannot tell the levee replaced that this one serves"),
        }
    }
    // Every forwarder listens and the control socket answers: ready, for systemd. A levee that
    // took over says it is the service's main process now.
    let ready = if took_over {
        format!("MAINPID={}\nREADY=1", std::process::id())
    } else {
        "READY=1".to_string()
    };
    tell_systemd(&ready);
    info!(
        "Ctrl-C or SIGTERM stops accepting and drains connections in flight; SIGHUP reloads {}",
        config.map_or("(not the built-in default)".to_string(), |c| c
            .display()
            .to_string())
    );

    loop {
        match run_signals().wait() {
            Ok(Signal::SIGHUP) => {
                let Some(path) = config else {
                    warn!("SIGHUP: the built-in default has no file to reload");
                    reload.failed("the built-in default has no file to reload");
                    continue;
                };
                info!(config = %path.display(), "reloading: a new levee takes over if the file is good");
                tell_systemd(&format!(
                    "RELOADING=1\nMONOTONIC_USEC={}",
                    levee::notify::monotonic_usec()
                ));
                match hand_over(
                    path,
                    exe.as_deref(),
                    &engine,
                    control.as_ref(),
                    metrics.as_ref(),
                    carried.as_deref(),
                ) {
                    Ok((pid, successor)) => {
                        engine.move_queue_to(Arc::new(successor));
                        // The new levee follows what this one followed.
                        if let Some(c) = &carried {
                            c.lock().unwrap_or_else(PoisonError::into_inner).hand_on();
                        }
                        info!(
                            new = pid,
                            drain_timeout = ?cfg.engine.drain_timeout,
                            "reloaded: levee {pid} serves now; this one drains what it has and exits"
                        );
                        if let Some(c) = control.take() {
                            c.release();
                        }
                        // Scrapers reach the new levee only (it holds the socket too).
                        drop(metrics.take());
                        break;
                    }
                    Err(e) => {
                        error!("reload refused, the running configuration stays: {e}");
                        reload.failed(&e);
                        tell_systemd("READY=1");
                    }
                }
            }
            Ok(sig) => {
                tell_systemd("STOPPING=1");
                info!(
                    signal = %sig,
                    drain_timeout = ?cfg.engine.drain_timeout,
                    "stopping: no new connections; draining those in flight (signal again to close them now)"
                );
                break;
            }
            Err(e) => {
                warn!(error = %e, "waiting for signals failed; stopping");
                break;
            }
        }
    }
    engine.stop();
    let stopper = engine.stopper();
    // A second signal cuts the drain short. The thread dies with the process.
    let _ = std::thread::Builder::new()
        .name("levee-signals".into())
        .spawn(move || {
            if let Ok(sig) = stop_signals().wait() {
                warn!(signal = %sig, "stopping now: closing connections still in flight");
                stopper.stop_now();
            }
        });
    match engine.join() {
        Ok(totals) => {
            info!("stopped: {totals}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            error!("{e}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

/// `levee worker`: finds the running levee's overflow directory, reads the configuration it
/// runs with from there, and serves its queues until SIGTERM or until that levee stops.
fn worker(dir: Option<PathBuf>, cfg_path: Option<PathBuf>, cpu: Option<usize>) -> ExitCode {
    let dir = match (dir, cfg_path) {
        (Some(dir), _) => dir,
        (None, Some(path)) => {
            let cfg = match load(&path) {
                Ok(cfg) => cfg,
                Err(code) => return code,
            };
            match (&cfg.overflow.dir, &cfg.ctl.socket) {
                (Some(dir), _) => dir.clone(),
                (None, Some(socket)) => match levee::ctl::query(socket, "stats.overflow.dir") {
                    Ok(dir) => PathBuf::from(dir),
                    Err(e) => {
                        eprintln!(
                            "levee worker: {}: overflow.dir is auto, and the levee on {} \
                                 cannot say where it is: {e}",
                            path.display(),
                            socket.display()
                        );
                        return ExitCode::from(EXIT_FAILURE);
                    }
                },
                (None, None) => {
                    eprintln!(
                        "levee worker: {}: overflow.dir is auto and ctl.socket is none: set \
                         overflow.dir, or give the directory with --dir",
                        path.display()
                    );
                    return ExitCode::from(EXIT_CONFIG);
                }
            }
        }
        (None, None) => {
            eprintln!("levee worker: say which levee to serve: --dir DIR or -c FILE");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let conf = dir.join("levee.conf");
    let cfg = match load(&conf) {
        Ok(cfg) => cfg,
        Err(code) => return code,
    };
    if let Err(code) = block_stop_signals() {
        return code;
    }
    let _ = init_logging(&cfg.log);
    // Its open-file limit counts only the connections it relays: it parks no clients.
    let mut relays_only = cfg.clone();
    relays_only
        .pools
        .iter_mut()
        .for_each(|p| p.overflow = config::Overflow::Reject);
    raise_fd_limit_for(1, &relays_only);
    let engine = match Engine::start_worker(&cfg, &dir, cpu) {
        Ok(e) => e,
        Err(e) => {
            error!("{e}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    let stopper = engine.stopper();
    // The first signal drains, a second closes what is left. The thread dies with the process.
    let _ = std::thread::Builder::new()
        .name("levee-signals".into())
        .spawn(move || {
            if let Ok(sig) = stop_signals().wait() {
                info!(signal = %sig, "worker stopping: no new connections from the queue");
                stopper.stop();
            }
            if let Ok(sig) = stop_signals().wait() {
                warn!(signal = %sig, "worker stopping now");
                stopper.stop_now();
            }
        });
    match engine.join() {
        Ok(totals) => {
            info!("worker stopped: {totals}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            error!("{e}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

/// Checks `path` as `levee check` would and starts a levee on it that takes over this one's
/// sockets; its pid once it serves, and where to send the clients queued here.
fn hand_over(
    path: &Path,
    exe: Option<&Path>,
    engine: &Engine,
    control: Option<&Server>,
    metrics: Option<&Endpoint>,
    carried: Option<&Mutex<Carried>>,
) -> Result<(u32, levee::handover::Successor), String> {
    use levee::forward::{Bytes, Footprint, host_memory};
    let exe = exe.ok_or("levee cannot find its own binary")?;
    let cfg = config::load(path).map_err(|errors| errors.to_string().trim_end().to_string())?;
    let forwarders = cfg.engine.cores.resolve().map_or(1, |c| c.len().max(1));
    let footprint = Footprint::of(&cfg, forwarders);
    if let Some(host) = host_memory().filter(|&host| footprint.total() > host) {
        return Err(format!(
            "{}: this configuration maps {footprint}, more than this host's {}",
            path.display(),
            Bytes(host)
        ));
    }
    if let Some(socket) = &cfg.ctl.socket {
        levee::ctl::check_socket_path(socket)
            .map_err(|e| format!("{}: ctl.socket {e}", path.display()))?;
    }
    // The one thing two levees cannot share while the old one drains: the directory of an
    // overflow queue in use.
    if let (Some(dir), Some(tier)) = (&cfg.overflow.dir, engine.overflow())
        && *dir == tier.shared.dir
    {
        return Err(format!(
            "{}: overflow.dir = {}: the running levee's queue is there until it has drained, so \
             a reload cannot use it; set overflow.dir = auto (or another directory) for reloads, \
             or restart levee to keep this one",
            path.display(),
            dir.display()
        ));
    }
    let kept = engine.handover_sockets();
    let sockets: Vec<levee::handover::Offered<'_>> = kept
        .iter()
        .map(|(name, addr, fd)| levee::handover::Offered {
            name,
            addr: *addr,
            fd: std::os::fd::AsFd::as_fd(fd),
        })
        .collect();
    // This levee's load tables, and those it follows for levees before it that still drain.
    let followed = carried.map_or_else(Vec::new, |c| {
        c.lock()
            .unwrap_or_else(PoisonError::into_inner)
            .handed_rows()
    });
    let loads: Vec<levee::handover::OfferedLoad<'_>> = engine
        .pools()
        .iter()
        .flat_map(|p| {
            (0..p.names.len()).filter_map(move |i| {
                Some(levee::handover::OfferedLoad {
                    pool: &p.name,
                    backend: &p.names[i],
                    addr: p.addrs[i].as_socket()?,
                    row: p.load.rows().backend(i),
                    table: p.load.table().file(),
                })
            })
        })
        .chain(followed.iter().map(|r| levee::handover::OfferedLoad {
            pool: &r.pool,
            backend: &r.backend,
            addr: r.addr,
            row: r.row,
            table: std::os::fd::AsFd::as_fd(&r.table),
        }))
        .collect();
    let (mut child, channel) = levee::handover::hand_over(
        exe,
        path,
        &sockets,
        control.and_then(Server::listener),
        metrics.map(|m| (m.local_addr(), m.listener())),
        &loads,
        std::time::Duration::from_secs(30),
    )?;
    // The new levee queues for the listeners whose pool queues there.
    let takes = cfg
        .listeners
        .iter()
        .filter(|l| cfg.pools[l.pool].overflow == config::Overflow::Queue)
        .map(|l| l.name.clone())
        .collect();
    let successor = match levee::handover::Successor::new(channel, takes) {
        Ok(s) => s,
        Err(e) => {
            // This levee keeps serving: the new one goes.
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("handover: {e}"));
        }
    };
    Ok((child.id(), successor))
}

/// Until the levee replaced has exited: takes the clients it had queued, as it sends them, into
/// this one's queue, and follows its connections to each backend in this one's load until no
/// process holds its tables any more (its workers may relay a while after it). A thread.
fn follow_predecessor(
    predecessor: levee::handover::Predecessor,
    carried: Arc<Mutex<Carried>>,
    mailbox: levee::forward::Mailbox,
) {
    use levee::pool::carried::FOLLOW_EVERY;
    let follow = {
        let carried = carried.clone();
        move || {
            carried
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .follow();
        }
    };
    let spawned = std::thread::Builder::new()
        .name("levee-predecessor".into())
        .spawn(move || {
            let (mut taken, mut refused) = (0u64, 0u64);
            let mut followed = std::time::Instant::now();
            follow();
            loop {
                // Read what it sends as it comes; follow the counts every FOLLOW_EVERY.
                let wait = FOLLOW_EVERY.saturating_sub(followed.elapsed());
                match predecessor.next_within(wait) {
                    Ok(Some(None)) => {}
                    Ok(Some(Some(client))) => {
                        match mailbox.deliver(
                            &client.listener,
                            client.queued_ns,
                            client.forwarder,
                            client.origin,
                            client.socket,
                        ) {
                            Ok(()) => taken += 1,
                            Err(e) => {
                                refused += 1;
                                warn!("the levee replaced sent {e}; refused");
                            }
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        warn!(error = %e, "the levee replaced sent something unexpected; no more queued clients from it");
                        break;
                    }
                }
                if followed.elapsed() >= FOLLOW_EVERY {
                    follow();
                    followed = std::time::Instant::now();
                }
            }
            info!(
                queued_clients_taken = taken,
                queued_clients_refused = refused,
                "the levee replaced has exited"
            );
            // Its workers may still relay: their connections count until they are gone.
            loop {
                follow();
                let mut c = carried.lock().unwrap_or_else(PoisonError::into_inner);
                if !c.predecessor_alive() {
                    c.release();
                    break;
                }
                drop(c);
                std::thread::sleep(FOLLOW_EVERY);
            }
            info!("no process of the levee replaced is left: its connections no longer count here");
        });
    if let Err(e) = spawned {
        warn!(error = %e, "cannot start a thread for the clients the levee replaced had queued");
    }
}

/// The uid and gid of user `name` and group `group` of this host, for `key`.
fn account(
    key: &str,
    user: Option<&str>,
    group: Option<&str>,
) -> Result<(Option<nix::unistd::User>, Option<nix::unistd::Gid>), String> {
    use nix::unistd::{Group, User};
    let user = match user {
        Some(name) => Some(
            User::from_name(name)
                .map_err(|e| format!("{key}: cannot look up user `{name}`: {e}"))?
                .ok_or_else(|| format!("{key}: no user `{name}` on this host"))?,
        ),
        None => None,
    };
    let gid = match group {
        Some(name) => Some(
            Group::from_name(name)
                .map_err(|e| format!("{key}: cannot look up group `{name}`: {e}"))?
                .ok_or_else(|| format!("{key}: no group `{name}` on this host"))?
                .gid,
        ),
        None => user.as_ref().map(|u| u.gid),
    };
    Ok((user, gid))
}

/// Gives the control socket the owner and group `ctl.owner` and `ctl.group` name; a group may
/// use it (mode 0660). Already theirs (a reload's levee), it is left alone.
fn own_control_socket(path: &Path, ctl: &config::CtlConfig) -> Result<(), String> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    if ctl.owner.is_none() && ctl.group.is_none() {
        return Ok(());
    }
    let (owner, _) = account("ctl.owner", ctl.owner.as_deref(), None)?;
    let (_, group) = account("ctl.group", None, ctl.group.as_deref())?;
    let uid = owner.map(|u| u.uid);
    let meta =
        std::fs::metadata(path).map_err(|e| format!("ctl.socket {}: {e}", path.display()))?;
    let same = uid.is_none_or(|u| u.as_raw() == meta.uid())
        && group.is_none_or(|g| g.as_raw() == meta.gid());
    if !same {
        nix::unistd::chown(path, uid, group).map_err(|e| {
            format!(
                "ctl.owner, ctl.group: cannot give {} to them: {e}",
                path.display()
            )
        })?;
    }
    if group.is_some() && meta.mode() & 0o777 != 0o660 {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
            .map_err(|e| format!("ctl.group: cannot make {} mode 0660: {e}", path.display()))?;
    }
    Ok(())
}

/// Runs levee as `engine.user` and `engine.group` from now on (every thread: the C library
/// changes them all). The engine gave them the overflow directory and starts its workers as
/// them. A levee already running as them (a reload's) changes nothing.
fn drop_privileges(cfg: &Config) -> Result<(), String> {
    use nix::unistd::{getgid, getuid, setgid, setgroups, setuid};
    let e = &cfg.engine;
    if e.user.is_none() && e.group.is_none() {
        return Ok(());
    }
    let (user, gid) = account("engine.user", e.user.as_deref(), e.group.as_deref())?;
    let uid = user.as_ref().map(|u| u.uid);
    if uid.is_none_or(|u| u == getuid()) && gid.is_none_or(|g| g == getgid()) {
        return Ok(());
    }
    if let Some(gid) = gid {
        setgroups(&[gid]).map_err(|err| format!("engine.group: setgroups: {err}"))?;
        setgid(gid).map_err(|err| format!("engine.group: setgid: {err}"))?;
    }
    if let Some(uid) = uid {
        setuid(uid).map_err(|err| format!("engine.user: setuid: {err}"))?;
        // A changed uid makes the process undumpable, which forbids the workers (the same user)
        // to take sockets from it with pidfd_getfd: allow it again.
        // SAFETY: prctl with PR_SET_DUMPABLE and an integer argument.
        unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 1) };
    }
    info!(
        user = e.user.as_deref().unwrap_or("(unchanged)"),
        group = e.group.as_deref().unwrap_or("(the user's)"),
        "running as engine.user from now on"
    );
    Ok(())
}

/// Tells systemd `state` where it runs levee; a failure is logged, never fatal.
fn tell_systemd(state: &str) {
    if let Err(e) = levee::notify::notify(state) {
        warn!(error = %e, "cannot notify systemd ({})", levee::notify::ENV);
    }
}

/// What `levee run` waits for: the stop signals, and SIGHUP for a reload.
fn run_signals() -> SigSet {
    let mut signals = stop_signals();
    signals.add(Signal::SIGHUP);
    signals
}

/// Blocks SIGTERM and SIGINT before any thread starts (demo backends, forwarders, the
/// supervisor), so every thread inherits the mask and only the sigwait of `run` or `worker`
/// ever sees them.
fn block_stop_signals() -> Result<(), ExitCode> {
    run_signals().thread_block().map_err(|e| {
        eprintln!("levee: cannot block SIGTERM, SIGINT and SIGHUP: {e}");
        ExitCode::from(EXIT_FAILURE)
    })
}

fn stop_signals() -> SigSet {
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGTERM);
    signals.add(Signal::SIGINT);
    signals
}

/// Changes the log level of the running process (`levee ctl -w log.level=debug`).
type LevelSetter = Arc<dyn Fn(config::LogLevel) + Send + Sync>;

/// Logs to stderr at `level`, or as RUST_LOG says when it is set.
fn init_logging(log: &config::LogConfig) -> LevelSetter {
    use tracing_subscriber::layer::{Layer, SubscriberExt};
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::{EnvFilter, fmt, reload};
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(log.level.name()));
    let (filter, handle) = reload::Layer::new(filter);
    let lines = fmt::layer().with_writer(std::io::stderr);
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(match log.format {
            config::LogFormat::Text => lines.with_ansi(std::io::stderr().is_terminal()).boxed(),
            // One object per line, its fields under "fields", no colour codes.
            config::LogFormat::Json => lines.json().with_ansi(false).boxed(),
        })
        .try_init();
    Arc::new(move |level: config::LogLevel| {
        let _ = handle.reload(EnvFilter::new(level.name()));
    })
}

/// Each connection holds two descriptors; raise the soft limit to the hard one and say so when
/// even that is short of what the configuration may use.
fn raise_fd_limit(cfg: &Config) {
    let forwarders = cfg.engine.cores.resolve().map_or(1, |c| c.len()) as u64;
    raise_fd_limit_for(forwarders, cfg);
}

/// As [`raise_fd_limit`] for `forwarders` engine threads: each holds `engine.max_conns`
/// connections of two descriptors and up to `engine.splice_pipes` pipes of two, and a
/// forwarder of `levee run` also up to `overflow.max_queue` queued clients.
fn raise_fd_limit_for(forwarders: u64, cfg: &Config) {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return;
    };
    let parked = if levee::overflow::shared::wanted(cfg) {
        u64::from(cfg.overflow.max_queue)
    } else {
        0
    };
    // Spliced directions hold a pipe each: two more descriptors, at most engine.splice_pipes.
    let pipes = if cfg.engine.splice_after > 0 {
        2 * u64::from(cfg.engine.splice_pipes)
    } else {
        0
    };
    let needed = forwarders * (u64::from(cfg.engine.max_conns) * 2 + parked + pipes)
        + forwarders * cfg.listeners.len() as u64
        + 64;
    // Raising the hard limit needs privilege; where it is refused, take what the hard limit allows.
    let target = needed.max(soft);
    let limit = if setrlimit(Resource::RLIMIT_NOFILE, target, target.max(hard)).is_ok() {
        target
    } else if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
        hard
    } else {
        soft
    };
    if needed > limit {
        let reachable = limit.saturating_sub(64) / 2;
        warn!(
            "the open-file limit ({limit}) allows about {reachable} connections in all, fewer than \
             engine.max_conns x forwarders = {}: past that, accepts fail and are counted; \
             raise `ulimit -n` to {needed} or lower engine.max_conns",
            u64::from(cfg.engine.max_conns) * forwarders
        );
    }
}
