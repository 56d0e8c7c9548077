"""Which hosts are this machine: the one test behind the contract's loopback rules (a server
on loopback may run without a key, plain http downloads only from loopback, the web-page
guard)."""

from __future__ import annotations

import ipaddress


def is_loopback_host(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
