"""A device's model store: two bundle slots (A/B) and an `active` pointer, crash-safe.

    STORE/active.json     which slot runs, its identity, the previous slot, a trial flag
    STORE/slots/a, b      complete, verified bundles (one runs, the other is the fallback)
    STORE/incoming/       downloads in progress (resumed after a restart)

Why it survives SIGKILL at any moment: a slot is filled only by renaming a fully written and
verified folder into place, and only the slot that is *not* active is ever replaced; the
pointer is one small file replaced by `os.replace` after fsync. So after a restart the pointer
names a complete bundle: the old one or the new one, never a half-written one.

A new model is activated on *trial*. If the process restarts before the health gate confirmed
it (it may be what crashed the device), `recover()` at start-up rolls back to the previous
slot.
"""

from __future__ import annotations

import json
import os
import shutil
import tarfile
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from edge_sdk.durable import fsync_dir
from edge_sdk.errors import BundleError
from edge_sdk.manifest import Manifest
from edge_sdk.trust import ModelIdentity

SLOTS = ("a", "b")
ACTIVE_NAME = "active.json"
MAX_MEMBERS = 64  # a bundle is a handful of files (archive size cap: sync.transfer)


@dataclass(frozen=True)
class ActiveRecord:
    """What active.json says; `trial` is the deployment id until the health gate passes."""

    slot: str
    identity: dict
    previous: str | None = None
    previous_identity: dict | None = None
    trial: str | None = None
    note: str = ""  # why the last rollback happened, for the status

    @property
    def version(self) -> int:
        return int(self.identity.get("version", 0))


