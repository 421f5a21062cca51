//! What to render: templates with their destination, check, command and file
//! options, from flags (`SRC:DEST`) or a TOML file.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use crate::model::Selection;

fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    humantime::parse_duration(&s).map_err(serde::de::Error::custom)
}

fn octal<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    let s = String::deserialize(d)?;
    parse_perms(&s).map(Some).map_err(serde::de::Error::custom)
}

fn wait<'de, D: Deserializer<'de>>(d: D) -> Result<Wait, D::Error> {
    String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
}

/// Parses octal permission bits such as `0644`.
pub fn parse_perms(s: &str) -> Result<u32, String> {
    u32::from_str_radix(s.trim_start_matches("0o"), 8)
        .ok()
        .filter(|m| *m <= 0o7777)
        .ok_or_else(|| format!("invalid permissions {s:?}: expected octal such as 0644"))
}

/// Quiescence: render once membership has been calm for `min`, but never later than
/// `max` after the first change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Wait {
    /// Calm needed.
    pub min: Duration,
    /// Longest delay after the first change.
    pub max: Duration,
}

impl Default for Wait {
    fn default() -> Self {
        Wait { min: Duration::from_millis(100), max: Duration::from_secs(1) }
    }
}

impl std::str::FromStr for Wait {
    type Err = String;
    /// `MIN:MAX` or `MIN` (then MAX is four times MIN), e.g. `200ms:2s`.
    fn from_str(s: &str) -> Result<Wait, String> {
        let parse =
            |v: &str| humantime::parse_duration(v.trim()).map_err(|e| format!("invalid wait {v:?}: {e}"));
        let (min, max) = match s.split_once(':') {
            Some((a, b)) => (parse(a)?, parse(b)?),
            None => {
                let min = parse(s)?;
                let max = min.checked_mul(4).ok_or_else(|| format!("invalid wait {s:?}: too long"))?;
                (min, max)
            }
        };
        if max < min {
            return Err(format!("invalid wait {s:?}: MAX is shorter than MIN"));
        }
        Ok(Wait { min, max })
    }
}

/// One template and what to do with its output.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TemplateSpec {
    /// The Handlebars template (re-read on every render, so edits apply on the next change).
    pub source: PathBuf,
    /// The file it produces.
    pub destination: PathBuf,
    /// Run on the staged file before it replaces the destination; `{{src}}` is its path.
    /// A failure keeps the destination and skips the command.
    #[serde(default)]
    pub check: Option<String>,
    /// Run after the destination changed (e.g. a reload).
    #[serde(default)]
    pub command: Option<String>,
    /// Longest time for the check and the command.
    #[serde(default = "default_command_timeout", deserialize_with = "duration")]
    pub command_timeout: Duration,
    /// Permission bits of the destination [default: those of the file it replaces, or 0644].
    #[serde(default, deserialize_with = "octal")]
    pub perms: Option<u32>,
    /// Keep the previous destination as `DEST.bak`.
    #[serde(default)]
    pub backup: bool,
}

fn default_command_timeout() -> Duration {
    Duration::from_secs(30)
}

impl TemplateSpec {
    /// `SRC:DEST` with no check or command.
    pub fn parse(spec: &str) -> Result<TemplateSpec, String> {
        let (src, dest) = spec
            .split_once(':')
            .filter(|(s, d)| !s.is_empty() && !d.is_empty())
            .ok_or_else(|| format!("invalid template {spec:?}: expected SOURCE:DESTINATION"))?;
        Ok(TemplateSpec {
            source: src.into(),
            destination: dest.into(),
            check: None,
            command: None,
            command_timeout: default_command_timeout(),
            perms: None,
            backup: false,
        })
    }
}

/// Everything `shoal render` needs.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RenderConfig {
    /// The templates.
    pub templates: Vec<TemplateSpec>,
    /// Quiescence before rendering.
    #[serde(default, deserialize_with = "wait")]
    pub wait: Wait,
    /// Fail on missing values instead of rendering them empty.
    #[serde(default)]
    pub strict: bool,
    /// Members with this `role` tag are the `addresses` and `backends`.
    #[serde(default = "default_role")]
    pub backend_role: String,
    /// Their service port unless a member's `port` tag says otherwise.
    #[serde(default = "default_port")]
    pub backend_port: u16,
}

