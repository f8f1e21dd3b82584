"""The notebook step of ``skydm platform check``: a cell run in the user's own JupyterLab.

Through the hub's REST API, as a user's program would: exchange the skydm
token for a hub API token (``POST /hub/skydm/token``,
:class:`skydm.platform.hub.SkydmTokenHandler`), start the user's server
(``POST /hub/api/users/<name>/server``) and wait until it is ready, start a
kernel through the Jupyter server's API (``POST /user/<name>/api/kernels``)
and run one cell over its WebSocket (the Jupyter messaging protocol). The
cell uses :class:`skydm.client.Client` with nothing passed, so it queries TAP
with the delegated token the hub put in the server's environment, and
reports which token that is. The server is stopped again if the check
started it.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from skydm.errors import require_extra

#: What the cell prints, one JSON line: the rows TAP returned and the kernel's token.
CELL = """\
import json, os
from skydm.client import Client
_client = Client()
_rows = len(_client.tap.search({query!r}).to_table())
_info = _client.session.get(_client.url + "/auth/api/v1/token-info").json()
print("SKYDM_CELL " + json.dumps({{"rows": _rows, "token_type": _info["token_type"],
      "username": _info["username"], "scopes": _info["scopes"], "url": _client.url}}))
"""


class NotebookFailed(Exception):
    """The notebook step failed; the message is its one-line detail."""


@dataclass(frozen=True)
class CellResult:
    """What the notebook step measured.

    Attributes
    ----------
    rows : int
        Rows the cell's TAP query returned.
    token_type : str
        Type of the token the kernel found in ``SKYDM_TOKEN`` (``notebook``).
    username : str
        Whose token it is.
    spawn_s, kernel_s, cell_s : float
        Seconds to get the server ready (0 if it ran already), to start the
        kernel, and to run the cell.
    """

    rows: int
    token_type: str
    username: str
    spawn_s: float
    kernel_s: float
    cell_s: float

    def detail(self) -> str:
        """One line for the check's table."""
        return (
            f"{self.rows} rows with a {self.token_type} token of {self.username}; "
            f"server {self.spawn_s:.1f} s, kernel {self.kernel_s:.1f} s, cell {self.cell_s:.1f} s"
        )


def _failed(what: str, response: Any) -> NotebookFailed:
    from skydm.platform.check import describe_failure

    return NotebookFailed(f"{what}: {describe_failure(response)}")


def run_cell(
    client: Any, root: str, token: str, query: str, *, timeout: float = 180.0
) -> CellResult:
    """Run the check's cell in the token user's notebook server.

    Parameters
    ----------
    client : httpx.Client
        The HTTP client (its own headers are not used for the hub).
    root : str
        The platform's root URL (the hub at ``/hub``, servers at ``/user``).
    token : str
        The skydm token of the synthetic user (needs ``exec:notebook``).
    query : str
        ADQL run by the cell.
    timeout : float
        Seconds the server start, the kernel start and the cell may each take.

    Raises
    ------
    NotebookFailed
        Any step refused or too slow (the message says which).
    """
    answer = client.post(f"{root}/hub/skydm/token", headers={"Authorization": f"Bearer {token}"})
    if answer.status_code != 200:
        raise _failed("the hub refused the token", answer)
    name, hub_token = answer.json()["name"], answer.json()["token"]
    headers = {"Authorization": f"token {hub_token}"}
    user_api = f"{root}/hub/api/users/{quote(name)}"
    start = time.perf_counter()
    started_here = False
    if not _ready(client, user_api, headers):
        answer = client.post(f"{user_api}/server", headers=headers)
        if answer.status_code not in (201, 202, 400):  # 400: already starting
            raise _failed("the hub did not start the server", answer)
        started_here = True
        deadline = time.monotonic() + timeout
        while not _ready(client, user_api, headers, starting=True):
            if time.monotonic() > deadline:
                raise NotebookFailed(f"the notebook server of {name} was not ready in {timeout} s")
            time.sleep(0.5)
    spawn_s = time.perf_counter() - start
    server = f"{root}/user/{quote(name)}"
    try:
        start = time.perf_counter()
        answer = client.post(f"{server}/api/kernels", headers=headers, json={}, timeout=timeout)
        if answer.status_code != 201:
            raise _failed("the notebook server did not start a kernel", answer)
        kernel = answer.json()["id"]
        try:
            output, kernel_s, cell_s = _execute(
                server, kernel, hub_token, CELL.format(query=query), timeout, start
            )
        finally:
            client.delete(f"{server}/api/kernels/{kernel}", headers=headers)
    finally:
        if started_here:
            client.delete(f"{user_api}/server", headers=headers)
    lines = [line for line in output.splitlines() if line.startswith("SKYDM_CELL ")]
    if not lines:
        raise NotebookFailed(f"the cell printed no result: {output.strip()[-200:]!r}")
    found = json.loads(lines[-1].removeprefix("SKYDM_CELL "))
    return CellResult(
        rows=int(found["rows"]),
        token_type=str(found["token_type"]),
        username=str(found["username"]),
        spawn_s=spawn_s,
        kernel_s=kernel_s,
        cell_s=cell_s,
    )


