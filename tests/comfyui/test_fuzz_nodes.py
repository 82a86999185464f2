"""Every input of every node of the package, fuzzed with hostile values of its type (hypothesis) through
ComfyUI's executor: NaN, ±inf, 0, negative, huge numbers; empty, huge and path-like text; values of
other kinds linked from an "any" output; IMAGE and LATENT tensors of wrong shapes, empty axes and
NaN/inf/huge fills; names of wrong-kind files in the model folders and wrong-kind training lists; training
sets linked with wrong kinds. Each run either works or ends in a clear message (a checked error, no raw
Python/torch exception text, short); nothing is written to the output or model folders, and nothing but
complete entries to the training dataset's cache. A smaller part goes through a live server, which must keep answering.

Bounded for CI (2 cores, 3 ComfyUI versions): a fixed number of examples per node, derandomised so
every run draws the same cases, no deadline. The cases run are written to test-output/fuzz_nodes.md.
"""
import json
import re

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import bad_inputs
import hostile_values as hv

pytestmark = pytest.mark.slow

EXAMPLES_PER_NODE = 8
SERVER_EXAMPLES = 8
FUZZ = settings(max_examples=EXAMPLES_PER_NODE, deadline=None, derandomize=True, database=None,
                suppress_health_check=list(HealthCheck))
seen: list[tuple[str, str, str, str, str]] = []          # (node, input, value, outcome, message)


@pytest.fixture(scope="module")
def fuzz_files(comfy, tiny_models, test_output):
    models, inputs = comfy.base_dir / "models", comfy.base_dir / "input"
    hv.remove_files(models, inputs)
    files = hv.write_files(models, tiny_models)
    yield files
    hv.remove_files(models, inputs)
    lines = ["# Fuzzed node inputs", "", f"Written by tests/comfyui/test_fuzz_nodes.py: {len(seen)} cases.", "",
             "| node | input | value | outcome | message |", "|---|---|---|---|---|"]
    for row in seen:
        lines.append("| " + " | ".join(cell.replace("|", "/").replace("\n", " ")[:300] for cell in row) + " |")
    (test_output / "fuzz_nodes.md").write_text("\n".join(lines) + "\n")


def package_nodes(comfy) -> dict:
    return {node_id: cls for node_id, cls in comfy.node_types.items() if node_id.startswith(hv.NODE_PREFIX)}


NODE_IDS = ["AllegroVideo_ModelLoader", "AllegroVideo_VAELoader", "AllegroVideo_T5Loader", "AllegroVideo_TextEncode",
            "AllegroVideo_EmptyLatentVideo", "AllegroVideo_Sampler", "AllegroVideo_VAEDecode", "AllegroVideo_VAEEncode",
            "AllegroVideo_TI2VConditioning", "AllegroVideo_StepCache", "AllegroVideo_LoraLoader",
            "AllegroVideo_TI2VKeyframes", "AllegroVideo_TI2VContinue", "AllegroVideo_JoinClips",
            "AllegroVideo_MultiGPU", "AllegroVideo_BlockSwap", "AllegroVideo_PeRFlowSampler",
            "AllegroVideo_TrainLoRA", "AllegroVideo_TrainingClip", "AllegroVideo_TrainingDataset",
            "AllegroVideo_PAB"]


def test_the_fuzzed_nodes_are_every_node_and_each_runs_with_good_inputs(comfy, fuzz_files):
    assert sorted(package_nodes(comfy)) == sorted(NODE_IDS)
    for node_id in NODE_IDS:
        result = comfy.run(hv.working_graph(node_id, comfy.node_types[node_id]), fresh=False)
        assert result.status == "success", (node_id, result.error)


CACHE_ENTRY = re.compile(r"[0-9a-f]{32}\.safetensors")      # a complete dataset cache entry (renamed when written)


def listing(comfy) -> set:
    """Files in output/ and models/, and any but complete entries in the training dataset caches."""
    caches = {name for name in bad_inputs.listing(comfy.base_dir / "input")
              if "/.allegro_cache/" in f"/{name}" and not CACHE_ENTRY.fullmatch(name.rsplit("/", 1)[-1])}
    return bad_inputs.listing(comfy.base_dir / "output") | bad_inputs.listing(comfy.base_dir / "models") | caches


def check_case(comfy, node_id: str, name: str, how: str, value) -> None:
    graph = hv.with_value(hv.working_graph(node_id, comfy.node_types[node_id]), name, how, value)
    before = listing(comfy)
    ok, error, node_errors = comfy.validate(graph)
    if not ok:
        details = "; ".join(f"{e['message']}: {e['details']}" for entry in node_errors.values()
                            for e in entry.get("errors", [])) or json.dumps(error)
        outcome, message, problem = "refused by /prompt validation", details, None
        problem = "longer than the limit" if len(details) > hv.LONGEST_MESSAGE else None
    else:
        result = comfy.run(graph, fresh=False)
        if result.status == "success":
            outcome, message, problem = "ran", "", None
        else:
            outcome, message = f"error at {result.error['node_type']}", result.error["exception_message"]
            problem = hv.unclear(result.error["exception_type"], message)
    seen.append((node_id, name, f"{how}: {hv.describe(value)}", outcome, message))
    assert problem is None, f"{node_id}.{name} = {how} {hv.describe(value)}: {problem}:\n{message[:3000]}"
    assert listing(comfy) == before, f"{node_id}.{name} = {hv.describe(value)} left files behind"


