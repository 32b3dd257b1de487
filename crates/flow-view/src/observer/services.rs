//! What the services say of themselves through their public HTTP APIs: each one's
//! `/metrics` (outbox backlog, events published and consumed per second), and from
//! order-service the state of the orders not yet final.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::join_all;
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

use super::Shared;
use crate::window::clip;

/// Orders whose state is asked of order-service per round (at once).
const STATES_ASKED: usize = 20;

/// A service as its `/metrics` shows it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ServiceState {
    pub name: &'static str,
    pub up: bool,
    pub outbox_backlog: Option<f64>,
    pub published_per_s: Option<f64>,
    pub consumed_per_s: Option<f64>,
    /// The previous scrape's time and counters, for the rates.
    last: Option<(Instant, f64, f64)>,
}

impl ServiceState {
    pub fn new(name: &'static str) -> Self {
        Self {
            name,
            ..Self::default()
        }
    }

    fn update(&mut self, metrics: Option<(f64, f64, f64)>) {
        let Some((backlog, published, consumed)) = metrics else {
            *self = Self::new(self.name);
            return;
        };
        let now = Instant::now();
        self.up = true;
        self.outbox_backlog = Some(backlog);
        if let Some((then, p0, c0)) = self.last {
            let seconds = now.duration_since(then).as_secs_f64().max(0.001);
            self.published_per_s = Some(((published - p0) / seconds).max(0.0));
            self.consumed_per_s = Some(((consumed - c0) / seconds).max(0.0));
        }
        self.last = Some((now, published, consumed));
    }
}

/// Reads every `every` both services' figures, then the states of orders not yet final
/// from order-service if it answered. Every request is bounded by `http`'s timeout and a
/// round's requests go at once, so a frozen service costs a round one timeout.
pub async fn watch_services(
    shared: Arc<Shared>,
    http: reqwest::Client,
    (order_service, payment_service): (String, String),
    every: Duration,
    stop: CancellationToken,
) {
    loop {
        let (orders, payments) = futures::join!(
            scrape(&http, &order_service),
            scrape(&http, &payment_service)
        );
        let order_service_up = orders.is_some();
        {
            let mut view = shared.view();
            for (name, metrics) in [("order-service", orders), ("payment-service", payments)] {
                if let Some(service) = view.services.iter_mut().find(|s| s.name == name) {
                    service.update(metrics);
                }
            }
        }
        if order_service_up {
            let unsettled = shared.view().window.unsettled(STATES_ASKED);
            let states = join_all(
                unsettled
                    .iter()
                    .map(|id| order_state(&http, &order_service, id)),
            )
            .await;
            let mut view = shared.view();
            for (order_id, state) in unsettled.iter().zip(states) {
                if let Some((status, at)) = state
                    && let Some(timeline) = view.window.get_mut(order_id)
                {
                    timeline.status = Some(clip(&status));
                    timeline.status_at = at;
                }
            }
        }
        shared.changed();
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
    }
}

/// The answer to `GET url`, if it came and was a success.
async fn fetch(http: &reqwest::Client, url: String) -> Option<reqwest::Response> {
    http.get(url).send().await.ok()?.error_for_status().ok()
}

/// The sums of the three figures in a Prometheus text page, if it could be read.
async fn scrape(http: &reqwest::Client, base: &str) -> Option<(f64, f64, f64)> {
    let page = fetch(http, format!("{base}/metrics"))
        .await?
        .text()
        .await
        .ok()?;
    let sum = |metric: &str| -> f64 {
        page.lines()
            .filter(|l| {
                l.strip_prefix(metric)
                    .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    Some((
        sum("outbox_backlog"),
        sum("events_published_total"),
        sum("events_consumed_total"),
    ))
}

/// The order's status and last change as order-service reports them; only ids that are
/// UUIDs are asked (an id from a forged entry never reaches a URL).
async fn order_state(
    http: &reqwest::Client,
    base: &str,
    order_id: &str,
) -> Option<(String, Option<OffsetDateTime>)> {
    let id = uuid::Uuid::parse_str(order_id).ok()?;
    let order: serde_json::Value = fetch(http, format!("{base}/orders/{id}"))
        .await?
        .json()
        .await
        .ok()?;
    let at = order["updated_at"].as_str().and_then(|t| {
        OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).ok()
    });
    Some((order["status"].as_str()?.to_owned(), at))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_come_from_two_scrapes_and_a_missing_one_means_down() {
        let mut service = ServiceState::new("s");
        service.update(Some((3.0, 10.0, 5.0)));
        assert!(service.up);
        assert_eq!(service.outbox_backlog, Some(3.0));
        assert_eq!(service.published_per_s, None, "one scrape gives no rate");
        service.update(Some((0.0, 20.0, 5.0)));
        assert!(service.published_per_s.is_some_and(|r| r > 0.0));
        assert_eq!(service.consumed_per_s, Some(0.0));
        service.update(None);
        assert!(!service.up);
        assert_eq!(service, ServiceState::new("s"));
    }
}
