//! What a valid order is (SPEC §6.1 limits): the body of `POST /orders` parsed into a
//! [`NewOrder`], every invalid field reported at once. Pure, unit-tested.

use std::collections::BTreeMap;

use events::text::check_identifier;
use events::{Currency, OrderItem};
use serde::Deserialize;

/// Field limits of `POST /orders` (SPEC §6.1), the same consumers hold events to.
/// (`customer_id` and `sku` follow [`events::text::check_identifier`].)
pub use events::limits;

/// The body of `POST /orders` as sent: loosely typed, so that every field can be checked
/// and reported at once rather than failing on the first.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
pub struct OrderRequest {
    /// 1 to 64 characters.
    #[schema(min_length = 1, max_length = 64, example = "alice")]
    pub customer_id: String,
    /// ISO 4217 code.
    #[schema(pattern = "^[A-Z]{3}$", example = "EUR")]
    pub currency: String,
    /// 1 to 100 lines; their total may be at most 100000000000.
    #[schema(min_items = 1, max_items = 100)]
    pub items: Vec<OrderRequestItem>,
}

/// One line of [`OrderRequest`].
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
pub struct OrderRequestItem {
    #[schema(min_length = 1, max_length = 64, example = "book")]
    pub sku: String,
    #[schema(minimum = 1, maximum = 10000)]
    pub quantity: i64,
    #[schema(minimum = 0, maximum = 100000000)]
    pub unit_price_cents: i64,
}

/// A validated order, total computed by the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewOrder {
    pub customer_id: String,
    pub currency: Currency,
    pub items: Vec<OrderItem>,
    pub total_cents: i64,
}

impl NewOrder {
    /// The order as JSON, for comparing a repeated request with the first one.
    pub fn canonical_json(&self) -> serde_json::Value {
        serde_json::json!({
            "customer_id": self.customer_id,
            "currency": self.currency,
            "items": self.items,
        })
    }
}

/// Messages per invalid field, keyed by a JSON path such as `items[2].quantity`.
pub type FieldErrors = BTreeMap<String, Vec<String>>;

impl TryFrom<OrderRequest> for NewOrder {
    type Error = FieldErrors;

