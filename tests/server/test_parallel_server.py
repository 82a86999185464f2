"""Allegro Multi-GPU in a live `main.py --cpu` server of its own: the package starts its worker processes
on first use and keeps them; the latent equals the single-process one; Cancel stops every rank and the
next run is exact; a worker killed mid-run is one clear error, the server keeps serving and the next run
starts new workers; stopping the server ends the workers."""
import json
import os
import signal
import time
import uuid
from pathlib import Path

import pytest
import requests
import torch
from safetensors.torch import load_file

import bad_inputs
from error_matrix_support import T2V, assert_readable, empty_video, t2v

pytestmark = [pytest.mark.server, pytest.mark.slow]

TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def server(base_dir, tiny_models):
    from allegro_devtools.server import ComfyServer
    server = ComfyServer(base_dir, extra_args=["--cache-none"]).start()
    server.events = bad_inputs.EventListener(server.url, str(uuid.uuid4())).start()
    yield server
    server.events.stop()
    server.stop()


def graph(tag: str, gpus=2, steps=2) -> dict:
    nodes = t2v(model=T2V, latent=empty_video(width=64, height=48, length=16), steps=steps)
    del nodes["show"]
    if gpus > 1:
        nodes["multi"] = {"class_type": "AllegroVideo_MultiGPU",
                          "inputs": {"model": ["dit", 0], "gpus": gpus, "cfg_parallel": True, "devices": ""}}
        nodes["sample"]["inputs"]["model"] = ["multi", 0]
    nodes["save"] = {"class_type": "SaveLatent",
                     "inputs": {"samples": ["sample", 0], "filename_prefix": f"parallel_server/{tag}"}}
    return nodes


def submit(server, nodes: dict) -> str:
    body = {"prompt": nodes, "client_id": server.events.client_id}
    answer = requests.post(server.url + "/prompt", data=json.dumps(body), timeout=60).json()
    assert "prompt_id" in answer, answer
    return answer["prompt_id"]


def latent(server, entry: dict) -> torch.Tensor:
    assert entry["status"]["status_str"] == "success", json.dumps(entry["status"])[-3000:]
    saved = entry["outputs"]["save"]["latents"][0]
    return load_file(Path(server.base_dir) / "output" / saved["subfolder"] / saved["filename"])["latent_tensor"]


def workers(server) -> list[int]:
    """Pids of the server's Allegro worker processes (children of the server running allegro.parallel_worker)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            command = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if stat[0] != "Z" and int(stat[1]) == server.process.pid and b"allegro.parallel_worker" in command:
            found.append(int(entry.name))
    return sorted(found)


def run_until_working(server, nodes: dict) -> str:
    """Queue the graph and return once the sampler has finished a step (the ranks are really working)."""
    server.events.drain()
    prompt_id = submit(server, nodes)
    server.events.wait_for(lambda e: e.get("type") == "progress" and e["data"].get("prompt_id") == prompt_id
                           and e["data"].get("node") == "sample" and e["data"]["value"] >= 1, timeout=180)
    return prompt_id


def test_the_server_runs_multi_gpu_graphs_survives_a_dead_worker_and_ends_its_workers(server):
    single = latent(server, server.run(graph("single", gpus=1), timeout=300))
    assert workers(server) == []                                   # nothing started before it is needed
    parallel = latent(server, server.run(graph("parallel"), timeout=300))
    assert ((parallel - single).norm() / single.norm()).item() <= TOLERANCE
    first = workers(server)
    assert len(first) == 1                                         # 2 ranks: the server and one worker

    # Cancel while the ranks work: interrupted, no output, the same workers go on and the next run is exact.
    prompt_id = run_until_working(server, graph("cancelled", steps=1000))
    server.interrupt()
    entry = server.wait(prompt_id, timeout=120)
    messages = dict(entry["status"]["messages"])
    assert "execution_interrupted" in messages and "execution_error" not in messages, entry["status"]
    assert workers(server) == first
    assert latent(server, server.run(graph("after_cancel"), timeout=300)).equal(parallel)

    # A worker killed mid-run: an error naming it if it dies during a step, a new worker at the next step if it
    # dies between steps; either way the server goes on with a new worker.
    prompt_id = run_until_working(server, graph("killed", steps=1000))
    running = workers(server)                                      # the worker of this run (the one asserted above)
    assert len(running) == 1
    os.kill(running[0], signal.SIGKILL)
    entry = server.wait(prompt_id, timeout=120)
    messages = dict(entry["status"]["messages"])
    if "execution_error" in messages:                              # it died during a step: one readable error
        message = messages["execution_error"]["exception_message"]
        assert_readable(message)
        assert "Allegro multi-GPU failed" in message and "rank 1 (cpu)" in message and "code -9" in message, message
        assert "the next run starts new ones" in message
    else:                                                          # between steps: the next step started a new one
        assert "execution_success" in messages, entry["status"]
        assert workers(server) != running
    assert latent(server, server.run(graph("after_kill"), timeout=300)).equal(parallel)
    second = workers(server)
    assert len(second) == 1 and second != running

    # Stopping the server ends its workers.
    server.events.stop()
    server.stop()
    deadline = time.monotonic() + 60                               # the workers end on their own once rank 0 is gone
    while time.monotonic() < deadline and any(Path(f"/proc/{pid}").exists() and not zombie(pid) for pid in second):
        time.sleep(0.2)
    assert not any(Path(f"/proc/{pid}").exists() and not zombie(pid) for pid in second)


def zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return False
