#!/usr/bin/env bash
# .ci/arm64_run.sh ROOTFS_DIR HOST_DIR CMD...
#
# Runs CMD as root inside the arm64 root made by .ci/arm64_rootfs.sh, under qemu-user-static,
# with HOST_DIR bind-mounted at /work (and CMD started there), and exits with CMD's exit code.
# Exit 77 ("skipped") when this machine cannot run aarch64 binaries.
#
# Inside the root:
#   /work             HOST_DIR (created if missing)
#   /proc             a fresh proc
#   /sys              NOT the host's: with it, the Arm CPU detection (pytorch's cpuinfo, used by
#                     onnxruntime and XNNPACK) reads x86 topology under emulation and crashes.
#                     No /sys at all is not right either: cpuinfo then fails, onnxruntime 1.23.2
#                     aborts at import ("Attempt to use DefaultLogger"), and LiteRT silently
#                     runs without its XNNPACK delegate (results differ from a device's in the
#                     last bits). So /sys is a small read-only tmpfs holding only
#                     devices/system/cpu/{possible,present,online} ("0-N", N+1 = host CPUs),
#                     enough for cpuinfo to initialise as on a device
#   /dev              a private tmpfs with null, zero, full, random, urandom, tty and shm;
#                     not a bind of the host's /dev (no host devices, and nothing mounted on it
#                     can propagate back to the host)
#   /tmp              a private tmpfs (nothing left behind in the cached root)
#   /root/.cache/pip  ARM64_PIP_CACHE (default /var/cache/edge-ai-toolkit/pip-arm64): pip's
#                     cache, kept between runs. pip's HTTP cache only keeps responses that carry
#                     caching headers, and a proxy may strip them (this CI's egress proxy does),
#                     so the cache also holds a wheelhouse, /root/.cache/pip/wheelhouse, given to
#                     pip as PIP_FIND_LINKS: a wheel found there is used instead of the same
#                     file from PyPI. Fill it with `pip download -d /root/.cache/pip/wheelhouse
#                     REQS` (files already there are not fetched again), then `pip install REQS`
#                     (or `pip install --no-index REQS` to stay offline) installs from it.
#   /etc/resolv.conf and the CA bundle are copied from the host, so pip reaches PyPI the same
#   way the host does (including behind a TLS-inspecting proxy whose CA the host trusts).
#
# Every mount is made in a private mount namespace, and CMD runs in its own PID namespace
# (unshare): mounts and processes vanish when CMD ends, even if this script is killed (SIGKILL,
# SIGTERM or SIGINT), and two runs at once do not see each other's /work. The EXIT trap
# unmounts as well, and mounts left under ROOTFS_DIR by anything killed earlier are removed
# first, so running it again after a kill just works.
#
# CMD gets a clean environment (HOME, PATH, LANG=C.UTF-8, PIP_CERT, PIP_FIND_LINKS,
# PIP_DISABLE_PIP_VERSION_CHECK) plus, when set on the host: CI, PIP_INDEX_URL,
# PIP_DEFAULT_TIMEOUT, the http(s)_proxy/no_proxy variables and QEMU_CPU (qemu's CPU model;
# default "max", every feature; cortex-a76 is a Pi 5's core, cortex-a72 a Pi 4's).
set -euo pipefail

log() { printf '[arm64_run] %s\n' "$*" >&2; }
die() { printf '[arm64_run] ERROR: %s\n' "$*" >&2; exit 2; }

HERE=$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")

