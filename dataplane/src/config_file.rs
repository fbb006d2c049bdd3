//! `--config FILE`: settings from a TOML file, for control and the site.
//!
//! Every flag has a key named as the flag with underscores
//! (`--rtsp-listen` gives `rtsp_listen`); a repeatable flag takes an
//! array of the strings it takes on the command line
//! (`expose = ["paris/web=0.0.0.0:18080"]`); a switch takes `true` or
//! `false`. The file becomes flags placed before the command line's, so
//! a flag given on the command line overrides its key (for a repeatable
//! flag, the command line's values replace the file's). Every key and
//! value is checked with the flag's own parser; errors name the file,
//! the line and the key.

use clap::{ArgAction, Command};
use std::ffi::OsString;
use std::path::Path;

/// Longest configuration file read.
pub const MAX_CONFIG_LEN: usize = 1 << 20;

/// A file that could not be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

/// The flags a TOML text stands for, checked against `cmd`'s arguments;
/// `secret` names keys whose values must never appear in an error.
pub fn flags_of(
    text: &str,
    origin: &str,
    cmd: &Command,
    secret: &[&str],
) -> Result<Vec<(String, Vec<String>)>, ConfigError> {
    use toml::Spanned;
    let table: std::collections::BTreeMap<Spanned<String>, Spanned<toml::Value>> =
        toml::from_str(text).map_err(|e| {
            let line = e
                .span()
                .map(|s| line_of(text, s.start))
                .map_or(String::new(), |l| format!(":{l}"));
            ConfigError(format!("{origin}{line}: {}", e.message()))
        })?;
    let mut out = Vec::new();
    for (key, value) in table {
        let line = line_of(text, key.span().start);
        let at =
            |what: String| ConfigError(format!("{origin}:{line}: key `{}`: {what}", key.get_ref()));
        let long = key.get_ref().replace('_', "-");
        let arg = cmd
            .get_arguments()
            .find(|a| a.get_long() == Some(long.as_str()) && !a.is_hide_set())
            .filter(|a| {
                !matches!(
                    a.get_long(),
                    Some("config" | "check-config" | "help" | "version")
                )
            })
            .ok_or_else(|| at("unknown key (no flag --".to_string() + &long + ")"))?;
        let repeatable = matches!(arg.get_action(), ArgAction::Append);
        let switch = matches!(arg.get_action(), ArgAction::SetTrue);
        let scalar = |v: &toml::Value| -> Result<String, ConfigError> {
            match v {
                toml::Value::String(s) => Ok(s.clone()),
                toml::Value::Integer(i) => Ok(i.to_string()),
                toml::Value::Float(f) => Ok(f.to_string()),
                _ => Err(at("expected a string or a number".into())),
            }
        };
        if switch {
            match value.get_ref() {
                toml::Value::Boolean(true) => out.push((long, vec![])),
                toml::Value::Boolean(false) => {}
                _ => return Err(at("expected true or false".into())),
            }
            continue;
        }
        let values: Vec<String> = match (value.get_ref(), switch, repeatable) {
            (toml::Value::Boolean(true), true, _) => vec![],
            (toml::Value::Boolean(false), true, _) => continue,
            (_, true, _) => return Err(at("expected true or false".into())),
            (toml::Value::Array(items), _, true) => {
                items.iter().map(scalar).collect::<Result<_, _>>()?
            }
            (v, _, true) => vec![scalar(v)?],
            (toml::Value::Array(_), _, false) => {
                return Err(at("takes one value, not an array".into()))
            }
            (v, _, false) => vec![scalar(v)?],
        };
        for v in &values {
            // The flag's own parser, on this one value.
            let one = Command::new("config")
                .no_binary_name(true)
                .arg(arg.clone().required(false));
            if let Err(e) = one.try_get_matches_from([format!("--{long}={v}")]) {
                let detail = if secret.contains(&key.get_ref().as_str()) {
                    e.kind().as_str().unwrap_or("invalid value").to_string()
                } else {
                    // clap's own words, first line, without its prefix.
                    let text = e.to_string();
                    let first = text.lines().next().unwrap_or("invalid value");
                    first.trim_start_matches("error: ").to_string()
                };
                return Err(at(detail));
            }
        }
        out.push((long, values));
    }
    Ok(out)
}

fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// Reads `path` (at most [`MAX_CONFIG_LEN`]); with `private`, refuses a
/// file that its group or others may read (checked on the open file).
pub fn read(path: &Path, private: bool) -> Result<String, ConfigError> {
    use std::io::Read;
    use std::os::unix::fs::MetadataExt;
    let name = path.display();
    let f = std::fs::File::open(path).map_err(|e| ConfigError(format!("{name}: {e}")))?;
    let meta = f
        .metadata()
        .map_err(|e| ConfigError(format!("{name}: {e}")))?;
    if private && meta.mode() & 0o077 != 0 {
        return Err(ConfigError(format!(
            "{name}: holds secrets (a camera password) but its mode is {:o}; make it readable by its owner only (chmod 600)",
            meta.mode() & 0o777
        )));
    }
    let mut text = String::new();
    f.take(MAX_CONFIG_LEN as u64 + 1)
        .read_to_string(&mut text)
        .map_err(|e| ConfigError(format!("{name}: {e}")))?;
    if text.len() > MAX_CONFIG_LEN {
        return Err(ConfigError(format!(
            "{name}: larger than {MAX_CONFIG_LEN} bytes"
        )));
    }
    Ok(text)
}

