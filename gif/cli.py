"""The ``gif`` command: ``gif edit``, ``gif architectures``, ``gif demo-assets``, and the commands installed packages
add (the client, ``pip install ./client``, adds ``gif submit|status|cancel|download|workers|usage``).

``gif edit`` runs the same ``gif.edit.run`` as the worker, in-process: a progress bar on stderr,
a metrics table on stdout, the result object in ``--result``. Bad input ends with exit status 2
and one line saying why.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, TextIO

from pydantic import ValidationError

from gif.errors import GifError, InvalidSpecError

EXIT_BAD_INPUT = 2


def _json_argument(value: str) -> Any:
    """A JSON string, or the path of a JSON file."""
    text = Path(value).read_text() if not value.lstrip().startswith(("{", "[")) and Path(value).is_file() else value
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise GifError(f"not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno}): {value[:80]}") from None


class ProgressBar:
    """One self-overwriting line on stderr; throttled so that fast phases do not flood a terminal."""

    WIDTH = 30

    def __init__(self, stream: TextIO | None = None):
        self.stream = stream or sys.stderr
        self.last = 0.0
        self.started = time.perf_counter()

    def __call__(
        self, phase: str, fraction: float, iteration: int | None = None, relative_residual: float | None = None
    ) -> None:
        now = time.perf_counter()
        if now - self.last < 0.1 and fraction < 1.0:
            return
        self.last = now
        filled = int(self.WIDTH * fraction)
        detail = (
            f" it {iteration} res {relative_residual:.2e}"
            if iteration is not None and relative_residual is not None
            else ""
        )
        bar = "#" * filled + "." * (self.WIDTH - filled)
        line = f"\r[{bar}] {fraction:4.0%} {phase}{detail} {now - self.started:6.1f}s"
        self.stream.write(line.ljust(80))
        self.stream.flush()

    def close(self) -> None:
        self.stream.write("\n")
        self.stream.flush()


def metrics_table(metrics: dict[str, dict[str, float] | None]) -> str:
    from gif.metrics import metric_columns

    columns, keys = metric_columns(metrics)
    width = max(len(k) for k in keys) if keys else 10
    lines = [f"{'metric':<{width}}" + "".join(f"{c:>12}" for c in columns)]
    for key in keys:
        cells = "".join(f"{values[key]:>12.4f}" if key in values else f"{'-':>12}" for values in columns.values())
        lines.append(f"{key:<{width}}{cells}")
    return "\n".join(lines)


def cmd_edit(args: argparse.Namespace) -> int:
    from gif.edit import run
    from gif.io.datasets import read_dataset
    from gif.models.checkpoints import load_checkpoint, model_architecture, model_format
    from gif.models.registry import is_exported
    from gif.result import CheckpointInfo
    from gif.spec import JobSpec

    spec = JobSpec.model_validate(with_methods(_json_argument(args.spec), args.methods))
    given = _json_argument(args.architecture) if args.architecture else None
    architecture = model_architecture(model_format(args.model), given)
    model = load_checkpoint(architecture, args.model)
    train = read_dataset(args.train_data)
    eval_data = read_dataset(args.eval_data) if args.eval_data else None
    validation = read_dataset(args.validation_data) if args.validation_data else None
    attack = read_dataset(args.attack_data) if args.attack_data else None
    transform = _json_argument(args.input_transform) if args.input_transform else None
    bar = ProgressBar()
    try:
        outcome = run(
            spec,
            model,
            train,
            eval_data,
            bar,
            validation_data=validation,
            attack_data=attack,
            device=args.device,
            input_transform=transform,
        )
    finally:
        bar.close()
    if str(args.out).endswith(".pt2"):
        if not is_exported(architecture):
            raise InvalidSpecError("--out .pt2 writes an edited program: the model must be a .pt2 program")
        checkpoint = outcome.write_program(args.model, args.out)
    else:
        checkpoint = outcome.write_checkpoint(args.out)
    others: dict[str, tuple[CheckpointInfo, Path]] = {}
    for method in list(outcome.others):  # a job of several methods: each one's checkpoint beside the chosen one's
        path = beside(args.out, method)
        if str(args.out).endswith(".pt2"):
            others[method] = (outcome.write_program(args.model, path, method), path)
        else:
            others[method] = (outcome.write_checkpoint(path, method), path)
    if args.result:
        Path(args.result).write_text(outcome.result.model_dump_json(indent=2))
    if args.report:
        from gif.report import render_report

        context = [("model", str(args.model)), ("checkpoint", str(args.out))]
        page = render_report(outcome.result, spec.model_dump(mode="json"), context)
        Path(args.report).write_text(page, encoding="utf-8")
    print_result(outcome.result.model_dump(mode="json"))
    print(f"edited checkpoint: {args.out} (sha256 {checkpoint.sha256}, method {outcome.result.method})")
    for method, (written, path) in others.items():
        print(f"{method}: {path} (sha256 {written.sha256})")
    return 0


def with_methods(spec: Any, methods: str | None) -> Any:
    """The job specification with ``--methods a,b,…`` (comma-separated) as its ``methods``."""
    if methods is None:
        return spec
    if not isinstance(spec, dict):
        raise GifError("--methods needs a job specification that is a JSON object")
    return {**spec, "methods": [m.strip() for m in methods.split(",") if m.strip()]}


def beside(out: str | Path, method: str) -> Path:
    """Where ``gif edit --methods`` writes a method's checkpoint that was not chosen: ``edited.<method>.safetensors``
    beside ``edited.safetensors``."""
    out = Path(out)
    return out.with_name(f"{out.stem}.{method}{out.suffix}")


def print_result(result: dict[str, Any]) -> None:
    """The metrics table, one line on the solve, and the warnings (stderr): what ``gif edit`` and ``gif submit``
    show of a job's result."""
    print(metrics_table(result["metrics"]))
    s, selection = result["solver"], result["selection"]
    print(
        f"\n{result['method']} on {selection['num_selected']} parameters ({selection['modification_ratio']:.1%}); "
        f"solver {s['kind']}: {s['iterations']} iterations, {s['hvp_count']} HVPs, relative residual "
        f"{s['relative_residual']:.2e}; step {result['step']['scale']:.4g}; {result['timings']['total_s']:.1f}s"
    )
    if result.get("comparison"):
        print(comparison_table(result["comparison"]))
        print(f"chosen: {result.get('chosen_by')}")
    for warning in result["warnings"]:
        print(f"warning: {warning}", file=sys.stderr)