if [[ "${_ARM64_RUN_IN_NS:-}" != 1 ]]; then
    # ----- outside: checks, stale mounts, lock, then re-run this script in a mount namespace --
    [[ $# -ge 3 ]] || { echo "usage: $0 ROOTFS_DIR HOST_DIR CMD..." >&2; exit 2; }
    [[ $EUID -eq 0 ]] || die "needs root (mount, chroot)"
    ROOT=$(realpath -m -- "$1")
    [[ "$ROOT" != / ]] || die "refusing to use / as ROOTFS_DIR"
    [[ -f $ROOT/.edge-ai-toolkit-rootfs ]] ||
        die "$ROOT is not a finished arm64 root: run .ci/arm64_rootfs.sh $ROOT first"
    mkdir -p -- "$2"
    HOST_DIR=$(realpath -- "$2")
    PIP_CACHE=$(realpath -m -- "${ARM64_PIP_CACHE:-/var/cache/edge-ai-toolkit/pip-arm64}")
    mkdir -p -- "$PIP_CACHE"

    # Shared lock: any number of runs at once, but not while arm64_rootfs.sh (exclusive) is
    # rebuilding the root. The lock stays held by CMD's processes (inherited fd 9).
    exec 9>"$ROOT.lock"
    if ! flock -n -s 9; then
        log "waiting for arm64_rootfs.sh to finish with $ROOT"
        flock -s 9
    fi

    # Every run mounts in its own namespace, so a mount under the root that this (host)
    # namespace sees was left by a process killed before it could unmount: remove it.
    awk -v r="$ROOT/" '{ p = $5; gsub(/\\040/, " ", p); if (index(p, r) == 1) print p }' \
        /proc/self/mountinfo | sort -r | while IFS= read -r m; do
        log "unmounting stale $m"
        umount "$m" 2>/dev/null || umount -l "$m"
    done

    # After a reboot (or on a fresh CI VM reusing a cached root) binfmt_misc may be unmounted
    # or the handler gone: let arm64_rootfs.sh set the host side up again (77 if it cannot).
    if ! chroot "$ROOT" /bin/true 2>/dev/null; then
        rc=0
        bash "$HERE/arm64_rootfs.sh" --binfmt-only "$ROOT" >&2 || rc=$?
        [[ $rc -eq 0 ]] || exit "$rc"
        chroot "$ROOT" /bin/true || die "aarch64 binaries still do not run in $ROOT"
    fi

    export _ARM64_RUN_IN_NS=1 _ARM64_ROOT="$ROOT" _ARM64_HOST_DIR="$HOST_DIR" _ARM64_PIP_CACHE="$PIP_CACHE"
    shift 2
    # A new mount namespace (--propagation private: nothing leaks to the host) and a new PID
    # namespace whose first process is the inner half of this script: when it ends, the kernel
    # ends every process CMD left behind; --kill-child ends it when unshare itself is killed
    # (a CI timeout's SIGKILL), so a killed run leaves neither processes nor mounts.
    # unshare ignores SIGTERM/SIGINT while it waits, so this shell waits for it and turns those
    # signals into a SIGKILL of unshare; setpriv --pdeathsig does the same if this shell is
    # itself SIGKILLed. (A background job's stdin would be /dev/null: fd 3 passes the real one.)
    exec 3<&0
    setpriv --pdeathsig KILL -- unshare --mount --propagation private --pid --fork --kill-child \
        -- bash "$HERE/arm64_run.sh" "$@" <&3 3<&- &
    child=$!
    exec 3<&-
    for sig in INT TERM HUP; do
        # shellcheck disable=SC2064  # $child and the signal number are meant to expand now
        trap "log 'SIG$sig: stopping CMD'; kill -KILL $child 2>/dev/null; wait $child 2>/dev/null || true; exit $((128 + $(kill -l "$sig")))" "$sig"
    done
    rc=0
    wait "$child" || rc=$?
    exit "$rc"   # CMD's exit code
fi

# ----- inside the private mount namespace -------------------------------------------------------
ROOT=$_ARM64_ROOT
MOUNTED=()
# shellcheck disable=SC2317  # invoked by the EXIT trap
cleanup() {
    local rc=$? i
    for ((i = ${#MOUNTED[@]} - 1; i >= 0; i--)); do
        umount "${MOUNTED[i]}" 2>/dev/null || umount -l "${MOUNTED[i]}" 2>/dev/null || true
    done
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

mnt() {  # mnt TARGET MOUNT-ARGS...: mount and remember for the trap
    local target=$1
    shift
    mkdir -p -- "$target"
    mount "$@" "$target"
    MOUNTED+=("$target")
}

mnt "$ROOT/proc" -t proc proc
mnt "$ROOT/dev" -t tmpfs -o mode=755,nosuid,size=64m tmpfs
for node in null:1:3 zero:1:5 full:1:7 random:1:8 urandom:1:9 tty:5:0; do
    IFS=: read -r name major minor <<<"$node"
    mknod -m 666 "$ROOT/dev/$name" c "$major" "$minor"
done
mkdir -m 1777 "$ROOT/dev/shm"   # POSIX shared memory / semaphores (multiprocessing)
mkdir -m 755 "$ROOT/dev/pts"
ln -s /proc/self/fd "$ROOT/dev/fd"
ln -s /proc/self/fd/0 "$ROOT/dev/stdin"
ln -s /proc/self/fd/1 "$ROOT/dev/stdout"
ln -s /proc/self/fd/2 "$ROOT/dev/stderr"
mnt "$ROOT/sys" -t tmpfs -o mode=755,nosuid,nodev,noexec,size=1m tmpfs
mkdir -p "$ROOT/sys/devices/system/cpu"
for f in possible present online; do
    echo "0-$(($(nproc) - 1))" >"$ROOT/sys/devices/system/cpu/$f"
done
mount -o remount,ro "$ROOT/sys"
mnt "$ROOT/tmp" -t tmpfs -o mode=1777,nosuid tmpfs
mnt "$ROOT/work" --bind "$_ARM64_HOST_DIR"
mkdir -p "$_ARM64_PIP_CACHE/wheelhouse"
mnt "$ROOT/root/.cache/pip" --bind "$_ARM64_PIP_CACHE"

# Copied, not bind-mounted: small, and they must exist for pip's first connection.
cp -L /etc/resolv.conf "$ROOT/etc/resolv.conf"
HOST_CA=/etc/ssl/certs/ca-certificates.crt
if [[ -s $HOST_CA ]] && ! cmp -s "$HOST_CA" "$ROOT$HOST_CA"; then
    cp -L "$HOST_CA" "$ROOT$HOST_CA"
fi

ENV=(HOME=/root PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8
     TERM="${TERM:-dumb}" PIP_CERT=/etc/ssl/certs/ca-certificates.crt PIP_DISABLE_PIP_VERSION_CHECK=1
     PIP_FIND_LINKS=/root/.cache/pip/wheelhouse)
for v in CI QEMU_CPU PIP_INDEX_URL PIP_DEFAULT_TIMEOUT http_proxy https_proxy no_proxy HTTP_PROXY HTTPS_PROXY NO_PROXY; do
    if [[ -n "${!v:-}" ]]; then ENV+=("$v=${!v}"); fi
done

rc=0
# --default-signal: a background job of the outer shell starts with SIGINT/SIGQUIT ignored;
# give CMD the normal dispositions back (Python's KeyboardInterrupt, etc.).
chroot "$ROOT" /usr/bin/env --default-signal=INT,QUIT -i "${ENV[@]}" sh -c 'cd /work && exec "$@"' arm64_run "$@" || rc=$?
exit "$rc"
