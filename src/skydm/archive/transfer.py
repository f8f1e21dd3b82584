"""Transfer between sites: copy a repository's raws into another, checksummed end to end.

``transfer(source, dest)`` copies every selected dataset of ``source`` (raws
by default) that ``dest`` lacks, in parallel streams:

* each file travels in parts; the sender's SHA-256 of every part is checked
  on arrival and a part that arrives different is sent again (up to
  ``retries`` times);
* the whole file is checked end to end: the destination's staged file must
  have the SHA-256 the source registry recorded, or it is refused before it
  is registered;
* the destination registers what arrives with ingest's semantics: the same
  content already there is ``present`` (nothing sent), a different dataset
  with that data ID is a ``conflict`` (never overwritten), and the dataset's
  metadata gains a ``transfer`` record (source, time, parts, parts re-sent);
* a file is registered only when complete (the datastores' atomic writes),
  so after ``kill -9`` a rerun skips every completed file and re-sends only
  the files that were in flight.  Running it again is harmless.

Either repository may keep its files in a directory or in S3.
"""

from __future__ import annotations

import io
import os
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from skydm.archive._journal import JOURNAL_DIR, PartJournal, crc32
from skydm.errors import BadValueError, ConflictError, DataCorruptionError, SkydmError
from skydm.repo import DatasetRef, Repository
from skydm.repo.datastore import FileDatastore, _pause_point, relpath_for

Status = Literal["sent", "present", "conflict", "failed"]


@dataclass(frozen=True)
class TransferConfig:
    """Tunables of a transfer, validated on construction.

    Parameters
    ----------
    streams : int
        Files in flight at once.
    part_bytes : int
        Size of the checksummed parts a file travels in.
    retries : int
        Times a part (or a whole file failing its end-to-end check) is re-sent.
    dataset_type : str
        What to copy (``raw`` by default).
    where : str, optional
        Data ID constraint, as ``skydm retrieve --where``.
    """

    streams: int = 4
    part_bytes: int = 8_000_000  # the command line's --part-mb 8, so both resume alike
    retries: int = 3
    dataset_type: str = "raw"
    where: str | None = None

    def __post_init__(self) -> None:
        if not 1 <= self.streams <= 64:
            raise BadValueError("--streams", self.streams, "a whole number from 1 to 64")
        if not 1024 <= self.part_bytes <= 1 << 30:  # each stream holds one part in memory
            raise BadValueError("--part-mb", self.part_bytes / 1e6, "from 0.001 to 1000 (MB)")
        if not 0 <= self.retries <= 20:
            raise BadValueError("retries", self.retries, "a whole number from 0 to 20")


@dataclass
class FileTransfer:
    """What happened to one dataset."""

    ref: DatasetRef
    status: Status
    bytes_sent: int = 0
    parts: int = 0
    parts_resent: int = 0
    parts_resumed: int = 0
    message: str = ""

    def line(self) -> str:
        """One line for the command's output."""
        what = f"{self.ref.dataset_type} {self.ref.data_id}"
        notes = [f"{self.parts_resent} parts re-sent"] if self.parts_resent else []
        if self.parts_resumed:
            notes.append(f"resumed after {self.parts_resumed} parts")
        extra = f" ({', '.join(notes)})" if notes else ""
        tail = f": {self.message}" if self.message else ""
        return f"{self.status}: {what}{extra}{tail}"


@dataclass
class TransferReport:
    """Every dataset's outcome, the bytes sent and the time taken."""

    results: list[FileTransfer] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def bytes_sent(self) -> int:
        """Bytes that travelled (re-sent parts included)."""
        return sum(r.bytes_sent for r in self.results)

    @property
    def ok(self) -> bool:
        """Whether every dataset is now at the destination."""
        return all(r.status in ("sent", "present") for r in self.results)

    @property
    def mb_per_s(self) -> float:
        """Throughput in MB (1e6 bytes) per second."""
        return self.bytes_sent / 1e6 / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> str:
        """``sent 3, present 2, ... ; 12.3 MB in 0.4 s (30.1 MB/s)``."""
        counts = {s: sum(r.status == s for r in self.results) for s in Status.__args__}  # type: ignore[attr-defined]
        parts = ", ".join(f"{s} {n}" for s, n in counts.items() if n)
        return (
            f"{parts or 'nothing to transfer'}; {self.bytes_sent / 1e6:.1f} MB in "
            f"{self.seconds:.1f} s ({self.mb_per_s:.1f} MB/s)"
        )


