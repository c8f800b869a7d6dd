//! The testbed's error type.

use std::path::PathBuf;

/// Everything that can go wrong while starting, driving or stopping a testbed.
#[derive(Debug, thiserror::Error)]
pub enum TestbedError {
    /// A binary is not in the cache; the message names the command that builds it.
    #[error(
        "testbed binary '{name}' not found in {dir}: run `scripts/testbed-install` (it builds the pinned versions with Go)"
    )]
    MissingBinary {
        /// The binary's file name.
        name: String,
        /// The directory that was searched.
        dir: PathBuf,
    },
    /// A file-system or process operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Generating keys or certificates failed.
    #[error("generating the {what}: {source}")]
    Pki {
        /// Which piece of PKI.
        what: &'static str,
        /// The underlying error.
        #[source]
        source: rcgen::Error,
    },
    /// The testbed description is invalid.
    #[error("invalid testbed spec: {0}")]
    Spec(String),
    /// A component did not become ready in time; carries the last lines of its log.
    #[error("{0}")]
    NotReady(Box<NotReady>),
    /// A call to a member's API failed.
    #[error("{context}: {source}")]
    Kube {
        /// What was being done.
        context: String,
        /// The underlying error.
        #[source]
        source: kube::Error,
    },
    /// A member's kubeconfig could not be turned into a client configuration.
    #[error("{context}: {message}")]
    Config {
        /// What was being done.
        context: String,
        /// What went wrong.
        message: String,
    },
    /// There is no member of that name (the name asked for, and the names there are).
    #[error("no member named '{0}' in this testbed (it has: {1})")]
    UnknownMember(String, String),
    /// The control socket of a running testbed answered with an error or not at all.
    #[error("testbed control: {0}")]
    Control(String),
}

/// Builds a closure that wraps an `std::io::Error` with context.
pub(crate) fn io_err(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> TestbedError {
    let context = context.into();
    move |source| TestbedError::Io { context, source }
}

/// Builds a closure that wraps a `kube::Error` with context.
pub(crate) fn kube_err(context: impl Into<String>) -> impl FnOnce(kube::Error) -> TestbedError {
    let context = context.into();
    move |source| TestbedError::Kube { context, source }
}

/// Which component of which member did not become ready, and its log's last lines.
#[derive(Debug)]
pub struct NotReady {
    /// The member's name.
    pub member: String,
    /// The component (etcd, kube-apiserver, ...).
    pub component: String,
    /// How long was waited.
    pub seconds: u64,
    /// The last thing that failed.
    pub reason: String,
    /// The log file.
    pub log: PathBuf,
    /// The last lines of the log.
    pub tail: String,
}

impl std::fmt::Display for NotReady {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}/{} not ready within {}s: {}\n--- last lines of {} ---\n{}",
            self.member,
            self.component,
            self.seconds,
            self.reason,
            self.log.display(),
            self.tail
        )
    }
}
