"""teams tokens studies leases

Revision ID: 0001
Revises: 
Create Date: 2026-11-21 04:00:08.955343
"""
from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('hpo_teams',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=63), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_hpo_teams')),
    sa.UniqueConstraint('name', name=op.f('uq_hpo_teams_name'))
    )
    op.create_table('hpo_studies',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('team_id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=63), nullable=False),
    sa.Column('optuna_name', sa.String(length=127), nullable=False),
    sa.Column('spec', postgresql.JSONB(astext_type=sa.Text()), nullable=False),
    sa.Column('stopped', sa.Boolean(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.ForeignKeyConstraint(['team_id'], ['hpo_teams.id'], name=op.f('fk_hpo_studies_team_id_hpo_teams'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_hpo_studies')),
    sa.UniqueConstraint('optuna_name', name=op.f('uq_hpo_studies_optuna_name')),
    sa.UniqueConstraint('team_id', 'name', name='uq_hpo_studies_team_id_name')
    )
    op.create_index(op.f('ix_hpo_studies_team_id'), 'hpo_studies', ['team_id'], unique=False)
    op.create_table('hpo_tokens',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('team_id', sa.Integer(), nullable=False),
    sa.Column('token_hash', sa.String(length=64), nullable=False),
    sa.Column('prefix', sa.String(length=16), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.ForeignKeyConstraint(['team_id'], ['hpo_teams.id'], name=op.f('fk_hpo_tokens_team_id_hpo_teams'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_hpo_tokens')),
    sa.UniqueConstraint('token_hash', name=op.f('uq_hpo_tokens_token_hash'))
    )
    op.create_index(op.f('ix_hpo_tokens_team_id'), 'hpo_tokens', ['team_id'], unique=False)
    op.create_table('hpo_leases',
    sa.Column('trial_id', sa.BigInteger(), nullable=False),
    sa.Column('study_id', sa.Integer(), nullable=False),
    sa.Column('number', sa.Integer(), nullable=False),
    sa.Column('lease_id', sa.String(length=36), nullable=False),
    sa.Column('worker_id', sa.String(length=200), nullable=False),
    sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('ended_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('outcome', sa.String(length=16), nullable=True),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.ForeignKeyConstraint(['study_id'], ['hpo_studies.id'], name=op.f('fk_hpo_leases_study_id_hpo_studies'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('trial_id', name=op.f('pk_hpo_leases')),
    sa.UniqueConstraint('lease_id', name=op.f('uq_hpo_leases_lease_id'))
    )
    op.create_index(op.f('ix_hpo_leases_study_id'), 'hpo_leases', ['study_id'], unique=False)


def downgrade() -> None:
    op.drop_index(op.f('ix_hpo_leases_study_id'), table_name='hpo_leases')
    op.drop_table('hpo_leases')
    op.drop_index(op.f('ix_hpo_tokens_team_id'), table_name='hpo_tokens')
    op.drop_table('hpo_tokens')
    op.drop_index(op.f('ix_hpo_studies_team_id'), table_name='hpo_studies')
    op.drop_table('hpo_studies')
    op.drop_table('hpo_teams')
