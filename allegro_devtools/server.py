"""A real ComfyUI server (main.py --cpu) on a free loopback port, driven over its HTTP API."""
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import requests

from .runtime import comfyui_dir, prepare_base_dir


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ComfyServer:
    def __init__(self, base_dir, extra_args=(), log_path=None, cpu=True):
        self.base_dir = prepare_base_dir(base_dir)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = Path(log_path or self.base_dir / f"server-{self.port}.log")
        self.extra_args = list(extra_args) + (["--cpu"] if cpu else [])
        self.process = None

    def start(self, timeout=180, tries=3):
        cmd = [sys.executable, "main.py", "--listen", "127.0.0.1", "--port", str(self.port),
               "--base-directory", str(self.base_dir), "--disable-auto-launch", *self.extra_args]
        self._log = open(self.log_path, "ab")
        self.process = subprocess.Popen(cmd, cwd=comfyui_dir(), stdout=self._log, stderr=subprocess.STDOUT,
                                        env={**os.environ, "PYTHONUNBUFFERED": "1"}, start_new_session=True)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.process.poll() is not None:
                if tries > 1 and "address already in use" in self.log_tail().lower():
                    # Another process (a test run beside this one) took the port between free_port() and
                    # the server's bind: take another.
                    self._log.close()
                    self.port = free_port()
                    self.url = f"http://127.0.0.1:{self.port}"
                    return self.start(timeout, tries - 1)
                raise RuntimeError(f"ComfyUI exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                if requests.get(self.url + "/system_stats", timeout=2).ok:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"ComfyUI did not answer within {timeout}s:\n{self.log_tail()}")

    def stop(self):
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        if getattr(self, "_log", None):
            self._log.close()

    def log_tail(self, chars=6000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    # --- HTTP API -------------------------------------------------------------------------
    def get(self, path, **kwargs):
        response = requests.get(self.url + path, timeout=30, **kwargs)
        response.raise_for_status()
        return response.json()

    def object_info(self) -> dict:
        return self.get("/object_info")

    def post_prompt(self, prompt: dict, workflow: dict | None = None) -> dict:
        """POST /prompt; returns the JSON answer (prompt_id, or error and node_errors with status 400)."""
        body = {"prompt": prompt, "client_id": str(uuid.uuid4())}
        if workflow is not None:
            body["extra_data"] = {"extra_pnginfo": {"workflow": workflow}}
        response = requests.post(self.url + "/prompt", data=json.dumps(body), timeout=60)
        answer = response.json()
        answer["http_status"] = response.status_code
        return answer

    def queue_prompt(self, prompt: dict, workflow: dict | None = None) -> str:
        answer = self.post_prompt(prompt, workflow)
        if answer["http_status"] != 200:
            raise AssertionError(f"/prompt refused the graph: {json.dumps(answer, indent=1)[:4000]}")
        return answer["prompt_id"]

    def history(self, prompt_id: str) -> dict | None:
        return self.get(f"/history/{prompt_id}").get(prompt_id)

    def wait(self, prompt_id: str, timeout=600) -> dict:
        """Wait for a prompt to finish; returns its /history entry (status, outputs, messages)."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            entry = self.history(prompt_id)
            if entry is not None and entry.get("status", {}).get("completed") is not None:
                if entry["status"].get("status_str") in ("success", "error"):
                    return entry
            if self.process.poll() is not None:
                raise RuntimeError(f"ComfyUI died while running {prompt_id}:\n{self.log_tail()}")
            time.sleep(0.2)
        raise TimeoutError(f"prompt {prompt_id} did not finish in {timeout}s:\n{self.log_tail()}")

    def run(self, prompt: dict, timeout=600) -> dict:
        return self.wait(self.queue_prompt(prompt), timeout)

    def is_running(self, prompt_id: str) -> bool:
        running = self.get("/queue").get("queue_running", [])
        return any(item[1] == prompt_id for item in running)

    def interrupt(self):
        requests.post(self.url + "/interrupt", timeout=10).raise_for_status()


def history_messages(entry: dict) -> dict:
    """The status messages of a /history entry as {event: data}."""
    return {event: data for event, data in entry.get("status", {}).get("messages", [])}
