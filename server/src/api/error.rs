//! The one place errors become HTTP: stable snake_case codes, messages that say what to fix,
//! and 5xx replies that never carry internal text.

use crate::domain::Invalid;
use crate::firmware::FirmwareError;
use crate::store::{RowErrors, StoreError};
use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
    #[error("missing or unknown API key")]
    Unauthenticated,
    #[error("{0}")]
    Forbidden(String),
    #[error("{0} not found")]
    NotFound(String),
    /// The path exists, but not for this method; `allowed` lists the methods it has.
    #[error("{method} is not allowed here; use {}", allowed.join(", "))]
    MethodNotAllowed {
        method: String,
        allowed: Vec<String>,
    },
    #[error("{0}")]
    Conflict(String),
    #[error("some rows are invalid")]
    InvalidRows(RowErrors),
    /// SPEC B5: names that are no devices of the product; nothing was created.
    #[error("{total} device names are unknown")]
    UnknownDevices { names: Vec<String>, total: u64 },
    /// W1: an uploaded policy component was refused (its word in `code`).
    #[error("the policy was refused: {0}")]
    PolicyRejected(String),
    /// W3: a policy failed where its answer was needed for this call; nothing was made.
    #[error("{0}")]
    PolicyFailed(String),
    #[error("{0}")]
    PayloadTooLarge(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// A download token that is forged, malformed or expired (SPEC V3).
    #[error("{0}")]
    DownloadDenied(String),
    #[error("the server is not ready: {0}")]
    Unavailable(String),
    /// Logged with its detail; the caller sees only a generic message.
    #[error("internal error")]
    Internal(String),
}

/// The JSON body of every error reply (DESIGN §10).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// Stable, snake_case; clients branch on it.
    pub code: &'static str,
    /// What is wrong and how to fix it.
    pub message: String,
    /// The input field at fault, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// For `invalid_rows`: the first rows at fault.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rows: Option<Vec<RowErrorDto>>,
    /// For `unknown_devices`: the unknown names, in input order (the first 1,000; ask with
    /// `Accept: text/csv` for all of them as a CSV file).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub names: Option<Vec<String>>,
    /// For `invalid_rows` and `unknown_devices`: how many rows or names are at fault in all.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub total: Option<u64>,
}

/// One row of a bulk input at fault (`invalid_rows`).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RowErrorDto {
    /// 1-based row number in the input, header not counted.
    pub row: u64,
    pub field: String,
    pub message: String,
}

impl ApiError {
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Invalid {
            field: field.into(),
            message: message.into(),
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            ApiError::Invalid { .. } => "invalid_input",
            ApiError::Unauthenticated => "unauthenticated",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::NotFound(_) => "not_found",
            ApiError::MethodNotAllowed { .. } => "method_not_allowed",
            ApiError::Conflict(_) => "conflict",
            ApiError::InvalidRows(_) => "invalid_rows",
            ApiError::UnknownDevices { .. } => "unknown_devices",
            ApiError::PolicyRejected(_) => "policy_rejected",
            ApiError::PolicyFailed(_) => "policy_failed",
            ApiError::PayloadTooLarge(_) => "payload_too_large",
            ApiError::UnsupportedMediaType(_) => "unsupported_media_type",
            ApiError::DownloadDenied(_) => "download_denied",
            ApiError::Unavailable(_) => "unavailable",
            ApiError::Internal(_) => "internal",
        }
    }

    fn body(&self) -> ErrorBody {
        let mut body = ErrorBody {
            code: self.code(),
            message: self.to_string(),
            field: None,
            rows: None,
            names: None,
            total: None,
        };
        match self {
            ApiError::Invalid { field, message } => {
                body.field = Some(field.clone());
                body.message = format!("{field}: {message}");
            }
            ApiError::InvalidRows(errs) => {
                let total = errs.total();
                body.message = format!(
                    "{total} {}; nothing was written. Fix the rows listed and send the whole input again",
                    if total == 1 { "row is invalid" } else { "rows are invalid" }
                );
                body.rows = Some(
                    errs.clone()
                        .listed()
                        .into_iter()
                        .map(|r| RowErrorDto {
                            row: r.row,
                            field: r.field,
                            message: r.message,
                        })
                        .collect(),
                );
                body.total = Some(total);
            }
            ApiError::UnknownDevices { names, total } => {
                body.message = format!(
                    "{total} device {} not devices of this product; nothing was created. \
                     Fix the names listed and send the whole list again",
                    if *total == 1 { "name is" } else { "names are" }
                );
                body.names = Some(names.iter().take(1000).cloned().collect());
                body.total = Some(*total);
            }
            ApiError::Internal(_) => {
                body.message = "internal error; the server log has the details".into();
            }
            _ => {}
        }
        body
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::Invalid { .. } => StatusCode::BAD_REQUEST,
            ApiError::Unauthenticated => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) | ApiError::DownloadDenied(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::InvalidRows(_)
            | ApiError::UnknownDevices { .. }
            | ApiError::PolicyRejected(_)
            | ApiError::PolicyFailed(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        if let ApiError::Internal(detail) = self {
            tracing::error!(error = %detail, "internal error");
        }
        let mut resp = HttpResponse::build(self.status_code());
        match self {
            ApiError::Unauthenticated => {
                resp.insert_header(("WWW-Authenticate", "Bearer"));
            }
            // RFC 9110 §15.5.6: a 405 carries the methods the resource has.
            ApiError::MethodNotAllowed { allowed, .. } => {
                resp.insert_header(("Allow", allowed.join(", ")));
            }
            _ => {}
        }
        resp.json(self.body())
    }
}

