#!/usr/bin/env bash
# .ci/arm64_rootfs.sh ROOTFS_DIR
#
# Makes sure ROOTFS_DIR holds a Debian bookworm arm64 root filesystem (the base of Raspberry Pi
# OS; Jetson's Ubuntu is glibc-compatible) in which the device-install check can create a venv
# and `pip install` manylinux aarch64 wheels, run on this x86-64 machine with qemu-user-static.
#
#   - installs the host tools it needs (debootstrap, qemu-user-static, binfmt-support) when
#     missing, mounts binfmt_misc and registers qemu's aarch64 handler when needed;
#   - exits 77 ("skipped") with one line saying why when this machine cannot run aarch64
#     binaries (no binfmt_misc, no permission to mount or register it, not root);
#   - builds with `debootstrap --foreign` (host side: download and unpack) then the second stage
#     inside the chroot under emulation (dpkg runs the arm64 maintainer scripts);
#   - caches: a finished root carries a stamp with VERSION below and is reused as it is; a root
#     without the stamp (killed build) or with another version is removed and rebuilt.
#
#   .ci/arm64_rootfs.sh --binfmt-only ROOTFS_DIR
#     only the host side (tools, binfmt_misc, handler); .ci/arm64_run.sh calls it when the
#     cached root exists but aarch64 binaries do not run (e.g. after a reboot).
#
# Environment: ARM64_MIRROR (default: the Debian mirror of this machine's apt sources).
# Suggested cache location for callers: /var/cache/edge-ai-toolkit/bookworm-arm64.
set -euo pipefail

SUITE=bookworm
# What is installed besides minbase, and why:
#   python3 python3-venv python3-pip  the interpreter (3.11, as on Raspberry Pi OS bookworm),
#                                     `python3 -m venv` with ensurepip, pip
#   ca-certificates                   pip verifies PyPI's TLS certificate against this bundle
#   netbase                           /etc/protocols and /etc/services for socket lookups
#   libstdc++6 libgomp1 zlib1g        what manylinux wheels may link against without vendoring
#                                     (the C++ runtime above all: onnxruntime, opencv, litert);
#                                     no libgl/libglib: opencv-python-headless needs neither
PACKAGES=python3,python3-venv,python3-pip,ca-certificates,netbase,libstdc++6,libgomp1,zlib1g
# Bump the leading number when the way the root is made changes: cached roots are then rebuilt.
VERSION="1 $SUITE arm64 minbase +$PACKAGES"
STAMP_NAME=.edge-ai-toolkit-rootfs

log() { printf '[arm64_rootfs] %s\n' "$*"; }
skip() { printf '[arm64_rootfs] SKIPPED: this machine cannot run aarch64 binaries: %s\n' "$*"; exit 77; }
die() { printf '[arm64_rootfs] ERROR: %s\n' "$*" >&2; exit 1; }

