//! Parsing of method parameters (the structs are [`crate::protocol::params`]):
//! a `-32602` that names the offending field.

use jsonrpsee_types::{ErrorObject, ErrorObjectOwned, Params};
use serde::de::DeserializeOwned;

use crate::protocol::codes::INVALID_PARAMS_CODE;

/// `-32602` with a message naming the field, and `data: {"field"}`.
pub fn invalid_params(field: &str, reason: &str) -> ErrorObjectOwned {
    let message = if field.is_empty() {
        format!("invalid params: {reason}")
    } else {
        format!("invalid params: {field}: {reason}")
    };
    ErrorObject::owned(
        INVALID_PARAMS_CODE,
        message,
        Some(serde_json::json!({ "field": field })),
    )
}

/// Parse by-name params. Absent params and `[]` read as `{}`.
pub fn parse<T: DeserializeOwned>(params: &Params<'_>) -> Result<T, ErrorObjectOwned> {
    let raw = params.as_str().map(str::trim).unwrap_or("{}");
    let raw = match raw {
        "" | "[]" | "null" => "{}",
        r if r.starts_with('[') => {
            return Err(invalid_params("", "params must be an object (by name)"));
        }
        r => r,
    };
    let mut de = serde_json::Deserializer::from_str(raw);
    serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." { String::new() } else { path };
        invalid_params(&field, &e.inner().to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::params::{IdParams, NoParams, StartParams};

    fn p(s: &str) -> Params<'_> {
        Params::new(Some(s))
    }

    #[test]
    fn missing_field_is_named() {
        let e = parse::<IdParams>(&p("{}")).unwrap_err();
        assert_eq!(e.code(), INVALID_PARAMS_CODE);
        assert!(e.message().contains("extensionId"), "{}", e.message());
    }

    #[test]
    fn wrong_type_names_the_path() {
        let e = parse::<StartParams>(&p(r#"{"extensionId":"a","restart":{"backoffMs":"x"}}"#))
            .unwrap_err();
        assert!(e.message().contains("restart.backoffMs"), "{}", e.message());
    }

    #[test]
    fn unknown_field_is_named() {
        let e = parse::<IdParams>(&p(r#"{"extensionId":"a","bogus":1}"#)).unwrap_err();
        assert!(e.message().contains("bogus"), "{}", e.message());
    }

    #[test]
    fn absent_params_read_as_empty_object() {
        parse::<NoParams>(&Params::new(None)).unwrap();
        parse::<NoParams>(&p("[]")).unwrap();
        assert!(parse::<IdParams>(&p(r#"["a"]"#)).is_err());
    }

    #[test]
    fn standard_codes_are_jsonrpsee_s() {
        use crate::protocol::codes;
        use jsonrpsee_types::error as j;
        assert_eq!(codes::PARSE_ERROR_CODE, j::PARSE_ERROR_CODE);
        assert_eq!(codes::INVALID_REQUEST_CODE, j::INVALID_REQUEST_CODE);
        assert_eq!(codes::METHOD_NOT_FOUND_CODE, j::METHOD_NOT_FOUND_CODE);
        assert_eq!(codes::INVALID_PARAMS_CODE, j::INVALID_PARAMS_CODE);
        assert_eq!(codes::INTERNAL_ERROR_CODE, j::INTERNAL_ERROR_CODE);
    }
}
