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
PY=${PYTHON:-python3}
echo "setup: installing idsync and its development dependencies (pip)"
$PY -m pip install -q --disable-pip-version-check -e '.[dev]'
