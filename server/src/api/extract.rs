//! How request bodies, query strings and path segments become typed values, and how their
//! failures become 400s that name the field at fault in words a client understands (never
//! a Rust type name). Every handler reads its input through this module, so the rules hold
//! for every route; `error.rs` then renders the `ApiError`s built here.

use super::{ApiError, AppState};
use actix_web::dev::Payload;
use actix_web::error::{JsonPayloadError, PathError, QueryPayloadError};
use actix_web::http::header;
use actix_web::{web, FromRequest, HttpRequest};
use serde::de::DeserializeOwned;
use std::future::Future;
use std::ops::Deref;
use std::pin::Pin;

/// A JSON request body. Unlike `web::Json`, a value that does not fit the type names the
/// field at fault (`device_ids[2]`, `protocol`), and every body must be a JSON object:
/// serde would otherwise accept an array for a struct, field by field in order.
#[derive(Debug)]
pub struct Json<T>(pub T);

impl<T> Json<T> {
    pub fn into_inner(self) -> T {
        self.0
    }
}

impl<T> Deref for Json<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = Result<T, ApiError>>>>;

impl<T: DeserializeOwned + 'static> FromRequest for Json<T> {
    type Error = ApiError;
    type Future = BoxFuture<Self>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let limit = req
            .app_data::<web::Data<AppState>>()
            .map(|s| s.config.http.max_json_bytes);
        // The body is parsed to a JSON value first (syntax, size and content type checked by
        // actix), then converted with the path of every step recorded.
        let body = web::JsonBody::<serde_json::Value>::new(req, payload, None, true)
            .limit(limit.unwrap_or(0));
        Box::pin(async move {
            if limit.is_none() {
                return Err(ApiError::Internal("app state missing".into()));
            }
            let value = body.await.map_err(json_error)?;
            from_value(value).map(Json)
        })
    }
}

/// A JSON body that may be left out: no content at all (`Content-Length: 0`, or neither
/// `Content-Length` nor `Transfer-Encoding`) is `None`; anything else must be a valid body,
/// so a malformed one is a 400 and never taken for "no body".
#[derive(Debug)]
pub struct OptionalJson<T>(pub Option<T>);

impl<T: DeserializeOwned + 'static> FromRequest for OptionalJson<T> {
    type Error = ApiError;
    type Future = BoxFuture<Self>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let headers = req.headers();
        let length = headers
            .get(header::CONTENT_LENGTH)
            .map(|v| v.to_str().ok().and_then(|v| v.trim().parse::<u64>().ok()));
        let empty = match length {
            Some(Some(0)) => true,
            Some(_) => false,
            None => !headers.contains_key(header::TRANSFER_ENCODING),
        };
        if empty {
            return Box::pin(async { Ok(OptionalJson(None)) });
        }
        let body = Json::<T>::from_request(req, payload);
        Box::pin(async move { Ok(OptionalJson(Some(body.await?.0))) })
    }
}

/// Query parameters. Unlike `web::Query`, an unparsable value names its parameter.
#[derive(Debug)]
pub struct Query<T>(pub T);

impl<T> Query<T> {
    pub fn into_inner(self) -> T {
        self.0
    }
}

impl<T> Deref for Query<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T: DeserializeOwned> FromRequest for Query<T> {
    type Error = ApiError;
    type Future = std::future::Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        std::future::ready(parse_query(req.query_string()).map(Query))
    }
}

fn parse_query<T: DeserializeOwned>(query: &str) -> Result<T, ApiError> {
    let de = serde_urlencoded::Deserializer::new(form_urlencoded::parse(query.as_bytes()));
    serde_path_to_error::deserialize(de).map_err(|e| {
        let (field, message, value_error) =
            field_and_message(e.path(), &e.inner().to_string(), "query");
        // A parse error of a number or flag does not quote the value; the parameter does.
        let given = form_urlencoded::parse(query.as_bytes())
            .find(|(k, _)| *k == field)
            .map(|(_, v)| v.into_owned());
        let message = match given {
            Some(v) if value_error && !message.contains(&format!("{v:?}")) => {
                format!("{message}, got {v:?}")
            }
            _ => message,
        };
        ApiError::invalid(field, message)
    })
}

/// Converts a parsed JSON body to `T`, naming the field at fault on failure.
fn from_value<T: DeserializeOwned>(value: serde_json::Value) -> Result<T, ApiError> {
    if !value.is_object() {
        return Err(ApiError::invalid(
            "body",
            format!("the body must be a JSON object, got {}", json_kind(&value)),
        ));
    }
    serde_path_to_error::deserialize(value).map_err(|e| {
        let (field, message, _) = field_and_message(e.path(), &e.inner().to_string(), "body");
        ApiError::invalid(field, message)
    })
}

fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

