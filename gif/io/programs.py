"""Exported programs (``.pt2`` files of ``torch.export``), read by a validating loader.

Stock ``torch.export.load`` runs code from a crafted archive: it unpickles sample inputs and weights
marked ``use_pickle`` (``torch.load(weights_only=False)``), evaluates symbolic-shape strings with
``sympy.sympify``, compiles guard code into the module, resolves operator names with ``getattr`` on
``torch`` and writes tensor names into generated Python source. This loader reads the archive with
``zipfile`` and ``json`` only, and refuses, naming what it refused: any pickled payload, any operator
outside ATen/prims, sub-graphs, symbolic expressions outside a small grammar, and names that are not
plain identifiers. It drops guard code and node metadata and reads weights as raw bytes; only then does
torch's graph deserializer see the (plain, checked) program. Sample inputs are only checked to be plain
tensors (``torch.load(weights_only=True)``), never used.

The program must take one tensor batch and return logits, be exported in eval mode (no buffer
mutations) and have a dynamic batch dimension: the engine feeds it batches of any size.
"""

from __future__ import annotations

import io
import json
import keyword
import re
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gif.errors import InvalidWeightsError, TooLargeError
from gif.io.files import SCAN_CHUNK_BYTES

MAX_PROGRAM_JSON_BYTES = 64 * 1024 * 1024
MAX_NODES = 100_000
ALLOWED_VERIFIERS = {"", "ATEN", "TRAINING"}
ALLOWED_PYTHON_OPERATORS = {
    "_operator.getitem",
    "_operator.add",
    "_operator.sub",
    "_operator.mul",
    "_operator.floordiv",
    "_operator.mod",
    "_operator.neg",
}
# ATen operators that touch the server rather than tensors.
REFUSED_ATEN_OPERATORS = {"from_file", "_print", "save"}
_OPERATOR = re.compile(r"torch\.ops\.(aten|prims)\.([A-Za-z0-9_]+)\.([A-Za-z0-9_]+)")
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_QUALIFIED_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*")
_PAYLOAD_FILE = re.compile(r"[A-Za-z0-9_]+")
# The sympy ``srepr`` of size expressions: integers, symbols s<N> and a few functions of them.
_SYMBOL = re.compile(r"s[0-9]+")
_EXPRESSION_TOKEN = re.compile(
    r"\s+|Symbol\('s[0-9]+', positive=True, integer=True\)|Integer\(-?[0-9]+\)"
    r"|(?:Mul|Add|Min|Max|FloorDiv|CeilDiv|Mod|PythonMod|CleanDiv)\(|,|\)"
)
_QUALIFIED_NAME_KEYS = {"parameter_name", "buffer_name", "tensor_constant_name"}


def _refuse(reason: str) -> InvalidWeightsError:
    return InvalidWeightsError("the .pt2 program was refused", [reason])


class _Archive:
    """The archive's entries under its one root folder, read within a byte budget."""

    def __init__(self, zf: zipfile.ZipFile, max_bytes: int, materialize: bool):
        names = zf.namelist()
        roots = {n.split("/", 1)[0] for n in names}
        if len(roots) != 1 or any("/" not in n for n in names):
            raise _refuse("the archive must hold one root folder, as torch.export.save writes it")
        self.zf, self.root = zf, roots.pop()
        declared = sum(info.file_size for info in zf.infolist())
        if declared > max_bytes:
            raise TooLargeError(f"the .pt2 archive expands to {declared} bytes, over GIF_MAX_MODEL_BYTES = {max_bytes}")
        self.names = {n[len(self.root) + 1 :] for n in names}
        self.materialize = materialize
        self.non_finite: list[str] = []  # weights with NaN/Inf, when not materialized

    def size(self, name: str) -> int:
        if name not in self.names:
            raise _refuse(f"{name} is missing from the archive")
        return self.zf.getinfo(f"{self.root}/{name}").file_size

    def finite(self, name: str, dtype: torch.dtype) -> bool:
        step = SCAN_CHUNK_BYTES - SCAN_CHUNK_BYTES % dtype.itemsize
        with self.zf.open(f"{self.root}/{name}") as fh:
            while chunk := fh.read(step):
                if not bool(torch.frombuffer(bytearray(chunk), dtype=dtype).isfinite().all()):
                    return False
        return True

    def read(self, name: str, limit: int | None = None) -> bytes:
        if name not in self.names:
            raise _refuse(f"{name} is missing from the archive")
        info = self.zf.getinfo(f"{self.root}/{name}")
        if limit is not None and info.file_size > limit:
            raise _refuse(f"{name} is {info.file_size} bytes, over the limit of {limit}")
        return self.zf.read(info)

    def json(self, name: str) -> Any:
        try:
            return json.loads(self.read(name, MAX_PROGRAM_JSON_BYTES))
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
            raise _refuse(f"{name} is not JSON: {exc}") from None


