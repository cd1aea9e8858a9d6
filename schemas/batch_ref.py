"""What a job knows of the batch it belongs to (kept apart from schemas/batch.py so that the job
manifest can name it without importing the batch manifest, which imports the job's status types)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

SINGLE_LANE = "single"  # the queue lane of every job that is not in a batch


class BatchRef(BaseModel):
    """A batch item's place: which batch, which item, and the queue lane all its messages travel in."""

    model_config = ConfigDict(extra="forbid")

    batch_id: str
    index: int = Field(ge=0, description="0-based position of the item in the batch file.")
    line: int = Field(ge=1, description="1-based line of the item in the batch file (CSV: the row's line).")
    lane: str = Field(description="The queue lane of this job's messages: one lane per batch (fair interleaving).")
