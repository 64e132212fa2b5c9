#!/usr/bin/env bash
# Builds, or finds in the cache, every guest artifact that ember's tests and users need,
# and prints them as `name=absolute-path` lines on stdout (nothing else goes to stdout):
#   test-elf=, test-pvh=           from resources/unikernel/build.sh
#   kernel=, kernel-acpi=, bzimage=, rootfs=, initrd=   from resources/linux/build.sh
# Progress goes to stderr. Works from any working directory.
# Cache: ${EMBER_CACHE:-$HOME/.cache/ember} (passed through to both builders).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

# Run one builder; pass its `name=/path` lines to stdout and anything else it printed
# on stdout to stderr, so that our stdout stays machine-readable.
run_builder() {
    local script="$1" out line
    out="$(bash "$script")" || { echo "guests.sh: $script failed" >&2; return 1; }
    while IFS= read -r line; do
        if [[ "$line" =~ ^[A-Za-z0-9_-]+=/ ]]; then
            printf '%s\n' "$line"
        elif [ -n "$line" ]; then
            printf '%s: %s\n' "${script#"$here"/}" "$line" >&2
        fi
    done <<<"$out"
}

run_builder "$here/unikernel/build.sh"
run_builder "$here/linux/build.sh"
