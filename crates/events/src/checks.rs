//! What a well-formed event is, beyond its shape: the checks a consumer makes on every
//! entry before it acts on it (SPEC §6 rules, applied to events).
//!
//! Anyone who can `XADD` to a stream can write an entry that decodes; these checks refuse
//! what no honest producer ever writes: an event signed by the service that does not
//! produce its type, identifiers that the API would refuse, amounts out of range, an
//! order whose total is not the sum of its lines. What a consumer can only check against
//! its own state (a payment's amount against the order's) is checked by the service.

use crate::limits::{
    MAX_ITEMS, MAX_QUANTITY, MAX_REASON_CHARS, MAX_TOTAL_CENTS, MAX_UNIT_PRICE_CENTS, total_of,
};
use crate::text::check_identifier;
use crate::{Event, EventType, OrderCreated, Producer};

impl EventType {
    /// The only service that writes events of this type.
    pub fn producer(self) -> Producer {
        match self {
            Self::OrderCreated | Self::OrderCancelled => Producer::OrderService,
            Self::PaymentCompleted
            | Self::PaymentFailed
            | Self::PaymentRefunded
            | Self::PaymentCancelled => Producer::PaymentService,
        }
    }
}

impl Event {
    /// Whether the body is one its producer could have written: identifiers by the rules
    /// of [`check_identifier`], amounts within `0..=MAX_TOTAL_CENTS`, free text bounded,
    /// an order's lines within SPEC §6.1 and its total their sum. The error says which
    /// rule failed.
    pub fn check(&self) -> Result<(), String> {
        match self {
            Self::OrderCreated(order) => check_order(order),
            Self::OrderCancelled(cancel) => {
                customer(&cancel.customer_id)?;
                reason(&cancel.reason)
            }
            Self::PaymentCompleted(paid) => {
                customer(&paid.customer_id)?;
                amount(paid.amount_cents)
            }
            Self::PaymentFailed(failed) => {
                customer(&failed.customer_id)?;
                amount(failed.amount_cents)?;
                reason(failed.reason.as_str())
            }
            Self::PaymentRefunded(refund) => {
                customer(&refund.customer_id)?;
                amount(refund.amount_cents)
            }
            Self::PaymentCancelled(cancelled) => customer(&cancelled.customer_id),
        }
    }
}

fn check_order(order: &OrderCreated) -> Result<(), String> {
    customer(&order.customer_id)?;
    if order.items.is_empty() || order.items.len() > MAX_ITEMS {
        return Err(format!("an order has 1 to {MAX_ITEMS} items"));
    }
    for (i, item) in order.items.iter().enumerate() {
        check_identifier(&item.sku).map_err(|e| format!("items[{i}].sku {e}"))?;
        if !(1..=MAX_QUANTITY).contains(&i64::from(item.quantity)) {
            return Err(format!("items[{i}].quantity must be 1 to {MAX_QUANTITY}"));
        }
        if !(0..=MAX_UNIT_PRICE_CENTS).contains(&item.unit_price_cents) {
            return Err(format!(
                "items[{i}].unit_price_cents must be 0 to {MAX_UNIT_PRICE_CENTS}"
            ));
        }
    }
    amount(order.total_cents)?;
    let lines = order
        .items
        .iter()
        .map(|item| (i64::from(item.quantity), item.unit_price_cents));
    match total_of(lines) {
        Some(sum) if sum == order.total_cents => Ok(()),
        Some(sum) => Err(format!(
            "total_cents {} is not the sum of the items ({sum})",
            order.total_cents
        )),
        None => Err("the items' total overflows".to_owned()),
    }
}

fn customer(customer_id: &str) -> Result<(), String> {
    check_identifier(customer_id).map_err(|e| format!("customer_id {e}"))
}

fn amount(cents: i64) -> Result<(), String> {
    if (0..=MAX_TOTAL_CENTS).contains(&cents) {
        Ok(())
    } else {
        Err(format!(
            "an amount must be 0 to {MAX_TOTAL_CENTS} cents, got {cents}"
        ))
    }
}

