"""Whether a process of this host still runs, which host that is, and a free port for a server to start.

Imports nothing of nowcast's, so every layer may use it.
"""

from __future__ import annotations

import contextlib
import os
import random
import socket


def alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this host; a child that has exited (a zombie) counts as gone."""
    try:
        os.kill(pid, 0)  # no signal sent: only whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    with contextlib.suppress(ChildProcessError):  # not our child: nothing to reap
        finished, _ = os.waitpid(pid, os.WNOHANG)
        if finished:
            return False
    return not _zombie(pid)


def started(pid: int) -> str | None:
    """What tells process ``pid`` apart from a later one with its number: the boot and the start time
    (Linux; None elsewhere or when it is gone). A recorded pid outlives its process (a crash, a reboot)."""
    fields = _stat_fields(pid)
    if len(fields) < 20:
        return None
    try:
        with open("/proc/sys/kernel/random/boot_id") as boot:
            return f"{boot.read().strip()}:{fields[19]}"  # field 22 of the stat line: the start time
    except OSError:
        return None


def _stat_fields(pid: int) -> list[str]:
    """The fields of ``/proc/<pid>/stat`` after ``(name)``: the state first (Linux; empty elsewhere or when
    the process is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return []


def _zombie(pid: int) -> bool:
    """Whether ``pid`` has exited and waits for its parent to reap it (Linux; elsewhere False)."""
    return _stat_fields(pid)[:1] == ["Z"]


def host_id() -> str:
    """The scope in which a pid names one process: this host's name and, on Linux, its PID namespace.

    Containers can share a host name (host networking, a fixed ``--hostname``)
    while each numbers its processes anew, so a pid from another container
    says nothing here; the namespace's inode tells them apart.
    """
    name = socket.gethostname()
    try:
        return f"{name}.pidns{os.stat('/proc/self/ns/pid').st_ino}"
    except OSError:  # not Linux, or no /proc: the host name alone
        return name


FIRST_PORT = 20000  # the registered ports above it are seldom served on a work machine


# not the global generator: seeded (keras.utils.set_random_seed seeds it), it made two processes pick the
# same ports in the same order, and the second server found its port taken
_PORTS = random.SystemRandom()


def free_port() -> int:
    """A port of 127.0.0.1 that is free now, for a server this process is about to start.

    Taken below the kernel's ephemeral range where there is room: a port from
    that range (what binding port 0 gives) may become any outgoing
    connection's source port before the server binds it, which on a busy
    machine happens (CI saw the stack's object store refused its port).
    A server can still lose its port to another one started meanwhile: its
    caller starts it on another (see ``flows.stack``).
    """
    low = _ephemeral_low()
    if low - FIRST_PORT >= 1000:
        for port in _PORTS.sample(range(FIRST_PORT, low), 50):
            if _bindable(port):
                return port
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _ephemeral_low() -> int:
    """The first port of the kernel's ephemeral range (Linux; elsewhere the IANA range's 49152)."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as ports:
            return int(ports.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 49152


def _bindable(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True
