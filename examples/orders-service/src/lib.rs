//! An example service behind the Tessera guard: one line (`.layer(guard.layer())`) protects every route, and
//! handlers receive the validated caller through the [`Authenticated`] extractor.

use axum::Json;
use axum::Router;
use axum::extract::Path;
use axum::routing::{get, post};
use serde_json::{Value, json};
use tessera_guard::{Authenticated, Guard};

/// The service's routes, behind `guard`.
pub fn app(guard: &Guard) -> Router {
    Router::new()
        .route("/orders/{id}", get(order))
        .route("/orders", post(create))
        .route("/health", get(|| async { "ok" }))
        .layer(guard.layer())
}

/// `GET /orders/{id}`: needs `orders:read` (the policy says so; the guard enforces it before this runs).
async fn order(Authenticated(caller): Authenticated, Path(id): Path<String>) -> Json<Value> {
    Json(json!({ "order": id, "read_by": caller.claims.sub, "client": caller.claims.client_id }))
}

/// `POST /orders`: needs `orders:write`.
async fn create(caller: Authenticated) -> Json<Value> {
    Json(json!({ "created_by": caller.claims.sub, "admin": caller.has_role("admin") }))
}
