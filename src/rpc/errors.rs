//! [`SupervisorError`] → JSON-RPC error: the code (`protocol::codes`) and
//! the `data` object each failure carries (`proto-docs/control-protocol.md`,
//! "Errors").

use jsonrpsee_types::{ErrorObject, ErrorObjectOwned};
use serde_json::json;

use super::params::invalid_params;
use crate::protocol::codes;
use crate::supervisor::SupervisorError;

impl From<SupervisorError> for ErrorObjectOwned {
    fn from(e: SupervisorError) -> Self {
        let msg = e.to_string();
        match e {
            SupervisorError::UnknownHost(id) => {
                ErrorObject::owned(codes::UNKNOWN_HOST, msg, Some(json!({ "extensionId": id })))
            }
            SupervisorError::InvalidTransition {
                extension_id,
                state,
            } => ErrorObject::owned(
                codes::INVALID_TRANSITION,
                msg,
                Some(json!({ "extensionId": extension_id, "state": state })),
            ),
            SupervisorError::Spawn {
                extension_id,
                source: crate::spawn::SpawnError::Verify(v),
            } => {
                let data = match &v {
                    crate::verify::VerifyError::Mismatch {
                        path,
                        expected,
                        actual,
                    } => json!({
                        "extensionId": extension_id, "path": path, "expected": expected, "actual": actual,
                    }),
                    crate::verify::VerifyError::Read { path, .. } => {
                        json!({ "extensionId": extension_id, "path": path })
                    }
                };
                ErrorObject::owned(
                    codes::VERIFY_FAILED,
                    format!("node verification failed: {v}"),
                    Some(data),
                )
            }
            SupervisorError::Spawn {
                extension_id,
                source,
            } => ErrorObject::owned(
                codes::SPAWN_FAILED,
                msg,
                Some(json!({ "extensionId": extension_id, "path": source.path() })),
            ),
            SupervisorError::InvalidSpec { field, reason } => invalid_params(field, &reason),
            SupervisorError::ShuttingDown => {
                ErrorObject::owned(codes::SHUTTING_DOWN, msg, None::<()>)
            }
            SupervisorError::ExitedBeforeReady {
                extension_id,
                reason,
                last_exit,
            } => ErrorObject::owned(
                codes::EXITED_BEFORE_READY,
                msg,
                Some(
                    json!({ "extensionId": extension_id, "reason": reason, "lastExit": last_exit }),
                ),
            ),
            SupervisorError::ReadyTimeout { extension_id, ms } => ErrorObject::owned(
                codes::READY_TIMEOUT,
                msg,
                Some(json!({ "extensionId": extension_id, "readyTimeoutMs": ms })),
            ),
            SupervisorError::Relay {
                extension_id,
                error,
            } => {
                use crate::ipc::RelayError as R;
                let code = match &error {
                    R::Host { .. } => codes::HOST_ERROR,
                    R::NotReady => codes::NOT_READY,
                    R::Timeout(_) => codes::REQUEST_TIMEOUT,
                    R::Closed(_) => codes::CHANNEL_CLOSED,
                    R::Encode(_) => codes::INVALID_PARAMS_CODE,
                };
                let data = match error {
                    R::Host { kind, payload, .. } => json!({
                        "extensionId": extension_id,
                        "type": kind,
                        "payload": serde_json::from_str::<serde_json::Value>(payload.get()).unwrap_or_default(),
                    }),
                    _ => json!({ "extensionId": extension_id }),
                };
                ErrorObject::owned(code, msg, Some(data))
            }
            SupervisorError::Respond(e) => {
                ErrorObject::owned(codes::NO_SUCH_HOST_REQUEST, e.to_string(), None::<()>)
            }
        }
    }
}
