#!/usr/bin/env bash
# Installs the Debian packages the test suite and the demo use: mosquitto (the MQTT tests start
# their own broker on a loopback port), systemd (for `systemd-analyze`, which checks the unit),
# chromium (headless: the status page and the html report are tested in a real browser), zsh
# (the zsh completion script is run in a real zsh), postgresql (the fleet and store tests
# start a throwaway cluster of their own with the server binaries under
# /usr/lib/postgresql/<version>/bin; the service Debian sets up is not used and is left
# stopped) and prometheus (its promtool checks contrib/prometheus/alerts.yml; the daemon is not
# used). Idempotent: does nothing when all are present.
set -euo pipefail
need=()
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || need+=(mosquitto)
command -v mosquitto_passwd >/dev/null 2>&1 || [ -x /usr/bin/mosquitto_passwd ] || need+=(mosquitto)
command -v systemd-analyze >/dev/null 2>&1 || need+=(systemd)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v zsh >/dev/null 2>&1 || need+=(zsh)
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || need+=(postgresql)
command -v promtool >/dev/null 2>&1 || need+=(prometheus)  # promtool checks contrib/ alerts
[ ${#need[@]} -eq 0 ] && exit 0
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
echo "installing Debian packages: ${need[*]}" >&2
$sudo apt-get update -qq
# policy-rc.d 101: do not start the packaged postgresql service (the tests run their own).
if [ ! -e /usr/sbin/policy-rc.d ] && [ -n "$(printf '%s\n' "${need[@]}" | grep -x postgresql)" ]; then
    printf '#!/bin/sh\nexit 101\n' | $sudo tee /usr/sbin/policy-rc.d >/dev/null
    $sudo chmod +x /usr/sbin/policy-rc.d
    trap '$sudo rm -f /usr/sbin/policy-rc.d' EXIT
fi
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
