#!/usr/bin/env bash
# Installs the Debian packages the test suite and the demo use: mosquitto (the MQTT tests start
# their own broker on a loopback port), systemd (for `systemd-analyze`, which checks the unit),
# chromium (headless: the status page and the html report are tested in a real browser), zsh
# (the zsh completion script is run in a real zsh) and prometheus (its promtool checks
# contrib/prometheus/alerts.yml). Idempotent: does nothing when all are there.
set -euo pipefail
need=()
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || need+=(mosquitto)
command -v mosquitto_passwd >/dev/null 2>&1 || [ -x /usr/bin/mosquitto_passwd ] || need+=(mosquitto)
command -v systemd-analyze >/dev/null 2>&1 || need+=(systemd)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v zsh >/dev/null 2>&1 || need+=(zsh)
command -v promtool >/dev/null 2>&1 || need+=(prometheus)  # promtool checks contrib/ alerts
[ ${#need[@]} -eq 0 ] && exit 0
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
echo "installing Debian packages: ${need[*]}" >&2
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
