"""A small authoritative DNS server for tests, on a loopback UDP port, whose records change while it runs.

Answers are built with dnspython. A test sets records and failures between
queries::

    with DnsServer() as dns_server:
        dns_server.set("web.test.", "A", ["127.0.0.1"], ttl=1)
        dns_server.fail("web.test.", "SERVFAIL")     # or "NXDOMAIN"; fail(name, None) answers again
        dns_server.fail("web.test.", "NXDOMAIN", times=1)  # the next answer only
        dns_server.queries                            # (name, type) of every query, in order

A name with no records of the asked type, but some of another, answers
NOERROR with an empty answer; a name with none at all is NXDOMAIN.
"""

from __future__ import annotations

import socket
import threading

import dns.exception
import dns.flags
import dns.message
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset


class DnsServer:
    def __init__(self) -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.settimeout(0.1)
        self.port = self._sock.getsockname()[1]
        self._lock = threading.Lock()  # guards the three below
        self._records: dict[tuple[str, str], tuple[int, list[str]]] = {}
        self._failures: dict[str, list] = {}  # name -> [rcode text, answers left (None: all)]
        self.queries: list[tuple[str, str]] = []
        self.received = 0  # queries that arrived, answered or held
        self._answering = threading.Event()
        self._answering.set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name=f"test dns :{self.port}", daemon=True)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def set(self, name: str, rdtype: str, values: list[str], ttl: int = 60) -> None:
        """Replace the records of one name and type (an empty list removes them)."""
        with self._lock:
            if values:
                self._records[(name.lower(), rdtype)] = (ttl, list(values))
            else:
                self._records.pop((name.lower(), rdtype), None)

    def fail(self, name: str, rcode: str | None, times: int | None = None) -> None:
        with self._lock:
            if rcode is None:
                self._failures.pop(name.lower(), None)
            else:
                self._failures[name.lower()] = [rcode, times]

    def count(self, name: str, rdtype: str) -> int:
        with self._lock:
            return sum(1 for q in self.queries if q == (name.lower(), rdtype))

    def hold(self) -> None:
        """Answer nothing until ``release()``: lookups wait, as on a slow or unreachable server."""
        self._answering.clear()

    def release(self) -> None:
        self._answering.set()

    def start(self) -> DnsServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._sock.close()

    def __enter__(self) -> DnsServer:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                data, peer = self._sock.recvfrom(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                query = dns.message.from_wire(data)
            except dns.exception.DNSException:
                continue
            with self._lock:
                self.received += 1
            while not self._answering.wait(0.1):
                if self._stop.is_set():
                    return
            self._sock.sendto(self._answer(query).to_wire(), peer)

    def _answer(self, query: dns.message.Message) -> dns.message.Message:
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        question = query.question[0]
        name, rdtype = question.name.to_text().lower(), dns.rdatatype.to_text(question.rdtype)
        with self._lock:
            self.queries.append((name, rdtype))
            failure = self._failures.get(name)
            if failure is not None and failure[1] is not None:
                failure[1] -= 1
                if failure[1] <= 0:
                    del self._failures[name]
            record = self._records.get((name, rdtype))
            exists = any(key[0] == name for key in self._records)
        if failure is not None:
            response.set_rcode(dns.rcode.from_text(failure[0]))
        elif record is not None:
            ttl, values = record
            response.answer.append(dns.rrset.from_text_list(question.name, ttl, dns.rdataclass.IN, rdtype, values))
        elif not exists:
            response.set_rcode(dns.rcode.NXDOMAIN)
        return response
