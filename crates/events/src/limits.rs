//! The bounds of SPEC §6.1 on orders and money, shared by order-service (which refuses a
//! request outside them) and by both consumers (which refuse an event outside them: no
//! honest producer writes one, see [`crate::Event::check`]).

/// Lines of one order.
pub const MAX_ITEMS: usize = 100;
/// Units of one line.
pub const MAX_QUANTITY: i64 = 10_000;
/// Price of one unit, in minor units.
pub const MAX_UNIT_PRICE_CENTS: i64 = 100_000_000;
/// An order's total, and so any amount an event moves, in minor units.
pub const MAX_TOTAL_CENTS: i64 = 100_000_000_000;
/// Free text an event carries (a cancellation's or a failure's reason), in characters.
pub const MAX_REASON_CHARS: usize = 200;

/// The total of `(quantity, unit_price_cents)` lines, or `None` if it overflows `i64`
/// (never panics, whatever the lines).
pub fn total_of(lines: impl IntoIterator<Item = (i64, i64)>) -> Option<i64> {
    lines
        .into_iter()
        .try_fold(0_i64, |total, (quantity, price)| {
            quantity
                .checked_mul(price)
                .and_then(|line| total.checked_add(line))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_never_overflow() {
        assert_eq!(total_of([(2, 150), (1, 1000)]), Some(1300));
        assert_eq!(total_of([]), Some(0));
        assert_eq!(total_of([(i64::MAX, 2)]), None);
        assert_eq!(total_of([(1, i64::MAX), (1, 1)]), None);
        assert_eq!(total_of([(-1, i64::MIN)]), None);
    }
}
