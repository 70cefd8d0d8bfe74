//! Devices: create one, import many (CSV or JSON, streamed, all or nothing), read, delete,
//! reset secrets, export credentials, and module versions with history (SPEC D1, D2).

use super::auth::Auth;
use super::dto::{ts, PageDto, PageQuery};
use super::extract::{Json, OptionalJson, Query};
use super::spool::DeviceSpool;
use super::stream::{
    csv_field, paged_csv, BodyChunks, CsvRecords, JsonArrayElements, QuoteProblem,
};
use super::{ApiError, ApiResult, AppState};
use crate::clock::rfc3339;
use crate::domain::{
    role::Action, Device, DeviceId, DeviceName, DeviceSecret, Invalid, ModuleName, ModuleVersion,
    NewDevice, ProductId, Version, VersionReport,
};
use crate::store::RowErrors;
use actix_web::{delete, get, post, web, HttpRequest, HttpResponse};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(create_device)
        .service(import_devices)
        .service(export_credentials)
        .service(get_device)
        .service(delete_device)
        .service(reset_secret)
        .service(report_version)
        .service(version_history);
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateDevice {
    /// Unique in the product: 1 to 64 letters, digits and `_ - @ . :`.
    pub name: String,
    /// 8 to 128 printable ASCII characters; generated when left out.
    pub secret: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DeviceDto {
    pub id: i64,
    pub product_id: i64,
    pub name: String,
    pub online: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub activated_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_seen_at: Option<String>,
    pub created_at: String,
    /// Current version per module (SPEC D2).
    pub modules: Vec<ModuleVersionDto>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedDeviceDto {
    #[serde(flatten)]
    pub device: DeviceDto,
    /// The device secret, for provisioning.
    pub secret: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ModuleVersionDto {
    pub module: String,
    pub version: String,
    pub updated_at: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct VersionReportDto {
    pub id: i64,
    pub module: String,
    pub version: String,
    pub reported_at: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ImportResult {
    /// Devices created.
    pub imported: u64,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReportVersion {
    /// Module name; `default` when left out.
    pub module: Option<String>,
    pub version: String,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct HistoryQuery {
    /// Only reports of this module.
    pub module: Option<String>,
    pub cursor: Option<String>,
    pub limit: Option<u64>,
}

#[derive(Debug, Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct ResetSecret {
    /// The new secret; generated when left out.
    pub secret: Option<String>,
}

pub(crate) fn device_dto(d: Device, modules: Vec<ModuleVersion>) -> DeviceDto {
    DeviceDto {
        id: d.id.0,
        product_id: d.product_id.0,
        name: d.name.into_string(),
        online: d.online,
        activated_at: ts(d.activated_at),
        last_seen_at: ts(d.last_seen_at),
        created_at: rfc3339(d.created_at),
        modules: modules.into_iter().map(module_dto).collect(),
    }
}

fn module_dto(m: ModuleVersion) -> ModuleVersionDto {
    ModuleVersionDto {
        module: m.module.into_string(),
        version: m.version.into_string(),
        updated_at: rfc3339(m.updated_at),
    }
}

fn report_dto(r: VersionReport) -> VersionReportDto {
    VersionReportDto {
        id: r.id,
        module: r.module.into_string(),
        version: r.version.into_string(),
        reported_at: rfc3339(r.reported_at),
    }
}

fn parse_new_device(name: &str, secret: Option<&str>) -> Result<NewDevice, Invalid> {
    Ok(NewDevice {
        name: DeviceName::parse("name", name.trim())?,
        secret: match secret.map(str::trim) {
            None | Some("") => None,
            Some(s) => Some(DeviceSecret::parse("secret", s)?),
        },
    })
}

/// Creates one device.
#[utoipa::path(tag = "devices", params(("id" = i64, Path, description = "product id")), request_body = CreateDevice,
    responses((status = 201, body = CreatedDeviceDto), (status = 400, body = super::error::ErrorBody), (status = 409, body = super::error::ErrorBody)))]
#[post("/v1/products/{id}/devices")]
async fn create_device(
    state: web::Data<AppState>,
    auth: Auth,
    product: web::Path<i64>,
    body: Json<CreateDevice>,
) -> ApiResult<HttpResponse> {
    let tenant = auth.require(Action::ManageRegistry)?;
    let new = parse_new_device(&body.name, body.secret.as_deref())?;
    let d = state
        .store
        .create_device(tenant, ProductId(*product), new, state.now())
        .await?;
    let secret = d.secret.clone();
    Ok(HttpResponse::Created().json(CreatedDeviceDto {
        device: device_dto(d, vec![]),
        secret,
    }))
}

/// Which column of an import CSV holds what.
struct CsvColumns {
    name: usize,
    secret: Option<usize>,
    /// Fields every row must have: as many as the header.
    count: usize,
}

fn csv_columns(header: &[String]) -> Result<CsvColumns, ApiError> {
    let mut name = None;
    let mut secret = None;
    for (i, h) in header.iter().enumerate() {
        let key: String = h
            .trim()
            .trim_start_matches('\u{feff}')
            .chars()
            .filter(|c| *c != '_' && *c != ' ')
            .collect::<String>()
            .to_ascii_lowercase();
        match key.as_str() {
            "name" | "devicename" | "devicekey" => name = Some(i),
            "secret" | "devicesecret" => secret = Some(i),
            _ => {
                return Err(ApiError::invalid(
                    "header",
                    format!("unknown column {h:?}; the columns are name (required) and secret"),
                ))
            }
        }
    }
    let name = name.ok_or_else(|| {
        ApiError::invalid(
            "header",
            "the first line must be a header with a name column (and optionally secret)",
        )
    })?;
    Ok(CsvColumns {
        name,
        secret,
        count: header.len(),
    })
}

#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "an object with name and, optionally, secret"
)]
struct JsonRow {
    name: String,
    #[serde(default)]
    secret: Option<String>,
}

/// Imports up to 1,000,000 devices in one call, all or nothing. The body is CSV
/// (`text/csv`, a header line with `name` and optionally `secret`) or a JSON array of
/// `{"name", "secret"?}` objects (`application/json`). It is streamed to a spool file and
/// validated first, with no database lock held while the upload arrives; then the rows are
/// written in one transaction, and any invalid row rolls all back; the 422 reply lists the
/// rows at fault, lowest row numbers first.
#[utoipa::path(tag = "devices", params(("id" = i64, Path, description = "product id")),
    request_body(content = String, content_type = "text/csv", description = "CSV with a header line, or a JSON array"),
    responses((status = 201, body = ImportResult), (status = 413, body = super::error::ErrorBody), (status = 415, body = super::error::ErrorBody), (status = 422, body = super::error::ErrorBody)))]