/// The field an error is about and a message in wire terms. serde reports a missing or
/// unknown field at the enclosing object, so those take the field's own name. The flag
/// tells whether the error is about the field's value (rather than its presence).
/// `root` names the input as a whole (`body`, `query`) for errors at its top.
fn field_and_message(
    path: &serde_path_to_error::Path,
    raw: &str,
    root: &str,
) -> (String, String, bool) {
    let at = match path.to_string() {
        p if p == "." || p == "?" => String::new(),
        p => p,
    };
    // serde_path_to_error may or may not have entered the field already.
    let join = |name: &str| {
        if at.is_empty() {
            name.to_owned()
        } else if at == name || at.ends_with(&format!(".{name}")) {
            at.clone()
        } else {
            format!("{at}.{name}")
        }
    };
    if let Some(name) = backticked_after(raw, "missing field ") {
        return (join(name), "is required".into(), false);
    }
    if let Some(name) = backticked_after(raw, "unknown field ") {
        let known = raw
            .split_once(", expected ")
            .map(|(_, rest)| format!("; the fields are {}", rest.trim_start_matches("one of ")))
            .unwrap_or_default();
        return (join(name), format!("is not a known field{known}"), false);
    }
    if let Some(name) = backticked_after(raw, "duplicate field ") {
        return (join(name), "is given more than once".into(), false);
    }
    let field = if at.is_empty() { root.to_owned() } else { at };
    (field, plain_message(raw), true)
}

/// `name` in a serde message of the form ``{prefix}`name`...``.
fn backticked_after<'a>(raw: &'a str, prefix: &str) -> Option<&'a str> {
    let rest = raw.strip_prefix(prefix)?.strip_prefix('`')?;
    rest.split_once('`').map(|(name, _)| name)
}

/// serde's message with Rust vocabulary (`i64`, `struct CreateProduct`, `sequence`) put in
/// JSON terms.
pub(crate) fn plain_message(raw: &str) -> String {
    let (head, expected) = match raw.split_once(", expected ") {
        Some((h, e)) => (h, Some(e)),
        None => (raw, None),
    };
    let head = match head.strip_prefix("invalid type: ") {
        Some(what) => format!("invalid type: {}", plain_unexpected(what)),
        None => head.to_owned(),
    };
    match expected {
        Some(e) => format!("{head}, expected {}", plain_expected(e)),
        None => head,
    }
}

fn plain_unexpected(what: &str) -> String {
    match what {
        "sequence" => "array".into(),
        "map" => "object".into(),
        "unit value" | "Option value" => "null".into(),
        w if w.starts_with("newtype struct") || w.starts_with("enum") => "value".into(),
        w => w.to_owned(),
    }
}

fn plain_expected(e: &str) -> String {
    let e = e.trim();
    let plain = match e {
        "i8" | "i16" | "i32" | "i64" | "i128" | "isize" => "an integer",
        "u8" | "u16" | "u32" | "u64" | "u128" | "usize" => "a non-negative integer",
        "f32" | "f64" => "a number",
        "a boolean" | "bool" => "true or false",
        "a string" | "a borrowed string" | "string" => "a string",
        "a sequence" => "an array",
        "a map" => "an object",
        "option" => "a value or null",
        "unit" => "null",
        "char" | "a character" => "a single character",
        "variant identifier" | "string or map" => "one of the allowed values",
        "field identifier" => "a field name",
        _ => "",
    };
    if !plain.is_empty() {
        return plain.to_owned();
    }
    // Derived types describe themselves as `struct Name`, `enum Name`, `tuple struct Name`
    // (with `with N elements` for arrays): the name is the server's, not the client's.
    for (word, plain) in [
        ("tuple struct ", "an array"),
        ("unit struct ", "null"),
        ("struct ", "an object"),
        ("enum ", "one of the allowed values"),
    ] {
        if e.starts_with(word) {
            return plain.to_owned();
        }
    }
    e.to_owned()
}

/// The error handler of every `web::Json` left in the app (and the body part of [`Json`]):
/// size, content type and JSON syntax.
pub(crate) fn json_error(err: JsonPayloadError) -> ApiError {
    use actix_web::error::JsonPayloadError as E;
    match err {
        E::OverflowKnownLength { length, limit } => ApiError::PayloadTooLarge(format!(
            "the JSON body has {length} bytes; at most {limit} are accepted"
        )),
        E::Overflow { limit } => {
            ApiError::PayloadTooLarge(format!("the JSON body exceeds {limit} bytes"))
        }
        E::ContentType => {
            ApiError::UnsupportedMediaType("send the body as application/json".into())
        }
        E::Deserialize(e) if e.is_eof() => {
            ApiError::invalid("body", "a JSON body is required, and it must be complete")
        }
        E::Deserialize(e) if e.is_syntax() => ApiError::invalid(
            "body",
            format!("not valid JSON at line {} column {}", e.line(), e.column()),
        ),
        // Only data errors remain, from a `web::Json<T>` outside this module: serde's
        // message in JSON terms, without a path (actix does not keep one).
        E::Deserialize(e) => ApiError::invalid("body", plain_message(&strip_position(&e))),
        E::Payload(_) => ApiError::invalid("body", "the body could not be read"),
        // `JsonPayloadError` is non-exhaustive; its remaining cases are about reading the body.
        _ => ApiError::invalid("body", "the body could not be read as JSON"),
    }
}

