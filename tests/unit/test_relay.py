"""The relay of the network lab (tests/system/relay.py), in this process: no namespace, no process.

The lab that runs it inside network namespaces is tests/system/test_netns_lab.py.
"""

from __future__ import annotations

import socket
import time


def test_in_process_relay_gives_its_source_and_delays():
    """The in-process :class:`relay.Relay` forwards from its ``source`` address, over a WAN when asked."""
    import socketserver
    import threading

    from tests.system.relay import Wan, relays

    class Greet(socketserver.BaseRequestHandler):  # SERVER's protocol: greet with the peer's address, then echo
        def handle(self) -> None:
            self.request.sendall(f"{self.client_address[0]}\n".encode())
            while data := self.request.recv(65536):
                self.request.sendall(data)

    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Greet)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    target = f"127.0.0.1:{server.server_address[1]}"
    try:
        with relays() as relay:
            plain = relay.add(target, source="127.0.0.7")
            slow = relay.add(target, wan=Wan(delay=0.05))
            for via, source in ((plain, "127.0.0.7"), (slow, "127.0.0.1")):
                host, port = via.rsplit(":", 1)
                with socket.create_connection((host, int(port)), timeout=10) as s:
                    f = s.makefile("rb")
                    assert f.readline().decode().strip() == source
                    start = time.monotonic()
                    s.sendall(b"ping")
                    assert f.read(4) == b"ping"
                    rtt = time.monotonic() - start
                if via == slow:
                    assert rtt >= 2 * 0.05, rtt
                else:
                    assert rtt < 2 * 0.05, rtt
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
    assert not thread.is_alive()