fn reason(text: &str) -> Result<(), String> {
    if text.chars().count() > MAX_REASON_CHARS || text.chars().any(char::is_control) {
        Err(format!(
            "a reason is at most {MAX_REASON_CHARS} characters, none of them control characters"
        ))
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use uuid::Uuid;

    use super::*;
    use crate::{Currency, OrderItem, PaymentCompleted};

    fn order(items: Vec<OrderItem>, total_cents: i64) -> Event {
        Event::OrderCreated(OrderCreated {
            order_id: Uuid::now_v7(),
            customer_id: "alice".into(),
            items,
            total_cents,
            currency: Currency::parse("EUR").expect("valid"),
            pay_by: None,
        })
    }

    fn line(quantity: u32, unit_price_cents: i64) -> OrderItem {
        OrderItem {
            sku: "book".into(),
            quantity,
            unit_price_cents,
        }
    }

    fn paid(customer_id: &str, amount_cents: i64) -> Event {
        Event::PaymentCompleted(PaymentCompleted {
            payment_id: Uuid::now_v7(),
            order_id: Uuid::now_v7(),
            customer_id: customer_id.into(),
            amount_cents,
            currency: Currency::parse("EUR").expect("valid"),
        })
    }

    #[test]
    fn an_honest_order_passes() {
        assert_eq!(
            order(vec![line(2, 150), line(1, 1000)], 1300).check(),
            Ok(())
        );
        assert_eq!(order(vec![line(1, 0)], 0).check(), Ok(()));
        let most = (0..MAX_ITEMS).map(|_| line(1, 1)).collect();
        assert_eq!(
            order(most, MAX_ITEMS as i64).check(),
            Ok(()),
            "the most items"
        );
    }

    #[test]
    fn reasons_are_bounded_in_characters_and_free_of_control_characters() {
        let cancelled = |reason: String| {
            Event::OrderCancelled(crate::OrderCancelled {
                order_id: Uuid::now_v7(),
                customer_id: "alice".into(),
                reason,
            })
        };
        let longest = "é".repeat(MAX_REASON_CHARS);
        assert_eq!(
            cancelled(longest.clone()).check(),
            Ok(()),
            "counted in characters"
        );
        assert!(cancelled(longest + "é").check().is_err(), "one too many");
        assert!(cancelled("changed\nmind".into()).check().is_err());
        let failed = Event::PaymentFailed(crate::PaymentFailed {
            order_id: Uuid::now_v7(),
            customer_id: "alice".into(),
            amount_cents: 1,
            currency: Currency::parse("EUR").expect("valid"),
            reason: crate::FailureReason::Other("x".repeat(MAX_REASON_CHARS + 1)),
        });
        assert!(failed.check().is_err(), "a decline's reason too");
    }

    #[test]
    fn an_order_must_add_up_and_stay_in_range() {
        let forged = [
            order(vec![line(1, 100)], 1),
            order(vec![line(1, 100)], -100),
            order(vec![line(1, -100)], -100),
            order(vec![line(1, 100)], i64::MIN),
            order(vec![line(0, 100)], 0),
            order(vec![line(10_001, 1)], 10_001),
            order(
                vec![line(1, MAX_UNIT_PRICE_CENTS + 1)],
                MAX_UNIT_PRICE_CENTS + 1,
            ),
            order(vec![], 0),
            order((0..=MAX_ITEMS).map(|_| line(1, 1)).collect(), 101),
        ];
        for event in forged {
            assert!(event.check().is_err(), "accepted {event:?}");
        }
    }

    #[test]
    fn identifiers_and_amounts_are_checked_on_every_type() {
        assert_eq!(paid("bob", 2500).check(), Ok(()));
        assert!(paid("", 2500).check().is_err());
        assert!(paid("bo\u{0}b", 2500).check().is_err());
        assert!(paid("bob", -1).check().is_err());
        assert!(paid("bob", MAX_TOTAL_CENTS + 1).check().is_err());
    }

    #[test]
    fn each_type_has_one_producer() {
        assert_eq!(EventType::OrderCreated.producer(), Producer::OrderService);
        assert_eq!(EventType::OrderCancelled.producer(), Producer::OrderService);
        for t in &EventType::ALL[2..] {
            assert_eq!(t.producer(), Producer::PaymentService, "{t}");
        }
    }
}
