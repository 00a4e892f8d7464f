#!/usr/bin/env bash
# Vagrant provisioning (runs as root in the VM): the test tools this
# distribution has, then the project in /vagrant/.venv with its test extras.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive

# What the tests compare against or use; each is installed where the distribution has it
# (bpftool is linux-tools-* on Ubuntu and missing from Debian 11; bpftrace from Ubuntu 20.04 is old).
WANTED=(python3-venv python3-pip bpftool "linux-tools-$(uname -r)" linux-tools-common llvm tshark tcpdump
        bpftrace iproute2 iputils-ping rsync)

echo "wireshark-common wireshark-common/install-setuid boolean false" | debconf-set-selections
apt-get update -q
available=()
for package in "${WANTED[@]}"; do
    if apt-cache show "$package" >/dev/null 2>&1; then available+=("$package"); else echo "provision: no $package here"; fi
done
apt-get install -y -q --no-install-recommends "${available[@]}" </dev/null

cd /vagrant
# The project needs Python >= 3.10; Ubuntu 20.04 (3.8) and Debian 11 (3.9) get one through uv.
if python3 -c 'import sys; sys.exit(sys.version_info < (3, 10))'; then
    [[ -x .venv/bin/python ]] || python3 -m venv .venv
else
    python3 -m venv /opt/uv && /opt/uv/bin/pip install -q uv
    [[ -x .venv/bin/python ]] || /opt/uv/bin/uv venv --seed --python 3.11 .venv
fi
.venv/bin/python -m pip install -q wheel -e '.[test]'
echo "provision: done; run the tests with: sudo /vagrant/vagrant/run-tests.sh"
