"""The images the container tests run, built here without a registry and cached between runs.

- The base: Debian minbase with Python (`mmdebstrap` from this machine's apt sources, then
  `podman import`), standing in for the Dockerfile's default python:*-slim base, which no
  registry here serves. Keyed by the apt sources and the package list.
- The exporter image: the real Dockerfile on that base (`--build-arg PYTHON_IMAGE`), keyed by
  the base and every file of the build context, so that an unchanged checkout finds its image in
  seconds and any change to what goes into the image rebuilds it (podman's layer cache keeps the
  locked dependencies' layer when only the source changed).
- PostgreSQL servers: the base plus one major's npm server binaries (harness/pgmajors.py), for
  tests/test_containers.py.

A file lock makes concurrent builders (pytest-xdist workers, other checkouts' runs) wait for one
build instead of racing. `python -m tests.images` builds them all and says how long it took.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from harness import pgmajors
from tests.dockerfile import load_dockerfile
from tests.helpers import REPO
from tests.podman import Podman, PodmanError, file_lock

BASE_PACKAGES = ("python3", "python3-venv", "python-is-python3", "ca-certificates")
# Documentation and translations are of no use in an image (copyright files stay).
_DPKG_EXCLUDES = (
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
    "path-exclude=/usr/share/locale/*",
    "path-exclude=/usr/share/info/*",
)
APT_SOURCES = (Path("/etc/apt/sources.list"), Path("/etc/apt/sources.list.d"))
# The machine's CA bundle, handed to pip in the build as a secret (never in a layer).
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
EXPORTER_REPOSITORY = "localhost/pg-connections-exporter"
POSTGRES_CONTAINERFILE = REPO / "tests" / "containers" / "postgres.Containerfile"
POSTGRES_ENTRYPOINT = REPO / "tests" / "containers" / "postgres-entrypoint.sh"
POSTGRES_REPOSITORY = "localhost/pgce-postgres"
# Older images of a repository kept besides the newest (other checkouts may be using them).
KEEP_OLD_IMAGES = 8


def _digest(*parts: bytes) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(len(part).to_bytes(8, "big"))
        h.update(part)
    return h.hexdigest()[:16]


def apt_source_files() -> list[Path]:
    """The enabled apt source files (.list and .sources) of this machine."""
    files: list[Path] = []
    for source in APT_SOURCES:
        if source.is_file():
            files.append(source)
        elif source.is_dir():
            files += sorted(p for p in source.iterdir() if p.suffix in (".list", ".sources"))
    return files


def debian_suite() -> str:
    for line in Path("/etc/os-release").read_text().splitlines():
        if line.startswith("VERSION_CODENAME="):
            return line.partition("=")[2].strip('"')
    raise PodmanError("/etc/os-release names no VERSION_CODENAME: not a Debian machine")


def _mmdebstrap_args(tarball: Path) -> list[str]:
    return [
        "mmdebstrap",
        "--quiet",
        "--variant=minbase",
        f"--include={','.join(BASE_PACKAGES)}",
        *(f"--dpkgopt={opt}" for opt in _DPKG_EXCLUDES),
        debian_suite(),
        str(tarball),
        *(str(f) for f in apt_source_files()),
    ]


def base_image(podman: Podman) -> str:
    """The base image's reference, bootstrapped (about a minute) unless already there."""
    sources = [f.read_bytes() for f in apt_source_files()]
    if not sources:
        raise PodmanError("no apt sources in /etc/apt: cannot bootstrap the base image")
    key = _digest(" ".join(_mmdebstrap_args(Path("base.tar"))).encode(), *sources)
    ref = f"localhost/pgce-base:{key}"
    with file_lock(podman.state / "build.lock"):
        if podman.image_exists(ref):
            return ref
        with tempfile.TemporaryDirectory(prefix="pgce-base-") as tmp:
            tarball = Path(tmp) / "base.tar"
            result = subprocess.run(
                _mmdebstrap_args(tarball), capture_output=True, text=True, check=False
            )
            if result.returncode:
                raise PodmanError(f"mmdebstrap failed:\n{result.stderr.strip()[-2000:]}")
            podman.run(
                "import",
                "--change",
                "ENV=PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                "--change",
                'CMD=["/bin/bash"]',
                str(tarball),
                ref,
                timeout=300,
            )
    return ref


