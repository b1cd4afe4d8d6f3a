#!/usr/bin/env bash
# Placement decision time (issue 4): the scheduler function over a synthetic
# datacenter of 10,000 servers and 200,000 containers. No Docker counterpart.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
exec cargo bench -q -p placement --bench placement