#[post("/v1/products/{id}/devices/import")]
async fn import_devices(
    state: web::Data<AppState>,
    auth: Auth,
    product: web::Path<i64>,
    req: HttpRequest,
    payload: web::Payload,
) -> ApiResult<HttpResponse> {
    let tenant = auth.require(Action::ManageRegistry)?;
    let ctype = req
        .headers()
        .get(actix_web::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    let is_csv = ctype.starts_with("text/csv");
    if !is_csv && !ctype.starts_with("application/json") {
        return Err(ApiError::UnsupportedMediaType(
            "send the import as text/csv or application/json".into(),
        ));
    }
    // Unknown or foreign products answer 404 before the body is read.
    let product = state.store.get_product(tenant, ProductId(*product)).await?;
    let mut spool = DeviceSpool::create(&state.config.data_dir)
        .await
        .map_err(|e| ApiError::Internal(format!("creating the import spool: {e}")))?;
    let mut errors = RowErrors::default();
    let mut body = BodyChunks::new(payload, state.config.devices.import_max_bytes);
    let mut import = Spooler {
        spool: &mut spool,
        errors: &mut errors,
        row: 0,
        max_rows: state.config.devices.import_max_rows,
    };
    let started = std::time::Instant::now();
    if is_csv {
        import.csv(&mut body).await?;
    } else {
        import.json(&mut body).await?;
    }
    let spooled = started.elapsed();
    let rows = spool
        .into_rows()
        .await
        .map_err(|e| ApiError::Internal(format!("rewinding the import spool: {e}")))?;
    let result = state
        .store
        .import_devices(tenant, product.id, rows, errors, state.now())
        .await?;
    tracing::info!(
        product = product.id.0,
        devices = result.imported,
        spool_ms = spooled.as_millis() as u64,
        write_ms = (started.elapsed() - spooled).as_millis() as u64,
        "devices imported"
    );
    Ok(HttpResponse::Created().json(ImportResult {
        imported: result.imported,
    }))
}

/// Reads an import body into the spool, validating each row on the way.
struct Spooler<'a> {
    spool: &'a mut DeviceSpool,
    errors: &'a mut RowErrors,
    /// 1-based number of the last data row (header and blank lines not counted).
    row: u64,
    max_rows: u64,
}

