#!/usr/bin/env bash
# Make this machine able to build and run the project's containers without a Docker engine
# or an image registry: podman (with runc and cgroupfs, see containers.conf), podman-compose,
# and local images built from Debian's packages that stand in for python:3.x-slim, postgres
# and rabbitmq. Idempotent: what is installed and tagged is kept, so a second run takes a
# few seconds. A first run takes a few minutes (packages, three mmdebstrap roots).
#
# Exit status: 0 ready; 3 this machine cannot run containers (the last line says why: no
# root to install with, no apt-get, packages or Debian's mirror unreachable, podman unable
# to start a container); anything else, a failure of the files here.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=deploy/podman/env.sh
. "$here/env.sh"

cannot() {
    echo "cannot run containers here: $*" >&2
    exit 3
}

missing=()
command -v podman >/dev/null || missing+=(podman)
command -v runc >/dev/null || missing+=(runc)
command -v mmdebstrap >/dev/null || missing+=(mmdebstrap)
if [ ${#missing[@]} -gt 0 ]; then
    command -v apt-get >/dev/null || cannot "${missing[*]} missing and no apt-get to install them"
    [ "$(id -u)" = 0 ] || cannot "${missing[*]} missing and installing them needs root"
    echo "installing ${missing[*]} (apt-get)"
    apt-get update -qq >/dev/null || cannot "apt-get update failed"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null \
        || cannot "apt-get could not install ${missing[*]}"
fi
if ! command -v podman-compose >/dev/null; then
    # Debian's package where there is one; PyPI's otherwise.
    echo "installing podman-compose"
    if ! { [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null \
            && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq podman-compose \
            >/dev/null 2>&1; }; then
        python3 -m pip install --quiet --break-system-packages podman-compose \
            || cannot "neither apt-get nor pip could install podman-compose"
    fi
fi

# One mmdebstrap root per image: Debian's packages, no registry. $1 tag, $2 packages.
debian_image() {
    local tag="$1" include="$2" tar
    if podman image exists "$tag"; then return; fi
    echo "building $tag from Debian's packages (mmdebstrap)"
    tar="$(mktemp --suffix=.tar)"
    # shellcheck disable=SC2016  # $1 is mmdebstrap's, expanded by the hook's shell
    if ! mmdebstrap --quiet --variant=apt --include="$include" \
            --customize-hook='chroot "$1" ln -sf /usr/bin/python3 /usr/local/bin/python' \
            --customize-hook='chroot "$1" sh -c "rm -f /usr/lib/python3*/EXTERNALLY-MANAGED"' \
            --customize-hook='chroot "$1" sh -c "apt-get clean; rm -rf /var/lib/apt/lists/*"' \
            bookworm "$tar"; then
        rm -f "$tar"
        cannot "mmdebstrap could not build $tag (Debian's mirror unreachable?)"
    fi
    podman import --quiet "$tar" "$tag" >/dev/null
    rm -f "$tar"
}

debian_image "$PYTHON_BASE" python3,python3-pip,python3-venv,ca-certificates,curl,passwd
if ! err="$(podman run --rm "$PYTHON_BASE" true 2>&1 >/dev/null)"; then
    cannot "podman cannot start a container: $(printf '%s\n' "$err" | grep -v '^time=' | tail -n 1)"
fi
debian_image "$POSTGRES_BASE-root" postgresql,ca-certificates
debian_image "$RABBITMQ_BASE-root" rabbitmq-server,ca-certificates

# The service images: the Debian root plus an entrypoint that behaves like the official
# image's in what the compose file uses (POSTGRES_PASSWORD and init scripts; a default
# user). Always built: a thin layer, cached while the files here stay the same.
podman build --quiet --build-arg ROOT="$POSTGRES_BASE-root" \
    -f "$here/postgres.Containerfile" -t "$POSTGRES_BASE" "$here" >/dev/null
podman build --quiet --build-arg ROOT="$RABBITMQ_BASE-root" \
    -f "$here/rabbitmq.Containerfile" -t "$RABBITMQ_BASE" "$here" >/dev/null
echo "podman ready: $(podman --version)"
