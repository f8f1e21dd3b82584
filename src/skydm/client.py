"""The notebook client: the skydm services through pyvo, with the user's token.

>>> from skydm.client import Client
>>> client = Client()                     # $SKYDM_URL and $SKYDM_TOKEN
>>> client.tap.search("SELECT TOP 5 * FROM Object").to_table()

In a notebook the platform puts a delegated token in ``SKYDM_TOKEN`` and the
services' root URL in ``SKYDM_URL``, so nothing needs to be passed.
"""

from __future__ import annotations

import os
from functools import cached_property
from typing import Any

from skydm.errors import BadValueError, require_extra

#: Where the services are when ``SKYDM_URL`` is unset (``skydm serve``'s default).
DEFAULT_URL = "http://127.0.0.1:8000"


class Client:
    """pyvo services for a skydm server, each request carrying the token.

    Parameters
    ----------
    url : str, optional
        The services' root URL (default ``$SKYDM_URL``, else ``http://127.0.0.1:8000``).
    token : str, optional
        A skydm token (default ``$SKYDM_TOKEN``; none for a server without auth).
    """

    def __init__(self, url: str | None = None, token: str | None = None) -> None:
        require_extra("pyvo", "client")
        import requests

        self.url = (url or os.environ.get("SKYDM_URL") or DEFAULT_URL).rstrip("/")
        if not self.url.startswith(("http://", "https://")):
            raise BadValueError("url", self.url, "give the http(s) root URL of the services")
        token = token if token is not None else os.environ.get("SKYDM_TOKEN", "").strip()
        self.session = requests.Session()
        if token:
            self.session.headers["Authorization"] = f"Bearer {token}"

    @cached_property
    def tap(self) -> Any:
        """The TAP service (``pyvo.dal.TAPService``): ``client.tap.search(adql)``."""
        import pyvo

        return pyvo.dal.TAPService(f"{self.url}/tap", session=self.session)

    @cached_property
    def sia(self) -> Any:
        """The SIAv2 service (``pyvo.dal.SIA2Service``): ``client.sia.search(pos=...)``."""
        import pyvo

        return pyvo.dal.SIA2Service(f"{self.url}/sia", session=self.session)

    def soda_url(self) -> str:
        """The SODA sync endpoint (cutouts: ``ID`` and ``CIRCLE``/``POLYGON``/``POS``)."""
        return f"{self.url}/soda/sync"

    def hips_url(self) -> str:
        """The root of the HiPS surveys."""
        return f"{self.url}/hips"