impl From<Invalid> for ApiError {
    fn from(e: Invalid) -> Self {
        ApiError::Invalid {
            field: e.field,
            message: e.message,
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(what) => ApiError::NotFound(what.to_owned()),
            StoreError::Conflict(m) => ApiError::Conflict(m),
            StoreError::Invalid(i) => i.into(),
            StoreError::InvalidRows(r) => ApiError::InvalidRows(r),
            StoreError::UnknownDevices { names, total } => {
                ApiError::UnknownDevices { names, total }
            }
            StoreError::Database(db) => ApiError::Internal(db.to_string()),
            StoreError::Spool(e) => ApiError::Internal(format!("spool: {e}")),
            StoreError::PolicyFailed(m) => ApiError::PolicyFailed(m),
        }
    }
}

impl From<FirmwareError> for ApiError {
    fn from(e: FirmwareError) -> Self {
        match e {
            FirmwareError::TooLarge { .. } => ApiError::PayloadTooLarge(e.to_string()),
            FirmwareError::Empty => ApiError::invalid("body", e.to_string()),
            FirmwareError::TokenMalformed
            | FirmwareError::TokenForged
            | FirmwareError::TokenExpired { .. } => ApiError::DownloadDenied(e.to_string()),
            FirmwareError::Io(_) | FirmwareError::BadStorageKey(_) | FirmwareError::EmptyKey => {
                ApiError::Internal(e.to_string())
            }
        }
    }
}

impl From<crate::policy::PolicyError> for ApiError {
    fn from(e: crate::policy::PolicyError) -> Self {
        use crate::policy::PolicyError as P;
        match e {
            // the host's own trouble, not the component's
            P::Engine(m) => ApiError::Internal(format!("policy engine: {m}")),
            other => ApiError::PolicyRejected(format!("{}: {other}", other.code())),
        }
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::body::MessageBody;

    // SPEC M2
    #[test]
    fn internal_errors_never_leak_their_detail() {
        let e = ApiError::Internal("password=hunter2 at db.example:5432".into());
        assert_eq!(e.status_code(), StatusCode::INTERNAL_SERVER_ERROR);
        let body = e.error_response().into_body().try_into_bytes().unwrap();
        let text = String::from_utf8(body.to_vec()).unwrap();
        assert!(!text.contains("hunter2"), "{text}");
        assert!(text.contains("\"code\":\"internal\""), "{text}");
    }

    // SPEC M2
    #[test]
    fn invalid_input_names_the_field() {
        let e: ApiError = Invalid::new("name", "must be 1 to 64 characters long").into();
        let body = e.error_response().into_body().try_into_bytes().unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["code"], "invalid_input");
        assert_eq!(v["field"], "name");
        assert!(v["message"].as_str().unwrap().contains("64"));
    }
}
