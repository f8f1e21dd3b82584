"""The data repository: a registry of datasets composed with a file datastore."""

from __future__ import annotations

import dataclasses
import io
import json
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, BinaryIO

from astropy.io import fits

from skydm.errors import (
    BadFileError,
    ConflictError,
    DataCorruptionError,
    NoRepositoryError,
    UserError,
)
from skydm.repo.atomic import atomic_write_bytes
from skydm.repo.dataid import (
    DataId,
    DatasetNotFoundError,
    DatasetRef,
    Problem,
    check_dataset_type,
)
from skydm.repo.datastore import FileDatastore, StagedFile
from skydm.repo.location import (
    CONFIG_NAME,
    create_directory,
    recorded_mode,
    why_not_a_repository,
)
from skydm.repo.registry import Registry, SqlRegistry

if TYPE_CHECKING:
    from skydm.archive.recipes import RecipeSet
    from skydm.image.exposure import Exposure
    from skydm.repo.s3datastore import S3Datastore, S3StagedFile


SQLITE_NAME = "registry.sqlite3"
_RESERVED = frozenset(
    {CONFIG_NAME, SQLITE_NAME, f"{SQLITE_NAME}-wal", f"{SQLITE_NAME}-shm", f"{SQLITE_NAME}-journal"}
)