impl Spooler<'_> {
    /// Takes the next data row; refuses the whole import past the row limit.
    async fn take(&mut self, parsed: Result<NewDevice, Invalid>) -> ApiResult<()> {
        self.row += 1;
        if self.row > self.max_rows {
            // Nothing past the limit is read: the import is refused as a whole.
            let mut errors = std::mem::take(self.errors);
            errors.push(
                self.row,
                "rows",
                format!("an import holds at most {} rows", self.max_rows),
            );
            return Err(ApiError::InvalidRows(errors));
        }
        match parsed {
            Ok(d) => self
                .spool
                .push(self.row, &d)
                .await
                .map_err(|e| ApiError::Internal(format!("writing the import spool: {e}"))),
            Err(e) => {
                self.errors.push(self.row, e.field, e.message);
                Ok(())
            }
        }
    }

    async fn csv(&mut self, body: &mut BodyChunks) -> ApiResult<()> {
        let mut reader = CsvRecords::default();
        let mut columns: Option<CsvColumns> = None;
        loop {
            let chunk = body.next().await?;
            let mut records: Vec<(Vec<String>, QuoteProblem)> = Vec::new();
            reader.feed(chunk.as_deref().unwrap_or(b""), &mut |r, p| {
                records.push((r, p));
                Ok(())
            })?;
            for (rec, problem) in records {
                let Some(cols) = &columns else {
                    if let Some(p) = problem {
                        return Err(ApiError::invalid("header", p));
                    }
                    columns = Some(csv_columns(&rec)?);
                    continue;
                };
                if rec.len() == 1 && rec[0].trim().is_empty() && problem.is_none() {
                    continue; // blank line
                }
                let parsed = match problem {
                    Some(p) => Err(Invalid::new("row", p)),
                    None if rec.len() != cols.count => Err(Invalid::new(
                        "row",
                        format!(
                            "the row has {} fields; the header has {}",
                            rec.len(),
                            cols.count
                        ),
                    )),
                    None => {
                        let secret = cols.secret.map(|i| rec[i].as_str());
                        parse_new_device(&rec[cols.name], secret)
                    }
                };
                self.take(parsed).await?;
            }
            if chunk.is_none() {
                return Ok(());
            }
        }
    }

    async fn json(&mut self, body: &mut BodyChunks) -> ApiResult<()> {
        let mut parser = JsonArrayElements::default();
        while let Some(chunk) = body.next().await? {
            let mut parsed: Vec<Result<JsonRow, String>> = Vec::new();
            parser.feed(&chunk, &mut |elem| {
                parsed.push(serde_json::from_slice::<JsonRow>(elem).map_err(|e| e.to_string()));
                Ok(())
            })?;
            for p in parsed {
                let row = p
                    .map_err(|e| Invalid::new("row", e))
                    .and_then(|r| parse_new_device(&r.name, r.secret.as_deref()));
                self.take(row).await?;
            }
        }
        parser.finish()
    }
}

/// Streams `name,secret` of every device of the product, for provisioning (admin only).
#[utoipa::path(tag = "devices", params(("id" = i64, Path, description = "product id")),
    responses((status = 200, content_type = "text/csv", body = String)))]
#[get("/v1/products/{id}/devices/credentials.csv")]
async fn export_credentials(
    state: web::Data<AppState>,
    auth: Auth,
    product: web::Path<i64>,
) -> ApiResult<HttpResponse> {
    let tenant = auth.require(Action::ManageRegistry)?;
    let product = state.store.get_product(tenant, ProductId(*product)).await?;
    let st = state.clone();
    Ok(paged_csv(
        &format!("{}-credentials.csv", product.product_key),
        "name,secret",
        move |after| {
            let st = st.clone();
            async move {
                let rows = st
                    .store
                    .device_credentials(tenant, product.id, after, 10_000)
                    .await?;
                Ok(rows
                    .into_iter()
                    .map(|(id, name, secret)| {
                        (id, format!("{},{}", csv_field(&name), csv_field(&secret)))
                    })
                    .collect())
            }
        },
    ))
}

/// Reads one device with its current module versions.
#[utoipa::path(tag = "devices", params(("id" = i64, Path)), responses((status = 200, body = DeviceDto), (status = 404, body = super::error::ErrorBody)))]
#[get("/v1/devices/{id:\\d+}")]
async fn get_device(
    state: web::Data<AppState>,
    auth: Auth,
    id: web::Path<i64>,
) -> ApiResult<HttpResponse> {
    let tenant = auth.tenant();
    let d = state.store.get_device(tenant, DeviceId(*id)).await?;
    let modules = state.store.device_modules(tenant, d.id).await?;
    Ok(HttpResponse::Ok().json(device_dto(d, modules)))
}

