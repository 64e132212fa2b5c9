#!/usr/bin/env bash
# Builds, or finds in the cache, ember's Linux guest artifacts:
#   kernel=  vmlinux (ELF, with the PVH entry note) from Debian's linux-source-6.1,
#            configured as `tinyconfig` + ember.config
#   kernel-acpi= the same vmlinux without MP table parsing (CONFIG_X86_MPPARSE off, as
#            in Firecracker's recommended configs): it finds CPUs only through ACPI
#   bzimage= the same kernel as a bzImage
#   rootfs=  ext4 image (busybox-static + ./init as /sbin/init), made without mounting
#   initrd=  gzip'd cpio of the same tree, ./init as /init
# stdout: exactly one `name=absolute-path` line per artifact; everything else goes to stderr.
# Cache: ${EMBER_CACHE:-$HOME/.cache/ember}/linux-<hash>/, where <hash> covers this script,
# ember.config, init and the installed versions of linux-source-6.1 and busybox-static.
# Needs root only to apt-get install missing packages.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
jobs="${EMBER_BUILD_JOBS:-2}"
rootfs_mib=32

log() { printf 'linux/build.sh: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# --- packages ---------------------------------------------------------------------------
ensure_pkgs() {
    local missing=() p status
    for p in "$@"; do
        status="$(dpkg-query -W -f='${db:Status-Abbrev}' "$p" 2>/dev/null || true)"
        [[ "$status" == ii* ]] || missing+=("$p")
    done
    [ "${#missing[@]}" -eq 0 ] && return 0
    [ "$(id -u)" -eq 0 ] || die "missing packages (run as root or install them): ${missing[*]}"
    log "installing ${missing[*]}"
    local apt=(env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 -y -q)
    if ! "${apt[@]}" install --no-install-recommends "${missing[@]}" >&2; then
        log "apt-get install failed; running apt-get update and retrying"
        "${apt[@]}" update >&2
        "${apt[@]}" install --no-install-recommends "${missing[@]}" >&2
    fi
}

# What the cache key depends on must be installed before hashing.
ensure_pkgs linux-source-6.1 busybox-static

inputs=("$here/build.sh" "$here/ember.config" "$here/init")
hash="$(
    {
        for f in "${inputs[@]}"; do printf '%s\n' "${f##*/}"; cat "$f"; done
        dpkg-query -W -f='${Package} ${Version}\n' linux-source-6.1 busybox-static
    } | sha256sum | cut -c1-16
)"

cache="${EMBER_CACHE:-$HOME/.cache/ember}"
mkdir -p "$cache"
cache="$(cd "$cache" && pwd)"
final="$cache/linux-$hash"
names=(kernel kernel-acpi bzimage rootfs initrd)
files=(vmlinux vmlinux-acpi bzImage rootfs.ext4 initrd.cpio.gz)

emit() {
    local i
    for i in "${!names[@]}"; do printf '%s=%s\n' "${names[$i]}" "$final/${files[$i]}"; done
}
cached() {
    local f
    [ -d "$final" ] || return 1
    for f in "${files[@]}"; do [ -s "$final/$f" ] || return 1; done
}

if cached; then
    log "cached: $final"
    emit
    exit 0
fi

# One build at a time per cache (also: this machine has 2 cores). Whoever waited may
# find the artifacts built by the other one.
exec 9>"$cache/linux.lock"
if ! flock -n 9; then
    log "another Linux guest build holds $cache/linux.lock; waiting"
    flock 9
fi
if cached; then
    log "cached (built meanwhile): $final"
    emit
    exit 0
fi

ensure_pkgs build-essential bc flex bison libelf-dev libssl-dev lz4 gzip \
    busybox-static e2fsprogs

# Under the lock nobody else is building: leftovers of interrupted builds can go.
rm -rf "$cache"/linux-*.tmp.*

started=$SECONDS
tmp="$(mktemp -d "$cache/linux-$hash.tmp.XXXXXX")"
buildlog="$tmp/build.log"
out="$tmp/out"
mkdir -p "$out"
log "building into $tmp (log: $buildlog)"

# Run a noisy command with its output in the build log; on failure show the log's tail.
run() {
    printf '\n$ %s\n' "$*" >>"$buildlog"
    if ! "$@" >>"$buildlog" 2>&1; then
        log "FAILED: $*"
        log "last lines of $buildlog:"
        tail -n 60 "$buildlog" >&2
        log "build directory kept for inspection: $tmp"
        exit 1
    fi
}

# --- kernel source ----------------------------------------------------------------------
log "unpacking /usr/src/linux-source-6.1.tar.xz"
run tar -xf /usr/src/linux-source-6.1.tar.xz -C "$tmp"
src="$tmp/linux-source-6.1"
[ -f "$src/Makefile" ] || die "unexpected layout of linux-source-6.1.tar.xz (no $src/Makefile)"

# --- root filesystem tree (busybox-static) ----------------------------------------------
busybox=/bin/busybox
bb_headers="$(readelf -l "$busybox")"
[[ "$bb_headers" != *"program interpreter"* ]] ||
    die "$busybox is dynamically linked; the busybox-static package is needed"
tree="$tmp/rootfs"
log "assembling rootfs tree"
mkdir -p "$tree"/{bin,sbin,usr/bin,usr/sbin,dev,proc,sys,tmp,run,root,etc,mnt}
chmod 1777 "$tree/tmp"
chmod 0700 "$tree/root"
install -m 0755 "$busybox" "$tree/bin/busybox"
# `busybox --install -s`, done on the host: one absolute symlink per applet.
while read -r applet; do
    applet="${applet#/}"
    case "$applet" in bin/busybox | linuxrc | sbin/init | init) continue ;; esac
    mkdir -p "$tree/$(dirname "$applet")"
    [ -e "$tree/$applet" ] || ln -s /bin/busybox "$tree/$applet"
