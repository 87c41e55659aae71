"""Exported programs (.pt2): the validating loader, edits through the engine, and hostile archives that run nothing."""

import json
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gif.curvature import HessianOperator, LossTerm, ModelObjective, cross_entropy_sum, curvature_kernels
from gif.data import Dataset
from gif.edit import run
from gif.errors import InvalidSpecError, InvalidWeightsError, TooLargeError, UnknownArchitectureError
from gif.influence import METHODS, InfluenceProblem
from gif.io.programs import load_program, read_program
from gif.models.checkpoints import load_checkpoint, model_architecture, model_format
from gif.plan import RequestPlan
from gif.selection import select
from gif.spec import JobSpec, RemoveClass, SelectionSpec, SolverSpec


class DefinedOutOfOrder(nn.Module):
    """A custom CNN whose parameters are defined in another order than the forward uses them, with BatchNorm,
    a depthwise convolution, a Conv1d over the pooled features and an activation without a double backward."""

    def __init__(self, classes: int = 3):
        super().__init__()
        self.head = nn.Linear(16, classes)
        self.mix = nn.Conv1d(1, 1, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.depthwise = nn.Conv2d(4, 4, 3, padding=1, groups=4)
        self.stem = nn.Conv2d(1, 4, 3, padding=1)

    def forward(self, x):
        x = torch.relu(self.bn(self.stem(x)))
        x = F.hardsigmoid(self.depthwise(x)) * x
        x = F.adaptive_avg_pool2d(x, 2).flatten(1)
        return self.head(self.mix(x.unsqueeze(1)).squeeze(1))


def export(model: nn.Module, path: Path, sample: torch.Tensor) -> Path:
    batch = torch.export.Dim("batch", min=1, max=1 << 16)
    program = torch.export.export(model.eval(), (sample,), dynamic_shapes={"x": {0: batch}})
    torch.export.save(program, str(path))
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The custom CNN trained a little on separable 8×8 images of 3 classes, its data, and its .pt2 file."""
    torch.manual_seed(0)
    y = torch.arange(240) % 3
    x = torch.randn(240, 1, 8, 8) * 0.5 + y.view(-1, 1, 1, 1).float() * torch.linspace(-1, 1, 64).view(1, 1, 8, 8)
    model = DefinedOutOfOrder()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.02)
    for _ in range(60):
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
    path = export(model, tmp_path_factory.mktemp("pt2") / "custom.pt2", x[:2])
    return model.eval(), Dataset(x, y), path


def test_the_loaded_program_computes_what_the_model_computes(trained):
    model, data, path = trained
    program = load_program(path)
    assert list(program.state_dict()) == list(model.state_dict())  # the program's state-dict names
    with torch.no_grad():
        assert torch.allclose(program(data.x[:7]), model(data.x[:7]), atol=1e-6)  # any batch size
    assert model_format(path) == "pt2"
    assert model_architecture("pt2", None) == {"name": "exported", "config": {}}
    with pytest.raises(UnknownArchitectureError, match="carries its own architecture"):
        model_architecture("pt2", {"name": "tinynet", "config": {}})


def test_layers_are_found_in_the_graph(trained):
    _, data, path = trained
    selection = select(
        load_program(path), SelectionSpec(ratio=0.5), [(data.x[:32], data.y[:32], 1.0)], cross_entropy_sum
    )
    assert [(layer.module, layer.units_total) for layer in selection.layers] == [
        ("head", 3),
        ("mix", 1),
        ("depthwise", 4),
        ("stem", 4),
    ]


def test_an_edit_runs_end_to_end_and_leaves_the_rest_bit_identical(trained, tmp_path):
    _, data, path = trained
    program = load_program(path)
    spec = JobSpec.model_validate(
        {
            "request": {"kind": "remove_class", "classes": [2]},
            "selection": {"ratio": 0.5},
            "solver": {"max_iterations": 10},
        }
    )
    outcome = run(spec, program, data, data)
    before, after = program.state_dict(), outcome.state_dict
    moved = {name for name in before if not torch.equal(before[name], after[name])}
    assert moved and moved <= {"head.weight", "head.bias", "mix.weight", "mix.bias", "depthwise.weight",
                               "depthwise.bias", "stem.weight", "stem.bias"}  # fmt: skip
    assert outcome.result.metrics.after["forget_accuracy"] < outcome.result.metrics.before["forget_accuracy"]
    info = outcome.write_program(path, tmp_path / "edited.pt2")
    edited = load_program(tmp_path / "edited.pt2")
    assert info.sha256 and all(torch.equal(edited.state_dict()[k], after[k]) for k in after)
    with pytest.raises(InvalidSpecError, match="retrain"):
        run(spec.model_copy(update={"retrain": {"epochs": 1}}), program, data, data)


def test_the_gif_vector_of_a_program_matches_a_dense_solve(trained, dense_hessian):
    _, data, path = trained
    program = load_program(path).double()
    train = Dataset(data.x.double(), data.y)
    plan = RequestPlan.of(RemoveClass(classes=[1]), train)
    hessian_sample = train.subset(plan.retained[:120])
    objective = ModelObjective(program, [LossTerm(hessian_sample, 1 / 120)])
    gradient_objective = ModelObjective(program, plan.gradient_terms(train, plan.affected))
    g = gradient_objective.gradient()
    selection = select(program, SelectionSpec(ratio=0.5), gradient_objective.batches, cross_entropy_sum)
    hessian = HessianOperator(objective, damping=0.05)
    solver = SolverSpec(kind="cg", tolerance=1e-8, max_iterations=5_000, damping=0.05)
    solution = METHODS["gif"].solve(InfluenceProblem(hessian, g, selection.mask, selection.candidates, solver))
    with curvature_kernels():  # hardsigmoid has no double backward: the engine's rewrite, here too
        H = dense_hessian(objective) + 0.05 * torch.eye(len(g), dtype=torch.float64)
    expected = torch.linalg.lstsq(H[:, selection.mask], g.unsqueeze(1)).solution.squeeze(1)
    got = solution.delta[selection.mask]
    assert (got - expected).norm() / expected.norm() <= 1e-4


# --- hostile archives ---------------------------------------------------------------------------------------


def rewrite(source: Path, target: Path, change) -> Path:
    """Copy a .pt2 archive, letting ``change(name, data)`` return new bytes for an entry (or None to drop it)."""
    with zipfile.ZipFile(source) as zin, zipfile.ZipFile(target, "w") as zout:
        for info in zin.infolist():
            data = change(info.filename.split("/", 1)[1], zin.read(info))
            if data is not None:
                zout.writestr(info.filename, data)
    return target


def edit_json(entry: str, transform):
    def change(name: str, data: bytes) -> bytes:
        return json.dumps(transform(json.loads(data))).encode() if name == entry else data

    return change


PAYLOAD = textwrap.dedent(
    """
    import os, sys, torch
    class Payload:
        def __reduce__(self):
            return (os.system, ("touch " + sys.argv[1],))
    torch.save(Payload(), sys.argv[2])
    """
)


@pytest.fixture(scope="module")
def hostile(trained, tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    """Archives that make stock torch.export.load run a payload (each touches its own marker file)."""
    _, _, path = trained
    folder = tmp_path_factory.mktemp("hostile")
    archives = {}

    def payload(kind: str) -> tuple[bytes, Path]:
        marker, pickled = folder / f"{kind}.ran", folder / f"{kind}.pickle"
        subprocess.run([sys.executable, "-c", PAYLOAD, str(marker), str(pickled)], check=True)
        return pickled.read_bytes(), marker

    data, marker = payload("sample_inputs")
    archives["sample_inputs"] = (
        rewrite(path, folder / "sample_inputs.pt2", lambda n, d: data if n == "data/sample_inputs/model.pt" else d),
        marker,
    )

    data, marker = payload("pickled_weight")
    weight_file = json.loads(config_of(path))["config"]["head.weight"]["path_name"]

    def pickled_weight(name: str, d: bytes) -> bytes:
        if name == "data/weights/model_weights_config.json":
            config = json.loads(d)
            config["config"]["head.weight"]["use_pickle"] = True
            return json.dumps(config).encode()
        return data if name == f"data/weights/{weight_file}" else d

    archives["pickled_weight"] = (rewrite(path, folder / "pickled_weight.pt2", pickled_weight), marker)

    marker = folder / "sympify.ran"

    def hostile_expression(program: dict) -> dict:
        text = json.dumps(program)
        symbol = "Symbol('s77', positive=True, integer=True)"
        assert symbol in text, "the fixture program has no symbolic batch size"
        injected = f"__import__('os').system('touch {marker}') or {symbol}".replace("'", "\\u0027")
        return json.loads(text.replace(symbol, injected))

    archives["sympify"] = (
        rewrite(path, folder / "sympify.pt2", edit_json("models/model.json", hostile_expression)),
        marker,
    )
    return archives


def config_of(path: Path) -> bytes:
    with zipfile.ZipFile(path) as z:
        return z.read(next(n for n in z.namelist() if n.endswith("model_weights_config.json")))


STOCK_LOAD = (
    "import sys, torch\ntry:\n    torch.export.load(sys.argv[1])\nexcept Exception as exc:\n    print(type(exc))"
)


@pytest.mark.parametrize("kind", ["sample_inputs", "pickled_weight", "sympify"])
def test_hostile_archives_are_refused_and_run_nothing(hostile, kind):
    archive, marker = hostile[kind]
    with pytest.raises(InvalidWeightsError) as refused:
        load_checkpoint({"name": "exported"}, archive)
    assert "refused" in str(refused.value)
    assert not marker.exists()
    # the same archive does run its payload under stock torch.export.load (in a child process)
    subprocess.run([sys.executable, "-c", STOCK_LOAD, str(archive)], capture_output=True, timeout=120)
    assert marker.exists(), f"the {kind} archive is not hostile to the stock loader"


def mutated_program(trained, tmp_path, transform) -> Path:
    _, _, path = trained
    return rewrite(path, tmp_path / "mutated.pt2", edit_json("models/model.json", transform))


def set_first_target(target: str):
    def transform(program):
        program["graph_module"]["graph"]["nodes"][0]["target"] = target
        return program

    return transform


def rename_parameter(program):
    spec = program["graph_module"]["signature"]["input_specs"][0]
    spec["parameter"]["parameter_name"] = 'head"), __import__("os").system("id"), ("'
    return program


def rename_input(program):
    text = json.dumps(program).replace('"name": "x"', '"name": "x=print(1)"')
    return json.loads(text)


def add_guard(program):
    program["guards_code"] = ["__import__('os').system('touch /tmp/gif-guard-ran')"]
    return program


@pytest.mark.parametrize(
    "transform, reason",
    [
        (set_first_target("builtins.eval"), "not an ATen or prims operator"),
        (set_first_target("torch.load"), "not an ATen or prims operator"),
        (set_first_target("torch.ops.aten.from_file.default"), "is refused"),
        (set_first_target("torch.ops.higher_order.cond"), "not an ATen or prims operator"),
        (rename_parameter, "not a dotted identifier"),
        (rename_input, "not a plain identifier"),
    ],
)
def test_programs_that_would_run_code_are_refused(trained, tmp_path, transform, reason):
    with pytest.raises(InvalidWeightsError, match=reason):
        read_program(mutated_program(trained, tmp_path, transform))


def test_guard_code_is_dropped_never_run(trained, tmp_path):
    marker = Path("/tmp/gif-guard-ran")
    marker.unlink(missing_ok=True)
    model, data, _ = trained
    program = load_program(mutated_program(trained, tmp_path, add_guard))
    with torch.no_grad():
        assert torch.allclose(program(data.x[:3]), model(data.x[:3]), atol=1e-6)
    assert not marker.exists()


def test_static_batches_training_mode_and_oversized_archives_are_refused(trained, tmp_path):
    model, data, path = trained
    static = tmp_path / "static.pt2"
    torch.export.save(torch.export.export(model, (data.x[:2],)), str(static))
    with pytest.raises(InvalidWeightsError, match="batch dimension is static"):
        read_program(static)
    training = tmp_path / "training.pt2"
    batch = torch.export.Dim("batch", min=1, max=1 << 16)
    program = torch.export.export(DefinedOutOfOrder().train(), (data.x[:2],), dynamic_shapes={"x": {0: batch}})
    torch.export.save(program, str(training))
    with pytest.raises(InvalidWeightsError, match="eval mode"):
        read_program(training)
    with pytest.raises(TooLargeError, match="GIF_MAX_MODEL_BYTES = 1000"):
        read_program(path, max_bytes=1000)
