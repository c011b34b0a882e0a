//! Where the API is and which token to send: command-line flags first, then
//! `KILN_API_URL` / `KILN_TOKEN`, then the file `kiln login` writes.
//!
//! The file is `$KILN_CONFIG` when set, else
//! `$XDG_CONFIG_HOME/kiln/config.json`, else `~/.config/kiln/config.json`;
//! it is written readable by its owner only.

use crate::error::{CliError, Result};
use anyhow::Context;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// The contents of the config file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FileConfig {
    pub api_url: Option<String>,
    pub token: Option<String>,
}

/// Settings a command talks to the API with.
#[derive(Debug, Clone)]
pub struct Settings {
    pub api_url: String,
    pub token: String,
}

pub fn path() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("KILN_CONFIG").filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(p));
    }
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|p| !p.is_empty())
                .map(|h| PathBuf::from(h).join(".config"))
        })
        .ok_or_else(|| {
            CliError::Usage("neither KILN_CONFIG, XDG_CONFIG_HOME nor HOME is set".into())
        })?;
    Ok(base.join("kiln").join("config.json"))
}

pub fn load() -> Result<FileConfig> {
    let path = path()?;
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
            CliError::Usage(format!(
                "{}: not a kiln config file ({e}); run `kiln login` again",
                path.display()
            ))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(FileConfig::default()),
        Err(e) => Err(CliError::local(format!("reading {}", path.display()), e)),
    }
}

pub fn save(config: &FileConfig) -> Result<PathBuf> {
    let path = path()?;
    write_private(&path, config).map_err(CliError::Local)?;
    Ok(path)
}

/// Writes `config` to `path`, readable by its owner only, through a
/// temporary file.
fn write_private(path: &std::path::Path, config: &FileConfig) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let body = serde_json::to_vec_pretty(config).context("encoding the config")?;
    let tmp = path.with_extension("json.tmp");
    {
        use std::io::Write;
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut f = opts
            .open(&tmp)
            .with_context(|| format!("writing {}", tmp.display()))?;
        f.write_all(&body)
            .with_context(|| format!("writing {}", tmp.display()))?;
    }
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
}

/// Resolves the settings from flags (already merged with the environment
/// by clap) and the config file.
pub fn resolve(api_url: Option<String>, token: Option<String>) -> Result<Settings> {
    let file = load()?;
    let api_url = api_url
        .filter(|s| !s.is_empty())
        .or(file.api_url)
        .ok_or_else(|| {
            CliError::Usage(
                "no API address: pass --api-url, set KILN_API_URL, or run `kiln login`".into(),
            )
        })?;
    let token = token
        .filter(|s| !s.is_empty())
        .or(file.token)
        .ok_or_else(|| {
            CliError::Usage(
                "no API token: pass --token, set KILN_TOKEN, or run `kiln login`".into(),
            )
        })?;
    Ok(Settings {
        api_url: normalize_url(&api_url)?,
        token,
    })
}

/// The API base address without a trailing slash; a bare `host:port` gets
/// `http://`.
pub fn normalize_url(raw: &str) -> Result<String> {
    let raw = raw.trim().trim_end_matches('/');
    let with_scheme = if raw.contains("://") {
        raw.to_string()
    } else {
        format!("http://{raw}")
    };
    let url = reqwest::Url::parse(&with_scheme)
        .map_err(|e| CliError::Usage(format!("API address {raw:?} is not a URL: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(CliError::Usage(format!(
            "API address {raw:?} must be http:// or https://"
        )));
    }
    Ok(with_scheme)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_normalized() {
        assert_eq!(
            normalize_url("127.0.0.1:8080/").unwrap(),
            "http://127.0.0.1:8080"
        );
        assert_eq!(
            normalize_url("https://kiln.example/").unwrap(),
            "https://kiln.example"
        );
        assert!(normalize_url("ftp://x").is_err());
    }
}
