//! Which Node binary runs a host: an explicit path, else the seed's search
//! order (bundled beside the daemon, the resource path, `PATH`).

use std::path::{Path, PathBuf};

use super::SpawnError;

/// The Rust target triple the seed used for bundled `node-<triple>` binaries.
pub fn target_triple() -> String {
    let os = match std::env::consts::OS {
        "macos" => "apple-darwin",
        "linux" => "unknown-linux-gnu",
        "windows" => "pc-windows-msvc",
        other => other,
    };
    format!("{}-{}", std::env::consts::ARCH, os)
}

fn node_file_name() -> &'static str {
    if cfg!(windows) { "node.exe" } else { "node" }
}

/// Where Node comes from, in the seed's order after an explicit `node` path:
/// `node-<triple>` beside the executable, `node` beside the executable,
/// `$DSCODE_RESOURCE_PATH/node`, then `node` on `PATH`.
///
/// An explicit path is returned as is, even when it does not exist: spawning
/// it then fails with a message naming it.
pub fn resolve_node(
    configured: Option<&Path>,
    exe_dir: Option<&Path>,
    resource_path: Option<&Path>,
) -> Result<PathBuf, SpawnError> {
    if let Some(p) = configured {
        return Ok(p.to_path_buf());
    }
    let mut tried = Vec::new();
    if let Some(dir) = exe_dir {
        let ext = if cfg!(windows) { ".exe" } else { "" };
        for name in [
            format!("node-{}{ext}", target_triple()),
            node_file_name().to_string(),
        ] {
            let p = dir.join(name);
            if p.is_file() {
                return Ok(p);
            }
            tried.push(p.display().to_string());
        }
    }
    if let Some(dir) = resource_path {
        let p = dir.join(node_file_name());
        if p.is_file() {
            return Ok(p);
        }
        tried.push(p.display().to_string());
    }
    match which::which("node") {
        Ok(p) => Ok(p),
        Err(_) => {
            tried.push("`node` on PATH".into());
            Err(SpawnError::NodeNotFound {
                tried: tried.join(", "),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explicit_node_path_wins_even_if_missing() {
        let p = resolve_node(Some(Path::new("/nope/node")), None, None).unwrap();
        assert_eq!(p, Path::new("/nope/node"));
    }

    #[test]
    fn bundled_triple_beats_bundled_plain_beats_resource_path() {
        let dir = tempfile::tempdir().unwrap();
        let exe = dir.path().join("bin");
        let res = dir.path().join("res");
        std::fs::create_dir_all(&exe).unwrap();
        std::fs::create_dir_all(&res).unwrap();
        std::fs::write(res.join(node_file_name()), "").unwrap();
        assert_eq!(
            resolve_node(None, Some(&exe), Some(&res)).unwrap(),
            res.join(node_file_name())
        );
        std::fs::write(exe.join(node_file_name()), "").unwrap();
        assert_eq!(
            resolve_node(None, Some(&exe), Some(&res)).unwrap(),
            exe.join(node_file_name())
        );
        let triple = exe.join(format!("node-{}", target_triple()));
        std::fs::write(&triple, "").unwrap();
        assert_eq!(resolve_node(None, Some(&exe), Some(&res)).unwrap(), triple);
    }
}
