"""``skydm platform check``: a synthetic user exercising a running deployment.

Each step is one request a real user would make, timed from sending it to
having checked the answer. A step that fails does not stop the others,
except that the cutout needs the image that SIA found.
"""

from __future__ import annotations

import io
import json
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import urlsplit

from skydm.errors import BadValueError, require_extra

#: The ADQL query of the ``tap`` step: small, and answerable by every deployment.
DEFAULT_QUERY = "SELECT TOP 5 obs_publisher_did, s_ra, s_dec FROM ivoa.ObsCore"

#: The steps in the order they run (``notebook`` only with ``CheckConfig.notebook``).
STEPS = ("auth", "tap", "sia", "soda", "notebook")


@dataclass(frozen=True)
class CheckConfig:
    """What the synthetic user does.

    Parameters
    ----------
    url : str
        The deployment's root URL (``http(s)://host[:port][/prefix]``); the
        services are under ``/tap``, ``/sia``, ``/soda``, ``/auth``.
    token : str
        The token the user presents (``gt-...``).
    query : str
        ADQL of the TAP step.
    cutout_radius : float
        Radius of the SODA cutout, degrees (0 < r ≤ 0.1).
    timeout : float
        Seconds each request may take (> 0).
    notebook : bool
        Also run a notebook cell in the user's JupyterLab through the hub
        (:mod:`skydm.platform.notebook`); the token needs ``exec:notebook``.
    notebook_timeout : float
        Seconds the notebook server's start, the kernel's and the cell may
        each take (> 0).
    """

    url: str
    token: str
    query: str = DEFAULT_QUERY
    cutout_radius: float = 0.002
    timeout: float = 30.0
    notebook: bool = False
    notebook_timeout: float = 180.0

    def __post_init__(self) -> None:
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise BadValueError("url", self.url, "an http:// or https:// URL of the services")
        if parts.query or parts.fragment:
            raise BadValueError("url", self.url, "the services' root URL, without ? or #")
        if not self.token:
            raise BadValueError(
                "token", "", "a token made with `skydm token create` (or set SKYDM_TOKEN)"
            )
        if not self.query.strip():
            raise BadValueError("query", self.query, "an ADQL query")
        if not 0 < self.cutout_radius <= 0.1:
            raise BadValueError("cutout_radius", self.cutout_radius, "degrees, > 0 and ≤ 0.1")
        if not self.timeout > 0:
            raise BadValueError("timeout", self.timeout, "seconds, > 0")
        if not self.notebook_timeout > 0:
            raise BadValueError("notebook_timeout", self.notebook_timeout, "seconds, > 0")

    @property
    def root(self) -> str:
        """The root URL without a trailing slash (nor a trailing ``/tap``)."""
        return self.url.rstrip("/").removesuffix("/tap")


@dataclass(frozen=True)
class StepResult:
    """One step's outcome.

    Attributes
    ----------
    name : str
        ``auth``, ``tap``, ``sia``, ``soda`` or ``notebook``.
    ok : bool
        Whether it succeeded.
    ms : float or None
        Wall time of the step in milliseconds; ``None`` when it was skipped.
    detail : str
        What it found, or why it failed (one line).
    """

    name: str
    ok: bool
    ms: float | None
    detail: str


