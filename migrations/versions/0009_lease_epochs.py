"""what each lease trained, for compute budgets: the epochs it inherited and, once ended, the ones it reported

Revision ID: 0009
Revises: 0008
"""
from alembic import op
import sqlalchemy as sa

revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('hpo_leases', sa.Column('inherited', sa.Integer(), server_default='0', nullable=False))
    op.add_column('hpo_leases', sa.Column('epochs', sa.Integer(), nullable=True))


def downgrade() -> None:
    op.drop_column('hpo_leases', 'epochs')
    op.drop_column('hpo_leases', 'inherited')