done < <("$busybox" --list-full)
[ -L "$tree/bin/sh" ] || die "busybox has no sh applet"
install -m 0755 "$here/init" "$tree/init"
ln -s /init "$tree/sbin/init"
printf 'root:x:0:0:root:/root:/bin/sh\n' >"$tree/etc/passwd"
printf 'root:x:0:\n' >"$tree/etc/group"
printf 'ember\n' >"$tree/etc/hostname"

# ext4 image filled from the tree by mke2fs itself: no loop device, no mount.
log "making rootfs.ext4 (${rootfs_mib} MiB)"
run mkfs.ext4 -F -q -L ember-root -d "$tree" "$out/rootfs.ext4" "${rootfs_mib}M"
run e2fsck -fn "$out/rootfs.ext4"

# initrd: newc cpio written by the kernel's own gen_init_cpio from a file list, so that
# /dev/console can be a device node without mknod (and without being root).
log "making initrd.cpio.gz"
run cc -O2 -o "$tmp/gen_init_cpio" "$src/usr/gen_init_cpio.c"
cpiolist="$tmp/initrd.list"
(
    cd "$tree"
    find . -mindepth 1 | LC_ALL=C sort | while read -r p; do
        p="${p#.}"
        mode="$(stat -c %a "$tree$p")"
        if [ -L "$tree$p" ]; then
            printf 'slink %s %s 0777 0 0\n' "$p" "$(readlink "$tree$p")"
        elif [ -d "$tree$p" ]; then
            printf 'dir %s %s 0 0\n' "$p" "$mode"
        elif [ -f "$tree$p" ]; then
            printf 'file %s %s %s 0 0\n' "$p" "$tree$p" "$mode"
        fi
    done
    printf 'nod /dev/console 0600 0 0 c 5 1\n'
) >"$cpiolist"
"$tmp/gen_init_cpio" -t 0 "$cpiolist" >"$tmp/initrd.cpio" 2>>"$buildlog" ||
    die "gen_init_cpio failed (see $buildlog)"
gzip -9 -n -c "$tmp/initrd.cpio" >"$out/initrd.cpio.gz"

# --- kernel -----------------------------------------------------------------------------
kmake=(nice -n 19 make -C "$src" ARCH=x86_64 KBUILD_BUILD_USER=ember KBUILD_BUILD_HOST=ember)
log "configuring: tinyconfig + ember.config"
run "${kmake[@]}" tinyconfig
run "$src/scripts/kconfig/merge_config.sh" -m -O "$src" "$src/.config" "$here/ember.config"
run "${kmake[@]}" olddefconfig

# Every option that ember.config asks for must be in the final .config as asked (the last
# line for a symbol wins, as in merge_config.sh; "=n" and "is not set" also accept absence).
declare -A want=()
order=()
while IFS= read -r line; do
    case "$line" in
    CONFIG_*=*) sym="${line%%=*}"; val="${line#*=}" ;;
    "# CONFIG_"*" is not set") sym="${line#\# }"; sym="${sym%% *}"; val=n ;;
    *) continue ;;
    esac
    [ -n "${want[$sym]+set}" ] || order+=("$sym")
    want[$sym]="$val"
done <"$here/ember.config"
dropped=0
for sym in "${order[@]}"; do
    val="${want[$sym]}"
    got="$(grep -E "^(# )?$sym[= ]" "$src/.config" || true)"
    if [ "$val" = n ]; then
        [ -z "$got" ] || [ "$got" = "# $sym is not set" ] && continue
    else
        [ "$got" = "$sym=$val" ] && continue
    fi
    log "config: asked for $sym=$val, got '${got:-(absent: unmet dependencies)}'"
    dropped=1
done
[ "$dropped" -eq 0 ] || die "ember.config options were dropped by Kconfig; fix their dependencies"
log "config ok: every ember.config option is set"
cp "$src/.config" "$out/config"

log "compiling vmlinux + bzImage (make -j$jobs, niced; this takes a while)"
run "${kmake[@]}" -j"$jobs" vmlinux bzImage
run strip --strip-debug -o "$out/vmlinux" "$src/vmlinux"
cp "$src/arch/x86/boot/bzImage" "$out/bzImage"
cp "$src/System.map" "$out/System.map"

# The variant without MP table parsing, built incrementally in the same tree: Kbuild
# recompiles only what depends on the option.
log "compiling the variant without MP table parsing"
run "$src/scripts/config" --file "$src/.config" --disable X86_MPPARSE
run "${kmake[@]}" olddefconfig
grep -q '^# CONFIG_X86_MPPARSE is not set' "$src/.config" || die "CONFIG_X86_MPPARSE stayed on"
grep -q '^CONFIG_ACPI=y' "$src/.config" || die "the variant lost CONFIG_ACPI"
run "${kmake[@]}" -j"$jobs" vmlinux
run strip --strip-debug -o "$out/vmlinux-acpi" "$src/vmlinux"

# Sanity checks on what we produced.
elf_header="$(readelf -h "$out/vmlinux")"
[[ "$elf_header" == *"Advanced Micro Devices X86-64"* ]] || die "vmlinux is not an x86-64 ELF"
elf_notes="$(readelf -n "$out/vmlinux")"
[[ "$elf_notes" == *Xen* ]] || die "vmlinux has no Xen (PVH entry) ELF note: CONFIG_PVH missing?"

cp "$buildlog" "$out/build.log"
printf '%s\n' "$hash" >"$out/hash"
# Publish atomically: the artifacts directory appears complete or not at all.
mv -T "$out" "$final"
rm -rf "$tmp"
log "built in $((SECONDS - started)) s: $final"
emit
