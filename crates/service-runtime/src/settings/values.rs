//! The parsers of single setting values: URLs (shown redacted), tokens, names. Each
//! refuses a bad value with the one-line reason clap prints.

use std::fmt;

use super::SecretUrl;

/// Parses a Postgres URL.
pub fn database_url(url: &str) -> Result<SecretUrl, String> {
    SecretUrl::parse_with_schemes(url, &["postgres", "postgresql"])
}

/// Parses a Redis URL.
pub fn redis_url(url: &str) -> Result<SecretUrl, String> {
    let schemes = [
        "redis",
        "rediss",
        "redis+unix",
        "unix",
        "redis+cluster",
        "rediss+cluster",
    ];
    let url = SecretUrl::parse_with_schemes(url, &schemes)?;
    match crate::redis_conn::cluster_nodes(url.expose()) {
        Some(Err(reason)) => Err(reason),
        _ => Ok(url),
    }
}

/// A secret string (a token): `Debug` and `Display` show `***`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// The secret itself, for comparing.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"***\"")
    }
}

pub(crate) fn admin_token(value: &str) -> Result<Secret, String> {
    if value.is_empty() {
        // Off (see `CommonSettings::admin_token`).
        return Ok(Secret(String::new()));
    }
    if value.len() < 16 {
        return Err("must be at least 16 characters".into());
    }
    if value.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("must not contain spaces or control characters".into());
    }
    Ok(Secret(value.to_owned()))
}

pub(super) fn otlp_endpoint(value: &str) -> Result<SecretUrl, String> {
    match value.split_once("://") {
        // Empty means "no exporter", as when a compose file passes an unset variable.
        _ if value.is_empty() => Ok(SecretUrl(String::new())),
        Some(("http" | "https", rest)) if !rest.is_empty() => Ok(SecretUrl(value.to_owned())),
        _ => Err("expected an http:// or https:// URL".into()),
    }
}

fn printable(value: &str) -> Result<String, String> {
    if value.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("must not contain spaces or control characters".into());
    }
    Ok(value.to_owned())
}

pub(super) fn namespace(value: &str) -> Result<String, String> {
    if value.contains(['{', '}']) {
        return Err("must not contain { or }: the stream keys' hash tags are made of them".into());
    }
    printable(value)
}

pub(super) fn consumer_name(value: &str) -> Result<String, String> {
    match printable(value)? {
        name if name.is_empty() => Err("must not be empty".into()),
        name => Ok(name),
    }
}
