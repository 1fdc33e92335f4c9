//! Checks for the outside programs mergequeue runs, with an error that says what to install.

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
         apt-get install -y nix-bin git busybox-static openssh-server openssh-client",
        missing.join(", ")
    )
}

pub fn find(program: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}
