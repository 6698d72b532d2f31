"""Build and smoke-test the dldc images: `make image`, `make image-test`, `make image-clean`.

    python3 docker/image.py build [--variant cpu|cuda] [--tag TAG] [--base IMAGE|local]
                                  [--torch-index-url URL] [--no-cache]
    .venv/bin/python docker/image.py test [--tag TAG]
    python3 docker/image.py base           # only the local mmdebstrap base
    python3 docker/image.py clean          # remove every image, container and cache of the buildah store
    python3 docker/image.py buildah ARGS   # buildah on the project's store (images, push, ...)

The engine is `docker build` where a Docker engine answers (`docker info`), else buildah (Debian's
`buildah` package: `apt-get install buildah`; root, chroot isolation, no daemon). Buildah keeps
its store in ``$DLDC_BUILDAH_ROOT`` (default /var/tmp/dldc-buildah), with the overlay driver where
the kernel allows it, else vfs (which copies every layer in full; then no layer cache is kept).
``DLDC_IMAGE_ENGINE=docker|buildah`` forces one.

The build's pip uses the host's pip configuration (``pip config list``: index, mirrors,
certificate), passed as the build secrets ``pip_conf`` and ``pip_cert``: nothing of it reaches a
layer. Local mirror directories it names are bind-mounted read-only into the build (buildah
only; Docker cannot, so they are left out there).

``--base local`` builds the base image itself with Debian's ``mmdebstrap`` (bookworm, python3 3.11,
venv, git; about 2 minutes), for machines that reach Debian's archive and PyPI but no image
registry. The build writes build/image/<variant>-build.json (seconds, size, layers); the test
writes build/image/<variant>-test.json.

The test runs, inside the image, as the image's user, with the image's own environment (tracking
on, to the default SQLite store in the work directory) and no network: ``dldc --help``; ``synth``
→ ``ingest`` → ``train-scorer`` → ``score`` on 20 images; the command line the compiled pipeline
gives the ``synth`` component (read from the compiled YAML; only the ``{{$}}`` placeholder, the
executor input Kubeflow's driver writes there, is filled in); then it checks the MLflow runs, the
work directory's owner, that no build secret and no ``components``/``pipelines`` package is in the
image.
"""

from __future__ import annotations

import argparse
import ast
import configparser
import contextlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "build" / "image"
VERSION = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]["version"]
# The tags components/images.py compiles into the pipeline by default.
DEFAULT_TAGS = {"cpu": f"dldc:{VERSION}-cpu", "cuda": f"dldc:{VERSION}-cuda"}
LOCAL_BASE = "localhost/dldc-base:bookworm-py3.11"
BUILDAH_ROOT = Path(os.environ.get("DLDC_BUILDAH_ROOT", "/var/tmp/dldc-buildah"))
DEBIAN_MIRROR = os.environ.get("DLDC_DEBIAN_MIRROR", "http://deb.debian.org/debian")
DEBIAN_SECURITY = os.environ.get("DLDC_DEBIAN_SECURITY_MIRROR", "http://deb.debian.org/debian-security")
BASE_PACKAGES = ["python3", "python3-venv", "ca-certificates", "git", "passwd"]
# pip settings the build may use; anything else in the host's configuration stays out.
PIP_KEYS = {
    "index-url", "extra-index-url", "find-links", "trusted-host", "timeout", "default-timeout",
    "retries", "proxy", "cert", "no-index", "prefer-binary", "only-binary",
}  # fmt: skip
WORKDIR = "/home/dldc/work"
TRACKING_URI = f"sqlite:///{WORKDIR}/mlflow.db"
# Tiny everywhere: 20 images of two scenes, two folds of one epoch of the smallest tower.
TINY = ["indomain.architecture=indomain-test", "indomain.folds=2", "indomain.epochs=1",
        "synth.scenes=[farmland, forest]"]  # fmt: skip
# The component whose compiled command line the test runs in the image, and its parameters.
COMPONENT = "synth"
COMPONENT_INPUTS = {"n_images": 20, "size": 32, "noise_rate": 0.3, "seed": 1, "settings": TINY, "profile": "demo"}


class ImageError(RuntimeError):
    """A step failed; the message says which and why."""


def log(message: str) -> None:
    print(f"[image] {message}", flush=True)


