"""The composition matrix: what each weights format × feature (and the feature triples people build) is
expected to do, in text-to-video and image-to-video. The one home of these expectations: the test
(tests/comfyui/test_feature_matrix.py) checks every cell against it, and the README's table is rendered from it
(`python -m scripts.feature_matrix_table`).

A cell is "equal" (the result of the same combination without the features that must not change it:
Multi-GPU, Block Swap, TorchCompileModel), "changes" (the features that should change it: a LoRA, a cache
that skips work), "baseline" (the plain graph the others compare with), "refused: <what the message says>"
(before sampling; "refused during step 1: …" where the refusal comes only once the first step ran)."""
from dataclasses import dataclass

WEIGHTS = ("fp32", "fp8_scaled", "Q8_0", "Q4_K")
MODES = ("T2V", "TI2V")

# Feature → (what it is called in the table, whether it changes the result).
FEATURES = {
    "allegro_lora": ("Load Allegro LoRA", True),
    "core_lora": ("LoraLoaderModelOnly (core)", True),
    "block_swap": ("Allegro Block Swap", False),
    "step_cache": ("Allegro Step Cache", True),
    "easycache": ("EasyCache (core)", True),
    "lazycache": ("LazyCache (core)", True),
    "compile": ("TorchCompileModel (core)", False),
    "multigpu_seq2": ("Allegro Multi-GPU, sequence 2", False),
    "multigpu_cfg2": ("Allegro Multi-GPU, CFG 2", False),
    "slg": ("SkipLayerGuidanceDiT (core)", True),
    "pab": ("Allegro PAB", True),
}
PAIRED = tuple(f for f in FEATURES if f != "slg")       # each of these with each weights format

# The combinations people build: (weights, features in the order the nodes are chained).
COMBINATIONS = (
    ("Q4_K", ("core_lora", "multigpu_seq2")),
    ("Q8_0", ("block_swap", "step_cache")),
    ("fp32", ("core_lora", "multigpu_seq2", "easycache")),
    ("fp32", ("multigpu_seq2", "slg")),
    ("Q4_K", ("core_lora", "block_swap", "pab")),
    ("fp32", ("multigpu_seq2", "pab")),
    ("fp32", ("multigpu_cfg2", "pab")),
    ("Q8_0", ("pab", "multigpu_seq2")),
    ("Q8_0", ("pab", "multigpu_cfg2")),
)

# Cells that are not "equal"/"changes" as the features' kinds say: refusals, by
# (weights, features, mode); None for the mode means both modes.
EXCEPTIONS: dict[tuple[str, tuple[str, ...], str | None], str] = {
    # Known limitation: SkipLayerGuidanceDiT adds its block patch only to its own extra guidance call, so the
    # check before sampling (adapters/dit_seam.py, ON_PRE_RUN) cannot see it; the refusal comes at that call.
    ("fp32", ("multigpu_seq2", "slg"), None):
        "refused during step 1: cannot run on the 'Allegro Multi-GPU' rank group",
}

# TorchCompileModel's inductor compile takes 45-110 s per model and mode on 2 CPU cores: the default run
# compiles the fp32 model in T2V; the other compile cells run when this variable is set to 1.
ALL_COMPILES_ENV = "ALLEGRO_MATRIX_ALL_COMPILES"
COMPILED_BY_DEFAULT = {("fp32", "T2V")}


@dataclass(frozen=True)
class Cell:
    weights: str
    features: tuple[str, ...]
    mode: str

    @property
    def id(self) -> str:
        return "-".join((self.weights, "+".join(self.features) or "plain", self.mode))

    @property
    def expect(self) -> str:
        for key in ((self.weights, self.features, self.mode), (self.weights, self.features, None)):
            if key in EXCEPTIONS:
                return EXCEPTIONS[key]
        if not self.features:
            return "baseline"
        return "equal" if self.transparent else "changes"

    @property
    def opt_in(self) -> bool:
        """Whether the default run leaves this cell out (see ALL_COMPILES_ENV)."""
        return "compile" in self.features and (self.weights, self.mode) not in COMPILED_BY_DEFAULT

    @property
    def transparent(self) -> tuple[str, ...]:
        """The features that must leave the result as it is."""
        return tuple(f for f in self.features if not FEATURES[f][1])

    @property
    def compared_with(self) -> "Cell":
        """The combination this cell's result is checked against: without its result-preserving features
        when it has any, else without its (last) result-changing one."""
        if self.transparent:
            kept = tuple(f for f in self.features if FEATURES[f][1])
        else:
            kept = self.features[:-1]
        return Cell(self.weights, kept, self.mode)


def cells() -> list[Cell]:
    """Every cell, in the order the test runs them: the multi-GPU ones last and grouped by layout, so the
    rank group starts once per layout."""
    pairs = [Cell(w, (f,) if f else (), m) for m in MODES for w in WEIGHTS for f in (None, *PAIRED)]
    every = pairs + [Cell(w, features, m) for m in MODES for w, features in COMBINATIONS]

    def layout(cell: Cell) -> int:
        return 2 if "multigpu_cfg2" in cell.features else 1 if "multigpu_seq2" in cell.features else 0
    return sorted(every, key=layout)       # stable: the order above within each layout


def feature_names(features: tuple[str, ...]) -> str:
    return " + ".join(FEATURES[f][0] for f in features) or "plain"


def markdown_table() -> str:
    """Rows: the features and triples; columns: the weights formats, each with T2V / TI2V."""
    columns = [(w, m) for w in WEIGHTS for m in MODES]
    header = "| features | " + " | ".join(f"{w} {m}" for w, m in columns) + " |"
    lines = [header, "|" + "---|" * (len(columns) + 1)]
    by_key = {(c.weights, c.features, c.mode): c.expect + (" (opt-in)" if c.opt_in else "") for c in cells()}
    for features in [()] + [(f,) for f in PAIRED]:
        texts = [by_key[(w, features, m)] for w, m in columns]
        lines.append(f"| {feature_names(features)} | " + " | ".join(texts) + " |")
    for weights, features in COMBINATIONS:
        texts = [by_key.get((w, features, m), "–") for w, m in columns]
        lines.append(f"| {weights} + {feature_names(features)} | " + " | ".join(texts) + " |")
    lines.append("")
    lines.append(f"(opt-in): a 1-2 minute compile on 2 CPU cores, run with {ALL_COMPILES_ENV}=1.")
    return "\n".join(lines) + "\n"
