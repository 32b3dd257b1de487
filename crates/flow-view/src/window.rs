//! The recent orders the page shows, each as a timeline of what the streams said about
//! it: bounded (the newest `capacity` orders, a few steps each, every text cut short), so
//! the view's memory does not grow with the orders it has seen.

use std::collections::{HashMap, VecDeque};

use time::OffsetDateTime;

/// The most characters kept of any text that came from a stream entry.
const MAX_TEXT: usize = 120;
/// The most steps kept per order (a normal order has three to six).
const MAX_STEPS: usize = 12;

/// `text` cut to `MAX_TEXT` characters.
pub fn clip(text: &str) -> String {
    match text.char_indices().nth(MAX_TEXT) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_owned(),
    }
}

/// One thing that happened to an order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// What: an event type, or `delivered`.
    pub what: String,
    /// The stream entry it was seen in (or delivered from).
    pub entry_id: String,
    /// More: a consumer and its delivery count, a failure reason.
    pub detail: String,
    /// When: the event's `occurred_at`, or when the view saw it.
    pub at: OffsetDateTime,
}

/// What the view knows of one order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timeline {
    pub order_id: String,
    /// When it was placed (its `OrderCreated`'s time), if seen.
    pub placed_at: Option<OffsetDateTime>,
    pub customer_id: String,
    pub total_cents: Option<i64>,
    pub steps: Vec<Step>,
    /// Its state as order-service last reported it.
    pub status: Option<String>,
    /// When order-service last changed it.
    pub status_at: Option<OffsetDateTime>,
}

impl Timeline {
    fn new(order_id: &str) -> Self {
        Self {
            order_id: clip(order_id),
            placed_at: None,
            customer_id: String::new(),
            total_cents: None,
            steps: Vec::new(),
            status: None,
            status_at: None,
        }
    }

    /// Whether order-service reported a state it will not leave on its own.
    pub fn is_final(&self) -> bool {
        matches!(
            self.status.as_deref(),
            Some("PAID" | "PAYMENT_FAILED" | "CANCELLED")
        ) && !self.awaits_answer()
    }

    /// Cancelled after its payment, and payment-service has not answered yet.
    fn awaits_answer(&self) -> bool {
        self.status.as_deref() == Some("CANCELLED")
            && self.has("OrderCancelled")
            && !self.has("PaymentRefunded")
            && !self.has("PaymentCancelled")
    }

    /// Whether a step of this kind was seen.
    pub fn has(&self, what: &str) -> bool {
        self.steps.iter().any(|s| s.what == what)
    }

    /// Milliseconds from placing the order to `at`, if the placing was seen.
    pub fn since_placed(&self, at: OffsetDateTime) -> Option<i64> {
        self.placed_at
            .map(|placed| (at - placed).whole_milliseconds().clamp(0, i64::MAX.into()) as i64)
    }

    /// Adds a step, or updates the detail of the same step (kind and entry) seen before.
    pub fn add_step(&mut self, step: Step) {
        let same = |s: &Step| s.what == step.what && s.entry_id == step.entry_id;
        if let Some(seen) = self.steps.iter_mut().find(|s| same(s)) {
            seen.detail = step.detail;
            return;
        }
        if self.steps.len() < MAX_STEPS {
            self.steps.push(step);
            self.steps.sort_by_key(|s| s.at);
        }
    }
}

/// The newest `capacity` orders by when the view first heard of them.
#[derive(Debug)]
pub struct Window {
    capacity: usize,
    arrival: VecDeque<String>,
    orders: HashMap<String, Timeline>,
}