def comparison_table(comparison: list[dict[str, Any]]) -> str:
    """A job of several methods: one line per method (validation objective, metrics after, membership, seconds)."""
    keys = [
        k
        for k in ("forget_accuracy", "forget_test_accuracy", "retain_accuracy", "test_accuracy")
        if any(k in c["metrics"] for c in comparison)
    ]
    lines = [f"\n{'method':<15}{'objective':>11}" + "".join(f"{k:>{len(k) + 2}}" for k in keys) + "  membership  s"]
    for c in comparison:
        objective = "-" if c["objective"] is None else f"{c['objective']:.4g}"
        cells = "".join(
            f"{c['metrics'][k]:>{len(k) + 2}.4f}" if k in c["metrics"] else f"{'-':>{len(k) + 2}}" for k in keys
        )
        membership = (c.get("membership") or {}).get("status") or "-"
        mark = "*" if c["chosen"] else " "
        lines.append(f"{mark}{c['method']:<14}{objective:>11}{cells}  {membership}  {c['timings']['total_s']:.1f}")
    return "\n".join(lines)


class CommandHost:
    """What ``gif`` lends the commands an installed package adds (``gif_client``: submit, status, cancel, download,
    workers, usage): its JSON argument reader, its result printer, and the error it reports in one line."""

    error = GifError

    @staticmethod
    def json_argument(value: str) -> Any:
        return _json_argument(value)

    @staticmethod
    def print_result(result: dict[str, Any]) -> None:
        print_result(result)


COMMAND_GROUP = "gif.commands"  # entry points: callables (subparsers, CommandHost) -> None that add commands


def add_installed_commands(commands: Any) -> None:
    """Add the commands of every installed package that registers some in ``COMMAND_GROUP``."""
    for entry in entry_points(group=COMMAND_GROUP):
        entry.load()(commands, CommandHost())