def _walk(value: Any) -> Iterator[tuple[str | None, Any]]:
    """Every (key, value) pair of a JSON tree, depth first, without recursion."""
    stack: list[tuple[str | None, Any]] = [(None, value)]
    while stack:
        key, item = stack.pop()
        yield key, item
        if isinstance(item, dict):
            stack.extend(item.items())
        elif isinstance(item, list):
            stack.extend((key, v) for v in item)


def _check_expression(text: Any) -> None:
    if not isinstance(text, str):
        raise _refuse("a symbolic size is not a string")
    position = 0
    while position < len(text):
        token = _EXPRESSION_TOKEN.match(text, position)
        if token is None:
            raise _refuse(f"symbolic size {text[:80]!r} uses more than integers, symbols and arithmetic")
        position = token.end()


def _check_tree(program: dict[str, Any]) -> None:
    """Names, expressions and structure anywhere in the program's JSON."""
    for key, value in _walk(program):
        if key == "as_graph":
            raise _refuse("sub-graphs (control flow, higher-order operators) are not supported")
        if key in ("as_custom_obj", "custom_obj", "token"):
            raise _refuse("custom objects and effect tokens are not supported")
        if key == "expr_str":
            _check_expression(value)
        elif key == "name" and isinstance(value, str):
            if not _IDENTIFIER.fullmatch(value) or keyword.iskeyword(value):
                raise _refuse(f"name {value[:80]!r} is not a plain identifier")
        elif key in _QUALIFIED_NAME_KEYS and not (isinstance(value, str) and _QUALIFIED_NAME.fullmatch(value)):
            raise _refuse(f"{key} {str(value)[:80]!r} is not a dotted identifier")


def _check_operator(target: Any) -> None:
    if target in ALLOWED_PYTHON_OPERATORS:
        return
    match = _OPERATOR.fullmatch(target) if isinstance(target, str) else None
    if match is None:
        raise _refuse(f"operator {str(target)[:120]!r} is not an ATen or prims operator")
    namespace, name, overload = match.groups()
    if name in REFUSED_ATEN_OPERATORS:
        raise _refuse(f"operator {target} is refused")
    try:
        resolved = getattr(getattr(getattr(torch.ops, namespace), name), overload)
    except (AttributeError, RuntimeError):
        raise _refuse(f"operator {target} does not exist in this torch") from None
    if not isinstance(resolved, torch._ops.OpOverload):
        raise _refuse(f"{target} is not an operator overload")


def _check_eval_mode(node: dict[str, Any]) -> None:
    """Dropout and normalisation nodes carry their mode as a ``train``/``training`` flag, fixed at export."""
    for argument in node.get("inputs", []):
        if argument.get("name") in ("train", "training") and argument.get("arg") == {"as_bool": True}:
            raise _refuse(f"{node.get('target')} runs in training mode: export the model in eval mode (model.eval())")


