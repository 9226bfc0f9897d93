//! The host requests the daemon answers itself, as DSCode's own backend
//! does, so a host runs with no editor attached at all:
//!
//! - `get-extensions-dir` → the host's `extensionsDir` (canonical path);
//! - `get-extension-storage {extensionId}` → `{global, workspace, logs}`
//!   directories under the host's storage root, created 0700;
//! - any type in the host's static-answer table → that payload.
//!
//! Everything else goes to the [`MessageHub`] (editors). Every byte of a
//! request is the host's: the extension id in a storage request is checked
//! like a host id before it becomes a path.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::value::RawValue;

use super::messages::{MessageHub, Offer};
use crate::ipc::{Counters, HostRequests, Message, Replier};

pub const GET_EXTENSIONS_DIR: &str = "get-extensions-dir";
pub const GET_EXTENSION_STORAGE: &str = "get-extension-storage";

/// One host process's request sink.
pub struct LocalAnswers {
    pub hub: Arc<MessageHub>,
    pub counters: Arc<Counters>,
    /// Canonical; `None` leaves the question to editors.
    pub extensions_dir: Option<PathBuf>,
    /// Where `get-extension-storage` makes directories; `None` leaves the
    /// question to editors.
    pub storage_dir: Option<PathBuf>,
    /// Payloads (compact JSON text) by message type.
    pub statics: BTreeMap<String, String>,
    /// The user the host runs as, who must own what is made for it.
    pub owner: Option<crate::spawn::HostUser>,
}

impl HostRequests for LocalAnswers {
    fn on_request(&self, extension_id: &str, msg: Message, reply: Replier) {
        let kind = msg.kind.as_str();
        if kind == GET_EXTENSIONS_DIR
            && let Some(dir) = &self.extensions_dir
        {
            let path = serde_json::value::to_raw_value(&dir.to_string_lossy()).expect("JSON");
            answer(msg, Ok(path), reply);
        } else if kind == GET_EXTENSION_STORAGE
            && let Some(root) = self.storage_dir.clone()
        {
            let owner = self.owner;
            tokio::task::spawn_blocking(move || {
                let r = storage(&root, &msg.payload, owner);
                answer(msg, r, reply);
            });
        } else if let Some(text) = self.statics.get(kind) {
            let payload = RawValue::from_string(text.clone()).expect("checked when declared");
            answer(msg, Ok(payload), reply);
        } else if self.hub.offer(extension_id, msg, reply) == Offer::Refused {
            self.counters.refused();
        }
    }
}

/// Reply `-response` or `-error`, without holding up the reader.
fn answer(msg: Message, result: Result<Box<RawValue>, String>, reply: Replier) {
    let m = match result {
        Ok(p) => msg.response(p),
        Err(e) => msg.error_reply(&e),
    };
    let send = async move {
        let _ = reply.send(&m).await;
    };
    match tokio::runtime::Handle::try_current() {
        Ok(rt) => {
            rt.spawn(send);
        }
        Err(_) => tracing::error!("no runtime to answer a host request on"),
    }
}

/// `{global, workspace, logs}` for the extension the payload names, owned
/// by `owner` when the host runs as another user.
fn storage(
    root: &Path,
    payload: &RawValue,
    owner: Option<crate::spawn::HostUser>,
) -> Result<Box<RawValue>, String> {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Ask {
        extension_id: String,
    }
    let ask: Ask = serde_json::from_str(payload.get())
        .map_err(|_| "Missing extensionId in request".to_string())?;
    super::validate_extension_id(&ask.extension_id).map_err(|e| e.to_string())?;
    let base = root.join(&ask.extension_id);
    let dirs = ["global", "workspace", "logs"].map(|d| base.join(d));
    for d in &dirs {
        make_private_dir(d).map_err(|e| format!("cannot create {}: {e}", d.display()))?;
    }
    if let Some(user) = owner {
        // The root first: it may have been made just now, by the daemon.
        for d in [root, base.as_path()]
            .into_iter()
            .chain(dirs.iter().map(|d| d.as_path()))
        {
            user.own(d)
                .map_err(|e| format!("cannot hand over {}: {e}", d.display()))?;
        }
    }
    let [global, workspace, logs] = dirs.map(|d| d.to_string_lossy().into_owned());
    serde_json::value::to_raw_value(&serde_json::json!({
        "global": global,
        "workspace": workspace,
        "logs": logs,
    }))
    .map_err(|e| e.to_string())
}

pub use crate::spawn::prepare::make_private_dir;

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(s: &str) -> Box<RawValue> {
        RawValue::from_string(s.into()).unwrap()
    }

    #[test]
    fn storage_dirs_are_made_under_the_root() {
        let root = tempfile::tempdir().unwrap();
        let got = storage(root.path(), &raw(r#"{"extensionId":"acme.one"}"#), None).unwrap();
        let v: serde_json::Value = serde_json::from_str(got.get()).unwrap();
        for k in ["global", "workspace", "logs"] {
            let p = PathBuf::from(v[k].as_str().unwrap());
            assert!(p.is_dir(), "{k}: {}", p.display());
            assert!(p.starts_with(root.path().join("acme.one")));
        }
    }

    #[test]
    fn storage_refuses_ids_that_are_paths() {
        let root = tempfile::tempdir().unwrap();
        for bad in [
            r#"{"extensionId":"../../etc"}"#,
            r#"{"extensionId":"a/b"}"#,
            r#"{"extensionId":""}"#,
            r#"{}"#,
            r#""acme.one""#,
        ] {
            assert!(storage(root.path(), &raw(bad), None).is_err(), "{bad}");
        }
        assert_eq!(std::fs::read_dir(root.path()).unwrap().count(), 0);
    }
}
