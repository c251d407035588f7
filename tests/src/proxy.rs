//! A real forward proxy for egress tests: Debian's `tinyproxy` (installed by
//! `scripts/ensure-tinyproxy.sh`), on a random loopback port, logging every request it relays.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{free_port, temp_dir};

/// A running `tinyproxy`.
pub struct Proxy {
    port: u16,
    log: PathBuf,
    child: Child,
}

impl Proxy {
    /// Starts it in the foreground on 127.0.0.1 and returns once it accepts connections.
    pub fn start() -> Self {
        let dir = temp_dir("herald-proxy");
        let port = free_port();
        let log = dir.join("tinyproxy.log");
        let config = dir.join("tinyproxy.conf");
        let text = format!(
            "Port {port}\nListen 127.0.0.1\nTimeout 60\nLogFile {:?}\nLogLevel Info\nMaxClients 200\nAllow 127.0.0.1\n",
            log
        );
        std::fs::write(&config, text).expect("proxy config");
        let bin = std::env::var_os("TINYPROXY_BIN").map(PathBuf::from).unwrap_or_else(|| "tinyproxy".into());
        let child = Command::new(&bin)
            .arg("-d")
            .arg("-c")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start {} ({e}); scripts/ensure-tinyproxy.sh installs it", bin.display())
            });
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "tinyproxy did not start; see {}", log.display());
            std::thread::sleep(Duration::from_millis(20));
        }
        Self { port, log, child }
    }

    /// `http://127.0.0.1:{port}`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The requests it relayed, as its log states them (`POST http://…`, `CONNECT host:port`).
    pub fn requests(&self) -> Vec<String> {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        text.lines()
            .filter(|l| l.contains("Request (file descriptor"))
            .filter_map(|l| l.split_once("): ").map(|(_, request)| request.to_owned()))
            .collect()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
