//! Stage binaries as separate processes, as they run in production: spawn with environment
//! overrides, SIGKILL, SIGTERM with a measured exit. A process still running when its handle is
//! dropped (a failed test) is killed, so nothing is left running against the shared broker.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The path of a workspace binary. The first call in a test process builds every binary of the
/// workspace (`cargo build --workspace --bins`, a no-op when they are up to date): one build for
/// all, with the features the whole workspace resolves, so no package is built a second time with
/// a feature set of its own. Tests of the `tests` crate cannot name other packages' binaries
/// otherwise.
pub fn stage_binary(binary: &str) -> PathBuf {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
        let status = Command::new(cargo)
            .args(["build", "--quiet", "--workspace", "--bins"])
            .status()
            .expect("cargo runs");
        assert!(status.success(), "building the workspace's binaries failed");
    });
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let path = target.join("debug").join(binary);
    assert!(
        path.is_file(),
        "no binary {} after the build",
        path.display()
    );
    path
}

/// A running stage process.
#[derive(Debug)]
pub struct StageProcess {
    child: Child,
    label: String,
    /// The HTTP endpoint's port: set when the test chose it, else read from the process's
    /// "serving /metrics" log line once it is there.
    http_port: OnceLock<u16>,
}

/// A free loopback port (bound, read, released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("a free loopback port")
}

/// How many of its last log lines a process that exited early shows in the panic.
const LOG_TAIL_LINES: usize = 15;

/// How long [`StageProcess::http_url`] waits for a process to log its HTTP address.
const BIND_TIMEOUT: Duration = Duration::from_secs(60);

/// The port in the "serving /metrics" line of a stage's JSON log.
fn bound_port(log: &str) -> Option<u16> {
    let line = log
        .lines()
        .find(|line| line.contains("\"message\":\"serving /metrics"))?;
    let value: serde_json::Value = serde_json::from_str(line).ok()?;
    let address: std::net::SocketAddr = value.get("address")?.as_str()?.parse().ok()?;
    Some(address.port())
}

/// A free loopback port below the kernel's ephemeral range, for a server that must keep its
/// port across restarts (a broker the test kills and starts again). While it is down, the
/// clients' own connections take their local ports from the ephemeral range, so none of them
/// can take this one (or connect to itself on it).
pub fn free_port_outside_ephemeral() -> u16 {
    let first_ephemeral = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32_768);
    if first_ephemeral <= 10_001 {
        return free_port();
    }
    for _ in 0..1_000 {
        let port = fastrand::u16(10_000..first_ephemeral);
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    free_port()
}

impl Drop for StageProcess {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl StageProcess {
    /// Starts `program` with `envs`; its log goes to `target/tmp/worker-logs/{label}.log`. Its
    /// HTTP endpoint listens on a loopback port the process picks itself (port 0; the test reads
    /// it from the log, so no other process can take it in between) unless `envs` sets
    /// `MEDALLION__TELEMETRY__PORT`.
    pub fn spawn(program: &Path, envs: &[(&str, String)], label: &str) -> Self {
        Self::spawn_args(program, &[], envs, label)
    }

    /// [`StageProcess::spawn`] with command-line arguments (`--config FILE`).
    pub fn spawn_args(program: &Path, args: &[&str], envs: &[(&str, String)], label: &str) -> Self {
        let log_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/tmp/worker-logs");
        std::fs::create_dir_all(&log_dir).expect("log dir");
        let log = std::fs::File::create(log_dir.join(format!("{label}.log"))).expect("log file");
        let mut command = Command::new(program);
        command
            .args(args)
            .env("RUST_LOG", "info,librdkafka=warn")
            .stdout(Stdio::null())
            .stderr(log);
        let http_port = OnceLock::new();
        command
            .env("MEDALLION__TELEMETRY__BIND", "\"127.0.0.1\"")
            .env("MEDALLION__TELEMETRY__PORT", "0");
        for (key, value) in envs {
            if *key == "MEDALLION__TELEMETRY__PORT" {
                if let Ok(port) = value.parse() {
                    let _ = http_port.set(port);
                }
            }
            command.env(key, value);
        }
        let child = command.spawn().expect("the stage binary starts");
        Self {
            child,
            label: label.to_owned(),
            http_port,
        }
    }

    /// What the process has logged so far (one JSON object a line).
    pub fn log(&self) -> String {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../target/tmp/worker-logs")
            .join(format!("{}.log", self.label));
        std::fs::read_to_string(path).unwrap_or_default()
    }

    /// The process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// The URL of `path` (`/metrics`, `/readyz`) on the process's HTTP endpoint.
    pub fn http_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.http_port())
    }

    /// The HTTP endpoint's port. Until the process has logged the address it bound, this waits
    /// for that line (polling its log; a stage binds before it looks for its broker, so within
    /// a second or so), and panics after [`BIND_TIMEOUT`], pointing at the log.
    fn http_port(&self) -> u16 {
        if let Some(port) = self.http_port.get() {
            return *port;
        }
        let deadline = Instant::now() + BIND_TIMEOUT;
        loop {
            if let Some(port) = bound_port(&self.log()) {
                return *self.http_port.get_or_init(|| port);
            }
            assert!(
                Instant::now() < deadline,
                "{} logged no HTTP address within {BIND_TIMEOUT:?}; see target/tmp/worker-logs/{}.log",
                self.label,
                self.label
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether the process has exited (killed, or ended by itself).
    pub fn has_exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    /// SIGKILL: no drain, no commit.
    pub fn kill(&mut self) {
        self.child.kill().expect("kill stage");
        self.child.wait().expect("reap stage");
    }

    /// Sends `signal` (a name `kill` knows: `TERM`, `STOP`, `CONT`) to the process.
    pub fn signal(&self, signal: &str) {
        let sent = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status()
            .is_ok_and(|status| status.success());
        assert!(sent, "SIG{signal} was delivered to {}", self.label);
    }

    /// Sends SIGTERM and waits for the exit; returns the status and how long it took.
    pub fn terminate(&mut self) -> (ExitStatus, Duration) {
        let started = Instant::now();
        self.signal("TERM");
        let deadline = started + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait stage") {
                return (status, started.elapsed());
            }
            assert!(
                Instant::now() < deadline,
                "{} did not exit within 60 s of SIGTERM",
                self.label
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Panics if the process has exited.
    pub fn assert_running(&mut self) {
        if let Some(status) = self.child.try_wait().expect("wait stage") {
            let log = self.log();
            let lines: Vec<&str> = log.lines().collect();
            let tail = lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n");
            panic!(
                "{} exited early with {status}; the end of target/tmp/worker-logs/{}.log:\n{tail}",
                self.label, self.label
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::bound_port;

    #[test]
    fn the_bound_port_is_read_from_the_serving_line() {
        let log = concat!(
            "{\"level\":\"INFO\",\"message\":\"starting\",\"address\":\"127.0.0.1:1\"}\n",
            "{\"level\":\"INFO\",\"message\":\"serving /metrics, /livez and /readyz\",",
            "\"address\":\"127.0.0.1:40069\",\"target\":\"medallion_stage::http\"}\n",
        );
        assert_eq!(bound_port(log), Some(40069));
        assert_eq!(bound_port("{\"message\":\"starting\"}\n"), None);
        assert_eq!(bound_port("{\"message\":\"serving /metrics\"}\n"), None);
        assert_eq!(bound_port(""), None);
    }
}
