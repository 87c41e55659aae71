"""``make wheelhouse``: every dependency of the project as wheels in one folder, for a host without network.

GPU hosts are often air-gapped and bring their own torch. This downloads, as binary wheels for one CPython
version on manylinux x86_64, everything the project (``pyproject.toml``, with the extras asked for) and its
client (``client/pyproject.toml``) need, plus pytest (``make gpu-check`` runs it) and setuptools and wheel (to
install the project itself, editable, with ``--no-build-isolation``), and copies the MNIST test digits that
``tests/gpu`` reads (``$GIF_DATA_DIR`` or ``../shared/data``; 1.6 MB) to ``<folder>/data/mnist`` when they are
here. ``make gpu-check`` installs from the folder with ``--no-index`` (see the Makefile and README).

torch and torchvision are *not* downloaded, nor what only they pull in (triton, the nvidia-* and cuda-* wheels:
gigabytes): the resolver is given two stand-in wheels of those names without dependencies (built here, in a
temporary folder, at the versions of the development environment's torch or the project's lower bounds) and
pinned to them, so that timm's ``torch`` requirement is met without fetching torch; the stand-ins are then
deleted. ``--exclude`` deletes more by name afterwards (packages the target host already has), to make the
folder smaller.

Run: python -m bench.wheelhouse --python-version 3.12 [--extras test,bench,local] [--exclude NAME …] [--out DIR]
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HOST_PROVIDED = ("torch", "torchvision")  # the GPU host's own builds; their CUDA wheels are gigabytes
ALWAYS = ("pytest>=8", "setuptools>=68", "wheel")  # gpu-check runs pytest; the editable install builds offline
STUB_TAG = "gifstub"
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")
MNIST_FILES = ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")


def canonical(name: str) -> str:
    """A distribution name as PEP 503 compares them (``Scikit_Learn`` → ``scikit-learn``)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(requirement: str) -> str:
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    if not match:
        raise ValueError(f"cannot read a name from the requirement {requirement!r}")
    return canonical(match.group(1))


def requirements(extras: list[str], root: Path = ROOT) -> list[str]:
    """The project's and the client's requirements (with ``extras`` of the project), plus ``ALWAYS``."""
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    client = tomllib.loads((root / "client" / "pyproject.toml").read_text())["project"]
    found = [*project["dependencies"], *client.get("dependencies", [])]
    optional = project.get("optional-dependencies", {})
    for extra in extras:
        if extra not in optional:
            raise SystemExit(f"no extra {extra!r} in pyproject.toml (there are: {', '.join(optional)})")
        found += optional[extra]
    found += ALWAYS
    return list(dict.fromkeys(found))  # in order, each once


def stub_version(name: str, listed: list[str]) -> str:
    """The stand-in's version: the installed one here (the development environment's torch) when there is one,
    else the project's lower bound, tagged as a stand-in (``2.14.1+gifstub``)."""
    try:
        public = importlib.metadata.version(name).split("+")[0]
    except importlib.metadata.PackageNotFoundError:
        spec = next((r for r in listed if requirement_name(r) == name), "")
        bound = re.search(r">=\s*([0-9][0-9.]*)", spec)
        public = bound.group(1) if bound else "0"
    return f"{public}+{STUB_TAG}"


def write_stub(folder: Path, name: str, version: str) -> Path:
    """A pure-Python wheel named ``name`` with no files and no dependencies."""
    dist = f"{name}-{version}.dist-info"
    path = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as wheel:
        wheel.writestr(f"{dist}/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        wheel.writestr(f"{dist}/WHEEL", "Wheel-Version: 1.0\nGenerator: bench.wheelhouse\nRoot-Is-Purelib: true\n")
        wheel.writestr(f"{dist}/RECORD", "")
    return path


def wheel_name(path: Path) -> str:
    return canonical(path.name.split("-")[0])


def download(listed: list[str], out: Path, python_version: str) -> None:
    """``pip download`` of ``listed`` and their dependencies into ``out``, binary wheels for ``python_version``,
    with torch and torchvision resolved to dependency-free stand-ins (removed afterwards)."""
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="gif-wheelhouse-") as tmp:
        stubs, pins = Path(tmp) / "stubs", Path(tmp) / "constraints.txt"
        stubs.mkdir()
        versions = {name: stub_version(name, listed) for name in HOST_PROVIDED}
        for name, version in versions.items():
            write_stub(stubs, name, version)
        pins.write_text("".join(f"{name}=={version}\n" for name, version in versions.items()))
        platforms = [arg for platform in PLATFORMS for arg in ("--platform", platform)]
        command = [
            sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
            "--only-binary=:all:", "--python-version", python_version, "--implementation", "cp", *platforms,
            "--find-links", str(stubs), "--constraint", str(pins), "--dest", str(out), *listed,
        ]  # fmt: skip
        print("$ " + " ".join(command), flush=True)
        subprocess.run(command, check=True)
    for path in out.glob(f"*+{STUB_TAG}-*.whl"):
        path.unlink()


def exclude(out: Path, names: list[str]) -> list[str]:
    """Delete the wheels of ``names`` from ``out``; returns the files deleted."""
    unwanted = {canonical(n) for n in names}
    gone = []
    for path in sorted(out.glob("*.whl")):
        if wheel_name(path) in unwanted:
            path.unlink()
            gone.append(path.name)
    return gone


def copy_mnist(out: Path) -> Path | None:
    """The MNIST test digits (``tests/gpu`` trains on them) into ``out/data/mnist``, when they are here. The data
    folder is found as ``gif.data.shared_data_dir`` finds it (not imported: this script needs no torch)."""
    source = Path(os.environ.get("GIF_DATA_DIR") or ROOT.parent / "shared" / "data") / "mnist"
    if not all((source / f).is_file() for f in MNIST_FILES):
        return None
    target = out / "data" / "mnist"
    target.mkdir(parents=True, exist_ok=True)
    for name in MNIST_FILES:
        shutil.copyfile(source / name, target / name)
    return target


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--python-version", required=True, help="the target host's CPython, e.g. 3.12")
    parser.add_argument("--extras", default="test,bench,local", help="the project's extras, comma-separated")
    parser.add_argument("--exclude", nargs="*", default=[], help="distributions to leave out (the host has them)")
    parser.add_argument("--out", type=Path, default=ROOT / "wheelhouse")
    args = parser.parse_args(argv)
    listed = requirements(list(filter(None, args.extras.split(","))))
    download(listed, args.out, args.python_version)
    gone = exclude(args.out, args.exclude)
    mnist = copy_mnist(args.out)
    wheels = sorted(args.out.glob("*.whl"))
    print(
        f"{args.out}: {len(wheels)} wheels for CPython {args.python_version}, {folder_bytes(args.out) / 2**20:.1f} MiB"
        f" in all; without {', '.join(HOST_PROVIDED)} (the host's own)"
        + (f"; left out: {', '.join(gone)}" if gone else "")
        + (f"; MNIST test digits in {mnist}" if mnist else "; no MNIST here (tests/gpu will need GIF_DATA_DIR)")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
