//! Firmware downloads: `GET /dl/{token}`, where the signed, expiring token is the
//! credential (no bearer key), with range requests so that downloads resume (SPEC V3).

use super::{ApiError, ApiResult, AppState};
use actix_files::NamedFile;
use actix_web::body::{BoxBody, SizedStream};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{
    self, ContentDisposition, ContentEncoding, DispositionParam, DispositionType, HeaderMap,
};
use actix_web::http::StatusCode;
use actix_web::middleware::Next;
use actix_web::{route, web, HttpRequest, HttpResponse};
use bytes::Bytes;
use std::path::PathBuf;
use tokio::io::AsyncReadExt;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(download);
}

/// Downloads a package file. The whole file (200) or one byte range (`Range: bytes=a-b`,
/// 206 with `Content-Range`); a range past the end is 416. `If-Range` with a validator
/// that no longer matches gets the whole file, and so does a `Range` that is not one valid
/// byte range (RFC 9110 §14.2: malformed, another unit, or several ranges). A forged, malformed or expired token is
/// 403 `download_denied`; a deleted file is 404.
#[utoipa::path(tag = "downloads", security(()),
    params(
        ("token" = String, Path, description = "the token of a download_url"),
        ("Range" = Option<String>, Header, description = "one byte range, `bytes=first-[last]` or `bytes=-suffix`; any other value is ignored"),
        ("If-Range" = Option<String>, Header, description = "the range is served only while the file still has this ETag or Last-Modified")),
    responses(
        (status = 200, description = "the whole file, application/octet-stream"),
        (status = 206, description = "the requested range, with Content-Range"),
        (status = 403, body = super::error::ErrorBody, description = "download_denied: forged, malformed or expired token"),
        (status = 404, body = super::error::ErrorBody),
        (status = 416, description = "the range lies outside the file")))]
#[route(
    "/dl/{token}",
    method = "GET",
    method = "HEAD",
    wrap = "actix_web::middleware::from_fn(ignore_unusable_range)"
)]
async fn download(
    state: web::Data<AppState>,
    token: web::Path<String>,
    req: HttpRequest,
) -> ApiResult<HttpResponse> {
    let file_id = state.firmware.verify(&token, state.now())?;
    let file = state
        .store
        .package_file_for_download(file_id)
        .await?
        .ok_or_else(|| ApiError::NotFound("file".into()))?;
    let path = state.firmware.path_of(&file.storage_key)?;
    let named = match NamedFile::open_async(&path).await {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            tracing::warn!(file = file.id.0, storage_key = %file.storage_key, "a recorded firmware file is missing on disk");
            return Err(ApiError::NotFound("file".into()));
        }
        Err(e) => return Err(ApiError::Internal(format!("opening a firmware file: {e}"))),
    };
    let resp = named
        .set_content_type(actix_web::mime::APPLICATION_OCTET_STREAM)
        .set_content_disposition(ContentDisposition {
            disposition: DispositionType::Attachment,
            parameters: vec![DispositionParam::Filename(file.name.into_string())],
        })
        // Firmware goes out byte for byte: the compression middleware must leave it alone,
        // or the length and digests a device checks would not match what it receives.
        .set_content_encoding(ContentEncoding::Identity)
        .into_response(&req);
    if resp.status() == StatusCode::PARTIAL_CONTENT && !if_range_holds(&req, resp.headers()) {
        return whole_file(path, resp.headers()).await;
    }
    Ok(resp)
}

/// Drops a `Range` header that is not exactly one valid byte range, so the file is served
/// whole. RFC 9110 §14.2 lets a server ignore an invalid range set and requires it to ignore
/// an unknown unit; several ranges would need multipart/byteranges, which devices do not
/// ask for, so they get the whole file too rather than only the first range.
async fn ignore_unusable_range(
    mut req: ServiceRequest,
    next: Next<BoxBody>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let usable = req
        .headers()
        .get(header::RANGE)
        .is_none_or(|v| v.to_str().is_ok_and(is_single_byte_range));
    if !usable {
        req.headers_mut().remove(header::RANGE);
    }
    next.call(req).await
}

