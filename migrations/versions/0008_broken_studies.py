"""why a study cannot be served: set when a claim on it fails, shown by the API

Revision ID: 0008
Revises: 0007
"""
from alembic import op
import sqlalchemy as sa

revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('hpo_studies', sa.Column('broken_reason', sa.Text(), nullable=True))
    op.add_column('hpo_studies', sa.Column('broken_at', sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    op.drop_column('hpo_studies', 'broken_at')
    op.drop_column('hpo_studies', 'broken_reason')