impl Window {
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            arrival: VecDeque::new(),
            orders: HashMap::new(),
        }
    }

    /// How many orders it holds (at most its capacity).
    pub fn len(&self) -> usize {
        self.orders.len()
    }

    /// Whether it holds no order yet.
    pub fn is_empty(&self) -> bool {
        self.orders.is_empty()
    }

    /// The order's timeline, made (and the oldest dropped if full) if it is new.
    pub fn order(&mut self, order_id: &str) -> &mut Timeline {
        let key = clip(order_id);
        if !self.orders.contains_key(&key) {
            if self.arrival.len() == self.capacity
                && let Some(oldest) = self.arrival.pop_front()
            {
                self.orders.remove(&oldest);
            }
            self.arrival.push_back(key.clone());
        }
        self.orders
            .entry(key)
            .or_insert_with_key(|key| Timeline::new(key))
    }

    /// The order's timeline if the view holds it.
    pub fn get_mut(&mut self, order_id: &str) -> Option<&mut Timeline> {
        self.orders.get_mut(order_id)
    }

    /// The order a step of which was seen in stream entry `entry_id`.
    pub fn order_of_entry(&self, entry_id: &str) -> Option<String> {
        self.orders
            .values()
            .find(|t| t.steps.iter().any(|s| s.entry_id == entry_id))
            .map(|t| t.order_id.clone())
    }

    /// Records a step of an order.
    pub fn record(&mut self, order_id: &str, step: Step) {
        self.order(order_id).add_step(step);
    }

    /// The newest `n` orders, newest first.
    pub fn newest(&self, n: usize) -> impl Iterator<Item = &Timeline> {
        self.arrival
            .iter()
            .rev()
            .take(n)
            .filter_map(|id| self.orders.get(id))
    }

    /// The ids of orders whose state the view should ask order-service for: those an
    /// outcome or a cancellation was seen for and that are not final yet, newest first.
    pub fn unsettled(&self, n: usize) -> Vec<String> {
        self.newest(self.capacity)
            .filter(|t| !t.is_final() && t.steps.iter().any(|s| s.what.starts_with("Payment")))
            .take(n)
            .map(|t| t.order_id.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(what: &str, entry_id: &str, ms: i64) -> Step {
        Step {
            what: what.to_owned(),
            entry_id: entry_id.to_owned(),
            detail: String::new(),
            at: OffsetDateTime::UNIX_EPOCH + time::Duration::milliseconds(ms),
        }
    }

    #[test]
    fn keeps_only_the_newest_orders() {
        let mut window = Window::new(3);
        for n in 0..10 {
            window.record(&format!("o{n}"), step("OrderCreated", &format!("{n}-0"), n));
        }
        assert_eq!(window.len(), 3);
        let ids: Vec<_> = window.newest(10).map(|t| t.order_id.as_str()).collect();
        assert_eq!(ids, ["o9", "o8", "o7"]);
    }

    #[test]
    fn steps_are_in_time_order_once_each_and_bounded() {
        let mut window = Window::new(2);
        window.record("o", step("PaymentCompleted", "2-0", 20));
        window.record("o", step("OrderCreated", "1-0", 10));
        let mut delivered = step("delivered", "1-0", 15);
        window.record("o", delivered.clone());
        delivered.detail = "c1 (2nd delivery)".to_owned();
        window.record("o", delivered);
        let order = window.order("o");
        let what: Vec<_> = order.steps.iter().map(|s| s.what.as_str()).collect();
        assert_eq!(what, ["OrderCreated", "delivered", "PaymentCompleted"]);
        assert_eq!(order.steps[1].detail, "c1 (2nd delivery)");
        for n in 0..100 {
            window.record("o", step("OrderCancelled", &format!("9-{n}"), 30 + n));
        }
        assert_eq!(window.order("o").steps.len(), MAX_STEPS);
    }

    #[test]
    fn text_from_a_stream_is_cut_short() {
        let long = "é".repeat(10_000);
        assert_eq!(clip(&long).chars().count(), MAX_TEXT + 1);
        let mut window = Window::new(1);
        assert_eq!(window.order(&long).order_id.chars().count(), MAX_TEXT + 1);
        assert_eq!(clip("short"), "short");
    }

    #[test]
    fn an_order_is_settled_once_final_and_answered() {
        let mut window = Window::new(5);
        window.record("o", step("OrderCreated", "1-0", 0));
        assert!(window.unsettled(5).is_empty(), "nothing to ask yet");
        window.record("o", step("PaymentCompleted", "2-0", 5));
        assert_eq!(window.unsettled(5), ["o"]);
        let order = window.order("o");
        order.status = Some("PAID".to_owned());
        assert!(order.is_final());
        order.status = Some("CANCELLED".to_owned());
        order.add_step(step("OrderCancelled", "3-0", 9));
        assert!(!order.is_final(), "its refund is still to come");
        order.add_step(step("PaymentRefunded", "4-0", 12));
        assert!(order.is_final());
        order.placed_at = Some(OffsetDateTime::UNIX_EPOCH);
        assert_eq!(order.since_placed(order.steps[3].at), Some(12));
    }
}