/// Whether `value` is `bytes=` with one `first-[last]` (last ≥ first) or `-suffix` range,
/// per the grammar of RFC 9110 §14.1.1 (the unit is case-insensitive; whitespace may
/// surround the range).
fn is_single_byte_range(value: &str) -> bool {
    let Some((unit, set)) = value.split_once('=') else {
        return false;
    };
    if !unit.trim().eq_ignore_ascii_case("bytes") {
        return false;
    }
    let spec = set.trim_matches([' ', '\t']);
    if spec.contains(',') {
        return false;
    }
    let Some((first, last)) = spec.split_once('-') else {
        return false;
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let number = |s: &str| {
        if digits(s) {
            s.parse::<u64>().ok()
        } else {
            None
        }
    };
    match (first.is_empty(), last.is_empty()) {
        (true, false) => number(last).is_some(),
        (false, true) => number(first).is_some(),
        (false, false) => matches!((number(first), number(last)), (Some(a), Some(b)) if b >= a),
        (true, true) => false,
    }
}

/// Whether a range may be served: no `If-Range`, or one that matches the file's strong
/// `ETag` or, for a date, its `Last-Modified` exactly (RFC 9110 §13.1.5).
fn if_range_holds(req: &HttpRequest, resp: &HeaderMap) -> bool {
    let Some(value) = req.headers().get(header::IF_RANGE) else {
        return true;
    };
    let Ok(value) = value.to_str().map(str::trim) else {
        return false;
    };
    let current = |name| resp.get(name).and_then(|v| v.to_str().ok());
    if value.starts_with("W/") {
        false // weak tags never allow a range
    } else if value.starts_with('"') {
        current(header::ETAG) == Some(value)
    } else {
        current(header::LAST_MODIFIED) == Some(value)
    }
}

/// The whole file with 200, for an `If-Range` that no longer matches; keeps the headers of
/// the ranged reply except those about the range.
async fn whole_file(path: PathBuf, ranged: &HeaderMap) -> ApiResult<HttpResponse> {
    let file = tokio::fs::File::open(&path)
        .await
        .map_err(|e| ApiError::Internal(format!("opening a firmware file: {e}")))?;
    let len = file
        .metadata()
        .await
        .map_err(|e| ApiError::Internal(format!("reading a firmware file's size: {e}")))?
        .len();
    let mut resp = HttpResponse::Ok();
    for (name, value) in ranged {
        if name != header::CONTENT_RANGE && name != header::CONTENT_LENGTH {
            resp.append_header((name.clone(), value.clone()));
        }
    }
    let chunks = futures_util::stream::unfold(Some(file), |file| async move {
        let mut file = file?;
        let mut buf = vec![0u8; 64 * 1024];
        match file.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok(Bytes::from(buf)), Some(file)))
            }
            Err(e) => Some((Err(e), None)),
        }
    });
    Ok(resp.body(SizedStream::new(len, chunks)))
}

#[cfg(test)]
mod tests {
    use super::is_single_byte_range;

    #[test]
    fn only_one_well_formed_byte_range_is_usable() {
        for ok in [
            "bytes=0-9",
            "bytes=5-",
            "bytes=-3",
            "BYTES=0-0",
            "bytes= 2-4 ",
        ] {
            assert!(is_single_byte_range(ok), "{ok}");
        }
        for bad in [
            "bytes=abc",
            "bytes=",
            "bytes=-",
            "bytes=5-2",
            "bytes=0-1,3-4",
            "items=0-1",
            "bytes=0x1-2",
            "bytes=1-2-3",
            "0-5",
            "bytes=+1-2",
            "bytes=99999999999999999999999-",
        ] {
            assert!(!is_single_byte_range(bad), "{bad}");
        }
    }
}

#[derive(utoipa::OpenApi)]
#[openapi(paths(download))]
pub struct Doc;
