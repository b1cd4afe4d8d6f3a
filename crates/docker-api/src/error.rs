//! The one place where domain errors become HTTP: Docker's `{"message": ...}` body
//! with Docker's status codes.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use cluster::Error;

#[derive(Debug)]
pub struct ApiError(pub Error);

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        ApiError(e)
    }
}

impl From<cluster::StoreError> for ApiError {
    fn from(e: cluster::StoreError) -> Self {
        ApiError(e.into())
    }
}

impl ApiError {
    pub fn bad(msg: impl Into<String>) -> ApiError {
        ApiError(Error::InvalidArgument(msg.into()))
    }
    pub fn status(&self) -> StatusCode {
        match &self.0 {
            Error::InvalidArgument(_) => StatusCode::BAD_REQUEST,
            Error::NotFound(_) => StatusCode::NOT_FOUND,
            Error::Conflict(_) => StatusCode::CONFLICT,
            Error::Forbidden(_) => StatusCode::FORBIDDEN,
            Error::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Error::NotModified(_) => StatusCode::NOT_MODIFIED,
            Error::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Error::NotImplemented(_) => StatusCode::NOT_IMPLEMENTED,
            Error::Upstream(_) | Error::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status == StatusCode::NOT_MODIFIED {
            return status.into_response();
        }
        (
            status,
            Json(serde_json::json!({ "message": self.0.to_string() })),
        )
            .into_response()
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
