#!/bin/sh
# The default user from the environment (the official image's variables), reachable from
# other containers, then the server in the foreground (SIGTERM stops it).
set -eu
{
    echo "loopback_users = none"
    echo "default_user = ${RABBITMQ_DEFAULT_USER:-guest}"
    echo "default_pass = ${RABBITMQ_DEFAULT_PASS:-guest}"
} > /etc/rabbitmq/rabbitmq.conf
# The server script itself, not /usr/sbin/rabbitmq-server: that wrapper neither execs nor
# forwards SIGTERM, so a stop would wait out its grace and kill the broker.
exec /usr/lib/rabbitmq/bin/rabbitmq-server
