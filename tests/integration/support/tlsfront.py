"""A TLS-terminating front end for the broker (RELIABILITY item 18).

It accepts TLS on 127.0.0.1 (an ephemeral port), records the SNI server name
each client sent, and forwards the decrypted bytes to the plain AMQP port.
Certificates come from trustme:

- ``front.ca`` is the CA tests trust (``front.client_context()`` builds a
  client context that trusts it and checks hostnames);
- the certificate presented depends on ``front.mode``:

  ``"trusted"``     issued by ``front.ca`` for localhost / 127.0.0.1 / ::1;
  ``"wrong_host"``  issued by ``front.ca`` for ``WRONG_HOSTNAME`` only;
  ``"untrusted"``   issued for localhost by a second CA nobody trusts.

It is built on FaultProxy (``front.proxy``), so every fault the proxy offers
(reset, blackhole, throttle, refuse) works behind TLS too. It owns the proxy
and, through it, every greenlet and socket; ``stop()`` joins and closes them.
"""

from __future__ import annotations

import ssl
from types import TracebackType
from typing import Literal

import gevent.socket
import gevent.ssl
import trustme

from .faultproxy import DEFAULT_UPSTREAM, Address, FaultProxy, rst_close

CertMode = Literal["trusted", "wrong_host", "untrusted"]
WRONG_HOSTNAME = "wrong-host.invalid"
DEFAULT_HOSTNAMES = ("localhost", "127.0.0.1", "::1")


class TLSFront:
    """TLS on the outside, plain AMQP to ``upstream`` on the inside."""

    def __init__(
        self,
        upstream: Address = DEFAULT_UPSTREAM,
        *,
        hostnames: tuple[str, ...] = DEFAULT_HOSTNAMES,
        mode: CertMode = "trusted",
        handshake_timeout: float = 5.0,
    ) -> None:
        self.ca = trustme.CA()
        self.untrusted_ca = trustme.CA()  # never handed to clients
        self.hostnames = hostnames
        self.mode: CertMode = mode
        self._handshake_timeout = handshake_timeout
        self._contexts: dict[CertMode, ssl.SSLContext] = {
            "trusted": self._server_context(self.ca.issue_cert(*hostnames)),
            "wrong_host": self._server_context(self.ca.issue_cert(WRONG_HOSTNAME)),
            "untrusted": self._server_context(self.untrusted_ca.issue_cert(*hostnames)),
        }
        self.server_names: list[str | None] = []  # SNI per handshake that got that far
        self.handshake_errors: list[OSError] = []  # server-side view of failed handshakes
        self.handshakes_completed = 0
        self.proxy = FaultProxy(upstream, wrap_client=self._accept_tls)

    # -- lifecycle ---------------------------------------------------------

    def start(self) -> TLSFront:
        self.proxy.start()
        return self

    def stop(self) -> None:
        self.proxy.stop()

    def __enter__(self) -> TLSFront:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- for clients -------------------------------------------------------

    @property
    def host(self) -> str:
        return self.proxy.host

    @property
    def port(self) -> int:
        return self.proxy.port

    @property
    def address(self) -> Address:
        return self.proxy.address

    def url(self, vhost: str = "/", host: str = "localhost") -> str:
        from urllib.parse import quote

        return f"amqps://guest:guest@{host}:{self.port}/{quote(vhost, safe='')}"

    def client_context(self, trust: bool = True) -> ssl.SSLContext:
        """A client context that verifies certificates and hostnames.

        ``trust=True`` trusts ``self.ca``; ``trust=False`` uses only the system
        trust store (which knows nothing of trustme's CAs). It is a
        gevent.ssl.SSLContext, a subclass of ssl.SSLContext whose sockets
        cooperate with the hub.
        """
        context: ssl.SSLContext = gevent.ssl.SSLContext(gevent.ssl.PROTOCOL_TLS_CLIENT)
        if trust:
            self.ca.configure_trust(context)
        else:
            context.load_default_certs()
        return context

    def wait_for_handshakes(self, n: int, timeout: float = 10.0) -> None:
        """Block until ``n`` TLS handshakes have finished, either way."""
        self.proxy.wait_for(
            lambda: self.handshakes_completed + len(self.handshake_errors) >= n,
            timeout,
            f"{n} TLS handshakes",
        )

    # -- server side -------------------------------------------------------

    def _server_context(self, cert: trustme.LeafCert) -> ssl.SSLContext:
        context: ssl.SSLContext = gevent.ssl.SSLContext(gevent.ssl.PROTOCOL_TLS_SERVER)
        cert.configure_cert(context)
        context.sni_callback = self._record_sni
        return context

    def _record_sni(
        self, ssl_object: ssl.SSLObject | ssl.SSLSocket, server_name: str | None, _: ssl.SSLContext
    ) -> None:
        self.server_names.append(server_name)

    def _accept_tls(self, sock: gevent.socket.socket) -> gevent.socket.socket:
        """Server-side handshake, run in the link's greenlet by FaultProxy."""
        context = self._contexts[self.mode]
        tls = context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        tls.settimeout(self._handshake_timeout)
        try:
            tls.do_handshake()
        except OSError as exc:  # SSLError, timeouts, resets
            self.handshake_errors.append(exc)
            rst_close(tls)  # the raw socket was detached into ``tls``
            self.proxy.notify_waiters()
            raise
        tls.settimeout(None)
        self.handshakes_completed += 1
        self.proxy.notify_waiters()
        return tls
