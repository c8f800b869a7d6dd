//! Where the pinned control-plane binaries live: the cache that `scripts/testbed-install`
//! fills, named after the versions in `versions.env`.

use std::path::{Path, PathBuf};

use crate::error::TestbedError;

/// The pinned versions, shared with `scripts/testbed-install`.
const VERSIONS_ENV: &str = include_str!("../versions.env");

/// Reads one `KEY=value` line of `versions.env`.
pub fn pinned_version(key: &str) -> Option<&'static str> {
    VERSIONS_ENV
        .lines()
        .filter_map(|line| line.split_once('='))
        .find(|(k, _)| k.trim() == key)
        .map(|(_, v)| v.trim())
}

/// The cache directory holding the binaries, as `scripts/testbed-install` computes it.
/// `SKYLOOM_TESTBED_BIN` overrides it.
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("SKYLOOM_TESTBED_BIN") {
        return PathBuf::from(dir);
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from(".cache"));
    let v = |k| pinned_version(k).unwrap_or("unknown");
    cache
        .join("skyloom/testbed")
        .join(format!(
            "k8s-{}_etcd-{}_kwok-{}_helm-{}",
            v("KUBERNETES_VERSION"),
            v("ETCD_VERSION"),
            v("KWOK_VERSION"),
            v("HELM_VERSION"),
        ))
        .join("bin")
}

/// Paths of every binary the testbed runs, checked to exist.
#[derive(Debug, Clone)]
pub struct Binaries {
    /// etcd.
    pub etcd: PathBuf,
    /// kube-apiserver.
    pub kube_apiserver: PathBuf,
    /// kube-controller-manager.
    pub kube_controller_manager: PathBuf,
    /// kube-scheduler.
    pub kube_scheduler: PathBuf,
    /// kwok.
    pub kwok: PathBuf,
    /// kubectl, for tests and people.
    pub kubectl: PathBuf,
    /// helm, for chart tests.
    pub helm: PathBuf,
}

impl Binaries {
    /// Finds every binary in [`bin_dir`], or names the install command.
    pub fn locate() -> Result<Self, TestbedError> {
        Self::locate_in(&bin_dir())
    }

    /// Finds every binary in `dir`.
    pub fn locate_in(dir: &Path) -> Result<Self, TestbedError> {
        let find = |name: &str| {
            let path = dir.join(name);
            if path.is_file() {
                Ok(path)
            } else {
                Err(TestbedError::MissingBinary {
                    name: name.to_owned(),
                    dir: dir.to_owned(),
                })
            }
        };
        Ok(Self {
            etcd: find("etcd")?,
            kube_apiserver: find("kube-apiserver")?,
            kube_controller_manager: find("kube-controller-manager")?,
            kube_scheduler: find("kube-scheduler")?,
            kwok: find("kwok")?,
            kubectl: find("kubectl")?,
            helm: find("helm")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_pinned() {
        assert!(
            pinned_version("KUBERNETES_VERSION")
                .unwrap()
                .starts_with("v1.")
        );
        assert!(pinned_version("ETCD_VERSION").unwrap().starts_with("v3."));
        assert_eq!(pinned_version("NOPE"), None);
    }

    #[test]
    fn missing_binary_names_the_install_command() {
        let dir = tempfile::tempdir().unwrap();
        let err = Binaries::locate_in(dir.path()).unwrap_err().to_string();
        assert!(err.contains("etcd"), "{err}");
        assert!(err.contains("scripts/testbed-install"), "{err}");
    }
}
