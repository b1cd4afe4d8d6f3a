#!/usr/bin/env bash
# The first command on a fresh machine: installs what is missing, builds atoll and runs
# `atoll up` in the foreground (Ctrl-C stops it; containers keep running).
# Arguments go to `atoll up`, e.g. --data-dir DIR --docker-socket PATH.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

scripts/install-deps.sh
cargo build --release -q -p atoll

target=${CARGO_TARGET_DIR:-target}
case "$target" in
/*) ;;
*) target="$root/$target" ;;
esac

# Where the Docker socket will be, to tell the user.
sock=/run/atoll/docker.sock
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
	case "${args[$i]}" in
	--docker-socket=*) sock=${args[$i]#--docker-socket=} ;;
	--docker-socket) sock=${args[$((i + 1))]:-$sock} ;;
	esac
done
mkdir -p "$(dirname "$sock")"

echo "atoll: starting. Point docker at it with:"
echo "  export DOCKER_HOST=unix://$sock"
exec "$target/release/atoll" up "$@"
