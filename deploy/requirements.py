"""Print pip requirements straight from pyproject.toml, so the Docker images never drift from it.

Used by the Dockerfile (it runs before the project's source is copied, for layer caching):
  python requirements.py                       # serving deps only: what the runtime image installs
  python requirements.py --extra export        # + the export extra (torch, weights), for the export stage
  python requirements.py --extra export --only torch
  python requirements.py --variant cuda --onnxruntime-gpu 'onnxruntime-gpu==1.26.0'
The cuda variant swaps onnxruntime for onnxruntime-gpu: both install the same `onnxruntime` module and must
never be installed together. Standard library only (it runs on a bare python image).
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib
from pathlib import Path

_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


def canonical(requirement: str) -> str:
    """The normalised project name of a requirement string (PEP 503)."""
    match = _NAME.match(requirement)
    if not match:
        raise ValueError(f"cannot read a package name from requirement {requirement!r}")
    return re.sub(r"[-_.]+", "-", match.group(1)).lower()


def requirements(
    pyproject: Path, extras: list[str] = (), variant: str = "cpu", onnxruntime_gpu: str = "onnxruntime-gpu"
) -> list[str]:
    project = tomllib.loads(pyproject.read_text())["project"]
    optional = project.get("optional-dependencies", {})
    unknown = [extra for extra in extras if extra not in optional]
    if unknown:
        raise ValueError(f"no extra {', '.join(unknown)} in {pyproject}; extras are {', '.join(sorted(optional))}")
    lines = list(project["dependencies"])
    for extra in extras:
        lines += optional[extra]
    if variant == "cuda":
        if canonical(onnxruntime_gpu) != "onnxruntime-gpu":
            raise ValueError(f"--onnxruntime-gpu must name onnxruntime-gpu, got {onnxruntime_gpu!r}")
        lines = [onnxruntime_gpu if canonical(line) == "onnxruntime" else line for line in lines]
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pyproject", type=Path, default=Path(__file__).with_name("pyproject.toml"))
    parser.add_argument("--extra", action="append", default=[], help="an optional-dependencies group to add")
    parser.add_argument("--only", action="append", default=[], help="print only these packages")
    parser.add_argument("--variant", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--onnxruntime-gpu", default="onnxruntime-gpu", help="requirement used by the cuda variant")
    args = parser.parse_args(argv)
    if not args.pyproject.is_file():  # in the repository the file sits one folder up
        args.pyproject = Path(__file__).resolve().parent.parent / "pyproject.toml"
    try:
        lines = requirements(args.pyproject, args.extra, args.variant, args.onnxruntime_gpu)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    wanted = {canonical(name) for name in args.only}
    if wanted:
        missing = wanted - {canonical(line) for line in lines}
        if missing:
            print(f"error: {', '.join(sorted(missing))} not among the requirements", file=sys.stderr)
            return 2
        lines = [line for line in lines if canonical(line) in wanted]
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
