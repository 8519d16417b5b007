"""timm's own model tests (``tests/test_models.py`` from the installed timm's source distribution) on our models.

The file is fetched once with ``pip download --no-deps --no-binary :all: timm==<installed version>`` and cached in
pytest's cache (``.pytest_cache/d/timm-sdist``). Three lines are added to it, nothing else changes:

- ``import elfatt.models`` after ``import timm``, which registers the ELFATT variants with timm;
- ``FEAT_INTER_FILTERS += ['cswin_elfatt', 'swin_elfatt', 'vit_elfatt']``: our model files join the list of
  modules with ``forward_intermediates`` and the ``getter`` feature class, where timm lists its own. The ViT
  variants already match timm's ``NON_STD_FILTERS`` (``vit_*``) and the hierarchical ones its standard tests;
- ``EXCLUDE_JIT_FILTERS += ['*_elfatt_*']``: our models join the families that timm's TorchScript tests leave out,
  as timm does for its own unscriptable models; ``torch.compile``, ``torch.export`` and ONNX are their deployment
  paths.

It then runs in a subprocess with ``-k`` selecting our models: forward (with gradient checkpointing), backward,
default cfgs, features_only, forward_intermediates (and its ``getter`` features), FX forward and backward. Every
test kind runs on the three tiny variants, which keeps the suite within CI's budget on 2 cores.
``ELFATT_TIMM_SUITE=all`` runs it on all eleven variants and adds the slow
``test_prune_intermediate_layers_contract`` (which timm's own CI leaves out: it prunes at every feature index).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import timm

import elfatt.models  # noqa: F401  (registers the variants, for ELFATT_TIMM_SUITE=all)

ADDED_IMPORT = "import elfatt.models  # added by elfatt: registers the ELFATT models with timm\n"
ADDED_FAMILIES = "FEAT_INTER_FILTERS += ['cswin_elfatt', 'swin_elfatt', 'vit_elfatt']  # added by elfatt\n"
ADDED_JIT_EXCLUSION = "EXCLUDE_JIT_FILTERS += ['*_elfatt_*']  # added by elfatt: no TorchScript\n"
TINY = ["cswin_elfatt_tiny_224", "swin_elfatt_tiny_224", "vit_elfatt_tiny_patch16_224"]
TEST_KINDS = [
    "test_model_forward",
    "test_model_backward",
    "test_model_default_cfgs",
    "test_model_default_cfgs_non_std",
    "test_model_forward_features",
    "test_model_forward_intermediates_features",
    "test_model_forward_intermediates",
    "test_model_forward_fx",
    "test_model_backward_fx",
]


def _timm_test_file(cache_dir: Path) -> Path:
    """timm's tests/test_models.py for the installed timm, from its source distribution (downloaded once)."""
    version = timm.__version__
    target = cache_dir / f"timm-{version}-test_models.py"
    if target.exists():
        return target
    download = cache_dir / "download"
    download.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:"]
    result = subprocess.run(command + [f"timm=={version}", "-d", str(download)], capture_output=True, text=True)
    if result.returncode != 0:
        pytest.fail(f"could not download timm {version}'s source distribution: {result.stderr.strip()[-500:]}")
    with tarfile.open(download / f"timm-{version}.tar.gz") as archive:
        member = archive.extractfile(f"timm-{version}/tests/test_models.py")
        target.write_bytes(member.read())
    return target


def _with_elfatt(source: str) -> str:
    """timm's test file with the three added lines (see the module docstring)."""
    for anchor in ("\nimport timm\n", "\n# transformer / hybrid models don't support", "\nTARGET_FWD_SIZE ="):
        if source.count(anchor) != 1:
            pytest.fail(f"timm's test_models.py changed: {anchor.strip()!r} is not found exactly once")
    source = source.replace("\nimport timm\n", "\nimport timm\n" + ADDED_IMPORT)
    source = source.replace("\nTARGET_FWD_SIZE =", "\n" + ADDED_JIT_EXCLUSION + "TARGET_FWD_SIZE =")
    return source.replace(
        "\n# transformer / hybrid models don't support",
        "\n" + ADDED_FAMILIES + "\n# transformer / hybrid models don't support",
    )


def test_timm_model_suite(request, tmp_path):
    # pytest's cache keeps the download between runs; under ``-p no:cacheprovider`` it is fetched into tmp_path.
    cache = getattr(request.config, "cache", None)
    cache_dir = Path(cache.mkdir("timm-sdist")) if cache is not None else tmp_path / "timm-sdist"
    test_file = tmp_path / "test_timm_models_patched.py"
    test_file.write_text(_with_elfatt(_timm_test_file(cache_dir).read_text()))
    everything = os.environ.get("ELFATT_TIMM_SUITE") == "all"
    models = timm.list_models("*_elfatt_*") if everything else TINY
    kinds = TEST_KINDS + (["test_prune_intermediate_layers_contract"] if everything else [])
    selection = f"({' or '.join(kinds)}) and ({' or '.join(models)})"
    command = [sys.executable, "-m", "pytest", str(test_file), "-q", "-p", "no:cacheprovider", "-k", selection]
    command += ["-W", "ignore::pytest.PytestUnknownMarkWarning", "--tb=short", "-o", "addopts="]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=3600)
    summary = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else result.stderr[-2000:]
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    passed = int(re.search(r"(\d+) passed", summary).group(1))
    # Every test kind ran for every model but the ones timm's lists leave out: cfgs are std (hierarchical) or
    # non-std (ViT), and timm's features_only test excludes its non-std (ViT) models.
    vits = sum(name.startswith("vit_") for name in models)
    expected = len(models) * (len(kinds) - 1) - vits
    assert passed == expected and "skipped" not in summary and "failed" not in summary, summary
    print(f"timm's suite on {len(models)} models: {summary}")
