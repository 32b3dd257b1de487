#!/usr/bin/env bash
# Builds order-service and payment-service as of the previous release (the commit in
# tests/previous-release) once, and caches them in target/previous-release/<commit>/;
# prints that folder. Used by the mixed-version rolling upgrade test.
#
# The release is checked out as a git worktree and built into this checkout's own target
# folder, so every dependency compiled for the current build is reused (the two share
# Cargo.lock): only the workspace's crates compile, a minute or two on 2 cores. Its
# binaries are built under other names (`previous-*`), so they never replace the current
# build's target/debug/order-service and payment-service.
set -euo pipefail
cd "$(dirname "$0")/.."

commit=$(git rev-parse "$(grep -v '^#' tests/previous-release | head -n 1)^{commit}")
out=target/previous-release/$commit
if [ -x "$out/order-service" ] && [ -x "$out/payment-service" ]; then
  echo "$PWD/$out"
  exit 0
fi

tree=target/previous-release/src
git worktree remove --force "$tree" >/dev/null 2>&1 || rm -rf "$tree"
git worktree prune
git worktree add --detach --force "$tree" "$commit" >/dev/null 2>&1
trap 'git worktree remove --force "$tree" >/dev/null 2>&1 || true' EXIT
for service in order-service payment-service; do
  # The [[bin]] section's name only (the package keeps its own).
  sed -i '/^\[\[bin\]\]/{n;s/^name = "\(.*\)"/name = "previous-\1"/}' "$tree/crates/$service/Cargo.toml"
done
CARGO_TARGET_DIR="$PWD/target" cargo build --quiet --locked --manifest-path "$tree/Cargo.toml" \
  -p order-service -p payment-service >&2
mkdir -p "$out"
for service in order-service payment-service; do
  cp "target/debug/previous-$service" "$out/$service"
done
echo "$PWD/$out"
