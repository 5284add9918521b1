"""``parley serve`` as an operator runs it: embedded Valkey, the example agents, SIGTERM to stop."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from aiohttp.test_utils import unused_port

REPO = Path(__file__).resolve().parent.parent


def test_serve_starts_with_embedded_valkey_and_stops_cleanly(tmp_path: Path) -> None:
    port = unused_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS_URL", "PARLEY_", "TWILIO_", "OPENAI_"))}
    env.update({"PARLEY_PORT": str(port), "PARLEY_DATA_DIR": str(tmp_path / "var"),
                "PARLEY_AGENTS_DIR": str(REPO / "agents"), "PARLEY_DRAIN_TIMEOUT_S": "1"})
    process = subprocess.Popen([sys.executable, "-m", "service", "serve"], cwd=REPO, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        status = None
        while time.monotonic() < deadline and status != 200:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as response:
                    status = response.status
            except OSError:
                time.sleep(0.2)
        assert status == 200, "parley serve did not become ready"
        assert (tmp_path / "var" / "valkey").is_dir()
    finally:
        process.send_signal(signal.SIGTERM)
        _out, err = process.communicate(timeout=30)
    assert process.returncode == 0, err
    assert "this run's API key is: key_" in err
    assert '"event":"embedded valkey stopped"' in err


def test_worker_runs_turns_and_serves_only_health_checks(tmp_path: Path) -> None:
    port = unused_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS_URL", "PARLEY_", "TWILIO_", "OPENAI_"))}
    env.update({"PARLEY_PORT": str(port), "PARLEY_DATA_DIR": str(tmp_path / "var"),
                "PARLEY_AGENTS_DIR": str(REPO / "agents"), "PARLEY_DRAIN_TIMEOUT_S": "1"})
    process = subprocess.Popen([sys.executable, "-m", "service", "worker"], cwd=REPO, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        status = None
        while time.monotonic() < deadline and status != 200:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as response:
                    status = response.status
            except OSError:
                time.sleep(0.2)
        assert status == 200, "parley worker did not become ready"
        request = urllib.request.Request(f"http://127.0.0.1:{port}/twilio/sms", data=b"", method="POST")
        try:
            urllib.request.urlopen(request, timeout=2)
            raise AssertionError("parley worker answered the Twilio webhook")
        except urllib.error.HTTPError as exc:
            assert exc.code == 404
    finally:
        process.send_signal(signal.SIGTERM)
        _out, err = process.communicate(timeout=30)
    assert process.returncode == 0, err
    assert "API key" not in err