BINFMT_ONLY=0
if [[ "${1:-}" == --binfmt-only ]]; then BINFMT_ONLY=1; shift; fi
[[ $# -eq 1 && -n "$1" ]] || { echo "usage: $0 [--binfmt-only] ROOTFS_DIR" >&2; exit 2; }
ROOT=$(realpath -m -- "$1")
[[ "$ROOT" != / ]] || die "refusing to use / as ROOTFS_DIR"

# --- host tools --------------------------------------------------------------------------------
ensure_host_tools() {
    # chroot, mount, unshare and flock come with Debian's essential packages (coreutils,
    # mount, util-linux); debootstrap and qemu are ordinary packages, installed when missing.
    local need=()
    [[ -x /usr/bin/qemu-aarch64-static ]] || need+=(qemu-user-static)
    if [[ $BINFMT_ONLY == 0 ]]; then
        command -v debootstrap >/dev/null || need+=(debootstrap)
        command -v update-binfmts >/dev/null || need+=(binfmt-support)
    fi
    if ((${#need[@]})); then
        command -v apt-get >/dev/null || skip "${need[*]} missing and no apt-get to install them"
        log "installing host packages: ${need[*]}"
        local t=$SECONDS
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
        log "host packages installed ($((SECONDS - t)) s)"
    fi
}

# --- binfmt_misc: let the kernel hand aarch64 ELF files to qemu-aarch64-static ------------------
BINFMT=/proc/sys/fs/binfmt_misc
HANDLER=$BINFMT/qemu-aarch64

# A 132-byte static aarch64 ELF that only calls exit(42): proves that the kernel runs aarch64
# binaries through qemu before anything is downloaded. (ELF header, one PT_LOAD program header,
# then `mov x0, #42; mov x8, #93 (exit); svc #0`.)
write_probe() {
    printf '%b' \
'\x7fELF\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\xb7\x00\x01\x00\x00\x00'\
'\x78\x00\x40\x00\x00\x00\x00\x00\x40\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00'\
'\x00\x00\x00\x00\x40\x00\x38\x00\x01\x00\x00\x00\x00\x00\x00\x00'\
'\x01\x00\x00\x00\x05\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00'\
'\x00\x00\x40\x00\x00\x00\x00\x00\x00\x00\x40\x00\x00\x00\x00\x00'\
'\x84\x00\x00\x00\x00\x00\x00\x00\x84\x00\x00\x00\x00\x00\x00\x00\x00\x00\x01\x00\x00\x00\x00\x00'\
'\x40\x05\x80\xd2\xa8\x0b\x80\xd2\x01\x00\x00\xd4' >"$1"
    chmod 755 "$1"
}

handler_field() { sed -n "s/^$1 //p" "$HANDLER" 2>/dev/null; }

ensure_binfmt() {
    [[ $EUID -eq 0 ]] || skip "not root (mounting binfmt_misc, chroot and debootstrap need root)"
    if [[ ! -e $BINFMT/register ]]; then
        grep -qw binfmt_misc /proc/filesystems || modprobe binfmt_misc 2>/dev/null || true
        grep -qw binfmt_misc /proc/filesystems || skip "the kernel has no binfmt_misc support"
        log "mounting binfmt_misc at $BINFMT"
        local err
        err=$(mount -t binfmt_misc binfmt_misc "$BINFMT" 2>&1) ||
            skip "cannot mount binfmt_misc at $BINFMT (${err:-no reason given})"
    fi
    if [[ -e $HANDLER ]]; then
        if [[ $(head -n1 "$HANDLER") != enabled ]]; then
            log "enabling the registered qemu-aarch64 binfmt handler"
            { echo 1 >"$HANDLER"; } 2>/dev/null || skip "cannot enable $HANDLER"
        fi
    else
        # No systemd-binfmt or update-binfmts to rely on here (no systemd in containers/CI
        # VMs, binfmt-support's postinst skipped the import when binfmt_misc was not mounted):
        # write the register string ourselves, taken from qemu-user-static's own binfmt.d file.
        # Its flags are OCPF or OPF; F (fix-binary) matters: the kernel opens qemu now, in the
        # host's root, so it also works inside a chroot that has no qemu binary of its own.
        local line=""
        if [[ -r /usr/lib/binfmt.d/qemu-aarch64.conf ]]; then
            line=$(grep -m1 '^:qemu-aarch64:' /usr/lib/binfmt.d/qemu-aarch64.conf || true)
        fi
        if [[ -z $line ]]; then  # same magic and mask as qemu's scripts/qemu-binfmt-conf.sh
            line=':qemu-aarch64:M::\x7f\x45\x4c\x46\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\xb7\x00:\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff:/usr/bin/qemu-aarch64-static:F'
        fi
        [[ ${line##*:} == *F* ]] || line="${line}F"
        log "registering the qemu-aarch64 binfmt handler (flags ${line##*:})"
        { printf '%s' "$line" >"$BINFMT/register"; } 2>/dev/null ||
            skip "cannot register the qemu-aarch64 handler in $BINFMT/register"
    fi
    # Without the F flag the kernel looks the interpreter up inside the chroot at each exec:
    # put a copy of it there (only when a root exists, i.e. from the second stage on).
    if [[ $(handler_field flags:) != *F* && -d $ROOT/usr ]]; then
        local interp
        interp=$(handler_field interpreter)
        if [[ -n $interp && ! -e $ROOT$interp ]]; then
            log "handler has no F flag: copying $interp into the root"
            mkdir -p "$ROOT$(dirname "$interp")"
            cp -L "$interp" "$ROOT$interp"
        fi
    fi
    local dir probe rc=0
    dir=$(dirname "$ROOT")
    mkdir -p "$dir"
    # The probe lives next to the root, not in /tmp: /tmp may be mounted noexec.
    probe=$(mktemp "$dir/.aarch64-probe.XXXXXX")
    write_probe "$probe"
    "$probe" 2>/dev/null || rc=$?
    rm -f "$probe"
    [[ $rc -eq 42 ]] ||
        skip "an aarch64 test binary did not run through binfmt_misc (exit code $rc; handler: $(tr '\n' ' ' <"$HANDLER" 2>/dev/null || echo none))"
}

# --- mirror: the one this machine's apt uses, else Debian's default --------------------------
host_mirror() {
    # deb822 *.sources stanzas and one-line sources.list entries whose suite is exactly $SUITE.
    {
        cat /etc/apt/sources.list.d/*.sources 2>/dev/null | awk -v s="$SUITE" '
            BEGIN { RS = ""; FS = "\n" }
            {   types = uris = suites = ""
                for (i = 1; i <= NF; i++) {
                    if ($i ~ /^Types:/)  types = $i
                    if ($i ~ /^URIs:/)   uris = $i
                    if ($i ~ /^Suites:/) suites = $i
                }
                if (types ~ /[ \t]deb([ \t]|$)/ && (" " suites " ") ~ ("[ \t]" s "[ \t]")) {
                    split(uris, u, /[ \t]+/); print u[2]
                }
            }'
        cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null |
            sed -E 's/\[[^]]*\]//' | awk -v s="$SUITE" '$1 == "deb" && $3 == s { print $2 }'
    } | grep -m1 -E '^https?://' || true
}

# --- mounts left behind by a killed run (see arm64_run.sh) -------------------------------------
unmount_under() {
    # Mount points strictly below $1 in this namespace, deepest first (mountinfo field 5,
    # spaces escaped as \040). arm64_run.sh mounts in a private namespace, so these can only
    # be leftovers of a process that was killed; the lock taken below makes sure of it.
    local m
    awk -v r="$1/" '{ p = $5; gsub(/\\040/, " ", p); if (index(p, r) == 1) print p }' \
        /proc/self/mountinfo | sort -r | while IFS= read -r m; do
        log "unmounting stale $m"
        umount "$m" 2>/dev/null || umount -l "$m"
    done
}

# --- main --------------------------------------------------------------------------------------
ensure_host_tools
ensure_binfmt
[[ $BINFMT_ONLY == 1 ]] && { log "aarch64 binaries run through qemu-aarch64-static"; exit 0; }

mkdir -p "$(dirname "$ROOT")"
# One builder at a time; arm64_run.sh takes the same lock (shared) while it uses the root.
exec 9>"$ROOT.lock"
if ! flock -n 9; then
    log "waiting for another build or run using $ROOT to finish"
    flock 9
fi

if [[ -f $ROOT/$STAMP_NAME && "$(cat "$ROOT/$STAMP_NAME")" == "$VERSION" ]]; then
    unmount_under "$ROOT"
    chroot "$ROOT" /bin/true || die "the cached root at $ROOT does not run; remove it to rebuild"
    log "reusing the cached root at $ROOT ($VERSION)"
    exit 0
fi

if [[ -e $ROOT ]]; then
    if [[ -f $ROOT/$STAMP_NAME ]]; then
        log "cached root at $ROOT is version '$(cat "$ROOT/$STAMP_NAME")', want '$VERSION': rebuilding"
    else
        log "removing the unfinished root at $ROOT (no stamp: an earlier build stopped half-way)"
    fi
    unmount_under "$ROOT"
    # --one-file-system: never follow into anything still mounted below it (a bind of /work).
    rm -rf --one-file-system "$ROOT"
fi

MIRROR=${ARM64_MIRROR:-$(host_mirror)}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
START=$SECONDS

log "debootstrap stage 1 (download and unpack on the host): $SUITE arm64 minbase from $MIRROR"
t=$SECONDS
debootstrap --foreign --arch=arm64 --variant=minbase --include="$PACKAGES" \
    "$SUITE" "$ROOT" "$MIRROR" >"$ROOT.debootstrap.log" 2>&1 ||
    { tail -n 20 "$ROOT.debootstrap.log" >&2; die "debootstrap stage 1 failed (log: $ROOT.debootstrap.log)"; }
log "stage 1 done ($((SECONDS - t)) s)"

ensure_binfmt   # copies qemu into the root when the handler lacks the F flag
chroot "$ROOT" /bin/true 2>/dev/null || skip "the arm64 root's /bin/true does not run under qemu"

log "debootstrap stage 2 (dpkg configures the packages under qemu emulation; takes minutes)"
t=$SECONDS
# No fsync after every file dpkg unpacks: a root that is cut off half-way is thrown away anyway
# (no stamp), so the syncs only cost time. Removed again once the root is finished.
UNSAFE_IO=$ROOT/etc/dpkg/dpkg.cfg.d/zz-edge-ai-toolkit-unsafe-io
mkdir -p "${UNSAFE_IO%/*}"
echo force-unsafe-io >"$UNSAFE_IO"
# A line a minute, so that a CI log does not look hung during the minutes of emulated dpkg.
# (sleep's output goes to /dev/null: once the loop is killed, a leftover sleep must not hold a
# caller's pipe open.)
(
    while sleep 60 >/dev/null 2>&1; do
        log "  stage 2: $((SECONDS - t)) s, $(tail -n 1 "$ROOT.debootstrap.log" | cut -c 1-70)"
    done
) &
HEARTBEAT=$!
trap 'kill "$HEARTBEAT" 2>/dev/null || true' EXIT
# In a private mount namespace: the /proc and /sys that the second stage mounts inside the root
# disappear with it, even if this build is killed.
unshare --mount --propagation private -- \
    chroot "$ROOT" /debootstrap/debootstrap --second-stage >>"$ROOT.debootstrap.log" 2>&1 ||
    { tail -n 20 "$ROOT.debootstrap.log" >&2; die "debootstrap stage 2 failed (log: $ROOT.debootstrap.log)"; }
kill "$HEARTBEAT" 2>/dev/null || true
wait "$HEARTBEAT" 2>/dev/null || true
log "stage 2 done ($((SECONDS - t)) s)"

log "checking the root: python3, venv (ensurepip), pip, ssl"
t=$SECONDS
chroot "$ROOT" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 sh -c '
    set -e
    python3 -c "import ensurepip, venv, ssl, sys; print(\"python\", sys.version.split()[0], sys.platform, ssl.OPENSSL_VERSION)"
    python3 -m pip --version
    test -s /etc/ssl/certs/ca-certificates.crt
    apt-get clean
    uname -m'
log "root checked ($((SECONDS - t)) s)"

rm -f "$ROOT.debootstrap.log" "$UNSAFE_IO"
printf '%s\n' "$VERSION" >"$ROOT/$STAMP_NAME"   # last: only a finished root has the stamp
log "arm64 root ready at $ROOT: $(du -sh --one-file-system "$ROOT" | cut -f1), built in $((SECONDS - START)) s"
