"""The floor: the least a thread-per-connection keep-alive proxy in CPython can cost per request.

    python bench/floor.py PORT BACKEND_PORT[,BACKEND_PORT...]

Not a balancer: a measuring stick. It serves each client connection on its
own thread (``socketserver.ThreadingTCPServer``, as simplelb does), keeps
connections to the backends in a pool, forwards each request head as it
came and relays a ``Content-Length`` response -- the same system calls per
request as simplelb, with none of its parsing, validation, health, retries
or counting. Pinned to one CPU like a simplelb worker. Load it with wrk at
the same time as simplelb (bench/README.md, round three): the difference in
CPU per request is what simplelb's own Python costs, and the rest is the
design's (threads, the interpreter, the kernel). Requests with a body, and
responses without a Content-Length, are not supported.
"""

from __future__ import annotations

import os
import socket
import socketserver
import sys
import threading

HEAD_END = b"\r\n\r\n"


def serve(port: int, backends: list[tuple[str, int]]) -> None:
    pools: list[list[socket.socket]] = [[] for _ in backends]
    lock = threading.Lock()
    turn = [0]

    def take() -> tuple[int, socket.socket]:
        with lock:
            index = turn[0] = (turn[0] + 1) % len(backends)
            pooled = pools[index].pop() if pools[index] else None
        if pooled is None:
            pooled = socket.create_connection(backends[index])
            pooled.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return index, pooled

    def read_response(upstream: socket.socket) -> bytes:
        response = b""
        while HEAD_END not in response:
            data = upstream.recv(65536)
            if not data:
                raise ConnectionError("backend closed")
            response += data
        head_end = response.index(HEAD_END) + 4
        lower = response[:head_end].lower()
        start = lower.index(b"content-length:") + 15
        length = int(lower[start : lower.index(b"\r\n", start)])
        while len(response) < head_end + length:
            response += upstream.recv(65536)
        return response

    class Handler(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            client = self.request
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            buffered = b""
            while True:
                while HEAD_END not in buffered:
                    data = client.recv(65536)
                    if not data:
                        return
                    buffered += data
                end = buffered.index(HEAD_END) + 4
                head, buffered = buffered[:end], buffered[end:]
                index, upstream = take()
                upstream.sendall(head)
                client.sendall(read_response(upstream))
                with lock:
                    pools[index].append(upstream)

    class Server(socketserver.ThreadingTCPServer):
        daemon_threads = True
        allow_reuse_address = True

    os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[-1]})  # one CPU, as a simplelb worker
    with Server(("127.0.0.1", port), Handler) as server:
        server.serve_forever()


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit(__doc__.split("\n\n")[1])
    serve(int(sys.argv[1]), [("127.0.0.1", int(p)) for p in sys.argv[2].split(",")])