def _ready(client: Any, user_api: str, headers: dict[str, str], *, starting: bool = False) -> bool:
    answer = client.get(user_api, headers=headers)
    if answer.status_code != 200:
        raise _failed("the hub did not describe the user", answer)
    server = answer.json().get("servers", {}).get("")
    if starting and not server:
        # Gone while starting: the spawn failed (the hub's log says why).
        raise NotebookFailed("the hub could not start the notebook server (see the hub's log)")
    return bool(server and server.get("ready"))


def _execute(
    server: str, kernel: str, hub_token: str, code: str, timeout: float, started: float
) -> tuple[str, float, float]:
    """Run ``code`` over the kernel's WebSocket: its output, kernel and cell seconds."""
    websocket = require_extra("websocket", "platform")
    url = server.replace("http", "ws", 1) + f"/api/kernels/{kernel}/channels"
    ws = websocket.create_connection(
        url, header=[f"Authorization: token {hub_token}"], timeout=timeout
    )
    try:
        session = uuid.uuid4().hex
        # kernel_info first: its reply says the kernel is up (the kernel's start time).
        _send(ws, session, "kernel_info_request", {})
        _wait_reply(ws, "kernel_info_reply", timeout)
        kernel_s = time.perf_counter() - started
        start = time.perf_counter()
        msg_id = _send(
            ws,
            session,
            "execute_request",
            {
                "code": code,
                "silent": False,
                "store_history": False,
                "user_expressions": {},
                "allow_stdin": False,
                "stop_on_error": True,
            },
        )
        output: list[str] = []
        deadline = time.monotonic() + timeout
        while True:
            if time.monotonic() > deadline:
                raise NotebookFailed(f"the cell did not finish in {timeout} s")
            msg = json.loads(ws.recv())
            if msg.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            kind, content = msg["header"]["msg_type"], msg.get("content", {})
            if kind == "stream":
                output.append(content.get("text", ""))
            elif kind == "error":
                raise NotebookFailed(
                    f"the cell failed: {content.get('ename')}: {content.get('evalue')}"
                )
            elif kind == "status" and content.get("execution_state") == "idle":
                break
        return "".join(output), kernel_s, time.perf_counter() - start
    finally:
        ws.close()


def _send(ws: Any, session: str, kind: str, content: dict[str, Any]) -> str:
    msg_id = uuid.uuid4().hex
    channel = "shell"
    ws.send(
        json.dumps(
            {
                "header": {
                    "msg_id": msg_id,
                    "username": "skydm-check",
                    "session": session,
                    "msg_type": kind,
                    "version": "5.3",
                },
                "parent_header": {},
                "metadata": {},
                "content": content,
                "channel": channel,
                "buffers": [],
            }
        )
    )
    return msg_id


def _wait_reply(ws: Any, kind: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        msg = json.loads(ws.recv())
        if msg.get("header", {}).get("msg_type") == kind:
            return
    raise NotebookFailed(f"the kernel did not answer in {timeout} s")
