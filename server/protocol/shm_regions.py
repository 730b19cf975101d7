"""System shared memory (Triton's ``system_shared_memory`` extension): the regions clients
register, each a window (``offset``, ``byte_size``) of a POSIX shared-memory object (``key``)
mapped into this process, and the bounds-checked slices requests read inputs from and write
outputs into.

A key is what the client gave ``shm_open`` (tritonclient: ``create_shared_memory_region``); on
Linux that object is the file ``/dev/shm/<key without its leading '/'>``, opened here with
O_NOFOLLOW (a link planted there is refused) and O_NONBLOCK (a FIFO planted there cannot hold
the opening thread), and refused unless it is a regular file. Opening and mapping run on a
worker thread; every other call is quick and belongs to the event loop (one owner: no lock).

Promises:

* Every slice a request asks for is checked against its region before any byte is touched:
  offset in ``[0, byte_size)``, ``offset + size <= byte_size``, sizes non-negative; a refusal
  names the region, the offset and the size (Triton once shipped an out-of-bounds read here).
  The object's current size is checked too (``fstat``), so a client that shrank its object
  after registering gets a refusal, not a SIGBUS that would kill the server.
* A region name is registered once: a second registration under a name in use is refused
  ALREADY_EXISTS ("already in manager", as Triton says) and leaves the first untouched.
* Unregistering (one name, or all) and :meth:`SharedMemoryRegions.close` drop the mapping at
  once when no request holds a slice of it, else as soon as the last such slice is released
  (Python keeps a mapping alive while a view of it exists, so no request can read unmapped
  memory). The descriptor is closed at once.
* No message holds a server path: keys are named as the client gave them.
"""

from __future__ import annotations

import asyncio
import errno
import mmap
import os
import stat
from dataclasses import dataclass, field

from sluice.server.errors import (
    AlreadyExists,
    Code,
    InvalidInput,
    ResourceExhausted,
    SluiceError,
)

#: Where Linux keeps POSIX shared-memory objects (what glibc's ``shm_open`` opens).
SHM_ROOT = "/dev/shm"
#: Regions one server holds at most (each costs a descriptor and a mapping).
MAX_REGIONS = 1024
#: Longest object name ``shm_open`` accepts (NAME_MAX).
_NAME_MAX = 255


class RegionNotFound(SluiceError):
    """No region of that name is registered (Triton's wording)."""

    code = Code.NOT_FOUND


@dataclass(eq=False)
class Region:
    """One registered region: ``byte_size`` bytes at ``offset`` of the object ``key``."""

    name: str
    key: str
    offset: int
    byte_size: int
    fd: int
    #: The mapping (from ``offset`` rounded down to the allocation granularity).
    mapping: mmap.mmap
    #: The region's own bytes (``byte_size`` of them), a view of ``mapping``.
    view: memoryview = field(repr=False)

    def release(self) -> None:
        """Close the descriptor and unmap, or leave the unmap to the last slice still held."""
        try:
            os.close(self.fd)
        except OSError:
            pass
        self.view.release()
        try:
            self.mapping.close()
        except BufferError:  # a request in flight holds a slice: unmapped when it lets go
            pass


def _object_name(key: str) -> str | None:
    """The object name ``shm_open(key)`` opens (leading '/' dropped), or None when ``key`` is
    not one (empty, a '/' inside, NUL, '.' or '..', too long)."""
    name = key.lstrip("/")
    if (not name or "/" in name or "\0" in name or name in (".", "..")
            or len(name.encode("utf-8", "surrogatepass")) > _NAME_MAX):
        return None
    return name


