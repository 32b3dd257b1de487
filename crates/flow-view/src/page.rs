//! The page, rendered on the server (maud escapes every value, so a forged entry whose
//! fields hold markup shows as text), and the fragments the live page swaps in.

use maud::{DOCTYPE, Markup, html};
use time::OffsetDateTime;

use crate::observer::{StreamState, View};
use crate::window::Timeline;

/// Orders shown on the page (the window may hold more).
const ORDERS_SHOWN: usize = 30;

/// The few lines of JavaScript the page needs: each server-sent event replaces the
/// fragment of its name with the HTML the server rendered (and escaped).
const LIVE: &str = "const live = new EventSource('/events');\n\
for (const part of ['orders', 'broker']) {\n\
  live.addEventListener(part, (e) => { document.getElementById(part).innerHTML = e.data; });\n\
}\n\
live.onerror = () => document.body.classList.add('offline');\n\
live.onopen = () => document.body.classList.remove('offline');\n";

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:1.5rem;color:#222}\
h1{font-size:1.3rem}h2{font-size:1.05rem;margin-top:1.5rem}\
table{border-collapse:collapse;margin:.3rem 0}td,th{border:1px solid #ccc;padding:.2rem .5rem;font-size:.85rem;text-align:left}\
.steps{list-style:none;padding:0;margin:0}.steps li{display:inline-block;margin-right:.6rem}\
.PAID{color:#137333}.PAYMENT_FAILED,.CANCELLED{color:#b3261e}.PENDING{color:#8a6d00}\
.warn{color:#b3261e}.muted{color:#777}body.offline::before{content:'reconnecting…';color:#b3261e}\
form{display:inline}code{font-size:.8rem}";

/// The whole page, with the fragments as they are now.
pub fn page(view: &View, now: OffsetDateTime) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                title { "order-payment-streams: flow view" }
                style { (STYLE) }
            }
            body {
                h1 { "order-payment-streams: flow view" }
                p.muted {
                    "An observer: it reads the streams without a consumer group and the \
                     services' public APIs; it changes nothing. Alerting stays with the \
                     services' metrics."
                }
                form method="post" action="/orders" id="place" {
                    label { "customer " input name="customer_id" value="alice" required; }
                    " "
                    label { "item " input name="sku" value="book" required; }
                    " "
                    label { "quantity " input name="quantity" type="number" value="1" min="1" required; }
                    " "
                    label { "unit price (cents) " input name="unit_price_cents" type="number" value="1250" min="1" required; }
                    " "
                    button type="submit" { "Place order" }
                }
                h2 { "Orders" }
                div #orders { (orders(view, now)) }
                div #broker { (broker(view)) }
                script { (maud::PreEscaped(LIVE)) }
            }
        }
    }
}

/// The recent orders, newest first, each with its timeline.
pub fn orders(view: &View, now: OffsetDateTime) -> Markup {
    html! {
        @if view.window.is_empty() {
            p.muted { "No order yet: place one above." }
        }
        table {
            @for order in view.window.newest(ORDERS_SHOWN) {
                (order_row(order, now))
            }
        }
    }
}

fn order_row(order: &Timeline, now: OffsetDateTime) -> Markup {
    let since = |at: OffsetDateTime| match order.since_placed(at) {
        Some(ms) => format!("+{ms} ms"),
        None => String::new(),
    };
    let status = order.status.as_deref().unwrap_or("");
    html! {
        tr.order data-order-id=(order.order_id) {
            td {
                code { (order.order_id) }
                br;
                span.muted {
                    (order.customer_id)
                    @if let Some(total) = order.total_cents { " · " (total) " cents" }
                    @if let Some(placed) = order.placed_at {
                        " · placed " ((now - placed).whole_seconds()) " s ago"
                    }
                }
            }
            td {
                ul.steps {
                    @for step in &order.steps {
                        li {
                            b { (step.what) }
                            " " code.muted { (step.entry_id) }
                            @if !step.detail.is_empty() { " " (step.detail) }
                            " " span.muted { (since(step.at)) }
                        }
                    }
                    @if order.has("OrderCreated") && !order.has("delivered")
                        && order.steps.iter().any(|s| s.what.starts_with("Payment")) {
                        li.muted { "delivered to payment-service (acknowledged before the view looked)" }
                    }
                }
            }
            td.status.(status) {
                b.state { (status) }
                @if let Some(at) = order.status_at { " " span.muted { (since(at)) } }
                @if status == "PENDING" || status == "PAID" {
                    form method="post" action=(format!("/orders/{}/cancel", order.order_id)) {
                        " " button type="submit" { "Cancel" }
                    }
                }
            }
        }
    }
}

/// The streams, their groups and consumers, dead letters and the services' figures.
pub fn broker(view: &View) -> Markup {
    html! {
        h2 { "Streams" }
        @if let Some(error) = &view.redis_error {
            p.warn { "Redis cannot be read: " (error) }
        }
        @for stream in &view.streams { (stream_table(stream)) }
        h2 { "Services" }
        table {
            tr { th { "service" } th { "up" } th { "outbox backlog" } th { "published/s" } th { "consumed/s" } }
            @for s in &view.services {
                tr {
                    td { (s.name) }
                    td { @if s.up { "yes" } @else { span.warn { "no" } } }
                    td { (figure(s.outbox_backlog)) }
                    td { (figure(s.published_per_s)) }
                    td { (figure(s.consumed_per_s)) }
                }
            }
        }
    }
}

fn figure(value: Option<f64>) -> String {
    value.map_or_else(|| "–".to_owned(), |v| format!("{v:.0}"))
}

fn stream_table(stream: &StreamState) -> Markup {
    html! {
        h3 { code { (stream.name) } " · " span.length { (stream.length) } " entries" }
        table.groups data-stream=(stream.name) {
            tr { th { "group" } th { "lag" } th { "pending" } th { "last delivered" } th { "consumers (pending, idle)" } }
            @for group in &stream.groups {
                tr {
                    td { (group.name) }
                    td.lag { @if let Some(lag) = group.lag { (lag) } @else { "?" } }
                    td.pending { (group.pending) }
                    td { code { (group.last_delivered) } }
                    td {
                        @for c in &group.consumers {
                            code { (c.name) } " (" (c.pending) ", " (c.idle_ms / 1000) " s) "
                        }
                    }
                }
            }
        }
        @if stream.skips > 0 {
            p.muted { "Behind the stream " (stream.skips) " times: skipped to the newest entries (a pass reads a few hundred)" }
        }
        @if stream.oversized_seen > 0 {
            p.warn { (stream.oversized_seen) " entries too big to show (dead-lettered by their consumer)" }
        }
        p {
            "Dead letters: " b.dead-letters { (stream.dead_letters) }
        }
        @if !stream.recent_dead_letters.is_empty() {
            table {
                tr { th { "entry" } th { "event" } th { "order" } th { "error" } }
                @for d in &stream.recent_dead_letters {
                    tr { td { code { (d.id) } } td { (d.event_type) } td { code { (d.order_id) } } td.error { (d.error) } }
                }
            }
        }
    }
}