def build_context_files() -> list[Path]:
    """Every file the Dockerfile copies from the context, sorted (caches skipped as
    .dockerignore skips them)."""
    files: list[Path] = []
    for source in load_dockerfile().context_sources():
        path = REPO / source
        candidates = sorted(path.rglob("*")) if path.is_dir() else [path]
        files += [
            p
            for p in candidates
            if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"
        ]
    return files


def exporter_image(podman: Podman, base: str) -> str:
    """The image of the real Dockerfile, built on `base` unless this exact one exists."""
    parts = [base.encode()]
    for path in [REPO / "Dockerfile", REPO / ".dockerignore", *build_context_files()]:
        parts += [str(path.relative_to(REPO)).encode(), path.read_bytes()]
    ref = f"{EXPORTER_REPOSITORY}:test-{_digest(*parts)}"
    with file_lock(podman.state / "build.lock"):
        if podman.image_exists(ref):
            return ref
        secret = [f"--secret=id=pip-ca,src={CA_BUNDLE}"] if CA_BUNDLE.exists() else []
        podman.run(
            "build",
            "--format=docker",
            "--network=host",
            "--pull=never",
            "--layers",
            f"--build-arg=PYTHON_IMAGE={base}",
            *secret,
            "--tag",
            ref,
            "--file",
            str(REPO / "Dockerfile"),
            str(REPO),
            timeout=900,
        )
        _forget_old_images(podman, EXPORTER_REPOSITORY, ref, KEEP_OLD_IMAGES)
    return ref


def _forget_old_images(podman: Podman, repository: str, keep: str, how_many: int) -> None:
    """Untag all but the newest few images of `repository` besides `keep`, so that the cache
    does not grow with every change; an image a container still uses stays (podman refuses to
    remove it without --force), and so do older ones other checkouts may be using."""
    listed = podman.run(
        "images", "--format", "{{.Repository}}:{{.Tag}}", "--sort", "created", repository
    ).stdout.split()
    older = [ref for ref in listed if ref != keep]  # newest first
    for ref in older[how_many:]:
        podman.run("rmi", ref, check=False)
    podman.run("image", "prune", "--force", check=False)


def postgres_image(podman: Podman, base: str, major: str) -> str:
    """A PostgreSQL `major` server image: `base` plus the npm release's binaries."""
    bindir = pgmajors.npm_bindir(major)
    if bindir is None:
        raise PodmanError(
            f"PostgreSQL {major}'s npm binaries are not cached (python -m harness.pgmajors install)"
        )
    native = bindir.parent
    key = _digest(
        base.encode(),
        POSTGRES_CONTAINERFILE.read_bytes(),
        POSTGRES_ENTRYPOINT.read_bytes(),
        str(native).encode(),
    )
    ref = f"{POSTGRES_REPOSITORY}:{major}-{key}"
    with file_lock(podman.state / "build.lock"):
        if podman.image_exists(ref):
            return ref
        with tempfile.TemporaryDirectory(prefix="pgce-postgres-") as tmp:
            context = Path(tmp)
            # Hard links where the cache shares the filesystem: no copy of ~100 MB.
            subprocess.run(["cp", "-al", str(native), str(context / "native")], check=False)
            if not (context / "native").exists():
                shutil.copytree(native, context / "native", symlinks=True)
            shutil.copy2(POSTGRES_ENTRYPOINT, context)
            podman.run(
                "build",
                "--format=docker",
                "--network=host",
                "--pull=never",
                f"--build-arg=BASE_IMAGE={base}",
                "--tag",
                ref,
                "--file",
                str(POSTGRES_CONTAINERFILE),
                str(context),
                timeout=600,
            )
        _forget_old_images(podman, POSTGRES_REPOSITORY, ref, KEEP_OLD_IMAGES)
    return ref


def image_size(podman: Podman, ref: str) -> int:
    """The image's size in bytes, as `podman images` counts it (all layers, uncompressed)."""
    return int(podman.run("image", "inspect", "--format", "{{.Size}}", ref).stdout.strip())


def main() -> int:
    """Build (or find) the base and exporter images and say how long each took."""
    podman = Podman.here()
    started = time.monotonic()
    base = base_image(podman)
    print(f"base     {base}  {time.monotonic() - started:.1f}s")
    started = time.monotonic()
    image = exporter_image(podman, base)
    size = image_size(podman, image)
    print(f"exporter {image}  {time.monotonic() - started:.1f}s  {size / 1e6:.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