@dataclass(frozen=True)
class CheckReport:
    """Every step's result for one run against ``url``."""

    url: str
    steps: list[StepResult] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Whether every step succeeded."""
        return all(step.ok for step in self.steps)

    @property
    def total_ms(self) -> float:
        """Time of all steps that ran, milliseconds."""
        return sum(step.ms for step in self.steps if step.ms is not None)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: ``url``, ``ok``, ``total_ms`` and ``steps``."""
        return {
            "url": self.url,
            "ok": self.ok,
            "total_ms": round(self.total_ms, 2),
            "steps": [
                {**asdict(s), "ms": None if s.ms is None else round(s.ms, 2)} for s in self.steps
            ],
        }

    def to_json(self) -> str:
        """One JSON line."""
        return json.dumps(self.as_dict())

    def table(self) -> str:
        """A plain-text table, one row per step."""
        rows = [("step", "status", "ms", "detail")]
        for s in self.steps:
            status = "ok" if s.ok else ("skipped" if s.ms is None else "FAILED")
            rows.append((s.name, status, "-" if s.ms is None else f"{s.ms:.1f}", s.detail))
        rows.append(("total", "ok" if self.ok else "FAILED", f"{self.total_ms:.1f}", ""))
        widths = [max(len(r[i]) for r in rows) for i in range(3)]
        return "\n".join(
            f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:>{widths[2]}}  {r[3]}".rstrip()
            for r in rows
        )


class StepFailed(Exception):
    """A step's answer was wrong; the message is the step's one-line detail."""


_DALI_ERROR = re.compile(
    r"<INFO[^>]*name=\"QUERY_STATUS\"[^>]*value=\"ERROR\"[^>]*>(.*?)</INFO>", re.S
)


def describe_failure(response: Any) -> str:
    """One line saying why an HTTP answer is not a success.

    Parameters
    ----------
    response : httpx.Response
        The answer.

    Returns
    -------
    str
        The status, and the server's own reason where it gave one: the
        ``WWW-Authenticate`` error (401/403), a DALI error document's
        message, a JSON ``detail``, else the body's first line.
    """
    reason = ""
    challenge = response.headers.get("www-authenticate", "")
    if response.status_code in (401, 403) and challenge:
        reason = challenge
    elif response.status_code == 429:
        reason = f"rate limited, retry after {response.headers.get('retry-after', '?')} s"
    else:
        text = response.text
        found = _DALI_ERROR.search(text)
        if found:
            reason = found.group(1).strip()
        else:
            try:
                detail = response.json().get("detail", "")
            except (ValueError, AttributeError):
                detail = ""
            reason = str(detail) if detail else (text.strip().splitlines() or [""])[0]
    reason = " ".join(reason.split())[:200]
    return f"HTTP {response.status_code}" + (f": {reason}" if reason else "")


#: A one-row VOTable parsed once before any step is timed.
_WARM_UP = (
    b'<?xml version="1.0"?><VOTABLE version="1.4" xmlns="http://www.ivoa.net/xml/VOTable/v1.3">'
    b'<RESOURCE type="results"><TABLE><FIELD name="a" datatype="char" arraysize="*"/>'
    b'<FIELD name="b" datatype="double"/><DATA><TABLEDATA><TR><TD>x</TD><TD>1</TD></TR>'
    b"</TABLEDATA></DATA></TABLE></RESOURCE></VOTABLE>"
)


def _votable(content: bytes) -> Any:
    """The first table of a VOTable document, as an astropy Table."""
    from astropy.io.votable import parse_single_table

    try:
        return parse_single_table(io.BytesIO(content)).to_table()
    except Exception as exc:  # astropy raises many kinds on a damaged document
        raise StepFailed(f"the answer is not a VOTable ({exc})") from exc


