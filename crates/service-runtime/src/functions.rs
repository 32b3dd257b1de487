//! The runtime's server-side steps as one Redis Functions library (`functions.lua`, Redis
//! 7.0+), called with `FCALL`: taking and passing the reading turn, the bounded read, the
//! stream trim, removing idle consumers, a stream's ends.
//!
//! Functions rather than `EVAL`: a service's Redis user needs only `+fcall`, which runs
//! the library's functions and nothing else, so no service credential can run Lua of its
//! own (`EVAL "while true do end" 0` would freeze Redis for everyone, and a script with no
//! keys passes every key selector of an ACL). Loading the library needs `FUNCTION LOAD`,
//! which runs the library's code: that right belongs to the operator, or to the
//! `redis-functions` loader with its own user (`deploy/redis/users.acl`). A service whose
//! user may load it (no ACL, as in tests and `scripts/run-local.sh`) loads it itself the
//! first time a call finds it missing, also after Redis restarted empty; one that may not
//! says which command loads it.
//!
//! Redis checks every command a function runs against the caller's user, so a function
//! never widens what its caller may do.

use redis::{ErrorKind, FromRedisValue, RedisError, RedisResult, ToRedisArgs};

use crate::RedisConnection;

/// The library's source; its name (`#!lua name=streams_v1`) is [`LIBRARY_NAME`].
const LIBRARY: &str = include_str!("functions.lua");

/// The library's name. A changed function gets a new one (`streams_v2`), loaded beside
/// the old, so that two releases run side by side during a rolling upgrade.
pub const LIBRARY_NAME: &str = "streams_v1";

/// One function of the library.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Function(&'static str);

/// Takes the reading turn (`consumer/turn.rs`).
pub(crate) const TAKE_TURN: Function = Function("streams_v1_take_turn");
/// Passes the reading turn on (`consumer/turn.rs`).
pub(crate) const PASS_TURN: Function = Function("streams_v1_pass_turn");
/// `XREADGROUP` bounded in bytes (`consumer/read.rs`).
pub(crate) const BOUNDED_READ: Function = Function("streams_v1_bounded_read");
/// Trims a stream to what its groups still need (`retention.rs`).
pub(crate) const TRIM_STREAM: Function = Function("streams_v1_trim_stream");
/// Removes a group's idle consumers with nothing pending (`retention.rs`).
pub(crate) const DELETE_IDLE_CONSUMERS: Function = Function("streams_v1_delete_idle_consumers");
/// The ids of a stream's first and last entries ([`stream_ends`]).
const STREAM_ENDS: Function = Function("streams_v1_stream_ends");
/// An observer's bounded `XRANGE` ([`observe`]).
const BOUNDED_RANGE: Function = Function("streams_v1_bounded_range");

/// A call being built: `FCALL <function> <number of keys> <keys> <args>`.
pub(crate) struct Call {
    function: Function,
    keys: Vec<String>,
    args: Vec<Vec<u8>>,
}

impl Function {
    /// A call of this function on `keys`.
    pub(crate) fn on(self, keys: &[&str]) -> Call {
        Call {
            function: self,
            keys: keys.iter().map(|k| (*k).to_owned()).collect(),
            args: vec![],
        }
    }
}

impl Call {
    /// Adds an argument.
    pub(crate) fn arg(mut self, arg: impl ToRedisArgs) -> Self {
        self.args.extend(arg.to_redis_args());
        self
    }

    /// Runs the call; if Redis does not have the library (a new or emptied Redis), loads
    /// it ([`load`]) and runs the call once more.
    pub(crate) async fn invoke<T: FromRedisValue>(
        &self,
        redis: &mut RedisConnection,
    ) -> RedisResult<T> {
        match self.command().query_async(redis).await {
            Err(e) if is_not_loaded(&e) => {
                load(redis).await.map_err(|e| not_loadable(&e))?;
                self.command().query_async(redis).await
            }
            done => done,
        }
    }

    fn command(&self) -> redis::Cmd {
        let mut cmd = redis::cmd("FCALL");
        cmd.arg(self.function.0)
            .arg(self.keys.len())
            .arg(&self.keys)
            .arg(&self.args);
        cmd
    }
}

/// Loads the library into Redis, replacing a library of the same name (the same
/// functions: a changed one has a new name); on a Redis Cluster, into every master.
/// Needs a user allowed `FUNCTION LOAD` (the operator, or `redis-functions`).
pub async fn load(redis: &mut RedisConnection) -> RedisResult<()> {
    redis::cmd("FUNCTION")
        .arg("LOAD")
        .arg("REPLACE")
        .arg(LIBRARY)
        .query_async::<redis::Value>(redis)
        .await
        .map(|_| ())
}

