#!/usr/bin/env bash
# Prints the path of the schemathesis CLI that tests/api_schema.rs runs: a pinned
# release from PyPI, installed once into a venv in ember's cache
# (${EMBER_CACHE:-$HOME/.cache/ember}/schemathesis-<version>). Installs Debian's
# python3-venv first if this Python cannot make venvs. Progress goes to stderr.
set -euo pipefail

version=4.32.5
cache="${EMBER_CACHE:-$HOME/.cache/ember}"
venv="$cache/schemathesis-$version"
cli="$venv/bin/schemathesis"

if [ ! -e "$venv/.complete" ]; then
    if ! command -v python3 >/dev/null || ! python3 -c 'import ensurepip, venv' 2>/dev/null; then
        echo "schemathesis: installing python3-venv" >&2
        apt-get update -qq >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3 python3-venv >&2
    fi
    # A venv's scripts name its path, so it is made where it stays; the marker
    # says it is complete.
    rm -rf "$venv"
    mkdir -p "$cache"
    echo "schemathesis: installing $version into $venv" >&2
    python3 -m venv "$venv" >&2
    "$venv/bin/pip" install -q --disable-pip-version-check "schemathesis==$version" >&2
    touch "$venv/.complete"
fi
echo "$cli"
