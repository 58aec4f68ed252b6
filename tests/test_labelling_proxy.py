"""The nginx configuration of docs/labelling-team.md, run for real: TLS in front of `aepo label`, sign-in through it.

The ```nginx block of the docs page is taken as written (only the certificate paths, the two listen ports and the
upstream port are replaced: no root, no fixed ports), with a self-signed certificate from `openssl`. Through it, with
`--public_url` and `--trusted_proxies 127.0.0.1`: a browser-like sign-in passes the Origin check and gets a `Secure`
session cookie, the API answers with it, a cross-site Origin is refused, and plain HTTP is redirected to HTTPS.
Skipped where nginx or openssl is not installed (`apt-get install nginx-light openssl`).
"""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import time

import pytest
from conftest import REPO_ROOT

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if shutil.os.path.exists("/usr/sbin/nginx") else None)
if NGINX is None or shutil.which("openssl") is None:
    pytest.skip("nginx and openssl are needed (apt-get install nginx-light openssl)", allow_module_level=True)

from aepo_trainer.annotation import (  # noqa: E402
    AnnotationRequest,
    AnnotationService,
    AnnotationsPending,
    AnnotationStore,
    HumanQueueAnnotator,
)
from aepo_trainer.labelling import LabellerTokens, LabellingServer, create_app  # noqa: E402

ALICE = "alice-token-0123456789"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _docs_nginx_config() -> str:
    page = (REPO_ROOT / "docs" / "labelling-team.md").read_text(encoding="utf-8")
    return re.search(r"```nginx\n(.*?)```", page, re.S).group(1)


def test_the_documented_nginx_config_passes_the_origin_check(tmp_path):
    store, queue = tmp_path / "s.sqlite", tmp_path / "q.jsonl"
    with pytest.raises(AnnotationsPending):
        AnnotationService(HumanQueueAnnotator(queue), AnnotationStore(store)).annotate(
            [AnnotationRequest("Say hi.", ["hi", "no"])]
        )
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=label.example.org"]
        + ["-keyout", str(tmp_path / "key.pem"), "-out", str(tmp_path / "cert.pem")],
        check=True,
        capture_output=True,
    )
    https_port, http_port = _free_port(), _free_port()
    public = f"https://label.example.org:{https_port}"
    tokens = LabellerTokens({"alice": ALICE})  # as `aepo label --auth` builds it: no loopback-only Host check
    app = create_app(store, queue, tokens=tokens, public_url=public + "/", loopback_only=False)
    with LabellingServer(app, trusted_proxies="127.0.0.1") as server:
        servers = (
            _docs_nginx_config()
            .replace("/etc/letsencrypt/live/label.example.org/fullchain.pem", str(tmp_path / "cert.pem"))
            .replace("/etc/letsencrypt/live/label.example.org/privkey.pem", str(tmp_path / "key.pem"))
            .replace("listen 443 ssl;", f"listen 127.0.0.1:{https_port} ssl;")
            .replace("listen 80;", f"listen 127.0.0.1:{http_port};")
            .replace("http://127.0.0.1:7860", f"http://127.0.0.1:{server.port}")
        )
        assert str(server.port) in servers and str(https_port) in servers  # every replacement applied
        conf = tmp_path / "nginx.conf"
        conf.write_text(
            f"daemon off; pid {tmp_path}/nginx.pid; error_log {tmp_path}/error.log; worker_processes 1;\n"
            "events { worker_connections 64; }\n"
            f"http {{ access_log off; client_body_temp_path {tmp_path}/body; proxy_temp_path {tmp_path}/proxy;\n"
            f"{servers}\n}}\n"
        )
        nginx = subprocess.Popen([NGINX, "-p", str(tmp_path), "-c", str(conf)], stderr=subprocess.PIPE, text=True)
        try:
            for _ in range(200):  # bounded wait for the TLS port
                try:
                    socket.create_connection(("127.0.0.1", https_port), timeout=1).close()
                    break
                except OSError:
                    assert nginx.poll() is None, nginx.stderr.read()
                    time.sleep(0.05)
            # as a labeller's browser: it reaches 127.0.0.1 under the public name (self-signed: not verified here)
            with httpx.Client(base_url=f"https://127.0.0.1:{https_port}", verify=False, timeout=30) as client:
                client.headers["Host"] = f"label.example.org:{https_port}"
                response = client.post("/login", data={"token": ALICE}, headers={"Origin": public})
                assert response.status_code == 303, response.text
                cookie = response.headers["set-cookie"].lower()
                assert "secure" in cookie and "httponly" in cookie  # the app saw https through the proxy
                state = client.get("/api/state")
                assert state.status_code == 200 and state.json()["labeller"] == "alice"
                refused = client.post("/login", data={"token": ALICE}, headers={"Origin": "https://evil.example"})
                assert refused.status_code == 403
                plain = client.post(
                    "/login", data={"token": ALICE}, headers={"Origin": public.replace("https", "http")}
                )
                assert plain.status_code == 403  # the scheme is compared too
            redirect = httpx.get(f"http://127.0.0.1:{http_port}/", headers={"Host": "label.example.org"})
            assert redirect.status_code == 301 and redirect.headers["location"].startswith("https://label.example.org")
        finally:
            nginx.terminate()
            nginx.wait(timeout=30)
