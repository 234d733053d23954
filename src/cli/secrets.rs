//! `stagehand secrets`: SOPS files encrypted to age, handled as sops 3.11 handles them.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::Subcommand;
use stagehand::secrets;

const SECRETS_EXIT_CODES: &str = "Exit codes: 0 success, 51 MAC mismatch (the file was altered), \
128 no loaded age identity matches a recipient of the file, 1 any other failure.\n\
Identities are read as sops reads them: SOPS_AGE_KEY, SOPS_AGE_KEY_FILE, SOPS_AGE_KEY_CMD, \
SOPS_AGE_SSH_PRIVATE_KEY_FILE and $XDG_CONFIG_HOME/sops/age/keys.txt.";

#[derive(Debug, Subcommand)]
pub enum SecretsCommand {
    /// Print the decrypted file, as `sops -d FILE` does.
    #[command(after_help = SECRETS_EXIT_CODES)]
    Decrypt {
        file: PathBuf,
        /// yaml, json, dotenv, ini or binary; by default from the file extension.
        #[arg(long)]
        input_type: Option<String>,
        /// Format to print in; by default the input type.
        #[arg(long)]
        output_type: Option<String>,
        /// Print the plaintext even if the MAC does not match (logged as a warning).
        #[arg(long)]
        ignore_mac: bool,
    },
    /// Encrypt a plaintext file to age recipients (or those of the matching `.sops.yaml`
    /// creation rule) and print it, or replace it with --in-place.
    #[command(after_help = SECRETS_EXIT_CODES)]
    Encrypt {
        file: PathBuf,
        /// An age recipient; repeat or separate with commas for several.
        #[arg(long = "age", value_delimiter = ',')]
        age: Vec<String>,
        /// yaml, json, dotenv, ini or binary; by default from the file extension.
        #[arg(long)]
        input_type: Option<String>,
        /// Store to write the encrypted file in; by default the input type.
        #[arg(long)]
        output_type: Option<String>,
        /// Write the encrypted file over FILE instead of printing it.
        #[arg(long)]
        in_place: bool,
    },
    /// Re-wrap the data key of FILE for a new set of age recipients, in place (values untouched).
    #[command(after_help = SECRETS_EXIT_CODES)]
    Rotate {
        file: PathBuf,
        /// A recipient to add; repeat or separate with commas.
        #[arg(long = "add-age", value_delimiter = ',')]
        add: Vec<String>,
        /// A recipient to remove; repeat or separate with commas.
        #[arg(long = "rm-age", value_delimiter = ',')]
        remove: Vec<String>,
        /// yaml, json, dotenv, ini or binary; by default from the file extension.
        #[arg(long)]
        input_type: Option<String>,
    },
    /// Make a new age identity, written as `age-keygen` writes it.
    Keygen {
        /// A post-quantum (mlkem768x25519, `age1pq1…`) identity instead of an X25519 one.
        #[arg(long)]
        pq: bool,
        /// Write it to this new file (never over an existing one) instead of stdout.
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
}

fn format(name: Option<&str>, file: &Path) -> anyhow::Result<secrets::Format> {
    match name {
        None => Ok(secrets::Format::from_path(file)),
        Some(n) => secrets::Format::from_name(n)
            .with_context(|| format!("unknown type {n:?}: use yaml, json, dotenv, ini or binary")),
    }
}

fn read(file: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))
}

pub fn run(command: SecretsCommand) -> anyhow::Result<()> {
    match command {
        SecretsCommand::Decrypt {
            file,
            input_type,
            output_type,
            ignore_mac,
        } => {
            let input = format(input_type.as_deref(), &file)?;
            let output = output_type
                .as_deref()
                .map(|t| format(Some(t), &file))
                .transpose()?;
            let ids = secrets::Identities::from_sops_environment()?;
            let stores = secrets::config::stores_near(&std::env::current_dir()?)?;
            let options = secrets::DecryptOptions {
                ignore_mac,
                output,
                stores,
            };
            let plain = secrets::decrypt_with(&read(&file)?, input, &ids, &file, &options)?;
            std::io::stdout()
                .write_all(plain.expose())
                .context("cannot write to stdout")?;
        }
        SecretsCommand::Encrypt {
            file,
            age,
            input_type,
            output_type,
            in_place,
        } => {
            let input = format(input_type.as_deref(), &file)?;
            let output = output_type
                .as_deref()
                .map(|t| format(Some(t), &file))
                .transpose()?;
            let stores = secrets::config::stores_near(&std::env::current_dir()?)?;
            let options = if age.is_empty() {
                let cwd = std::env::current_dir().context("cannot read the current directory")?;
                let config = secrets::config::find_config(&cwd)
                    .context("no --age recipient given and no .sops.yaml found")?;
                let rule = secrets::config::creation_rule_for(&config, &file)?;
                secrets::EncryptOptions {
                    recipients: rule.recipients,
                    rules: rule.rules,
                    output,
                    stores,
                }
            } else {
                secrets::EncryptOptions {
                    recipients: age,
                    rules: secrets::RuleText::default(),
                    output,
                    stores,
                }
            };
            let encrypted = secrets::encrypt(&read(&file)?, input, &options, &file)?;
            if in_place {
                secrets::write_atomic(&file, &encrypted)?;
            } else {
                std::io::stdout()
                    .write_all(&encrypted)
                    .context("cannot write to stdout")?;
            }
        }
        SecretsCommand::Rotate {
            file,
            add,
            remove,
            input_type,
        } => {
            let input = format(input_type.as_deref(), &file)?;
            let ids = secrets::Identities::from_sops_environment()?;
            let stores = secrets::config::stores_near(&std::env::current_dir()?)?;
            let options = secrets::RotateOptions {
                add,
                remove,
                stores,
            };
            let rotated = secrets::rotate_with(&read(&file)?, input, &ids, &options, &file)?;
            secrets::write_atomic(&file, &rotated)?;
        }
        SecretsCommand::Keygen { pq, output } => {
            let kind = if pq {
                secrets::KeyType::PostQuantum
            } else {
                secrets::KeyType::X25519
            };
            let key = secrets::keygen(kind);
            if let Some(path) = &output {
                secrets::write_new_key_file(path, &key)?;
            } else {
                std::io::stdout().write_all(key.file_text().as_bytes())?;
            }
            // As age-keygen: the public key on stderr unless the key went to a terminal.
            if output.is_some() || !std::io::IsTerminal::is_terminal(&std::io::stdout()) {
                eprintln!("Public key: {}", key.recipient);
            }
        }
    }
    Ok(())
}
