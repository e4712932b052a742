"""A real S3 API on 127.0.0.1 for the object-storage tests: moto's server (moto + flask + flask-cors, in the dev
extra), started on a free port and stopped after; nothing leaves the loopback interface.

    with s3_server(tmp_home) as env:      # env: AWS_ENDPOINT_URL and test credentials, also set in os.environ
        ...                       # s3://genlip-test/... exists (BUCKET), empty

Where moto or s3fs is not installed the tests that use it are skipped (`require_s3_stack`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
from collections.abc import Iterator

import lightning as L
import pytest

BUCKET = "genlip-test"


def require_s3_stack() -> None:
    """Skip the calling test (module) unless the server and the client libraries are installed."""
    pytest.importorskip("moto.server", reason="moto is not installed (pip install -e '.[dev]')")
    pytest.importorskip("s3fs", reason="s3fs is not installed (pip install -e '.[s3]')")
    pytest.importorskip("flask_cors", reason="moto's server needs flask and flask-cors (pip install -e '.[dev]')")


def client_env(endpoint: str, tmp_home: str) -> dict[str, str]:
    """What a process needs to reach the server and nothing else: endpoint, dummy credentials, no AWS config files
    of the machine, and no instance-metadata lookups (which would leave loopback)."""
    return {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_CONFIG_FILE": os.path.join(tmp_home, "aws-config-absent"),
        "AWS_SHARED_CREDENTIALS_FILE": os.path.join(tmp_home, "aws-credentials-absent"),
    }


@contextlib.contextmanager
def s3_server(tmp_home: str) -> Iterator[dict[str, str]]:
    """Start the server, create BUCKET, set the client environment in os.environ; undo it all on exit."""
    require_s3_stack()
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # a line per request (404s included) otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = client_env(f"http://{host}:{port}", tmp_home)
    with pytest.MonkeyPatch.context() as patch:
        for key, value in env.items():
            patch.setenv(key, value)
        patch.delenv("AWS_PROFILE", raising=False)
        # optimize's staging folders are keyed by URL: a fresh cache, so no earlier session's run is found there
        patch.setenv("GENLIP_CACHE", os.path.join(tmp_home, "genlip-cache"))
        patch.delenv("AWS_SESSION_TOKEN", raising=False)
        import boto3

        boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"]).create_bucket(Bucket=BUCKET)
        try:
            yield env
        finally:
            server.stop()


class SigkillAtStep(L.Callback):
    """Kills its own process (SIGKILL: no cleanup, no final checkpoint) when training reaches `step`: the crash a
    resume must survive. Named by class path in the killed `genlip fit` (tests/ is on its PYTHONPATH)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step >= self.step:
            os.kill(os.getpid(), signal.SIGKILL)
