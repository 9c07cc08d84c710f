"""A small authoritative DNS server on loopback (dnslib), for tests of workers found by DNS:
the addresses it answers for a name can be changed while it runs, or it can be made to fail."""

from __future__ import annotations

import threading
from collections.abc import Iterable

from dnslib import AAAA, QTYPE, RR, A, DNSRecord
from dnslib.server import BaseResolver, DNSHandler, DNSLogger, DNSServer


class _Answers(BaseResolver):  # type: ignore[misc]
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.names: dict[str, list[str]] = {}
        self.failing = False
        self.queries = 0

    def resolve(self, request: DNSRecord, handler: DNSHandler) -> DNSRecord:
        reply = request.reply()
        name = str(request.q.qname).rstrip(".").lower()
        with self.lock:
            self.queries += 1
            if self.failing:
                reply.header.rcode = 2  # SERVFAIL
                return reply
            if name not in self.names:
                reply.header.rcode = 3  # NXDOMAIN
                return reply
            addresses = list(self.names[name])
        for address in addresses:
            v6 = ":" in address
            if request.q.qtype == (QTYPE.AAAA if v6 else QTYPE.A):
                data = AAAA(address) if v6 else A(address)
                reply.add_answer(RR(request.q.qname, request.q.qtype, rdata=data, ttl=1))
        return reply


class DnsServer:
    """UDP on 127.0.0.1 at a free port (`nameserver`: "127.0.0.1:port")."""

    def __init__(self) -> None:
        self._answers = _Answers()
        self._server = DNSServer(
            self._answers,
            address="127.0.0.1",
            port=0,
            logger=DNSLogger("-send,-recv,-request,-reply,-truncated,-data,-error"),
        )
        self.port: int = self._server.server.server_address[1]
        self.nameserver = f"127.0.0.1:{self.port}"

    def set(self, name: str, addresses: Iterable[str]) -> None:
        with self._answers.lock:
            self._answers.names[name.lower()] = list(addresses)

    def fail(self, failing: bool = True) -> None:
        with self._answers.lock:
            self._answers.failing = failing

    @property
    def queries(self) -> int:
        return self._answers.queries

    def __enter__(self) -> DnsServer:
        self._server.start_thread()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.stop()
        self._server.server.server_close()
