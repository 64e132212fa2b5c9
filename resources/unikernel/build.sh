#!/usr/bin/env bash
# Builds ember's test unikernel guests, cached by a hash of their inputs.
#
# Prints exactly two lines on stdout:
#   test-elf=<path>   64-bit Linux boot protocol ELF (no PVH note)
#   test-pvh=<path>   the same ELF with its Xen PVH entry note
# Everything else goes to stderr. The cache is ${EMBER_CACHE:-$HOME/.cache/ember}.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cache_root=${EMBER_CACHE:-$HOME/.cache/ember}

log() { echo "unikernel: $*" >&2; }

# Every input file (sources, manifests, lock file, linker script, this script) and
# the compiler version; target/ holds outputs only.
hash=$(
    cd "$here"
    {
        find . -path ./target -prune -o -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum
        rustc -V
    } | sha256sum | cut -c1-16
)
out="$cache_root/unikernel-$hash"

if [[ -f $out/test-elf && -f $out/test-pvh ]]; then
    log "cached in $out"
else
    if ! command -v objcopy >/dev/null || ! command -v readelf >/dev/null; then
        log "installing binutils"
        apt-get update -qq >&2
        apt-get install -y -qq binutils >&2
    fi

    log "building"
    # The caller's flags (RUSTFLAGS would replace .cargo/config.toml's, a target
    # would change the output path) do not apply to this bare-metal build.
    (cd "$here" && env -u RUSTFLAGS -u CARGO_ENCODED_RUSTFLAGS -u CARGO_BUILD_RUSTFLAGS \
        -u CARGO_BUILD_TARGET nice cargo build --release --locked --target-dir "$here/target") >&2
    built="$here/target/release/test-guest"

    mkdir -p "$cache_root"
    tmp=$(mktemp -d "$cache_root/.unikernel-$hash.XXXXXX")
    trap 'rm -rf "$tmp"' EXIT
    cp "$built" "$tmp/test-pvh"
    objcopy -R .note.Xen "$built" "$tmp/test-elf"

    # objcopy leaves the emptied PT_NOTE program header behind; the linker script
    # makes it the last one, so drop it by decrementing e_phnum (u16 at offset 0x38).
    last=$(readelf -lW "$tmp/test-elf" | awk '/^Program Headers:/ { on = 1; next } on && NF == 0 { exit } on && $1 != "Type" { type = $1 } END { print type }')
    if [[ $last != NOTE ]]; then
        log "expected the emptied PT_NOTE as the last program header, found $last"
        exit 1
    fi
    phnum=$(od -An -tu2 -j56 -N2 "$tmp/test-elf" | tr -d ' ')
    printf "\\x$(printf %02x $((phnum - 1)))\\x00" | dd of="$tmp/test-elf" bs=1 seek=56 conv=notrunc status=none

    if readelf -lW "$tmp/test-elf" | grep -q NOTE || [[ -n $(readelf -nW "$tmp/test-elf") ]]; then
        log "test-elf still has a note"
        exit 1
    fi
    if ! readelf -nW "$tmp/test-pvh" | grep -q '^ *Xen '; then
        log "test-pvh lacks the Xen PVH entry note"
        exit 1
    fi

    chmod 755 "$tmp"
    # Publish atomically; a concurrent build of the same hash may have won the race.
    if ! mv -T "$tmp" "$out" 2>/dev/null; then
        [[ -f $out/test-elf && -f $out/test-pvh ]] || { log "cannot publish $out"; exit 1; }
    fi
    trap - EXIT
    rm -rf "$tmp"
    log "built into $out"
fi

echo "test-elf=$out/test-elf"
echo "test-pvh=$out/test-pvh"
