"""a partial index on the open leases of a study

Revision ID: 0005
Revises: 0004
"""
from alembic import op
import sqlalchemy as sa

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index('ix_hpo_leases_open', 'hpo_leases', ['study_id'], unique=False, postgresql_where=sa.text('ended_at IS NULL'))


def downgrade() -> None:
    op.drop_index('ix_hpo_leases_open', table_name='hpo_leases', postgresql_where=sa.text('ended_at IS NULL'))
