"""Records of uploaded models and datasets: what was checked at upload, who owns it, which blob holds it.

A record is one JSON value in Redis; its blob is referenced as ``"<kind>:<id>"`` in ``Artifacts``.
Records hold everything a job check needs (architecture, class counts, sample shape), so a job
is refused at POST time from metadata alone.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Literal, TypeAlias, cast, overload

import redis
from pydantic import BaseModel, Field

from service.core.quotas import Quotas
from service.core.records import Keys, OwnedRecord, is_id, new_id, page_ids, utc_now
from service.core.storage.references import Artifacts

Kind = Literal["model", "dataset"]


class ModelBase(BaseModel):
    """A model upload as the API shows it (``ModelOut``): the public part of its ``ModelRecord``."""

    id: str
    architecture: dict[str, Any]
    num_parameters: int
    sha256: str
    size_bytes: int
    format: Literal["safetensors", "torch_zip", "pt2"]
    input_shape: list[int] | None = Field(
        None, description="Exported programs: the shape of one sample the program takes (the batch left out)."
    )
    input_transform: dict[str, Any] | None = Field(
        None,
        description="The preprocessing the model was trained with (resize, crop, mean, std, channels), applied by "
        "the worker to the data of its jobs; null: the data is fed as stored.",
    )
    parent_model_id: str | None = Field(None, description="An edited model: the model the job edited.")
    job_id: str | None = Field(None, description="An edited model: the job that made it (result.model_id).")
    filename: str | None = None
    created_at: str


class ModelRecord(ModelBase, OwnedRecord):
    """A stored model: the resource, plus the class count job checks need."""

    num_classes: int


class DatasetBase(BaseModel):
    """A dataset upload as the API shows it (``DatasetOut``): its file and what job checks need to know of it (the
    engine's ``DatasetSummary``, measured once at upload; ``service.web.validation`` turns it back into one)."""

    id: str
    num_samples: int
    num_classes: int = Field(description="The largest label + 1.")
    sample_shape: list[int]
    class_counts: list[int] = Field(description="Examples per label, from label 0.")
    has_ids: bool = Field(False, description="Whether requests may name its examples by id.")
    class_names: list[str] | None = Field(None, description="The classes' names in label order, when known.")
    source: Literal["tensors", "imagefolder", "webdataset"] = Field(
        "tensors", description="What was uploaded: tensors, or images converted to uint8 tensors once."
    )
    sha256: str = Field(description="The stored file's (for images: the converted tensors').")
    size_bytes: int
    source_sha256: str | None = Field(None, description="Images only: the sha256 of the archive that was uploaded.")
    source_url: str | None = Field(None, description="Registered by reference: the s3:// URL it was read from.")
    format: Literal["safetensors", "npz"]
    filename: str | None = None
    created_at: str


class DatasetRecord(DatasetBase, OwnedRecord):
    """A stored dataset: the resource and its owner."""


UploadRecord: TypeAlias = ModelRecord | DatasetRecord
RECORDS: dict[Kind, type[ModelRecord] | type[DatasetRecord]] = {"model": ModelRecord, "dataset": DatasetRecord}


class Catalog:
    def __init__(self, client: redis.Redis, keys: Keys, artifacts: Artifacts, quotas: Quotas):
        self.client = client
        self.keys = keys
        self.artifacts = artifacts
        self.quotas = quotas

    def add(self, kind: Kind, owner: str, staged: Path, facts: dict[str, Any]) -> UploadRecord:
        """Store a validated staged file and its record; ``facts`` must hold its ``sha256`` and ``size_bytes``.
        The bytes count against the owner's quota first (refused past it); a store that fails gives them back."""
        record = self._new_record(kind, owner, facts)
        self.quotas.reserve_bytes(owner, record.size_bytes)
        try:
            self.artifacts.add(staged, record.sha256, f"{kind}:{record.id}")
            self._save(kind, record)
        except BaseException:
            with self.client.pipeline() as pipe:
                self.quotas.release_bytes(pipe, owner, record.size_bytes)
                pipe.execute()
            raise
        return record

    def register(self, kind: Kind, owner: str, facts: dict[str, Any]) -> UploadRecord | None:
        """A record for a blob already stored (an edited checkpoint); None if that blob is gone. Its bytes count
        towards the owner's usage but are never refused: the job that made it was admitted."""
        record = self._new_record(kind, owner, facts)
        if not self.artifacts.hold(record.sha256, f"{kind}:{record.id}"):
            return None
        self.quotas.reserve_bytes(owner, record.size_bytes, enforce=False)
        self._save(kind, record)
        return record

    def _new_record(self, kind: Kind, owner: str, facts: dict[str, Any]) -> UploadRecord:
        seq = self.client.incr(self.keys.sequence)
        return RECORDS[kind].model_validate(
            {"id": new_id(kind), **facts, "created_at": utc_now(), "owner": owner, "seq": seq}
        )

    def _save(self, kind: Kind, record: UploadRecord) -> None:
        """Write the record; an upload (not a model a job registered) also enters the retention index as used now."""
        with self.client.pipeline() as pipe:
            pipe.set(self.keys.item(kind, record.id), record.model_dump_json())
            pipe.zadd(self.keys.items_of(kind, record.owner), {record.id: record.seq})
            if getattr(record, "job_id", None) is None:
                pipe.zadd(self.keys.uploads_used, {f"{kind}:{record.id}": time.time()})
            pipe.execute()

    # --- retention ---------------------------------------------------------------------------

    def touch(self, *items: tuple[Kind, str], when: float | None = None) -> None:
        """Mark uploads (kind, id) used (a job named them), in one write: retention counts their age from now. An
        upload deleted meanwhile, or a registered model (never in the index), is not added."""
        if not items:
            return
        at = time.time() if when is None else when
        self.client.zadd(self.keys.uploads_used, {f"{kind}:{item_id}": at for kind, item_id in items}, xx=True)

    def unused_since(self, when: float, limit: int) -> list[tuple[Kind, str]]:
        """Up to ``limit`` uploads last used before ``when`` (Unix seconds), least recently used first."""
        members = cast(list[str], self.client.zrangebyscore(self.keys.uploads_used, "-inf", when, start=0, num=limit))
        return [cast(tuple[Kind, str], tuple(member.split(":", 1))) for member in members]

    def expire(self, kind: Kind, item_id: str) -> bool:
        """Delete an upload whoever owns it (retention); False if it was gone."""
        raw = self.client.get(self.keys.item(kind, item_id)) if is_id(kind, item_id) else None
        owner = RECORDS[kind].model_validate_json(raw).owner if raw else None
        deleted = owner is not None and self.delete(kind, item_id, owner)
        self.client.zrem(self.keys.uploads_used, f"{kind}:{item_id}")
        return deleted

    @overload
    def get(self, kind: Literal["model"], item_id: str, owner: str) -> ModelRecord | None: ...
    @overload
    def get(self, kind: Literal["dataset"], item_id: str, owner: str) -> DatasetRecord | None: ...
    @overload
    def get(self, kind: Kind, item_id: str, owner: str) -> UploadRecord | None: ...

    def get(self, kind: Kind, item_id: str, owner: str) -> UploadRecord | None:
        """The record, or None when it does not exist or belongs to someone else."""
        if not is_id(kind, item_id):
            return None
        raw = self.client.get(self.keys.item(kind, item_id))
        record = RECORDS[kind].model_validate_json(raw) if raw else None
        return record if record is not None and record.owner == owner else None

    def delete(self, kind: Kind, item_id: str, owner: str) -> bool:
        """Remove the record and its reference to the blob; only the caller whose DEL removed the record gives its
        bytes back, so two concurrent deletes (a user's and retention's) count it once."""
        record = self.get(kind, item_id, owner)
        if record is None or not self.client.delete(self.keys.item(kind, item_id)):
            return False
        with self.client.pipeline() as pipe:
            pipe.zrem(self.keys.items_of(kind, owner), item_id)
            pipe.zrem(self.keys.uploads_used, f"{kind}:{item_id}")
            self.quotas.release_bytes(pipe, owner, record.size_bytes)
            pipe.execute()
        self.artifacts.release(record.sha256, f"{kind}:{item_id}")
        return True

    def count(self, kind: Kind, owner: str) -> int:
        return int(self.client.zcard(self.keys.items_of(kind, owner)))

    def page(self, kind: Kind, owner: str, limit: int, cursor: int | None) -> tuple[list[UploadRecord], int | None]:
        ids, next_cursor = page_ids(self.client, self.keys.items_of(kind, owner), limit, cursor)
        raws = self.client.mget([self.keys.item(kind, i) for i in ids]) if ids else []
        return [RECORDS[kind].model_validate_json(raw) for raw in raws if raw], next_cursor
