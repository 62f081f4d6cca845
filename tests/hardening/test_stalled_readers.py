"""A client that stops reading a large answer is cut off after ``limits.client_timeout_s``
without progress, counted, and never holds the gateway: ordinary requests are served
meanwhile. The client here sends a signed request and never reads a byte."""

from __future__ import annotations

import re
import socket
import time

from tests.fixtures.processes import wait_until
from tests.fixtures.signing import SignedClient


def _stalled(gw) -> float:
    found = re.search(r'^txgate_client_stalled_total\{route="files"\} (\S+)$', gw.metrics(), re.M)
    return float(found.group(1)) if found else -1.0


def test_a_client_that_never_reads_is_cut_off_and_counted(start_gateway, upstream, tmp_path):
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "r.yaml").write_text("version: 1\nrules: []\n")
    gw = start_gateway({"rules": {"path": str(tmp_path / "rules"), "reload": "off"},
                        "limits": {"client_timeout_s": 1},
                        "routes": [{"name": "files", "match": {"path": "/big"},
                                    "upstream": upstream.url, "min_tier": "client"}]})
    secret = gw.admin_post("/admin/clients", {"id": "app", "hmac": True}).json()["secret"]
    client = SignedClient("app", secret)
    assert _stalled(gw) == 0
    prepared = client.prepare("GET", f"{gw.url}/big?mb=200")
    head = [f"GET {prepared.path_url} HTTP/1.1", f"Host: 127.0.0.1:{gw.port}"]
    head += [f"{name}: {value}" for name, value in prepared.headers.items()]
    reader = socket.socket()
    # A small receive window: the gateway's writes stop progressing after a few hundred KB.
    reader.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    reader.connect(("127.0.0.1", gw.port))
    try:
        reader.sendall(("\r\n".join(head) + "\r\n\r\n").encode())
        # Served while the stalled answer waits: the gateway is not held by it.
        assert client.request("GET", f"{gw.url}/big?mb=0.1").status_code == 200
        wait_until(lambda: _stalled(gw) == 1, timeout=20, what="the stalled answer cut off")
        # The connection is gone: what is left to read ends early, well short of 200 MB.
        reader.settimeout(10)
        received = 0
        try:
            while chunk := reader.recv(1 << 20):
                received += len(chunk)
        except ConnectionResetError:
            pass
        assert received < 200 * 1024 * 1024
    finally:
        reader.close()
    assert client.request("GET", f"{gw.url}/big?mb=1").status_code == 200
    time.sleep(0.2)
    assert _stalled(gw) == 1
