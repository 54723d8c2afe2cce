# Sourced by the scripts here: the podman flags this kind of machine needs, and the tags of
# the local base images. runc, because crun refuses the hybrid cgroups; cgroupfs, because
# there is no systemd; ulimits no higher than the machine's own (podman's defaults are
# refused).
PODMAN="podman --runtime runc --cgroup-manager cgroupfs"
ULIMITS="--ulimit nofile=1024:1024 --ulimit nproc=1000:1000"
# pip inside a build reaches the package index through this machine's CA bundle.
BUILD_FLAGS="--network=host $ULIMITS \
 -v /etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/ca-certificates.crt:ro \
 --env PIP_CERT=/etc/ssl/certs/ca-certificates.crt"
PYTHON_BASE=localhost/python-slim:local
POSTGRES_BASE=localhost/debian-postgres:local
RABBITMQ_BASE=localhost/debian-rabbitmq:local
export PODMAN ULIMITS BUILD_FLAGS PYTHON_BASE POSTGRES_BASE RABBITMQ_BASE
