//! `ApiJson<T>`: the JSON body extractor every handler uses. Every way a body can be wrong
//! (not JSON, wrong content type, too large, missing field, wrong type) becomes a problem+json
//! naming the field, instead of axum's plain-text rejection.

use axum::{
    body::Bytes,
    extract::{FromRequest, Request, rejection::BytesRejection},
    http::{StatusCode, header},
};
use rust_decimal::Decimal;
use serde::de::DeserializeOwned;

use super::problem::{FieldError, Problem};

/// A JSON request body, deserialised with the path of the offending field on error.
/// The raw bytes are kept so handlers can fingerprint exactly what the client sent.
#[derive(Debug, Clone)]
pub struct ApiJson<T> {
    pub value: T,
    pub raw: Bytes,
}

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = Problem;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        if !has_json_content_type(&request) {
            return Err(Problem::from_status(StatusCode::UNSUPPORTED_MEDIA_TYPE));
        }
        let raw = Bytes::from_request(request, state)
            .await
            .map_err(|rejection: BytesRejection| Problem::from_status(rejection.status()))?;
        let value = parse(&raw)?;
        Ok(Self { value, raw })
    }
}

/// Deserialises `raw` into `T`, mapping serde's errors to a 400 problem with field errors.
pub fn parse<T: DeserializeOwned>(raw: &[u8]) -> Result<T, Problem> {
    match raw.iter().find(|b| !b.is_ascii_whitespace()) {
        None => return Err(Problem::bad_request("El cuerpo de la solicitud está vacío")),
        // serde would accept `["a", 10, ...]` as a struct by position; the API only takes objects.
        Some(b'{') => {}
        Some(_) => return Err(Problem::bad_request("El cuerpo debe ser un objeto JSON")),
    }
    // JSON can only carry NUL as the escape `\u0000`: look closer only when it is there.
    if raw.windows(6).any(|w| w == br"\u0000")
        && let Ok(tree) = serde_json::from_slice::<serde_json::Value>(raw)
        && let Some(field) = nul_in(&tree, "")
    {
        return Err(Problem::validation(vec![FieldError::new(
            field,
            "no puede contener el carácter NUL (\\u0000)",
        )]));
    }
    let mut deserializer = serde_json::Deserializer::from_slice(raw);
    let value = serde_path_to_error::deserialize(&mut deserializer).map_err(describe)?;
    deserializer
        .end()
        .map_err(|_| Problem::bad_request("El cuerpo contiene datos después del JSON"))?;
    Ok(value)
}

/// The path (`a.b[2].c`) of the first string or key holding a NUL character. PostgreSQL can
/// store NUL in neither text nor jsonb; found by fuzzing, every such field was a 500, and in a
/// group commit it failed the other requests of its transaction too.
fn nul_in(value: &serde_json::Value, path: &str) -> Option<String> {
    let join = |key: &str| {
        if path.is_empty() {
            key.to_owned()
        } else {
            format!("{path}.{key}")
        }
    };
    match value {
        serde_json::Value::String(text) if text.contains('\0') => Some(if path.is_empty() {
            ".".to_owned()
        } else {
            path.to_owned()
        }),
        serde_json::Value::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, item)| nul_in(item, &format!("{path}[{i}]"))),
        serde_json::Value::Object(fields) => fields.iter().find_map(|(key, item)| {
            if key.contains('\0') {
                Some(join(&key.replace('\0', "\\u0000")))
            } else {
                nul_in(item, &join(key))
            }
        }),
        _ => None,
    }
}

/// Reads a JSON number exactly. Integers are exact; a fractional number is read back from its
/// shortest round-trip representation, which is the literal the client wrote for any amount
/// with up to 15 significant digits (so `0.1` stays `0.1` and `10.555` is seen as 3 decimals).
pub fn exact_decimal(numero: &serde_json::Number) -> Result<Decimal, String> {
    if let Some(entero) = numero.as_i64() {
        return Ok(Decimal::from(entero));
    }
    if let Some(entero) = numero.as_u64() {
        return Ok(Decimal::from(entero));
    }
    let flotante = numero
        .as_f64()
        .ok_or_else(|| "no es un número".to_owned())?;
    let texto = flotante.to_string();
    texto
        .parse::<Decimal>()
        .or_else(|_| Decimal::from_scientific(&texto))
        .map_err(|_| format!("el número {numero} está fuera de rango"))
}