def cmd_architectures(args: argparse.Namespace) -> int:
    from gif.models.registry import architectures, parameter_listing

    if args.name is None:
        entries = architectures()
        width = max(len(arch.name) for arch in entries)
        for arch in entries:
            print(f"{arch.name:<{width}} {arch.description}")
        return 0
    config = _json_argument(args.config) if args.config else {}
    print(json.dumps(parameter_listing({"name": args.name, "config": config}), indent=2))
    return 0


def cmd_demo_assets(args: argparse.Namespace) -> int:
    from gif.demo import write_demo_assets, write_image_demo

    if args.dataset == "images":
        paths = write_image_demo(Path(args.out), args.seed)
    else:
        paths = write_demo_assets(Path(args.out), args.dataset, args.seed)
    for path in paths:
        print(path)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gif", description="Edit trained classifiers with Generalized Influence Functions."
    )
    commands = parser.add_subparsers(dest="command", required=True)

    edit = commands.add_parser("edit", help="run one edit job in-process")
    edit.add_argument("--spec", required=True, help="the job specification (JSON file or string)")
    edit.add_argument(
        "--model", required=True, help="weights (.safetensors or a torch zip state dict), or a .pt2 exported program"
    )
    edit.add_argument(
        "--architecture",
        help='for weights: e.g. \'{"name": "tinynet", "config": {}}\' (or a JSON file); none for a .pt2 program',
    )
    edit.add_argument(
        "--train-data",
        required=True,
        help="the data the model was trained on: .safetensors/.npz with x, y (and ids), an image archive "
        "(ImageFolder .zip/.tar/.tar.gz, WebDataset .tar) or a folder of class folders",
    )
    edit.add_argument(
        "--input-transform",
        help='the preprocessing the model was trained with, e.g. \'{"resize": 256, "crop": 224, "mean": [0.485, 0.456, '
        '0.406], "std": [0.229, 0.224, 0.225]}\' (or a JSON file), applied to every dataset',
    )
    edit.add_argument("--eval-data", help="held-out data for the reported metrics")
    edit.add_argument(
        "--validation-data", help="held-out data for the automatic step search (default: a split of the training data)"
    )
    edit.add_argument(
        "--attack-data",
        help="relabel only: held-out inputs carrying the backdoor's trigger, with their true labels "
        "(for heldout_attack_success_rate)",
    )
    edit.add_argument(
        "--out", required=True, help="where to write the edited weights (.safetensors; .pt2 for an edited program)"
    )
    edit.add_argument(
        "--methods",
        help="compare methods in one job, e.g. gif,first_order,fine_tune,neg_grad_plus (the spec's methods): --out "
        "gets the best by the validation objective, each other one goes beside it as OUT_STEM.<method>.<suffix>",
    )
    edit.add_argument("--result", help="where to write the result object (JSON)")
    edit.add_argument("--report", help="where to write the job report (a self-contained HTML page)")
    edit.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    edit.set_defaults(handler=cmd_edit)

    add_installed_commands(commands)

    archs = commands.add_parser("architectures", help="list the registry, or one architecture's parameters")
    archs.add_argument("name", nargs="?")
    archs.add_argument("--config", help="the architecture's config (JSON)")
    archs.set_defaults(handler=cmd_architectures)

    demo = commands.add_parser("demo-assets", help="train a small model and write it with its data and a job")
    demo.add_argument("--out", default="demo", help="output directory (default: demo)")
    demo.add_argument(
        "--dataset",
        choices=["digits", "mnist", "images"],
        default="digits",
        help="images: the digits as folders of PNGs and torchvision's ResNet-18 trained on them, with its input "
        "transform (input.json)",
    )
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(handler=cmd_demo_assets)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.handler(args)
        return code
    except GifError as exc:
        print(f"gif: error: {exc}", file=sys.stderr)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        print(
            f"gif: error: invalid job specification: {where}: {first['msg']} ({exc.error_count()} error(s))",
            file=sys.stderr,
        )
    except (FileNotFoundError, IsADirectoryError, PermissionError) as exc:
        print(f"gif: error: {exc.strerror}: {exc.filename}", file=sys.stderr)
    return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
