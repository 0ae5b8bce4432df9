"""An ASGI application served by uvicorn on a background thread, on a socket bound at construction.

What the node's HTTP servers share (``ainode viewer``'s :class:`node.viewer.ViewerServer`; the node's own
:class:`node.http.HttpServer` serves the same way): the address is bound when the object is made, so a taken
port is the caller's ``OSError`` (said in one line) and not a thread's; :meth:`UvicornThread.start` returns
once uvicorn accepts requests; uvicorn's own start and stop lines are left out (the caller logs its own).
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
import time
from typing import Any, Literal

import uvicorn

__all__ = ["UvicornThread"]


class UvicornThread:
    """``app`` on ``host:port`` (``port=0``: a free port), HTTPS with ``ssl_context``.

    Parameters
    ----------
    app : ASGI application
    host, port : str, int
    ssl_context : ssl.SSLContext, optional
    name : str
        The thread's name, and what messages call the server.
    lifespan : "on" or "off"
        Whether the application's lifespan (start-up and shut-down) runs.

    Raises
    ------
    OSError
        When the address cannot be bound.
    """

    def __init__(
        self,
        app: Any,
        host: str,
        port: int,
        *,
        ssl_context: ssl.SSLContext | None = None,
        name: str = "ainode-http",
        lifespan: Literal["on", "off"] = "off",
    ) -> None:
        self.app = app
        self.host = host
        self.ssl_context = ssl_context
        self.name = name
        self.lifespan = lifespan
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._socket = socket.socket(family, socket.SOCK_STREAM)
        try:
            self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self._socket.bind((host, port))
            self._socket.listen(128)
        except OSError:
            self._socket.close()
            raise
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._socket.getsockname()[1])

    @property
    def scheme(self) -> str:
        return "https" if self.ssl_context is not None else "http"

    @property
    def url(self) -> str:
        """``scheme://host:port`` of the bound socket."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"

    @property
    def alive(self) -> bool:
        """Whether the server thread still serves."""
        return self._thread is not None and self._thread.is_alive()

    def start(self, timeout: float = 10.0) -> None:
        """Serve on a background thread; returns once the server accepts requests.

        Raises
        ------
        OSError
            When uvicorn did not start within ``timeout`` seconds (its reason is in the log).
        """
        context = self.ssl_context
        config = uvicorn.Config(
            self.app,
            http="h11",
            ws="none",
            lifespan=self.lifespan,
            loop="asyncio",
            log_config=None,
            access_log=False,
            server_header=False,
            timeout_keep_alive=5,
            timeout_graceful_shutdown=5,
            ssl_context_factory=(lambda _config, _default: context) if context is not None else None,
        )
        logging.getLogger("uvicorn.error").setLevel(logging.WARNING)  # its start and stop lines: ours say it
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._socket]}, name=self.name, daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started and self._thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.01)
        if not self._server.started:
            raise OSError(f"{self.name}: the server did not start on {self.host}:{self.port} (see the log)")

    def stop(self) -> None:
        """Stop serving (open answers get a few seconds to finish) and close the socket."""
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(10)
            self._thread = None
        self._socket.close()
