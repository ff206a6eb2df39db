//! `tp login`: a token and a gateway kept in the user's config directory
//! (`$XDG_CONFIG_HOME/tp/login.json`, else `~/.config/tp/login.json`,
//! readable by the user only), used when a command is given neither
//! `--token` nor the environment's.

use std::path::PathBuf;

use anyhow::Context;
use serde_json::json;

pub struct Login {
    pub gateway: Option<String>,
    pub token: Option<String>,
}

fn path() -> anyhow::Result<PathBuf> {
    let base = match std::env::var_os("XDG_CONFIG_HOME").filter(|v| !v.is_empty()) {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(
            std::env::var_os("HOME").context("neither XDG_CONFIG_HOME nor HOME is set")?,
        )
        .join(".config"),
    };
    Ok(base.join("tp").join("login.json"))
}

/// What `tp login` stored, if anything.
pub fn load() -> anyhow::Result<Login> {
    let path = path()?;
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(Login {
                gateway: None,
                token: None,
            });
        }
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let value: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("{} is not what `tp login` writes", path.display()))?;
    let field = |name: &str| value[name].as_str().map(str::to_owned);
    Ok(Login {
        gateway: field("gateway"),
        token: field("token"),
    })
}

/// Stores `token` and `gateway`, readable by the user only; returns where.
pub fn store(gateway: &str, token: &str) -> anyhow::Result<PathBuf> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let path = path()?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    writeln!(file, "{}", json!({ "gateway": gateway, "token": token }))?;
    Ok(path)
}
