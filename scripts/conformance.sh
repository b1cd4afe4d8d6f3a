#!/usr/bin/env bash
# Every conformance scenario against Debian's dockerd and atoll side by side
# (CI runs the fast ones through tests/python/test_conformance.py). Needs root
# and a release build; extra arguments go to the harness (--only AREA, -v).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export ATOLL_BIN=${ATOLL_BIN:-$root/target/release/atoll}
exec python3 "$root/tests/conformance/harness.py" "$@"