def run(cmd: Sequence[str], **kwargs: Any) -> subprocess.CompletedProcess:
    log("$ " + shlex.join(str(c) for c in cmd))
    return subprocess.run([str(c) for c in cmd], **kwargs)


# --------------------------------------------------------------------------- engines


def engine() -> str:
    """``docker`` where a Docker engine answers, else ``buildah``."""
    forced = os.environ.get("DLDC_IMAGE_ENGINE")
    if forced:
        if forced not in ("docker", "buildah"):
            raise ImageError(f"DLDC_IMAGE_ENGINE={forced!r}: expected docker or buildah")
        return forced
    if shutil.which("docker"):
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            if subprocess.run(["docker", "info"], capture_output=True, timeout=30).returncode == 0:
                return "docker"
    if shutil.which("buildah"):
        return "buildah"
    raise ImageError(
        "no Docker engine and no buildah: install one (Debian: apt-get update && apt-get install -y buildah)"
    )


def storage_driver() -> str:
    """overlay where it mounts (kernel overlayfs, store not on overlayfs), else vfs; remembered per store."""
    BUILDAH_ROOT.mkdir(parents=True, exist_ok=True)
    chosen = BUILDAH_ROOT / "driver"
    if os.environ.get("DLDC_STORAGE_DRIVER"):
        return os.environ["DLDC_STORAGE_DRIVER"]
    if chosen.exists():
        return chosen.read_text().strip()
    driver = "vfs"
    probe = BUILDAH_ROOT / "probe"
    try:
        for path in ("lower", "upper", "work", "merged"):
            (probe / path).mkdir(parents=True, exist_ok=True)
        options = f"lowerdir={probe}/lower,upperdir={probe}/upper,workdir={probe}/work"
        if subprocess.run(["mount", "-t", "overlay", "overlay", "-o", options, str(probe / "merged")],
                          capture_output=True).returncode == 0:  # fmt: skip
            subprocess.run(["umount", str(probe / "merged")], check=True)
            driver = "overlay"
    finally:
        shutil.rmtree(probe, ignore_errors=True)
    chosen.write_text(driver + "\n")
    return driver


def buildah_cmd() -> list[str]:
    return ["buildah", "--root", str(BUILDAH_ROOT / "storage"), "--runroot", str(BUILDAH_ROOT / "run"),
            "--storage-driver", storage_driver()]  # fmt: skip


def buildah_env() -> dict[str, str]:
    """TMPDIR inside the store: cache mounts and temporary layer files land where the store has room."""
    tmp = BUILDAH_ROOT / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    return {**os.environ, "TMPDIR": str(tmp), "BUILDAH_ISOLATION": os.environ.get("BUILDAH_ISOLATION", "chroot")}


def image_exists(eng: str, ref: str) -> bool:
    cmd = (
        ["docker", "image", "inspect", ref] if eng == "docker" else [*buildah_cmd(), "inspect", "--type", "image", ref]
    )
    return subprocess.run(cmd, capture_output=True, env=buildah_env() if eng == "buildah" else None).returncode == 0


def image_size(eng: str, ref: str) -> tuple[int, list[int]]:
    """Uncompressed size of the image and of each layer, bytes."""
    if eng == "docker":
        out = subprocess.run(["docker", "image", "inspect", ref], capture_output=True, text=True, check=True).stdout
        size = int(json.loads(out)[0]["Size"])
        return size, []
    out = subprocess.run([*buildah_cmd(), "inspect", "--type", "image", ref], capture_output=True, text=True,
                         check=True, env=buildah_env()).stdout  # fmt: skip
    layers = [int(layer["size"]) for layer in json.loads(json.loads(out)["Manifest"])["layers"]]
    return sum(layers), layers


# --------------------------------------------------------------------------- pip configuration as secrets


def pip_config() -> dict[str, dict[str, str]]:
    """The host's effective pip settings, ``{section: {key: value}}``; environment variables win."""
    out = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True)
    sections: dict[str, dict[str, str]] = {}
    env: dict[str, str] = {}
    for line in out.stdout.splitlines():
        match = re.match(r"^(:env:|[\w-]+)\.([\w-]+)=(.*)$", line.strip())
        if not match:
            continue
        section, key, value = match.groups()
        with contextlib.suppress(ValueError, SyntaxError):
            value = str(ast.literal_eval(value))  # pip prints Python repr()s: '...'
        if key not in PIP_KEYS:
            continue
        if section == ":env:":
            env[key] = value
        else:
            sections.setdefault(section, {})[key] = value
    for key, value in env.items():
        for values in sections.values():
            values.pop(key, None)
        sections.setdefault("global", {})[key] = value
    return sections


