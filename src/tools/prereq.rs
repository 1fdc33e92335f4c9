//! Checks for the outside programs mergequeue runs. `ensure` installs missing ones with
//! the same script the test command uses (as root, with apt-get); otherwise the error
//! says exactly what to install.

const INSTALL: &str = include_str!("../../scripts/install-prereqs.sh");

/// Fails naming every missing program and how to get it.
pub fn require(programs: &[&str]) -> anyhow::Result<()> {
    let missing: Vec<&str> = programs
        .iter()
        .copied()
        .filter(|p| find(p).is_none())
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    anyhow::bail!(
        "missing programs: {}. Run `scripts/install-prereqs.sh` as root, or on Debian/Ubuntu: \
         apt-get install -y nix-bin git busybox-static openssh-server openssh-client chromium chromium-driver",
        missing.join(", ")
    )
}

/// Like `require`, but first tries to install what is missing (Debian, as root).
pub fn ensure(programs: &[&str]) -> anyhow::Result<()> {
    let missing = programs.iter().any(|p| find(p).is_none())
        || !std::path::Path::new("/bin/busybox").exists();
    if missing {
        let status = std::process::Command::new("sh")
            .arg("-c")
            .arg(INSTALL)
            .status();
        if let Ok(s) = status {
            if !s.success() {
                log::warn!("installing prerequisites failed ({s})");
            }
        }
    }
    require(programs)?;
    anyhow::ensure!(
        std::path::Path::new("/bin/busybox").exists(),
        "/bin/busybox is missing: apt-get install -y busybox-static"
    );
    Ok(())
}

pub fn find(program: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}
