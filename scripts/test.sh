#!/usr/bin/env bash
# The README's test command: installs what the tests drive when it is missing — Chromium
# (tests/console.rs) and nats-server (tests/cluster.rs) from Debian's packages, as root or with
# sudo — then runs every test with every feature. Extra arguments go to `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."

install() {
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@"
  elif command -v sudo >/dev/null; then
    sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@"
  else
    echo "missing $*: the tests need them (apt-get install $*)" >&2
    exit 1
  fi
}
missing=()
command -v chromium >/dev/null || missing+=(chromium)
command -v nats-server >/dev/null || missing+=(nats-server)
if [ ${#missing[@]} -gt 0 ]; then
  install "${missing[@]}"
fi
exec cargo test --all-features "$@"