fn default_role() -> String {
    Selection::default().role
}

fn default_port() -> u16 {
    Selection::default().port
}

/// A configuration that cannot be used, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid render configuration: {0}")]
pub struct ConfigError(pub String);

impl RenderConfig {
    /// Parses and validates a TOML file's text.
    pub fn from_toml(text: &str) -> Result<RenderConfig, ConfigError> {
        let cfg: RenderConfig = toml::from_str(text).map_err(|e| ConfigError(e.to_string()))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks what can be checked before rendering: templates readable, destinations distinct.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.templates.is_empty() {
            return Err(ConfigError("no template given".into()));
        }
        let mut seen = std::collections::HashSet::new();
        for t in &self.templates {
            if let Err(e) = std::fs::metadata(&t.source) {
                return Err(ConfigError(format!("template {}: {e}", t.source.display())));
            }
            if !seen.insert(&t.destination) {
                return Err(ConfigError(format!(
                    "{} is the destination of two templates",
                    t.destination.display()
                )));
            }
            if t.command_timeout.is_zero() {
                return Err(ConfigError(format!(
                    "template {}: command_timeout must be positive",
                    t.source.display()
                )));
            }
        }
        Ok(())
    }

    /// Which members are backends.
    pub fn selection(&self) -> Selection {
        Selection { role: self.backend_role.clone(), port: self.backend_port }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_waits_and_perms_parse() {
        let t = TemplateSpec::parse("/etc/t.hbs:/etc/haproxy/haproxy.cfg").unwrap();
        assert_eq!(t.destination, PathBuf::from("/etc/haproxy/haproxy.cfg"));
        assert!(TemplateSpec::parse("nodest").is_err());
        assert!(TemplateSpec::parse(":x").is_err());
        let w: Wait = "200ms:2s".parse().unwrap();
        assert_eq!((w.min, w.max), (Duration::from_millis(200), Duration::from_secs(2)));
        assert_eq!("1s".parse::<Wait>().unwrap().max, Duration::from_secs(4));
        assert!("2s:1s".parse::<Wait>().is_err());
        // Found by the render_config fuzz target: four times a huge MIN overflowed (a panic).
        let huge = "100ms6wk00011675941756269194111s";
        assert!(huge.parse::<Wait>().unwrap_err().contains("too long"));
        assert!(RenderConfig::from_toml(&format!("wait = \"{huge}\"\n")).is_err());
        assert_eq!(parse_perms("0640"), Ok(0o640));
        assert!(parse_perms("rw-").is_err());
    }

    #[test]
    fn a_file_lists_templates_and_bad_ones_are_refused() {
        let dir = std::env::temp_dir().join(format!("shoal-render-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let src = dir.join("t.hbs");
        std::fs::write(&src, "x").unwrap();
        let text = format!(
            "wait = \"50ms:500ms\"\nstrict = true\n[[templates]]\nsource = \"{}\"\ndestination = \"/tmp/out.cfg\"\n\
             check = \"haproxy -c -f {{{{src}}}}\"\ncommand = \"kill -USR2 1\"\nperms = \"0600\"\nbackup = true\n",
            src.display()
        );
        let cfg = RenderConfig::from_toml(&text).unwrap();
        assert_eq!(cfg.templates[0].check.as_deref(), Some("haproxy -c -f {{src}}"));
        assert_eq!(cfg.templates[0].perms, Some(0o600));
        assert_eq!(cfg.wait.min, Duration::from_millis(50));
        assert_eq!(cfg.backend_role, "backend");
        let missing = text.replace("t.hbs", "missing.hbs");
        assert!(RenderConfig::from_toml(&missing).unwrap_err().0.contains("missing.hbs"));
        assert!(RenderConfig::from_toml("templates = []").is_err());
        assert!(RenderConfig::from_toml(&format!("{text}\nbogus = 1")).is_err());
    }
}
