"""Run moto's S3 emulation as a real HTTP server in a subprocess.

``with moto_server() as endpoint_url:`` starts ``python -m moto.server`` on a
free 127.0.0.1 port, waits until it answers HTTP, yields
``http://127.0.0.1:PORT`` and stops the process on exit. A real server (rather
than ``mock_aws`` patching) exercises aiobotocore's actual HTTP stack, timeouts
and error paths.

Clients talking to it need AWS credentials and a region in the environment;
moto accepts any. Callers' environments should have ``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY`` (e.g. ``test``) and ``AWS_DEFAULT_REGION``
(``us-east-1``); :func:`moto_server` sets those to test values in
``os.environ`` if they are unset, and always passes them to the subprocess.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

__all__ = ["TEST_AWS_ENV", "ensure_test_aws_env", "free_port", "moto_server"]

TEST_AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "test",
    "AWS_SECRET_ACCESS_KEY": "test",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def ensure_test_aws_env() -> None:
    """Set the fake AWS credentials/region in os.environ where unset."""
    for k, v in TEST_AWS_ENV.items():
        os.environ.setdefault(k, v)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (also usable as a closed port)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as resp:
            resp.read()
        return True
    except urllib.error.HTTPError:
        return True  # any HTTP response means the server is up
    except OSError:
        return False


@contextlib.contextmanager
def moto_server(*, start_timeout: float = 30.0) -> Iterator[str]:
    """Start moto's server in a subprocess; yield its endpoint URL; stop it."""
    ensure_test_aws_env()
    env = dict(os.environ)
    env.update({k: env.get(k) or v for k, v in TEST_AWS_ENV.items()})
    with tempfile.TemporaryFile() as log:
        for _attempt in range(3):  # the free port may be taken between probe and bind
            port = free_port()
            url = f"http://127.0.0.1:{port}"
            proc = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                stdin=subprocess.DEVNULL,
                stdout=log,  # a file, not a pipe: a full pipe would stall the server
                stderr=subprocess.STDOUT,
                env=env,
            )
            try:
                deadline = time.monotonic() + start_timeout
                while proc.poll() is None and time.monotonic() < deadline:
                    if _answers(url + "/moto-api/"):
                        break
                    time.sleep(0.05)
                else:
                    if proc.poll() is None:
                        raise RuntimeError(f"moto server on {url} did not answer within {start_timeout} s")
                    continue  # exited early (port clash?); try another port
                yield url
                return
            finally:
                if proc.poll() is None:
                    proc.terminate()
                    try:
                        proc.wait(timeout=5)
                    except subprocess.TimeoutExpired:
                        proc.kill()
                        proc.wait()
        log.seek(0)
        tail = log.read()[-2000:].decode(errors="replace")
        raise RuntimeError(f"moto server failed to start (python -m moto.server); its output:\n{tail}")
