#!/usr/bin/env bash
# Installs the system packages the test suite needs: OpenSSH's server, because the tests start
# real sshd processes on loopback ports as fake nodes (DESIGN §6), and tmux for the dashboard's
# real-terminal check. Idempotent: does nothing when they are
# already there. Needs root (or passwordless sudo) only when it has to install.
set -euo pipefail

need=()
# The tests start sshd by absolute path and generate keys with ssh-keygen / connect with ssh.
[ -x /usr/sbin/sshd ] || need+=(openssh-server)
command -v ssh-keygen >/dev/null 2>&1 || need+=(openssh-client)
# The dashboard's real-terminal check runs `rbee tui` inside tmux (issue 5).
command -v tmux >/dev/null 2>&1 || need+=(tmux)

if [ "${#need[@]}" -eq 0 ]; then
    exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "install-test-deps: missing ${need[*]} and no apt-get here; install it by hand" >&2
    exit 1
fi

SUDO=()
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
        SUDO=(sudo -n)
    else
        echo "install-test-deps: need root to install ${need[*]}" >&2
        exit 1
    fi
fi

echo "install-test-deps: installing ${need[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
"${SUDO[@]}" apt-get update -qq
# --no-install-recommends: we need only the sshd binary, not ncurses-term/xauth/etc.
"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "${need[@]}" >/dev/null
[ -x /usr/sbin/sshd ]
