"""dashboard login sessions

Revision ID: 0004
Revises: 0003
"""
from alembic import op
import sqlalchemy as sa

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'hpo_sessions',
        sa.Column('id_hash', sa.String(length=64), nullable=False),
        sa.Column('token_id', sa.Integer(), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
        sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['token_id'], ['hpo_tokens.id'], name=op.f('fk_hpo_sessions_token_id_hpo_tokens'), ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id_hash', name=op.f('pk_hpo_sessions')),
    )
    op.create_index(op.f('ix_hpo_sessions_token_id'), 'hpo_sessions', ['token_id'], unique=False)


def downgrade() -> None:
    op.drop_index(op.f('ix_hpo_sessions_token_id'), table_name='hpo_sessions')
    op.drop_table('hpo_sessions')