    fn try_from(request: OrderRequest) -> Result<Self, FieldErrors> {
        use limits::*;
        let mut errors = FieldErrors::new();
        let mut fail =
            |field: String, message: String| errors.entry(field).or_default().push(message);
        let mut lines_valid = true;

        if let Err(message) = check_identifier(&request.customer_id) {
            fail("customer_id".into(), message);
        }
        let currency = Currency::parse(&request.currency)
            .map_err(|e| fail("currency".into(), e.to_string()))
            .ok();
        let request_items_empty = request.items.is_empty();
        if request.items.is_empty() || request.items.len() > MAX_ITEMS {
            fail("items".into(), format!("must hold 1 to {MAX_ITEMS} items"));
        }

        let mut items = Vec::with_capacity(request.items.len());
        let mut total: Option<i64> = Some(0);
        for (i, item) in request.items.into_iter().enumerate() {
            let sku = check_identifier(&item.sku);
            if let Err(message) = &sku {
                fail(format!("items[{i}].sku"), message.clone());
            }
            let line_valid = sku.is_ok()
                && (1..=MAX_QUANTITY).contains(&item.quantity)
                && (0..=MAX_UNIT_PRICE_CENTS).contains(&item.unit_price_cents);
            lines_valid &= line_valid;
            if !(1..=MAX_QUANTITY).contains(&item.quantity) {
                fail(
                    format!("items[{i}].quantity"),
                    format!("must be 1 to {MAX_QUANTITY}"),
                );
            }
            if !(0..=MAX_UNIT_PRICE_CENTS).contains(&item.unit_price_cents) {
                fail(
                    format!("items[{i}].unit_price_cents"),
                    format!("must be 0 to {MAX_UNIT_PRICE_CENTS}"),
                );
            }
            total = total.and_then(|t| {
                item.quantity
                    .checked_mul(item.unit_price_cents)
                    .and_then(|line| t.checked_add(line))
            });
            items.push(OrderItem {
                sku: item.sku,
                quantity: u32::try_from(item.quantity).unwrap_or(0),
                unit_price_cents: item.unit_price_cents,
            });
        }
        let total_cents = total.filter(|t| (0..=MAX_TOTAL_CENTS).contains(t));
        // The total is only worth reporting when every line is valid on its own.
        if total_cents.is_none() && lines_valid && !request_items_empty {
            fail(
                "total_cents".into(),
                format!("the order's total must be at most {MAX_TOTAL_CENTS}"),
            );
        }

        match (currency, total_cents) {
            (Some(currency), Some(total_cents)) if errors.is_empty() => Ok(Self {
                customer_id: request.customer_id,
                currency,
                items,
                total_cents,
            }),
            _ => Err(errors),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(sku: &str, quantity: i64, unit_price_cents: i64) -> OrderRequestItem {
        OrderRequestItem {
            sku: sku.into(),
            quantity,
            unit_price_cents,
        }
    }

    fn request(items: Vec<OrderRequestItem>) -> OrderRequest {
        OrderRequest {
            customer_id: "alice".into(),
            currency: "EUR".into(),
            items,
        }
    }

    #[test]
    fn computes_the_total() {
        let order = NewOrder::try_from(request(vec![item("a", 2, 150), item("b", 1, 1000)]))
            .expect("valid");
        assert_eq!(order.total_cents, 1300);
        assert_eq!(order.items[0].quantity, 2);
    }

    #[test]
    fn the_canonical_json_is_the_same_for_the_same_order_only() {
        let order = |quantity| NewOrder::try_from(request(vec![item("a", quantity, 150)]));
        let one = order(2).expect("valid").canonical_json();
        assert_eq!(one, order(2).expect("valid").canonical_json());
        assert_ne!(one, order(3).expect("valid").canonical_json());
        assert_eq!(one["customer_id"], "alice");
    }

    #[test]
    fn the_total_is_not_reported_when_a_line_is_invalid_on_its_own() {
        // 10,001 x 100,000,000 is over the most an order may total, but the quantity is
        // what is wrong.
        let errors =
            NewOrder::try_from(request(vec![item("a", 10_001, 100_000_000)])).expect_err("invalid");
        assert_eq!(errors.keys().collect::<Vec<_>>(), ["items[0].quantity"]);
    }

    #[test]
    fn reports_every_invalid_field() {
        let mut bad = request(vec![item("", 0, -1), item("ok", 10_001, 100_000_001)]);
        bad.customer_id = "x".repeat(65);
        bad.currency = "eur".into();
        let errors = NewOrder::try_from(bad).expect_err("invalid");
        let fields: Vec<&str> = errors.keys().map(String::as_str).collect();
        assert_eq!(
            fields,
            [
                "currency",
                "customer_id",
                "items[0].quantity",
                "items[0].sku",
                "items[0].unit_price_cents",
                "items[1].quantity",
                "items[1].unit_price_cents",
            ]
        );
    }

    #[test]
    fn item_count_is_bounded() {
        assert!(NewOrder::try_from(request(vec![])).is_err());
        assert!(NewOrder::try_from(request((0..100).map(|_| item("a", 1, 1)).collect())).is_ok());
        let errors = NewOrder::try_from(request((0..101).map(|_| item("a", 1, 1)).collect()))
            .expect_err("101");
        assert!(errors.contains_key("items"));
    }

    #[test]
    fn total_is_capped_without_overflow() {
        // 100 lines of 10,000 x 100,000,000 = 10^14: over the cap, and no overflow panic.
        let errors = NewOrder::try_from(request(
            (0..100).map(|_| item("a", 10_000, 100_000_000)).collect(),
        ))
        .expect_err("over the cap");
        assert_eq!(errors.keys().collect::<Vec<_>>(), ["total_cents"]);
        // Exactly at the cap is fine: 100 lines of 10,000 x 100,000 = 10^11.
        let order = NewOrder::try_from(request(
            (0..100).map(|_| item("a", 10_000, 100_000)).collect(),
        ))
        .expect("at the cap");
        assert_eq!(order.total_cents, limits::MAX_TOTAL_CENTS);
    }

    #[test]
    fn control_characters_are_rejected() {
        let mut bad = request(vec![item("a\u{0}b", 1, 1)]);
        bad.customer_id = "al\nice".into();
        let errors = NewOrder::try_from(bad).expect_err("control characters");
        assert_eq!(
            errors.keys().collect::<Vec<_>>(),
            ["customer_id", "items[0].sku"]
        );
    }

    #[test]
    fn blank_customer_is_rejected() {
        let mut bad = request(vec![item("a", 1, 1)]);
        bad.customer_id = "   ".into();
        assert!(
            NewOrder::try_from(bad)
                .expect_err("blank")
                .contains_key("customer_id")
        );
    }
}