def _check_signature(module: dict[str, Any]) -> None:
    signature = module.get("signature") or {}
    inputs, outputs = signature.get("input_specs", []), signature.get("output_specs", [])
    kinds = [next(iter(spec)) for spec in inputs if isinstance(spec, dict) and spec]
    unsupported = set(kinds) - {"parameter", "buffer", "tensor_constant", "user_input"}
    if len(kinds) != len(inputs) or unsupported:
        raise _refuse(f"unsupported program inputs: {sorted(unsupported)}")
    user_inputs = [spec["user_input"]["arg"] for spec in inputs if "user_input" in spec]
    if len(user_inputs) != 1 or "as_tensor" not in user_inputs[0]:
        raise _refuse("the program must take exactly one tensor (a batch of samples)")
    out_kinds = [next(iter(spec)) for spec in outputs if isinstance(spec, dict) and spec]
    if out_kinds != ["user_output"]:
        mutations = [k for k in out_kinds if "mutation" in k]
        hint = " (it updates buffers: export the model in eval mode, model.eval())" if mutations else ""
        raise _refuse(f"the program must return exactly one tensor of logits{hint}; it returns {out_kinds}")
    try:
        batch = module["graph"]["tensor_values"][user_inputs[0]["as_tensor"]["name"]]["sizes"][0]
    except (KeyError, IndexError, TypeError):
        raise _refuse("the program's input has no recorded shape") from None
    if "as_int" in batch:
        raise _refuse(
            "the batch dimension is static: export with "
            "dynamic_shapes={'x': {0: torch.export.Dim('batch')}} so that batches of any size run"
        )


def _sanitized_program(raw: dict[str, Any]) -> dict[str, Any]:
    """The program's JSON, checked, without what could run code or is not needed (guards, node metadata)."""
    from torch._export.serde.schema import SCHEMA_VERSION

    if not isinstance(raw, dict) or not isinstance(raw.get("graph_module"), dict):
        raise _refuse("models/*.json is not an exported program")
    major = (raw.get("schema_version") or {}).get("major")
    if major != SCHEMA_VERSION[0]:
        raise _refuse(f"schema version {major} is not this server's ({SCHEMA_VERSION[0]}); export with torch 2.14")
    verifiers = raw.get("verifiers", [])
    if not isinstance(verifiers, list) or set(verifiers) - ALLOWED_VERIFIERS:
        raise _refuse(f"unknown verifiers {verifiers!r}")
    if set(raw.get("range_constraints") or {}) - {s for s in raw["range_constraints"] if _SYMBOL.fullmatch(s)}:
        raise _refuse("range constraints name something other than size symbols")
    _check_tree(raw)
    module = raw["graph_module"]
    nodes = module.get("graph", {}).get("nodes", [])
    if len(nodes) > MAX_NODES:
        raise _refuse(f"the graph has {len(nodes)} nodes, over the limit of {MAX_NODES}")
    for node in nodes:
        _check_operator(node.get("target"))
        _check_eval_mode(node)
        node["metadata"] = {}
    _check_signature(module)
    if module.get("treespec_namedtuple_fields"):
        raise _refuse("named-tuple inputs or outputs are not supported")
    module["metadata"] = {}
    module["module_call_graph"] = [e for e in module.get("module_call_graph", []) if e.get("fqn") == ""]
    return {**raw, "guards_code": [], "graph_module": module}


