"""ComfyUI's own executor, run inside the test process.

ComfyUI keeps global state (its argument namespace, folder_paths, the node registry), so one
runtime serves a whole pytest session: `InProcessComfy.boot(base_dir)` once, then `run(prompt)`.
"""
import asyncio
import inspect
import sys
import uuid
from dataclasses import dataclass, field

from .runtime import REPO_ROOT, comfyui_dir, prepare_base_dir


@dataclass
class RunResult:
    status: str                      # "success", "error" or "interrupted"
    outputs: dict                    # node id -> tuple of the node's return values
    ui: dict                         # node id -> the node's UI output (what /history shows)
    messages: list = field(default_factory=list)   # (event, data) as the web client would get them
    progress: list = field(default_factory=list)   # (node id, value, total, has_preview)

    def output(self, node_id: str, index: int = 0):
        """The value of one output of a node (ComfyUI stores each output as a list of batch items)."""
        value = self.outputs[node_id][index]
        return value[0] if isinstance(value, list) and len(value) == 1 else value

    @property
    def error(self) -> dict | None:
        for event, data in self.messages:
            if event == "execution_error":
                return data
        return None


class _ServerStub:
    """What PromptExecutor and the progress handlers need of server.PromptServer."""

    def __init__(self):
        self.client_id = None
        self.last_node_id = None
        self.last_prompt_id = None
        self.sockets_metadata = {}
        self.messages = []

    def send_sync(self, event, data, sid=None):
        self.messages.append((event, data))

    def queue_updated(self):
        pass


class InProcessComfy:
    _instance = None

    @classmethod
    def boot(cls, base_dir):
        if cls._instance is None:
            cls._instance = cls(base_dir)
        return cls._instance

    def __init__(self, base_dir):
        base_dir = prepare_base_dir(base_dir)
        # ComfyUI's top-level modules (nodes, utils, execution) must win over same-named folders
        # of this repository, which pytest and `python -m` from the repository root put on sys.path.
        shadowing = getattr(sys.modules.get("nodes"), "__file__", None) or ""
        if shadowing.startswith(str(REPO_ROOT)):
            raise RuntimeError(f"`nodes` was imported from this repository ({shadowing}) before ComfyUI booted")
        sys.path.insert(0, str(comfyui_dir()))
        from comfy.cli_args import args
        args.cpu = True                          # before comfy.model_management is imported
        args.base_directory = str(base_dir)      # before folder_paths is imported
        args.disable_auto_launch = True
        import utils.extra_config  # noqa: F401  (else `utils` resolves to comfy/utils.py)
        import comfy.utils
        import comfy.model_management
        import execution
        import nodes

        self.base_dir = base_dir
        self.nodes = nodes
        self.execution = execution
        self.model_management = comfy.model_management
        asyncio.run(nodes.init_extra_nodes(init_custom_nodes=True, init_api_nodes=False))
        self.server = _ServerStub()
        self.progress = []
        comfy.utils.set_progress_bar_global_hook(self._progress_hook)
        self.executor = self.new_executor(execution.CacheType.CLASSIC)

    def new_executor(self, cache_type):
        """A PromptExecutor with main.py's cache settings turned off. The keys are those main.py passes
        (0.33 added "ram_inactive", which its executor reads unconditionally); versions ignore keys they
        do not read."""
        return self.execution.PromptExecutor(self.server, cache_type=cache_type,
                                             cache_args={"lru": 0, "ram": 0, "ram_inactive": 0})

    def _progress_hook(self, value, total, preview_image, prompt_id=None, node_id=None):
        # As main.py's hook: every progress update is also a chance to stop.
        self.model_management.throw_exception_if_processing_interrupted()
        self.progress.append((self.server.last_node_id, value, total, preview_image is not None))

    @property
    def node_types(self) -> dict:
        return self.nodes.NODE_CLASS_MAPPINGS

    def object_info(self) -> dict:
        """The parts of GET /object_info that turn a UI workflow into a prompt: inputs (in order) and outputs."""
        info = {}
        for name, node_class in self.node_types.items():
            inputs = node_class.INPUT_TYPES()
            outputs = list(node_class.RETURN_TYPES)
            info[name] = {"input": inputs, "input_order": {section: list(specs) for section, specs in inputs.items()},
                          "output": outputs, "output_name": list(getattr(node_class, "RETURN_NAMES", None) or outputs)}
        return info

    def call(self, class_type: str, **inputs) -> tuple:
        """Run one node directly, as the executor would (V3 `execute`, or a V1 node's FUNCTION), and
        return its outputs as a tuple."""
        node_class = self.node_types[class_type]
        if hasattr(node_class, "define_schema"):
            return tuple(node_class.execute(**inputs).result)
        return tuple(getattr(node_class(), node_class.FUNCTION)(**inputs))

    def validate(self, prompt: dict):
        """(ok, error, node_errors) exactly as POST /prompt would judge the graph."""
        ok, error, _outputs, node_errors = asyncio.run(
            self.execution.validate_prompt(str(uuid.uuid4()), prompt, None))
        return ok, error, node_errors

    def _validate_targets(self, prompt: dict, targets) -> list:
        """ComfyUI's per-node input validation for chosen target nodes (which need not be output
        nodes, so tests can read any node's tensors)."""
        validated = {}
        for target in targets:
            valid, errors, _ = asyncio.run(self.execution.validate_inputs(str(uuid.uuid4()), prompt, target, validated))
            if not valid:
                raise AssertionError(f"graph rejected at node {target}: {errors}")
        return list(targets)

    def run(self, prompt: dict, targets=None, fresh: bool = True, extra_data: dict | None = None) -> RunResult:
        """Validate and execute an API-format graph, up to its output nodes or the given `targets`;
        `fresh` drops cached node outputs first; `extra_data` is what a client sends beside the prompt
        (e.g. the front-end's "preview_method")."""
        if targets is None:
            ok, error, _outputs, node_errors = asyncio.run(
                self.execution.validate_prompt(str(uuid.uuid4()), prompt, None))
            if not ok:
                raise AssertionError(f"graph rejected: {error} {node_errors}")
        else:
            _outputs = self._validate_targets(prompt, targets)
        if fresh:
            self.executor.reset()
        self.server.messages = []
        self.progress = []
        prompt_id = str(uuid.uuid4())
        self.server.last_prompt_id = prompt_id
        # With a client id, ComfyUI also sends the messages meant for the submitting client (errors).
        self.executor.execute(prompt, prompt_id, extra_data={"client_id": "tests", **(extra_data or {})},
                              execute_outputs=list(_outputs))
        events = [event for event, _ in self.server.messages]
        status = ("success" if "execution_success" in events
                  else "interrupted" if "execution_interrupted" in events else "error")
        return RunResult(status, self._cached_outputs(prompt), self.executor.history_result.get("outputs", {}),
                         list(self.server.messages), list(self.progress))

    def _cached_outputs(self, node_ids) -> dict:
        """Node id -> outputs, read from the executor's output cache (whose `get` became a coroutine in
        later ComfyUI: awaited when it is one)."""
        async def read():
            entries = {}
            for node_id in node_ids:
                entry = self.executor.caches.outputs.get(node_id)
                entries[node_id] = await entry if inspect.isawaitable(entry) else entry
            return entries
        return {node_id: entry.outputs for node_id, entry in asyncio.run(read()).items() if entry is not None}

    def interrupt(self):
        self.nodes.interrupt_processing(True)
