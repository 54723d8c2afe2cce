#!/usr/bin/env bash
# Make this machine able to build and run the project's containers without a Docker engine
# or an image registry: podman (with runc and cgroupfs), podman-compose, and local base
# images built from Debian's packages that stand in for python:3.x-slim, postgres and
# rabbitmq. Idempotent: tools already installed and images already tagged are kept, so a
# second run takes about a second.
#
#   deploy/podman/setup.sh          # install what is missing, build the base images
#   deploy/podman/setup.sh --check  # exit 0 if this machine can do it, else print why (exit 3)
#
# The podman flags this kind of machine needs are in deploy/podman/env.sh.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=deploy/podman/env.sh
. "$here/env.sh"

why_not() {
    # Environmental reasons that make the deploy tier impossible here (exit 3), as opposed
    # to a failure of the project's own files (any other non-zero exit).
    if [ "$(id -u)" != 0 ] && ! command -v podman >/dev/null; then
        echo "podman is not installed and this user cannot install it (not root)"; return
    fi
    if ! command -v podman >/dev/null && ! command -v apt-get >/dev/null; then
        echo "podman is not installed and there is no apt-get to install it"; return
    fi
    if [ ! -e /sys/fs/cgroup ]; then
        echo "no cgroup filesystem at /sys/fs/cgroup"; return
    fi
}

if [ "${1:-}" = "--check" ]; then
    reason="$(why_not)"
    if [ -n "$reason" ]; then echo "$reason"; exit 3; fi
    exit 0
fi
reason="$(why_not)"
if [ -n "$reason" ]; then echo "$reason" >&2; exit 3; fi

missing=()
command -v podman >/dev/null || missing+=(podman)
command -v runc >/dev/null || missing+=(runc)
command -v mmdebstrap >/dev/null || missing+=(mmdebstrap)
command -v podman-compose >/dev/null || missing+=(podman-compose)
if [ ${#missing[@]} -gt 0 ]; then
    echo "installing ${missing[*]} (apt-get)"
    if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
            "${missing[@]}" >/dev/null; }; then
        echo "apt-get could not install ${missing[*]}" >&2
        exit 3
    fi
fi

have_image() { $PODMAN image exists "$1"; }

# One mmdebstrap root per image: Debian's packages, no registry. $1 tag, $2 extra packages.
debian_image() {
    local tag="$1" include="$2" tar
    if have_image "$tag"; then return; fi
    echo "building $tag from Debian's packages (mmdebstrap, about 30 s)"
    tar="$(mktemp --suffix=.tar)"
    mmdebstrap --quiet --variant=apt --include="$include" \
        --customize-hook='chroot "$1" ln -sf /usr/bin/python3 /usr/local/bin/python' \
        --customize-hook='chroot "$1" sh -c "rm -f /usr/lib/python3*/EXTERNALLY-MANAGED"' \
        --customize-hook='chroot "$1" sh -c "apt-get clean; rm -rf /var/lib/apt/lists/*"' \
        bookworm "$tar"
    $PODMAN import --quiet "$tar" "$tag" >/dev/null
    rm -f "$tar"
}

debian_image "$PYTHON_BASE" python3,python3-pip,python3-venv,ca-certificates,curl
debian_image "$POSTGRES_BASE-root" postgresql,ca-certificates
debian_image "$RABBITMQ_BASE-root" rabbitmq-server,ca-certificates

# The service images: the Debian root plus an entrypoint that behaves like the official
# image's in what the compose file uses (POSTGRES_PASSWORD and init scripts; a default user).
# Always built: a thin layer, cached while its files stay the same.
$PODMAN build --quiet --build-arg ROOT="$POSTGRES_BASE-root" \
    -f "$here/postgres.Containerfile" -t "$POSTGRES_BASE" "$here" >/dev/null
$PODMAN build --quiet --build-arg ROOT="$RABBITMQ_BASE-root" \
    -f "$here/rabbitmq.Containerfile" -t "$RABBITMQ_BASE" "$here" >/dev/null
