//! `POST /api/orders`: the order and its two queue messages are committed together (outbox);
//! the relay is woken to move the messages to Redis. An order is placed for the signed-in user:
//! it needs a session (401), and a `user_id` in the body, if sent, must be that user (403). Each
//! user's orders are rate-limited ([`super::limits`]): an order costs a commit and two messages,
//! one of them an email.

use axum::{
    Json, Router,
    extract::State,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::post,
};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{AppState, auth::SignedIn, error::AppError, extract::JsonBody, limits};
use crate::{
    db::orders::{self, OrderStreams, Placed},
    queue::{ANALYTICS_STREAM, EMAIL_STREAM},
    ratelimit::{ClientKey, LimitedRoute},
};

const MAX_ITEMS: usize = 100;
const MAX_QUANTITY: u32 = 10_000;
const MAX_SKU_CHARS: usize = 64;
/// Largest total, in cents (ten million).
const MAX_TOTAL_CENTS: i64 = 1_000_000_000;

/// Order routes.
pub fn router() -> Router<AppState> {
    Router::new().route("/api/orders", post(create))
}

#[derive(Deserialize)]
struct NewOrder {
    /// Optional: the signed-in user is the buyer; a different id is refused.
    user_id: Option<i64>,
    items: Vec<Item>,
    total: f64,
}

#[derive(Deserialize, serde::Serialize)]
struct Item {
    sku: String,
    quantity: u32,
}

/// A non-negative amount with at most two decimals, in cents.
fn cents(total: f64) -> Result<i64, AppError> {
    if !total.is_finite() || total < 0.0 {
        return Err(AppError::invalid("total", "must be a non-negative number"));
    }
    let scaled = total * 100.0;
    let rounded = scaled.round();
    if (scaled - rounded).abs() > 1e-6 {
        return Err(AppError::invalid("total", "must have at most two decimals"));
    }
    if rounded > MAX_TOTAL_CENTS as f64 {
        return Err(AppError::invalid(
            "total",
            format!("must be at most {}", MAX_TOTAL_CENTS / 100),
        ));
    }
    Ok(rounded as i64)
}

fn validate_items(items: &[Item]) -> Result<(), AppError> {
    if items.is_empty() || items.len() > MAX_ITEMS {
        return Err(AppError::invalid(
            "items",
            format!("must hold 1 to {MAX_ITEMS} items, got {}", items.len()),
        ));
    }
    for (index, item) in items.iter().enumerate() {
        let sku_length = item.sku.trim().chars().count();
        if sku_length == 0 || sku_length > MAX_SKU_CHARS {
            return Err(AppError::invalid(
                &format!("items[{index}].sku"),
                format!("must be 1 to {MAX_SKU_CHARS} characters"),
            ));
        }
        if item.quantity == 0 || item.quantity > MAX_QUANTITY {
            return Err(AppError::invalid(
                &format!("items[{index}].quantity"),
                format!("must be 1 to {MAX_QUANTITY}"),
            ));
        }
    }
    Ok(())
}

async fn create(
    State(state): State<AppState>,
    signed_in: SignedIn,
    JsonBody(body): JsonBody<NewOrder>,
) -> Result<Response, AppError> {
    // The session already names the client; invalid orders count too.
    let client = ClientKey::User(signed_in.user_id);
    let allowance = limits::check(&state, LimitedRoute::Orders, &client).await?;
    match body.user_id {
        Some(user_id) if user_id <= 0 => {
            return Err(AppError::invalid("user_id", "must be a positive integer"));
        }
        Some(user_id) if user_id != signed_in.user_id => {
            return Err(AppError::Forbidden(
                "an order can only be placed for the signed-in user",
            ));
        }
        _ => {}
    }
    let user_id = signed_in.user_id;
    validate_items(&body.items)?;
    let total_cents = cents(body.total)?;
    let items =
        serde_json::to_value(&body.items).map_err(|error| AppError::Internal(Box::new(error)))?;
    let streams = OrderStreams {
        email: EMAIL_STREAM,
        analytics: ANALYTICS_STREAM,
    };
    match orders::place(&state.cluster, user_id, &items, total_cents, streams).await? {
        Placed::Order(order) => {
            state.relay_wake.notify_one();
            let body: Value = json!({
                "id": order.id,
                "user_id": order.user_id,
                "items": order.items.0,
                "total": order.total_cents as f64 / 100.0,
                "created_at": order.created_at,
            });
            let mut response = (
                StatusCode::CREATED,
                [(header::CACHE_CONTROL, "private, no-store")],
                Json(body),
            )
                .into_response();
            allowance.stamp(&mut response);
            Ok(response)
        }
        Placed::UserNotFound => Err(AppError::invalid("user_id", "no user with this id")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_become_cents_and_bad_totals_name_the_field() {
        assert_eq!(cents(12.34).ok(), Some(1234));
        assert_eq!(cents(0.1 + 0.2).ok(), Some(30));
        for bad in [-1.0, 1.001, f64::NAN, 1e12] {
            assert!(
                matches!(cents(bad), Err(AppError::InvalidField { ref field, .. }) if field == "total"),
                "{bad}"
            );
        }
    }
}
