"""Running the labelling app on uvicorn: in the foreground (`aepo label`) or in a background thread (tests, notebooks).

uvicorn's access log is switched off: it would print every request line, and a labelling page must never write a
token (or anything a labeller typed) to a log. The socket is bound here, before uvicorn starts, so `port=0` picks a
free port without a race and `url` is known as soon as the server object exists.
"""

from __future__ import annotations

import ipaddress
import socket
import threading

__all__ = ["LabellingServer", "is_loopback"]


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and `localhost`: the binds that need no `--auth`."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class LabellingServer:
    """The app on `host:port` (0: a free port). `with LabellingServer(app) as server: ...server.url...` runs it in a
    thread; `serve_forever()` runs it in the foreground until Ctrl-C.

    `trusted_proxies`: addresses of reverse proxies whose `X-Forwarded-For` / `X-Forwarded-Proto` headers are
    believed (uvicorn's `forwarded_allow_ips`, e.g. `"127.0.0.1"` for nginx on the same machine): the client address
    of the sign-in limit and logs, and the scheme of the Origin check and of the cookie's `Secure` flag, come from
    them. None (the default): no proxy headers are believed.
    """

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0, trusted_proxies: str | None = None):
        family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
        self.socket = socket.socket(family, socket.SOCK_STREAM)
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self.socket.bind((host.strip("[]"), port))
        except OSError:
            self.socket.close()
            raise
        self.socket.listen(128)
        self.host, self.port = host, self.socket.getsockname()[1]
        self.app = app
        self.trusted_proxies = trusted_proxies
        self._server = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host.strip('[]')}]" if ":" in self.host.strip("[]") else self.host
        return f"http://{host}:{self.port}/"

    def _uvicorn(self):
        import uvicorn

        config = uvicorn.Config(
            self.app,
            log_level="warning",
            access_log=False,
            lifespan="off",
            server_header=False,
            proxy_headers=bool(self.trusted_proxies),
            forwarded_allow_ips=self.trusted_proxies or None,
        )
        self._server = uvicorn.Server(config)
        return self._server

    def serve_forever(self) -> None:
        """Serve until interrupted (uvicorn handles Ctrl-C / SIGTERM and finishes the requests in flight)."""
        try:
            self._uvicorn().run(sockets=[self.socket])
        finally:
            self.socket.close()

    def __enter__(self) -> LabellingServer:
        server = self._uvicorn()
        started = threading.Event()

        def run():
            try:
                server.run(sockets=[self.socket])
            finally:
                started.set()

        self._thread = threading.Thread(target=run, name="aepo-label-server", daemon=True)
        self._thread.start()
        while not server.started and self._thread.is_alive():
            started.wait(0.02)
        if not server.started:
            raise RuntimeError("the labelling server did not start")
        return self

    def __exit__(self, *exc) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.socket.close()