fn describe(error: serde_path_to_error::Error<serde_json::Error>) -> Problem {
    let path = error.path().to_string();
    let inner = error.into_inner();
    match inner.classify() {
        serde_json::error::Category::Syntax
            if let Some(problem) = valid_json_refused(&path, &inner) =>
        {
            problem
        }
        serde_json::error::Category::Syntax | serde_json::error::Category::Eof => {
            Problem::bad_request(format!(
                "El cuerpo no es JSON válido (línea {}, columna {})",
                inner.line(),
                inner.column()
            ))
        }
        serde_json::error::Category::Io => Problem::bad_request("No se pudo leer el cuerpo"),
        serde_json::error::Category::Data => {
            Problem::validation(vec![field_error(&path, &inner.to_string())])
        }
    }
}

/// What the JSON grammar allows but no field of ours can hold, which serde_json reports as a
/// syntax error at a position: a number beyond `f64` (`1e400`, a hundred digits), a string with
/// a lone UTF-16 surrogate (`"\ud800"`, not Unicode), nesting past 128 levels. Said as what it
/// is, naming the field, found by the abuse cases (`make fuzz`).
fn valid_json_refused(path: &str, error: &serde_json::Error) -> Option<Problem> {
    let message = error.to_string();
    let message = message.split(" at line ").next().unwrap_or(&message);
    let field = if path == "." || path.is_empty() {
        "body".to_owned()
    } else {
        path.to_owned()
    };
    let why = match message {
        "number out of range" => "número fuera de rango",
        "recursion limit exceeded" => {
            return Some(Problem::bad_request(
                "El JSON anida más de 128 niveles de objetos o listas",
            ));
        }
        // A lone high surrogate is reported as the end of the hex escape it needs after it.
        m if m.contains("surrogate")
            || m.contains("unicode code point")
            || m == "unexpected end of hex escape" =>
        {
            "contiene un escape \\u que no es Unicode válido (p. ej. un sustituto UTF-16 sin pareja)"
        }
        _ => return None,
    };
    Some(Problem::validation(vec![FieldError::new(field, why)]))
}

/// Turns serde's English message into a field name and a Spanish sentence.
fn field_error(path: &str, message: &str) -> FieldError {
    // serde reports a missing field at the parent path, with the name in backticks.
    let message = message.split(" at line ").next().unwrap_or(message);
    if let Some(name) = message
        .strip_prefix("missing field `")
        .and_then(|rest| rest.split('`').next())
    {
        let field = if path == "." || path.is_empty() {
            name.to_owned()
        } else {
            format!("{path}.{name}")
        };
        return FieldError::new(field, "es obligatorio");
    }
    let field = if path == "." || path.is_empty() {
        "body".to_owned()
    } else {
        path.to_owned()
    };
    let spanish = if let Some(rest) = message.strip_prefix("invalid type: ") {
        format!("tipo de dato no válido ({rest})")
    } else if let Some(rest) = message.strip_prefix("unknown variant ") {
        format!("valor no permitido: {rest}")
    } else if let Some(rest) = message.strip_prefix("invalid value: ") {
        format!("valor no válido ({rest})")
    } else {
        message.to_owned()
    };
    FieldError::new(field, spanish)
}

