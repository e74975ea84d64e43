"""shadow scores: a candidate version's scores beside the serving version's, per answer

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-07
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "shadow_scores",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("answer_id", sa.String(length=32), nullable=False),
        sa.Column("created", sa.DateTime(timezone=True), nullable=False),
        sa.Column("model", sa.String(length=64), nullable=False),
        sa.Column("serving_version", sa.String(length=16), nullable=False),
        sa.Column("candidate_version", sa.String(length=16), nullable=False),
        sa.Column("serving_video", sa.Float(), nullable=False),
        sa.Column("candidate_video", sa.Float(), nullable=False),
        sa.Column("faces", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(["answer_id"], ["answers.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("shadow_scores", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_shadow_scores_answer_id"), ["answer_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("shadow_scores", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_shadow_scores_answer_id"))
    op.drop_table("shadow_scores")