class Store:
    """The slots and the pointer of one store folder (see module docstring)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.slots = self.root / "slots"
        self.incoming = self.root / "incoming"
        try:
            for folder in (self.root, self.slots, self.incoming):
                folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise BundleError(f"cannot use model store {self.root}: {exc.strerror}; pass a "
                              "writable folder to --store") from None
        self.rolled_back_on_open: str | None = None

    def recover(self) -> str | None:
        """At start-up (the only process using the store): remove half-written folders and,
        if a trial was interrupted, roll back; returns that deployment's id."""
        for leftover in self.slots.glob(".*"):  # half-removed or half-unpacked folders
            shutil.rmtree(leftover, ignore_errors=True)
        record = self.active()
        if record is not None and record.trial is not None:
            self.rolled_back_on_open = record.trial
            self.rollback("the device restarted during the health gate")
        return self.rolled_back_on_open

    # -- reading -----------------------------------------------------------------------------

    def active(self) -> ActiveRecord | None:
        path = self.root / ACTIVE_NAME
        try:
            data = json.loads(path.read_text())
            record = ActiveRecord(**data)
        except FileNotFoundError:
            return None
        except (ValueError, TypeError, OSError, RecursionError) as exc:
            raise BundleError(f"{path} is damaged ({exc}); remove it and seed the store "
                              "again with `edge-run --store DIR --seed BUNDLE`") from None
        if record.slot not in SLOTS or not isinstance(record.identity, dict):
            raise BundleError(f"{path} names slot {record.slot!r}; remove it and seed the "
                              "store again")
        return record

    def path(self, slot: str) -> Path:
        return self.slots / slot

    def spare_slot(self) -> str:
        record = self.active()
        return "a" if record is None or record.slot == "b" else "b"

    # -- changing ----------------------------------------------------------------------------

    def install(self, staged: Path) -> str:
        """Move a complete, verified bundle folder into the spare slot; returns the slot."""
        slot = self.spare_slot()
        target = self.path(slot)
        record = self.active()
        if record is not None and record.previous == slot:  # that fallback is about to go:
            self._write(replace(record, previous=None, previous_identity=None))  # forget it
        if target.exists():
            trash = self.slots / f".trash-{slot}"
            shutil.rmtree(trash, ignore_errors=True)
            os.rename(target, trash)
            fsync_dir(self.slots)
            shutil.rmtree(trash, ignore_errors=True)
        os.rename(staged, target)
        fsync_dir(self.slots)
        return slot

    def activate(self, slot: str, identity: ModelIdentity, trial: str | None) -> None:
        """Point at `slot`; with `trial` (a deployment id) the previous slot stays the
        fallback until `confirm()`."""
        old = self.active()
        self._write(ActiveRecord(
            slot=slot, identity=_identity_dict(identity),
            previous=old.slot if old is not None and old.slot != slot else None,
            previous_identity=old.identity if old is not None and old.slot != slot else None,
            trial=trial))

    def confirm(self) -> None:
        record = self.active()
        if record is not None and record.trial is not None:
            self._write(ActiveRecord(record.slot, record.identity, record.previous,
                                     record.previous_identity, None, ""))

    def rollback(self, reason: str) -> ActiveRecord | None:
        """Back to the previous slot (if there is one); returns the new record."""
        record = self.active()
        if record is None or record.previous is None or record.previous_identity is None:
            return record
        back = ActiveRecord(record.previous, record.previous_identity, record.slot,
                            record.identity, None, reason)
        self._write(back)
        return back

    def seed(self, bundle: Path, identity: ModelIdentity) -> None:
        """Install and activate a first bundle (copied), without a trial.

        Only what a deployment's archive carries is copied (sync.transfer.pack_bundle): the
        top-level files, so a seeded slot is a deployed one; subfolders (`.ipynb_checkpoints/`)
        and links leading out of the bundle stay behind."""
        staged = self.slots / ".seed"
        shutil.rmtree(staged, ignore_errors=True)
        staged.mkdir()
        try:
            _copy_top_files(Path(bundle), staged)
            _check_seeded(Path(bundle), staged)
        except OSError as exc:
            shutil.rmtree(staged, ignore_errors=True)
            raise BundleError(f"cannot copy {bundle} into the model store {self.root}: "
                              f"{exc.strerror or exc}") from None
        except BundleError:
            shutil.rmtree(staged, ignore_errors=True)
            raise
        _fsync_tree(staged)
        slot = self.install(staged)
        self.activate(slot, identity, None)

    def _write(self, record: ActiveRecord) -> None:
        path = self.root / ACTIVE_NAME
        tmp = self.root / f".{ACTIVE_NAME}.tmp"
        with open(tmp, "w") as f:
            json.dump(asdict(record), f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(self.root)

    # -- unpacking a downloaded bundle -------------------------------------------------------

    def unpack(self, blob: Path, name: str) -> Path:
        """Unpack a bundle archive into a hidden staging folder (flat regular files only;
        nothing is written outside it); returns the folder, fsynced.

        Every member is checked before anything is written: a sparse member, or sizes adding up
        to more than the archive holds, would unpack to far more than the download's disk budget
        (a 10 KB archive to 300 MB of zeros) before the bundle's signature is checked."""
        staged = self.slots / f".staged-{name}"
        shutil.rmtree(staged, ignore_errors=True)
        staged.mkdir()
        try:
            with tarfile.open(blob, "r:") as tar:
                members = tar.getmembers()
                _check_members(members, blob.stat().st_size)
                for member in members:
                    source = tar.extractfile(member)
                    with open(staged / member.name, "xb") as out:
                        shutil.copyfileobj(source, out)
        except (tarfile.TarError, FileExistsError, OSError) as exc:
            shutil.rmtree(staged, ignore_errors=True)
            raise BundleError(f"the bundle archive cannot be unpacked: {exc}") from None
        except BundleError:
            shutil.rmtree(staged, ignore_errors=True)
            raise
        _fsync_tree(staged)
        return staged


def _check_members(members: list[tarfile.TarInfo], archive_size: int) -> None:
    """Refuse an archive that is not a few plain files whose data is all in the archive."""
    if len(members) > MAX_MEMBERS:
        raise BundleError(f"the bundle archive has {len(members)} entries (at most "
                          f"{MAX_MEMBERS})")
    for member in members:
        if not member.isreg() or "/" in member.name or member.name in ("", ".", ".."):
            raise BundleError(f"the bundle archive holds {member.name!r}, which is not a plain "
                              "file of the bundle folder")
        if member.issparse():
            raise BundleError(f"the bundle archive holds {member.name!r} as a sparse file; "
                              "pack the bundle with `edge-fleet deploy` (plain files only)")
    total = sum(member.size for member in members)
    if total > archive_size:
        raise BundleError(f"the bundle archive's files add up to {total} bytes, more than the "
                          f"{archive_size}-byte archive holds; pack the bundle with "
                          "`edge-fleet deploy`")


def _identity_dict(identity: ModelIdentity) -> dict:
    return identity.to_dict()


def _copy_top_files(bundle: Path, staged: Path) -> None:
    """The bundle's top-level regular files, as pack_bundle picks them; a symlink is copied as
    the file it names only when that file is inside the bundle."""
    root = bundle.resolve()
    for path in sorted(bundle.iterdir()):
        if path.name.startswith("."):
            continue
        try:
            target = path.resolve(strict=True)
        except (OSError, RuntimeError):  # a dangling link or a loop
            continue
        if target.is_relative_to(root) and target.is_file():
            shutil.copyfile(target, staged / path.name)


def _check_seeded(bundle: Path, staged: Path) -> None:
    """Refuse, naming the file, a bundle whose manifest needs what the copy left behind."""
    for entry in Manifest.read(bundle).files.values():
        if not (staged / entry.path).is_file():
            raise BundleError(f"--seed {bundle}: the manifest names {entry.path!r}, which the "
                              "store does not keep (only top-level files not starting with "
                              "'.', as a deployment carries them); move it next to "
                              "manifest.json, fix the manifest and seed again")


def _fsync_tree(folder: Path) -> None:
    """fsync the folder's regular files, then the folder (the store's slots are flat)."""
    for path in folder.iterdir():
        if path.is_file() and not path.is_symlink():
            with open(path, "rb") as f:
                os.fsync(f.fileno())
    fsync_dir(folder)
