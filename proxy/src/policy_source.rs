//! Where the running policy comes from: the `[policy]` section and its policy directory,
//! named by the directory's git commit when it is a clean checkout, and watched for
//! changes so that an edit (or a `git pull`) is picked up without a signal.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::SystemTime;

use portcullis_policy::governance::{CLASSIFICATION_FILE, MODEL_FILE, POLICY_FILE, RULES_FILE};
use portcullis_policy::{Policy, PolicyConfig, PolicyError};

/// Compiles the policy of `config`, versioned by git where possible (see
/// [`git_version`]), else by the content hash the policy computes.
pub fn load(config: &PolicyConfig) -> Result<Policy, PolicyError> {
    let policy = Policy::load(config)?;
    Ok(match config.dir.as_deref().and_then(git_version) {
        Some(version) => policy.with_version(version),
        None => policy,
    })
}

/// `git:<commit>` when `dir` is inside a git checkout whose policy files have no
/// uncommitted changes; `None` otherwise (no git, not a checkout, or edited files: then
/// the commit would not name what is loaded, and the content hash is used instead).
pub fn git_version(dir: &Path) -> Option<String> {
    let git = |args: &[&str]| {
        Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(args)
            .output()
            .ok()
            .filter(|out| out.status.success())
            .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_string())
    };
    let commit = git(&["rev-parse", "HEAD"])?;
    let dirty = git(&["status", "--porcelain", "--untracked-files=no", "--", "."])?;
    (dirty.is_empty() && commit.len() >= 40).then(|| format!("git:{commit}"))
}

/// What a change of the policy is detected by: size and modification time of the
/// configuration file and of each file of the policy directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fingerprint(Vec<(PathBuf, Option<(u64, SystemTime)>)>);

impl Fingerprint {
    /// The fingerprint of `config_path` and of the policy directory `dir`, if any.
    pub fn of(config_path: &Path, dir: Option<&Path>) -> Fingerprint {
        let mut paths = vec![config_path.to_path_buf()];
        if let Some(dir) = dir {
            for name in [MODEL_FILE, POLICY_FILE, CLASSIFICATION_FILE, RULES_FILE] {
                paths.push(dir.join(name));
            }
        }
        Fingerprint(
            paths
                .into_iter()
                .map(|path| {
                    let stamp = std::fs::metadata(&path)
                        .ok()
                        .and_then(|m| Some((m.len(), m.modified().ok()?)));
                    (path, stamp)
                })
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_changes_with_a_file() -> std::io::Result<()> {
        let dir = tempfile::tempdir()?;
        let config = dir.path().join("portcullis.toml");
        std::fs::write(&config, "a")?;
        let before = Fingerprint::of(&config, Some(dir.path()));
        assert_eq!(before, Fingerprint::of(&config, Some(dir.path())));
        std::fs::write(dir.path().join(RULES_FILE), "b")?;
        assert_ne!(before, Fingerprint::of(&config, Some(dir.path())));
        Ok(())
    }

    #[test]
    fn no_git_version_outside_a_checkout() -> std::io::Result<()> {
        let dir = tempfile::tempdir()?;
        assert_eq!(git_version(dir.path()), None);
        Ok(())
    }
}
