# Sourced by setup.sh: where podman's settings for this kind of machine live (runc, cgroupfs,
# ulimits: containers.conf beside this file), and the tags of the local base images.
# tests/deploy/podman.py uses the same.
CONTAINERS_CONF="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/containers.conf"
PYTHON_BASE=localhost/python-slim:local
POSTGRES_BASE=localhost/debian-postgres:local
RABBITMQ_BASE=localhost/debian-rabbitmq:local
export CONTAINERS_CONF PYTHON_BASE POSTGRES_BASE RABBITMQ_BASE
