//! Harness for end-to-end tests: real revtun binaries, real sockets,
//! loopback only, port 0 everywhere, every child killed by its own PID.
//!
//! The binaries must be built first (`cargo build --workspace --bins`, part
//! of the README's test command).

use anyhow::{anyhow, bail, Context, Result};
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Path of a workspace binary next to the test executable's profile dir.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // Next to a binary (target/<profile>/revtun-perf), or one level up
    // from a test (target/<profile>/deps/<test>).
    let here = exe.parent().expect("executable directory");
    let path = [here, here.parent().unwrap_or(here)]
        .iter()
        .map(|d| d.join(name))
        .find(|p| p.exists())
        .unwrap_or_else(|| here.join(name));
    assert!(
        path.exists(),
        "{} is missing: run 'cargo build --workspace --bins' before the tests",
        path.display()
    );
    path
}

/// As [`run`], and an error naming the command and its stderr when it
/// does not exit successfully.
pub fn run_ok(cmd: &mut Command, limit: Duration) -> Result<Output> {
    let o = run(cmd, limit)?;
    anyhow::ensure!(o.status.success(), "{cmd:?}: {}", stderr(&o));
    Ok(o)
}

/// Runs `cmd` to completion within `limit`, its output captured.
pub fn run(cmd: &mut Command, limit: Duration) -> Result<Output> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("spawn {cmd:?}"))?;
    let out = child.stdout.take().expect("piped stdout");
    let err = child.stderr.take().expect("piped stderr");
    let t_out = std::thread::spawn(move || read_all(out));
    let t_err = std::thread::spawn(move || read_all(err));
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break s;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{cmd:?} did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Ok(Output {
        status,
        stdout: t_out.join().unwrap_or_default(),
        stderr: t_err.join().unwrap_or_default(),
    })
}

fn read_all(mut r: impl Read) -> Vec<u8> {
    let mut v = Vec::new();
    let _ = r.read_to_end(&mut v);
    v
}

/// Text of a command's stderr.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A child process killed (by its own PID) when dropped, with its stderr
/// collected in the background.
#[derive(Debug)]
pub struct Proc {
    child: Mutex<Child>,
    log: Arc<Mutex<String>>,
    /// Lines the process printed on stdout.
    pub stdout: Arc<Mutex<Vec<String>>>,
}

