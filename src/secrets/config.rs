//! `.sops.yaml` creation rules, applied as sops applies them: the config is found by walking
//! up from a directory, the target path is made relative to the config's directory, and the
//! first rule whose `path_regex` matches (or that has none) wins.

use std::path::{Path, PathBuf};

use regex::Regex;
use serde::Deserialize;

use super::error::Error;
use super::metadata::RuleText;

#[derive(Debug, Deserialize)]
struct ConfigFile {
    #[serde(default)]
    creation_rules: Vec<Rule>,
    #[serde(default)]
    stores: StoresFile,
}

/// `stores:` as sops 3.11 reads it; `dotenv` and `ini` have no settings.
#[derive(Debug, Default, Deserialize)]
struct StoresFile {
    #[serde(default)]
    yaml: IndentFile,
    #[serde(default)]
    json: IndentFile,
    #[serde(default)]
    json_binary: IndentFile,
}

#[derive(Debug, Default, Deserialize)]
struct IndentFile {
    indent: Option<i64>,
}

/// How sops lays out the files it writes, from `.sops.yaml` `stores:`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stores {
    /// YAML indentation (`stores.yaml.indent`; 0 or unset means go-yaml's 4).
    pub yaml_indent: usize,
    /// JSON indentation in spaces (`stores.json.indent`); `None` (unset or -1) is a tab.
    pub json_indent: Option<usize>,
    /// The same for the JSON that holds an encrypted binary file (`stores.json_binary.indent`).
    pub json_binary_indent: Option<usize>,
}

impl Default for Stores {
    fn default() -> Self {
        Stores {
            yaml_indent: super::yaml::DEFAULT_INDENT,
            json_indent: None,
            json_binary_indent: None,
        }
    }
}

impl Stores {
    fn from_file(file: &StoresFile, config: &Path) -> Result<Stores, Error> {
        let negative = |field| Error::Metadata {
            file: config.to_owned(),
            field,
            problem: "a negative indent is not accepted",
        };
        // sops: YAML takes a positive width, 0 for the default; JSON takes a width, -1 for a
        // tab, and refuses anything lower.
        let yaml_indent = match file.yaml.indent.unwrap_or(0) {
            0 => super::yaml::DEFAULT_INDENT,
            n => usize::try_from(n).map_err(|_| negative("stores.yaml.indent"))?,
        };
        let json = |indent: Option<i64>, field| match indent.unwrap_or(-1) {
            -1 => Ok(None),
            n => usize::try_from(n).map(Some).map_err(|_| negative(field)),
        };
        Ok(Stores {
            yaml_indent,
            json_indent: json(file.json.indent, "stores.json.indent")?,
            json_binary_indent: json(file.json_binary.indent, "stores.json_binary.indent")?,
        })
    }
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Recipients {
    Comma(String),
    List(Vec<String>),
}

impl Recipients {
    fn into_vec(self) -> Vec<String> {
        match self {
            Recipients::Comma(s) => s
                .split(',')
                .map(|r| r.trim().to_owned())
                .filter(|r| !r.is_empty())
                .collect(),
            Recipients::List(l) => l.into_iter().map(|r| r.trim().to_owned()).collect(),
        }
    }
}

#[derive(Debug, Deserialize)]
struct KeyGroup {
    #[serde(default)]
    age: Vec<String>,
}

#[derive(Debug, Deserialize)]
struct Rule {
    #[serde(default)]
    path_regex: String,
    age: Option<Recipients>,
    #[serde(default)]
    key_groups: Vec<KeyGroup>,
    unencrypted_suffix: Option<String>,
    encrypted_suffix: Option<String>,
    unencrypted_regex: Option<String>,
    encrypted_regex: Option<String>,
    unencrypted_comment_regex: Option<String>,
    encrypted_comment_regex: Option<String>,
    #[serde(default)]
    mac_only_encrypted: bool,
}

/// What a matching creation rule says: the recipients and the selection rules.
#[derive(Debug, Clone, PartialEq)]
pub struct CreationRule {
    /// The age recipients the data key is encrypted to.
    pub recipients: Vec<String>,
    /// Which values are encrypted.
    pub rules: RuleText,
}

/// The nearest `.sops.yaml` at or above `dir`.
pub fn find_config(dir: &Path) -> Option<PathBuf> {
    dir.ancestors()
        .map(|d| d.join(".sops.yaml"))
        .find(|p| p.is_file())
}

fn read_config(config: &Path) -> Result<ConfigFile, Error> {
    let text = std::fs::read_to_string(config).map_err(|source| Error::Read {
        file: config.to_owned(),
        source,
    })?;
    serde_yaml_ng::from_str(&text).map_err(|e| Error::Syntax {
        file: config.to_owned(),
        format: "YAML",
        line: e.location().map_or(0, |l| l.line()),
        problem: "not a valid .sops.yaml".into(),
    })
}

/// The `stores:` settings of `config`.
pub fn stores(config: &Path) -> Result<Stores, Error> {
    Stores::from_file(&read_config(config)?.stores, config)
}

/// What sops's `decrypt` and `encrypt` use: the `stores:` settings of the nearest
/// `.sops.yaml` at or above `dir` (sops starts from the working directory), or the defaults
/// when there is none.
pub fn stores_near(dir: &Path) -> Result<Stores, Error> {
    find_config(dir).map_or_else(|| Ok(Stores::default()), |config| stores(&config))
}

/// The creation rule of `config` for the file `target` (absolute, or relative to the current
/// directory).
pub fn creation_rule_for(config: &Path, target: &Path) -> Result<CreationRule, Error> {
    let parsed = read_config(config)?;
    let absolute = |p: &Path| {
        if p.is_absolute() {
            p.to_owned()
        } else {
            std::env::current_dir().map_or_else(|_| p.to_owned(), |cwd| cwd.join(p))
        }
    };
    let config_dir = absolute(config.parent().unwrap_or(Path::new(".")));
    let target_abs = absolute(target);
    let relative = target_abs.strip_prefix(&config_dir).map_or_else(
        |_| target_abs.to_string_lossy().into_owned(),
        |p| p.to_string_lossy().into_owned(),
    );
    for rule in parsed.creation_rules {
        if !rule.path_regex.is_empty() {
            let re = Regex::new(&rule.path_regex).map_err(|_| Error::Regex {
                file: config.to_owned(),
                field: "path_regex",
            })?;
            if !re.is_match(&relative) {
                continue;
            }
        }
        let mut recipients = rule.age.map(Recipients::into_vec).unwrap_or_default();
        for group in rule.key_groups {
            recipients.extend(group.age);
        }
        return Ok(CreationRule {
            recipients,
            rules: RuleText {
                unencrypted_suffix: rule.unencrypted_suffix,
                encrypted_suffix: rule.encrypted_suffix,
                unencrypted_regex: rule.unencrypted_regex,
                encrypted_regex: rule.encrypted_regex,
                unencrypted_comment_regex: rule.unencrypted_comment_regex,
                encrypted_comment_regex: rule.encrypted_comment_regex,
                mac_only_encrypted: rule.mac_only_encrypted,
            },
        });
    }
    Err(Error::NoCreationRule {
        file: config.to_owned(),
        target: target.to_owned(),
    })
}
