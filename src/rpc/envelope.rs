//! One JSON-RPC 2.0 message's envelope: the members of a request object read
//! raw ([`check`]), and what is wrong with one that is not a valid request
//! ([`Invalid`]: a parse error or an invalid request, with the id to echo).
//! Knows no method names and no connection.

use std::borrow::Cow;

use jsonrpsee::MethodResponse;
use jsonrpsee_types::{ErrorObject, Id};
use serde::Deserialize;
use serde::de::{self, IgnoredAny, MapAccess, Visitor};
use serde_json::value::RawValue;

use crate::protocol::codes;

/// A one-line error response.
pub(super) fn error_line(id: Id<'_>, code: i32, message: &str) -> Box<RawValue> {
    MethodResponse::error(id, ErrorObject::borrowed(code, message, None)).into_json()
}

/// The members of a request object, each kept raw. `null` stays `Some("null")`
/// (an explicit `"id": null` is a request, not a notification).
#[derive(Default)]
struct Envelope<'a> {
    jsonrpc: Option<&'a RawValue>,
    id: Option<&'a RawValue>,
    method: Option<&'a RawValue>,
    params: Option<&'a RawValue>,
}

impl<'de: 'a, 'a> Deserialize<'de> for Envelope<'a> {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = Envelope<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON-RPC request object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Envelope<'a>, A::Error> {
                let mut env = Envelope::default();
                while let Some(key) = map.next_key::<Cow<'de, str>>()? {
                    let slot = match key.as_ref() {
                        "jsonrpc" => &mut env.jsonrpc,
                        "id" => &mut env.id,
                        "method" => &mut env.method,
                        "params" => &mut env.params,
                        _ => {
                            map.next_value::<IgnoredAny>()?;
                            continue;
                        }
                    };
                    *slot = Some(map.next_value::<&'de RawValue>()?);
                }
                Ok(env)
            }
        }
        d.deserialize_map(V(std::marker::PhantomData))
    }
}

/// Why a message is not a valid request.
pub(super) enum Invalid {
    Parse(String),
    Request(Id<'static>, &'static str),
}

impl Invalid {
    pub(super) fn into_json(self) -> Box<RawValue> {
        self.into_response().into_json()
    }
}

pub(super) fn classify(e: &serde_json::Error) -> Invalid {
    match e.classify() {
        serde_json::error::Category::Data => Invalid::Request(Id::Null, "not a request object"),
        _ => Invalid::Parse(e.to_string()),
    }
}

/// A request that passed the envelope checks.
pub(super) struct Call<'a> {
    /// `None` for a notification.
    pub(super) id: Option<Id<'a>>,
    pub(super) method: Cow<'a, str>,
    pub(super) params: Option<&'a str>,
}

pub(super) fn check(text: &str) -> Result<Call<'_>, Invalid> {
    let env: Envelope<'_> = serde_json::from_str(text).map_err(|e| classify(&e))?;
    let id = match env.id {
        None => None,
        Some(raw) => match serde_json::from_str::<Id<'_>>(raw.get()) {
            Ok(id) => Some(id),
            Err(_) => {
                return Err(Invalid::Request(
                    Id::Null,
                    "id must be a string, a number or null",
                ));
            }
        },
    };
    let echo = || id.clone().map(Id::into_owned).unwrap_or(Id::Null);
    if env.jsonrpc.map(RawValue::get) != Some("\"2.0\"") {
        return Err(Invalid::Request(echo(), "jsonrpc must be \"2.0\""));
    }
    let method = match env
        .method
        .map(|m| serde_json::from_str::<Cow<'_, str>>(m.get()))
    {
        Some(Ok(m)) => m,
        _ => return Err(Invalid::Request(echo(), "method must be a string")),
    };
    let params = match env.params.map(RawValue::get) {
        None | Some("null") => None,
        Some(p) if p.starts_with('{') || p.starts_with('[') => Some(p),
        Some(_) => {
            return Err(Invalid::Request(
                echo(),
                "params must be an object or an array",
            ));
        }
    };
    Ok(Call { id, method, params })
}

impl Invalid {
    pub(super) fn into_response(self) -> MethodResponse {
        match self {
            Invalid::Request(id, why) => MethodResponse::error(
                id,
                ErrorObject::owned(codes::INVALID_REQUEST_CODE, "Invalid request", Some(why)),
            ),
            Invalid::Parse(detail) => MethodResponse::error(
                Id::Null,
                ErrorObject::owned(codes::PARSE_ERROR_CODE, "Parse error", Some(detail)),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_err(text: &str) -> (i32, String) {
        let json = match check(text) {
            Ok(_) => panic!("accepted {text}"),
            Err(e) => e.into_json(),
        };
        let v: serde_json::Value = serde_json::from_str(json.get()).unwrap();
        (
            v["error"]["code"].as_i64().unwrap() as i32,
            v["id"].to_string(),
        )
    }

    #[test]
    fn envelope_errors() {
        assert_eq!(check_err("{bad"), (-32700, "null".into()));
        assert_eq!(check_err("42"), (-32600, "null".into()));
        assert_eq!(
            check_err(r#"{"jsonrpc":"1.0","id":7,"method":"x"}"#),
            (-32600, "7".into())
        );
        assert_eq!(
            check_err(r#"{"jsonrpc":"2.0","id":"a","method":5}"#),
            (-32600, "\"a\"".into())
        );
        assert_eq!(
            check_err(r#"{"jsonrpc":"2.0","id":{},"method":"x"}"#),
            (-32600, "null".into())
        );
        assert_eq!(
            check_err(r#"{"jsonrpc":"2.0","id":1,"method":"x","params":3}"#),
            (-32600, "1".into())
        );
    }

    #[test]
    fn null_id_is_a_request_and_missing_id_a_notification() {
        let c = check(r#"{"jsonrpc":"2.0","id":null,"method":"x"}"#)
            .ok()
            .unwrap();
        assert_eq!(c.id, Some(Id::Null));
        let c = check(r#"{"jsonrpc":"2.0","method":"x"}"#).ok().unwrap();
        assert_eq!(c.id, None);
    }

    #[test]
    fn deep_nesting_is_a_parse_error_not_a_crash() {
        let deep = "[".repeat(100_000);
        let text = format!(r#"{{"jsonrpc":"2.0","id":1,"method":"x","params":{deep}}}"#);
        assert!(check(&text).is_err());
    }
}