class Repository:
    """Datasets identified by type and :class:`DataId`, each a checksummed file.

    Use :meth:`open`; the constructor takes an already-built registry and
    datastore (daf_butler-style composition, so that either can be swapped).

    Writes are atomic (temporary file, fsync, rename, then register in a
    transaction); every read verifies the file against the checksum recorded
    when it was written.
    """

    def __init__(
        self,
        root: Path,
        registry: Registry,
        datastore: FileDatastore | S3Datastore,
        *,
        recipes: RecipeSet | None = None,
    ) -> None:
        # skydm.archive imports the repository, so its recipes are imported late.
        from skydm.archive.recipes import DEFAULT_RECIPES

        self.root = Path(root)
        self.registry = registry
        self.datastore = datastore
        self.recipes = recipes if recipes is not None else DEFAULT_RECIPES

    # -- opening -------------------------------------------------------------
    @classmethod
    def open(
        cls,
        path: str | Path,
        *,
        create: bool = True,
        registry_url: str | None = None,
        file_mode: int | None = None,
        datastore_url: str | None = None,
    ) -> Repository:
        """Open (or create) the repository in directory ``path``.

        Parameters
        ----------
        path : str or pathlib.Path
            Repository directory; files are stored under it.
        create : bool
            Create the repository if ``path`` holds none; otherwise a missing
            repository is an error.
        registry_url : str, optional
            SQLAlchemy URL of the registry (e.g. PostgreSQL).  By default an
            SQLite file ``registry.sqlite3`` in ``path``.  A URL given at
            creation is recorded in ``skydm-repo.json`` so that later opens
            find it; giving a different one later is an error.
        file_mode : int, optional
            At creation: permission bits of every file stored (e.g. ``0o640``
            so that the group can read a shared archive), recorded in
            ``skydm-repo.json`` as ``"file_mode": "0640"``.  By default files
            get what the umask of the writing process gives.
        datastore_url : str, optional
            ``s3://bucket/prefix``: keep the dataset files in that S3 bucket
            (same layout and checksums; :mod:`skydm.repo.s3datastore`)
            rather than under ``path``, which then holds the configuration,
            the SQLite registry and a verified read cache.  Recorded at
            creation like ``registry_url``.

        Raises
        ------
        NoRepositoryError
            When there is no repository and ``create`` is false, or ``path``
            is an existing file.
        UserError
            When the URL conflicts with the recorded one, or the repository
            cannot be created there.
        """
        from skydm.archive.recipes import DEFAULT_RECIPES, RecipeSet

        if datastore_url is not None:
            from skydm.repo.s3datastore import parse_s3_url

            parse_s3_url(datastore_url)  # a bad URL is refused before anything is created
        root = Path(path).expanduser().resolve()
        config_path = root / CONFIG_NAME
        if root.exists() and not root.is_dir():
            raise NoRepositoryError(path, "it is a file, not a directory", is_file=True)
        if config_path.exists():
            try:
                config = json.loads(config_path.read_text())
            except (OSError, ValueError) as exc:
                raise BadFileError(
                    config_path, f"is not a readable repository config: {exc}"
                ) from exc
            recorded = config.get("registry_url")
            if registry_url is not None and registry_url != recorded:
                where = repr(recorded) if recorded else f"the SQLite file {SQLITE_NAME} in it"
                raise UserError(
                    f"{root}: the repository's registry is {where}, not {registry_url!r}; "
                    "open it without registry_url (unset SKYDM_REGISTRY_URL)"
                )
            url = recorded
            stored_at = config.get("datastore_url")
            if datastore_url is not None and datastore_url != stored_at:
                raise UserError(
                    f"{root}: the repository's files are in {stored_at or 'the directory'}, "
                    f"not {datastore_url!r}; open it without datastore_url"
                )
            datastore_url = stored_at
        elif not create:
            raise NoRepositoryError(path, why_not_a_repository(root))
        else:
            url = registry_url
            if datastore_url is not None:  # the store must answer before anything is created
                from skydm.repo.s3datastore import S3Datastore

                S3Datastore(datastore_url, root).connect(create=True)
            config = {
                "format": "skydm-repo", "version": 1, "registry_url": registry_url,
                "datastore_url": datastore_url, "recipes": DEFAULT_RECIPES.to_json(),
            }  # fmt: skip
            if file_mode is not None:
                config["file_mode"] = f"{file_mode:04o}"
            create_directory(root, path)
            atomic_write_bytes(config_path, json.dumps(config, indent=1).encode(), mode=file_mode)
        mode = recorded_mode(config, config_path)
        # A repository made before write recipes existed gets the defaults.
        recipes = (
            RecipeSet.from_json(config["recipes"], where=f"{config_path}: recipes")
            if "recipes" in config
            else DEFAULT_RECIPES
        )
        sql_url = url if url is not None else f"sqlite:///{root / SQLITE_NAME}"
        datastore: FileDatastore | S3Datastore
        if datastore_url is not None:
            from skydm.repo.s3datastore import S3Datastore

            datastore = S3Datastore(datastore_url, root)
            datastore.connect()
        else:
            datastore = FileDatastore(root, reserved=_RESERVED, file_mode=mode)
        return cls(root, SqlRegistry(sql_url), datastore, recipes=recipes)

    def set_recipes(self, recipes: RecipeSet) -> None:
        """Record new write recipes in ``skydm-repo.json`` (later writes use them).

        Files already stored keep the codec they were written with.
        """
        config_path = self.root / CONFIG_NAME
        config = json.loads(config_path.read_text())
        config["recipes"] = recipes.to_json()
        mode = recorded_mode(config, config_path)
        atomic_write_bytes(config_path, json.dumps(config, indent=1).encode(), mode=mode)
        self.recipes = recipes

    def close(self) -> None:
        """Release the registry's connections."""
        self.registry.close()

    def __enter__(self) -> Repository:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Repository({str(self.root)!r}, {self.registry!r})"

    # -- writing -------------------------------------------------------------
    def put_file(
        self,
        write: Callable[[BinaryIO], None],
        dataset_type: str,
        data_id: DataId,
        *,
        replace: bool = False,
        meta: Mapping[str, Any] | None = None,
        check: Callable[[Path], None] | None = None,
        expect_checksum: str | None = None,
    ) -> DatasetRef:
        """Store a file written by ``write(fh)`` and register it.

        Parameters
        ----------
        write : callable
            Writes the file's content to the binary file object it is given.
        dataset_type : str
            Dataset type (``raw``, ``calexp``...).
        data_id : DataId
            What the dataset is of.
        replace : bool
            Replace a different dataset already registered with that data ID.
        meta : mapping, optional
            JSON-serializable metadata recorded with the dataset.
        check : callable, optional
            Called with the temporary file's path before it is renamed into
            place; raising refuses the write (used to prove a codec lossless).
        expect_checksum : str, optional
            The SHA-256 the written file must have (end-to-end checks of
            transfers); a different one refuses the write.

        Returns
        -------
        DatasetRef
            The registered dataset (the existing one if identical content was
            already registered).

        Raises
        ------
        ConflictError
            When another dataset has that data ID and ``replace`` is false.
        DataCorruptionError
            When the file's SHA-256 is not ``expect_checksum``.
        """
        check_dataset_type(dataset_type)
        existing = self.registry.find(dataset_type, data_id)
        staged = self.datastore.stage(dataset_type, data_id, write)
        return self._register_staged(
            staged, dataset_type, data_id, existing, replace=replace, meta=meta, check=check,
            expect_checksum=expect_checksum,
        )  # fmt: skip

    def put_local_file(
        self,
        path: Path,
        dataset_type: str,
        data_id: DataId,
        *,
        checksum: str,
        meta: Mapping[str, Any] | None = None,
    ) -> DatasetRef:
        """Store a complete, fsynced file already written under the repository directory.

        The file is moved (not copied) into the datastore's staging place and
        then committed and registered as :meth:`put_file` does; ``checksum``
        is its SHA-256, computed by the caller from the bytes it wrote (the
        transfer's end-to-end check), so it is not read again.

        Raises
        ------
        ConflictError
            When a different dataset has that data ID.
        """
        check_dataset_type(dataset_type)
        existing = self.registry.find(dataset_type, data_id)
        staged = self.datastore.adopt(dataset_type, data_id, Path(path), checksum)
        return self._register_staged(staged, dataset_type, data_id, existing, meta=meta)

    def _register_staged(
        self,
        staged: StagedFile | S3StagedFile,
        dataset_type: str,
        data_id: DataId,
        existing: DatasetRef | None,
        *,
        replace: bool = False,
        meta: Mapping[str, Any] | None = None,
        check: Callable[[Path], None] | None = None,
        expect_checksum: str | None = None,
    ) -> DatasetRef:
        """Commit a staged file and register it (``put_file``'s second half)."""
        try:
            if expect_checksum is not None and staged.checksum != expect_checksum:
                raise DataCorruptionError(staged.tmp, expect_checksum, staged.checksum)
            if check is not None:
                check(staged.tmp)
            if existing is not None and existing.checksum == staged.checksum:
                intact = self.datastore.check(existing.path, existing.checksum, existing.size)
                if intact is None:
                    staged.discard()
                    return self._absolute(existing)
            elif existing is not None and not replace:
                raise ConflictError(
                    f"{self.root}: a different {dataset_type!r} dataset with data ID {data_id} "
                    f"is already stored ({self.datastore.abspath(existing.path)}); "
                    "pass replace=True (--replace) to replace it"
                )
        except BaseException:
            staged.discard()
            raise
        stored = staged.commit()
        ref = DatasetRef(
            dataset_type, data_id, Path(stored.relpath), stored.checksum, stored.size,
            meta=dict(meta or {}),
        )  # fmt: skip
        if existing is None:
            try:
                ref = self.registry.insert(ref)
            except ConflictError:
                # Someone registered this data ID while we wrote: keep theirs.
                if self.registry.find(dataset_type, data_id) is None or not replace:
                    self._remove_unless_registered(stored.relpath)
                    raise
                old = self.registry.replace(ref)
                self._drop_replaced(old, stored.relpath)
        else:
            old = self.registry.replace(ref)
            self._drop_replaced(old, stored.relpath)
        return self._absolute(ref)

    def _drop_replaced(self, old: DatasetRef | None, new_relpath: PurePosixPath) -> None:
        if old is not None and PurePosixPath(old.path.as_posix()) != new_relpath:
            self.datastore.remove(old.path.as_posix())

    def _remove_unless_registered(self, relpath: PurePosixPath) -> None:
        if relpath.as_posix() not in self.registry.paths():
            self.datastore.remove(relpath)

    def put_hdulist(
        self,
        hdul: fits.HDUList,
        dataset_type: str,
        data_id: DataId,
        *,
        replace: bool = False,
        meta: Mapping[str, Any] | None = None,
        check: Callable[[Path], None] | None = None,
    ) -> DatasetRef:
        """Store a FITS ``HDUList`` as a dataset (see :meth:`put_file`)."""

        def write(fh: BinaryIO) -> None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # non-standard cards are kept as they are
                hdul.writeto(fh, output_verify="silentfix")

        return self.put_file(write, dataset_type, data_id, replace=replace, meta=meta, check=check)

    def put_exposure(
        self,
        exposure: Exposure,
        dataset_type: str,
        data_id: DataId,
        *,
        replace: bool = False,
        meta: Mapping[str, Any] | None = None,
    ) -> DatasetRef:
        """Store an Exposure (multi-extension FITS) as a dataset.

        The Exposure's visit metadata is updated from ``data_id`` in the
        stored file so that reading it back gives a consistent data ID.  The
        planes are compressed by the repository's write recipe for
        ``dataset_type`` (:attr:`recipes`; ``lossy16`` for processed images
        by default, see :mod:`skydm.archive.recipes`); types with no recipe
        are written uncompressed.
        """
        hdul = exposure.to_hdulist()
        h = hdul[0].header
        h["INSTRUME"] = data_id.instrument
        h["DETNUM"] = data_id.detector
        h["VISIT"] = data_id.visit
        h["BAND"] = data_id.band
        if data_id.skycell is not None:
            h["SKYCELL"] = (data_id.skycell, "sky cell of this coadd")
        recipe = self.recipes.for_type(dataset_type)
        if recipe is not None:
            from skydm.archive.lossy import encode_exposure_hdulist

            hdul, _ = encode_exposure_hdulist(hdul, recipe)
        return self.put_hdulist(hdul, dataset_type, data_id, replace=replace, meta=meta)

    def remove(self, dataset_type: str, data_id: DataId) -> DatasetRef:
        """Unregister a dataset and delete its file.

        Raises
        ------
        DatasetNotFoundError
            When there is no such dataset.
        """
        old = self.registry.remove(dataset_type, data_id)
        if old is None:
            raise DatasetNotFoundError(dataset_type, data_id, self.root)
        self.datastore.remove(old.path.as_posix())
        return self._absolute(old)

    # -- reading -------------------------------------------------------------
    def _absolute(self, ref: DatasetRef) -> DatasetRef:
        return dataclasses.replace(ref, path=self.datastore.abspath(ref.path.as_posix()))

    def find(self, dataset_type: str, data_id: DataId) -> DatasetRef | None:
        """The registered dataset (absolute path), or ``None``; reads no file."""
        ref = self.registry.find(check_dataset_type(dataset_type), data_id)
        return self._absolute(ref) if ref is not None else None

    def get_ref(self, dataset_type: str, data_id: DataId) -> DatasetRef:
        """The registered dataset, or :class:`DatasetNotFoundError`; reads no file."""
        ref = self.find(dataset_type, data_id)
        if ref is None:
            raise DatasetNotFoundError(dataset_type, data_id, self.root)
        return ref

    def _stored_ref(self, dataset_type: str, data_id: DataId) -> DatasetRef:
        """The registry's own ref (path relative to the datastore root)."""
        ref = self.registry.find(check_dataset_type(dataset_type), data_id)
        if ref is None:
            raise DatasetNotFoundError(dataset_type, data_id, self.root)
        return ref

    def get_bytes(self, dataset_type: str, data_id: DataId) -> bytes:
        """The stored file's bytes, verified against the recorded checksum.

        Raises
        ------
        DatasetNotFoundError
            When no such dataset is registered.
        DataCorruptionError
            When the file is damaged or missing.
        """
        ref = self._stored_ref(dataset_type, data_id)
        try:
            return self.datastore.read_verified(ref.path, ref.checksum)
        except FileNotFoundError:
            raise DataCorruptionError(
                self.datastore.abspath(ref.path), ref.checksum, "no file (it is missing)"
            ) from None

    def get_path(self, dataset_type: str, data_id: DataId) -> Path:
        """Path of the stored file, after verifying its checksum."""
        ref = self._stored_ref(dataset_type, data_id)
        return self.datastore.local_path(ref.path, ref.checksum, ref.size)

    def get_hdulist(self, dataset_type: str, data_id: DataId) -> fits.HDUList:
        """The stored FITS file, verified, read into memory."""
        data = self.get_bytes(dataset_type, data_id)
        return fits.open(io.BytesIO(data), memmap=False, lazy_load_hdus=False)

    def get_exposure(self, dataset_type: str, data_id: DataId) -> Exposure:
        """Read a dataset as an Exposure, its checksum verified first.

        Raw datasets (compressed by :mod:`skydm.archive`) are read from the
        compressed image; their visit metadata is completed from the data ID.
        """
        from skydm.image.io import read_exposure

        path = self.get_path(dataset_type, data_id)
        exposure = read_exposure(path)
        info = exposure.info
        info.instrument, info.detector = data_id.instrument, data_id.detector
        info.visit, info.band = data_id.visit, data_id.band
        return exposure

    def query(
        self,
        dataset_type: str | None = None,
        instrument: str | None = None,
        band: str | None = None,
        visit: int | None = None,
        skycell: str | None = None,
        *,
        detector: int | None = None,
    ) -> list[DatasetRef]:
        """Registered datasets matching every given constraint (absolute paths)."""
        refs = self.registry.query(
            dataset_type=dataset_type,
            instrument=instrument,
            band=band,
            visit=visit,
            detector=detector,
            skycell=skycell,
        )
        return [self._absolute(r) for r in refs]

    # -- scrubbing -----------------------------------------------------------
    def verify(self, *, progress: Callable[[DatasetRef], None] | None = None) -> list[Problem]:
        """Check every registered file against its size and checksum.

        Returns
        -------
        list of Problem
            One per missing or damaged file; empty when the repository is clean.
            Unregistered files (left by an interrupted write) are not damage:
            see :meth:`unregistered`.
        """
        problems = []
        for ref in self.registry.query():
            result = self.datastore.check(ref.path, ref.checksum, ref.size)
            absolute = self._absolute(ref)
            if progress is not None:
                progress(absolute)
            if result is None:
                continue
            kind = "missing" if result == "missing" else "damaged"
            detail = (
                "the file is gone; re-ingest its source or restore it from a backup"
                if kind == "missing"
                else result.removeprefix("damaged: ")
                + "; re-ingest its source or restore it from a backup"
            )
            problems.append(Problem(kind, absolute, detail))  # type: ignore[arg-type]
        return problems

    def unregistered(self) -> list[Path]:
        """Files in the datastore that no dataset refers to (interrupted or replaced writes)."""
        registered = self.registry.paths()
        return [self.datastore.abspath(p) for p in self.datastore.unregistered(registered)]

    def clean_unregistered(self) -> list[Path]:
        """Delete the files :meth:`unregistered` lists; returns them.

        Only safe when no other process is writing to the repository, since
        a concurrent write has an unregistered file for a moment.
        """
        relpaths = self.datastore.unregistered(self.registry.paths())
        for relpath in relpaths:
            self.datastore.remove(relpath)
        return [self.datastore.abspath(p) for p in relpaths]
