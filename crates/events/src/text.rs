//! Rules for the free-text identifiers events carry (customer ids, SKUs), shared by both
//! services so they accept exactly the same values.

/// The longest customer id or SKU, in characters.
pub const MAX_IDENTIFIER_CHARS: usize = 64;

/// A customer id or SKU: 1 to 64 characters, not only spaces, no control characters
/// (which databases and logs mishandle; Postgres cannot store NUL at all).
pub fn check_identifier(value: &str) -> Result<(), String> {
    let chars = value.chars().count();
    if chars == 0 || chars > MAX_IDENTIFIER_CHARS || value.trim().is_empty() {
        return Err(format!(
            "must be 1 to {MAX_IDENTIFIER_CHARS} characters, not blank"
        ));
    }
    if value.chars().any(char::is_control) {
        return Err("must not contain control characters".to_owned());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::check_identifier;

    #[test]
    fn identifiers() {
        assert!(check_identifier("alice").is_ok());
        assert!(check_identifier("ünïcödé-ок").is_ok());
        assert!(check_identifier(&"x".repeat(64)).is_ok());
        for bad in [
            "",
            "   ",
            "a\u{0}b",
            "tab\there",
            "new\nline",
            &"x".repeat(65),
        ] {
            assert!(check_identifier(bad).is_err(), "{bad:?}");
        }
    }
}
