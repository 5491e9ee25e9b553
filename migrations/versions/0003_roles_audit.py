"""token roles, names, expiry, revocation and last use; the audit trail; the team of a lease

Existing tokens become `admin`: until now every token could do everything, and the first token
of a team is its bootstrap admin.

Revision ID: 0003
Revises: 0002
"""
from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('hpo_tokens', sa.Column('role', sa.String(length=16), server_default='admin', nullable=False))
    op.alter_column('hpo_tokens', 'role', server_default=None)
    op.create_check_constraint(
        op.f('ck_hpo_tokens_role'), 'hpo_tokens', "role IN ('admin', 'member', 'worker', 'viewer')"
    )
    op.add_column('hpo_tokens', sa.Column('name', sa.String(length=200), nullable=True))
    op.add_column('hpo_tokens', sa.Column('expires_at', sa.DateTime(timezone=True), nullable=True))
    op.add_column('hpo_tokens', sa.Column('revoked_at', sa.DateTime(timezone=True), nullable=True))
    op.add_column('hpo_tokens', sa.Column('last_used_at', sa.DateTime(timezone=True), nullable=True))
    op.create_unique_constraint(op.f('uq_hpo_tokens_prefix'), 'hpo_tokens', ['prefix'])

    op.create_table(
        'hpo_audit',
        sa.Column('id', sa.BigInteger(), nullable=False),
        sa.Column('at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
        sa.Column('team_id', sa.Integer(), nullable=False),
        sa.Column('actor', sa.String(length=16), nullable=True),
        sa.Column('role', sa.String(length=16), nullable=True),
        sa.Column('action', sa.String(length=32), nullable=False),
        sa.Column('target', sa.String(length=200), nullable=False),
        sa.Column('detail', postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.ForeignKeyConstraint(['team_id'], ['hpo_teams.id'], name=op.f('fk_hpo_audit_team_id_hpo_teams'), ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_hpo_audit')),
    )
    op.create_index('ix_hpo_audit_team_id_id', 'hpo_audit', ['team_id', 'id'], unique=False)

    op.add_column('hpo_leases', sa.Column('team_id', sa.Integer(), nullable=True))
    op.create_foreign_key(
        op.f('fk_hpo_leases_team_id_hpo_teams'), 'hpo_leases', 'hpo_teams', ['team_id'], ['id'], ondelete='CASCADE'
    )
    # Tombstones of studies deleted before this migration keep team_id NULL (they answer 410 to anyone).
    op.execute(
        'UPDATE hpo_leases SET team_id = hpo_studies.team_id FROM hpo_studies WHERE hpo_studies.id = hpo_leases.study_id'
    )


def downgrade() -> None:
    op.drop_constraint(op.f('fk_hpo_leases_team_id_hpo_teams'), 'hpo_leases', type_='foreignkey')
    op.drop_column('hpo_leases', 'team_id')
    op.drop_index('ix_hpo_audit_team_id_id', table_name='hpo_audit')
    op.drop_table('hpo_audit')
    op.drop_constraint(op.f('uq_hpo_tokens_prefix'), 'hpo_tokens', type_='unique')
    op.drop_constraint(op.f('ck_hpo_tokens_role'), 'hpo_tokens', type_='check')
    op.drop_column('hpo_tokens', 'last_used_at')
    op.drop_column('hpo_tokens', 'revoked_at')
    op.drop_column('hpo_tokens', 'expires_at')
    op.drop_column('hpo_tokens', 'name')
    op.drop_column('hpo_tokens', 'role')
