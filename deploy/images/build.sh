#!/usr/bin/env bash
# Builds the Dockerfile's api and worker targets with podman on a machine that cannot reach a
# container registry: the python:3.11-slim stand-in is made from Debian packages (mmdebstrap,
# Debian bookworm's python3 is 3.11) and handed to the Dockerfile as PYTHON_IMAGE.
#
#   deploy/images/build.sh               # base (once), then both targets
#   deploy/images/build.sh base          # only the base image
#   deploy/images/build.sh api worker    # only these targets (the base is built when missing)
#
# Idempotent: the base is kept in podman's storage and built only when missing (REBUILD_BASE=1
# forces it); the targets reuse podman's layer cache, so a second run takes seconds.
#
# Settings (environment):
#   HPO_BASE_IMAGE      the base image's name        (localhost/hpo-python:3.11-slim-bookworm)
#   HPO_API_IMAGE       the api target's name         (localhost/hpo-service-api:latest)
#   HPO_WORKER_IMAGE    the worker target's name      (localhost/hpo-service-worker:latest)
#   HPO_DEBIAN_MIRROR   where Debian packages come from (http://deb.debian.org/debian)
#   HPO_DEBIAN_SECURITY the security archive           (http://deb.debian.org/debian-security)
#   HPO_BUILD_MOUNTS    host paths bind-mounted read-only into every RUN of the build, where
#                       they exist (PATH, or HOST_PATH:CONTAINER_PATH): how this host's pip
#                       finds its packages (config, local wheels such as the CPU torch, local
#                       indexes, the CA bundle of a TLS-inspecting proxy). Not part of the
#                       images. Default: the paths this project's dev/CI machines use; the
#                       build runs pip as root, so root's user pip config goes to /root.
#   HPO_BUILD_NETWORK   podman build --network       (host)
#   PODMAN              the podman command            (podman)
#   CONTAINERS_CONF     podman's configuration        (deploy/images/containers.conf: runc,
#                       ulimits and cgroups that work in sandboxed VMs too)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
export CONTAINERS_CONF="${CONTAINERS_CONF:-$ROOT/deploy/images/containers.conf}"
PODMAN="${PODMAN:-podman}"
BASE_IMAGE="${HPO_BASE_IMAGE:-localhost/hpo-python:3.11-slim-bookworm}"
API_IMAGE="${HPO_API_IMAGE:-localhost/hpo-service-api:latest}"
WORKER_IMAGE="${HPO_WORKER_IMAGE:-localhost/hpo-service-worker:latest}"
MIRROR="${HPO_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
SECURITY="${HPO_DEBIAN_SECURITY:-http://deb.debian.org/debian-security}"
NETWORK="${HPO_BUILD_NETWORK:-host}"
MOUNTS="${HPO_BUILD_MOUNTS-/etc/pip.conf /etc/xdg/pip $HOME/.config/pip:/root/.config/pip /opt/wheels /opt/pypi /opt/pypi-more /etc/ssl/certs/ca-certificates.crt}"

say() { printf '[build.sh] %s\n' "$*" >&2; }
run() { say "+ $*"; "$@"; }

build_base() {
    if [[ "${REBUILD_BASE:-0}" != 1 ]] && "$PODMAN" image exists "$BASE_IMAGE"; then
        say "base $BASE_IMAGE exists (REBUILD_BASE=1 rebuilds it)"
        return
    fi
    command -v mmdebstrap >/dev/null || { say "mmdebstrap is missing: apt-get install -y mmdebstrap"; exit 3; }
    tmp="$(mktemp -d /var/tmp/hpo-base.XXXXXX)"
    trap 'rm -rf "$tmp"' EXIT
    # What python:3.11-slim offers the Dockerfile: `python` and `pip` first on PATH, installing
    # into /usr/local. A venv at /usr/local gives exactly that and keeps pip away from Debian's
    # own python3 packages (no --break-system-packages). passwd: groupadd/useradd.
    # Docs, man pages, locales and apt's lists are dropped, as the slim image does.
    run mmdebstrap --variant=minbase --mode=root --format=tar \
        --include=python3,python3-venv,ca-certificates,netbase,tzdata,passwd \
        --dpkgopt='path-exclude=/usr/share/man/*' \
        --dpkgopt='path-exclude=/usr/share/doc/*' \
        --dpkgopt='path-include=/usr/share/doc/*/copyright' \
        --dpkgopt='path-exclude=/usr/share/locale/*' \
        --customize-hook='chroot "$1" python3 -m venv /usr/local' \
        --customize-hook='chroot "$1" ln -sf pip3 /usr/local/bin/pip' \
        --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*.bin' \
        bookworm "$tmp/rootfs.tar" \
        "deb $MIRROR bookworm main" \
        "deb $MIRROR bookworm-updates main" \
        "deb $SECURITY bookworm-security main"
    run "$PODMAN" import \
        --change 'ENV PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV LANG=C.UTF-8' \
        --change 'CMD ["python3"]' \
        --message "python:3.11-slim stand-in from Debian bookworm packages (deploy/images/build.sh)" \
        "$tmp/rootfs.tar" "$BASE_IMAGE"
    rm -rf "$tmp"
}

# A clear error before a long build when this host cannot start containers at all.
check_runtime() {
    local out
    if ! out="$("$PODMAN" run --rm --network host "$BASE_IMAGE" true 2>&1)"; then
        say "podman cannot run a container here (CONTAINERS_CONF=$CONTAINERS_CONF): $out"
        exit 4
    fi
}

build_target() {
    local target="$1" image="$2" volumes=() path
    for path in $MOUNTS; do
        local src="${path%%:*}" dst="${path#*:}"
        [[ -e "$src" ]] && volumes+=(--volume "$src:$dst:ro")
    done
    # docker format: OCI images drop HEALTHCHECK, which compose and `podman healthcheck` use.
    run "$PODMAN" build --format docker --pull=never --layers --network "$NETWORK" \
        --build-arg "PYTHON_IMAGE=$BASE_IMAGE" \
        "${volumes[@]}" \
        --target "$target" --tag "$image" \
        --file "$ROOT/Dockerfile" "$ROOT"
}

targets=("$@")
[[ ${#targets[@]} -gt 0 ]] || targets=(base api worker)
build_base
check_runtime
for target in "${targets[@]}"; do
    case "$target" in
        base) ;;
        api) build_target api "$API_IMAGE" ;;
        worker) build_target worker "$WORKER_IMAGE" ;;
        *) say "unknown target $target (base, api, worker)"; exit 2 ;;
    esac
done
say "done: $("$PODMAN" images --format '{{.Repository}}:{{.Tag}} {{.Size}}' \
    | grep -F -e "${BASE_IMAGE#localhost/}" -e "${API_IMAGE#localhost/}" -e "${WORKER_IMAGE#localhost/}" | tr '\n' ';')"
