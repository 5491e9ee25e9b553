"""Keep the output of a command (a new token) in a Kubernetes Secret, once.

    python bootstrap.py SECRET_NAME -- hpo token create --team T --name kubernetes-bootstrap

When SECRET_NAME already exists nothing runs: the Job may be applied, retried or re-created any
number of times and the team gets one admin token. Otherwise the command runs, its standard
output (the token, printed once by `hpo token create`) goes into the Secret's key `token`, and
its standard error (which names the token's prefix, never the token) goes to the log.

It talks to the Kubernetes API with the pod's service-account token and CA, through urllib,
because the api image has Python but no kubectl. BOOTSTRAP_SERVICEACCOUNT_DIR points elsewhere
than the pod's mounted account, to run it outside a pod.
"""

from __future__ import annotations

import json
import os
import re
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

ACCOUNT = Path(os.environ.get("BOOTSTRAP_SERVICEACCOUNT_DIR", "/var/run/secrets/kubernetes.io/serviceaccount"))
TOKEN_SHAPE = re.compile(r"hpo_[0-9a-f]{8}_\S+")


class Kubernetes:
    def __init__(self) -> None:
        host = os.environ["KUBERNETES_SERVICE_HOST"]
        host = f"[{host}]" if ":" in host else host
        self.base = f"https://{host}:{os.environ.get('KUBERNETES_SERVICE_PORT', '443')}"
        self.namespace = (ACCOUNT / "namespace").read_text().strip()
        self.bearer = (ACCOUNT / "token").read_text().strip()
        self.tls = ssl.create_default_context(cafile=str(ACCOUNT / "ca.crt"))

    def call(self, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
        request = urllib.request.Request(
            self.base + path,
            method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={"Authorization": f"Bearer {self.bearer}", "Content-Type": "application/json", "Accept": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, context=self.tls, timeout=30) as response:
                return response.status, json.loads(response.read() or b"{}")
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"{}")

    def secrets(self) -> str:
        return f"/api/v1/namespaces/{self.namespace}/secrets"


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[1] != "--":
        print("usage: bootstrap.py SECRET_NAME -- COMMAND ...", file=sys.stderr)
        return 2
    name, command = argv[0], argv[2:]
    kube = Kubernetes()
    status, answer = kube.call("GET", f"{kube.secrets()}/{name}")
    if status == 200:
        print(f"bootstrap: secret {kube.namespace}/{name} exists; nothing to do")
        return 0
    if status != 404:
        print(f"bootstrap: reading secret {name} answered {status}: {answer.get('message', answer)}", file=sys.stderr)
        return 1
    done = subprocess.run(command, stdout=subprocess.PIPE, text=True)
    if done.returncode != 0:
        print(f"bootstrap: {command[0]} exited {done.returncode}", file=sys.stderr)
        return done.returncode
    token = done.stdout.strip()
    if not TOKEN_SHAPE.fullmatch(token):
        print("bootstrap: the command did not print one token on standard output", file=sys.stderr)
        return 1
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {"name": name, "labels": {"app.kubernetes.io/part-of": "hpo", "app.kubernetes.io/component": "bootstrap"}},
        "stringData": {"token": token},
    }
    status, answer = kube.call("POST", kube.secrets(), secret)
    if status == 201:
        print(f"bootstrap: token {token[:12]} stored in secret {kube.namespace}/{name}")
        return 0
    # The token exists in the database but nobody has it: say which one to revoke.
    print(
        f"bootstrap: creating secret {name} answered {status}: {answer.get('message', answer)}; "
        f"token {token[:12]} was created but not stored: revoke it (hpo token revoke {token[:12]})",
        file=sys.stderr,
    )
    # 409: another run stored its token first, which is what this Job is for.
    return 0 if status == 409 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
