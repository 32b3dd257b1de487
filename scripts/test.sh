#!/usr/bin/env bash
# The tests, on a fresh machine too: installs and starts PostgreSQL and Redis where
# missing (scripts/backends.sh, Debian packages, sudo when not root), builds the previous
# release's binaries for the rolling-upgrade test once (scripts/previous-release.sh, so
# that building them never competes with timing-sensitive tests), then runs every test of
# the workspace against them. Arguments go to `cargo test`.
#   scripts/test.sh
#   scripts/test.sh -p e2e --test e2e chaos::
set -euo pipefail
cd "$(dirname "$0")/.."

source scripts/backends.sh
scripts/previous-release.sh >/dev/null
cargo test --workspace --locked "$@"
