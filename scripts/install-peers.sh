#!/usr/bin/env bash
# Install the real programs the test suite talks to (Debian packages), if any
# is missing. The tests fail, never skip, without them.
set -euo pipefail

PACKAGES=(redis-server bind9 bind9-dnsutils knot-dnsutils unbound minisign chromium nginx dnsmasq-base)
BINARIES=(redis-server named kdig unbound minisign chromium nginx dnsmasq named-checkzone unbound-checkconf)

# --- Zone content: ldns-verify-zone and a Knot DNS secondary (zonemd-verify)
# check the ZONEMD digest of every served zone (tests/test_zones.py); PowerDNS Recursor loads both policy zones from the ISP
# guide, Knot Resolver both zone files (tests/test_zones_peers.py)
PACKAGES+=(ldnsutils knot pdns-recursor knot-resolver)
BINARIES+=(ldns-verify-zone knotd pdns_recursor kresd)

# --- ISP pull tool: Squid reads its proxy ACL outputs (tests/test_client_outputs.py)
PACKAGES+=(squid)
BINARIES+=(squid)

# --- Operations: promtool checks and unit-tests deploy/prometheus/alerts.yml;
# systemd-analyze checks the units in deploy/systemd (tests/test_deploy_*.py)
PACKAGES+=(prometheus systemd)
BINARIES+=(promtool systemd-analyze)

missing=()
for pkg in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done

if ((${#missing[@]})); then
    echo "installing test peers: ${missing[*]}"
    SUDO=""
    if [[ $(id -u) -ne 0 ]]; then
        command -v sudo >/dev/null || { echo "need root (or sudo) to install: ${missing[*]}" >&2; exit 1; }
        SUDO=sudo
    fi
    # Packages must not start their system services (BIND on port 53, nginx
    # on 80...): the tests start their own instances on free ports.
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
        $SUDO chmod +x /usr/sbin/policy-rc.d
        trap '$SUDO rm -f /usr/sbin/policy-rc.d' EXIT
    fi
    $SUDO apt-get update -q
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

for bin in "${BINARIES[@]}"; do
    command -v "$bin" >/dev/null || [[ -x "/usr/sbin/$bin" ]] || { echo "missing after install: $bin" >&2; exit 1; }
done
echo "test peers present: ${BINARIES[*]}"
