"""An export file: the image it holds, kept in memory, and its atomic rewrite after each export or batch."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from connectors.base import ExportOutcome
from connectors.files.atomic import atomic_write, write_error
from connectors.files.image import ExportImage
from schemas.errors import DataError, FatalError, IdsyncError
from schemas.records import PendingExport

#: What identifies one version of a file: inode, size, modification and change times.
_Signature = tuple[int, int, int, int]


class ExportFile:
    """Applies exports to the image of ``path`` and writes the whole file once per call, atomically.

    The image is loaded from the file on first use and kept; it is loaded again when the file changed
    since this connector last read or wrote it (an operator edited or replaced it), so such changes are
    not overwritten by a stale image. Concurrent calls are serialised.
    """

    def __init__(
        self,
        connector: str,
        path: Path,
        *,
        load: Callable[[bytes], ExportImage],
        dump: Callable[[ExportImage, BinaryIO], None],
        prepare: Callable[[PendingExport], PendingExport] | None = None,
    ) -> None:
        self.connector = connector
        self.path = path
        self._load = load
        self._dump = dump
        self._prepare = prepare
        self._lock = threading.Lock()
        self._image: ExportImage | None = None
        self._signature: _Signature | None = None

    def _stat(self) -> _Signature | None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise self._read_error(exc) from None
        return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)

    def _read_error(self, exc: OSError) -> FatalError:
        reason = exc.strerror or str(exc)
        return FatalError(
            f"connector {self.connector!r}: cannot read export file {self.path}: {reason}",
            error_type="export-file-unreadable",
        )

    def image(self) -> ExportImage:
        """The current image (loaded again when the file changed under us)."""
        signature = self._stat()
        if self._image is None or signature != self._signature:
            try:
                data = self.path.read_bytes() if signature is not None else b""
            except FileNotFoundError:
                data, signature = b"", None
            except OSError as exc:
                raise self._read_error(exc) from None
            self._image = self._load(data)
            self._signature = signature
        return self._image

    def apply(self, exports: list[PendingExport]) -> list[ExportOutcome | IdsyncError]:
        """One result per export, in order; the file is written once if any export applied.

        When the write fails, every export that had applied gets the write error instead (nothing of this
        call reached the file, and the image in memory is left as it was).
        """
        with self._lock:
            image = self.image().copy()
            results: list[ExportOutcome | IdsyncError] = []
            for export in exports:
                try:
                    prepared = self._prepare(export) if self._prepare is not None else export
                    results.append(image.apply(prepared))
                except DataError as err:
                    results.append(err)
            if not any(isinstance(r, ExportOutcome) for r in results):
                return results
            try:
                atomic_write(self.path, lambda out: self._dump(image, out))
            except OSError as exc:
                error = write_error(self.connector, self.path, exc)
                return [error if isinstance(r, ExportOutcome) else r for r in results]
            self._image, self._signature = image, self._stat()
            return results

    def apply_one(self, export: PendingExport) -> ExportOutcome:
        """``apply`` for one export: its outcome, or its error raised."""
        [result] = self.apply([export])
        if isinstance(result, IdsyncError):
            raise result
        return result
