"""The client-side deadline shared by the network stores (dpopkit.storage._deadline)."""

from __future__ import annotations

import os
import socket
import threading
import time

from dpopkit.storage._deadline import Deadline, sever


def test_hd19_deadline_cuts_a_blocked_read_without_closing_the_descriptor() -> None:
    """HD-19: when the deadline passes, a thread blocked reading a silent peer wakes at once
    (end of stream), and the descriptor stays open for its owner to close."""
    ours, silent_peer = socket.socketpair()
    try:
        got: list[bytes] = []
        reader = threading.Thread(target=lambda: got.append(ours.recv(10)), daemon=True)
        start = time.monotonic()
        with Deadline(ours.fileno(), 0.2) as deadline:
            reader.start()
            reader.join(5)
        elapsed = time.monotonic() - start
        assert got == [b""]  # woken by the shutdown, not by data
        assert deadline.fired
        assert 0.15 < elapsed < 2.0
        os.fstat(ours.fileno())  # still ours: never closed behind the owner's back
    finally:
        ours.close()
        silent_peer.close()


def test_hd19_disarmed_deadline_never_touches_the_socket() -> None:
    """HD-19: an operation that finished in time keeps a working connection (the watchdog
    drops the disarmed deadline and the socket still carries data both ways)."""
    ours, peer = socket.socketpair()
    try:
        deadline = Deadline(ours.fileno(), 0.05).arm()
        deadline.disarm()
        time.sleep(0.3)  # well past the deadline
        assert not deadline.fired
        ours.sendall(b"ping")
        assert peer.recv(4) == b"ping"
        peer.sendall(b"pong")
        assert ours.recv(4) == b"pong"
    finally:
        ours.close()
        peer.close()


def test_hd19_many_deadlines_fire_in_order_and_only_when_due() -> None:
    """HD-19: one watchdog serves every deadline: a late one does not delay an early one, and
    the ones disarmed in between stay untouched."""
    pairs = [socket.socketpair() for _ in range(6)]
    try:
        deadlines = [
            Deadline(ours.fileno(), timeout).arm()
            for (ours, _), timeout in zip(pairs, [1.5, 0.1, 30, 0.2, 0.1, 30], strict=True)
        ]
        deadlines[4].disarm()
        time.sleep(0.6)
        assert [d.fired for d in deadlines] == [False, True, False, True, False, False]
        for d in deadlines:
            d.disarm()
    finally:
        for ours, peer in pairs:
            ours.close()
            peer.close()


def test_sever_on_a_descriptor_that_is_no_socket_leaves_no_descriptor_behind() -> None:
    """``sever`` works on a duplicate of the descriptor; when that is no socket (the
    connection is gone and the number was reused), the duplicate is closed too."""
    read, write = os.pipe()
    try:
        before = len(os.listdir("/proc/self/fd"))
        for _ in range(5):
            sever(read)
        assert len(os.listdir("/proc/self/fd")) == before
        os.write(write, b"x")
        assert os.read(read, 1) == b"x"  # the descriptor itself stays open
    finally:
        os.close(read)
        os.close(write)
