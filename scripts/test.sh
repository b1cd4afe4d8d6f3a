#!/usr/bin/env bash
# Everything CI checks, in order, stopping at the first failure: dependencies, format,
# lints, release build, Rust tests (nextest), Python (docker-py) tests.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

step() { printf '\n==> %s\n' "$*"; }

step "dependencies"
scripts/install-deps.sh

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings

step "cargo build --release"
cargo build --release

target=${CARGO_TARGET_DIR:-target}
case "$target" in
/*) ;;
*) target="$root/$target" ;;
esac
# The integration tests (Rust and Python) run the release binary.
export ATOLL_BIN="$target/release/atoll"

step "test images"
ATOLL_TEST_IMAGES=$(cargo run -q --release -p testkit --bin make-test-images)
export ATOLL_TEST_IMAGES
echo "$ATOLL_TEST_IMAGES"

profile=default
if [ "${CI:-}" = "true" ]; then
	profile=ci
fi
step "cargo nextest run (profile $profile)"
cargo nextest run --workspace --release --profile "$profile"

step "python tests"
if [ -z "$(find tests/python -name 'test_*.py' -o -name '*_test.py' 2>/dev/null | head -n 1)" ]; then
	echo "no python tests yet (tests/python has no test files)"
else
	# Exit code 5 (no tests collected) is a failure here: there are test files.
	python3 -m pytest tests/python -q
fi
