import json
import subprocess
import sys
from pathlib import Path

import pytest

from gif.cli import main
from gif.io.files import sha256_file
from gif.models.registry import parameter_listing


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    assert main(["demo-assets", "--out", str(out)]) == 0
    return out


def edit_args(demo: Path, **overrides) -> list[str]:
    args = {
        "--spec": str(demo / "job.json"),
        "--model": str(demo / "model.safetensors"),
        "--architecture": str(demo / "architecture.json"),
        "--train-data": str(demo / "train.safetensors"),
        "--eval-data": str(demo / "eval.safetensors"),
        "--out": str(demo / "edited.safetensors"),
        "--result": str(demo / "result.json"),
        "--report": str(demo / "report.html"),
        **overrides,
    }
    return ["edit", *[item for pair in args.items() for item in pair]]


def test_edit_writes_checkpoint_result_and_table(demo, capsys):
    assert main(edit_args(demo, **{"--input-transform": '{"mean": [0.0], "std": [1.0]}'})) == 0  # the identity
    captured = capsys.readouterr()
    assert "forget_test_accuracy" in captured.out and "before" in captured.out and "after" in captured.out
    assert "%" in captured.err  # the progress bar
    result = json.loads((demo / "result.json").read_text())
    assert result["checkpoint"]["sha256"] == sha256_file(demo / "edited.safetensors")
    assert result["data"]["input_transform"] == "normalise mean [0.0] std [1.0]"
    assert result["metrics"]["after"]["forget_test_accuracy"] < result["metrics"]["before"]["forget_test_accuracy"]
    assert set(result["timings"]) >= {"selection_s", "solve_s", "step_search_s", "evaluation_s", "total_s"}
    page = (demo / "report.html").read_text()
    assert page.startswith("<!doctype html>") and result["checkpoint"]["sha256"] in page


@pytest.mark.parametrize(
    "overrides, fragment",
    [
        ({"--model": "/nonexistent/model.safetensors"}, "No such file"),
        ({"--spec": '{"request": {"kind": "remove_class", "classes": []}}'}, "request.remove_class.classes"),
        ({"--spec": '{"request": {"kind": "remove_class", "classes": [42]}}'}, "out of range"),
        ({"--architecture": '{"name": "tinynet", "config": {}}'}, "do not match"),
        ({"--architecture": '{"name": "nope"}'}, "unknown architecture"),
        ({"--spec": "{not json"}, "not valid JSON"),
        ({"--input-transform": '{"crop": 9}'}, "a centre crop of 9 does not fit in 8×8 images"),
        ({"--input-transform": '{"mean": [0.5]}'}, "give mean and std together"),
    ],
)
def test_bad_input_exits_2_with_one_line(demo, capsys, overrides, fragment):
    assert main(edit_args(demo, **overrides)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("gif: error:") and fragment in err[-1]


def test_architectures_command(capsys):
    assert main(["architectures"]) == 0
    listed = capsys.readouterr().out
    assert all(name in listed for name in ("tinynet", "resnet18", "vgg11", "mlp"))
    assert main(["architectures", "vgg11", "--config", '{"in_channels": 3}']) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == parameter_listing({"name": "vgg11", "config": {"in_channels": 3}})


def test_console_script_is_installed():
    script = Path(sys.executable).parent / "gif"
    out = subprocess.run([str(script), "architectures", "tinynet"], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout)["num_parameters"] == 398_090


def test_an_exported_program_is_edited_as_its_eager_model_is(demo, capsys):
    """``--model model.pt2`` with no architecture: the same edit as the weights with their architecture."""
    import torch
    from safetensors.torch import load_file

    from gif.io.programs import load_program
    from gif.models.checkpoints import load_checkpoint

    model = load_checkpoint(json.loads((demo / "architecture.json").read_text()), demo / "model.safetensors").eval()
    sample = load_file(str(demo / "train.safetensors"))["x"][:2]
    batch = torch.export.Dim("batch", min=1, max=1 << 16)
    program = torch.export.export(model, (sample,), dynamic_shapes={"x": {0: batch}})
    torch.export.save(program, str(demo / "model.pt2"))
    assert main(edit_args(demo)) == 0
    args = edit_args(demo, **{"--model": str(demo / "model.pt2"), "--out": str(demo / "edited.pt2")})
    architecture = args.index("--architecture")
    assert main(args[:architecture] + args[architecture + 2 :]) == 0
    capsys.readouterr()
    eager, exported = load_file(str(demo / "edited.safetensors")), load_program(demo / "edited.pt2").state_dict()
    assert eager.keys() == exported.keys()
    assert all(torch.allclose(eager[k], exported[k], atol=1e-6) for k in eager)
    assert main(edit_args(demo, **{"--model": str(demo / "model.pt2")})) == 2  # an architecture contradicts it
    assert "carries its own architecture" in capsys.readouterr().err


def test_edit_with_methods_writes_the_chosen_checkpoint_and_the_others_beside_it(demo, capsys):
    out = demo / "compared.safetensors"
    spec = json.loads((demo / "job.json").read_text())
    spec.update({"solver": {"max_iterations": 5}, "training": {"epochs": 1, "learning_rates": [0.05]}})
    args = edit_args(demo, **{"--spec": json.dumps(spec), "--out": str(out), "--methods": "first_order,fine_tune"})
    assert main(args) == 0
    captured = capsys.readouterr()
    result = json.loads((demo / "result.json").read_text())
    comparison = {c["method"]: c for c in result["comparison"]}
    assert list(comparison) == ["first_order", "fine_tune"] and comparison[result["method"]]["chosen"]
    assert result["checkpoint"]["sha256"] == sha256_file(out) == comparison[result["method"]]["checkpoint"]["sha256"]
    other = next(m for m in comparison if m != result["method"])
    assert comparison[other]["checkpoint"]["sha256"] == sha256_file(demo / f"compared.{other}.safetensors")
    assert "chosen: " in captured.out and f"{other}: " in captured.out
    assert "Methods compared" in (demo / "report.html").read_text()