/// The command line with `--config FILE` expanded: the file's flags go
/// right after `subcommand` (or the binary name), before the command
/// line's own, minus the keys the command line gives itself. `cmd` is the
/// command (or subcommand) whose flags the file holds; `private(text)`
/// says whether the file holds secrets (then it must be mode 0600).
pub fn expand(
    argv: Vec<OsString>,
    cmd: &Command,
    subcommand: Option<&str>,
    secret: &[&str],
    private: impl Fn(&str) -> bool,
) -> Result<Vec<OsString>, ConfigError> {
    let strs: Vec<String> = argv
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let mut file = None;
    for (i, a) in strs.iter().enumerate() {
        if let Some(v) = a.strip_prefix("--config=") {
            file = Some(v.to_string());
        } else if a == "--config" {
            file = strs.get(i + 1).cloned();
        }
    }
    let Some(file) = file else {
        return Ok(argv);
    };
    let text = {
        let plain = read(Path::new(&file), false)?;
        if private(&plain) {
            read(Path::new(&file), true)?
        } else {
            plain
        }
    };
    let given: std::collections::HashSet<String> = strs
        .iter()
        .filter_map(|a| a.strip_prefix("--"))
        .map(|a| a.split('=').next().unwrap_or("").to_string())
        .collect();
    let mut inserted: Vec<OsString> = Vec::new();
    for (long, values) in flags_of(&text, &file, cmd, secret)? {
        if given.contains(&long) {
            continue;
        }
        if values.is_empty() {
            inserted.push(format!("--{long}").into());
        }
        for v in values {
            inserted.push(format!("--{long}={v}").into());
        }
    }
    let at = match subcommand {
        Some(sub) => strs.iter().position(|a| a == sub).map_or(1, |i| i + 1),
        None => 1,
    };
    let mut out = argv;
    let tail = out.split_off(at.min(out.len()));
    out.extend(inserted);
    out.extend(tail);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, Parser};

    #[derive(Debug, Parser)]
    struct T {
        #[arg(long)]
        rtsp_listen: Option<std::net::SocketAddr>,
        #[arg(long)]
        expose: Vec<String>,
        #[arg(long)]
        pin: bool,
        #[arg(long, default_value_t = 4)]
        shards: usize,
        #[arg(long)]
        config: Option<String>,
    }

    #[test]
    fn keys_are_flags_and_errors_name_the_line() {
        let cmd = T::command();
        let text = "rtsp_listen = \"127.0.0.1:8554\"\nexpose = [\"a/b=127.0.0.1:1\", \"c/d=127.0.0.1:2\"]\npin = true\nshards = 2\n";
        let flags = flags_of(text, "f.toml", &cmd, &[]).expect("parses");
        assert_eq!(flags.len(), 4);
        let err =
            flags_of("pin = true\nrtsp_lisen = \"x\"\n", "f.toml", &cmd, &[]).expect_err("unknown");
        assert!(
            err.0.starts_with("f.toml:2: key `rtsp_lisen`: unknown key"),
            "{err}"
        );
        let err = flags_of("\n\nshards = \"many\"\n", "f.toml", &cmd, &[]).expect_err("bad value");
        assert!(err.0.starts_with("f.toml:3: key `shards`"), "{err}");
        let err = flags_of("pin = 3\n", "f.toml", &cmd, &[]).expect_err("bad switch");
        assert!(err.0.contains("true or false"), "{err}");
        let err = flags_of("shards = [1, 2]\n", "f.toml", &cmd, &[]).expect_err("array");
        assert!(err.0.contains("one value"), "{err}");
        let err = flags_of("shards = \n", "f.toml", &cmd, &[]).expect_err("syntax");
        assert!(err.0.starts_with("f.toml:1:"), "{err}");
        assert!(flags_of("config = \"x\"\n", "f.toml", &cmd, &[]).is_err());
    }

    #[test]
    fn the_command_line_overrides_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = dir.path().join("c.toml");
        std::fs::write(
            &f,
            "shards = 2\nexpose = [\"a/b=127.0.0.1:1\"]\npin = true\n",
        )
        .expect("write");
        let argv: Vec<OsString> = ["t", "--config", f.to_str().expect("utf8"), "--shards=3"]
            .iter()
            .map(OsString::from)
            .collect();
        let full = expand(argv, &T::command(), None, &[], |_| false).expect("expands");
        let t = T::parse_from(full);
        assert_eq!(t.shards, 3);
        assert_eq!(t.expose, vec!["a/b=127.0.0.1:1".to_string()]);
        assert!(t.pin);
    }
}