/// serde_json's message without its ` at line L column C` suffix.
fn strip_position(e: &serde_json::Error) -> String {
    let text = e.to_string();
    let suffix = format!(" at line {} column {}", e.line(), e.column());
    text.strip_suffix(&suffix).unwrap_or(&text).to_owned()
}

/// The error handler of every `web::Query` left in the app ([`Query`] names the field).
pub(crate) fn query_error(err: QueryPayloadError) -> ApiError {
    match err {
        QueryPayloadError::Deserialize(e) => {
            ApiError::invalid("query", plain_message(&e.to_string()))
        }
        _ => ApiError::invalid("query", "the query string could not be read"),
    }
}

/// The error handler of every `web::Path`: actix says `can not parse "abc" to a i64`; the
/// reply names the segment and says what it must be.
pub(crate) fn path_error(err: PathError, req: &HttpRequest) -> ApiError {
    let PathError::Deserialize(e) = err else {
        return ApiError::invalid("path", "the path could not be read");
    };
    let raw = e.to_string();
    let parsed = raw
        .strip_prefix("can not parse ")
        .and_then(|r| r.rsplit_once(" to a "));
    if let Some((quoted, ty)) = parsed {
        let field = req
            .match_info()
            .iter()
            .find(|(_, v)| format!("{v:?}") == quoted)
            .map(|(k, _)| k.to_owned())
            .unwrap_or_else(|| "path".into());
        return ApiError::invalid(
            field,
            format!("must be {}, got {quoted}", plain_expected(ty)),
        );
    }
    ApiError::invalid("path", plain_message(&raw))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Inner {
        ids: Vec<i64>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "snake_case")]
    #[allow(dead_code)]
    enum Color {
        Red,
        Blue,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Outer {
        name: String,
        count: Option<u64>,
        color: Option<Color>,
        inner: Option<Inner>,
    }

    fn fail(v: serde_json::Value) -> (String, String) {
        match from_value::<Outer>(v) {
            Ok(o) => panic!("accepted: {o:?}"),
            Err(ApiError::Invalid { field, message }) => (field, message),
            Err(e) => panic!("{e:?}"),
        }
    }

    fn no_rust_words(m: &str) {
        for w in [
            "Outer", "Inner", "Color", "struct", "enum", "i64", "u64", "sequence", "map",
        ] {
            assert!(!m.contains(w), "{m:?} contains {w:?}");
        }
    }

    #[test]
    fn json_errors_name_the_field_in_json_terms() {
        use serde_json::json;
        let cases = [
            (json!({"name": 5}), "name"),
            (json!({"name": "a", "count": -1}), "count"),
            (json!({"name": "a", "count": "x"}), "count"),
            (json!({"name": "a", "color": "green"}), "color"),
            (json!({"name": "a", "color": 3}), "color"),
            (json!({"name": "a", "extra": 1}), "extra"),
            (json!({"count": 1}), "name"),
            (
                json!({"name": "a", "inner": {"ids": [1, "x"]}}),
                "inner.ids[1]",
            ),
            (json!({"name": "a", "inner": {"idz": []}}), "inner.idz"),
            (json!({"name": "a", "inner": []}), "inner"),
            (json!([]), "body"),
            (json!("text"), "body"),
        ];
        for (body, field) in cases {
            let (f, m) = fail(body.clone());
            assert_eq!(f, field, "{body}: {m}");
            no_rust_words(&m);
        }
    }

    #[test]
    fn query_errors_name_the_parameter_and_quote_the_value() {
        #[derive(Debug, Deserialize)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)]
        struct Q {
            limit: Option<u64>,
            online: Option<bool>,
        }
        for (q, field, needle) in [
            ("limit=abc", "limit", "\"abc\""),
            ("online=maybe", "online", "\"maybe\""),
            ("limit=1&nope=2", "nope", "limit"),
            ("limit=-3", "limit", "\"-3\""),
        ] {
            match parse_query::<Q>(q) {
                Err(ApiError::Invalid { field: f, message }) => {
                    assert_eq!(f, field, "{q}: {message}");
                    assert!(message.contains(needle), "{q}: {message}");
                    no_rust_words(&message);
                }
                other => panic!("{q}: {other:?}"),
            }
        }
    }
}
