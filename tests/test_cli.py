"""``parley serve`` and ``parley worker`` as an operator runs them: embedded Valkey, the example agents,
SIGTERM to stop."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiohttp.test_utils import unused_port

REPO = Path(__file__).resolve().parent.parent


@dataclass
class Running:
    url: str
    stderr: str = ""
    returncode: int | None = None


def operator_env(port: int, data_dir: Path, **extra: str) -> dict[str, str]:
    """The environment of an operator's shell: none of the test run's settings, the example agents."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS_URL", "PARLEY_", "TWILIO_", "OPENAI_"))}
    env.update({"PARLEY_PORT": str(port), "PARLEY_DATA_DIR": str(data_dir),
                "PARLEY_AGENTS_DIR": str(REPO / "agents"), "PARLEY_DRAIN_TIMEOUT_S": "1", **extra})
    return env


@contextmanager
def parley(command: str, data_dir: Path, **extra_env: str) -> Iterator[Running]:
    """Run ``python -m service COMMAND`` with the example agents and no Redis, until it is ready; SIGTERM after."""
    port = unused_port()
    env = operator_env(port, data_dir, **extra_env)
    process = subprocess.Popen([sys.executable, "-m", "service", *command.split()], cwd=REPO, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    running = Running(url=f"http://127.0.0.1:{port}")
    try:
        deadline = time.monotonic() + 60
        status = None
        while time.monotonic() < deadline and status != 200:
            try:
                with urllib.request.urlopen(running.url + "/readyz", timeout=1) as response:
                    status = response.status
            except OSError:
                time.sleep(0.2)
        assert status == 200, f"parley {command} did not become ready"
        yield running
    finally:
        process.send_signal(signal.SIGTERM)
        _out, running.stderr = process.communicate(timeout=30)
        running.returncode = process.returncode


@pytest.mark.parametrize("processes", ["1", "2"])   # one process; a supervisor, a web and a worker child
def test_serve_starts_with_embedded_valkey_and_stops_cleanly(tmp_path: Path, processes: str) -> None:
    with parley(f"serve --processes {processes}", tmp_path / "var") as running:
        assert (tmp_path / "var" / "valkey").is_dir()
    assert running.returncode == 0, running.stderr
    assert "this run's API key is: key_" in running.stderr
    assert '"event":"embedded valkey stopped"' in running.stderr


def test_worker_runs_turns_and_serves_only_health_checks(tmp_path: Path) -> None:
    with parley("worker", tmp_path / "var", PARLEY_API_KEY="operator-key") as running:
        request = urllib.request.Request(running.url + "/twilio/sms", data=b"", method="POST")
        try:
            urllib.request.urlopen(request, timeout=2)
            raise AssertionError("parley worker answered the Twilio webhook")
        except urllib.error.HTTPError as exc:
            assert exc.code == 404
    assert running.returncode == 0, running.stderr
    assert "API key" not in running.stderr


@pytest.mark.parametrize("command", ["worker", "serve --web-only"])
def test_a_split_process_without_api_keys_refuses_to_start(tmp_path: Path, command: str) -> None:
    # Its made-up key would sign events that no receiver can verify, and differ from the other processes' key.
    done = subprocess.run([sys.executable, "-m", "service", *command.split()], cwd=REPO, capture_output=True,
                          text=True, timeout=60, env=operator_env(unused_port(), tmp_path / "var"))
    assert done.returncode != 0
    assert "need API keys: set PARLEY_API_KEY (or PARLEY_API_KEYS" in done.stderr, done.stderr
    assert not (tmp_path / "var" / "valkey").exists(), "it started Redis before refusing"


def test_serve_web_only_with_scoped_keys_starts(tmp_path: Path) -> None:
    keys = '{"ops-admin": "admin", "ops-webhook": "webhook"}'
    with parley("serve --web-only", tmp_path / "var", PARLEY_API_KEYS=keys) as running:
        request = urllib.request.Request(running.url + "/list-chat-agents",
                                         headers={"Authorization": "Bearer ops-admin"})
        with urllib.request.urlopen(request, timeout=5) as response:
            assert response.status == 200
    assert running.returncode == 0, running.stderr
    assert "API key is" not in running.stderr
