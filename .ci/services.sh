#!/usr/bin/env bash
# Make sure PostgreSQL (127.0.0.1:5432) and RabbitMQ (127.0.0.1:5672) answer, starting
# them when they are installed but stopped. Exits non-zero, saying why, if one cannot be had.
set -uo pipefail

pg_up() { pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; }
rabbit_up() { rabbitmqctl -q status >/dev/null 2>&1 && (exec 3<>/dev/tcp/127.0.0.1/5672) 2>/dev/null; }

if ! pg_up; then
  echo "PostgreSQL is not answering on 127.0.0.1:5432; starting it"
  if command -v pg_ctlcluster >/dev/null && [ -d /etc/postgresql ]; then
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main start || true
  fi
  for _ in $(seq 1 30); do pg_up && break; sleep 1; done
fi
pg_up || { echo "PostgreSQL is not available on 127.0.0.1:5432 (install postgresql, or set OUTBOX_RELAY_TEST_DATABASE_URL)"; exit 1; }
echo "PostgreSQL is up"

if ! rabbit_up; then
  echo "RabbitMQ is not answering on 127.0.0.1:5672; starting it"
  if command -v rabbitmq-server >/dev/null; then
    rabbitmq-server -detached || true
    timeout 120 rabbitmqctl await_startup || true
  fi
  for _ in $(seq 1 60); do rabbit_up && break; sleep 1; done
fi
rabbit_up || { echo "RabbitMQ is not available on 127.0.0.1:5672 (install rabbitmq-server, or set OUTBOX_RELAY_TEST_AMQP_URL)"; exit 1; }
# A test that forces a memory alarm must never leave it behind.
rabbitmqctl -q set_vm_memory_high_watermark 0.4 >/dev/null 2>&1 || true
echo "RabbitMQ is up ($(rabbitmqctl -q version 2>/dev/null || echo 'version unknown'))"
