//! Verified Node: open the binary once, hash *that* descriptor, execute the
//! same descriptor. What runs is what was hashed, even if the path is
//! replaced in between (the seed hashed by path and executed by path).
//!
//! Hashes are cached by (device, inode, size, mtime, ctime), so a 100 MB Node
//! is hashed once, not on every restart. The binary is never modified.
//!
//! Executing the descriptor needs `/proc/self/fd` (Linux). On Windows the
//! file is opened without `FILE_SHARE_WRITE`/`FILE_SHARE_DELETE` and held
//! open across the spawn, so it cannot be changed or replaced until the
//! process exists; on macOS the path is executed after the check, with a
//! window (documented in `SECURITY.md`).

use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use sha2::{Digest, Sha256};

/// When to verify, from `[node] verify`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum VerifyMode {
    /// Verify; an empty allowlist is a config error.
    Required,
    /// Verify when the allowlist is non-empty; warn once otherwise.
    #[default]
    IfConfigured,
    Off,
}

/// The verification policy in force.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodePolicy {
    pub mode: VerifyMode,
    /// Allowed sha256 digests, lowercase hex.
    pub sha256: Vec<String>,
}

impl NodePolicy {
    pub fn active(&self) -> bool {
        match self.mode {
            VerifyMode::Off => false,
            VerifyMode::Required => true,
            VerifyMode::IfConfigured => {
                if self.sha256.is_empty() {
                    static WARNED: AtomicBool = AtomicBool::new(false);
                    if !WARNED.swap(true, Ordering::Relaxed) {
                        tracing::warn!(
                            "the Node binary is not verified: set [node] sha256 in the config"
                        );
                    }
                    false
                } else {
                    true
                }
            }
        }
    }
}

/// Why a Node binary was refused.
#[derive(Debug, Clone, thiserror::Error)]
pub enum VerifyError {
    #[error("cannot read {path}: {message}")]
    Read { path: PathBuf, message: String },
    #[error("sha256 mismatch for {path}: expected {}, got {actual}", expected.join(" or "))]
    Mismatch {
        path: PathBuf,
        expected: Vec<String>,
        actual: String,
    },
}

/// An open, verified binary: execute it through this descriptor.
#[derive(Debug, Clone)]
pub struct VerifiedFile {
    pub file: Arc<File>,
    pub sha256: String,
}

type Key = (u64, u64, u64, i64, i64, i64, i64);

#[cfg(unix)]
fn cache_key(m: &std::fs::Metadata) -> Key {
    use std::os::unix::fs::MetadataExt;
    (
        m.dev(),
        m.ino(),
        m.size(),
        m.mtime(),
        m.mtime_nsec(),
        m.ctime(),
        m.ctime_nsec(),
    )
}

/// Windows has no stable inode in std: size, write time and creation time.
#[cfg(windows)]
fn cache_key(m: &std::fs::Metadata) -> Key {
    use std::os::windows::fs::MetadataExt;
    (
        0,
        0,
        m.file_size(),
        m.last_write_time() as i64,
        0,
        m.creation_time() as i64,
        0,
    )
}

#[cfg(unix)]
fn open_for_exec(path: &Path) -> std::io::Result<File> {
    // std opens with O_CLOEXEC.
    File::open(path)
}

/// Readers (the loader) may share it; writers and renames may not.
#[cfg(windows)]
fn open_for_exec(path: &Path) -> std::io::Result<File> {
    use std::os::windows::fs::OpenOptionsExt;
    const FILE_SHARE_READ: u32 = 1;
    std::fs::OpenOptions::new()
        .read(true)
        .share_mode(FILE_SHARE_READ)
        .open(path)
}

fn cache() -> &'static Mutex<HashMap<Key, String>> {
    static CACHE: OnceLock<Mutex<HashMap<Key, String>>> = OnceLock::new();
    CACHE.get_or_init(Default::default)
}

/// Hash the open file (streamed, never read whole into memory).
fn hash_file(mut f: &File) -> std::io::Result<String> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// Open `path` once (`O_RDONLY|O_CLOEXEC`), hash that descriptor (or take the
/// cached hash of the same inode and times), and check it against `allowed`.
pub fn open_verified(path: &Path, allowed: &[String]) -> Result<VerifiedFile, VerifyError> {
    let read_err = |e: std::io::Error| VerifyError::Read {
        path: path.to_path_buf(),
        message: e.to_string(),
    };
    let file = open_for_exec(path).map_err(read_err)?;
    let key = cache_key(&file.metadata().map_err(read_err)?);
    let cached = cache()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(&key)
        .cloned();
    let sha256 = match cached {
        Some(h) => h,
        None => {
            let h = hash_file(&file).map_err(read_err)?;
            cache()
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(key, h.clone());
            h
        }
    };
    if !allowed.iter().any(|a| a.eq_ignore_ascii_case(&sha256)) {
        return Err(VerifyError::Mismatch {
            path: path.to_path_buf(),
            expected: allowed.to_vec(),
            actual: sha256,
        });
    }
    Ok(VerifiedFile {
        file: Arc::new(file),
        sha256,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_match_and_mismatch() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("bin");
        std::fs::write(&p, b"abc").unwrap();
        let abc = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        let v = open_verified(&p, &[abc.to_uppercase()]).unwrap();
        assert_eq!(v.sha256, abc);
        let e = open_verified(&p, &["00".into()]).unwrap_err().to_string();
        assert!(
            e.contains(abc) && e.contains("expected 00") && e.contains("bin"),
            "{e}"
        );
    }

    #[test]
    fn a_changed_file_is_hashed_again() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("bin");
        std::fs::write(&p, b"abc").unwrap();
        let first = open_verified(&p, &[]).unwrap_err();
        std::fs::write(&p, b"abd!").unwrap();
        let second = open_verified(&p, &[]).unwrap_err();
        assert_ne!(first.to_string(), second.to_string());
    }

    #[test]
    fn policy() {
        let p = NodePolicy::default();
        assert!(!p.active());
        let p = NodePolicy {
            mode: VerifyMode::IfConfigured,
            sha256: vec!["x".into()],
        };
        assert!(p.active());
        assert!(
            !NodePolicy {
                mode: VerifyMode::Off,
                sha256: vec!["x".into()]
            }
            .active()
        );
    }
}
