//! Bearer-key authentication and role checks (SPEC M1).

use super::error::ApiError;
use super::AppState;
use crate::domain::{role::Action, Caller, TenantId};
use actix_web::dev::Payload;
use actix_web::{web, FromRequest, HttpRequest};
use std::future::Future;
use std::pin::Pin;

/// The authenticated caller of a `/v1` request.
#[derive(Debug, Clone, Copy)]
pub struct Auth(pub Caller);

impl Auth {
    /// The caller's tenant, if its role allows `action`; 403 otherwise.
    pub fn require(&self, action: Action) -> Result<TenantId, ApiError> {
        if self.0.role.may(action) {
            Ok(self.0.tenant)
        } else {
            Err(ApiError::Forbidden(format!(
                "a key with role {} may not do this",
                self.0.role.as_str()
            )))
        }
    }

    /// The caller's tenant for reading, which every role may do.
    pub fn tenant(&self) -> TenantId {
        self.0.tenant
    }
}

impl FromRequest for Auth {
    type Error = ApiError;
    type Future = Pin<Box<dyn Future<Output = Result<Self, Self::Error>>>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let state = req.app_data::<web::Data<AppState>>().cloned();
        let header = req
            .headers()
            .get(actix_web::http::header::AUTHORIZATION)
            .and_then(|h| h.to_str().ok())
            .map(str::to_owned);
        Box::pin(async move {
            let state = state.ok_or_else(|| ApiError::Internal("app state missing".into()))?;
            let header = header.ok_or(ApiError::Unauthenticated)?;
            let key = header
                .strip_prefix("Bearer ")
                .or_else(|| header.strip_prefix("bearer "))
                .map(str::trim)
                .ok_or(ApiError::Unauthenticated)?;
            state
                .store
                .authenticate(key)
                .await?
                .map(Auth)
                .ok_or(ApiError::Unauthenticated)
        })
    }
}