class _Monitor:
    """Runs the steps with one HTTP client; keeps what a later step needs."""

    def __init__(self, config: CheckConfig, client: Any) -> None:
        self.config = config
        self.client = client
        self.image: tuple[str, float, float] | None = None

    def get(self, path: str, **params: Any) -> Any:
        response = self.client.get(f"{self.config.root}{path}", params=params)
        if response.status_code != 200:
            raise StepFailed(describe_failure(response))
        return response

    def auth(self) -> str:
        info = self.get("/auth/api/v1/token-info").json()
        scopes = ",".join(info.get("scopes", []))
        return f"user {info.get('username')} ({info.get('token_type')}; {scopes})"

    def tap(self) -> str:
        response = self.client.post(
            f"{self.config.root}/tap/sync",
            data={"REQUEST": "doQuery", "LANG": "ADQL", "QUERY": self.config.query},
        )
        if response.status_code != 200:
            raise StepFailed(describe_failure(response))
        found = _DALI_ERROR.search(response.text)
        if found:
            raise StepFailed(" ".join(found.group(1).split())[:200])
        table = _votable(response.content)
        return f"{len(table)} rows, {len(table.colnames)} columns"

    def sia(self) -> str:
        table = _votable(self.get("/sia/query", MAXREC=1).content)
        if len(table) == 0:
            raise StepFailed("SIA found no image: the deployment serves none")
        row = table[0]
        self.image = (str(row["obs_publisher_did"]), float(row["s_ra"]), float(row["s_dec"]))
        return f"found {self.image[0]}"

    def soda(self) -> str:
        from astropy.io import fits

        assert self.image is not None
        image_id, ra, dec = self.image
        response = self.get(
            "/soda/sync", ID=image_id, CIRCLE=f"{ra} {dec} {self.config.cutout_radius}"
        )
        try:
            with fits.open(io.BytesIO(response.content)) as hdus:
                shapes = [h.data.shape for h in hdus if h.data is not None and h.data.ndim == 2]
        except OSError as exc:
            raise StepFailed(f"the cutout is not a FITS file ({exc})") from exc
        if not shapes or min(min(s) for s in shapes) == 0:
            raise StepFailed("the cutout holds no image")
        ny, nx = shapes[0]
        return f"{nx}x{ny} px, {len(response.content)} bytes"

    def notebook(self) -> str:
        from skydm.platform.notebook import NotebookFailed, run_cell

        try:
            result = run_cell(
                self.client,
                self.config.root,
                self.config.token,
                self.config.query,
                timeout=self.config.notebook_timeout,
            )
        except NotebookFailed as exc:
            raise StepFailed(str(exc)) from exc
        if result.token_type != "notebook":
            raise StepFailed(
                f"the notebook has a {result.token_type} token, not a delegated notebook token"
            )
        return result.detail()


def run_check(config: CheckConfig, *, client: Any = None) -> CheckReport:
    """Run every step as a synthetic user and time it.

    Parameters
    ----------
    config : CheckConfig
        The deployment and what to do there.
    client : httpx.Client, optional
        The HTTP client (a new one, carrying the token, by default).

    Returns
    -------
    CheckReport
        A result for every step in :data:`STEPS` (``notebook`` when asked
        for), failed ones included.
    """
    httpx = require_extra("httpx", "serve")
    # Readied before the clock starts: a step's time is the deployment's, not
    # this process's first import and first parse with astropy's readers (~1 s).
    import astropy.io.fits  # noqa: F401

    _votable(_WARM_UP)
    own = client is None
    if own:
        client = httpx.Client(
            headers={"Authorization": f"Bearer {config.token}"}, timeout=config.timeout
        )
    monitor = _Monitor(config, client)
    actions: dict[str, Callable[[], str]] = {
        "auth": monitor.auth,
        "tap": monitor.tap,
        "sia": monitor.sia,
        "soda": monitor.soda,
        "notebook": monitor.notebook,
    }
    report = CheckReport(config.root)
    try:
        for name in STEPS:
            if name == "notebook" and not config.notebook:
                continue
            if name == "soda" and monitor.image is None:
                skipped = StepResult(name, False, None, "skipped: the sia step found no image")
                report.steps.append(skipped)
                continue
            start = time.perf_counter()
            try:
                detail, ok = actions[name](), True
            except StepFailed as exc:
                detail, ok = str(exc), False
            except httpx.HTTPError as exc:
                detail, ok = f"no answer from {config.root} ({type(exc).__name__}: {exc})", False
            ms = (time.perf_counter() - start) * 1e3
            report.steps.append(StepResult(name, ok, ms, detail))
    finally:
        if own:
            client.close()
    return report