def local_paths(value: str) -> list[Path]:
    """Local directories a pip setting refers to (file:// indexes, find-links directories)."""
    paths = []
    for item in value.split():
        path = Path(item.removeprefix("file://")) if item.startswith("file://") or item.startswith("/") else None
        if path is None or not path.exists():
            continue
        # A PEP 503 index folder `X/simple` links to its files through `../../files/...`.
        paths.append(path.parent if path.name == "simple" else path)
    return paths


@contextlib.contextmanager
def pip_secrets(eng: str) -> Iterator[tuple[list[str], list[str]]]:
    """(secret arguments, volume arguments) for the build; the files are deleted afterwards."""
    sections = pip_config()
    mounts: list[Path] = []
    secrets_dir = Path(tempfile.mkdtemp(prefix="dldc-pip-secrets-"))
    os.chmod(secrets_dir, 0o700)
    try:
        parser = configparser.ConfigParser(interpolation=None)
        args: list[str] = []
        for section, values in sections.items():
            parser.add_section(section)
            for key, value in values.items():
                if key == "cert":
                    if Path(value).is_file():
                        shutil.copyfile(value, secrets_dir / "pip_cert")
                        args += ["--secret", f"id=pip_cert,src={secrets_dir / 'pip_cert'}"]
                        parser.set(section, key, "/run/secrets/pip_cert")
                    continue
                paths = local_paths(value)
                if paths and eng == "docker":
                    kept = " ".join(v for v in value.split() if not local_paths(v))
                    log(f"pip {section}.{key}: local paths left out (docker build cannot mount them): {value}")
                    if not kept:
                        continue
                    value = kept
                mounts += paths
                parser.set(section, key, value)
        conf = secrets_dir / "pip_conf"
        with conf.open("w") as fh:
            parser.write(fh)
        args += ["--secret", f"id=pip_conf,src={conf}"]
        volumes = [f"-v={p}:{p}:ro" for p in dict.fromkeys(mounts)] if eng == "buildah" else []
        if sections:
            log(f"build pip configuration (secret pip_conf): {dict(sections)}")
        yield args, volumes
    finally:
        shutil.rmtree(secrets_dir, ignore_errors=True)


# --------------------------------------------------------------------------- base and build


def build_local_base(eng: str, force: bool = False) -> float:
    """Debian bookworm with python3 (3.11), venv, git, made by mmdebstrap; seconds spent (0: reused)."""
    if not force and image_exists(eng, LOCAL_BASE):
        log(f"local base {LOCAL_BASE} exists (`docker/image.py base --force` rebuilds it)")
        return 0.0
    if not shutil.which("mmdebstrap"):
        raise ImageError("--base local needs mmdebstrap (Debian: apt-get update && apt-get install -y mmdebstrap)")
    start = time.monotonic()
    work = BUILDAH_ROOT / "tmp" / "base"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    tarball = work / "rootfs.tar"
    sources = [f"deb {DEBIAN_MIRROR} bookworm main", f"deb {DEBIAN_MIRROR} bookworm-updates main",
               f"deb {DEBIAN_SECURITY} bookworm-security main"]  # fmt: skip
    dpkg = [
        "path-exclude=/usr/share/man/*",
        "path-exclude=/usr/share/doc/*",
        "path-include=/usr/share/doc/*/copyright",
        "path-exclude=/usr/share/locale/*",
        "force-unsafe-io",
    ]
    cmd = ["mmdebstrap", "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}",
           *[f"--dpkgopt={opt}" for opt in dpkg], "--aptopt=Acquire::Languages \"none\"",
           "bookworm", str(tarball), *sources]  # fmt: skip
    if run(cmd).returncode != 0:
        raise ImageError("mmdebstrap failed (is Debian's archive reachable? DLDC_DEBIAN_MIRROR sets a mirror)")
    env_path = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    if eng == "docker":
        cmd = ["docker", "import", "--change", f"ENV {env_path}", "--change", "ENV LANG=C.UTF-8",
               "--change", 'CMD ["python3"]', str(tarball), LOCAL_BASE]  # fmt: skip
        if run(cmd).returncode != 0:
            raise ImageError("docker import of the base failed")
    else:
        b, env = buildah_cmd(), buildah_env()
        ctr = subprocess.run(
            [*b, "from", "scratch"], capture_output=True, text=True, check=True, env=env
        ).stdout.strip()
        try:
            steps = [
                ["add", ctr, str(tarball), "/"],
                ["config", "--env", env_path, "--env", "LANG=C.UTF-8", "--cmd", "python3",
                 "--created-by", "mmdebstrap --variant=minbase bookworm", ctr],
                ["commit", "--quiet", ctr, LOCAL_BASE],
            ]  # fmt: skip
            for step in steps:
                if run([*b, *step], env=env, stdout=subprocess.DEVNULL).returncode != 0:
                    raise ImageError(f"buildah {step[0]} of the base failed")
        finally:
            subprocess.run([*b, "rm", ctr], capture_output=True, env=env)
    shutil.rmtree(work, ignore_errors=True)
    seconds = time.monotonic() - start
    log(f"local base {LOCAL_BASE} built in {seconds:.0f} s")
    return seconds