def _open_and_map(root: str, name: str, key: str, offset: int, byte_size: int) -> Region:
    """Open ``key`` under ``root`` and map the region (blocking: a worker thread's job)."""
    where = f"failed to register shared memory region '{name}'"
    object_name = _object_name(key)
    if object_name is None:
        raise InvalidInput(
            f"{where}: the key is not a POSIX shared memory name (one name of at most "
            f"{_NAME_MAX} bytes after an optional leading '/', with no other '/')"
        )
    flags = os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(os.path.join(root, object_name), flags)
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            raise RegionNotFound(
                f"{where}: Unable to open shared memory region: '{key}' "
                "(no such shared memory object)"
            ) from None
        why = "it is a symbolic link" if exc.errno == errno.ELOOP else (
            exc.strerror or "cannot be opened").lower()
        raise InvalidInput(
            f"{where}: Unable to open shared memory region: '{key}' ({why})"
        ) from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise InvalidInput(f"{where}: '{key}' is not a shared memory object")
        if offset + byte_size > info.st_size:
            raise InvalidInput(
                f"{where}: offset {offset} + byte_size {byte_size} = {offset + byte_size} "
                f"exceeds the {info.st_size} bytes of shared memory object '{key}'"
            )
        start = offset - offset % mmap.ALLOCATIONGRANULARITY
        mapping = mmap.mmap(fd, offset + byte_size - start, mmap.MAP_SHARED,
                            mmap.PROT_READ | mmap.PROT_WRITE, offset=start)
    except SluiceError:
        os.close(fd)
        raise
    except (OSError, ValueError, OverflowError) as exc:
        os.close(fd)
        raise InvalidInput(f"{where}: cannot map '{key}' ({exc})") from None
    view = memoryview(mapping)[offset - start:]
    return Region(name, key, offset, byte_size, fd, mapping, view)


class SharedMemoryRegions:
    """The system shared-memory regions of one server, by name."""

    def __init__(self, root: str = SHM_ROOT, max_regions: int = MAX_REGIONS) -> None:
        self._root = root
        self._max = max_regions
        self._regions: dict[str, Region] = {}
        #: Names being registered (mapping on a thread): taken, so a twin waits for no one.
        self._pending: set[str] = set()

    async def register(self, name: str, key: str, offset: int, byte_size: int) -> None:
        """Map ``byte_size`` bytes at ``offset`` of ``key`` as region ``name``."""
        where = f"failed to register shared memory region '{name}'"
        if not name:
            raise InvalidInput("failed to register shared memory region: the name is empty")
        if name in self._regions or name in self._pending:
            raise AlreadyExists(
                f"shared memory region '{name}' already in manager: the name is already in "
                "use (unregister it first)"
            )
        if byte_size <= 0:
            raise InvalidInput(f"{where}: byte_size must be positive, got {byte_size}")
        if offset < 0:
            raise InvalidInput(f"{where}: offset must not be negative, got {offset}")
        if len(self._regions) + len(self._pending) >= self._max:
            raise ResourceExhausted(
                f"{where}: {self._max} regions are registered already (the most a server "
                "holds); unregister some first"
            )
        self._pending.add(name)
        try:
            region = await asyncio.to_thread(
                _open_and_map, self._root, name, key, offset, byte_size)
        finally:
            self._pending.discard(name)
        self._regions[name] = region

    def status(self, name: str = "") -> list[Region]:
        """Every region, or the one named (RegionNotFound when there is none)."""
        if not name:
            return list(self._regions.values())
        region = self._regions.get(name)
        if region is None:
            raise RegionNotFound(f"Unable to find system shared memory region: '{name}'")
        return [region]

    def unregister(self, name: str = "") -> None:
        """Drop region ``name`` (every region when empty); a name not registered is no error
        (as Triton)."""
        if not name:
            self.close()
            return
        region = self._regions.pop(name, None)
        if region is not None:
            region.release()

    def close(self) -> None:
        """Drop every region (shutdown)."""
        regions, self._regions = list(self._regions.values()), {}
        for region in regions:
            region.release()

    def __len__(self) -> int:
        return len(self._regions)

    def slice(self, name: str, offset: int, size: int, label: str) -> memoryview:
        """``size`` bytes at ``offset`` of region ``name``, for the tensor ``label`` names
        (e.g. "input 'INPUT0'"); checked against the region and the object's current size."""
        region = self._regions.get(name)
        if region is None:
            raise RegionNotFound(f"{label}: Unable to find shared memory region: '{name}'")
        if offset < 0 or size < 0 or offset >= region.byte_size or (
            offset + size > region.byte_size
        ):
            raise InvalidInput(
                f"{label}: shared memory region '{name}': offset {offset} and byte_size "
                f"{size} do not fit in the region's {region.byte_size} bytes"
            )
        try:
            current = os.fstat(region.fd).st_size
        except OSError:
            current = -1
        if current < region.offset + region.byte_size:
            raise InvalidInput(
                f"{label}: shared memory region '{name}': its object '{region.key}' is "
                f"smaller than the region registered ({current} bytes now); register it again"
            )
        return region.view[offset:offset + size]
