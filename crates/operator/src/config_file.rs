//! The optional settings file of `skyloom run` (`--config FILE`).
//!
//! The file is a YAML mapping whose keys are the long names of `skyloom run`'s flags
//! (`probe-interval-seconds: 5`). A value in the file counts only for settings that were
//! neither given as a flag nor as an environment variable, so the order of precedence is
//! flag, environment, file, built-in default. The file is turned into flags and the
//! command line is parsed again by clap, so every value goes through the same parser and
//! limits as its flag.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use clap::parser::ValueSource;
use clap::{ArgAction, ArgMatches, Command};

/// Why a settings file could not be used. Names the file and the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigFileError {
    /// The file could not be read.
    #[error("cannot read the settings file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is not a YAML mapping of scalars.
    #[error("the settings file {path} is not a mapping of setting names to values: {message}")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        message: String,
    },
    /// A key names no setting of `skyloom run`.
    #[error(
        "the settings file {path} sets `{key}`, which is not a setting of `skyloom run` (keys are the long flag names, e.g. `probe-interval-seconds`)"
    )]
    UnknownKey {
        /// The file.
        path: PathBuf,
        /// The key.
        key: String,
    },
    /// A switch was given something other than true or false.
    #[error("the settings file {path} sets `{key}` to `{value}`; it takes true or false")]
    NotABool {
        /// The file.
        path: PathBuf,
        /// The key.
        key: String,
        /// The value as written.
        value: String,
    },
}

/// A scalar value in the settings file.
#[derive(Debug, serde::Deserialize)]
#[serde(untagged)]
enum Scalar {
    Bool(bool),
    Int(i64),
    Float(f64),
    Text(String),
}

impl Scalar {
    fn text(&self) -> String {
        match self {
            Scalar::Bool(b) => b.to_string(),
            Scalar::Int(i) => i.to_string(),
            Scalar::Float(f) => f.to_string(),
            Scalar::Text(s) => s.clone(),
        }
    }
}

/// Reads `path` and returns the flags it contributes to `command` (the `run` subcommand),
/// skipping every setting that `matches` already has from the command line or the
/// environment. The key `config` itself is refused.
pub fn file_flags(
    command: &Command,
    matches: &ArgMatches,
    path: &Path,
) -> Result<Vec<OsString>, ConfigFileError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigFileError::Read {
        path: path.to_owned(),
        source,
    })?;
    flags_from_text(command, matches, path, &text)
}

fn flags_from_text(
    command: &Command,
    matches: &ArgMatches,
    path: &Path,
    text: &str,
) -> Result<Vec<OsString>, ConfigFileError> {
    let settings: BTreeMap<String, Scalar> = if text.trim().is_empty() {
        BTreeMap::new()
    } else {
        serde_saphyr::from_str(text).map_err(|e| ConfigFileError::Syntax {
            path: path.to_owned(),
            message: e.to_string(),
        })?
    };
    let mut flags = Vec::new();
    for (key, value) in settings {
        let unknown = || ConfigFileError::UnknownKey {
            path: path.to_owned(),
            key: key.clone(),
        };
        let arg = command
            .get_arguments()
            .find(|a| a.get_long() == Some(key.as_str()) && key != "config")
            .ok_or_else(unknown)?;
        let from_user = matches!(
            matches.value_source(arg.get_id().as_str()),
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        );
        if from_user {
            continue;
        }
        match arg.get_action() {
            ArgAction::SetTrue => match value {
                Scalar::Bool(true) => flags.push(OsString::from(format!("--{key}"))),
                Scalar::Bool(false) => {}
                other => {
                    return Err(ConfigFileError::NotABool {
                        path: path.to_owned(),
                        key,
                        value: other.text(),
                    });
                }
            },
            _ => flags.push(OsString::from(format!("--{key}={}", value.text()))),
        }
    }
    Ok(flags)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RunArgs;
    use clap::{Args, FromArgMatches};

    fn command() -> Command {
        RunArgs::augment_args(Command::new("run").no_binary_name(true))
    }

    /// Parses `argv`, adds the flags of `file` and parses again, as `skyloom run` does.
    fn parse(argv: &[&str], file: &str) -> Result<RunArgs, ConfigFileError> {
        let first = command().get_matches_from(argv);
        let mut all: Vec<OsString> = argv.iter().map(OsString::from).collect();
        all.extend(flags_from_text(
            &command(),
            &first,
            Path::new("run.yaml"),
            file,
        )?);
        let second = command().get_matches_from(all);
        Ok(RunArgs::from_arg_matches(&second).expect("reparse"))
    }

    #[test]
    fn file_values_fill_what_flags_do_not_set() {
        let args = parse(
            &["--namespace", "from-flag"],
            "namespace: from-file\nprobe-interval-seconds: 2\nleader-elect: false\nallow-exec-credentials: true\nlog-format: json\n",
        )
        .expect("valid file");
        assert_eq!(args.namespace, "from-flag", "a flag beats the file");
        assert_eq!(args.probe_interval_seconds, 2);
        assert!(!args.leader_elect);
        assert!(args.allow_exec_credentials);
        assert_eq!(args.log_format, crate::config::LogFormat::Json);
        assert_eq!(
            args.member_timeout_seconds, 5,
            "unset everywhere: the default"
        );
    }

    #[test]
    fn the_example_file_uses_known_keys_and_the_defaults() {
        let text = include_str!("../../../config/skyloom-run.yaml");
        let with_file = parse(&[], text).expect("the example file is valid");
        let without = parse(&[], "").expect("empty file");
        assert_eq!(format!("{with_file:?}"), format!("{without:?}"));
    }

    #[test]
    fn an_empty_file_changes_nothing() {
        let args = parse(&[], "").expect("empty file");
        assert_eq!(args.namespace, "skyloom-system");
        assert!(!args.allow_exec_credentials);
    }

    #[test]
    fn unknown_keys_and_bad_switches_name_the_file_and_key() {
        let e = parse(&[], "probe-interval: 5\n").expect_err("unknown key");
        let text = e.to_string();
        assert!(
            text.contains("run.yaml") && text.contains("`probe-interval`"),
            "{text}"
        );
        let e = parse(&[], "config: other.yaml\n").expect_err("config in config");
        assert!(e.to_string().contains("`config`"), "{e}");
        let e = parse(&[], "allow-exec-credentials: maybe\n").expect_err("not a bool");
        assert!(e.to_string().contains("`allow-exec-credentials`"), "{e}");
        let e = parse(&[], "- a\n- b\n").expect_err("not a mapping");
        assert!(matches!(e, ConfigFileError::Syntax { .. }), "{e}");
    }

    #[test]
    fn a_bad_value_is_refused_by_the_flag_parser() {
        let first = command().get_matches_from(Vec::<&str>::new());
        let flags = flags_from_text(
            &command(),
            &first,
            Path::new("run.yaml"),
            "probe-interval-seconds: soon\n",
        )
        .expect("keys are known");
        let err = command()
            .try_get_matches_from(flags)
            .expect_err("not a number");
        assert!(
            err.to_string().contains("--probe-interval-seconds"),
            "{err}"
        );
    }
}
