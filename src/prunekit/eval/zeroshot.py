"""Zero-shot accuracy through lm-evaluation-harness, with lm-eval's own task definitions.

The numbers LLM pruning papers report (Wanda, SparseGPT, ...) come from lm-eval's multiple-choice
tasks: each choice is scored by the model's log-likelihood of it after the prompt; `acc` picks the
highest sum, `acc_norm` the highest sum per byte. Prompts, choices, metrics and standard errors
here are lm-eval's; prunekit only wraps the in-memory model in lm-eval's `HFLM`.

Data: with hub access, lm-eval's standard tasks download their own data. Offline, `task_data` names
a folder of JSONL files in each task's Hugging Face schema, and prunekit's task configs
(`eval/tasks/<task>.yaml`) `include` lm-eval's standard task YAML and swap only the data source
(`dataset_path: json` plus `data_files`, with the split keys set to the file's split).
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import yaml

from ..errors import UsageError

TASKS_DIR = Path(__file__).parent / "tasks"
METRICS = ("acc", "acc_norm")
#: the metric averaged into the mean accuracy: Wanda's zero-shot tables report lm-eval's `acc` on
#: every task (its authors confirmed this in locuslab/wanda issue 31), so `acc_norm` is shown beside it only
MEAN_METRIC = "acc"
#: examples in the local files of ../shared/data/zeroshot (the full evaluation splits lm-eval uses)
EXAMPLES = {
    "arc_challenge": 1172, "arc_easy": 2376, "boolq": 3270, "hellaswag": 10042,
    "openbookqa": 500, "piqa": 1838, "rte": 277, "winogrande": 1267,
}


def task_names() -> list[str]:
    """The zero-shot tasks prunekit ships configs for."""
    return sorted(path.stem for path in TASKS_DIR.glob("*.yaml"))


def lm_eval_tasks_dir() -> Path:
    """The folder of lm-eval's standard task YAML files."""
    try:
        import lm_eval.tasks
    except ImportError as err:
        raise UsageError(f"zero-shot tasks need lm-evaluation-harness: pip install lm-eval ({err})") from err
    return Path(lm_eval.tasks.__file__).parent


def check_tasks(names: list[str], task_data: str | Path | None = None) -> None:
    """Fail with one line on an unknown task name or a missing local data file (before any long work)."""
    known = task_names()
    for name in names:
        if name not in known:
            raise UsageError(f"unknown zero-shot task {name!r}: choose from {', '.join(known)}")
    if task_data is not None:
        for name in names:
            _data_files(name, Path(task_data))


def write_task_configs(task_data: str | Path, out_dir: str | Path, names: list[str] | None = None) -> list[Path]:
    """Write lm-eval task configs for `names` (default: all) into `out_dir`, reading data from `task_data`.

    Each shipped config's `include` becomes an absolute path into lm-eval's task folder and its data
    file an absolute path into `task_data`; everything else is copied unchanged. The folder works with
    `lm_eval --include_path out_dir` as well as in-process."""
    names = task_names() if names is None else names
    check_tasks(names, task_data)
    lm_eval_dir = lm_eval_tasks_dir()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name in names:
        config = _template(name)
        included = lm_eval_dir / config["include"]
        if not included.is_file():
            raise UsageError(f"task {name}: this lm-eval has no {config['include']} (lm-eval 0.4.13 has it)")
        config["include"] = str(included)
        config["dataset_kwargs"]["data_files"] = {split: str(path)
                                                  for split, path in _data_files(name, Path(task_data)).items()}
        path = out_dir / f"{name}.yaml"
        path.write_text(f"# written by prunekit from prunekit/eval/tasks/{name}.yaml\n"
                        + yaml.safe_dump(config, sort_keys=False))
        written.append(path)
    return written


def load_tasks(names: list[str], task_data: str | Path | None = None, progress: bool = True) -> dict:
    """{name: lm-eval Task} with its evaluation documents loaded: lm-eval's standard tasks (hub data),
    or with `task_data` prunekit's configs over the local files. Any failure is one UsageError line."""
    check_tasks(names, task_data)
    from lm_eval.tasks import TaskManager

    with tempfile.TemporaryDirectory(prefix="prunekit-tasks-") as tmp, _quiet_lm_eval(progress):
        if task_data is not None:
            write_task_configs(task_data, tmp, names)
            # our configs include lm-eval's YAML by absolute path, so its own index is not needed
            manager = TaskManager(include_path=tmp, include_defaults=False)
        else:
            manager = TaskManager()
        tasks = {}
        for name in names:
            try:
                tasks[name] = manager.load([name])["tasks"][name]
            except Exception as err:  # datasets/hub raise many types; the user needs one line
                where = f"from {task_data}" if task_data is not None else "from the Hugging Face hub"
                first = str(err).strip().splitlines()[0] if str(err).strip() else ""
                raise UsageError(f"could not load zero-shot task {name!r} {where} ({type(err).__name__}: {first[:200]})"
                                 + ("" if task_data is not None else "; offline, pass --task-data DIR")) from err
    return tasks


