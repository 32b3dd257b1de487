//! A URL that carries secrets (a password in its user info or its query), shown only
//! redacted.

use std::fmt;

/// A URL whose secrets never reach a log: `Debug` and `Display` show
/// `postgres://user:***@host/db?password=***`, the password of the user info and of
/// any query parameter that carries one.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretUrl(pub(crate) String);

impl SecretUrl {
    /// The URL with its password, for connecting.
    pub fn expose(&self) -> &str {
        &self.0
    }

    fn redacted(&self) -> String {
        let Some((scheme, rest)) = self.0.split_once("://") else {
            return "***".to_owned();
        };
        let (rest, query) = match rest.split_once('?') {
            Some((rest, query)) => (rest, Some(query)),
            None => (rest, None),
        };
        let authority_end = rest.find('/').unwrap_or(rest.len());
        let mut out = match rest[..authority_end].rfind('@') {
            Some(at) => {
                let user = rest[..at].split(':').next().unwrap_or_default();
                let password = if rest[..at].contains(':') { ":***" } else { "" };
                format!("{scheme}://{user}{password}@{}", &rest[at + 1..])
            }
            None => format!("{scheme}://{rest}"),
        };
        if let Some(query) = query {
            let parameters: Vec<String> = query
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some((name, _)) if is_secret_parameter(name) => format!("{name}=***"),
                    _ => pair.to_owned(),
                })
                .collect();
            out.push('?');
            out.push_str(&parameters.join("&"));
        }
        out
    }

    pub(crate) fn parse_with_schemes(url: &str, schemes: &[&str]) -> Result<Self, String> {
        match url.split_once("://") {
            Some((scheme, rest)) if schemes.contains(&scheme) && !rest.is_empty() => {
                Ok(Self(url.to_owned()))
            }
            _ => Err(format!(
                "expected a URL starting with {}://",
                schemes.join("://, ")
            )),
        }
    }
}

impl fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.redacted())
    }
}

impl fmt::Display for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

/// Query parameters that carry a secret (`password`, `sslpassword`, `pass`, `token`, ...).
fn is_secret_parameter(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    ["pass", "secret", "token", "key"]
        .iter()
        .any(|word| name.contains(word))
}
