"""The loopback NDIF stack's own start-up checks (no server needed).

A CI run once failed every remote test because two services were given the same port:
redis took it, moto exited with "Address already in use", and the port still answered
(redis listened there), so the stack looked up and every result fetch got a 500.
"""
from __future__ import annotations

import socket
import sys

import pytest

from .ndif_stack import NDIFStack


def test_a_service_that_lost_its_port_fails_the_start_with_its_log(tmp_path):
    stack = NDIFStack(tmp_path)
    try:
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", stack.ports["s3"]))
            taken.listen()
            stack._spawn("s3", [sys.executable, "-c",
                                "import socket; socket.socket().bind(('127.0.0.1', %d))" % stack.ports["s3"]])
            stack._procs["s3"].wait(30)
            stack._wait_port(stack.ports["s3"], 5, "moto")  # the port answers: it cannot tell
            with pytest.raises(RuntimeError, match=r"s3 exited \(1\).*Address already in use"):
                stack._check_running()
    finally:
        stack.stop()
    assert not stack.alive()