@pytest.mark.parametrize("node_id", NODE_IDS)
def test_hostile_values_give_clear_messages_and_write_nothing(comfy, fuzz_files, node_id):
    inputs = {name: hv.input_kind(kind) for name, (kind, _) in hv.node_inputs(comfy.node_types[node_id]).items()}
    fuzzable = {name: hv.hostile(kind, fuzz_files.get(name, [])) for name, kind in inputs.items()}
    fuzzable = {name: strategy for name, strategy in fuzzable.items() if strategy is not None}
    assert fuzzable, f"{node_id} has no input to fuzz"
    cases = st.sampled_from(sorted(fuzzable)).flatmap(lambda name: st.tuples(st.just(name), fuzzable[name]))

    @FUZZ
    @given(cases)
    def run(case):
        name, (how, value) = case
        check_case(comfy, node_id, name, how, value)
    run()


def test_the_count_of_fuzzed_cases(fuzz_files):
    """Runs after the fuzzing above (file order): every node got its examples."""
    fuzzed_nodes = {node for node, *_ in seen}
    assert fuzzed_nodes == set(NODE_IDS) and len(seen) >= len(NODE_IDS) * EXAMPLES_PER_NODE // 2, len(seen)
    print(f"fuzzed {len(seen)} cases over {len(fuzzed_nodes)} nodes")


# --- through a live server ----------------------------------------------------------------------------------

SERVER_CASES = st.sampled_from([
    ("AllegroVideo_VAEDecode", "samples"), ("AllegroVideo_TI2VConditioning", "first_frame"),
    ("AllegroVideo_TI2VKeyframes", "indices"), ("AllegroVideo_MultiGPU", "devices"),
    ("AllegroVideo_Sampler", "cfg"), ("AllegroVideo_EmptyLatentVideo", "width"),
    ("AllegroVideo_ModelLoader", "model_name"), ("AllegroVideo_LoraLoader", "strength_model")])


def test_the_live_server_keeps_answering_through_hostile_prompts(comfy, comfy_server, fuzz_files):
    url = comfy_server.url
    answers = []

    def values(case):
        kind = hv.input_kind(hv.node_inputs(comfy.node_types[case[0]])[case[1]][0])
        return st.tuples(st.just(case), hv.hostile(kind, fuzz_files.get(case[1], [])))

    @settings(max_examples=SERVER_EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(SERVER_CASES.flatmap(values))
    def run(drawn):
        (node_id, name), (how, value) = drawn
        graph = hv.with_value(hv.working_graph(node_id, comfy.node_types[node_id]), name, how, value)
        response = requests.post(url + "/prompt", data=json.dumps({"prompt": graph}), timeout=60)
        message, outcome = "", f"/prompt {response.status_code}"
        if response.status_code == 200:
            entry = comfy_server.wait(response.json()["prompt_id"], timeout=120)
            error = dict(entry["status"]["messages"]).get("execution_error")
            if error is not None:
                problem = hv.unclear(error["exception_type"], error["exception_message"])
                assert problem is None, f"{node_id}.{name} = {hv.describe(value)}: {problem}"
                outcome, message = f"error at {error['node_type']}", error["exception_message"]
        else:
            assert response.status_code == 400, response.text[:2000]
            assert len(response.text) < 20 * hv.LONGEST_MESSAGE, len(response.text)
        assert requests.get(url + "/queue", timeout=10).status_code == 200       # still answering
        answers.append(outcome)
        seen.append((node_id, name, f"server {how}: {hv.describe(value)}", outcome, message))
    run()
    assert len(answers) == SERVER_EXAMPLES
    good = hv.working_graph("AllegroVideo_Sampler", comfy.node_types["AllegroVideo_Sampler"])
    prompt_id = requests.post(url + "/prompt", data=json.dumps({"prompt": good}), timeout=60).json()["prompt_id"]
    assert comfy_server.wait(prompt_id, timeout=120)["status"]["status_str"] == "success"


def test_every_wrong_kind_file_is_tried(comfy, fuzz_files):
    """The draws above pick some of the wrong-kind files; here each one goes into each input that lists it."""
    for node_id in NODE_IDS:
        for name in hv.node_inputs(comfy.node_types[node_id]):
            for file_name in fuzz_files.get(name, []):
                check_case(comfy, node_id, name, "widget", file_name)