/// Deletes a device with its versions, memberships, attributes and tags, and ends its MQTT
/// session on the embedded broker.
#[utoipa::path(tag = "devices", params(("id" = i64, Path)), responses((status = 204), (status = 404, body = super::error::ErrorBody)))]
#[delete("/v1/devices/{id}")]
async fn delete_device(
    state: web::Data<AppState>,
    auth: Auth,
    id: web::Path<i64>,
) -> ApiResult<HttpResponse> {
    let tenant = auth.require(Action::ManageRegistry)?;
    let d = state.store.get_device(tenant, DeviceId(*id)).await?;
    let product = state.store.get_product(tenant, d.product_id).await?;
    state.store.delete_device(tenant, d.id).await?;
    state
        .disconnect_device(product.product_key.as_str(), d.name.as_str())
        .await;
    Ok(HttpResponse::NoContent().finish())
}

/// Replaces a device's secret (generated unless given); the old one stops working at once:
/// a session opened with it on the embedded broker is ended.
#[utoipa::path(tag = "devices", params(("id" = i64, Path)),
    request_body(content = Option<ResetSecret>, description = "optional: no body at all generates a secret"),
    responses((status = 200, body = CreatedDeviceDto), (status = 400, body = super::error::ErrorBody), (status = 404, body = super::error::ErrorBody)))]
#[post("/v1/devices/{id}/secret")]
async fn reset_secret(
    state: web::Data<AppState>,
    auth: Auth,
    id: web::Path<i64>,
    body: OptionalJson<ResetSecret>,
) -> ApiResult<HttpResponse> {
    let tenant = auth.require(Action::ManageRegistry)?;
    // No body at all means "generate one"; a body that is not a valid `ResetSecret` is a
    // 400, never taken for an empty one (that would rotate the secret by mistake).
    let secret = body
        .0
        .and_then(|b| b.secret)
        .map(|s| DeviceSecret::parse("secret", s))
        .transpose()?;
    let d = state
        .store
        .reset_device_secret(tenant, DeviceId(*id), secret)
        .await?;
    // A session opened with the old secret must not outlive it (a leaked secret is the usual
    // reason to reset one).
    let product = state.store.get_product(tenant, d.product_id).await?;
    state
        .disconnect_device(product.product_key.as_str(), d.name.as_str())
        .await;
    let modules = state.store.device_modules(tenant, d.id).await?;
    let secret = d.secret.clone();
    Ok(HttpResponse::Ok().json(CreatedDeviceDto {
        device: device_dto(d, modules),
        secret,
    }))
}

/// Records a version report on the device's behalf (devices report over MQTT; this is for
/// migrating fleets whose versions are known).
#[utoipa::path(tag = "devices", params(("id" = i64, Path)), request_body = ReportVersion,
    responses((status = 200, body = DeviceDto), (status = 400, body = super::error::ErrorBody), (status = 404, body = super::error::ErrorBody)))]
#[post("/v1/devices/{id}/versions")]
async fn report_version(
    state: web::Data<AppState>,
    auth: Auth,
    id: web::Path<i64>,
    body: Json<ReportVersion>,
) -> ApiResult<HttpResponse> {
    let tenant = auth.require(Action::ManageRegistry)?;
    let module = match &body.module {
        Some(m) => ModuleName::parse("module", m.as_str())?,
        None => ModuleName::default_module(),
    };
    let version = Version::parse("version", body.version.as_str())?;
    state
        .store
        .record_version_report(tenant, DeviceId(*id), &module, &version, state.now())
        .await?;
    let d = state.store.get_device(tenant, DeviceId(*id)).await?;
    let modules = state.store.device_modules(tenant, d.id).await?;
    Ok(HttpResponse::Ok().json(device_dto(d, modules)))
}

/// The device's version reports, oldest first (SPEC D2).
#[utoipa::path(tag = "devices", params(("id" = i64, Path), HistoryQuery),
    responses((status = 200, body = PageDto<VersionReportDto>), (status = 404, body = super::error::ErrorBody)))]
#[get("/v1/devices/{id}/versions")]
async fn version_history(
    state: web::Data<AppState>,
    auth: Auth,
    id: web::Path<i64>,
    q: Query<HistoryQuery>,
) -> ApiResult<HttpResponse> {
    let page = PageQuery {
        cursor: q.cursor.clone(),
        limit: q.limit,
    }
    .request()?;
    let module = q
        .module
        .as_deref()
        .map(|m| ModuleName::parse("module", m))
        .transpose()?;
    let page = state
        .store
        .version_history(auth.tenant(), DeviceId(*id), module.as_ref(), page)
        .await?;
    Ok(HttpResponse::Ok().json(PageDto::from_page(page, report_dto)))
}

#[derive(utoipa::OpenApi)]
#[openapi(paths(
    create_device,
    import_devices,
    export_credentials,
    get_device,
    delete_device,
    reset_secret,
    report_version,
    version_history
))]
pub struct Doc;