fn has_json_content_type(request: &Request) -> bool {
    let Some(content_type) = request.headers().get(header::CONTENT_TYPE) else {
        return false;
    };
    let Ok(content_type) = content_type.to_str() else {
        return false;
    };
    let Ok(mime) = content_type.parse::<mime::Mime>() else {
        return false;
    };
    mime.type_() == "application"
        && (mime.subtype() == "json" || mime.suffix().is_some_and(|s| s == "json"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Body {
        name: String,
        amount: f64,
    }

    fn numero(json: &str) -> serde_json::Number {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn a_nul_character_anywhere_in_the_body_is_refused_naming_its_field() {
        let refused = parse::<serde_json::Value>(br#"{"a": {"list": ["ok", "x\u0000y"]}, "b": 1}"#)
            .unwrap_err();
        assert_eq!(refused.status, StatusCode::BAD_REQUEST);
        let json = serde_json::to_value(&refused).unwrap();
        assert_eq!(json["errors"][0]["field"], "a.list[1]", "{json}");
        let key = parse::<serde_json::Value>(br#"{"k\u0000": 1}"#).unwrap_err();
        assert_eq!(
            serde_json::to_value(&key).unwrap()["errors"][0]["field"],
            "k\\u0000"
        );
        // A backslash followed by the text u0000 is no NUL.
        let text: serde_json::Value = parse(br#"{"path": "C:\\u0000"}"#).unwrap();
        assert_eq!(text["path"], "C:\\u0000");
    }

    #[test]
    fn valid_json_no_field_can_hold_is_refused_naming_the_field() {
        let field_of = |raw: &str| {
            let refused = parse::<Body>(raw.as_bytes()).unwrap_err();
            assert_eq!(refused.status, StatusCode::BAD_REQUEST);
            serde_json::to_value(&refused).unwrap()["errors"][0]["field"].clone()
        };
        assert_eq!(field_of(r#"{"name": "a", "amount": 1e400}"#), "amount");
        #[derive(Debug, serde::Deserialize)]
        #[allow(dead_code)]
        struct Exact {
            amount: serde_json::Number,
        }
        let refused = parse::<Exact>(br#"{"amount": 1e400}"#).unwrap_err();
        assert_eq!(
            serde_json::to_value(&refused).unwrap()["errors"][0]["field"],
            "amount",
            "{}",
            refused.detail
        );
        let digits = format!(r#"{{"name": "a", "amount": {}}}"#, "9".repeat(400));
        assert_eq!(field_of(&digits), "amount");
        assert_eq!(field_of(r#"{"name": "a\ud800b", "amount": 1}"#), "name");
        let deep = format!("{{\"name\": {}1{}}}", "[".repeat(200), "]".repeat(200));
        let refused = parse::<serde_json::Value>(deep.as_bytes()).unwrap_err();
        assert!(refused.detail.contains("128 niveles"), "{}", refused.detail);
        // A plain syntax error still says where it is.
        let broken = parse::<Body>(br#"{"name": "a", "amount": 1,}"#).unwrap_err();
        assert!(broken.detail.contains("línea 1"), "{}", broken.detail);
    }

    #[test]
    fn the_largest_double_reads_back_as_postgresql_writes_it() {
        // jsonb keeps 1.7976931348623157e308 as its 309 digits; without float_roundtrip
        // serde_json called that out of range and the outbox relay stopped on it.
        let stored = format!("{{\"n\": 17976931348623157{}}}", "0".repeat(292));
        let value: serde_json::Value = serde_json::from_str(&stored).unwrap();
        assert_eq!(value["n"].as_f64(), Some(f64::MAX));
    }

    #[test]
    fn json_numbers_become_exact_decimals() {
        assert_eq!(exact_decimal(&numero("150")).unwrap(), Decimal::from(150));
        assert_eq!(
            exact_decimal(&numero("0.1")).unwrap(),
            "0.1".parse::<Decimal>().unwrap()
        );
        assert_eq!(exact_decimal(&numero("10.555")).unwrap().scale(), 3);
        assert_eq!(
            exact_decimal(&numero("99999999999.99")).unwrap(),
            "99999999999.99".parse::<Decimal>().unwrap()
        );
        assert_eq!(exact_decimal(&numero("-5")).unwrap(), Decimal::from(-5));
        assert_eq!(exact_decimal(&numero("1e3")).unwrap(), Decimal::from(1000));
        assert!(exact_decimal(&numero("1e300")).is_err());
    }

    #[test]
    fn missing_field_is_named() {
        let problem = parse::<Body>(br#"{"name":"x"}"#).unwrap_err();
        assert_eq!(problem.status, StatusCode::BAD_REQUEST);
        assert_eq!(
            problem.errors,
            vec![FieldError::new("amount", "es obligatorio")]
        );
    }

    #[test]
    fn wrong_type_is_named() {
        let problem = parse::<Body>(br#"{"name":"x","amount":"10"}"#).unwrap_err();
        assert_eq!(problem.errors[0].field, "amount");
        assert!(
            problem.errors[0]
                .message
                .starts_with("tipo de dato no válido")
        );
    }

    #[test]
    fn malformed_and_empty_bodies_are_bad_requests() {
        for raw in [
            &b"{\"name\":"[..],
            b"",
            b"   ",
            br#"{"name":"x","amount":1} trailing"#,
        ] {
            let problem = parse::<Body>(raw).unwrap_err();
            assert_eq!(problem.status, StatusCode::BAD_REQUEST, "{raw:?}");
            assert!(problem.errors.is_empty(), "{raw:?}");
        }
    }
}
