"""the review queue: why an answer is queued, when it was skipped, its heatmaps

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-07
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Answers kept before this revision have no reason to be queued: they stay reviewable
    # by their answer_id, outside the queue.
    with op.batch_alter_table("answers", schema=None) as batch_op:
        batch_op.add_column(sa.Column("explanations", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("queued", sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column("skipped", sa.DateTime(timezone=True), nullable=True))
        batch_op.create_index(batch_op.f("ix_answers_queued"), ["queued"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("answers", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_answers_queued"))
        batch_op.drop_column("skipped")
        batch_op.drop_column("queued")
        batch_op.drop_column("explanations")
