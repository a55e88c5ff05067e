"""Fetching an official dataset archive (CIFAR-10, CIFAR-100) into a per-user cache, once.

The archive is streamed into a temp file in the cache folder while its MD5 is computed,
and renamed into place only when the MD5 matches the official one: a partial, damaged or
substituted download (a proxy's error page, a captive portal) never counts as data, and
nothing of it is left behind. While one process downloads it holds a lock file beside the
archive (removed when done), and a second process waits and then uses the first one's
archive instead of downloading it again.

The cache is the platform's per-user cache folder, named as the platformdirs package does
(``~/.cache/archbench`` on Linux, ``~/Library/Caches/archbench`` on macOS); ``ARCHBENCH_CACHE``
overrides it.
``ARCHBENCH_OFFLINE=1`` (or ``--offline``) forbids the network.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from archbench.errors import ArchbenchError
from archbench.io_utils import atomic_write_with, make_dirs, os_error

CACHE_VAR = "ARCHBENCH_CACHE"
OFFLINE_VAR = "ARCHBENCH_OFFLINE"
URL_VAR = "ARCHBENCH_CIFAR10_URL"  # a mirror serving the official archive; its MD5 is still checked
CACHE_SUBDIR = "cifar10"  # the default dataset's folder in the cache; each dataset has its own
CHUNK_BYTES = 1 << 16  # small enough for the progress bar to move on a slow link
# Seconds without a byte from the server before the download is given up (not a limit on its length).
STALL_TIMEOUT_S = 60

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("", "0", "false", "no", "off")


def print_err(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def user_cache_dir() -> Path:
    """archbench's cache folder: ``$ARCHBENCH_CACHE``, else the platform's per-user cache."""
    named = os.environ.get(CACHE_VAR)
    if named:  # made absolute: a relative one would move with the working folder
        return Path(named).expanduser().absolute()
    home = Path.home()
    if sys.platform == "darwin":
        return home / "Library" / "Caches" / "archbench"
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg and Path(xdg).is_absolute() else home / ".cache") / "archbench"


def data_cache_dir(dataset: str = CACHE_SUBDIR) -> Path:
    """Where a downloaded dataset lives (``dataset``: its name, e.g. cifar10)."""
    return user_cache_dir() / dataset


def offline_from_env() -> bool:
    """Whether ``ARCHBENCH_OFFLINE`` forbids the network; a value that is neither yes nor no is an error."""
    value = os.environ.get(OFFLINE_VAR, "").strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ArchbenchError(
        f"{OFFLINE_VAR}={os.environ[OFFLINE_VAR]!r} is neither on nor off; set it to 1 (no network) or 0, or unset it"
    )


def archive_url(default: str, var: str = URL_VAR) -> str:
    """The official URL, or the mirror the environment variable ``var`` names."""
    return os.environ.get(var) or default


class DownloadError(ArchbenchError):
    """The download itself failed: the network, the server, or a file that is not the archive."""


def fetch(
    url: str,
    dest: Path,
    md5: str,
    *,
    fix: str,
    quiet: bool = False,
    what: str,
    url_var: str,
    log: Callable[[str], None] = print_err,
) -> Path:
    """Download ``url`` to ``dest`` unless it is there already; only a file with ``md5`` lands.

    ``fix`` says what to do when ``dest``'s folder cannot hold the file (it names the setting
    that chose the folder); ``what`` names the dataset in messages, ``url_var`` the variable that
    may have named a mirror.
    """
    log(f"{what} not found; downloading {url} into {dest.parent} (once; --offline forbids this)")
    source = _Source(url, what, dest.name, url_var)
    started = time.perf_counter()
    try:
        make_dirs(dest.parent)
        with _download_lock(dest, log, what) as locked:
            if dest.is_file():  # another process fetched it while this one waited for the lock
                log(f"another process downloaded {dest}; using it")
                return dest
            if locked:  # no other download can be running: its temp files are leftovers of a killed one
                _remove_stale_temps(dest)
            with _open(source) as response:
                size = _content_length(response)
                atomic_write_with(dest, lambda f: _stream(response, f, source, md5, size, quiet))
    except DownloadError:
        raise
    except ArchbenchError as e:  # the folder or the file could not be made: keep the reason, name the fix
        raise ArchbenchError(f"{str(e).split('; ')[0]}; {fix}") from e
    except KeyboardInterrupt:
        log("the download was interrupted; nothing of it was kept")
        raise
    seconds = time.perf_counter() - started
    log(f"downloaded {dest.stat().st_size / 1e6:.1f} MB in {seconds:.1f} s; its MD5 matches the official archive's")
    return dest


@dataclass(frozen=True)
class _Source:
    """What is downloaded, for messages: the URL, the dataset's name, the archive's file name,
    and the variable that names a mirror."""

    url: str
    what: str
    archive: str
    url_var: str

    def __str__(self) -> str:
        return f"{self.url} (from {self.url_var})" if os.environ.get(self.url_var) == self.url else self.url


def _network_error(source: _Source, e: BaseException) -> DownloadError:
    reason = getattr(e, "reason", None) or e
    return DownloadError(
        f"downloading {source.what} from {source} failed ({type(e).__name__}: {reason}); check the network "
        f"(and the URL), or download {source.archive} by hand and pass --data-dir (nothing was kept)"
    )


def _open(source: _Source):
    try:
        return urllib.request.urlopen(source.url, timeout=STALL_TIMEOUT_S)
    except (OSError, http.client.HTTPException, ValueError) as e:  # URLError and HTTPError are OSErrors
        raise _network_error(source, e) from e


def _content_length(response) -> int | None:
    try:
        n = int(response.headers.get("Content-Length", ""))
    except ValueError:
        return None
    return n if n > 0 else None


def _stream(response, f: IO[bytes], source: _Source, md5: str, size: int | None, quiet: bool) -> None:
    """Copy the response into ``f``; network failures and a wrong MD5 are errors of the download,
    a failed write (disk full) is the cache's, reported by the atomic writer."""
    digest = hashlib.md5()
    done = 0
    with _progress(size, quiet, source.what) as bar:
        while True:
            try:
                chunk = response.read(CHUNK_BYTES)
            except (OSError, http.client.HTTPException) as e:
                raise _network_error(source, e) from e
            if not chunk:
                break
            f.write(chunk)
            digest.update(chunk)
            done += len(chunk)
            bar(len(chunk))
    if size is not None and done != size:
        raise DownloadError(
            f"downloading {source.what} from {source} ended after {done:,} of {size:,} bytes; the connection broke — "
            f"run the command again (nothing was kept)"
        )
    if digest.hexdigest() != md5:
        raise DownloadError(
            f"the file downloaded from {source} has MD5 {digest.hexdigest()}, not the official archive's {md5}; "
            f"it is damaged or not {source.what} (a proxy or login page can answer instead) — run the command again, "
            f"or download {source.archive} by hand and pass --data-dir (nothing was kept)"
        )