def vcs_ref() -> str:
    out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True)
    return out.stdout.strip() if out.returncode == 0 else "unknown"


def build(args: argparse.Namespace) -> dict[str, Any]:
    eng = engine()
    tag = args.tag or DEFAULT_TAGS[args.variant]
    dockerfile = REPO / "docker" / f"Dockerfile.{args.variant}"
    base_seconds = 0.0
    build_args = [f"VERSION={VERSION}", f"VCS_REF={vcs_ref()}"]
    base = args.base or os.environ.get("IMAGE_BASE") or ""
    if base == "local":
        base_seconds = build_local_base(eng)
        base = LOCAL_BASE
    if base:
        build_args.append(f"BASE_IMAGE={base}")
    torch_index = args.torch_index_url or os.environ.get("TORCH_INDEX_URL") or ""
    if torch_index:
        build_args.append(f"TORCH_INDEX_URL={torch_index}")
    driver = storage_driver() if eng == "buildah" else None
    start = time.monotonic()
    with pip_secrets(eng) as (secret_args, volume_args):
        common = [*[f"--build-arg={a}" for a in build_args], *secret_args, "-f", str(dockerfile), "-t", tag]
        if eng == "docker":
            cmd = ["docker", "build", *common, *(["--no-cache"] if args.no_cache else []), str(REPO)]
            proc = run(cmd, env={**os.environ, "DOCKER_BUILDKIT": "1"})
        else:
            # --layers keeps each instruction's layer and reuses it (Docker's cache); with vfs every layer
            # is a full copy of the file system, so there each stage is committed once instead.
            layers = "--layers=true" if driver == "overlay" else "--layers=false"
            pull = "--pull=never" if base == LOCAL_BASE else "--pull=false"
            cmd = [*buildah_cmd(), "bud", "--isolation", os.environ.get("BUILDAH_ISOLATION", "chroot"), layers, pull,
                   *(["--no-cache"] if args.no_cache else []), *volume_args, *common, str(REPO)]  # fmt: skip
            proc = run(cmd, env=buildah_env())
    seconds = time.monotonic() - start
    if proc.returncode != 0:
        raise ImageError(f"building {tag} from {dockerfile.name} failed (exit {proc.returncode}); see above")
    size, layer_sizes = image_size(eng, tag)
    result = {
        "variant": args.variant, "tag": tag, "engine": eng, "storage_driver": driver,
        "base_image": base or "(Dockerfile default)", "torch_index_url": torch_index or "(Dockerfile default)",
        "base_build_s": round(base_seconds, 1), "build_s": round(seconds, 1),
        "size_bytes": size, "size_gb": round(size / 1e9, 2), "layer_bytes": layer_sizes,
    }  # fmt: skip
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"{args.variant}-build.json").write_text(json.dumps(result, indent=2) + "\n")
    log(f"built {tag} in {seconds:.0f} s (+{base_seconds:.0f} s local base): {size / 1e9:.2f} GB, {eng}")
    return result