def _tensor(archive: _Archive, folder: str, fqn: str, entry: Any) -> torch.Tensor:
    """One weight or constant from its raw bytes, its size, stride and offset checked against its storage."""
    from torch._export.serde.serialize import _SERIALIZE_TO_TORCH_DTYPE, _SERIALIZE_TO_TORCH_LAYOUT

    if not _QUALIFIED_NAME.fullmatch(fqn):
        raise _refuse(f"tensor name {fqn[:80]!r} is not a dotted identifier")
    if not isinstance(entry, dict) or entry.get("use_pickle") is not False:
        raise _refuse(f"{fqn} is stored as a pickle")
    meta, path = entry.get("tensor_meta") or {}, entry.get("path_name")
    if not (isinstance(path, str) and _PAYLOAD_FILE.fullmatch(path)):
        raise _refuse(f"{fqn}: bad payload file name")
    try:
        dtype = _SERIALIZE_TO_TORCH_DTYPE[meta["dtype"]]
        if _SERIALIZE_TO_TORCH_LAYOUT[meta["layout"]] != torch.strided:
            raise KeyError("layout")
        sizes = [int(d["as_int"]) for d in meta["sizes"]]
        strides = [int(d["as_int"]) for d in meta["strides"]]
        offset = int(meta["storage_offset"]["as_int"])
    except (KeyError, TypeError, ValueError):
        raise _refuse(f"{fqn}: tensor metadata is not a static, strided tensor of a known dtype") from None
    if len(sizes) != len(strides) or min([offset, *sizes, *strides], default=0) < 0:
        raise _refuse(f"{fqn}: bad sizes or strides")
    name = f"{folder}/{path}"
    nbytes = archive.size(name)
    if nbytes % dtype.itemsize:
        raise _refuse(f"{fqn}: {nbytes} bytes is not a whole number of {dtype} elements")
    stored = nbytes // dtype.itemsize
    if all(sizes) and offset + sum((s - 1) * st for s, st in zip(sizes, strides)) >= stored:
        raise _refuse(f"{fqn}: its sizes reach past its {stored} stored elements")
    if not archive.materialize:  # shapes only; values checked in bounded chunks
        if dtype.is_floating_point and not archive.finite(name, dtype):
            archive.non_finite.append(fqn)
        tensor = torch.empty(sizes, dtype=dtype, device="meta")
    elif not all(sizes):
        tensor = torch.zeros(sizes, dtype=dtype)
    else:
        tensor = torch.as_strided(torch.frombuffer(bytearray(archive.read(name)), dtype=dtype), sizes, strides, offset)
    return nn.Parameter(tensor, requires_grad=bool(meta.get("requires_grad"))) if entry.get("is_param") else tensor


def _payloads(archive: _Archive, kind: str, model: str) -> dict[str, torch.Tensor]:
    config = archive.json(f"data/{kind}/{model}_{kind}_config.json")
    entries = config.get("config") if isinstance(config, dict) else None
    if not isinstance(entries, dict):
        raise _refuse(f"the {kind} config is malformed")
    return {fqn: _tensor(archive, f"data/{kind}", fqn, entry) for fqn, entry in entries.items()}


def _check_sample_inputs(archive: _Archive, name: str) -> None:
    """Refuse sample inputs that only a full unpickler could read: stock ``torch.export.load`` would run them.
    They are not used here; the restricted (``weights_only``) unpickler builds tensors and containers only."""
    if name not in archive.names or not archive.zf.getinfo(f"{archive.root}/{name}").file_size:
        return  # absent, or empty as torch writes it for a program without sample inputs
    try:
        torch.load(io.BytesIO(archive.read(name, MAX_PROGRAM_JSON_BYTES)), weights_only=True)
    except Exception:  # the restricted unpickler raises many types on what it refuses
        raise _refuse(f"{name} holds more than tensors (stock torch.export.load would unpickle it as code)") from None


def read_program(path: str | Path, max_bytes: int = 1 << 34) -> torch.export.ExportedProgram:
    """The exported program in ``path``, validated as the module docstring says; ``InvalidWeightsError`` if refused,
    ``TooLargeError`` if the archive declares more than ``max_bytes`` uncompressed."""
    return _read(path, max_bytes, materialize=True)[0]


def inspect_program_file(path: str | Path, max_bytes: int) -> ProgramFacts:
    """Validate a ``.pt2`` as ``read_program`` does without holding its weights (their shapes are checked against
    their bytes, their values for NaN/Inf in bounded chunks): memory does not grow with the file."""
    program, non_finite = _read(path, max_bytes, materialize=False)
    if non_finite:
        raise InvalidWeightsError(
            "the program's weights are not finite", [f"{n}: contains NaN or Inf" for n in non_finite]
        )
    return describe_program(program)


