"""Build time, size and disk use of the CPU image, from scratch, and the rebuild after a code edit.

    .venv/bin/python benchmarks/image_build.py [--base local] [--torch-index-url URL] [--keep]

Uses a fresh, private buildah store (``$DLDC_BUILDAH_ROOT``, default /var/tmp/dldc-buildah-bench,
removed first and, unless ``--keep``, last), so nothing is reused from earlier builds:

1. ``docker/image.py build`` (with ``--base local``: the mmdebstrap base first, timed apart);
2. ``docker/image.py test`` (the in-image smoke test of `make image-test`);
3. a code edit: the checkout's tracked files copied to a temporary folder, one comment appended
   to ``dldc/__init__.py``, the image rebuilt from the copy into the same store: its time, which
   layers it rebuilt (over 50 MB of them fails the benchmark: the dependency layers were not
   reused) and whether the edit is in the image (if not, a stale layer was reused: fails too).

Writes benchmarks/results/image_build.json. Needs what `make image` needs (root and buildah, or a
Docker engine; with ``--base local`` mmdebstrap) and the venv (for the test).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_result  # noqa: E402


def _image(args: list[str], env: dict[str, str], script: Path = REPO / "docker" / "image.py") -> float:
    start = time.monotonic()
    subprocess.run([sys.executable, str(script), *args], env=env, check=True)
    return round(time.monotonic() - start, 1)


def _load_image_script():
    import importlib.util

    spec = importlib.util.spec_from_file_location("dldc_docker_image", REPO / "docker" / "image.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _disk(root: Path) -> int:
    out = subprocess.run(["du", "-sb", "-x", str(root)], capture_output=True, text=True, check=True)
    return int(out.stdout.split()[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--base", default="local", help="`local` (mmdebstrap) or a base image [local]")
    parser.add_argument("--torch-index-url", default="https://pypi.org/simple")
    parser.add_argument("--keep", action="store_true", help="keep the store (and the image) afterwards")
    args = parser.parse_args()
    root = Path(os.environ.get("DLDC_BUILDAH_ROOT", "/var/tmp/dldc-buildah-bench"))
    env = {**os.environ, "DLDC_BUILDAH_ROOT": str(root), "HF_HUB_OFFLINE": "1"}
    _image(["clean"], env)
    build_args = ["build", "--base", args.base, "--torch-index-url", args.torch_index_url]

    total = time.monotonic()
    _image(build_args, env)
    built = json.loads((REPO / "build" / "image" / "cpu-build.json").read_text())
    disk_after_build = _disk(root) if root.exists() else None
    test_s = _image(["test"], env)
    tested = json.loads((REPO / "build" / "image" / "cpu-test.json").read_text())
    from_scratch_s = round(time.monotonic() - total, 1)

    # A code edit, in a copy of the checkout (the tracked files as they are now, edits included).
    with tempfile.TemporaryDirectory(prefix="dldc-image-edit-") as tmp:
        copy = Path(tmp) / "repo"
        files = subprocess.run(
            ["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, capture_output=True, check=True
        ).stdout.split(b"\0")
        for name in filter(None, files):
            source = REPO / name.decode()
            if source.is_file():
                (copy / name.decode()).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, copy / name.decode())
        with (copy / "dldc" / "__init__.py").open("a") as fh:
            fh.write("# benchmarks/image_build.py: a code edit\n")
        edit_s = _image(build_args, env, script=copy / "docker" / "image.py")
        edited = json.loads((copy / "build" / "image" / "cpu-build.json").read_text())
    # The edit must be in the rebuilt image (a stale layer cache would keep the old code).
    os.environ["DLDC_BUILDAH_ROOT"] = str(root)
    image = _load_image_script()
    container = image.Container(image.engine(), built["tag"])
    try:
        probe = container.run(["python3", "-c", "import dldc; print(open(dldc.__file__).read()[-200:])"])
    finally:
        container.remove()
    edit_in_image = "benchmarks/image_build.py: a code edit" in probe.stdout
    before, after = built["layer_bytes"], edited["layer_bytes"]
    # Layers are compared by size: the base, user, lock, torch and dependency layers must be the same.
    same = next((i for i, (a, b) in enumerate(zip(before, after)) if a != b), min(len(before), len(after)))
    rebuilt_bytes = sum(after[same:])
    disk_peak = _disk(root) if root.exists() else None
    if not args.keep:
        _image(["clean"], env)

    write_result(
        "image_build",
        {
            "image": built["tag"],
            "engine": built["engine"],
            "storage_driver": built["storage_driver"],
            "base_image": built["base_image"],
            "torch_index_url": built["torch_index_url"],
            "from_scratch": {
                "base_build_s": built["base_build_s"],
                "image_build_s": built["build_s"],
                "image_test_s": test_s,
                "total_s": from_scratch_s,
                "note": "base_build_s: mmdebstrap of the local base (CI builds it every run); "
                "image_build_s: `docker/image.py build` after it",
            },
            "size_bytes": built["size_bytes"],
            "size_gb": built["size_gb"],
            "layers": len(before),
            "layer_bytes": before,
            "disk_bytes_after_build": disk_after_build,
            "disk_bytes_after_edit_rebuild": disk_peak,
            "code_edit_rebuild": {
                "seconds": edit_s,
                "layers_reused": same,
                "layers_rebuilt": len(after) - same,
                "rebuilt_bytes": rebuilt_bytes,
                "edit_in_image": edit_in_image,
            },
            "image_test": tested["steps"],
        },
    )
    if not edit_in_image:
        sys.exit("the rebuilt image does not contain the code edit: a stale layer was reused")
    if rebuilt_bytes > 50e6:
        sys.exit(f"a code edit rebuilt {rebuilt_bytes / 1e6:.0f} MB of layers: the dependency layers were not reused")


if __name__ == "__main__":
    main()
