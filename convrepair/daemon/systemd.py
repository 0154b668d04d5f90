"""systemd's sd_notify, without libsystemd: READY=1 once the daemon serves, WATCHDOG=1 per loop."""

from __future__ import annotations

import os
import socket


def notify(message: str) -> None:
    """One datagram to $NOTIFY_SOCKET (an '@' means the abstract namespace); nothing outside systemd."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(address)
            sock.sendall(message.encode())
    except OSError:
        pass