def _read(path: str | Path, max_bytes: int, materialize: bool) -> tuple[torch.export.ExportedProgram, list[str]]:
    from torch._export.serde import schema
    from torch._export.serde.serialize import ExportedProgramDeserializer, _dict_to_dataclass

    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise _refuse(f"not a zip archive: {exc}") from None
    with zf:
        archive = _Archive(zf, max_bytes, materialize)
        models = sorted(n for n in archive.names if n.startswith("models/") and n.endswith(".json"))
        if len(models) != 1:
            raise _refuse(f"the archive must hold one program; it holds {len(models)}")
        model = models[0][len("models/") : -len(".json")]
        if not _PAYLOAD_FILE.fullmatch(model):
            raise _refuse("bad program name")
        for legacy in (f"data/weights/{model}.pt", f"data/constants/{model}.pt"):
            if legacy in archive.names:
                raise _refuse(f"{legacy} is a pickle (the legacy weight format); save with torch 2.14")
        _check_sample_inputs(archive, f"data/sample_inputs/{model}.pt")
        program = _sanitized_program(archive.json(models[0]))
        weights = _payloads(archive, "weights", model)
        constants = _payloads(archive, "constants", model)
    signature = program["graph_module"]["signature"]["input_specs"]
    wanted = {s[k][f"{k}_name"] for s in signature for k in ("parameter", "buffer") if k in s}
    wanted_constants = {s["tensor_constant"]["tensor_constant_name"] for s in signature if "tensor_constant" in s}
    if set(weights) != wanted or set(constants) != wanted_constants:
        raise _refuse("the stored weights do not match the program's parameters and buffers")
    try:
        serialized = _dict_to_dataclass(schema.ExportedProgram, program)
        return ExportedProgramDeserializer().deserialize(serialized, weights, constants, None), archive.non_finite
    except InvalidWeightsError:
        raise
    except Exception as exc:  # the deserializer raises many types for inconsistent programs
        raise _refuse(f"the program could not be rebuilt: {type(exc).__name__}: {str(exc)[:200]}") from None


@dataclass(frozen=True)
class ProgramFacts:
    """What the API records about an uploaded program, to check jobs against it without loading it again."""

    input_shape: list[int]  # one sample's shape (the batch dimension left out)
    num_classes: int
    num_parameters: int


def describe_program(program: torch.export.ExportedProgram) -> ProgramFacts:
    """The sample shape the program takes and the class count it returns; refuses a program that takes
    samples of variable shape or does not return ``[batch, classes]`` logits."""
    user_input = program.graph_signature.user_inputs[0]
    placeholder = next(n for n in program.graph.nodes if n.op == "placeholder" and n.name == user_input)
    sample = list(placeholder.meta["val"].shape[1:])
    output = program.graph.output_node().args[0][0].meta["val"]
    if not all(isinstance(d, int) for d in sample):
        raise _refuse(
            f"only the batch dimension may be dynamic; the input has shape {list(placeholder.meta['val'].shape)}"
        )
    if output.dim() != 2 or not isinstance(output.shape[1], int):
        raise _refuse(f"the program must return logits of shape [batch, classes]; it returns {list(output.shape)}")
    return ProgramFacts(sample, int(output.shape[1]), sum(p.numel() for p in program.parameters()))


def program_module(program: torch.export.ExportedProgram) -> nn.Module:
    """The program as a module whose parameters and buffers carry the program's state-dict names.

    Its graph was checked to be in eval mode (``_check_eval_mode``), so ``train()``/``eval()`` only set flags;
    torch's unlifted module refuses both, which would break every caller that sets a mode."""
    module = program.module(check_guards=False)
    del module.train, module.eval  # back to nn.Module's: the graph has no mode to switch
    return module


def load_program(path: str | Path, max_bytes: int = 1 << 34) -> nn.Module:
    return program_module(read_program(path, max_bytes))


def write_program(program: torch.export.ExportedProgram, state: dict[str, torch.Tensor], path: str | Path) -> None:
    """Save ``program`` as ``.pt2`` with its parameters and buffers replaced (in place) by ``state``."""
    from gif.io.files import atomic_write

    own = program.state_dict
    missing = set(own) - set(state)
    if missing:
        raise InvalidWeightsError("the checkpoint lacks tensors of the program", sorted(missing))
    for name, value in own.items():
        edited = state[name].detach().to(value.dtype).cpu()
        own[name] = (
            nn.Parameter(edited, requires_grad=value.requires_grad) if isinstance(value, nn.Parameter) else edited
        )
    atomic_write(path, lambda tmp: torch.export.save(program, tmp), suffix=".part.pt2")  # torch warns on other names