class _Transit:
    """The channel parts travel through; the test hook ``SKYDM_TEST_CORRUPT_PART=n``
    flips one bit of the n-th part handed over (once), to prove corruption is caught."""

    def __init__(self) -> None:
        spec = os.environ.get("SKYDM_TEST_CORRUPT_PART")
        self.corrupt_at = int(spec) if spec else 0
        self.count = 0
        self.lock = threading.Lock()

    def carry(self, part: memoryview) -> memoryview:
        if not self.corrupt_at:
            return part
        with self.lock:
            self.count += 1
            hit = self.count == self.corrupt_at
        if hit and part:
            damaged = bytearray(part)
            damaged[len(damaged) // 2] ^= 0x10
            print(f"skydm-test-corrupt part {self.count}", file=sys.stderr, flush=True)
            return memoryview(damaged)
        return part


class _Reader:
    """Reads a source file's parts into a reusable buffer (one open file, no copies)."""

    def __init__(self, source: Repository, ref: DatasetRef) -> None:
        self.source, self.ref = source, ref
        self.fh: io.RawIOBase | None = None
        if isinstance(source.datastore, FileDatastore):
            path = source.datastore.abspath(ref.path)
            self.fh = io.FileIO(path, "rb")  # unbuffered: parts are read into one buffer

    def read(self, offset: int, length: int, buffer: bytearray) -> memoryview:
        if self.fh is None:  # an object store: one ranged GET per part
            return memoryview(self.source.datastore.read_range(self.ref.path, offset, length))
        view = memoryview(buffer)[:length]
        self.fh.seek(offset)
        got = 0
        while got < length:
            n = self.fh.readinto(view[got:])
            if not n:
                break
            got += n
        return view[:got]

    def close(self) -> None:
        if self.fh is not None:
            self.fh.close()


def _send(
    source: Repository, dest: Repository, ref: DatasetRef, config: TransferConfig, transit: _Transit
) -> FileTransfer:
    """Copy one dataset (``ref`` is the source registry's, path relative)."""
    existing = dest.registry.find(ref.dataset_type, ref.data_id)
    if existing is not None:
        if existing.checksum == ref.checksum:
            if dest.datastore.check(existing.path, existing.checksum, existing.size) is None:
                return FileTransfer(ref, "present")
        else:
            return FileTransfer(
                ref, "conflict",
                message=f"the destination has a different dataset with this data ID "
                f"(sha256 {existing.checksum[:12]}); it is not replaced",
            )  # fmt: skip
    result = FileTransfer(ref, "sent")
    name = relpath_for(ref.dataset_type, ref.data_id, ref.checksum).stem
    try:
        journal = PartJournal.open(
            Path(dest.root) / JOURNAL_DIR, name, size=ref.size, part_bytes=config.part_bytes
        )
    except BlockingIOError:
        return FileTransfer(ref, "failed", message="another transfer is sending this file now")
    with journal:
        for attempt in range(config.retries + 1):
            try:
                digest = _send_parts(source, ref, config, transit, journal, result)
                if digest != ref.checksum:
                    journal.reset()  # the whole file again, from its first part
                    raise DataCorruptionError(ref.path, ref.checksum, digest)
                meta = dict(ref.meta)
                meta["transfer"] = {
                    "from": str(source.root), "source_sha256": ref.checksum,
                    "at": datetime.now(UTC).isoformat(timespec="seconds"),
                    "parts": journal.n_parts, "parts_resent": result.parts_resent,
                    "parts_resumed": result.parts_resumed,
                }  # fmt: skip
                # End to end: the SHA-256 of every byte written, checked against the
                # one the source recorded, before the destination registers the file.
                dest.put_local_file(
                    journal.data_path, ref.dataset_type, ref.data_id, checksum=digest, meta=meta
                )
                journal.finish()
                return result
            except ConflictError as exc:
                journal.reset()
                return FileTransfer(ref, "conflict", result.bytes_sent, message=str(exc))
            except SkydmError as exc:
                if attempt == config.retries:
                    result.status, result.message = "failed", str(exc)
                    return result
    return result


def _send_parts(
    source: Repository,
    ref: DatasetRef,
    config: TransferConfig,
    transit: _Transit,
    journal: PartJournal,
    result: FileTransfer,
) -> str:
    """Send the parts the journal lacks; the SHA-256 of the whole file as written."""
    sha, done = journal.resume()  # journaled parts re-read locally and checked, not re-sent
    result.parts_resumed = max(result.parts_resumed, done)
    result.parts = done
    reader = _Reader(source, ref)
    buffer = bytearray(min(config.part_bytes, max(ref.size, 1)))
    try:
        for index in range(done, journal.n_parts):
            offset = index * config.part_bytes
            length = min(config.part_bytes, ref.size - offset)
            for attempt in range(config.retries + 1):
                part = reader.read(offset, length, buffer)
                sent_crc = crc32(part)  # the sender's
                arrived = transit.carry(part)
                result.bytes_sent += len(arrived)
                arrived_crc = crc32(arrived)  # the receiver's
                if arrived_crc == sent_crc and len(arrived) == length:
                    break
                if attempt == config.retries:
                    raise SkydmError(f"part at byte {offset} arrived damaged {attempt + 1} times")
                result.parts_resent += 1
            journal.write(index, arrived, arrived_crc)
            sha.update(arrived)
            result.parts += 1
            _pause_point("part")
    finally:
        reader.close()
    journal.sync()
    return sha.hexdigest()


def transfer(
    source: Repository,
    dest: Repository,
    config: TransferConfig | None = None,
    *,
    progress: Callable[[FileTransfer], None] | None = None,
    stop: threading.Event | None = None,
) -> TransferReport:
    """Copy ``source``'s selected datasets that ``dest`` lacks (see the module notes).

    Parameters
    ----------
    source, dest : Repository
        Where from and where to (directory or S3 datastores).
    config : TransferConfig, optional
        Streams, part size, retries, dataset type and ``where``.
    progress : callable, optional
        Called with each dataset's outcome as it completes.
    stop : threading.Event, optional
        Once set, datasets not yet started are left for the next run (they
        are not in the report); those in flight finish.

    Raises
    ------
    UserError
        When ``where`` is not a valid expression, or the two are one repository.
    """
    from skydm.archive.retrieve import select_datasets

    config = config or TransferConfig()
    if Path(source.root) == Path(dest.root):
        raise BadValueError("--to", str(dest.root), "a repository other than --from")
    chosen = select_datasets(source, dataset_type=config.dataset_type, where=config.where)
    refs = [source.registry.find(r.dataset_type, r.data_id) for r in chosen]
    report = TransferReport()
    transit = _Transit()
    start = time.perf_counter()

    def send(ref: DatasetRef) -> FileTransfer | None:
        if stop is not None and stop.is_set():
            return None
        return _send(source, dest, ref, config, transit)

    with ThreadPoolExecutor(config.streams) as pool:
        futures = [pool.submit(send, ref) for ref in refs if ref is not None]
        for future in as_completed(futures):
            outcome = future.result()
            if outcome is None:
                continue
            report.results.append(outcome)
            if progress is not None:
                progress(outcome)
    report.seconds = time.perf_counter() - start
    report.results.sort(key=lambda r: (r.ref.dataset_type, r.ref.data_id))
    return report
