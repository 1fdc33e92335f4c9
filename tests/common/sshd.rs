//! A real OpenSSH server on loopback per test builder, each builder with its own chroot
//! Nix store (`ssh-ng://ALIAS?remote-store=local?root=DIR`), as in docs/nix-here.md.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

pub struct Sshd {
    pub alias: String,
    pub port: u16,
    pub dir: PathBuf,
    pub store_root: PathBuf,
    config: PathBuf,
    pid: Option<u32>,
}

fn run(cmd: &mut Command) {
    let out = cmd.output().expect("spawn");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Sshd {
    /// Starts sshd for `alias`; writes the client side into `ssh_config` (appending).
    pub fn start(root: &Path, alias: &str, ssh_config: &Path) -> Sshd {
        Sshd::start_with(root, alias, ssh_config, None)
    }

    /// As `start`, and the builder's Nix signs every path it builds with `secret_key`
    /// (`secret-key-files`, as `services.mergequeue-builder.signingKeyFile` sets it).
    pub fn start_with(
        root: &Path,
        alias: &str,
        ssh_config: &Path,
        secret_key: Option<&Path>,
    ) -> Sshd {
        assert!(
            Path::new("/usr/sbin/sshd").exists(),
            "sshd missing: run scripts/install-prereqs.sh as root"
        );
        let dir = root.join(format!("sshd-{alias}"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::create_dir_all("/run/sshd").unwrap();
        let key = root.join("client-key");
        if !key.exists() {
            run(Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-f"])
                .arg(&key));
        }
        run(Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(dir.join("hostkey")));
        std::fs::copy(key.with_extension("pub"), dir.join("authorized_keys")).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let store_root = root.join(format!("store-{alias}"));
        // The sessions' HOME: the remote command runs through root's shell, and Debian's
        // bash reads ~/.bashrc for ssh commands. A machine's own rc (pyenv's `init`, say,
        // which waits up to 60 s on a stale rehash lock) must not decide whether a test
        // builder answers.
        let home = dir.join("home");
        std::fs::create_dir_all(&home).unwrap();
        // Settings of the remote `nix-daemon --stdio` (it reads its own, not the client's).
        let nix_conf = dir.join("nix.conf");
        let mut nix_settings = "substituters =\n".to_string();
        if let Some(key) = secret_key {
            nix_settings.push_str(&format!("secret-key-files = {}\n", key.display()));
        }
        std::fs::write(&nix_conf, nix_settings).unwrap();
        let config = dir.join("sshd_config");
        std::fs::write(
            &config,
            format!(
                "Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/hostkey\nPidFile {d}/sshd.pid\n\
                 AuthorizedKeysFile {d}/authorized_keys\nPasswordAuthentication no\nStrictModes no\n\
                 PermitRootLogin prohibit-password\n\
                 SetEnv NIX_USER_CONF_FILES={c} HOME={h}\n",
                d = dir.display(),
                c = nix_conf.display(),
                h = home.display()
            ),
        )
        .unwrap();
        let mut client = std::fs::read_to_string(ssh_config).unwrap_or_default();
        client.push_str(&format!(
            "Host {alias}\n  HostName 127.0.0.1\n  Port {port}\n  User root\n  IdentityFile {}\n  \
             StrictHostKeyChecking no\n  UserKnownHostsFile /dev/null\n  LogLevel ERROR\n",
            key.display()
        ));
        std::fs::write(ssh_config, client).unwrap();
        let mut s = Sshd {
            alias: alias.into(),
            port,
            dir,
            store_root,
            config,
            pid: None,
        };
        s.resume();
        s.answers(ssh_config);
        s
    }

    /// Fails the test at once, with both sides' logs, when a plain `ssh ALIAS true` does not
    /// come back: a builder that never answers otherwise shows only as a timeout much later.
    fn answers(&self, ssh_config: &Path) {
        let mut child = Command::new("ssh")
            .arg("-F")
            .arg(ssh_config)
            .args(["-o", "BatchMode=yes", "-v", &self.alias, "true"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn ssh");
        let t = Instant::now();
        let status = loop {
            if let Some(st) = child.try_wait().unwrap() {
                break Some(st);
            }
            if t.elapsed() > Duration::from_secs(30) {
                let _ = child.kill();
                break None;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let out = child.wait_with_output().unwrap();
        assert!(
            status.is_some_and(|s| s.success()),
            "ssh {} true: {status:?} after {:?}\nssh -v:\n{}\nsshd.log:\n{}",
            self.alias,
            t.elapsed(),
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(self.dir.join("sshd.log")).unwrap_or_default()
        );
    }

    /// Appends `line` to the builder's nix.conf (read by each new remote `nix-daemon`),
    /// e.g. `system-features = big`.
    pub fn add_nix_conf(&self, line: &str) {
        let path = self.dir.join("nix.conf");
        let mut conf = std::fs::read_to_string(&path).unwrap();
        conf.push_str(line);
        conf.push('\n');
        std::fs::write(&path, conf).unwrap();
    }

    pub fn uri(&self) -> String {
        format!(
            "ssh-ng://{}?remote-store=local?root={}",
            self.alias,
            self.store_root.display()
        )
    }

    /// (Re)starts the daemon and waits until it accepts connections.
    pub fn resume(&mut self) {
        run(Command::new("/usr/sbin/sshd")
            .arg("-f")
            .arg(&self.config)
            .arg("-E")
            .arg(self.dir.join("sshd.log")));
        let t = Instant::now();
        loop {
            // sshd creates its pid file before it writes it: an empty read is "not yet",
            // not "no pid" (which left the daemon unwatched and unstoppable).
            let pid = std::fs::read_to_string(self.dir.join("sshd.pid"))
                .ok()
                .and_then(|p| p.trim().parse::<u32>().ok());
            if let Some(pid) = pid {
                if speaks_ssh(self.port) {
                    self.pid = Some(pid);
                    return;
                }
            }
            assert!(t.elapsed() < Duration::from_secs(10), "sshd did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the daemon (the builder becomes unreachable); existing sessions die too.
    pub fn stop(&mut self) {
        if let Some(pid) = self.pid.take() {
            for d in descendants(pid) {
                unsafe { libc::kill(d as i32, libc::SIGKILL) };
            }
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            let _ = std::fs::remove_file(self.dir.join("sshd.pid"));
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// PIDs of `nix-daemon --stdio` processes under this sshd running a build whose
    /// process tree has a command line containing `marker` (e.g. `sleep 6`).
    pub fn daemons_running(&self, marker: &str) -> Vec<u32> {
        let Some(pid) = self.pid else { return vec![] };
        let tree = process_tree();
        let daemons: Vec<u32> = descendants_in(&tree, pid)
            .into_iter()
            .filter(|p| cmdline(*p).contains("nix-daemon"))
            .collect();
        // The innermost daemon (a `sh -c nix-daemon --stdio` wrapper matches too).
        daemons
            .iter()
            .copied()
            .filter(|p| {
                !descendants_in(&tree, *p)
                    .iter()
                    .any(|c| daemons.contains(c))
            })
            .filter(|p| {
                descendants_in(&tree, *p)
                    .iter()
                    .any(|c| cmdline(*c).contains(marker))
            })
            .collect()
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The port answers with an SSH banner: a bare connect would also succeed against
/// another test's server that took the port first.
fn speaks_ssh(port: u16) -> bool {
    use std::io::Read;
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let mut banner = [0u8; 8];
    s.read_exact(&mut banner).is_ok() && banner.starts_with(b"SSH-2.0-")
}

fn cmdline(pid: u32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
        .unwrap_or_default()
}

/// Every process's children, from one pass over `/proc`. One pass per question: a
/// pass per process made a poll take seconds on a loaded machine, long enough to miss a
/// six-second build.
fn process_tree() -> std::collections::HashMap<u32, Vec<u32>> {
    let mut tree: std::collections::HashMap<u32, Vec<u32>> = Default::default();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(p) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else {
            continue;
        };
        // The parent is the second field after the parenthesised command name.
        let after = stat.rsplit_once(')').map(|x| x.1).unwrap_or("");
        if let Some(parent) = after
            .split_whitespace()
            .nth(1)
            .and_then(|x| x.parse::<u32>().ok())
        {
            tree.entry(parent).or_default().push(p);
        }
    }
    tree
}

fn descendants_in(tree: &std::collections::HashMap<u32, Vec<u32>>, pid: u32) -> Vec<u32> {
    let mut out = vec![];
    let mut todo = vec![pid];
    while let Some(p) = todo.pop() {
        for &c in tree.get(&p).map(Vec::as_slice).unwrap_or(&[]) {
            out.push(c);
            todo.push(c);
        }
    }
    out
}

pub fn descendants(pid: u32) -> Vec<u32> {
    descendants_in(&process_tree(), pid)
}