# --------------------------------------------------------------------------- the in-image test


def compiled_component_argv(pipeline_yaml: Path, component: str, inputs: dict[str, Any],
                            outputs_root: str) -> tuple[str, list[str]]:  # fmt: skip
    """(image, argv) that Kubernetes runs for ``component``: the compiled ``command`` + ``args``.

    Everything comes from the compiled YAML; only ``{{$}}``, where Kubeflow's driver puts the
    executor input, is filled in: ``inputs`` as parameter values, and each output artifact at
    ``outputs_root/<name>`` (a local path: the executor uses a local URI as the path).
    """
    import yaml

    spec = next(yaml.safe_load_all(pipeline_yaml.read_text()))  # then the Kubernetes platform spec
    dags, task = [spec["root"]["dag"]], None
    while dags and task is None:  # the task may sit inside a condition or a loop
        dag = dags.pop(0)
        task = dag["tasks"].get(component)
        dags += [spec["components"][t["componentRef"]["name"]]["dag"] for t in dag["tasks"].values()
                 if "dag" in spec["components"][t["componentRef"]["name"]]]  # fmt: skip
    if task is None:
        raise ImageError(f"the compiled pipeline has no task {component!r}")
    comp = spec["components"][task["componentRef"]["name"]]
    container = spec["deploymentSpec"]["executors"][comp["executorLabel"]]["container"]
    declared = set(comp.get("inputDefinitions", {}).get("parameters", {}))
    if declared != set(inputs):
        raise ImageError(f"{component}: compiled inputs {sorted(declared)} != test inputs {sorted(inputs)}")
    artifacts = {
        name: {"artifacts": [{"type": {"schemaTitle": out["artifactType"]["schemaTitle"]},
                              "uri": f"{outputs_root}/{name}", "metadata": {}}]}
        for name, out in comp.get("outputDefinitions", {}).get("artifacts", {}).items()
    }  # fmt: skip
    executor_input = {
        "inputs": {"parameterValues": inputs},
        "outputs": {"artifacts": artifacts, "outputFile": f"{outputs_root}/executor_output.json"},
    }
    argv = [*container["command"], *container.get("args", [])]
    placeholders = [a for a in argv if "{{$" in a and a != "{{$}}"]
    if placeholders:
        raise ImageError(f"{component}: unexpected placeholders in the compiled command: {placeholders}")
    return container["image"], [json.dumps(executor_input) if a == "{{$}}" else a for a in argv]


class Container:
    """One container of the image; commands run in it in turn and share its file system."""

    def __init__(self, eng: str, tag: str) -> None:
        self.eng, self.tag = eng, tag
        if eng == "buildah":
            self.name = subprocess.run([*buildah_cmd(), "from", "--pull-never", "--quiet", tag], capture_output=True,
                                       text=True, check=True, env=buildah_env()).stdout.strip()  # fmt: skip
        else:
            # Kubernetes-like: a fresh container per command, the work directory on a volume that
            # starts as the image's (owner and files included).
            self.name = f"dldc-image-test-{os.getpid()}"
            subprocess.run(["docker", "volume", "create", self.name], check=True, capture_output=True)

    def run(self, argv: Sequence[str], timeout: float = 900) -> subprocess.CompletedProcess:
        """Run ``argv`` as the image's command line (entrypoint replaced), no network, image defaults."""
        if self.eng == "buildah":
            # chroot isolation shares the host's network namespace: `unshare --net` takes it away.
            cmd = ["unshare", "--net", *buildah_cmd(), "run", "--isolation", "chroot", self.name, "--", *argv]
            env = buildah_env()
        else:
            cmd = ["docker", "run", "--rm", "--network", "none", "-v", f"{self.name}:{WORKDIR}",
                   "--entrypoint", argv[0], self.tag, *argv[1:]]  # fmt: skip
            env = None
        shown = [a if len(a) < 200 else a[:60] + f"...({len(a)} chars)" for a in argv]
        log("in image: " + shlex.join(shown))
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)

    def remove(self) -> None:
        if self.eng == "buildah":
            subprocess.run([*buildah_cmd(), "rm", self.name], capture_output=True, env=buildah_env())
        else:
            subprocess.run(["docker", "volume", "rm", "-f", self.name], capture_output=True)


