"""Where a process tree listens, read from /proc (no `ss`/`netstat` needed in a slim image).

A LISTEN socket is attributed to the started command's session through the socket inodes in
/proc/PID/fd, so another program on the machine cannot make the check pass or fail.
"""

from __future__ import annotations

import os
import socket
import struct
from pathlib import Path

LISTEN_STATE = "0A"
MAX_PROCS = 100_000  # bound on the /proc walk


def _hex_address(hex_ip: str) -> str:
    """The kernel's little-endian hex address as text (IPv4 or IPv6)."""
    raw = bytes.fromhex(hex_ip)
    if len(raw) == 4:
        return socket.inet_ntop(socket.AF_INET, raw[::-1])
    words = struct.unpack("<4I", raw)  # four host-order 32-bit words
    return socket.inet_ntop(socket.AF_INET6, struct.pack(">4I", *words))


def parse_tcp_table(text: str) -> dict[int, tuple[str, int]]:
    """inode → (address, port) of the LISTEN sockets in /proc/net/tcp{,6} text (header lines skipped)."""
    out: dict[int, tuple[str, int]] = {}
    for line in text.splitlines():
        cols = line.split()
        if len(cols) < 10 or cols[3] != LISTEN_STATE or ":" not in cols[1]:
            continue
        hex_ip, hex_port = cols[1].split(":")
        try:
            out[int(cols[9])] = (_hex_address(hex_ip), int(hex_port, 16))
        except ValueError:
            continue
    return out


def listening_sockets() -> dict[int, tuple[str, int]]:
    """inode → (address, port) of every TCP LISTEN socket in this network namespace."""
    out: dict[int, tuple[str, int]] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            out.update(parse_tcp_table(Path(table).read_text()))
        except OSError:
            continue
    return out


def session_pids(sid: int) -> list[int]:
    """Processes whose session id is `sid` (the command was started in its own session)."""
    pids = []
    for count, name in enumerate(os.listdir("/proc")):
        if count >= MAX_PROCS:
            break
        if not name.isdigit():
            continue
        try:
            stat = Path(f"/proc/{name}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[-1].split()
        if len(fields) > 3 and int(fields[3]) == sid:
            pids.append(int(name))
    return pids


def socket_inodes(pid: int) -> set[int]:
    inodes = set()
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return inodes
    for fd in fds:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[8:-1]))
    return inodes


def session_listens(sid: int) -> list[tuple[str, int]]:
    """Sorted (address, port) pairs the session `sid` listens on."""
    table = listening_sockets()
    found = set()
    for pid in session_pids(sid):
        for inode in socket_inodes(pid):
            if inode in table:
                found.add(table[inode])
    return sorted(found)


def all_interfaces(address: str) -> bool:
    """0.0.0.0 and :: (dual-stack) accept connections on every interface of the container."""
    return address in ("0.0.0.0", "::")


def describe(listens: list[tuple[str, int]]) -> str:
    return ", ".join(f"[{a}]:{p}" if ":" in a else f"{a}:{p}" for a, p in listens) or "nothing"