@dataclass
class TaskScore:
    """lm-eval's result for one task: acc (and acc_norm where the task defines it) with standard errors."""

    task: str
    acc: float
    acc_stderr: float
    acc_norm: float | None
    acc_norm_stderr: float | None
    examples: int  # documents scored (fewer than the split with --limit)
    split_examples: int  # documents in the split
    chance: float  # expected accuracy of a uniform guess: mean of 1 / number of choices over the scored documents
    version: str

    def near_chance(self, metric: str = MEAN_METRIC) -> bool:
        """Whether `metric` is within two standard errors of chance (the model has not shown it can do the task)."""
        return abs(getattr(self, metric) - self.chance) <= 2 * getattr(self, f"{metric}_stderr")

    def as_dict(self) -> dict:
        return {**asdict(self), "near_chance": self.near_chance()}


def zero_shot(model, tokenizer, tasks: dict, *, batch_size: int = 1, limit: int | None = None,
              add_bos_token: bool | None = None, progress: bool = True) -> dict[str, TaskScore]:
    """{task: TaskScore} for `model` on lm-eval Tasks from `load_tasks`, zero-shot, first `limit` documents.

    Runs `lm_eval.simple_evaluate` with its defaults (seeds, bootstrap iterations) on an `HFLM` around
    the in-memory model, so results match the `lm_eval` command on the saved model with the same
    tasks, batch size and `add_bos_token`. `add_bos_token` is lm-eval's switch: it encodes with the
    tokenizer's special tokens (a BOS where the tokenizer adds one) or without."""
    from lm_eval import simple_evaluate

    with _quiet_lm_eval(progress):
        lm = _hflm(progress)(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, add_bos_token=add_bos_token)
        out = simple_evaluate(model=lm, tasks=list(tasks.values()), limit=limit, log_samples=False)
    scores = {}
    for name, task in tasks.items():
        result, counts = out["results"][name], out["n-samples"][name]
        docs = list(task.eval_docs)[:counts["effective"]]
        chance = sum(1 / len(task.doc_to_choice(doc)) for doc in docs) / len(docs)
        norm = "acc_norm,none" in result
        scores[name] = TaskScore(
            task=name, acc=result["acc,none"], acc_stderr=result["acc_stderr,none"],
            acc_norm=result["acc_norm,none"] if norm else None,
            acc_norm_stderr=result["acc_norm_stderr,none"] if norm else None,
            examples=counts["effective"], split_examples=counts["original"], chance=chance,
            version=str(out["versions"][name]),
        )
    return scores


def mean_accuracy(scores: dict[str, TaskScore], metric: str = MEAN_METRIC) -> float:
    return sum(getattr(score, metric) for score in scores.values()) / len(scores)


def lm_eval_version() -> str:
    from importlib.metadata import version

    return version("lm_eval")


def _hflm(progress: bool):
    """lm-eval's HFLM, or without progress a subclass that only turns its progress bar off."""
    from lm_eval.models.huggingface import HFLM

    if progress:
        return HFLM

    class QuietHFLM(HFLM):
        def loglikelihood(self, requests, disable_tqdm: bool = False):
            return super().loglikelihood(requests, disable_tqdm=True)

    return QuietHFLM


def _template(name: str) -> dict:
    return yaml.safe_load((TASKS_DIR / f"{name}.yaml").read_text())


def _data_files(name: str, task_data: Path) -> dict[str, Path]:
    """{split: absolute path} of a task's local data, checked to exist."""
    files = _template(name)["dataset_kwargs"]["data_files"]
    resolved = {split: (task_data / filename).resolve() for split, filename in files.items()}
    for path in resolved.values():
        if not path.is_file():
            raise UsageError(f"zero-shot task {name}: data file {path} not found (--task-data {task_data})")
    return resolved


@contextlib.contextmanager
def _quiet_lm_eval(progress: bool = True):
    """lm-eval logs every step at INFO/WARNING; keep the terminal to prunekit's own lines
    (and without `progress`, turn off the datasets library's progress bars too)."""
    import datasets

    logger = logging.getLogger("lm_eval")
    level, bars = logger.level, datasets.is_progress_bar_enabled()
    logger.setLevel(logging.ERROR)
    if not progress:
        datasets.disable_progress_bars()
    try:
        yield
    finally:
        logger.setLevel(level)
        if bars:
            datasets.enable_progress_bars()