def test(args: argparse.Namespace) -> dict[str, Any]:
    eng = engine()
    tag = args.tag or DEFAULT_TAGS[args.variant]
    if not image_exists(eng, tag):
        raise ImageError(f"no image {tag}: run `make image` first")
    work = Path(tempfile.mkdtemp(prefix="dldc-image-test-"))
    steps: list[dict[str, Any]] = []
    start = time.monotonic()
    # The pipeline, compiled from this checkout for this image (`python -m pipelines compile`).
    pipeline_yaml = work / "dldc.pipeline.yaml"
    compile_env = {**os.environ, "DLDC_IMAGE": tag, "DLDC_GPU_IMAGE": tag}
    proc = subprocess.run([sys.executable, "-m", "pipelines", "compile", "--out", str(pipeline_yaml)],
                          cwd=REPO, env=compile_env, capture_output=True, text=True)  # fmt: skip
    if proc.returncode != 0:
        raise ImageError(f"compiling the pipeline failed:\n{proc.stdout}{proc.stderr}")
    component_root = f"{WORKDIR}/kfp/{COMPONENT}"
    image, component_argv = compiled_component_argv(pipeline_yaml, COMPONENT, COMPONENT_INPUTS, component_root)
    if image != tag:
        raise ImageError(f"the compiled synth component names image {image!r}, not {tag!r}")

    settings = [arg for s in TINY for arg in ("-S", s)]
    dldc = ["dldc", "--no-progress", *settings]
    mlflow_runs = (
        "import mlflow; runs = mlflow.search_runs(search_all_experiments=True, output_format='list'); "
        "print(sorted(r.info.run_name for r in runs if r.info.status == 'FINISHED'))"
    )
    probe = (
        "import importlib.util as u, os, socket, sys\n"
        "def reach(host):\n"
        "    try:\n"
        "        socket.create_connection((host, 443), timeout=5).close(); return True\n"
        "    except OSError:\n"
        "        return False\n"
        "st = os.stat('.')\n"
        "print({'uid': os.getuid(), 'gid': os.getgid(), 'cwd': os.getcwd(), 'cwd_owner': st.st_uid,\n"
        "       'cwd_writable': os.access('.', os.W_OK), 'tracking': os.environ.get('MLFLOW_TRACKING_URI'),\n"
        "       'network': reach('1.1.1.1') or reach('pypi.org'),\n"
        "       'packages': [n for n in ('components', 'pipelines') if u.find_spec(n)],\n"
        "       'secrets': [p for p in ('/run/secrets/pip_conf', '/run/secrets/pip_cert') if os.path.exists(p)]})\n"
    )
    expected = {"uid": 1000, "gid": 1000, "cwd": WORKDIR, "cwd_owner": 1000, "cwd_writable": True,
                "tracking": TRACKING_URI, "network": False, "packages": [], "secrets": []}  # fmt: skip

    def check_probe(out: str) -> str | None:
        found = ast.literal_eval(out.strip().splitlines()[-1])
        wrong = {k: (found.get(k), v) for k, v in expected.items() if found.get(k) != v}
        return f"(found, expected): {wrong}" if wrong else None

    def check_runs(out: str) -> str | None:
        names = out.strip().splitlines()[-1]
        missing = [n for n in ("synth", "ingest", "train_scorer", "score") if f"'{n}'" not in names]
        return f"no finished MLflow runs {missing} in {names}" if missing else None

    plan: list[tuple[str, list[str], Any]] = [
        ("defaults", ["python3", "-c", probe], check_probe),
        ("help", ["dldc", "--help"], None),
        ("synth", [*dldc, "synth", "--out", "data/synthrs", "--n-images", "20", "--size", "32"], None),
        ("ingest", [*dldc, "ingest", "--root", "data/synthrs", "--out", "data/ingest"], None),
        ("train-scorer", [*dldc, "train-scorer", "--manifest", "data/ingest/manifest.parquet", "--out", "data/scorer"],
         None),
        ("score", [*dldc, "score", "--manifest", "data/ingest/manifest.parquet", "--scorer", "indomain:data/scorer",
                   "--out", "data/scores"], None),  # fmt: skip
        (f"component {COMPONENT} (compiled command)", component_argv, None),
        ("component outputs", ["sh", "-c", f"test -s {component_root}/dataset/synthrs.json && "
                               f"test -s {component_root}/executor_output.json && ls {component_root}/dataset"], None),
        ("mlflow runs", ["python3", "-c", mlflow_runs], check_runs),
        ("pip check", ["pip", "check"], None),
    ]  # fmt: skip
    container = Container(eng, tag)
    failures: list[str] = []
    try:
        for name, argv, check in plan:
            t0 = time.monotonic()
            proc = container.run(argv)
            seconds = round(time.monotonic() - t0, 1)
            problem = f"exit {proc.returncode}" if proc.returncode != 0 else (check(proc.stdout) if check else None)
            output = (proc.stdout + proc.stderr).strip()
            steps.append({"step": name, "seconds": seconds, "ok": problem is None})
            log(f"{'ok  ' if problem is None else 'FAIL'} {name} ({seconds} s)" + (f": {problem}" if problem else ""))
            if problem:
                print(output[-4000:], flush=True)
                failures.append(f"{name}: {problem}")
                if name in ("synth", "ingest", "train-scorer"):
                    break  # the rest of the chain needs it
            elif name in ("defaults", "component outputs", "mlflow runs"):
                print("    " + output.splitlines()[-1][:400], flush=True)
    finally:
        container.remove()
        shutil.rmtree(work, ignore_errors=True)
    result = {"variant": args.variant, "tag": tag, "engine": eng, "seconds": round(time.monotonic() - start, 1),
              "steps": steps, "failures": failures}  # fmt: skip
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"{args.variant}-test.json").write_text(json.dumps(result, indent=2) + "\n")
    if failures:
        raise ImageError(f"in-image test of {tag} failed: " + "; ".join(failures))
    log(f"in-image test of {tag} passed in {result['seconds']:.0f} s")
    return result