/// Whether Redis has the library (on a cluster: the master this call reaches).
pub async fn is_loaded(redis: &mut RedisConnection) -> RedisResult<bool> {
    let libraries: Vec<redis::Value> = redis::cmd("FUNCTION")
        .arg("LIST")
        .arg("LIBRARYNAME")
        .arg(LIBRARY_NAME)
        .query_async(redis)
        .await?;
    Ok(!libraries.is_empty())
}

/// The ids of `stream`'s oldest and newest entries, without their fields (an entry may be
/// huge, SPEC §4.9); `None` if it is empty or gone.
pub async fn stream_ends(
    redis: &mut RedisConnection,
    stream: &str,
) -> RedisResult<Option<(String, String)>> {
    let ends: Vec<String> = STREAM_ENDS.on(&[stream]).invoke(redis).await?;
    Ok(match <[String; 2]>::try_from(ends) {
        Ok([first, last]) => Some((first, last)),
        Err(_) => None,
    })
}

/// Where [`observe`] reads a stream from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ObserveFrom {
    /// The entries after this id (`-` for the first), oldest first.
    After(String),
    /// The newest entries, newest first.
    Newest,
    /// The entries before this id, newest first.
    Before(String),
}

/// One entry as an observer reads it: its fields, or only its size when it is over the
/// limit [`observe`] was given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Observed {
    /// An entry within the limit.
    Entry {
        /// Its id.
        id: String,
        /// Its fields, values as lossy UTF-8.
        fields: Vec<(String, String)>,
    },
    /// An entry over the limit, not read.
    Oversized {
        /// Its id.
        id: String,
        /// The bytes of its fields.
        bytes: u64,
    },
}

impl Observed {
    /// The entry's id.
    pub fn id(&self) -> &str {
        match self {
            Self::Entry { id, .. } | Self::Oversized { id, .. } => id,
        }
    }
}

/// Reads at most `count` entries of `stream` without a group (nothing is acknowledged,
/// nothing held back, and trimming ignores the reader), each over `max_entry_bytes`
/// given as its size only: what comes back is bounded whatever the stream holds.
/// Fields are read as UTF-8, invalid bytes replaced.
pub async fn observe(
    redis: &mut RedisConnection,
    stream: &str,
    from: &ObserveFrom,
    count: usize,
    max_entry_bytes: usize,
) -> RedisResult<Vec<Observed>> {
    let (direction, start) = match from {
        ObserveFrom::After(id) if id == "-" => ("forward", "-".to_owned()),
        ObserveFrom::After(id) => ("forward", format!("({id}")),
        ObserveFrom::Newest => ("backward", "+".to_owned()),
        ObserveFrom::Before(id) => ("backward", format!("({id}")),
    };
    let raw: Vec<(String, Vec<Vec<u8>>)> = BOUNDED_RANGE
        .on(&[stream])
        .arg(direction)
        .arg(start)
        .arg(count)
        .arg(max_entry_bytes)
        .invoke(redis)
        .await?;
    Ok(raw
        .into_iter()
        .map(|(id, flat)| {
            let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
            match flat.as_slice() {
                [name, size] if name.as_slice() == b"__oversized__" => Observed::Oversized {
                    id,
                    bytes: text(size).parse().unwrap_or(0),
                },
                _ => Observed::Entry {
                    id,
                    fields: flat
                        .chunks_exact(2)
                        .map(|pair| (text(&pair[0]), text(&pair[1])))
                        .collect(),
                },
            }
        })
        .collect())
}

fn is_not_loaded(e: &RedisError) -> bool {
    e.to_string().contains("Function not found")
}

/// What a service says when the library is missing and its user may not load it.
fn not_loadable(e: &RedisError) -> RedisError {
    RedisError::from((
        ErrorKind::Client,
        "the Redis Functions library is not loaded",
        format!(
            "{LIBRARY_NAME} is missing and this Redis user may not load it ({e}): \
             run `redis-functions` with a user allowed FUNCTION LOAD (README, Security)"
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_library_registers_every_function_the_runtime_calls_under_its_name() {
        assert!(LIBRARY.starts_with(&format!("#!lua name={LIBRARY_NAME}\n")));
        for Function(name) in [
            TAKE_TURN,
            PASS_TURN,
            BOUNDED_READ,
            TRIM_STREAM,
            DELETE_IDLE_CONSUMERS,
            STREAM_ENDS,
            BOUNDED_RANGE,
        ] {
            assert!(name.starts_with(&format!("{LIBRARY_NAME}_")), "{name}");
            assert!(
                LIBRARY.contains(&format!("'{name}'")),
                "{name} is registered"
            );
        }
    }
}
