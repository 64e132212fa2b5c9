#!/usr/bin/env bash
# Builds ember's unikernel guests, cached by a hash of their inputs.
#
# Prints on stdout, one line each:
#   test-elf=<path>                  test guest, 64-bit Linux boot protocol ELF (no PVH note)
#   test-pvh=<path>                  the same ELF with its Xen PVH entry note
#   unikernel-<name>=<path>          each function in functions/<name>, PVH ELF
#   unikernel-<name>-linux64=<path>  the same ELF without the PVH note
# Everything else goes to stderr. The cache is ${EMBER_CACHE:-$HOME/.cache/ember}.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cache_root=${EMBER_CACHE:-$HOME/.cache/ember}
functions=$(cd "$here/functions" && ls -d -- */ | tr -d / | LC_ALL=C sort)

log() { echo "unikernel: $*" >&2; }

# Every artifact of a complete build in directory $1.
complete() {
    [[ -f $1/test-elf && -f $1/test-pvh ]] || return 1
    for name in $functions; do
        [[ -f $1/unikernel-$name && -f $1/unikernel-$name-linux64 ]] || return 1
    done
}

# Copies ELF $1 to $2 (PVH) and, without the PVH note, to $3 (Linux boot protocol).
split_protocols() {
    cp "$1" "$2"
    objcopy -R .note.Xen "$1" "$3"

    # objcopy leaves the emptied PT_NOTE program header behind; the linker script
    # makes it the last one, so drop it by decrementing e_phnum (u16 at offset 0x38).
    local last phnum
    last=$(readelf -lW "$3" | awk '/^Program Headers:/ { on = 1; next } on && NF == 0 { exit } on && $1 != "Type" { type = $1 } END { print type }')
    if [[ $last != NOTE ]]; then
        log "expected the emptied PT_NOTE as the last program header of $3, found $last"
        exit 1
    fi
    phnum=$(od -An -tu2 -j56 -N2 "$3" | tr -d ' ')
    printf "\\x$(printf %02x $((phnum - 1)))\\x00" | dd of="$3" bs=1 seek=56 conv=notrunc status=none

    if readelf -lW "$3" | grep -q NOTE || [[ -n $(readelf -nW "$3") ]]; then
        log "$3 still has a note"
        exit 1
    fi
    if ! readelf -nW "$2" | grep -q '^ *Xen '; then
        log "$2 lacks the Xen PVH entry note"
        exit 1
    fi
}

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

if complete "$out"; then
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
    built="$here/target/release"

    mkdir -p "$cache_root"
    tmp=$(mktemp -d "$cache_root/.unikernel-$hash.XXXXXX")
    trap 'rm -rf "$tmp"' EXIT
    split_protocols "$built/test-guest" "$tmp/test-pvh" "$tmp/test-elf"
    for name in $functions; do
        split_protocols "$built/$name" "$tmp/unikernel-$name" "$tmp/unikernel-$name-linux64"
    done

    chmod 755 "$tmp"
    # Publish atomically; a concurrent build of the same hash may have won the race.
    if ! mv -T "$tmp" "$out" 2>/dev/null; then
        complete "$out" || { log "cannot publish $out"; exit 1; }
    fi
    trap - EXIT
    rm -rf "$tmp"
    log "built into $out"
fi

echo "test-elf=$out/test-elf"
echo "test-pvh=$out/test-pvh"
for name in $functions; do
    echo "unikernel-$name=$out/unikernel-$name"
    echo "unikernel-$name-linux64=$out/unikernel-$name-linux64"
done
