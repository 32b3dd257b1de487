//! Parsing of stream replies (entries as `XREADGROUP` gives them) from raw Redis values.
//!
//! redis-rs' typed stream reply turns field names into `String` and fields into a map:
//! one entry with a non-UTF-8 field name would make the whole reply fail to parse and
//! stall the consumer, and duplicate names would vanish. Parsing the raw value keeps
//! every entry, so a malformed one can be dead-lettered instead.

use redis::Value;

/// One stream entry as delivered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RawEntry {
    pub id: String,
    /// `None` when the entry was deleted from the stream while pending.
    pub fields: Option<Vec<(String, Vec<u8>)>>,
}

/// Parses an `XAUTOCLAIM ... JUSTID` reply `[next-cursor, [id...], [deleted id...]]`
/// into the cursor and how many ids were claimed.
pub(crate) fn parse_autoclaim_reply(reply: Value) -> Result<(String, usize), String> {
    match reply {
        Value::Array(parts) if parts.len() >= 2 => {
            let mut parts = parts.into_iter();
            let next = parts.next().map(text).unwrap_or_default();
            match parts.next() {
                Some(Value::Array(ids)) => Ok((next, ids.len())),
                other => Err(format!("unexpected claimed ids: {other:?}")),
            }
        }
        other => Err(format!("unexpected XAUTOCLAIM reply: {other:?}")),
    }
}

/// Parses a list of `[id, [field, value, ...] | nil]`.
pub(crate) fn parse_entries(entries: Value) -> Result<Vec<RawEntry>, String> {
    let Value::Array(entries) = entries else {
        return Err(format!("expected a list of entries, got {entries:?}"));
    };
    entries.into_iter().map(parse_entry).collect()
}

fn parse_entry(entry: Value) -> Result<RawEntry, String> {
    let Value::Array(parts) = entry else {
        return Err(format!("expected an entry, got {entry:?}"));
    };
    let mut parts = parts.into_iter();
    let id = match parts.next() {
        Some(id @ (Value::BulkString(_) | Value::SimpleString(_))) => text(id),
        other => return Err(format!("expected an entry id, got {other:?}")),
    };
    let fields = match parts.next() {
        None | Some(Value::Nil) => None,
        Some(Value::Array(flat)) => {
            // The reply's buffers are moved into the entry, not copied.
            let mut flat = flat.into_iter();
            let mut fields = Vec::with_capacity(flat.len().div_ceil(2));
            while let Some(name) = flat.next() {
                let value = flat.next().unwrap_or(Value::Nil);
                fields.push((text(name), bytes(value)));
            }
            Some(fields)
        }
        Some(other) => return Err(format!("expected the fields of {id}, got {other:?}")),
    };
    Ok(RawEntry { id, fields })
}

fn bytes(value: Value) -> Vec<u8> {
    match value {
        Value::BulkString(b) => b,
        Value::SimpleString(s) => s.into_bytes(),
        Value::Int(i) => i.to_string().into_bytes(),
        _ => Vec::new(),
    }
}

/// The value as text; bytes that are not UTF-8 are replaced.
fn text(value: Value) -> String {
    String::from_utf8(bytes(value))
        .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &[u8]) -> Value {
        Value::BulkString(s.to_vec())
    }

    #[test]
    fn keeps_binary_names_duplicates_and_deleted_entries() {
        let reply = Value::Array(vec![
            Value::Array(vec![
                bulk(b"1-0"),
                Value::Array(vec![
                    bulk(b"a"),
                    bulk(b"1"),
                    bulk(b"a"),
                    bulk(b"2"),
                    bulk(&[0xff]),
                    bulk(b"x"),
                ]),
            ]),
            Value::Array(vec![bulk(b"2-0"), Value::Nil]),
        ]);
        let entries = parse_entries(reply).expect("parses");
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].id, "1-0");
        let fields = entries[0].fields.as_ref().expect("fields");
        assert_eq!(fields.len(), 3);
        assert_eq!(fields[1], ("a".to_owned(), b"2".to_vec()));
        assert_eq!(
            entries[1],
            RawEntry {
                id: "2-0".into(),
                fields: None
            }
        );
    }

    #[test]
    fn odd_field_count_does_not_panic() {
        let entries = parse_entries(Value::Array(vec![Value::Array(vec![
            bulk(b"1-0"),
            Value::Array(vec![bulk(b"lonely")]),
        ])]))
        .expect("parses");
        assert_eq!(
            entries[0].fields.as_deref(),
            Some(&[("lonely".to_owned(), Vec::new())][..])
        );
    }

    #[test]
    fn autoclaim_reply_gives_cursor_and_count() {
        let reply = Value::Array(vec![
            bulk(b"5-0"),
            Value::Array(vec![bulk(b"1-0"), bulk(b"2-0")]),
            Value::Array(vec![]),
        ]);
        assert_eq!(parse_autoclaim_reply(reply), Ok(("5-0".to_owned(), 2)));
        assert!(parse_autoclaim_reply(Value::Nil).is_err());
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(parse_entries(Value::Int(3)).is_err());
        assert!(parse_entries(Value::Array(vec![Value::Int(3)])).is_err());
        assert!(parse_entries(Value::Array(vec![Value::Array(vec![])])).is_err());
    }
}
