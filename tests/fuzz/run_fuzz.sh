#!/usr/bin/env bash
# Fuzz atoll's Docker API over TLS with schemathesis, driven by Docker Engine's own
# OpenAPI (Swagger 2.0) description of API v1.50 (tests/fuzz/swagger.yaml, see README.md).
# CI runs it for 60 s (tests/python/test_fuzz.py). Needs schemathesis 4.32.5
# (scripts/install-deps.sh installs it).
#
#   ATOLL_FUZZ_URL       https://127.0.0.1:PORT   (atoll's --tls-listen; no path)
#   ATOLL_FUZZ_CERT_DIR  directory with ca.pem, cert.pem, key.pem (as DOCKER_CERT_PATH)
#   ATOLL_FUZZ_SECONDS   time budget of the whole run (default 300); with it, schemathesis
#                        keeps cycling the phases until the budget is spent. 0 = one pass.
#   ATOLL_FUZZ_EXAMPLES  generated test cases per operation and pass (default 25)
#   ATOLL_FUZZ_TIMEOUT   seconds per request (default 30: a restart waits 10 s for a stop,
#                        as Docker's); a timeout is reported as an error
#   ATOLL_FUZZ_WORKERS   concurrent workers (default 1; with 2, schemathesis 4.32.5 once hit
#                        an internal hypothesis FlakyFailure while building POST /commit examples)
#   ATOLL_FUZZ_PHASES    default examples,coverage,fuzzing (stateful left out: Swagger 2.0
#                        has no links; add ",stateful" to try schemathesis' inferred links)
# Extra arguments go to `schemathesis run` (e.g. --seed 1, --report junit).
#
# It creates, kills and prunes things: use a throwaway atoll and a tenant's certificate,
# never an operator certificate on an instance you care about.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
url=${ATOLL_FUZZ_URL:?set ATOLL_FUZZ_URL=https://127.0.0.1:PORT}
certs=${ATOLL_FUZZ_CERT_DIR:?set ATOLL_FUZZ_CERT_DIR to a directory with ca.pem cert.pem key.pem}
seconds=${ATOLL_FUZZ_SECONDS:-300}
examples=${ATOLL_FUZZ_EXAMPLES:-25}
timeout=${ATOLL_FUZZ_TIMEOUT:-30}
phases=${ATOLL_FUZZ_PHASES:-examples,coverage,fuzzing}
workers=${ATOLL_FUZZ_WORKERS:-1}
st=${SCHEMATHESIS:-schemathesis}

for f in ca.pem cert.pem key.pem; do
    [[ -r $certs/$f ]] || { echo "missing $certs/$f" >&2; exit 2; }
done

time_args=()
[[ $seconds != 0 ]] && time_args=(--max-time "$seconds")

args=(
    # --origin appends the spec's basePath (/v1.50) to scheme://host:port.
    # (--url instead would REPLACE basePath: it would need .../v1.50 itself.)
    --origin "${url%/}"
    --tls-verify "$certs/ca.pem"
    --request-cert "$certs/cert.pem" --request-cert-key "$certs/key.pem"
    --request-timeout "$timeout"
    # Only one check: atoll must never answer 5xx to anything a client can send.
    # (Conformance checks would flag every documented divergence; see docs/divergence.md.)
    --checks not_a_server_error
    --phases "$phases"
    --workers "$workers"
    --max-examples "$examples"
    "${time_args[@]}"

    # Not implemented by atoll (swarm mode, plugins, BuildKit sessions): tags in swagger.yaml.
    # Swarm: /swarm*  Node: /nodes*  Service: /services*  Task: /tasks*
    # Secret: /secrets*  Config: /configs*  Plugin: /plugins*  Session: POST /session
    --exclude-tag Swarm --exclude-tag Node --exclude-tag Service --exclude-tag Task
    --exclude-tag Secret --exclude-tag Config --exclude-tag Plugin --exclude-tag Session

    # Hijack the connection or block/stream until the client hangs up (any method).
    # GET /events, /containers/{id}/logs and /containers/{id}/stats stay in: hooks.py
    # forces until=1, follow=false, stream=false on them.
    --exclude-path '/containers/{id}/attach'     # POST, hijacked raw stream
    --exclude-path '/containers/{id}/attach/ws'  # GET, websocket
    --exclude-path '/exec/{id}/start'            # POST, hijacked unless Detach
    --exclude-path '/containers/{id}/wait'       # POST, blocks until the container exits
    # Reach out to registries (no internet here; slow failures, not atoll's bugs):
    --exclude-path '/images/create'              # POST, docker pull / import
    --exclude-path '/images/{name}/push'
    --exclude-path '/images/search'
    --exclude-path '/auth'
    --exclude-path '/distribution/{name}/json'
    # /grpc (BuildKit) is not in swagger.yaml, so there is nothing to exclude for it.

    --no-color
)

# hooks.py: a serializer for application/x-tar bodies, and the finite-stream parameters.
export SCHEMATHESIS_HOOKS="$here/hooks.py"
exec "$st" run "$here/swagger.yaml" "${args[@]}" "$@"