# --------------------------------------------------------------------------- housekeeping


def clean() -> None:
    """Every container, image and cache of the project's buildah store (Docker: the dldc tags only)."""
    if engine() == "docker":
        for tag in DEFAULT_TAGS.values():
            subprocess.run(["docker", "image", "rm", "-f", tag], capture_output=True)
        return
    if BUILDAH_ROOT.exists():
        env = buildah_env()
        subprocess.run([*buildah_cmd(), "rm", "--all"], capture_output=True, env=env)
        subprocess.run([*buildah_cmd(), "rmi", "--all", "--force"], capture_output=True, env=env)
        # Unmount anything still mounted under the store, then remove it.
        mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()
                  if line.split()[1].startswith(str(BUILDAH_ROOT))]  # fmt: skip
        for mount in sorted(mounts, reverse=True):
            subprocess.run(["umount", "-l", mount], capture_output=True)
        shutil.rmtree(BUILDAH_ROOT, ignore_errors=True)
        log(f"removed {BUILDAH_ROOT}")


def disk_usage() -> int:
    """Bytes under the buildah store (0 without one)."""
    if not BUILDAH_ROOT.exists():
        return 0
    out = subprocess.run(["du", "-sb", "-x", str(BUILDAH_ROOT)], capture_output=True, text=True)
    return int(out.stdout.split()[0]) if out.returncode == 0 and out.stdout else 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("build", "test"):
        p = sub.add_parser(name)
        p.add_argument("--variant", choices=sorted(DEFAULT_TAGS), default="cpu")
        p.add_argument("--tag", help="image tag [dldc:<version>-<variant>, what the pipeline compiles in]")
        if name == "build":
            p.add_argument("--base", help="base image, or `local` (mmdebstrap) [Dockerfile default; $IMAGE_BASE]")
            p.add_argument(
                "--torch-index-url", help="index for torch/torchvision [Dockerfile default; $TORCH_INDEX_URL]"
            )
            p.add_argument("--no-cache", action="store_true", help="reuse no cached layer")
    base = sub.add_parser("base")
    base.add_argument("--force", action="store_true")
    sub.add_parser("clean")
    sub.add_parser("buildah").add_argument("args", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    try:
        if args.command == "build":
            build(args)
        elif args.command == "test":
            test(args)
        elif args.command == "base":
            build_local_base(engine(), force=args.force)
        elif args.command == "clean":
            clean()
        else:
            return subprocess.run([*buildah_cmd(), *args.args], env=buildah_env()).returncode
    except ImageError as err:
        print(f"image: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