impl Proc {
    /// Starts `cmd` with piped output.
    pub fn spawn(cmd: &mut Command) -> Result<Proc> {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("spawn {cmd:?}"))?;
        let log = Arc::new(Mutex::new(String::new()));
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let err = child.stderr.take().expect("piped stderr");
        let out = child.stdout.take().expect("piped stdout");
        let l = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                let mut g = l.lock().unwrap_or_else(|p| p.into_inner());
                g.push_str(&line);
                g.push('\n');
            }
        });
        let s = stdout.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                s.lock().unwrap_or_else(|p| p.into_inner()).push(line);
            }
        });
        Ok(Proc {
            child: Mutex::new(child),
            log,
            stdout,
        })
    }

    /// Everything the process wrote to stderr so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Waits until a stdout line contains `needle`; returns that line.
    pub fn wait_stdout(&self, needle: &str, limit: Duration) -> Result<String> {
        self.wait_line(limit, |l| l.contains(needle))
            .with_context(|| format!("no stdout line with {needle:?}"))
    }

    /// Waits until a stdout line starts with `prefix`; returns that line.
    pub fn wait_stdout_prefix(&self, prefix: &str, limit: Duration) -> Result<String> {
        self.wait_line(limit, |l| l.starts_with(prefix))
            .with_context(|| format!("no stdout line starting with {prefix:?}"))
    }

    fn wait_line(&self, limit: Duration, want: impl Fn(&str) -> bool) -> Result<String> {
        self.wait_for(limit, |p| {
            p.stdout
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .find(|l| want(l))
                .cloned()
        })
        .with_context(|| format!("stderr:\n{}", self.log()))
    }

    /// Waits until the stderr log contains `needle`.
    pub fn wait_log(&self, needle: &str, limit: Duration) -> Result<()> {
        self.wait_for(limit, |p| p.log().contains(needle).then_some(()))
            .with_context(|| format!("no log line with {needle:?}; log:\n{}", self.log()))
    }

    fn wait_for<T>(&self, limit: Duration, mut f: impl FnMut(&Proc) -> Option<T>) -> Result<T> {
        let start = Instant::now();
        loop {
            if let Some(v) = f(self) {
                return Ok(v);
            }
            if let Some(status) = self.try_wait() {
                // Give the reader threads a moment to drain.
                std::thread::sleep(Duration::from_millis(50));
                return f(self).ok_or_else(|| anyhow!("process exited ({status})"));
            }
            if start.elapsed() > limit {
                bail!("timed out after {limit:?}");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Kills the child (SIGKILL) and reaps it.
    pub fn kill(&self) {
        let mut child = self.lock();
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Lines on stdout so far that contain `needle`.
    pub fn count_stdout(&self, needle: &str) -> usize {
        self.stdout
            .lock()
            .map(|l| l.iter().filter(|x| x.contains(needle)).count())
            .unwrap_or(0)
    }

    /// The child's PID.
    pub fn pid(&self) -> u32 {
        self.lock().id()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Child> {
        self.child.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Returns the exit status if the process has exited.
    pub fn try_wait(&self) -> Option<std::process::ExitStatus> {
        self.lock().try_wait().ok().flatten()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let mut child = self.lock();
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// A host: state directory initialised by the keytool, control running on
/// a loopback port chosen by the kernel.
#[derive(Debug)]
pub struct Host {
    /// Temporary directory holding host state and keyfiles.
    pub dir: tempfile::TempDir,
    /// The control process.
    pub control: Proc,
    /// Where control listens.
    pub addr: SocketAddr,
}

/// Runs `revtun-keytool --state-dir DIR ARGS`, bounded.
pub fn keytool(state: &Path, args: &[&str]) -> Result<Output> {
    run(
        Command::new(bin("revtun-keytool"))
            .arg("--state-dir")
            .arg(state)
            .args(args),
        Duration::from_secs(30),
    )
}

/// Runs `revtun-site ARGS`, bounded.
pub fn site(args: &[&str]) -> Result<Output> {
    run(
        Command::new(bin("revtun-site")).args(args),
        Duration::from_secs(30),
    )
}

impl Host {
    /// Initialises a host and starts control with extra flags.
    pub fn start(extra: &[&str]) -> Result<Host> {
        Host::start_limited(None, extra)
    }

    /// As [`Host::start`], with control (and so its data plane) started
    /// under a descriptor limit of `nofile` (soft and hard, via
    /// util-linux's `prlimit`) when given.
    pub fn start_limited(nofile: Option<u64>, extra: &[&str]) -> Result<Host> {
        let dir = tempfile::tempdir()?;
        let state = dir.path().join("host");
        let o = keytool(&state, &["init"])?;
        if !o.status.success() {
            bail!("keytool init failed: {}", stderr(&o));
        }
        let mut cmd = match nofile {
            Some(n) => {
                let mut c = Command::new("prlimit");
                c.arg(format!("--nofile={n}:{n}"))
                    .arg(bin("revtun-control"));
                c
            }
            None => Command::new(bin("revtun-control")),
        };
        let control = Proc::spawn(
            cmd.arg("--state-dir")
                .arg(&state)
                .args(["--listen", "127.0.0.1:0"])
                .args(udp_ports(extra))
                .args(extra),
        )?;
        let line = control.wait_stdout_prefix("listening on ", Duration::from_secs(20))?;
        let addr = line
            .trim_start_matches("listening on ")
            .parse()
            .with_context(|| format!("bad listen line {line:?}"))?;
        Ok(Host { dir, control, addr })
    }

    /// Kills control (its data plane exits with it: the host is down),
    /// waits `down`, and starts control again on the same address and
    /// state with `extra` flags; returns once it listens.
    pub fn restart_control(&mut self, down: Duration, extra: &[&str]) -> Result<()> {
        self.control.kill();
        std::thread::sleep(down);
        self.control = Proc::spawn(
            Command::new(bin("revtun-control"))
                .arg("--state-dir")
                .arg(self.state())
                .args(["--listen", &self.addr.to_string()])
                .args(udp_ports(extra))
                .args(extra),
        )?;
        self.control
            .wait_stdout_prefix("listening on ", Duration::from_secs(20))?;
        Ok(())
    }

    /// Address of the data plane's metrics endpoint (started with
    /// `--metrics-listen`), from control's stdout.
    pub fn metrics_addr(&self) -> Result<String> {
        let line = self
            .control
            .wait_stdout("metrics listening on", Duration::from_secs(10))?;
        Ok(line.rsplit(' ').next().unwrap_or_default().to_string())
    }

    /// PID of the current data plane (from control's stdout).
    pub fn dataplane_pid(&self) -> Option<i32> {
        dataplane_pid(&self.control)
    }

    /// The host state directory.
    pub fn state(&self) -> PathBuf {
        self.dir.path().join("host")
    }

    /// A path inside the test's temporary directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Issues a keyfile for `site` pointing at this host; returns its path.
    pub fn issue(&self, site: &str, extra: &[&str]) -> Result<PathBuf> {
        self.issue_to(site, &[self.addr], extra)
    }

    /// Issues a keyfile for `site` whose endpoints are `endpoints` (relays
    /// in front of this host, in the order the site tries them).
    pub fn issue_to(
        &self,
        site: &str,
        endpoints: &[SocketAddr],
        extra: &[&str],
    ) -> Result<PathBuf> {
        issue_keyfile(&self.state(), self.dir.path(), site, endpoints, extra)
    }

    /// Enrolls `site` into a fresh site state directory; returns it.
    pub fn enroll(&self, site_name: &str) -> Result<PathBuf> {
        self.enroll_to(site_name, &[self.addr])
    }

    /// [`Host::enroll`] with the site dialling `endpoints` (relays).
    pub fn enroll_to(&self, site_name: &str, endpoints: &[SocketAddr]) -> Result<PathBuf> {
        let kf = self.issue_to(site_name, endpoints, &[])?;
        enroll_keyfile(&kf, self.dir.path())
    }
}

/// `revtun-keytool --state-dir STATE issue` for `site` naming
/// `endpoints`, written into `dir`; returns the keyfile's path.
pub fn issue_keyfile(
    state: &Path,
    dir: &Path,
    site: &str,
    endpoints: &[SocketAddr],
    extra: &[&str],
) -> Result<PathBuf> {
    let out = dir.join(format!("{site}-{}.keyfile", unique()));
    let eps: Vec<String> = endpoints.iter().map(ToString::to_string).collect();
    let mut args = vec!["issue", "--site", site];
    for ep in &eps {
        args.extend_from_slice(&["--endpoint", ep]);
    }
    args.push("--out");
    let out_s = out.to_string_lossy().into_owned();
    args.push(&out_s);
    args.extend_from_slice(extra);
    let o = keytool(state, &args)?;
    if !o.status.success() {
        bail!("issue failed: {}", stderr(&o));
    }
    Ok(out)
}

/// `revtun-site enroll` with `keyfile` into a new site state directory
/// under `dir`; returns it.
pub fn enroll_keyfile(keyfile: &Path, dir: &Path) -> Result<PathBuf> {
    let sd = dir.join(format!("site-{}", unique()));
    let o = site(&[
        "enroll",
        "--keyfile",
        &keyfile.to_string_lossy(),
        "--state-dir",
        &sd.to_string_lossy(),
    ])?;
    if !o.status.success() {
        bail!("enroll failed: {}", stderr(&o));
    }
    Ok(sd)
}

/// PID of the data plane that `control` started last (from its stdout).
pub fn dataplane_pid(control: &Proc) -> Option<i32> {
    control
        .stdout
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .rev()
        .find_map(|l| l.strip_prefix("data plane started pid="))
        .and_then(|p| p.trim().parse().ok())
}

/// A process-unique counter for file names.
pub fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

pub mod fleet;
pub mod impair;
pub mod service;
pub mod video;

/// Resident memory of a process in KiB (0 if it cannot be read).
pub fn rss_kib(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// Connects to `to` from the local address `from` (any address of
/// 127.0.0.0/8 is local on Linux, so a test can play many sources), the
/// connect bounded by 5 s.
pub fn connect_from(from: std::net::IpAddr, to: SocketAddr) -> Result<std::net::TcpStream> {
    connect_from_with(from, to, None)
}

/// As [`connect_from`], with a receive buffer of `rcvbuf` bytes (set
/// before the connect, so the window the peer sees is small).
pub fn connect_from_with(
    from: std::net::IpAddr,
    to: SocketAddr,
    rcvbuf: Option<usize>,
) -> Result<std::net::TcpStream> {
    use socket2::{Domain, Socket, Type};
    let sock = Socket::new(Domain::for_address(to), Type::STREAM, None)?;
    if let Some(n) = rcvbuf {
        sock.set_recv_buffer_size(n)?;
    }
    sock.bind(&SocketAddr::new(from, 0).into())?;
    sock.connect_timeout(&to.into(), Duration::from_secs(5))
        .with_context(|| format!("connect from {from} to {to}"))?;
    Ok(sock.into())
}

/// A free loopback port: bind port 0, note the port, release it.
pub fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// A network namespace this test made, with its loopback up and able to
/// carry multicast (224.0.0.0/4 routed to `lo`), which the calling thread
/// has entered: every process it starts from then on, and every socket
/// it opens, lives there. Deleted when dropped.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates and enters a new namespace.
    pub fn enter_new() -> Result<Netns> {
        let name = format!("revtun-test-{}-{}", std::process::id(), unique());
        let ip = |args: &[&str]| {
            run_ok(Command::new("ip").args(args), Duration::from_secs(10)).map(drop)
        };
        ip(&["netns", "add", &name])?;
        let ns = Netns { name };
        ip(&["-n", &ns.name, "link", "set", "lo", "up"])?;
        ip(&["-n", &ns.name, "link", "set", "lo", "multicast", "on"])?;
        ip(&["-n", &ns.name, "route", "add", "224.0.0.0/4", "dev", "lo"])?;
        let f = std::fs::File::open(format!("/run/netns/{}", ns.name))?;
        nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET)?;
        Ok(ns)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// For a host with an RTSP listener and no RTP ports given: ports the
/// kernel picks (the defaults, 8000 and 8001, would be shared by every
/// test at once).
pub fn udp_ports(flags: &[&str]) -> Vec<&'static str> {
    let rtsp = flags
        .iter()
        .any(|f| f.starts_with("--rtsp-listen") || f.starts_with("--rtsps-listen"));
    let given = flags
        .iter()
        .any(|f| f.starts_with("--rtp-port") || f.starts_with("--rtcp-port"));
    if rtsp && !given {
        vec!["--rtp-port=0", "--rtcp-port=0"]
    } else {
        vec![]
    }
}

/// A loopback port kept bound (not listening) with `SO_REUSEPORT` for
/// the life of this test process: no outgoing connection of another test
/// can take it as its source port, and the host's listeners, which set
/// `SO_REUSEPORT` too, still bind it (for service ports and RTSP).
pub fn reserved_port() -> Result<u16> {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    sock.set_reuse_port(true)?;
    sock.set_reuse_address(true)?;
    sock.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())?;
    let port = sock
        .local_addr()?
        .as_socket()
        .context("not an inet address")?
        .port();
    // Held until the test process exits.
    std::mem::forget(sock);
    Ok(port)
}

/// Host flags for memory-bound tests: windows of 1 MiB per stream and
/// 8 MiB per tunnel that do not grow, so a stalled stream parks at most
/// 1 MiB and a tunnel's receive side at most 8 MiB.
pub const SMALL_WINDOWS: &[&str] = &[
    "--stream-window",
    "1048576",
    "--tunnel-window",
    "8388608",
    "--max-stream-window",
    "1048576",
    "--max-tunnel-window",
    "8388608",
];

/// A host with one exposed service and a site agent serving it.
#[derive(Debug)]
pub struct Bench {
    /// The host (control + data plane).
    pub host: Host,
    /// The site agent.
    pub agent: Proc,
    /// The site state directory.
    pub site_dir: PathBuf,
    /// Host address of the service port.
    pub port: SocketAddr,
    /// The site's target service.
    pub target: SocketAddr,
    /// Extra site-agent flags, reused on restart.
    pub agent_args: Vec<String>,
}

impl Bench {
    /// Starts everything: a service at the site, a host exposing it as
    /// `bench/svc`, and the agent. `host_extra` and `agent_extra` are flags.
    pub fn start(host_extra: &[&str], agent_extra: &[&str]) -> Result<Bench> {
        Self::start_via(host_extra, agent_extra, |host| Ok(vec![host]))
    }

    /// [`Bench::start`] with the service exposed on `port`.
    pub fn start_on(port: SocketAddr, host_extra: &[&str], agent_extra: &[&str]) -> Result<Bench> {
        Self::start_full(Some(port), host_extra, agent_extra, |host| Ok(vec![host]))
    }

    /// [`Bench::start`] with the site dialling the endpoints `route` gives
    /// for the host's address (impairment proxies in front of it).
    pub fn start_via(
        host_extra: &[&str],
        agent_extra: &[&str],
        route: impl FnOnce(SocketAddr) -> Result<Vec<SocketAddr>>,
    ) -> Result<Bench> {
        Self::start_full(None, host_extra, agent_extra, route)
    }

    fn start_full(
        port: Option<SocketAddr>,
        host_extra: &[&str],
        agent_extra: &[&str],
        route: impl FnOnce(SocketAddr) -> Result<Vec<SocketAddr>>,
    ) -> Result<Bench> {
        let target = service::start()?;
        let port: SocketAddr = match port {
            Some(p) => p,
            None => format!("127.0.0.1:{}", reserved_port()?).parse()?,
        };
        let expose = format!("bench/svc={port}");
        let mut flags = vec!["--expose", &expose];
        flags.extend_from_slice(host_extra);
        let host = Host::start(&flags)?;
        let kf = host.issue_to("bench", &route(host.addr)?, &[])?;
        let site_dir = host.path("bench-site");
        let mut agent_args: Vec<String> = vec![format!("--service=svc={target}")];
        agent_args.extend(agent_extra.iter().map(|s| s.to_string()));
        let o = site(&[
            "enroll",
            "--keyfile",
            &kf.to_string_lossy(),
            "--state-dir",
            &site_dir.to_string_lossy(),
        ])?;
        if !o.status.success() {
            bail!("enroll: {}", stderr(&o));
        }
        let agent = Self::spawn_agent(&site_dir, &agent_args)?;
        let b = Bench {
            host,
            agent,
            site_dir,
            port,
            target,
            agent_args,
        };
        b.wait_ready(Duration::from_secs(10))?;
        Ok(b)
    }

    fn spawn_agent(dir: &Path, extra: &[String]) -> Result<Proc> {
        let p = Proc::spawn(
            Command::new(bin("revtun-site"))
                .arg("run")
                .arg("--state-dir")
                .arg(dir)
                .args(extra),
        )?;
        p.wait_stdout("tunnel up", Duration::from_secs(10))?;
        Ok(p)
    }

    /// Restarts the site agent (after it was killed).
    pub fn restart_agent(&mut self) -> Result<()> {
        self.agent = Self::spawn_agent(&self.site_dir, &self.agent_args)?;
        Ok(())
    }

    /// Waits until a client gets through to the service.
    pub fn wait_ready(&self, limit: Duration) -> Result<Duration> {
        let start = Instant::now();
        loop {
            if self.sink_roundtrip(b"ping").is_ok() {
                return Ok(start.elapsed());
            }
            if start.elapsed() > limit {
                bail!(
                    "service not reachable through the tunnel within {limit:?}; host log:\n{}",
                    self.host.control.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Connects to the host port.
    pub fn connect(&self) -> Result<std::net::TcpStream> {
        let s = std::net::TcpStream::connect(self.port)?;
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        s.set_nodelay(true)?;
        Ok(s)
    }

    /// Sends `data` to the SINK command, half-closes, returns the reply line.
    pub fn sink_roundtrip(&self, data: &[u8]) -> Result<String> {
        sink_roundtrip_over(self.connect()?, data)
    }
}

/// Sends `len` bytes of [`service::fill`] data from `seed` to the SINK
/// command through the tunnel; returns its reply (`<bytes> <sha256>`).
pub fn upload(b: &Bench, len: u64, seed: u64) -> Result<String> {
    use std::io::Write;
    let mut s = b.connect()?;
    s.write_all(b"SINK\n")?;
    let mut buf = vec![0u8; 1 << 20];
    let mut state = seed;
    let mut left = len;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        service::fill(&mut buf[..n], &mut state);
        s.write_all(&buf[..n])?;
        left -= n as u64;
    }
    s.shutdown(std::net::Shutdown::Write)?;
    let mut reply = String::new();
    s.read_to_string(&mut reply)?;
    Ok(reply.trim().to_string())
}

/// Asks the SOURCE command for `len` bytes from `seed` through the
/// tunnel; returns the byte count and SHA-256 received.
pub fn download(b: &Bench, len: u64, seed: u64) -> Result<(u64, String)> {
    use std::io::Write;
    let mut s = b.connect()?;
    writeln!(s, "SOURCE {len} {seed}")?;
    let mut h = service::Hasher::default();
    let total = read_hashing(&mut s, &mut h)?;
    Ok((total, h.hex()))
}

/// Reads `s` to its end into `h`; the bytes read.
pub fn read_hashing(s: &mut impl Read, h: &mut service::Hasher) -> Result<u64> {
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = s.read(&mut buf)?;
        if n == 0 {
            return Ok(total);
        }
        h.update(&buf[..n]);
        total += n as u64;
    }
}

/// `GET path` over HTTP/1.1 on loopback; the response body.
pub fn http_get(addr: &str, path: &str) -> Result<String> {
    use std::io::Write;
    let mut s = std::net::TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let (head, body) = text
        .split_once("\r\n\r\n")
        .with_context(|| format!("not an HTTP response: {text:?}"))?;
    anyhow::ensure!(
        head.starts_with("HTTP/1.") && head.split(' ').nth(1) == Some("200"),
        "{head}"
    );
    Ok(body.to_string())
}

/// Sum of the samples of metric `name` whose labels contain every string
/// of `having` (Prometheus text format).
pub fn metric_sum(text: &str, name: &str, having: &[&str]) -> u64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (n, labels) = series.split_once('{').unwrap_or((series, ""));
            (n == name && having.iter().all(|h| labels.contains(h)))
                .then(|| value.parse::<u64>().ok())
                .flatten()
        })
        .sum()
}

/// Reads one RTSP response (head and body) from `s`, byte by byte so
/// that nothing after it (interleaved media) is consumed.
pub fn read_rtsp_response(s: &mut std::net::TcpStream) -> Result<String> {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        anyhow::ensure!(head.len() < 16 * 1024, "response head too long");
        if s.read(&mut b)? == 0 {
            anyhow::bail!(
                "connection closed after {:?}",
                String::from_utf8_lossy(&head)
            );
        }
        head.push(b[0]);
    }
    let text = String::from_utf8_lossy(&head).to_string();
    let len = text
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse::<usize>().ok())?
        })
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    s.read_exact(&mut body)?;
    Ok(text + &String::from_utf8_lossy(&body))
}

/// The status code of an RTSP response text (0 if none).
pub fn rtsp_status(text: &str) -> u16 {
    text.split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// A raw RTSP client that answers the host's Digest challenge like a
/// player does: each request is sent, and on 401 sent again with an
/// `Authorization` for `creds`.
#[derive(Debug)]
pub struct RtspClient {
    /// The connection.
    pub conn: std::net::TcpStream,
    creds: Option<revtun_proto::rtsp_auth::Credentials>,
    auth: Option<revtun_proto::rtsp_auth::Authenticator>,
    cseq: u32,
}

impl RtspClient {
    /// Connects to the host's RTSP port.
    pub fn connect(port: u16, creds: Option<(&str, &str)>) -> Result<RtspClient> {
        RtspClient::over(std::net::TcpStream::connect(("127.0.0.1", port))?, creds)
    }

    /// A client over an open connection.
    pub fn over(conn: std::net::TcpStream, creds: Option<(&str, &str)>) -> Result<RtspClient> {
        conn.set_read_timeout(Some(Duration::from_secs(15)))?;
        let creds = creds
            .map(|(u, p)| revtun_proto::rtsp_auth::Credentials::new(u, p))
            .transpose()
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(RtspClient {
            conn,
            creds,
            auth: None,
            cseq: 0,
        })
    }

    /// Sends `method url` with `headers`; the final response.
    pub fn request(&mut self, method: &str, url: &str, headers: &[&str]) -> Result<String> {
        use std::io::Write;
        for _ in 0..2 {
            self.cseq += 1;
            let mut req = format!("{method} {url} RTSP/1.0\r\nCSeq: {}\r\n", self.cseq);
            for h in headers {
                req.push_str(h);
                req.push_str("\r\n");
            }
            if let Some(a) = self.auth.as_mut() {
                let v = a.authorization(method, url, "0a4f113b");
                req.push_str(&format!("Authorization: {v}\r\n"));
            }
            req.push_str("\r\n");
            self.conn.write_all(req.as_bytes())?;
            let reply = read_rtsp_response(&mut self.conn)?;
            if rtsp_status(&reply) != 401 || self.auth.is_some() {
                return Ok(reply);
            }
            let (Some(creds), Some(challenge)) = (
                self.creds.clone(),
                revtun_proto::rtsp_auth::choose(reply.lines().filter_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("www-authenticate")
                        .then_some(v.trim())
                })),
            ) else {
                return Ok(reply);
            };
            self.auth = Some(revtun_proto::rtsp_auth::Authenticator::new(
                creds, challenge,
            ));
        }
        anyhow::bail!("unreachable: two attempts")
    }

    /// DESCRIBE, SETUP (interleaved), PLAY of `url`; the PLAY status.
    pub fn play(&mut self, url: &str) -> Result<u16> {
        for (m, u, h) in [
            ("DESCRIBE", url.to_string(), None),
            (
                "SETUP",
                format!("{url}/stream=0"),
                Some("Transport: RTP/AVP/TCP;unicast;interleaved=0-1"),
            ),
            ("PLAY", url.to_string(), None),
        ] {
            let reply = self.request(m, &u, h.as_slice())?;
            let status = rtsp_status(&reply);
            if status != 200 {
                return Ok(status);
            }
        }
        Ok(200)
    }
}

/// Sends `data` to the test service's SINK command over `s`, half-closes,
/// returns the reply line (5 s read deadline).
pub fn sink_roundtrip_over(mut s: std::net::TcpStream, data: &[u8]) -> Result<String> {
    use std::io::Write;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(b"SINK\n")?;
    s.write_all(data)?;
    s.shutdown(std::net::Shutdown::Write)?;
    let mut reply = String::new();
    s.read_to_string(&mut reply)?;
    if reply.is_empty() {
        bail!("empty reply");
    }
    Ok(reply.trim().to_string())
}
