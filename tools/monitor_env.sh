#!/usr/bin/env bash
# Debian's chromium (headless screenshots of pages and reports) and prometheus (a real server
# scraping a live run), for the tests. Installs what is missing (root); prints each one's path.
set -euo pipefail
missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v prometheus >/dev/null 2>&1 || missing+=(prometheus)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "error: ${missing[*]} not installed; run as root or: sudo apt-get install ${missing[*]}" >&2
    exit 1
  fi
  echo "[monitor_env] installing Debian's ${missing[*]}" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# Debian starts the packaged prometheus as a service on install: the tests run their own.
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet prometheus 2>/dev/null; then
  systemctl stop prometheus || true
fi
pkill -x prometheus 2>/dev/null || true
for tool in chromium prometheus; do echo "[monitor_env] $tool: $(command -v $tool)" >&2; done
