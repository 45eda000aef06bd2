#!/usr/bin/env bash
# Installs everything idsync and its tests need on a fresh Debian machine (idempotent).
set -euo pipefail
cd "$(dirname "$0")/.."
SUDO=""
[ "$(id -u)" = 0 ] || SUDO="sudo"
if [ ! -x /usr/sbin/slapd ] || ! command -v ldapsearch >/dev/null; then
  echo "setup: installing slapd and ldap-utils (Debian packages)"
  $SUDO apt-get update -qq
  # Preseed so slapd's postinst does not ask questions; the tests start their own slapd.
  echo "slapd slapd/no_configuration boolean true" | $SUDO debconf-set-selections
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq slapd ldap-utils >/dev/null
fi
# A C compiler builds the optional compiled engine (make native) and its test (tests/engine/test_native.py).
if ! command -v gcc >/dev/null; then
  echo "setup: installing gcc (Debian package)"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq gcc >/dev/null
fi
PY=${PYTHON:-python3}
echo "setup: installing idsync and its development dependencies (pip)"
$PY -m pip install -q --disable-pip-version-check -e '.[dev]'
# The SQL connector's tests use the machine's PostgreSQL (127.0.0.1:5432, trust auth) and MariaDB
# (127.0.0.1:3306, root without password); start them when they are installed but stopped.
if command -v pg_ctlcluster >/dev/null && ! pg_isready -h 127.0.0.1 -p 5432 -q 2>/dev/null; then
  echo "setup: starting PostgreSQL"
  $SUDO pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main start || true
fi
if [ -x /usr/sbin/mariadbd ] && ! mariadb-admin -h 127.0.0.1 -u root ping >/dev/null 2>&1; then
  echo "setup: starting MariaDB"
  $SUDO start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd || true
  for _ in $(seq 1 30); do mariadb-admin -h 127.0.0.1 -u root ping >/dev/null 2>&1 && break; sleep 1; done
fi