@contextmanager
def _progress(total: int | None, quiet: bool, what: str) -> Iterator[Callable[[int], object]]:
    """A tqdm byte counter on a terminal; nothing otherwise (logs stay clean)."""
    if quiet or not sys.stderr.isatty():
        yield lambda n: None
        return
    from tqdm import tqdm

    with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1000, desc=what, leave=False) as bar:
        yield bar.update


@contextmanager
def _download_lock(dest: Path, log: Callable[[str], None], what: str) -> Iterator[bool]:
    """Hold ``.NAME.lock`` beside ``dest`` while downloading; yields whether a lock is held.

    A second process waits (and says so), then finds the archive. Where the file system has
    no locks (some NFS or Lustre mounts), the download goes ahead unlocked: the atomic rename
    still keeps the archive whole, two processes may just both download it.
    """
    import fcntl  # POSIX; archbench's supported platforms are Linux and macOS

    path = dest.parent / f".{dest.name}.lock"
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as e:
            raise os_error("create the lock file", path, e) from e
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                log(f"another archbench process is downloading {what} into {dest.parent}; waiting for it")
                fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as e:
            os.close(fd)
            _unlink_quietly(path)
            log(f"file locks do not work in {dest.parent} ({e.strerror}); downloading without one")
            yield False
            return
        try:  # the holder before us removed the file before unlocking it: lock the new one
            if os.path.samestat(os.fstat(fd), os.stat(path)):
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    try:
        yield True
    finally:
        _unlink_quietly(path)  # while still holding it: a newcomer then locks a fresh file
        os.close(fd)


def _unlink_quietly(path: Path) -> None:
    try:
        path.unlink()
    except OSError:
        pass


def _remove_stale_temps(dest: Path) -> None:
    """Temp files of downloads that were killed."""
    for tmp in dest.parent.glob(f".{dest.name}.*.tmp"):
        _unlink_quietly(tmp)
