"""TLS end to end: the listener serves TLS from files and reloads them on SIGHUP, https
upstreams are verified (with a route's own CA allowed), and a verified client certificate may
prove the client tier instead of an RFC 9421 signature."""

from __future__ import annotations

import http.server
import json
import signal
import socket
import ssl
import threading

import pytest
import requests
from cryptography import x509

from tests.fixtures.processes import wait_until
from tests.fixtures.signing import SignedClient
from tests.hardening.certs import CA
from tests.hardening.conftest import pay_route, rules_config


def _served_serial(port: int, ca_file) -> int:
    context = ssl.create_default_context(cafile=str(ca_file))
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            return x509.load_der_x509_certificate(tls.getpeercert(binary_form=True)).serial_number


@pytest.fixture
def pki(tmp_path):
    ca = CA(tmp_path)
    cert, key, leaf = ca.issue("server", "127.0.0.1", server=True)
    return ca, cert, key, leaf


def _routes(upstream_url: str, **extra) -> list[dict]:
    return [pay_route(upstream_url),
            {"name": "pass", "match": {"path_prefix": "/"}, "upstream": upstream_url, **extra}]


def test_tls_listener_serves_signed_requests_and_reloads_its_certificate_on_sighup(
        start_gateway, upstream, pki, tmp_path, rules_dir):
    ca, cert, key, leaf = pki
    gw = start_gateway({"rules": rules_config(rules_dir), "tls": {"cert_file": str(cert), "key_file": str(key)},
                        "routes": _routes(upstream.url)})
    secret = gw.admin_post("/admin/clients", {"id": "app", "hmac": True}).json()["secret"]
    client = SignedClient("app", secret)
    client.session.verify = str(ca.cert_file)
    url = f"https://127.0.0.1:{gw.port}/echo"
    r = client.request("GET", url)
    assert r.status_code == 200 and r.json()["headers"]
    with pytest.raises(requests.exceptions.SSLError):   # not trusted without our CA
        requests.get(url, timeout=5)
    assert _served_serial(gw.port, ca.cert_file) == leaf.serial_number

    # A broken pair on SIGHUP keeps the running certificate and the listener up.
    cert.write_text("not a certificate")
    gw.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: "TLS certificate reload failed" in gw.stderr(), what="reload failure log")
    assert _served_serial(gw.port, ca.cert_file) == leaf.serial_number

    _, _, renewed = ca.issue("server", "127.0.0.1", server=True)   # same file names
    gw.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: _served_serial(gw.port, ca.cert_file) == renewed.serial_number,
               what="the renewed certificate to be served")
    assert client.request("GET", url).status_code == 200


class _HttpsUpstream:
    """A tiny threaded HTTPS server with a certificate from the test CA."""

    def __init__(self, cert, key):
        self.hits = 0
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                outer.hits += 1
                body = json.dumps({"tls": True}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(str(cert), str(key))
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.url = f"https://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def test_https_upstream_is_verified_against_the_routes_ca(start_gateway, pki, tmp_path, rules_dir):
    ca, cert, key, _ = pki
    tls_upstream = _HttpsUpstream(cert, key)
    try:
        gw = start_gateway({"rules": rules_config(rules_dir), "routes": [
            {"name": "trusted", "match": {"path": "/trusted"}, "upstream": tls_upstream.url,
             "upstream_ca_file": str(ca.cert_file)},
            pay_route(tls_upstream.url, upstream_ca_file=str(ca.cert_file)),
            # The same server by another name (its certificate covers both), no CA bundle.
            {"name": "untrusted", "match": {"path": "/untrusted"},
             "upstream": tls_upstream.url.replace("127.0.0.1", "localhost")},
        ]})
        secret = gw.admin_post("/admin/clients", {"id": "app", "hmac": True}).json()["secret"]
        client = SignedClient("app", secret)
        assert client.request("GET", f"{gw.url}/trusted").json() == {"tls": True}
        hits = tls_upstream.hits
        # Verified against the system CAs only: refused before any request is sent.
        r = client.request("GET", f"{gw.url}/untrusted")
        assert r.status_code == 502 and r.json()["error"] == "upstream_unavailable"
        assert tls_upstream.hits == hits
        assert 'txgate_upstream_errors_total{kind="unavailable",route="untrusted"} 1.0' in gw.metrics()
    finally:
        tls_upstream.close()


def test_client_certificate_proves_the_client_tier_for_a_registered_client(
        start_gateway, upstream, pki, tmp_path, rules_dir):
    ca, cert, key, _ = pki
    client_ca = CA(tmp_path, "txgate client CA")
    app_cert = client_ca.issue("app", "app")[:2]
    uri_cert = client_ca.issue("uri", "ignored-cn", uris=("txgate:client:app",))[:2]
    stranger = client_ca.issue("stranger", "stranger")[:2]
    rogue = CA(tmp_path, "someone else's CA").issue("rogue", "app")[:2]
    gw = start_gateway({"rules": rules_config(rules_dir),
                        "tls": {"cert_file": str(cert), "key_file": str(key),
                                "client_ca_file": str(client_ca.cert_file)},
                        "routes": _routes(upstream.url)})
    secret = gw.admin_post("/admin/clients", {"id": "app", "hmac": True}).json()["secret"]
    url = f"https://127.0.0.1:{gw.port}/echo"

    def get(client_cert=None):
        return requests.get(url, cert=tuple(map(str, client_cert)) if client_cert else None,
                            verify=str(ca.cert_file), timeout=5)

    upstream.clear()
    assert get(app_cert).status_code == 200
    assert get(uri_cert).status_code == 200          # URI SAN txgate:client:app
    assert get(stranger).status_code == 401          # verified, but not a registered client
    assert get(None).status_code == 401              # neither a certificate nor a signature
    # A CA we do not trust: the handshake fails (with TLS 1.3 the client may only see the
    # connection close, since the server checks the certificate after its own Finished).
    with pytest.raises(requests.exceptions.ConnectionError):
        get(rogue)
    assert len(upstream.seen()) == 2

    # RFC 9421 stays the default and still works over the same listener without a certificate.
    signed = SignedClient("app", secret)
    signed.session.verify = str(ca.cert_file)
    assert signed.request("GET", url).status_code == 200

    # Revoking the client in the credential store revokes its certificate's access too.
    r = requests.delete(f"{gw.admin}/admin/credentials/client/app", timeout=5,
                        headers={"Authorization": "Bearer test-admin-token-5b0a"})
    assert r.status_code == 200
    assert get(app_cert).status_code == 401
